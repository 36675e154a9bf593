using System.Text.Json.Nodes;
using DetoxSharp.Data;
using DetoxSharp.Models;
using DetoxSharp.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Training;

/// <summary>One training example: plain text (<see cref="Prompt"/> null: every token is a target, texts are packed into
/// context-length blocks) or prompt + completion (loss on the completion tokens only).</summary>
public sealed record SftExample(string? Prompt, string Completion)
{
    /// <summary>A plain-text example (every token is a target).</summary>
    /// <param name="text">The text.</param>
    public static SftExample Text(string text) => new(null, text);
    /// <summary>A prompt + completion example (loss on the completion only).</summary>
    /// <param name="prompt">The prompt.</param>
    /// <param name="completion">The completion.</param>
    public static SftExample PromptCompletion(string prompt, string completion) => new(prompt, completion);
}

/// <summary>Settings of <see cref="SftTrainer"/> (names as in TRL's SFTConfig where one exists).</summary>
public sealed record SftOptions
{
    /// <summary>Sequences per micro-batch.</summary>
    [Setting("sequences per micro-batch")]
    public int BatchSize { get; init; } = 8;
    /// <summary>Micro-batches per optimizer step; the loss is normalised over all target tokens of the step, so
    /// accumulation equals one big batch.</summary>
    [Setting("micro-batches per optimizer step")]
    public int GradientAccumulationSteps { get; init; } = 1;
    /// <summary>Block / truncation length; null = the model's context (n_positions).</summary>
    [Setting("block/truncation length in tokens (default: the model's context)")]
    public int? MaxLength { get; init; }
    /// <summary>Peak learning rate (AdamW).</summary>
    [Setting("peak learning rate (AdamW)")]
    public double LearningRate { get; init; } = 5e-5;
    /// <summary>AdamW weight decay.</summary>
    [Setting("AdamW weight decay")]
    public double WeightDecay { get; init; } = 0.0;
    /// <summary>AdamW β₁.</summary>
    public double Beta1 { get; init; } = 0.9;
    /// <summary>AdamW β₂.</summary>
    public double Beta2 { get; init; } = 0.999;
    /// <summary>AdamW ε.</summary>
    public double Epsilon { get; init; } = 1e-8;
    /// <summary>Linear warmup steps.</summary>
    [Setting("linear warmup steps")]
    public int WarmupSteps { get; init; } = 0;
    /// <summary>Learning-rate decay after warmup: constant, linear or cosine.</summary>
    [Setting("learning-rate decay after warmup: constant, linear or cosine")]
    [System.Text.Json.Serialization.JsonConverter(typeof(System.Text.Json.Serialization.JsonStringEnumConverter<DecayKind>))]
    public DecayKind Decay { get; init; } = DecayKind.Linear;
    /// <summary>The rate decay ends at, as a fraction of the peak.</summary>
    public double MinLrRatio { get; init; } = 0.0;
    /// <summary>Gradient clipping by global L2 norm; ≤ 0 disables.</summary>
    [Setting("gradient clipping by global norm (0 = off)")]
    public double MaxGradNorm { get; init; } = 1.0;
    /// <summary>Passes over the data.</summary>
    [Setting("passes over the data")]
    public double Epochs { get; init; } = 1;
    /// <summary>Stops after this many optimizer steps (overrides <see cref="Epochs"/>).</summary>
    [Setting("optimizer steps (overrides epochs)")]
    public int? MaxSteps { get; init; }
    /// <summary>Seeds the data order (a pure function of seed and epoch, so resuming needs only the step).</summary>
    [Setting("data-order seed")]
    public ulong Seed { get; init; } = 0;
    /// <summary>Validation examples (null: no validation).</summary>
    [System.Text.Json.Serialization.JsonIgnore]
    public IReadOnlyList<SftExample>? Validation { get; init; }
    /// <summary>Validation loss every N steps (and at the end); 0 = only at the end when validation data exists.</summary>
    [Setting("validation loss every N optimizer steps (0 = at the end)")]
    public int EvalEvery { get; init; } = 0;
    /// <summary>Directory for checkpoint/ (resumable) and metrics.jsonl; null = neither.</summary>
    [System.Text.Json.Serialization.JsonIgnore]
    public string? OutputDir { get; init; }
    /// <summary>Also write the metrics as TensorBoard scalars into an event file in this directory (null: no).</summary>
    public string? TensorBoardDir { get; init; }
    /// <summary>Writes a resumable checkpoint every N steps (0 = never; one is always written at the end when
    /// <see cref="OutputDir"/> is set).</summary>
    [Setting("save a resumable checkpoint every N optimizer steps (0 = at the end)")]
    public int CheckpointEvery { get; init; } = 100;
    /// <summary>Continue from OutputDir/checkpoint when it exists.</summary>
    [System.Text.Json.Serialization.JsonIgnore]
    public bool Resume { get; init; }
    /// <summary>With <see cref="Resume"/>: continue although adjustable settings (learning rate, warmup, clipping, step
    /// count; <see cref="TrainingLoopOptions.AdjustableSettings"/>) differ from the checkpoint's.</summary>
    [System.Text.Json.Serialization.JsonIgnore]
    public bool AllowSettingChanges { get; init; }
    /// <summary>Stop (as if interrupted) after this many steps of this run — for tests and time-boxed runs.</summary>
    [System.Text.Json.Serialization.JsonIgnore]
    public int? StopAfterSteps { get; init; }
    /// <summary>Append an end-of-text token to each completion / plain text.</summary>
    public bool AppendEos { get; init; } = true;
    /// <summary><see cref="Training.Precision.ModelDType"/> (train in the model's dtype) or
    /// <see cref="Training.Precision.Bf16Mixed"/> (bf16 forward/backward, fp32 master weights and AdamW state; needs a
    /// float32 model) or <see cref="Training.Precision.Auto"/> (the latter on a CPU with native bf16). Validation loss is
    /// computed with the fp32 master, i.e. the weights that are saved. JSON: "fp32", "bf16-mixed" or "auto".</summary>
    public Precision Precision { get; init; } = Precision.ModelDType;
    /// <summary>Split each micro-batch into this many parts trained side by side, one a thread (data parallelism inside
    /// the process; <see cref="TrainingLoopOptions.DataParallel"/>): 1 (the default) off, 0 auto. Needs bf16 mixed
    /// precision on the CPU. The step then equals the parts run one after the other (the same sums, in the same order),
    /// at the parts' thread count. JSON "data_parallel".</summary>
    public int DataParallel { get; init; } = 1;

    /// <summary>Bounds for counts: beyond them a run would only exhaust memory building its batch list.</summary>
    public const int MaxBatch = 65536, MaxEpochs = 10_000;

    /// <summary>Checks every setting; throws <see cref="InvalidSettingException"/> naming the first one out of range.</summary>
    public void Validate()
    {
        Require.Count(BatchSize, "batch_size", 1, MaxBatch);
        Require.Count(GradientAccumulationSteps, "gradient_accumulation_steps", 1, MaxBatch);
        Require.Number(LearningRate, "learning_rate", 0, minExclusive: true);
        Require.Number(WeightDecay, "weight_decay", 0);
        Require.Number(MaxGradNorm, "max_grad_norm", 0);
        Require.Number(Beta1, "beta1", 0, 1);
        Require.Number(Beta2, "beta2", 0, 1);
        Require.Number(Epsilon, "epsilon", 0, minExclusive: true);
        Require.Number(MinLrRatio, "min_lr_ratio", 0, 1);
        Require.Number(Epochs, "epochs", 0, MaxEpochs);
        InvalidSettingException.Require(MaxLength is null or >= 2, "max_length", $"must be ≥ 2 (got {MaxLength})");
        InvalidSettingException.Require(Epochs > 0 || MaxSteps is not null, "epochs", $"must be > 0 (got {Epochs})");
        InvalidSettingException.Require(MaxSteps is null or >= 1, "max_steps", $"must be ≥ 1 (got {MaxSteps})");
        InvalidSettingException.Require(WarmupSteps >= 0, "warmup_steps", $"must be ≥ 0 (got {WarmupSteps})");
        InvalidSettingException.Require(EvalEvery >= 0, "eval_every", $"must be ≥ 0 (got {EvalEvery})");
        InvalidSettingException.Require(CheckpointEvery >= 0, "checkpoint_every", $"must be ≥ 0 (got {CheckpointEvery})");
        InvalidSettingException.Require(DataParallel >= 0, "data_parallel", $"must be 0 (auto) or a positive number of parts (got {DataParallel})");
    }
}

/// <summary>The outcome of <see cref="SftTrainer.Train"/>: the loop's result, in SFT's words.</summary>
/// <param name="Run">The training loop's result.</param>
public sealed record SftResult(TrainingRunResult Run)
{
    /// <summary>Optimizer steps done, counting a resumed run's earlier part.</summary>
    public int Steps => Run.Steps;
    /// <summary>Loss of the last training step (NaN when none ran).</summary>
    public double FinalTrainLoss => Run.LastTrain?.Loss ?? double.NaN;
    /// <summary>Loss of the last validation (null without validation).</summary>
    public double? FinalValidationLoss => Run.LastEval?.Loss;
    /// <summary>Tokens trained on in this run (not counting a resumed run's earlier part).</summary>
    public long TrainedTokens => Run.RunItems;
    /// <summary>Wall time of this process's part.</summary>
    public double Seconds => Run.Seconds;
    /// <summary>All steps ran (now, or before this resume).</summary>
    public bool Completed => Run.Finished;
    /// <summary>Tokens per second in this process.</summary>
    public double TokensPerSecond => Run.ItemsPerSecond;
}

/// <summary>
/// Supervised fine-tuning / pretraining of any <see cref="ICausalLM"/>: plain text packed into blocks or prompt +
/// completion with loss on completion tokens only (prompt and padding positions are masked), AdamW, warmup + decay
/// (<see cref="LrSchedule"/>), clipping, accumulation, validation loss, metrics JSONL and bit-exact resume — the step
/// itself is <see cref="TrainingLoop"/>'s; this class supplies the data order and the masked NLL.
/// By default trains in the model's dtype (a bfloat16 model trains in pure bfloat16, no fp32 master weights); with
/// <see cref="SftOptions.Precision"/> = <see cref="Precision.Bf16Mixed"/> a float32 model is the fp32 master and a bf16
/// working copy computes (<see cref="MixedPrecision"/>).
/// </summary>
public sealed class SftTrainer(ICausalLM model, Gpt2Tokenizer tokenizer, SftOptions options)
{
    /// <summary>One-line notices (recovered checkpoint directories, accepted setting changes on resume).</summary>
    public Action<string>? Log { get; init; }
    /// <summary>Optional structured logging (Microsoft.Extensions.Logging; see <see cref="TrainingLoopOptions.Logger"/>).</summary>
    public Microsoft.Extensions.Logging.ILogger? Logger { get; init; }

    /// <summary>A tokenized sequence: ids and, per position, whether the token is a target.</summary>
    public sealed record Sequence(long[] Ids, bool[] Target);

    /// <summary>Tokenizes examples: plain texts are concatenated (EOS between) and cut into <paramref name="maxLength"/>
    /// blocks; prompt/completion pairs become one sequence each, the prompt cut from the left if too long.</summary>
    public static List<Sequence> Tokenize(Gpt2Tokenizer tok, IReadOnlyList<SftExample> examples, int maxLength, bool appendEos = true)
    {
        var result = new List<Sequence>();
        var stream = new List<long>();
        foreach (var e in examples)
        {
            if (e.Prompt is null)
            {
                stream.AddRange(tok.EncodeWithSpecialTokens(e.Completion).Select(i => (long)i));
                if (appendEos) stream.Add(tok.EosTokenId);
                continue;
            }
            var p = tok.EncodeWithSpecialTokens(e.Prompt).Select(i => (long)i).ToList();
            var c = tok.Encode(e.Completion).Select(i => (long)i).ToList();
            if (appendEos) c.Add(tok.EosTokenId);
            if (c.Count == 0) continue;
            if (c.Count > maxLength - 1) c = c.Take(maxLength - 1).ToList();
            if (p.Count + c.Count > maxLength) p = p.Skip(p.Count + c.Count - maxLength).ToList();
            if (p.Count == 0) { p.Add(tok.EosTokenId); if (p.Count + c.Count > maxLength) c.RemoveAt(c.Count - 1); }
            var ids = p.Concat(c).ToArray();
            var target = Enumerable.Range(0, ids.Length).Select(i => i >= p.Count).ToArray();
            result.Add(new Sequence(ids, target));
        }
        for (int s = 0; s + 2 <= stream.Count; s += maxLength)
        {
            var ids = stream.Skip(s).Take(maxLength).ToArray();
            var target = Enumerable.Repeat(true, ids.Length).ToArray();
            target[0] = false; // the first token of a block has no context inside the block
            result.Add(new Sequence(ids, target));
        }
        return result;
    }

    /// <summary>Right-pads a batch: ids [B,T], attention mask [B,T], target mask [B,T] (1 where the token is predicted).</summary>
    public static (Tensor Ids, Tensor Mask, Tensor Targets) Collate(IReadOnlyList<Sequence> batch, int padId, Device device)
    {
        int t = batch.Max(s => s.Ids.Length), b = batch.Count;
        var ids = new long[b * t]; var mask = new long[b * t]; var tgt = new float[b * t];
        for (int i = 0; i < b; i++)
            for (int j = 0; j < t; j++)
            {
                bool real = j < batch[i].Ids.Length;
                ids[i * t + j] = real ? batch[i].Ids[j] : padId;
                mask[i * t + j] = real ? 1 : 0;
                tgt[i * t + j] = real && batch[i].Target[j] ? 1 : 0;
            }
        return (torch.tensor(ids, [b, t], ScalarType.Int64, device), torch.tensor(mask, [b, t], ScalarType.Int64, device),
            torch.tensor(tgt, [b, t], ScalarType.Float32, device));
    }

    /// <summary>Sum of −log p over target tokens (position t predicted from &lt; t) and the number of targets. The LM
    /// head and log-softmax run only on positions that predict a target (prompt and padding positions never reach the
    /// V-wide head); equal to <see cref="MaskedNllFromLogits"/> on the full logits. The final norm is applied without
    /// its <c>ln_final.hook_normalized</c> hook (block hooks run as usual).</summary>
    public static (Tensor SumNll, Tensor Count) MaskedNll(ICausalLM model, Tensor ids, Tensor mask, Tensor targets)
    {
        var w = targets[.., 1..];
        var (logp, _) = LogProbs.AtPositions(model, ids, mask, w);
        return (-logp.sum().to(ScalarType.Float32), w.sum());
    }

    /// <summary>The same from logits [B,T,V]: the prediction at position t−1 of token t counts iff targets[t] is 1.</summary>
    public static (Tensor SumNll, Tensor Count) MaskedNllFromLogits(Tensor logits, Tensor ids, Tensor targets)
    {
        var logp = torch.nn.functional.log_softmax(logits[.., ..^1, ..].to(ScalarType.Float32), -1);
        var next = ids[.., 1..];
        var tokLogp = logp.gather(-1, next.unsqueeze(-1)).squeeze(-1);
        var w = targets[.., 1..];
        return (-(tokLogp * w).sum(), w.sum());
    }

    /// <summary>Mean NLL per target token over <paramref name="data"/> (no gradient).</summary>
    public static double EvaluateLoss(ICausalLM model, IReadOnlyList<Sequence> data, int batchSize)
    {
        bool wasTraining = model.Module.training;
        model.Module.eval();
        double sum = 0, count = 0;
        try
        {
            using var _ = torch.no_grad();
            for (int i = 0; i < data.Count; i += batchSize)
            {
                using var scope = torch.NewDisposeScope();
                var (ids, mask, tgt) = Collate(data.Skip(i).Take(batchSize).ToList(), model.EosTokenId, model.Device);
                var (s, c) = MaskedNll(model, ids, mask, tgt);
                sum += s.item<float>(); count += c.item<float>();
            }
        }
        finally { if (wasTraining) model.Module.train(); }
        return count > 0 ? sum / count : double.NaN;
    }

    /// <summary>The data order of an epoch: a permutation that depends only on seed and epoch.</summary>
    static int[] Order(int n, ulong seed, int epoch)
    {
        var r = new ToyRandom(seed * 6_364_136_223_846_793_005UL + (ulong)epoch + 1);
        var a = Enumerable.Range(0, n).ToArray();
        for (int i = n - 1; i > 0; i--) { int j = r.Next(i + 1); (a[i], a[j]) = (a[j], a[i]); }
        return a;
    }

    /// <summary>Trains the model in place on <paramref name="train"/>. Returns when all steps ran, the token fired (after
    /// checkpointing the last whole step when <see cref="SftOptions.OutputDir"/> is set) or the resumed run had already
    /// finished; throws <see cref="TrainingDivergedException"/> on a non-finite loss or gradient norm.</summary>
    public SftResult Train(IReadOnlyList<SftExample> train, IProgress<TrainingProgress>? progress = null, CancellationToken cancel = default)
    {
        var o = options with { Precision = MixedPrecision.Resolve(model, options.Precision) }; // checkpoints record the resolved value
        o.Validate();
        MixedPrecision.CheckModel(model, o.Precision);
        int maxLength = Math.Min(o.MaxLength ?? model.MaxPositions, model.MaxPositions);
        if (tokenizer.VocabSize > model.VocabSize)
            throw new InvalidInputException($"tokenizer has {tokenizer.VocabSize} ids but the model's vocabulary is {model.VocabSize} (resize the model first)");
        var data = Tokenize(tokenizer, train, maxLength, o.AppendEos);
        if (data.Count == 0) throw new InvalidInputException("training data produced no sequences");
        var valid = o.Validation is { Count: > 0 } v ? Tokenize(tokenizer, v, maxLength, o.AppendEos) : null;

        int perStep = o.BatchSize * o.GradientAccumulationSteps;
        int stepsPerEpoch = Math.Max(1, data.Count / perStep);
        int totalSteps = o.MaxSteps ?? Math.Max(1, (int)Math.Ceiling(o.Epochs * stepsPerEpoch));
        var settings = TrainingSettings.Of(o);
        settings["max_length"] = maxLength;
        settings["data"] = Hash(data, valid);
        var loop = new TrainingLoopOptions
        {
            TotalSteps = totalSteps,
            Schedule = new LrSchedule(o.LearningRate, o.WarmupSteps, totalSteps, o.Decay, o.MinLrRatio),
            Optimizer = OptimizerKind.AdamW,
            OptimizerSettings = new OptimizerSettings
            {
                LearningRate = o.LearningRate, WeightDecay = o.WeightDecay, Beta1 = o.Beta1, Beta2 = o.Beta2, Epsilon = o.Epsilon,
            },
            MaxGradNorm = o.MaxGradNorm, MeanOverWeights = false, Precision = o.Precision, DataParallel = o.DataParallel, EvalEvery = o.EvalEvery,
            OutputDir = o.OutputDir, TensorBoardDir = o.TensorBoardDir, CheckpointEvery = o.CheckpointEvery, Resume = o.Resume,
            AllowSettingChanges = o.AllowSettingChanges, StopAfterSteps = o.StopAfterSteps, Settings = settings,
            ItemName = "tokens", Tokenizer = tokenizer, Log = Log, Logger = Logger,
        };
        return new SftResult(TrainingLoop.Run(model, new Objective(data, valid, o), loop, progress, cancel));
    }

    /// <summary>SHA-256 of the tokenized training (and validation) sequences: what a resume must train on again.</summary>
    static string Hash(List<Sequence> data, List<Sequence>? valid)
    {
        using var h = System.Security.Cryptography.IncrementalHash.CreateHash(System.Security.Cryptography.HashAlgorithmName.SHA256);
        foreach (var part in new[] { data, valid ?? [] })
        {
            h.AppendData(BitConverter.GetBytes(part.Count));
            foreach (var s in part)
            {
                h.AppendData(BitConverter.GetBytes(s.Ids.Length));
                h.AppendData(System.Runtime.InteropServices.MemoryMarshal.AsBytes(s.Ids.AsSpan()));
                h.AppendData(System.Runtime.InteropServices.MemoryMarshal.AsBytes(s.Target.AsSpan()));
            }
        }
        return Convert.ToHexStringLower(h.GetHashAndReset());
    }

    /// <summary>A micro-batch and the target-token count of its whole optimizer step (the loss is normalised over the
    /// step's targets, so accumulation equals one big batch).</summary>
    sealed record Batch(List<Sequence> Sequences, double StepTargets);

    sealed class Objective(List<Sequence> data, List<Sequence>? valid, SftOptions o) : ITrainingObjective<Batch>
    {
        int[]? _order;
        int _orderEpoch = -1;

        public IReadOnlyList<Batch> Batches(int step)
        {
            int perStep = o.BatchSize * o.GradientAccumulationSteps;
            // the examples of this step, from the global stream position step·perStep
            var stepSeqs = new List<Sequence>(perStep);
            for (int k = 0; k < perStep; k++)
            {
                long pos = (long)step * perStep + k;
                int epoch = (int)(pos / data.Count);
                if (epoch != _orderEpoch) { _order = Order(data.Count, o.Seed, epoch); _orderEpoch = epoch; }
                stepSeqs.Add(data[_order![(int)(pos % data.Count)]]);
            }
            double targets = stepSeqs.Sum(s => s.Target.Skip(1).Count(x => x));
            return Enumerable.Range(0, o.GradientAccumulationSteps)
                .Select(m => new Batch(stepSeqs.Skip(m * o.BatchSize).Take(o.BatchSize).ToList(), targets)).ToList();
        }

        public MicroBatchLoss Loss(ICausalLM model, Batch b)
        {
            var (ids, mask, tgt) = Collate(b.Sequences, model.EosTokenId, model.Device);
            var (s, _) = MaskedNll(model, ids, mask, tgt);
            var loss = s / Math.Max(1.0, b.StepTargets);
            return new MicroBatchLoss(loss, 1, new Dictionary<string, double> { ["loss"] = loss.item<float>() }, b.Sequences.Sum(x => x.Ids.Length));
        }

        public IReadOnlyDictionary<string, double>? Evaluate(ICausalLM model) =>
            valid is null ? null : new Dictionary<string, double> { ["loss"] = EvaluateLoss(model, valid, o.BatchSize) };

        /// <summary>Consecutive runs of the micro-batch's sequences (sizes differing by at most one), each normalised over
        /// the whole step's targets as the micro-batch was, so their losses add up to its loss; null with fewer sequences
        /// than parts. <see cref="Loss"/> reads only its arguments and the immutable options: safe on several threads.</summary>
        public IReadOnlyList<Batch>? Split(Batch b, int parts) =>
            TrainingLoop.EvenParts(b.Sequences.Count, parts, (start, length) => new Batch(b.Sequences.GetRange(start, length), b.StepTargets));
    }
}

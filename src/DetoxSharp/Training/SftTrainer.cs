using System.Diagnostics;
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
    public static SftExample Text(string text) => new(null, text);
    public static SftExample PromptCompletion(string prompt, string completion) => new(prompt, completion);
}

/// <summary>Settings of <see cref="SftTrainer"/> (names as in TRL's SFTConfig where one exists).</summary>
public sealed record SftOptions
{
    [Setting("sequences per micro-batch")]
    public int BatchSize { get; init; } = 8;
    /// <summary>Micro-batches per optimizer step; the loss is normalised over all target tokens of the step, so
    /// accumulation equals one big batch.</summary>
    [Setting("micro-batches per optimizer step")]
    public int GradientAccumulationSteps { get; init; } = 1;
    /// <summary>Block / truncation length; null = the model's context (n_positions).</summary>
    [Setting("block/truncation length in tokens (default: the model's context)")]
    public int? MaxLength { get; init; }
    [Setting("peak learning rate (AdamW)")]
    public double LearningRate { get; init; } = 5e-5;
    [Setting("AdamW weight decay")]
    public double WeightDecay { get; init; } = 0.0;
    public double Beta1 { get; init; } = 0.9;
    public double Beta2 { get; init; } = 0.999;
    public double Epsilon { get; init; } = 1e-8;
    [Setting("linear warmup steps")]
    public int WarmupSteps { get; init; } = 0;
    [Setting("learning-rate decay after warmup: constant, linear or cosine")]
    [System.Text.Json.Serialization.JsonConverter(typeof(System.Text.Json.Serialization.JsonStringEnumConverter<DecayKind>))]
    public DecayKind Decay { get; init; } = DecayKind.Linear;
    public double MinLrRatio { get; init; } = 0.0;
    /// <summary>Gradient clipping by global L2 norm; ≤ 0 disables.</summary>
    [Setting("gradient clipping by global norm (0 = off)")]
    public double MaxGradNorm { get; init; } = 1.0;
    [Setting("passes over the data")]
    public double Epochs { get; init; } = 1;
    /// <summary>Stops after this many optimizer steps (overrides <see cref="Epochs"/>).</summary>
    [Setting("optimizer steps (overrides epochs)")]
    public int? MaxSteps { get; init; }
    /// <summary>Seeds the data order (a pure function of seed and epoch, so resuming needs only the step).</summary>
    [Setting("data-order seed")]
    public ulong Seed { get; init; } = 0;
    [System.Text.Json.Serialization.JsonIgnore]
    public IReadOnlyList<SftExample>? Validation { get; init; }
    /// <summary>Validation loss every N steps (and at the end); 0 = only at the end when validation data exists.</summary>
    [Setting("validation loss every N optimizer steps (0 = at the end)")]
    public int EvalEvery { get; init; } = 0;
    /// <summary>Directory for checkpoint/ (resumable) and metrics.jsonl; null = neither.</summary>
    [System.Text.Json.Serialization.JsonIgnore]
    public string? OutputDir { get; init; }
    /// <summary>Writes a resumable checkpoint every N steps (0 = never; one is always written at the end when
    /// <see cref="OutputDir"/> is set).</summary>
    [Setting("save a resumable checkpoint every N optimizer steps (0 = at the end)")]
    public int CheckpointEvery { get; init; } = 100;
    /// <summary>Continue from OutputDir/checkpoint when it exists.</summary>
    [System.Text.Json.Serialization.JsonIgnore]
    public bool Resume { get; init; }
    /// <summary>Stop (as if interrupted) after this many steps of this run — for tests and time-boxed runs.</summary>
    [System.Text.Json.Serialization.JsonIgnore]
    public int? StopAfterSteps { get; init; }
    /// <summary>Append an end-of-text token to each completion / plain text.</summary>
    public bool AppendEos { get; init; } = true;
    /// <summary><see cref="Training.Precision.ModelDType"/> (train in the model's dtype) or
    /// <see cref="Training.Precision.Bf16Mixed"/> (bf16 forward/backward, fp32 master weights and AdamW state; needs a
    /// float32 model). Validation loss is computed with the fp32 master, i.e. the weights that are saved.</summary>
    [System.Text.Json.Serialization.JsonIgnore]
    public Precision Precision { get; init; } = Precision.ModelDType;

    /// <summary>Bounds for counts: beyond them a run would only exhaust memory building its batch list.</summary>
    public const int MaxBatch = 65536, MaxEpochs = 10_000;

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
    }
}

public sealed record SftProgress(int Step, int TotalSteps, double Loss, double LearningRate, double? ValidationLoss, double TokensPerSecond);

public sealed record SftResult(int Steps, double FinalTrainLoss, double? FinalValidationLoss, long TrainedTokens, double Seconds, bool Completed)
{
    public double TokensPerSecond => Seconds > 0 ? TrainedTokens / Seconds : 0;
}

/// <summary>
/// Supervised fine-tuning / pretraining of any <see cref="ICausalLM"/>: plain text packed into blocks or prompt +
/// completion with loss on completion tokens only (prompt and padding positions are masked), AdamW, warmup + decay
/// (<see cref="LrSchedule"/>), clipping, accumulation, validation loss, metrics JSONL and bit-exact resume.
/// By default trains in the model's dtype (a bfloat16 model trains in pure bfloat16, no fp32 master weights); with
/// <see cref="SftOptions.Precision"/> = <see cref="Precision.Bf16Mixed"/> a float32 model is the fp32 master and a bf16
/// working copy computes (<see cref="MixedPrecision"/>).
/// </summary>
public static class SftTrainer
{
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

    public static SftResult Train(ICausalLM model, Gpt2Tokenizer tokenizer, IReadOnlyList<SftExample> train, SftOptions options,
        IProgress<SftProgress>? progress = null, CancellationToken cancel = default)
    {
        options.Validate();
        MixedPrecision.CheckModel(model, options.Precision);
        int maxLength = Math.Min(options.MaxLength ?? model.MaxPositions, model.MaxPositions);
        if (tokenizer.VocabSize > model.VocabSize)
            throw new InvalidInputException($"tokenizer has {tokenizer.VocabSize} ids but the model's vocabulary is {model.VocabSize} (resize the model first)");
        var data = Tokenize(tokenizer, train, maxLength, options.AppendEos);
        if (data.Count == 0) throw new InvalidInputException("training data produced no sequences");
        var valid = options.Validation is { Count: > 0 } v ? Tokenize(tokenizer, v, maxLength, options.AppendEos) : null;

        int perStep = options.BatchSize * options.GradientAccumulationSteps;
        int stepsPerEpoch = Math.Max(1, data.Count / perStep);
        int totalSteps = options.MaxSteps ?? Math.Max(1, (int)Math.Ceiling(options.Epochs * stepsPerEpoch));
        var schedule = new LrSchedule(options.LearningRate, options.WarmupSteps, totalSteps, options.Decay, options.MinLrRatio);

        var parameters = model.Module.parameters().Where(p => p.requires_grad).ToList();
        // flat-buffer AdamW: the same update as torch.optim.AdamW, a few large ops per step (FusedOptimizers.cs)
        using TorchSharp.Modules.OptimizerHelper optimizer = FusedOptimizer.Supports(parameters)
            ? new FusedAdamW(parameters, options.LearningRate, options.Beta1, options.Beta2, options.Epsilon, options.WeightDecay)
            : torch.optim.AdamW(parameters, options.LearningRate, options.Beta1, options.Beta2, options.Epsilon, options.WeightDecay);

        string? ckptDir = options.OutputDir is null ? null : Path.Combine(options.OutputDir, "checkpoint");
        if (options.OutputDir is not null) AtomicDirectory.RecoverAll(options.OutputDir);
        int step = 0;
        long tokens = 0;
        if (options.Resume && ckptDir is not null && TrainerCheckpoint.Exists(ckptDir))
        {
            var st = TrainerCheckpoint.Load(ckptDir, model, optimizer);
            step = TrainerCheckpoint.Int(st, "step", ckptDir);
            tokens = StrictJson.OptionalLong(st, "tokens", Path.Combine(ckptDir, "trainer_state.json")) ?? 0;
            if (StrictJson.OptionalInt(st, "total_steps", Path.Combine(ckptDir, "trainer_state.json")) is int ts && ts != totalSteps)
                throw new InvalidInputException($"{ckptDir}: checkpoint was made for {ts} total steps, this run has {totalSteps} (same data and options needed to resume)");
        }
        using var metrics = options.OutputDir is null ? null : new MetricsLog(Path.Combine(options.OutputDir, "metrics.jsonl"), options.Resume ? step + 1 : null); // records carry the 1-based step just done

        model.Module.train();
        // built after a resume loaded the master's weights, so the working copy starts from them
        using var mixed = MixedPrecision.For(model, options.Precision);
        var compute = mixed?.Working ?? model; // runs forward/backward; `model` holds the weights the optimizer updates
        var sw = Stopwatch.StartNew();
        long runTokens = 0;
        double lastLoss = double.NaN;
        double? lastValid = null;
        int ranSteps = 0;
        int[]? order = null; int orderEpoch = -1;
        while (step < totalSteps)
        {
            if (cancel.IsCancellationRequested || (options.StopAfterSteps is int stop && ranSteps >= stop)) break;
            double lr = schedule.At(step);
            foreach (var g in optimizer.ParamGroups) g.LearningRate = lr;
            // the examples of this step, from the global stream position step·perStep
            var stepSeqs = new List<Sequence>(perStep);
            for (int k = 0; k < perStep; k++)
            {
                long pos = (long)step * perStep + k;
                int epoch = (int)(pos / data.Count);
                if (epoch != orderEpoch) { order = Order(data.Count, options.Seed, epoch); orderEpoch = epoch; }
                stepSeqs.Add(data[order![(int)(pos % data.Count)]]);
            }
            double targetCount = stepSeqs.Sum(s => s.Target.Skip(1).Count(x => x));
            double lossSum = 0;
            optimizer.zero_grad();
            for (int m = 0; m < options.GradientAccumulationSteps; m++)
            {
                using var scope = torch.NewDisposeScope();
                var micro = stepSeqs.Skip(m * options.BatchSize).Take(options.BatchSize).ToList();
                var (ids, mask, tgt) = Collate(micro, model.EosTokenId, model.Device);
                var (s, _) = MaskedNll(compute, ids, mask, tgt);
                var loss = s / Math.Max(1.0, targetCount);
                loss.backward();
                mixed?.AccumulateGradients(); // bf16 grads → fp32 master grads, summed over micro-batches
                lossSum += loss.item<float>();
                runTokens += micro.Sum(x => x.Ids.Length);
            }
            double gradNorm = double.NaN;
            using (var scope = torch.NewDisposeScope())
            {
                if (options.MaxGradNorm > 0) gradNorm = torch.nn.utils.clip_grad_norm_(parameters, options.MaxGradNorm);
                optimizer.step();
            }
            mixed?.SyncWorking();
            step++; ranSteps++;
            tokens += stepSeqs.Sum(x => x.Ids.Length);
            lastLoss = lossSum;
            double? vl = null;
            if (valid is not null && ((options.EvalEvery > 0 && step % options.EvalEvery == 0) || step == totalSteps))
                lastValid = vl = EvaluateLoss(model, valid, options.BatchSize);
            double tps = runTokens / Math.Max(1e-9, sw.Elapsed.TotalSeconds);
            var rec = new JsonObject
            {
                ["step"] = step, ["loss"] = lastLoss, ["learning_rate"] = lr, ["tokens"] = tokens,
                ["tokens_per_second"] = Math.Round(tps, 1),
            };
            if (!double.IsNaN(gradNorm)) rec["grad_norm"] = gradNorm;
            if (vl is double x) rec["eval_loss"] = x;
            metrics?.Write(rec);
            progress?.Report(new SftProgress(step, totalSteps, lastLoss, lr, vl, tps));
            if (ckptDir is not null && ((options.CheckpointEvery > 0 && step % options.CheckpointEvery == 0) || step == totalSteps))
                SaveCheckpoint(ckptDir, model, tokenizer, optimizer, step, tokens, totalSteps);
        }
        if (ckptDir is not null && step < totalSteps && ranSteps > 0)
            SaveCheckpoint(ckptDir, model, tokenizer, optimizer, step, tokens, totalSteps);
        model.Module.eval();
        return new SftResult(step, lastLoss, lastValid, runTokens, sw.Elapsed.TotalSeconds, step >= totalSteps);
    }

    static void SaveCheckpoint(string dir, ICausalLM model, Gpt2Tokenizer tok, TorchSharp.Modules.OptimizerHelper opt, int step, long tokens, int totalSteps) =>
        TrainerCheckpoint.Save(dir, model, tok, opt, new JsonObject { ["step"] = step, ["tokens"] = tokens, ["total_steps"] = totalSteps });
}

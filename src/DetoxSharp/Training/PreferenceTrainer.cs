using System.Security.Cryptography;
using System.Text.Json.Nodes;
using DetoxSharp.Checkpoints;
using DetoxSharp.Data;
using DetoxSharp.Models;
using DetoxSharp.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Training;

/// <summary>Preference-trainer settings (TRL-like names). Defaults = the paper's GPT-2 medium run; every default and
/// range lives here (the CLI binds its flags to these properties, the study's dpo/adpo sections deserialize into them).</summary>
public sealed record PreferenceTrainerOptions
{
    /// <summary>The preference loss (method, β, …).</summary>
    public PreferenceLossOptions Loss { get; init; } = new();
    /// <summary>Prompt and completion length limits.</summary>
    public TruncationOptions Truncation { get; init; } = new();
    /// <summary>Rmsprop (paper) or adamw.</summary>
    [Setting("rmsprop (paper) or adamw")]
    public string Optimizer { get; init; } = "rmsprop";
    /// <summary>Peak learning rate.</summary>
    [Setting("peak learning rate")]
    public double LearningRate { get; init; } = 1e-6;
    /// <summary>Weight decay.</summary>
    [Setting("weight decay")]
    public double WeightDecay { get; init; }
    /// <summary>Pairs per micro-batch.</summary>
    [Setting("pairs per micro-batch")]
    public int BatchSize { get; init; } = 4;
    /// <summary>Micro-batches per optimizer step.</summary>
    [Setting("micro-batches per optimizer step")]
    public int GradientAccumulationSteps { get; init; } = 1;
    /// <summary>Linear warmup steps.</summary>
    [Setting("linear warmup steps")]
    public int WarmupSteps { get; init; } = 150;
    /// <summary>Clip the global gradient norm to this (≤ 0: no clipping, norm still logged).</summary>
    [Setting("gradient-norm clip (0 = off)")]
    public double MaxGradNorm { get; init; } = 10;
    /// <summary>Evaluate on the validation set every this many optimizer steps (0: only at the end).</summary>
    [Setting("evaluate every N optimizer steps (0 = at the end only)")]
    public int EvalEvery { get; init; } = 0;
    /// <summary>Stop after this many evaluations without a lower validation loss (0: never).</summary>
    [Setting("early stop after this many evaluations without improvement (0 = never)")]
    public int Patience { get; init; } = 10;
    /// <summary>Number of held-out validation examples (taken after the seeded shuffle).</summary>
    [Setting("held-out validation pairs")]
    public int ValidationSize { get; init; } = 64;
    /// <summary>Passes over the training pairs.</summary>
    [Setting("passes over the training pairs")]
    public int Epochs { get; init; } = 1;
    /// <summary>Stop after this many optimizer steps (null: run the epochs).</summary>
    [Setting("stop after this many optimizer steps")]
    public int? MaxSteps { get; init; }
    /// <summary>Seed for shuffling and the validation split.</summary>
    [Setting("seed for shuffling and the validation split")]
    public ulong Seed { get; init; } = 42;
    /// <summary>Save a resumable checkpoint (out/checkpoint) every this many steps (0: only at the end / on cancel).</summary>
    [Setting("save a resumable checkpoint every N steps (0 = at the end)")]
    public int CheckpointEvery { get; init; } = 0;
    /// <summary>Precompute reference (and π_tox) log-probs once and cache them on disk.</summary>
    public bool CacheReference { get; init; } = true;
    /// <summary>Score the completions of one prompt (chosen, rejected, ADPO's toxic one) in one pass that runs the prompt
    /// once, the completions side by side after it (<see cref="LogProbs.SharedPromptSums"/>; default) instead of one
    /// sequence per completion: the prompt's forward and backward run once instead of two or three times. The same
    /// log-probs up to float rounding. Off: one sequence per completion, e.g. to time the two side by side.</summary>
    public bool SharePrompts { get; init; } = true;
    /// <summary>Where cached log-probs live (default: &lt;out&gt;/logp-cache).</summary>
    public string? CacheDir { get; init; }
    /// <summary><see cref="Training.Precision.ModelDType"/> (train in the policy's dtype) or
    /// <see cref="Training.Precision.Bf16Mixed"/>: the training-step policy log-probs come from a bf16 working copy, the
    /// fp32 policy is the master the optimizer updates (fp32 optimizer state). Reference / π_tox log-probs (cached or
    /// live) and validation use the fp32 models, so the cache is shared with fp32 runs and validation loss and best/
    /// selection judge the weights that are saved. The training steps' reference log-probs come from a bf16 copy of the
    /// reference (rounded as the working copy is), so the implicit reward starts at exactly 0 and the first loss is ln 2;
    /// they are cached beside the fp32 ones. <see cref="Training.Precision.Auto"/>: bf16-mixed on a CPU with native
    /// bf16 (<see cref="MixedPrecision.Resolve"/>; the CLI's and the study's default).</summary>
    public Precision Precision { get; init; } = Precision.ModelDType;
    /// <summary>Split each micro-batch of pairs into this many parts trained side by side, one a thread (data parallelism
    /// inside the process; <see cref="TrainingLoopOptions.DataParallel"/>): 1 (the default) off; 0 (auto) is off too for
    /// preference training, where it did not pay at the toy's 4-pair steps. Needs bf16 mixed precision on the CPU, cached
    /// reference log-probs (<see cref="CacheReference"/>, the default) and a loss that is a mean over pairs — not KTO,
    /// whose reference point is estimated over the whole micro-batch. The step equals the same parts run one after the
    /// other, at the parts' thread count.</summary>
    public int DataParallel { get; init; } = 1;
    /// <summary>Continue from &lt;out&gt;/checkpoint when it exists.</summary>
    [System.Text.Json.Serialization.JsonIgnore]
    public bool Resume { get; init; }
    /// <summary>With <see cref="Resume"/>: continue although adjustable settings (learning rate, warmup, clipping, step
    /// count; <see cref="TrainingLoopOptions.AdjustableSettings"/>) differ from the checkpoint's.</summary>
    [System.Text.Json.Serialization.JsonIgnore]
    public bool AllowSettingChanges { get; init; }
    /// <summary>Also write the metrics as TensorBoard scalars into an event file in this directory (null: no).</summary>
    [System.Text.Json.Serialization.JsonIgnore]
    public string? TensorBoardDir { get; init; }

    /// <summary>Checks every setting; throws <see cref="InvalidSettingException"/> naming the first one out of range.</summary>
    public void Validate()
    {
        Loss.Validate();
        Truncation.Validate();
        Optimizers.Parse(Optimizer);
        Require.Number(LearningRate, "learning_rate", 0, minExclusive: true);
        Require.Number(WeightDecay, "weight_decay", 0);
        Require.Number(MaxGradNorm, "max_grad_norm", 0);
        Require.Count(BatchSize, "batch_size", 1, SftOptions.MaxBatch);
        InvalidSettingException.Require(DataParallel >= 0, "data_parallel", $"must be 0 (auto) or a positive number of parts (got {DataParallel})");
        Require.Count(GradientAccumulationSteps, "gradient_accumulation_steps", 1, SftOptions.MaxBatch);
        InvalidSettingException.Require(WarmupSteps >= 0, "warmup_steps", $"must be ≥ 0 (got {WarmupSteps})");
        InvalidSettingException.Require(EvalEvery >= 0, "eval_every", $"must be ≥ 0 (got {EvalEvery})");
        InvalidSettingException.Require(Patience >= 0, "patience", $"must be ≥ 0 (got {Patience})");
        InvalidSettingException.Require(ValidationSize >= 0, "validation_size", $"must be ≥ 0 (got {ValidationSize})");
        Require.Count(Epochs, "epochs", 1, SftOptions.MaxEpochs);
        InvalidSettingException.Require(MaxSteps is null or >= 1, "max_steps", $"must be ≥ 1 (got {MaxSteps})");
        InvalidSettingException.Require(CheckpointEvery >= 0, "checkpoint_every", $"must be ≥ 0 (got {CheckpointEvery})");
    }
}

/// <summary>The outcome of <see cref="PreferenceTrainer.Train"/>: the loop's result plus where the models went.</summary>
/// <param name="Run">The training loop's result.</param>
/// <param name="ReferenceCacheHit">Every reference and π_tox log-prob the run used came from the on-disk cache (none
/// was scored in this run).</param>
/// <param name="FinalDir">The final model's checkpoint directory.</param>
/// <param name="BestDir">The lowest-validation-loss model's directory (null without validation).</param>
/// <param name="MetricsPath">metrics.jsonl.</param>
public sealed record PreferenceTrainResult(TrainingRunResult Run, bool ReferenceCacheHit, string FinalDir, string? BestDir, string MetricsPath)
{
    /// <summary>Optimizer steps done, counting a resumed run's earlier part.</summary>
    public int Steps => Run.Steps;
    /// <summary>Pairs trained on, counting a resumed run's earlier part.</summary>
    public long Examples => Run.Items;
    /// <summary>Lowest validation loss (null without validation).</summary>
    public double? BestValidationLoss => Run.BestEvalLoss;
    /// <summary>Early stopping ended the run.</summary>
    public bool StoppedEarly => Run.Stop == TrainingStop.EarlyStopped;
    /// <summary>The run was cancelled or hit its step limit before the end.</summary>
    public bool Cancelled => Run.Stop is TrainingStop.Cancelled or TrainingStop.StepLimit;
    /// <summary>Pairs per second in this process.</summary>
    public double PairsPerSecond => Run.ItemsPerSecond;
}

/// <summary>
/// DPO-family / ADPO trainer. Policy = the model passed in (trained in place). Reference = <see cref="Reference"/> or,
/// when null, the policy's starting weights. Reference and π_tox log-probs are cached on disk under a key hashing the
/// model weights, the tokenized data, the truncation settings and the batches they are scored in, so reruns reuse them.
/// Those of frozen copies (the reference's bf16 copy under mixed precision, π_tox) are scored when training first reaches
/// a batch, so a run that stops early does not score pairs it never trains on; the fp32 reference when it is the policy
/// itself is scored before any update (and before resume loads trained weights). The steps are
/// <see cref="TrainingLoop"/>'s; this class supplies the pairs' order and the preference loss of a batch.
/// Output dir: metrics.jsonl, checkpoint/ (resumable), best/ (lowest validation loss), final/.
/// </summary>
public sealed class PreferenceTrainer(ICausalLM policy, Gpt2Tokenizer tokenizer, PreferenceTrainerOptions options)
{
    /// <summary>The reference model (null: the policy's starting weights).</summary>
    public ICausalLM? Reference { get; init; }
    /// <summary>π_tox, the toxic model ADPO's penalty compares with (required for ADPO; its tokenizer has [TOXIC]).</summary>
    public ICausalLM? ToxicPolicy { get; init; }
    /// <summary>The tokenizer saved with checkpoints and models (default: the training tokenizer).</summary>
    public Gpt2Tokenizer? SaveTokenizer { get; init; }
    /// <summary>One-line notices (cache hits, recovered directories, accepted setting changes).</summary>
    public Action<string>? Log { get; init; }
    /// <summary>Optional structured logging (Microsoft.Extensions.Logging; see <see cref="TrainingLoopOptions.Logger"/>).</summary>
    public Microsoft.Extensions.Logging.ILogger? Logger { get; init; }
    /// <summary>Time this trainer's runs spent scoring reference and π_tox log-probs for the cache (before training and
    /// as training reached batches not scored yet); live references are part of the steps instead.</summary>
    public TimeSpan ReferenceScoring => scoredBefore + active.Aggregate(TimeSpan.Zero, (t, c) => t + c.ScoringTime);
    TimeSpan scoredBefore;
    List<LogpCache> active = [];

    /// <summary>Trains the policy in place on <paramref name="data"/>, writing into <paramref name="outDir"/>. Returns when
    /// all steps ran, validation stopped improving, the token fired (after checkpointing the last whole step) or the
    /// resumed run had already finished; throws <see cref="TrainingDivergedException"/> on a non-finite loss or gradient
    /// norm, and <see cref="OperationCanceledException"/> when cancelled while computing the reference log-probs.</summary>
    public PreferenceTrainResult Train(IReadOnlyList<PreferenceExample> data, string outDir, IProgress<TrainingProgress>? progress = null,
        CancellationToken cancel = default)
    {
        var o = options with { Precision = MixedPrecision.Resolve(policy, options.Precision) }; // checkpoints record the resolved value
        var toxicModel = ToxicPolicy;
        var outTok = SaveTokenizer ?? tokenizer;
        o.Validate();
        MixedPrecision.CheckModel(policy, o.Precision);
        bool adpo = o.Loss.IsAdpo;
        int? toxicId = null;
        if (adpo)
        {
            if (toxicModel is null) throw new InvalidInputException("ADPO needs a toxic model (--toxic-model)");
            if (data.Any(e => e.Toxic is null)) throw new InvalidInputException("ADPO needs triples with a 'toxic' field in every record");
            toxicId = tokenizer.SpecialTokens.TryGetValue(ToxicModel.ControlToken, out var t) ? t
                : throw new InvalidInputException($"the tokenizer has no {ToxicModel.ControlToken} token; use the toxic model's directory as --model or add it");
            if (toxicId >= toxicModel.VocabSize) throw new InvalidInputException($"--toxic-model vocabulary ({toxicModel.VocabSize}) lacks {ToxicModel.ControlToken} (id {toxicId})");
        }
        // never exceed the model's context (π_tox's context is one token longer: the [TOXIC] token)
        int ctx = Math.Min(policy.MaxPositions, toxicModel?.MaxPositions ?? int.MaxValue) - (adpo ? 1 : 0);
        var trunc = o.Truncation.MaxLength > ctx ? o.Truncation with { MaxLength = ctx } : o.Truncation;
        var all = data.Select(e => PreferenceData.Tokenize(e, tokenizer, trunc, toxicId)).ToList();
        foreach (var e in all)
            if (e.Prompt.Concat(e.Chosen).Concat(e.Rejected).Concat(e.Toxic ?? []).Any(id => id >= policy.VocabSize))
                throw new InvalidInputException($"{e.Where}: text contains a token id outside the policy's vocabulary ({policy.VocabSize}), e.g. a special token it lacks");
        if (!adpo) all = all.Select(e => e with { Toxic = null, ToxicPrompt = null }).ToList();
        bool kto = o.Loss.IsKto, needsRef = o.Loss.NeedsReference;
        if (kto && all.FirstOrDefault(e => e.Desirable is null) is { } unlabelled)
            throw new InvalidInputException($"{unlabelled.Where}: KTO needs unpaired data with a 'label' (prompt/completion/label; `detox convert pairs-to-kto` makes it from pairs)");
        if (!kto && all.FirstOrDefault(e => e.Desirable is not null) is { } labelled)
            throw new InvalidInputException($"{labelled.Where}: unpaired (KTO) data needs the kto loss");
        // the split and the step count are checked before any expensive work (the reference log-probs)
        var indices = Enumerable.Range(0, all.Count).ToList();
        var (trainIdx, valIdx) = PreferenceData.Split(indices, o.ValidationSize, o.Seed);
        var micro = new List<int[]>();
        for (int e = 0; e < o.Epochs; e++)
        {
            var order = PreferenceData.Shuffle(trainIdx, o.Seed + 1 + (ulong)e);
            for (int i = 0; i < order.Count; i += o.BatchSize) micro.Add(order.Skip(i).Take(o.BatchSize).ToArray());
        }
        int totalSteps = micro.Count / o.GradientAccumulationSteps;
        if (o.MaxSteps is int ms) totalSteps = Math.Min(totalSteps, ms);
        if (totalSteps < 1) throw new InvalidInputException($"not enough training pairs ({trainIdx.Count}) for one step of {o.BatchSize}×{o.GradientAccumulationSteps}");
        Directory.CreateDirectory(outDir);
        string cacheDir = o.CacheDir ?? Path.Combine(outDir, "logp-cache");
        string dataHash = PreferenceData.Hash(all, trunc);

        var settings = TrainingSettings.Of(o);
        settings["max_length"] = trunc.MaxLength; // the context may have shrunk it
        settings["data"] = dataHash;
        string bestDir = Path.Combine(outDir, "best"), finalDir = Path.Combine(outDir, "final");
        // data parallelism: "auto" is off here — at the toy's 4-pair steps two 2-pair halves side by side ran ≈ 8 % slower
        // than the whole step on two threads (docs/PERFORMANCE.md, twenty-eighth session); asked for, it needs parts that
        // are independent means over pairs with cached reference values
        int parts = o.DataParallel == 0 ? 1 : o.DataParallel;
        if (parts > 1 && o.Loss.IsKto)
            throw new InvalidInputException($"--data-parallel {parts} does not apply to KTO: its reference point is estimated over the whole micro-batch (use --data-parallel 1)");
        if (parts > 1 && needsRef && !o.CacheReference)
            throw new InvalidInputException($"--data-parallel {parts} needs the cached reference log-probs (drop --no-cache)");
        // a resume with other settings is refused now, not after the reference log-probs
        var loop = new TrainingLoopOptions
        {
            TotalSteps = totalSteps,
            Schedule = new LrSchedule(o.LearningRate, o.WarmupSteps, totalSteps),
            Optimizer = Optimizers.Parse(o.Optimizer),
            OptimizerSettings = new OptimizerSettings { LearningRate = o.LearningRate, WeightDecay = o.WeightDecay },
            MaxGradNorm = o.MaxGradNorm, MeanOverWeights = true, Precision = o.Precision, DataParallel = parts,
            EvalEvery = o.EvalEvery, Patience = o.Patience, OutputDir = outDir, TensorBoardDir = o.TensorBoardDir, BestDir = bestDir, CheckpointEvery = o.CheckpointEvery,
            Resume = o.Resume, AllowSettingChanges = o.AllowSettingChanges, Settings = settings, ItemName = "examples",
            Tokenizer = outTok, Log = Log, Logger = Logger,
        };
        TrainingLoop.CheckResume(loop);

        // --- reference / π_tox log-probs (from the starting weights, before resume) ---
        double[]? refC = null, refR = null;
        bool mixed = o.Precision == Precision.Bf16Mixed && needsRef;
        var refModel = Reference ?? policy;
        ICausalLM? liveRef = null, liveRef16 = null, ref16 = null;
        LogpCache? fp32Ref = null, bf16Ref = null, toxRef = null;
        if (!needsRef)
        {
            // ORPO / SimPO: no reference model at all — no pass, no cache, no copy
            refC = new double[all.Count]; refR = new double[all.Count];
        }
        else if (o.CacheReference)
        {
            // mixed precision: validation compares the fp32 master with the fp32 reference, and the training steps compare
            // the bf16 working copy with the reference's bf16 copy (the same rounding, so log π − log π_ref starts at
            // exactly 0, loss ln 2, instead of bf16 noise). So the fp32 pass, ≈ 3× the cost of the bf16 one, runs only on
            // the batches that hold validation pairs; the entries it skips stay NaN: a use of one would stop the run as
            // non-finite, never train on a wrong reference. Without mixed precision the fp32 reference is the policy's
            // own starting weights, so every pair is scored now, before training changes them.
            string hash = ModelHash(refModel);
            fp32Ref = new LogpCache(cacheDir, "ref", hash, dataHash, (refModel, all, tokenizer.EosTokenId, false, o.SharePrompts), null, o.BatchSize);
            try { fp32Ref.Ensure(mixed ? valIdx : Enumerable.Range(0, all.Count), cancel); }
            finally { fp32Ref.Save(); } // a cancelled pass keeps the batches it finished
            (refC, refR) = (fp32Ref.A, fp32Ref.B);
            if (mixed)
            {
                // the training steps' bf16 reference, scored in the first epoch's training batches (at the first step the
                // working copy then sees the same tensors as this pass, so the loss is ln 2 to the bit) when training first
                // reaches a batch: a run that stops early never scores the rest. The bf16 copy stays for that (half the
                // fp32 model's memory).
                ref16 = Bf16Copy(refModel);
                bf16Ref = new LogpCache(cacheDir, "ref-bf16", hash + "|bf16", dataHash, (ref16, all, tokenizer.EosTokenId, false, o.SharePrompts),
                    micro.Take((trainIdx.Count + o.BatchSize - 1) / o.BatchSize).ToList(), o.BatchSize);
            }
            if (adpo) // π_tox is a separate frozen model: scored as batches are reached too
                toxRef = new LogpCache(cacheDir, "tox", ModelHash(toxicModel!), dataHash, (toxicModel!, all, tokenizer.EosTokenId, true, o.SharePrompts), null, o.BatchSize);
            int pending = (bf16Ref?.MissingBatches ?? 0) + (toxRef?.MissingBatches ?? 0);
            var cacheNote = fp32Ref.BatchesScored == 0 && pending == 0 ? $"log-prob cache hit ({cacheDir})"
                : pending == 0 ? $"log-probs computed and cached in {cacheDir}"
                : $"log-probs cached in {cacheDir}; {pending} batches not scored yet are scored when training first reaches them";
            Log?.Invoke(cacheNote);
            Microsoft.Extensions.Logging.LoggerExtensions.LogInformation(Logger ?? Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance, "{Message}", cacheNote);
        }
        else
        {
            liveRef = Reference ?? policy.Clone();
            if (mixed) liveRef16 = Bf16Copy(liveRef);
        }
        var caches = active = new[] { fp32Ref, bf16Ref, toxRef }.OfType<LogpCache>().ToList();
        try
        {
            var objective = new Objective(all, micro, valIdx, o, tokenizer.EosTokenId, adpo,
                new RefLogps(refC, refR, bf16Ref, toxRef), liveRef, liveRef16, toxicModel);
            var run = TrainingLoop.Run(policy, objective, loop, progress, cancel);
            if (run.Stop is TrainingStop.Completed or TrainingStop.EarlyStopped
                || (run.Stop == TrainingStop.AlreadyFinished && !Directory.Exists(finalDir)))
                HfCheckpoint.Save(policy, outTok, finalDir, overwrite: true);
            bool cacheHit = o.CacheReference && needsRef && caches.All(c => c.BatchesScored == 0);
            return new PreferenceTrainResult(run, cacheHit, finalDir, Directory.Exists(bestDir) ? bestDir : null, Path.Combine(outDir, "metrics.jsonl"));
        }
        finally
        {
            foreach (var c in caches) c.Save(); // what was scored serves the next run, also after a cancel or a failure
            scoredBefore = ReferenceScoring;
            active = [];
            if (liveRef is not null && Reference is null) liveRef.Dispose();
            liveRef16?.Dispose();
            ref16?.Dispose();
        }
    }

    /// <summary>Cached log-prob sums per example: the fp32 reference's for chosen and rejected (C, R), with bf16-mixed the
    /// reference's bf16 copy's, which the training steps use (<paramref name="Bf16"/>), and π_tox's for y_t
    /// (<paramref name="Tox"/>); the two caches are filled for a batch before its values are read.</summary>
    sealed record RefLogps(double[]? C, double[]? R, LogpCache? Bf16, LogpCache? Tox);

    /// <summary>A bfloat16 copy of <paramref name="m"/>, made as <see cref="MixedPrecision"/> makes its working copy.</summary>
    static ICausalLM Bf16Copy(ICausalLM m)
    {
        var c = m.Clone();
        c.Module.to(ScalarType.BFloat16);
        c.Module.eval();
        return c;
    }

    /// <summary>The pairs' order (micro-batches of example indices, fixed before training) and the preference loss.</summary>
    sealed class Objective(List<TokenizedExample> all, List<int[]> micro, List<int> valIdx, PreferenceTrainerOptions o, int padId, bool adpo,
        RefLogps cached, ICausalLM? liveRef, ICausalLM? liveRef16, ICausalLM? toxicModel) : ITrainingObjective<int[]>
    {
        public IReadOnlyList<int[]> Batches(int step) =>
            Enumerable.Range(0, o.GradientAccumulationSteps).Select(a => micro[step * o.GradientAccumulationSteps + a]).ToList();

        public MicroBatchLoss Loss(ICausalLM model, int[] idx)
        {
            // reference / π_tox values of a batch training reaches for the first time (before the policy's pass, so
            // that its activations are not held meanwhile)
            cached.Bf16?.Ensure(idx);
            cached.Tox?.Ensure(idx);
            var (loss, m) = LossOf(idx, model);
            // summed over examples here; the loop divides the step's gradients and metrics by the number of pairs
            return new MicroBatchLoss(loss * ((double)idx.Length), idx.Length, m, idx.Length);
        }

        /// <summary>Consecutive runs of the micro-batch's pairs (sizes differing by at most one); each part's loss is its
        /// mean × its pairs, as the whole micro-batch's is, so the loop's Σ ÷ Σ weight is the same mean. The cached
        /// reference / π_tox values of the whole micro-batch are filled here, on the loop's thread, so that
        /// <see cref="Loss"/> only reads them on the parts' threads. Null — run as one — with fewer pairs than parts. The
        /// trainer refuses data parallelism up front with KTO (its reference point is a statistic of the whole
        /// micro-batch) and with a live reference (a model the parts' threads would share), so neither reaches here.</summary>
        public IReadOnlyList<int[]>? Split(int[] idx, int parts)
        {
            cached.Bf16?.Ensure(idx);
            cached.Tox?.Ensure(idx);
            return TrainingLoop.EvenParts(idx.Length, parts, (start, length) => idx[start..(start + length)]);
        }

        public IReadOnlyDictionary<string, double>? Evaluate(ICausalLM policy)
        {
            if (valIdx.Count == 0) return null;
            policy.Module.eval();
            int n = 0;
            var acc = new Dictionary<string, double>();
            using (torch.no_grad())
                for (int i = 0; i < valIdx.Count; i += o.BatchSize)
                {
                    using var scope = torch.NewDisposeScope();
                    var idx = valIdx.Skip(i).Take(o.BatchSize).ToArray();
                    cached.Tox?.Ensure(idx); // π_tox (validation reads the fp32 reference, scored before training)
                    var (_, m) = LossOf(idx, policy); // fp32 master in mixed precision: the weights that are saved
                    foreach (var (k, v) in m) acc[k] = acc.GetValueOrDefault(k) + v * idx.Length;
                    n += idx.Length;
                }
            policy.Module.train();
            return acc.ToDictionary(kv => kv.Key, kv => kv.Value / n);
        }

        // Logps of the policy (or a live model) on a batch of example indices; returns sums [n] per segment.
        Tensor[] PolicyLogps(ICausalLM m, IReadOnlyList<int> idx, bool withToxic) => PairLogpSums(m, all, idx, padId, o.SharePrompts, withToxic).split(idx.Count);

        static Tensor Lookup(double[] a, IReadOnlyList<int> idx, ScalarType dt) => torch.tensor(idx.Select(i => a[i]).ToArray()).to(dt);

        (Tensor Loss, Dictionary<string, double> M) LossOf(IReadOnlyList<int> idx, ICausalLM pm)
        {
            var pol = PolicyLogps(pm, idx, adpo);
            var dt = pol[0].dtype;
            // the bf16 working copy (mixed precision's training steps) is compared with the reference's bf16 copy; the
            // fp32 master (validation) with the fp32 reference
            bool low = pm.DType == ScalarType.BFloat16;
            Tensor rc, rr, tt = null!;
            if (liveRef is null)
            {
                bool use16 = low && cached.Bf16 is not null;
                rc = Lookup(use16 ? cached.Bf16!.A : cached.C!, idx, dt); rr = Lookup(use16 ? cached.Bf16!.B : cached.R!, idx, dt);
                if (adpo) tt = Lookup(cached.Tox!.A, idx, dt);
            }
            else
            {
                using var ng = torch.no_grad();
                var r = PolicyLogps(low && liveRef16 is not null ? liveRef16 : liveRef, idx, false);
                rc = r[0]; rr = r[1];
                if (adpo)
                    tt = ToxicLogpSums(toxicModel!, all, idx, padId, o.SharePrompts).to(dt);
            }
            var chosenTokens = torch.tensor(idx.Select(i => (double)all[i].Chosen.Length).ToArray()).to(dt);
            var rejectedTokens = torch.tensor(idx.Select(i => (double)all[i].Rejected.Length).ToArray()).to(dt);
            var desirable = o.Loss.IsKto ? torch.tensor(idx.Select(i => all[i].Desirable == true ? 1.0 : 0.0).ToArray()).to(dt) : null;
            var res = PreferenceLoss.Compute(new PreferenceLogps(pol[0], pol[1], rc, rr, adpo ? pol[2] : null, adpo ? tt : null, chosenTokens, rejectedTokens, desirable), o.Loss);
            return (res.Loss, res.Metrics);
        }
    }

    /// <summary>Summed log-probs of the chosen and the rejected completion (and, with <paramref name="withToxic"/>, y_t) of
    /// examples <paramref name="idx"/> after their prompts, [segments·n] in segment-major order.</summary>
    internal static Tensor PairLogpSums(ICausalLM m, List<TokenizedExample> all, IReadOnlyList<int> idx, int padId, bool share, bool withToxic = false)
    {
        var segments = new List<IReadOnlyList<int[]>> { idx.Select(i => all[i].Chosen).ToList(), idx.Select(i => all[i].Rejected).ToList() };
        if (withToxic) segments.Add(idx.Select(i => all[i].Toxic!).ToList());
        return SegmentLogpSums(m, idx.Select(i => all[i].Prompt).ToList(), segments, padId, share);
    }

    /// <summary>Summed log-probs of y_t after [TOXIC]+prompt (π_tox's context) of examples <paramref name="idx"/>, [n].</summary>
    internal static Tensor ToxicLogpSums(ICausalLM m, List<TokenizedExample> all, IReadOnlyList<int> idx, int padId, bool share) =>
        SegmentLogpSums(m, idx.Select(i => all[i].ToxicPrompt!).ToList(), [idx.Select(i => all[i].Toxic!).ToList()], padId, share);

    /// <summary>Summed completion log-probs of segment s's completion of example i after the example's prompt,
    /// [segments·n] in segment-major order (s·n + i): shared-prompt scoring when <paramref name="share"/> and it applies,
    /// else one padded sequence per (prompt, completion).</summary>
    static Tensor SegmentLogpSums(ICausalLM m, IReadOnlyList<int[]> prompts, IReadOnlyList<IReadOnlyList<int[]>> segments, int padId, bool share)
    {
        if (share && LogProbs.CanSharePrompts(m, prompts, segments.SelectMany(c => c)))
            return LogProbs.SharedPromptSums(m, prompts, segments.SelectMany(seg => seg.Select((c, i) => (i, c))).ToList(), padId);
        using var batch = PreferenceData.Build(segments.SelectMany(seg => seg.Select((c, i) => (prompts[i], c))).ToList(), padId, m.Device);
        return CompletionLogpSums(m, batch);
    }

    /// <summary>Summed log-probs of the completion tokens of each row, [B] (float32, or float64 for float64 models).
    /// The LM head and log-softmax run only on the positions that predict a completion token: prompt and padding
    /// positions never reach the V-wide head (at GPT-2 scale the head is ≈ 30 % of a forward's FLOPs and its fp32
    /// log-softmax the largest activation), which makes a step cheaper without changing any log-prob.</summary>
    public static Tensor CompletionLogpSums(ICausalLM model, SequenceBatch batch)
    {
        long b = batch.Ids.shape[0], t = batch.Ids.shape[1];
        var (lp, flat) = LogProbs.AtPositions(model, batch.Ids, batch.AttentionMask, batch.CompletionMask);
        var rows = flat.div(t - 1, rounding_mode: RoundingMode.floor);
        return torch.zeros(b, lp.dtype, lp.device).index_add(0, rows, lp, 1);
    }

    /// <summary>SHA-256 over parameter names, dtypes, shapes and bytes (the model part of the cache key).</summary>
    public static string ModelHash(ICausalLM model)
    {
        using var h = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        foreach (var (name, p) in model.Module.named_parameters().OrderBy(x => x.name, StringComparer.Ordinal))
        {
            h.AppendData(System.Text.Encoding.UTF8.GetBytes($"{name}:{p.dtype}:{string.Join(',', p.shape)};"));
            using var c = p.detach().cpu().contiguous();
            h.AppendData(c.bytes);
        }
        return Convert.ToHexString(h.GetHashAndReset()).ToLowerInvariant();
    }
}

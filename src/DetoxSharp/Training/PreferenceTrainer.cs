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
    public PreferenceLossOptions Loss { get; init; } = new();
    public TruncationOptions Truncation { get; init; } = new();
    [Setting("rmsprop (paper) or adamw")]
    public string Optimizer { get; init; } = "rmsprop";
    [Setting("peak learning rate")]
    public double LearningRate { get; init; } = 1e-6;
    [Setting("weight decay")]
    public double WeightDecay { get; init; }
    [Setting("pairs per micro-batch")]
    public int BatchSize { get; init; } = 4;
    [Setting("micro-batches per optimizer step")]
    public int GradientAccumulationSteps { get; init; } = 1;
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
    [Setting("passes over the training pairs")]
    public int Epochs { get; init; } = 1;
    /// <summary>Stop after this many optimizer steps (null: run the epochs).</summary>
    [Setting("stop after this many optimizer steps")]
    public int? MaxSteps { get; init; }
    [Setting("seed for shuffling and the validation split")]
    public int Seed { get; init; } = 42;
    /// <summary>Save a resumable checkpoint (out/checkpoint) every this many steps (0: only at the end / on cancel).</summary>
    [Setting("save a resumable checkpoint every N steps (0 = at the end)")]
    public int CheckpointEvery { get; init; } = 0;
    /// <summary>Precompute reference (and π_tox) log-probs once and cache them on disk.</summary>
    public bool CacheReference { get; init; } = true;
    /// <summary>Where cached log-probs live (default: &lt;out&gt;/logp-cache).</summary>
    public string? CacheDir { get; init; }
    /// <summary><see cref="Training.Precision.ModelDType"/> (train in the policy's dtype) or
    /// <see cref="Training.Precision.Bf16Mixed"/>: the training-step policy log-probs come from a bf16 working copy, the
    /// fp32 policy is the master the optimizer updates (fp32 optimizer state). Reference / π_tox log-probs (cached or
    /// live) and validation use the fp32 models, so the cache is shared with fp32 runs and validation loss and best/
    /// selection judge the weights that are saved.</summary>
    public Precision Precision { get; init; } = Precision.ModelDType;

    public void Validate()
    {
        Loss.Validate();
        Truncation.Validate();
        InvalidSettingException.Require(Optimizer is "rmsprop" or "adamw", "optimizer", $"expects rmsprop or adamw (got '{Optimizer}')");
        Require.Number(LearningRate, "learning_rate", 0, minExclusive: true);
        Require.Number(WeightDecay, "weight_decay", 0);
        Require.Number(MaxGradNorm, "max_grad_norm", 0);
        Require.Count(BatchSize, "batch_size", 1, SftOptions.MaxBatch);
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

public sealed record PreferenceProgress(int Step, int TotalSteps, Dictionary<string, double> Metrics, string Phase);

public sealed record PreferenceTrainResult(int Steps, int Examples, double? BestValidationLoss, bool StoppedEarly, bool Cancelled,
    bool ReferenceCacheHit, string FinalDir, string? BestDir, string MetricsPath, double PairsPerSecond);

/// <summary>
/// DPO-family / ADPO trainer. Policy = the model passed in (trained in place). Reference = `reference` or, when null,
/// the policy's starting weights. Reference and π_tox log-probs are precomputed (before any update, before resume
/// loads trained weights) and cached on disk under a key hashing the model weights, the tokenized data and the
/// truncation settings, so neither model needs to stay in memory and reruns reuse them.
/// Output dir: metrics.jsonl, checkpoint/ (resumable), best/ (lowest validation loss), final/.
/// </summary>
public static class PreferenceTrainer
{
    public static PreferenceTrainResult Train(ICausalLM policy, Gpt2Tokenizer tokenizer, IReadOnlyList<PreferenceExample> data,
        string outDir, PreferenceTrainerOptions o, ICausalLM? reference = null, ICausalLM? toxicModel = null, string? resumeDir = null,
        Action<PreferenceProgress>? progress = null, CancellationToken cancel = default, Action<string>? log = null, Gpt2Tokenizer? saveTokenizer = null)
    {
        var outTok = saveTokenizer ?? tokenizer;
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
        // the split and the step count are checked before any expensive work (the reference log-probs)
        var indices = Enumerable.Range(0, all.Count).ToList();
        var (trainIdx, valIdx) = PreferenceData.Split(indices, o.ValidationSize, o.Seed);
        var micro = new List<int[]>();
        for (int e = 0; e < o.Epochs; e++)
        {
            var order = PreferenceData.Shuffle(trainIdx, o.Seed + 1 + e);
            for (int i = 0; i < order.Count; i += o.BatchSize) micro.Add(order.Skip(i).Take(o.BatchSize).ToArray());
        }
        int totalSteps = micro.Count / o.GradientAccumulationSteps;
        if (o.MaxSteps is int ms) totalSteps = Math.Min(totalSteps, ms);
        if (totalSteps < 1) throw new InvalidInputException($"not enough training pairs ({trainIdx.Count}) for one step of {o.BatchSize}×{o.GradientAccumulationSteps}");
        Directory.CreateDirectory(outDir);
        foreach (var line in AtomicDirectory.RecoverAll(outDir)) log?.Invoke(line);
        string cacheDir = o.CacheDir ?? Path.Combine(outDir, "logp-cache");

        // --- reference / π_tox log-probs (computed from starting weights, before resume) ---
        double[]? refC = null, refR = null, tox = null;
        bool cacheHit = true;
        var refModel = reference ?? policy;
        ICausalLM? liveRef = null;
        if (o.CacheReference)
        {
            string dataHash = PreferenceData.Hash(all, trunc);
            (refC, refR, var hit1) = CachedLogps(cacheDir, "ref", ModelHash(refModel), dataHash, refModel, all, o.BatchSize, tokenizer.EosTokenId, false);
            cacheHit &= hit1;
            if (adpo)
            {
                (tox, _, var hit2) = CachedLogps(cacheDir, "tox", ModelHash(toxicModel!), dataHash, toxicModel!, all, o.BatchSize, tokenizer.EosTokenId, true);
                cacheHit &= hit2;
            }
            log?.Invoke(cacheHit ? $"log-prob cache hit ({cacheDir})" : $"log-probs computed and cached in {cacheDir}");
        }
        else
        {
            cacheHit = false;
            liveRef = reference ?? policy.Clone();
        }


        var parameters = policy.Module.parameters().Where(p => p.requires_grad).ToList();
        // flat-buffer optimizers: the updates of torch.optim.AdamW / RMSProp (defaults included), a few large ops per step
        bool fused = FusedOptimizer.Supports(parameters);
        TorchSharp.Modules.OptimizerHelper opt = (o.Optimizer, fused) switch
        {
            ("adamw", true) => new FusedAdamW(parameters, o.LearningRate, weightDecay: o.WeightDecay),
            ("adamw", false) => torch.optim.AdamW(parameters, o.LearningRate, weight_decay: o.WeightDecay),
            (_, true) => new FusedRMSprop(parameters, o.LearningRate, weightDecay: o.WeightDecay),
            _ => torch.optim.RMSProp(parameters, o.LearningRate, weight_decay: o.WeightDecay),
        };
        var schedule = new LrSchedule(o.LearningRate, o.WarmupSteps, totalSteps);

        int step = 0, examples = 0, bad = 0;
        double? best = null;
        if (resumeDir is not null)
        {
            var st = TrainerCheckpoint.Load(resumeDir, policy, opt);
            step = TrainerCheckpoint.Int(st, "step", resumeDir);
            examples = TrainerCheckpoint.Int(st, "examples", resumeDir);
            bad = TrainerCheckpoint.Int(st, "bad_evals", resumeDir);
            best = StrictJson.OptionalDouble(st, "best_val_loss", Path.Combine(resumeDir, "trainer_state.json"));
            if (TrainerCheckpoint.Int(st, "total_steps", resumeDir) != totalSteps) throw new InvalidInputException($"--resume {resumeDir}: checkpoint was made with {st["total_steps"]} total steps, this run has {totalSteps}; use the same data and options");
        }
        var metricsPath = Path.Combine(outDir, "metrics.jsonl");
        using var metrics = new MetricsLog(metricsPath, resumeDir is null ? null : step + 1);
        string ckptDir = Path.Combine(outDir, "checkpoint"), bestDir = Path.Combine(outDir, "best"), finalDir = Path.Combine(outDir, "final");

        JsonObject State() => new()
        {
            ["step"] = step, ["examples"] = examples, ["bad_evals"] = bad,
            ["best_val_loss"] = best is double b ? b : null, ["total_steps"] = totalSteps, ["seed"] = o.Seed,
        };

        // Logps of the policy (or a live model) on a batch of example indices; returns sums [n] per segment.
        Tensor[] PolicyLogps(ICausalLM m, IReadOnlyList<int> idx, bool withToxic, bool toxicContext = false)
        {
            var seqs = new List<(int[], int[])>();
            foreach (var i in idx) seqs.Add((all[i].Prompt, all[i].Chosen));
            foreach (var i in idx) seqs.Add((all[i].Prompt, all[i].Rejected));
            if (withToxic) foreach (var i in idx) seqs.Add((toxicContext ? all[i].ToxicPrompt! : all[i].Prompt, all[i].Toxic!));
            using var batch = PreferenceData.Build(seqs, tokenizer.EosTokenId, m.Device);
            var sums = CompletionLogpSums(m, batch);
            return sums.split(idx.Count);
        }

        Tensor Lookup(double[] a, IReadOnlyList<int> idx, ScalarType dt) => torch.tensor(idx.Select(i => a[i]).ToArray()).to(dt);

        (Tensor Loss, Dictionary<string, double> M) LossOf(IReadOnlyList<int> idx, ICausalLM pm)
        {
            var pol = PolicyLogps(pm, idx, adpo);
            var dt = pol[0].dtype;
            Tensor rc, rr, tt = null!;
            if (liveRef is null) { rc = Lookup(refC!, idx, dt); rr = Lookup(refR!, idx, dt); if (adpo) tt = Lookup(tox!, idx, dt); }
            else
            {
                using var ng = torch.no_grad();
                var r = PolicyLogps(liveRef, idx, false);
                rc = r[0]; rr = r[1];
                if (adpo)
                {
                    using var batch = PreferenceData.Build(idx.Select(i => (all[i].ToxicPrompt!, all[i].Toxic!)).ToList(), tokenizer.EosTokenId, toxicModel!.Device);
                    tt = CompletionLogpSums(toxicModel, batch).to(dt);
                }
            }
            var chosenTokens = torch.tensor(idx.Select(i => (double)all[i].Chosen.Length).ToArray()).to(dt);
            var res = PreferenceLoss.Compute(new PreferenceLogps(pol[0], pol[1], rc, rr, adpo ? pol[2] : null, adpo ? tt : null, chosenTokens), o.Loss);
            return (res.Loss, res.Metrics);
        }

        double Evaluate()
        {
            policy.Module.eval();
            double sum = 0; int n = 0;
            var acc = new Dictionary<string, double>();
            using (torch.no_grad())
                for (int i = 0; i < valIdx.Count; i += o.BatchSize)
                {
                    using var scope = torch.NewDisposeScope();
                    var idx = valIdx.Skip(i).Take(o.BatchSize).ToArray();
                    var (_, m) = LossOf(idx, policy); // fp32 master in mixed precision: the weights that are saved
                    foreach (var (k, v) in m) acc[k] = acc.GetValueOrDefault(k) + v * idx.Length;
                    n += idx.Length;
                }
            policy.Module.train();
            var rec = new JsonObject { ["step"] = step, ["examples"] = examples, ["phase"] = "eval" };
            foreach (var (k, v) in acc) rec["eval/" + k] = v / n;
            metrics.Write(rec);
            sum = acc["loss"] / n;
            progress?.Invoke(new PreferenceProgress(step, totalSteps, acc.ToDictionary(kv => "eval/" + kv.Key, kv => kv.Value / n), "eval"));
            return sum;
        }

        bool stoppedEarly = false, cancelled = false;
        int lastEvalStep = -1;
        bool EvalAndMaybeStop()
        {
            if (valIdx.Count == 0) return false;
            lastEvalStep = step;
            double v = Evaluate();
            if (best is null || v < best) { best = v; bad = 0; HfCheckpoint.Save(policy, outTok, bestDir, overwrite: true); }
            else bad++;
            return o.Patience > 0 && bad >= o.Patience;
        }

        policy.Module.train();
        // built after resume, so the working copy starts from the loaded weights; disposed when Train returns
        using var mixed = MixedPrecision.For(policy, o.Precision);
        var compute = mixed?.Working ?? policy;
        var sw = System.Diagnostics.Stopwatch.StartNew();
        int startExamples = examples;
        while (step < totalSteps)
        {
            if (cancel.IsCancellationRequested) { cancelled = true; break; }
            using var scope = torch.NewDisposeScope();
            opt.zero_grad();
            var acc = new Dictionary<string, double>();
            int n = 0;
            for (int a = 0; a < o.GradientAccumulationSteps; a++)
            {
                using var inner = torch.NewDisposeScope();
                var idx = micro[step * o.GradientAccumulationSteps + a];
                var (loss, m) = LossOf(idx, compute);
                (loss * ((double)idx.Length)).backward(); // summed over examples; normalised below
                mixed?.AccumulateGradients(); // bf16 grads → fp32 master grads, summed over micro-batches
                foreach (var (k, v) in m) acc[k] = acc.GetValueOrDefault(k) + v * idx.Length;
                n += idx.Length;
            }
            using (torch.no_grad())
                foreach (var p in parameters) p.grad?.div_(n);
            double gradNorm = o.MaxGradNorm > 0
                ? torch.nn.utils.clip_grad_norm_(parameters, o.MaxGradNorm)
                : torch.nn.utils.clip_grad_norm_(parameters, double.MaxValue);
            double lr = schedule.At(step);
            foreach (var g in opt.ParamGroups) g.LearningRate = lr;
            opt.step();
            mixed?.SyncWorking();
            step++;
            examples += n;
            var rec = new JsonObject { ["step"] = step, ["examples"] = examples };
            var shown = new Dictionary<string, double>();
            foreach (var (k, v) in acc) { rec[k] = v / n; shown[k] = v / n; }
            rec["grad_norm"] = gradNorm; shown["grad_norm"] = gradNorm;
            rec["learning_rate"] = lr; shown["learning_rate"] = lr;
            metrics.Write(rec);
            progress?.Invoke(new PreferenceProgress(step, totalSteps, shown, "train"));
            if (o.EvalEvery > 0 && step % o.EvalEvery == 0)
            {
                if (EvalAndMaybeStop()) { stoppedEarly = true; break; }
            }
            if (o.CheckpointEvery > 0 && step % o.CheckpointEvery == 0 && step < totalSteps)
                TrainerCheckpoint.Save(ckptDir, policy, outTok, opt, State());
        }
        double elapsed = sw.Elapsed.TotalSeconds;
        if (cancelled)
        {
            TrainerCheckpoint.Save(ckptDir, policy, outTok, opt, State());
        }
        else
        {
            if (!stoppedEarly && lastEvalStep != step) EvalAndMaybeStop();
            TrainerCheckpoint.Save(ckptDir, policy, outTok, opt, State());
            HfCheckpoint.Save(policy, outTok, finalDir, overwrite: true);
        }
        if (liveRef is not null && reference is null) liveRef.Dispose();
        opt.Dispose();
        double pps = elapsed > 0 ? (examples - startExamples) / elapsed : 0;
        return new PreferenceTrainResult(step, examples, best, stoppedEarly, cancelled, cacheHit, finalDir,
            Directory.Exists(bestDir) ? bestDir : null, metricsPath, pps);
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

    /// <summary>Log-prob sums per example (chosen, rejected) or, with toxic=true, of y_t after [TOXIC]+prompt; cached on disk.</summary>
    static (double[] A, double[] B, bool Hit) CachedLogps(string dir, string kind, string modelHash, string dataHash, ICausalLM model,
        List<TokenizedExample> all, int batchSize, int padId, bool toxic)
    {
        var key = Convert.ToHexString(SHA256.HashData(System.Text.Encoding.UTF8.GetBytes($"{kind}|{modelHash}|{dataHash}"))).ToLowerInvariant()[..24];
        var path = Path.Combine(dir, $"{kind}-{key}.bin");
        if (File.Exists(path))
        {
            using var r = new BinaryReader(File.OpenRead(path));
            int n = r.ReadInt32();
            if (n == all.Count)
            {
                var a = new double[n]; var b = new double[n];
                for (int i = 0; i < n; i++) { a[i] = r.ReadDouble(); b[i] = r.ReadDouble(); }
                return (a, b, true);
            }
        }
        var A = new double[all.Count]; var B = new double[all.Count];
        bool wasTraining = model.Module.training;
        model.Module.eval();
        using (torch.no_grad())
            for (int i = 0; i < all.Count; i += batchSize)
            {
                using var scope = torch.NewDisposeScope();
                var idx = Enumerable.Range(i, Math.Min(batchSize, all.Count - i)).ToArray();
                var seqs = toxic
                    ? idx.Select(j => (all[j].ToxicPrompt!, all[j].Toxic!)).ToList()
                    : idx.Select(j => (all[j].Prompt, all[j].Chosen)).Concat(idx.Select(j => (all[j].Prompt, all[j].Rejected))).ToList();
                using var batch = PreferenceData.Build(seqs, padId, model.Device);
                var s = CompletionLogpSums(model, batch).to(ScalarType.Float64).cpu().data<double>().ToArray();
                for (int k = 0; k < idx.Length; k++) { A[idx[k]] = s[k]; if (!toxic) B[idx[k]] = s[idx.Length + k]; }
            }
        if (wasTraining) model.Module.train();
        AtomicFile.WriteBytes(path, f =>
        {
            using var w = new BinaryWriter(f, System.Text.Encoding.UTF8, leaveOpen: true);
            w.Write(all.Count);
            for (int i = 0; i < all.Count; i++) { w.Write(A[i]); w.Write(B[i]); }
        });
        return (A, B, false);
    }
}

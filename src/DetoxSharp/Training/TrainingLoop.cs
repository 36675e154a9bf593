using System.Diagnostics;
using System.Text.Json.Nodes;
using DetoxSharp.Checkpoints;
using DetoxSharp.Data;
using DetoxSharp.Models;
using DetoxSharp.Text;
using Microsoft.Extensions.Logging;
using TorchSharp;

namespace DetoxSharp.Training;

/// <summary>What a <see cref="TrainingProgress"/> report is about.</summary>
public enum TrainingPhase
{
    /// <summary>An optimizer step finished (<see cref="TrainingProgress.Train"/> holds its metrics).</summary>
    Train,
    /// <summary>A validation pass finished (<see cref="TrainingProgress.Eval"/> holds its metrics).</summary>
    Eval,
}

/// <summary>Metrics of one optimizer step: the loss (and whatever else the trainer logs, e.g. rewards/margins) averaged
/// over the step's examples as the trainer defines it, the learning rate used and the global gradient norm before
/// clipping.</summary>
public sealed record TrainMetrics(double Loss, double LearningRate, double GradNorm, IReadOnlyDictionary<string, double> Values);

/// <summary>Metrics of one validation pass (<see cref="Values"/> without the "eval/" prefix the metrics file uses).</summary>
public sealed record EvalMetrics(double Loss, IReadOnlyDictionary<string, double> Values);

/// <summary>
/// One progress report of the training loop. <see cref="Train"/> is always the latest optimizer step's metrics (also on
/// an eval report) and <see cref="Eval"/> the latest validation pass (null before the first), so reading either never
/// depends on <see cref="Phase"/>.
/// </summary>
public sealed record TrainingProgress(TrainingPhase Phase, int Step, int TotalSteps, TrainMetrics Train, EvalMetrics? Eval,
    long Items, string ItemName, double ItemsPerSecond, TimeSpan Elapsed)
{
    /// <summary>Time left at this run's pace so far (null before a step of this run finished).</summary>
    public TimeSpan? Remaining { get; init; }
}

/// <summary>Why <see cref="TrainingLoop.Run{TBatch}"/> returned.</summary>
public enum TrainingStop
{
    /// <summary>All steps ran.</summary>
    Completed,
    /// <summary>Validation loss did not improve for <see cref="TrainingLoopOptions.Patience"/> evaluations.</summary>
    EarlyStopped,
    /// <summary>The cancellation token fired; the state after the last whole step was checkpointed.</summary>
    Cancelled,
    /// <summary><see cref="TrainingLoopOptions.StopAfterSteps"/> steps ran (a time-boxed run); checkpointed like a cancel.</summary>
    StepLimit,
    /// <summary>Resumed from the checkpoint of a run that had already finished: nothing was trained (the model holds the
    /// checkpoint's weights).</summary>
    AlreadyFinished,
}

/// <summary>The outcome of <see cref="TrainingLoop.Run{TBatch}"/>.</summary>
/// <param name="Stop">Why the run stopped.</param>
/// <param name="Steps">Optimizer steps done, counting a resumed run's earlier part.</param>
/// <param name="TotalSteps">Steps the run was planned for.</param>
/// <param name="Items">Items (tokens, pairs) trained on, counting a resumed run's earlier part.</param>
/// <param name="RunItems">Items trained on in this process.</param>
/// <param name="Seconds">Wall time of this process's part.</param>
/// <param name="LastTrain">Metrics of the last training step (null when no step ran).</param>
/// <param name="LastEval">Metrics of the last validation (null when none ran).</param>
/// <param name="BestEvalLoss">Lowest validation loss (null when none ran).</param>
/// <param name="CheckpointDir">The resumable checkpoint (null when the run saves none).</param>
public sealed record TrainingRunResult(TrainingStop Stop, int Steps, int TotalSteps, long Items, long RunItems, double Seconds,
    TrainMetrics? LastTrain, EvalMetrics? LastEval, double? BestEvalLoss, string? CheckpointDir)
{
    /// <summary>The run reached its end (all steps, or early stopping), now or before.</summary>
    public bool Finished => Stop is TrainingStop.Completed or TrainingStop.EarlyStopped or TrainingStop.AlreadyFinished;
    /// <summary>Items per second of this process's part.</summary>
    public double ItemsPerSecond => Seconds > 0 ? RunItems / Seconds : 0;
    /// <summary>The precision the run trained in (<see cref="Training.Precision.Auto"/> resolved; <see cref="MixedPrecision.Resolve"/>).</summary>
    public Precision Precision { get; init; } = Precision.ModelDType;
    /// <summary>Parts each micro-batch ran in side by side (<see cref="TrainingLoopOptions.DataParallel"/> resolved; 1: none).</summary>
    public int DataParallel { get; init; } = 1;
}

/// <summary>The loss of one micro-batch: <see cref="Objective"/> is back-propagated as is; <see cref="Metrics"/> (with
/// "loss") are combined over the step's micro-batches as Σ weight·value, divided by Σ weight when the loop's
/// <see cref="TrainingLoopOptions.MeanOverWeights"/> is set; <see cref="Items"/> (tokens, pairs) are counted.</summary>
public sealed record MicroBatchLoss(torch.Tensor Objective, double Weight, IReadOnlyDictionary<string, double> Metrics, long Items);

/// <summary>What a trainer plugs into <see cref="TrainingLoop"/>: the data order and the loss of a batch.</summary>
public interface ITrainingObjective<TBatch>
{
    /// <summary>The micro-batches of optimizer step <paramref name="step"/> (0-based). Must depend only on the step (and
    /// the trainer's seed), so that a resumed run sees the same data as an uninterrupted one.</summary>
    IReadOnlyList<TBatch> Batches(int step);
    /// <summary>The loss of one micro-batch computed with <paramref name="model"/> (the bf16 working copy under mixed
    /// precision), inside the loop's dispose scope.</summary>
    MicroBatchLoss Loss(ICausalLM model, TBatch batch);
    /// <summary>Validation metrics (must contain "loss") of <paramref name="model"/> — the fp32 master, the weights that
    /// are saved — or null when there is no validation data.</summary>
    IReadOnlyDictionary<string, double>? Evaluate(ICausalLM model);
    /// <summary>Splits a micro-batch into <paramref name="parts"/> micro-batches whose losses, summed as the loop sums a
    /// step's micro-batches, are its loss — for data parallelism (<see cref="TrainingLoopOptions.DataParallel"/>), which
    /// runs them side by side on several threads, so <see cref="Loss"/> must then be safe to call on several threads at
    /// once (on different models). Null (the default): this objective or this micro-batch (too few examples) is not
    /// split, and its micro-batches run one after the other.</summary>
    IReadOnlyList<TBatch>? Split(TBatch batch, int parts) => null;
}

/// <summary>Settings of <see cref="TrainingLoop.Run{TBatch}"/> (the trainers fill them from their own options).</summary>
public sealed record TrainingLoopOptions
{
    /// <summary>Optimizer steps of the whole run.</summary>
    public required int TotalSteps { get; init; }
    /// <summary>The learning-rate schedule.</summary>
    public required LrSchedule Schedule { get; init; }
    /// <summary>Which optimizer.</summary>
    public OptimizerKind Optimizer { get; init; } = OptimizerKind.AdamW;
    /// <summary>The optimizer's hyper-parameters.</summary>
    public OptimizerSettings OptimizerSettings { get; init; } = new();
    /// <summary>Clip the global gradient norm to this (≤ 0: no clipping; the norm is computed and checked anyway).</summary>
    public double MaxGradNorm { get; init; }
    /// <summary>Divide the summed gradients and metrics by the step's Σ weight (mean over examples); otherwise the
    /// objective is already normalised over the step and the metrics are summed.</summary>
    public bool MeanOverWeights { get; init; }
    /// <summary>Training precision (the model's dtype, or bf16 with an fp32 master copy).</summary>
    public Precision Precision { get; init; } = Precision.ModelDType;
    /// <summary>Data parallelism inside the process: each micro-batch is split into this many parts
    /// (<see cref="ITrainingObjective{TBatch}.Split"/>) that run side by side, one a thread, each on a bf16 working copy
    /// of its own (shared weights, own gradients) with libtorch's threads divided between them; the gradients are summed
    /// in fp32 in slot order, so the step equals the same parts run one after the other at that thread count. 1: off (the
    /// default); 0: <see cref="TrainingLoop.AutoDataParallel"/>. Needs bf16 mixed precision on the CPU
    /// (<see cref="MixedPrecision"/>).</summary>
    public int DataParallel { get; init; } = 1;
    /// <summary>Validate every N steps (0: only after the last step).</summary>
    public int EvalEvery { get; init; }
    /// <summary>Stop after this many validations without a lower loss (0: never).</summary>
    public int Patience { get; init; }
    /// <summary>Where checkpoint/ and metrics.jsonl go (null: neither — nothing is saved or resumable).</summary>
    public string? OutputDir { get; init; }
    /// <summary>Also write every metrics record as TensorBoard scalars into an event file in this directory (null: no).</summary>
    public string? TensorBoardDir { get; init; }
    /// <summary>Save the model here whenever the validation loss improves (null: never).</summary>
    public string? BestDir { get; init; }
    /// <summary>Save a checkpoint every N steps (0: only when the run stops).</summary>
    public int CheckpointEvery { get; init; }
    /// <summary>Continue from OutputDir/checkpoint when one exists.</summary>
    public bool Resume { get; init; }
    /// <summary>Resume even though settings listed in <see cref="AdjustableSettings"/> differ from the checkpoint's.</summary>
    public bool AllowSettingChanges { get; init; }
    /// <summary>Stop after this many steps of this run (time-boxed runs and tests); checkpointed like a cancel.</summary>
    public int? StopAfterSteps { get; init; }
    /// <summary>The run's settings (key → value), recorded in trainer_state.json; a resume with different values is refused
    /// naming the key. "data" is the hash of the tokenized data.</summary>
    public JsonObject Settings { get; init; } = new();
    /// <summary>What the loop counts: "tokens" (SFT) or "examples" (preference pairs).</summary>
    public string ItemName { get; init; } = "examples";
    /// <summary>Saved with the model in checkpoints and best/.</summary>
    public Gpt2Tokenizer? Tokenizer { get; init; }
    /// <summary>One-line notices (recovered directories, accepted setting changes).</summary>
    public Action<string>? Log { get; init; }
    /// <summary>Optional structured logging (Microsoft.Extensions.Logging): the notices of <see cref="Log"/> (warnings at
    /// Warning level), every validation and the end of the run at Information, every step at Debug. Null logs nothing.</summary>
    public ILogger? Logger { get; init; }

    internal void Notice(string message)
    {
        Log?.Invoke(message);
        if (Logger is null) return;
        if (message.StartsWith("warning: ", StringComparison.Ordinal)) Logger.LogWarning("{Message}", message["warning: ".Length..]);
        else Logger.LogInformation("{Message}", message);
    }

    /// <summary>Settings that may change on resume with <see cref="AllowSettingChanges"/>: they steer the updates from
    /// here on but not the data order or the optimizer's stored state (the schedule sets the learning rate every step;
    /// weight decay and betas, by contrast, are restored from optimizer.bin and stay fixed).</summary>
    public static readonly IReadOnlySet<string> AdjustableSettings = new HashSet<string>
    {
        "learning_rate", "warmup_steps", "max_grad_norm", "max_steps", "epochs", "total_steps", "eval_every", "patience",
        "decay", "min_lr_ratio",
    };
}

/// <summary>A step produced a non-finite loss or gradient norm. No update was applied and no checkpoint was written, so
/// the last checkpoint (<see cref="CheckpointDir"/> at <see cref="LastCheckpointStep"/>, if any) is the last good state.</summary>
public sealed class TrainingDivergedException(int step, string quantity, double value, string? checkpointDir, int? lastCheckpointStep)
    : InvalidInputException($"training diverged at step {step}: the {quantity} is {value} (not finite); no update was applied and "
        + (lastCheckpointStep is int s ? $"the last checkpoint ({checkpointDir}, step {s}) is untouched" : "no checkpoint had been written yet"))
{
    /// <summary>The optimizer step (0-based) that diverged.</summary>
    public int Step { get; } = step;
    /// <summary>What was non-finite ("loss", "grad_norm").</summary>
    public string Quantity { get; } = quantity;
    /// <summary>The last checkpoint's directory (null when none was written).</summary>
    public string? CheckpointDir { get; } = checkpointDir;
    /// <summary>The step of that checkpoint.</summary>
    public int? LastCheckpointStep { get; } = lastCheckpointStep;
}

/// <summary>
/// The one training loop of every trainer (SFT, the toxic model, toy pretraining, DPO family / ADPO). The trainer
/// supplies the data order and the loss of a micro-batch (<see cref="ITrainingObjective{TBatch}"/>); the loop owns
/// step counting, gradient accumulation, bf16 mixed precision (<see cref="MixedPrecision"/>), the learning-rate
/// schedule, clipping, the non-finite check, validation with best/ and early stopping, checkpoints (atomic, every N
/// steps and whenever the run stops), resume with a settings check, metrics.jsonl, progress and cancellation.
/// Resumed runs end with bit-identical weights: the data order is a pure function of the step, the schedule of the
/// step number, and the checkpoint holds weights, optimizer state and torch's RNG.
/// </summary>
public static class TrainingLoop
{
    const string StateSettings = "settings", StateFinished = "finished";

    /// <summary>The most parameters a model may have for <see cref="TrainingLoopOptions.DataParallel"/> 0 ("auto") to
    /// split its micro-batches (100 M): as far as it was measured (docs/PERFORMANCE.md, twenty-eighth session). Two halves
    /// side by side, one a core, against the whole step on two libtorch threads: the default toy (4 × 256, 3.9 M
    /// parameters, 32 × 96 tokens) ≈ 2 % faster; a 12 × 768 toy (87 M, 16 × 128 tokens) 1.7 % faster with a lower peak
    /// RSS (3.49 against 3.63 GB). GPT-2 small (124 M, its 50,257-wide head) and larger were not measured.</summary>
    public const long AutoDataParallelMaxParameters = 100_000_000;

    /// <summary>What <see cref="TrainingLoopOptions.DataParallel"/> 0 ("auto") means: 2 parts when the run uses bf16
    /// mixed precision on the CPU with at least 2 libtorch threads and the model has at most
    /// <see cref="AutoDataParallelMaxParameters"/> parameters, else 1.</summary>
    public static int AutoDataParallel(Precision precision, ICausalLM model, int threads) =>
        precision == Precision.Bf16Mixed && model.Device.type == DeviceType.CPU && threads >= 2
        && model.Module.parameters().Sum(p => p.numel()) <= AutoDataParallelMaxParameters ? 2 : 1;

    /// <summary>How the objectives' <see cref="ITrainingObjective{TBatch}.Split"/> cut a micro-batch's
    /// <paramref name="count"/> examples: <paramref name="part"/>(start, length) of <paramref name="parts"/> consecutive
    /// runs covering them, the first <c>count % parts</c> one longer (sizes differ by at most one); null — not split —
    /// with fewer than two parts or fewer examples than parts.</summary>
    internal static List<T>? EvenParts<T>(int count, int parts, Func<int, int, T> part)
    {
        if (parts < 2 || count < parts) return null;
        var list = new List<T>(parts);
        for (int k = 0, start = 0; k < parts; k++)
        {
            int length = count / parts + (k < count % parts ? 1 : 0);
            list.Add(part(start, length));
            start += length;
        }
        return list;
    }

    /// <summary>The parts a run splits its micro-batches into: <paramref name="requested"/> (0: <see cref="AutoDataParallel"/>),
    /// checked against what it needs.</summary>
    /// <exception cref="InvalidInputException">More than one part without bf16 mixed precision on the CPU, or more parts
    /// than libtorch threads.</exception>
    internal static int ResolveDataParallel(int requested, Precision precision, ICausalLM model, int threads)
    {
        if (requested < 0) throw new InvalidInputException($"--data-parallel must be auto or a positive number of parts, got {requested}");
        if (requested == 0) return AutoDataParallel(precision, model, threads);
        if (requested == 1) return 1;
        if (precision != Precision.Bf16Mixed || model.Device.type != DeviceType.CPU)
            throw new InvalidInputException($"--data-parallel {requested} runs the parts on bf16 working copies on the CPU: it needs --precision bf16-mixed (or auto on a CPU with native bfloat16) and --device cpu");
        if (requested > threads)
            throw new InvalidInputException($"--data-parallel {requested} needs at least {requested} threads (each part runs on threads of its own), but libtorch has {threads} (--threads)");
        return requested;
    }

    /// <summary>Runs (or resumes) training to <see cref="TrainingLoopOptions.TotalSteps"/>.</summary>
    /// <typeparam name="TBatch">The trainer's micro-batch description.</typeparam>
    /// <param name="model">The model, trained in place.</param>
    /// <param name="objective">The trainer's data order and loss.</param>
    /// <param name="o">The loop's settings.</param>
    /// <param name="progress">Receives a typed progress report after every step and validation.</param>
    /// <param name="cancel">Stops the run after the step in progress; a checkpoint is written and the result says <see cref="TrainingStop.Cancelled"/>.</param>
    public static TrainingRunResult Run<TBatch>(ICausalLM model, ITrainingObjective<TBatch> objective, TrainingLoopOptions o,
        IProgress<TrainingProgress>? progress = null, CancellationToken cancel = default)
    {
        if (o.TotalSteps < 1) throw new ArgumentOutOfRangeException(nameof(o), "TotalSteps must be ≥ 1");
        o = o with { Precision = MixedPrecision.Resolve(model, o.Precision) };
        MixedPrecision.CheckModel(model, o.Precision);
        var parameters = model.Module.parameters().Where(p => p.requires_grad).ToList();
        using var opt = Optimizers.Create(o.Optimizer, parameters, o.OptimizerSettings);

        string? ckptDir = o.OutputDir is null ? null : Path.Combine(o.OutputDir, "checkpoint");
        if (o.OutputDir is not null)
        {
            Directory.CreateDirectory(o.OutputDir);
            foreach (var line in AtomicDirectory.RecoverAll(o.OutputDir)) o.Notice(line);
        }
        int step = 0, bad = 0;
        long items = 0;
        double? best = null;
        int? savedStep = null;
        bool resumed = false, finishedBefore = false;
        if (o.Resume && ckptDir is not null && TrainerCheckpoint.Exists(ckptDir))
        {
            // settings first: a refused resume leaves the model and optimizer untouched
            CheckResume(o);
            var statePath = Path.Combine(ckptDir, "trainer_state.json");
            var st = TrainerCheckpoint.Load(ckptDir, model, opt);
            step = TrainerCheckpoint.Int(st, "step", ckptDir);
            items = StrictJson.OptionalLong(st, o.ItemName, statePath) ?? 0;
            bad = StrictJson.OptionalInt(st, "bad_evals", statePath) ?? 0;
            best = StrictJson.OptionalDouble(st, "best_val_loss", statePath);
            int total = StrictJson.OptionalInt(st, "total_steps", statePath) ?? o.TotalSteps;
            finishedBefore = step >= o.TotalSteps || (st[StateFinished] is JsonValue f && f.TryGetValue<bool>(out var fin) && fin && total == o.TotalSteps);
            savedStep = step;
            resumed = true;
        }
        if (o.Schedule.WarmupSteps >= o.TotalSteps && !finishedBefore)
            o.Notice($"warning: warmup ({o.Schedule.WarmupSteps} steps) ≥ the run's {o.TotalSteps} steps: the learning rate never reaches its peak {o.Schedule.PeakLr:G3}");
        if (finishedBefore)
            return new TrainingRunResult(TrainingStop.AlreadyFinished, step, o.TotalSteps, items, 0, 0, null, null, best, ckptDir) { Precision = o.Precision, DataParallel = 1 };

        using var metrics = MetricSinks.Open(o, resumed ? step + 1 : null);
        JsonObject State(bool finished) => new()
        {
            ["step"] = step, [o.ItemName] = items, ["bad_evals"] = bad, ["best_val_loss"] = best is double b ? b : null,
            ["total_steps"] = o.TotalSteps, [StateFinished] = finished, [StateSettings] = o.Settings.DeepClone(),
        };
        void Save(bool finished)
        {
            if (ckptDir is null) return;
            TrainerCheckpoint.Save(ckptDir, model, o.Tokenizer, opt, State(finished));
            savedStep = step;
        }

        model.Module.train();
        // built after a resume loaded the master's weights, so the working copy starts from them
        using var mixed = MixedPrecision.For(model, o.Precision);
        var compute = mixed?.Working ?? model; // runs forward/backward; `model` holds the weights the optimizer updates
        if (mixed is not null && opt is FusedOptimizer fused) mixed.MirrorUpdates(fused); // the step writes the bf16 weights
        int parts = ResolveDataParallel(o.DataParallel, o.Precision, model, torch.get_num_threads());
        if (parts > 1) mixed!.AddReplicas(parts); // after MirrorUpdates: the replicas view the working copy's storage
        using var slots = parts > 1 ? new MicroBatchThreads(parts, torch.get_num_threads() / parts) : null;
        var sw = Stopwatch.StartNew();
        int startStep = step;
        long runItems = 0;
        TrainMetrics? lastTrain = null;
        EvalMetrics? lastEval = null;
        var stop = TrainingStop.Completed;
        TrainingProgress Report(TrainingPhase phase)
        {
            double secs = sw.Elapsed.TotalSeconds;
            int done = step - startStep;
            return new TrainingProgress(phase, step, o.TotalSteps, lastTrain!, lastEval, items, o.ItemName, runItems / Math.Max(1e-9, secs), sw.Elapsed)
            {
                Remaining = done > 0 ? TimeSpan.FromSeconds(secs / done * (o.TotalSteps - step)) : null,
            };
        }

        while (step < o.TotalSteps)
        {
            if (cancel.IsCancellationRequested) { stop = TrainingStop.Cancelled; break; }
            if (o.StopAfterSteps is int limit && step - startStep >= limit) { stop = TrainingStop.StepLimit; break; }
            using var scope = torch.NewDisposeScope();
            var batches = objective.Batches(step);
            // with data parallelism: each micro-batch's parts, run side by side (one part: one after the other)
            var groups = batches.Select(b => parts > 1 && objective.Split(b, parts) is { Count: > 1 } split ? split : [b]).ToList();
            int count = groups.Sum(g => g.Count), at = 0;
            // under mixed precision the first micro-batch's gradients replace the master's (no zeroing pass)
            if (mixed is null) opt.zero_grad();
            var acc = new Dictionary<string, double>();
            double weight = 0;
            long stepItems = 0;
            bool abandoned = false;
            foreach (var group in groups)
            {
                // Ctrl+C mid-step abandons the step: nothing was applied, and the resumed run recomputes it
                if (cancel.IsCancellationRequested) { abandoned = true; break; }
                var done = new (IReadOnlyDictionary<string, double> Metrics, double Weight, long Items)[group.Count];
                void Part(int r)
                {
                    using var inner = torch.NewDisposeScope();
                    var l = objective.Loss(r == 0 ? compute : mixed!.Replica(r), group[r]);
                    l.Objective.backward();
                    done[r] = (l.Metrics, l.Weight, l.Items);
                }
                if (group.Count == 1) Part(0); else slots!.Run(group.Count, Part);
                for (int r = 0; r < group.Count; r++, at++)
                {
                    var l = done[r];
                    foreach (var (k, v) in l.Metrics) acc[k] = acc.GetValueOrDefault(k) + v * l.Weight;
                    weight += l.Weight;
                    stepItems += l.Items;
                    // bf16 grads → fp32 master grads, summed over micro-batches in order; the last one divides the sums by Σ weight
                    bool divide = o.MeanOverWeights && at == count - 1;
                    mixed?.AccumulateGradients(r, overwrite: at == 0, divisor: divide ? weight : 1);
                }
            }
            if (abandoned) { stop = TrainingStop.Cancelled; break; }
            if (o.MeanOverWeights)
            {
                if (mixed is null)
                    using (torch.no_grad())
                        foreach (var p in parameters) p.grad?.div_(weight);
                foreach (var k in acc.Keys.ToList()) acc[k] /= weight;
            }
            double loss = acc["loss"];
            if (!double.IsFinite(loss)) throw new TrainingDivergedException(step + 1, "loss", loss, ckptDir, savedStep);
            // clipping to +∞ leaves the gradients as they are (coefficient clamped to 1) and still returns the norm
            double gradNorm = GradientClipping.ClipGradNorm(parameters, o.MaxGradNorm > 0 ? o.MaxGradNorm : float.MaxValue); // libtorch's arithmetic; no multiply by 1
            if (!double.IsFinite(gradNorm)) throw new TrainingDivergedException(step + 1, "gradient norm", gradNorm, ckptDir, savedStep);
            double lr = o.Schedule.At(step);
            foreach (var g in opt.ParamGroups) g.LearningRate = lr;
            opt.step();
            mixed?.SyncTrained(); // nothing to do when the optimizer wrote the working copy itself (MirrorUpdates)
            step++;
            items += stepItems;
            runItems += stepItems;
            lastTrain = new TrainMetrics(loss, lr, gradNorm, acc);
            o.Logger?.LogDebug("step {Step}/{TotalSteps}: loss {Loss:G5}, learning rate {LearningRate:G3}, grad norm {GradNorm:G4}", step, o.TotalSteps, loss, lr, gradNorm);

            var rec = new JsonObject { ["step"] = step, [o.ItemName] = items };
            foreach (var (k, v) in acc) rec[k] = v;
            rec["grad_norm"] = gradNorm;
            rec["learning_rate"] = lr;
            rec[o.ItemName + "_per_second"] = Math.Round(runItems / Math.Max(1e-9, sw.Elapsed.TotalSeconds), 1);
            metrics?.Write(rec);
            progress?.Report(Report(TrainingPhase.Train));

            if ((o.EvalEvery > 0 && step % o.EvalEvery == 0) || step == o.TotalSteps)
            {
                var ev = objective.Evaluate(model);
                if (ev is not null)
                {
                    lastEval = new EvalMetrics(ev["loss"], ev);
                    o.Logger?.LogInformation("step {Step}/{TotalSteps}: validation loss {EvalLoss:G5}", step, o.TotalSteps, lastEval.Loss);
                    var er = new JsonObject { ["step"] = step, [o.ItemName] = items, ["phase"] = "eval" };
                    foreach (var (k, v) in ev) er["eval/" + k] = v;
                    metrics?.Write(er);
                    progress?.Report(Report(TrainingPhase.Eval));
                    if (best is null || lastEval.Loss < best)
                    {
                        best = lastEval.Loss;
                        bad = 0;
                        if (o.BestDir is not null) HfCheckpoint.Save(model, o.Tokenizer, o.BestDir, overwrite: true);
                    }
                    else bad++;
                    if (o.Patience > 0 && bad >= o.Patience) { stop = TrainingStop.EarlyStopped; break; }
                }
            }
            if (o.CheckpointEvery > 0 && step % o.CheckpointEvery == 0 && step < o.TotalSteps) Save(false);
        }
        double seconds = sw.Elapsed.TotalSeconds;
        bool finished = stop is TrainingStop.Completed or TrainingStop.EarlyStopped;
        if (finished || step > startStep) Save(finished);
        model.Module.eval();
        o.Logger?.LogInformation("training stopped ({Stop}) at step {Step}/{TotalSteps} after {Seconds:F1} s", stop, step, o.TotalSteps, seconds);
        return new TrainingRunResult(stop, step, o.TotalSteps, items, runItems, seconds, lastTrain, lastEval, best, savedStep is null ? null : ckptDir)
        {
            Precision = o.Precision, DataParallel = parts,
        };
    }

    /// <summary>When <paramref name="o"/> resumes from an existing checkpoint, refuses settings that differ from the ones
    /// the checkpoint recorded, naming the first differing setting (checkpoints written before settings were recorded
    /// are checked for the step count only). Cheap: trainers call it before expensive preparation (the reference
    /// log-probs); <see cref="Run{TBatch}"/> calls it again.</summary>
    public static void CheckResume(TrainingLoopOptions o)
    {
        if (!o.Resume || o.OutputDir is null) return;
        string ckptDir = Path.Combine(o.OutputDir, "checkpoint");
        if (!TrainerCheckpoint.Exists(ckptDir)) return;
        var statePath = Path.Combine(ckptDir, "trainer_state.json");
        var state = StrictJson.ParseFileObject(statePath, "trainer_state.json");
        // the settings first: they name what the user typed (max_steps → --max-steps); the step count only sums them up
        if (state[StateSettings] is JsonObject saved) CheckSettings(saved, o, ckptDir);
        int total = StrictJson.OptionalInt(state, "total_steps", statePath) ?? o.TotalSteps;
        if (total != o.TotalSteps && !o.AllowSettingChanges)
            throw new InvalidSettingException("total_steps", $"is {o.TotalSteps} but the checkpoint in {ckptDir} was made for {total}; resume with the same data, epochs and max steps"
                + " or allow the change explicitly (--allow-setting-changes)");
    }

    static void CheckSettings(JsonObject saved, TrainingLoopOptions o, string ckptDir)
    {
        foreach (var (key, now) in o.Settings)
        {
            if (!saved.TryGetPropertyValue(key, out var then)) continue; // a setting newer than the checkpoint
            if ((now?.ToJsonString() ?? "null") == (then?.ToJsonString() ?? "null")) continue; // both written by this serializer
            bool adjustable = TrainingLoopOptions.AdjustableSettings.Contains(key);
            if (adjustable && o.AllowSettingChanges)
            {
                o.Notice($"resuming with {key} {Show(now)} (the checkpoint was made with {Show(then)})");
                continue;
            }
            var problem = key == "data"
                ? $"differs from the data the checkpoint in {ckptDir} was trained on (its tokenized data hash differs); resume with the same data and tokenizer"
                : $"is {Show(now)} but the checkpoint in {ckptDir} was made with {Show(then)}; resume with the same value"
                  + (adjustable ? " or allow the change explicitly (--allow-setting-changes)" : " (it cannot change mid-run)");
            throw new InvalidSettingException(key, problem);
        }
    }

    static string Show(JsonNode? v) => v is null ? "none" : v is JsonValue jv && jv.TryGetValue<string>(out var s) ? s : v.ToJsonString();
}

/// <summary>Thrown by trainers that return something other than a <see cref="TrainingRunResult"/> (toy pretraining) when
/// the run was interrupted; <see cref="Run"/> says where its checkpoint is.</summary>
public sealed class TrainingInterruptedException(TrainingRunResult run, CancellationToken token)
    : OperationCanceledException($"training interrupted after step {run.Steps}/{run.TotalSteps}" + (run.CheckpointDir is null ? "" : $"; checkpoint in {run.CheckpointDir}"), token)
{
    /// <summary>The interrupted run.</summary>
    public TrainingRunResult Run { get; } = run;
}

/// <summary>The settings of an options record as the flat key → value object a checkpoint records
/// (<see cref="TrainingLoopOptions.Settings"/>): every number, string, bool and enum property under its setting key
/// (<see cref="SettingKey"/>), nested options records flattened into the same object (PreferenceLossOptions.Beta →
/// "beta", the key the CLI maps to --beta). Where outputs go and how often they are written do not change the
/// trained weights and are left out.</summary>
public static class TrainingSettings
{
    static readonly HashSet<string> NotSettings =
        ["OutputDir", "TensorBoardDir", "CheckpointEvery", "Resume", "AllowSettingChanges", "StopAfterSteps", "CacheReference", "CacheDir", "Validation", "EqualityContract",
         "DataParallel"]; // data parallelism, like the thread count, changes only the rounding: a resume may use another

    /// <summary>The flat settings object of <paramref name="options"/>.</summary>
    /// <param name="options">An options record.</param>
    public static JsonObject Of(object options)
    {
        var o = new JsonObject();
        Add(o, options);
        return o;
    }

    static void Add(JsonObject into, object options)
    {
        foreach (var p in options.GetType().GetProperties(System.Reflection.BindingFlags.Public | System.Reflection.BindingFlags.Instance))
        {
            if (NotSettings.Contains(p.Name) || p.GetIndexParameters().Length > 0) continue;
            var v = p.GetValue(options);
            var t = Nullable.GetUnderlyingType(p.PropertyType) ?? p.PropertyType;
            string key = SettingKey.Of(p.Name);
            if (t.IsEnum) into[key] = v?.ToString()!.ToLowerInvariant();
            else if (t == typeof(string) || t.IsPrimitive || t == typeof(decimal)) into[key] = v is null ? null : JsonNode.Parse(System.Text.Json.JsonSerializer.Serialize(v, t));
            else if (v is not null && t.Namespace?.StartsWith("DetoxSharp", StringComparison.Ordinal) == true && t.IsClass) Add(into, v);
        }
    }
}

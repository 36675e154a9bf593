using System.CommandLine;
using System.Globalization;
using DetoxSharp.Study;

namespace DetoxSharp.Cli.Commands;

/// <summary>
/// `detox study`: the whole study as a resumable list of stages (see Study/StudyPipeline.cs), then report.html.
/// </summary>
public static class StudyCommand
{
    /// <summary>
    /// The stage functions of this build. Each entry is one call into the library; an entry left null is a stage
    /// whose library code has not landed yet — the study stops there and names it. Inputs and outputs of each:
    /// see RunLayout and docs/notes/study.md.
    /// </summary>
    public static StudyStageFunctions Stages() => StudyStages.Create() with { Report = DetoxSharp.Reporting.StudyReport.Write };

    public static Command Create()
    {
        var config = new Option<string?>("--config") { Description = "study config JSON (default: the embedded toy study, configs/toy.json)" };
        var outDir = new Option<string>("--out") { Description = "run directory (created; rerunning with the same directory resumes)", DefaultValueFactory = _ => "study-run" };
        var quick = new Option<bool>("--quick") { Description = "small grid, 1 seed, fewer prompts/steps (each section's \"quick\" overrides)" };
        var list = new Option<bool>("--list") { Description = "print the stages (and which are done) without running anything" };
        var device = CommonOptions.Device();
        var jobs = new Option<int?>("--jobs") { Description = "stages run at the same time when their inputs are ready (default: 2 on ≥ 2 cores; unless --threads is given each stage gets cores/jobs libtorch threads, and all cores when every other stage waits for it, as for the pretraining)" };
        var cmd = new Command("study", "Run the whole study end to end (generate world → pretrain → probe → vectors → interventions → pairs → DPO/ADPO sweep over seeds → evaluate → diff → un-align → report.html). Resumable: finished stages are skipped.")
            { config, outDir, quick, list, device, jobs };
        cmd.SetAction(p =>
        {
            int n = p.GetValue(jobs) ?? (Environment.ProcessorCount >= 2 ? 2 : 1);
            if (n < 1) throw new InvalidInputException($"--jobs must be ≥ 1, got {n}");
            // concurrent stages share the cores: without an explicit --threads each gets its share
            bool autoThreads = p.GetValue(DetoxCli.Threads) is null;
            if (autoThreads) TorchSharp.torch.set_num_threads(StageRunner.ThreadsPerStage(Environment.ProcessorCount, n));
            // parallel stages run in child processes (StageProcesses: TorchSharp's temporary Scalars are not safe against
            // a garbage collection another stage thread triggers); DETOX_STAGE_PROCESSES=0 keeps them in this process
            bool isolate = StageProcesses.Wanted(n);
            var functions = isolate ? StageProcesses.Isolate(Stages(), TorchSharp.torch.get_num_threads()) : Stages();
            Action<int>? setThreads = !autoThreads ? null : isolate ? StageProcesses.SetThreads : SetStageThreads;
            return Run(p.GetValue(config), p.GetValue(outDir)!, p.GetValue(quick), p.GetValue(list), functions,
                p.InvocationConfiguration.Output, p.InvocationConfiguration.Error, CommonOptions.ParseDevice(p.GetValue(device)!), n,
                setThreads);
        });
        return cmd;
    }

    /// <summary>libtorch's intra-op threads for the calling stage thread. OpenMP keeps the count per OS thread, and
    /// libtorch initialises a thread's count from the last value set anywhere at its first parallel call: that call
    /// (get_num_threads) comes first, so a bottleneck stage's cores do not leak into stages started later.</summary>
    static void SetStageThreads(int n)
    {
        _ = TorchSharp.torch.get_num_threads();
        TorchSharp.torch.set_num_threads(n);
    }

    public static int Run(string? configPath, string outDir, bool quick, bool listOnly, StudyStageFunctions functions, TextWriter o, TextWriter err,
        TorchSharp.torch.Device? device = null, int jobs = 1, Action<int>? setThreads = null)
    {
        var cfg = (configPath is null ? StudyConfig.ToyDefault() : StudyConfig.Load(configPath)).WithQuick(quick);
        cfg.Validate(configPath ?? "configs/toy.json");
        var stages = StudyPipeline.Build(cfg, functions);
        if (listOnly)
        {
            var man = Manifest.Load(Path.GetFullPath(outDir));
            foreach (var s in stages)
                o.WriteLine($"{(man.Stages.TryGetValue(s.Name, out var e) ? e.Status.ToString().ToLowerInvariant() : "pending"),-12}{(s.Run is null ? "(not in this build) " : "")}{s.Name}");
            return 0;
        }
        static string T(TimeSpan t) => t.TotalHours >= 1 ? t.ToString(@"h\:mm\:ss", CultureInfo.InvariantCulture) : t.ToString(@"m\:ss", CultureInfo.InvariantCulture);
        var lastNote = DateTime.MinValue;
        var printLock = new object();
        var progress = new SyncProgress<StageEvent>(ev => { lock (printLock) Print(ev); });
        void Print(StageEvent ev)
        {
            string head = $"[{ev.Index + 1}/{ev.Count}] {ev.Stage}";
            switch (ev.Kind)
            {
                case StageEventKind.Skipped: o.WriteLine($"{head}: done earlier, skipped"); break;
                case StageEventKind.Started: o.WriteLine($"{head}: running (elapsed {T(ev.RunElapsed)}, ~{T(ev.EstimatedRemaining)} left)"); break;
                case StageEventKind.Progress:
                    if ((DateTime.UtcNow - lastNote).TotalSeconds < 2) break;
                    lastNote = DateTime.UtcNow;
                    o.WriteLine($"{head}: {ev.Fraction:P0} {ev.Note} (stage {T(ev.StageElapsed)}, ~{T(ev.EstimatedRemaining)} left)");
                    break;
                case StageEventKind.Finished: o.WriteLine($"{head}: done in {T(ev.StageElapsed)} (elapsed {T(ev.RunElapsed)}, ~{T(ev.EstimatedRemaining)} left)"); break;
                case StageEventKind.Failed: err.WriteLine($"{head}: failed after {T(ev.StageElapsed)}: {ev.Note}"); break;
                case StageEventKind.Unavailable: break;
            }
        }
        RunSummary summary;
        try { summary = new StageRunner(outDir) { Device = device, Parallelism = jobs, SetThreads = setThreads }.Run(stages, progress); }
        catch (Exception ex) when (ex is not InvalidInputException and not OperationCanceledException)
        {
            // The failed stage is recorded in manifest.json and its partial output discarded on the next run.
            err.WriteLine($"detox: study stopped: {ex.GetType().Name}: {ex.Message} (finished stages are kept in {Path.GetFullPath(outDir)}; rerun to continue)");
            return 1;
        }
        if (!summary.Completed)
        {
            err.WriteLine($"detox: {summary.StopReason}; {summary.Ran.Count} stage(s) ran, {summary.Skipped.Count} were already done. Outputs so far: {Path.GetFullPath(outDir)}");
            return 3;
        }
        o.WriteLine($"report: {Path.Combine(Path.GetFullPath(outDir), RunLayout.Report)} ({summary.Ran.Count} stage(s) ran, {summary.Skipped.Count} skipped)");
        o.WriteLine($"garbage collections: {GC.CollectionCount(0)} gen-0, {GC.CollectionCount(2)} gen-2 (DOTNET_GCgen0size={Environment.GetEnvironmentVariable("DOTNET_GCgen0size") ?? "unset"}; stages in child processes: {(StageProcesses.Used ? "yes" : "no")})");
        return 0;
    }

}

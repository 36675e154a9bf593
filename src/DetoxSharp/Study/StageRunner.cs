using System.Diagnostics;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using DetoxSharp.Data;

namespace DetoxSharp.Study;

/// <summary>What a stage function sees: where to write (a temporary directory renamed into place when the stage
/// returns), its settings, and the finished output directories of the stages it depends on.</summary>
public sealed class StageContext
{
    /// <summary>The stage's name, e.g. "train/dpo/lr1e-06/s0" (its directory under run_dir/stages).</summary>
    public required string Name { get; init; }
    /// <summary>The directory to write into: run_dir/stages/NAME.tmp, renamed to NAME when the function returns
    /// (starts empty; a failed or cancelled stage's files are discarded).</summary>
    public required string OutputDir { get; init; }
    /// <summary>The run directory (absolute), for reading files outside the stage inputs.</summary>
    public required string RunDir { get; init; }
    /// <summary>A private copy of the stage's settings (the JSON its settings hash is taken of).</summary>
    public required JsonObject Settings { get; init; }
    /// <summary>Stage name → finished output directory, for every stage in <see cref="StageDefinition.DependsOn"/>.</summary>
    public required IReadOnlyDictionary<string, string> Inputs { get; init; }
    /// <summary>Cancelled when the run is cancelled or another stage running at the same time failed; long stages
    /// should check it between steps.</summary>
    public CancellationToken Cancellation { get; init; }
    /// <summary>Fraction done in [0,1] and a short note; the CLI shows it next to the stage.</summary>
    public Action<double, string>? Report { get; init; }
    /// <summary>Where stages load and run models (null = CPU). Not part of any stage's settings hash.</summary>
    public TorchSharp.torch.Device? Device { get; init; }

    /// <summary>The finished output directory of <paramref name="stage"/>; throws when the stage did not declare it
    /// as a dependency (so an undeclared read cannot escape the settings/input hashing).</summary>
    /// <param name="stage">A name from <see cref="StageDefinition.DependsOn"/>.</param>
    public string Input(string stage) => Inputs.TryGetValue(stage, out var d) ? d
        : throw new InvalidOperationException($"stage '{Name}' did not declare '{stage}' as an input");
}

/// <summary>One node of the study: a name (also its directory under run_dir/stages), the settings that decide
/// its output, the stages whose outputs it reads, and the function that produces it. A null <see cref="Run"/>
/// means the library code for this stage is not part of this build; the runner stops there and says so.</summary>
/// <param name="Name">'/'-separated relative path, unique in the list (e.g. "train/dpo/lr1e-06/s0"); its output lives in
/// run_dir/stages/NAME.</param>
/// <param name="Settings">Everything that decides the output; its canonical hash is part of the stage's key.</param>
/// <param name="DependsOn">Earlier stages whose outputs it reads (their output hashes are the rest of the key).</param>
/// <param name="Run">The stage function; null = not available in this build.</param>
public sealed record StageDefinition(string Name, JsonObject Settings, IReadOnlyList<string> DependsOn, Action<StageContext>? Run)
{
    /// <summary>Stage kind = first path segment ("train/dpo/lr1e-06/s0" → "train"); used for duration estimates.</summary>
    public string Kind => Name.Split('/')[0];
}

/// <summary>How a stage last ended, as recorded in manifest.json ("done", "failed", "unavailable").</summary>
public enum StageStatus
{
    /// <summary>Finished: its directory holds its output and it is skipped while its settings and inputs stay the same.</summary>
    Done,
    /// <summary>Its function threw; the error is in <see cref="ManifestEntry.Error"/> and it reruns next time.</summary>
    Failed,
    /// <summary>Its library code is not part of this build (<see cref="StageDefinition.Run"/> is null).</summary>
    Unavailable,
}

/// <summary>One stage's record in run_dir/manifest.json: the key it was computed under and what it produced.</summary>
public sealed record ManifestEntry
{
    /// <summary>16-hex-digit SHA-256 prefix of the stage's canonical settings JSON (<see cref="Hashing.OfJson"/>).</summary>
    public string SettingsHash { get; init; } = "";
    /// <summary>Input stage name → that stage's <see cref="OutputHash"/> when this stage ran.</summary>
    public Dictionary<string, string> InputHashes { get; init; } = new();
    /// <summary>Hash of every file the stage wrote (<see cref="Hashing.OfDirectory"/>); "" for a failed stage.</summary>
    public string OutputHash { get; init; } = "";
    /// <summary>Wall-clock seconds the stage function took; also the next run's duration estimate.</summary>
    public double WallSeconds { get; init; }
    /// <summary>How the stage ended.</summary>
    public StageStatus Status { get; init; }
    /// <summary>The exception message of a failed stage; null otherwise.</summary>
    public string? Error { get; init; }
    /// <summary>When it ended, UTC in round-trip ("O") format.</summary>
    public string FinishedUtc { get; init; } = "";
}

/// <summary>run_dir/manifest.json: per stage, what it was computed from and what it produced.</summary>
public sealed class Manifest
{
    /// <summary>Stage name → its last record (stages never run are absent).</summary>
    public Dictionary<string, ManifestEntry> Stages { get; init; } = new();

    /// <summary>The file's JSON format: indented, snake_case property names, enums as snake_case strings.</summary>
    public static readonly JsonSerializerOptions Json = new()
    {
        WriteIndented = true,
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        Converters = { new System.Text.Json.Serialization.JsonStringEnumConverter(JsonNamingPolicy.SnakeCaseLower) },
    };

    /// <summary>Reads run_dir/manifest.json; an empty manifest when there is none (a new run). A file that is not a
    /// manifest throws <see cref="InvalidInputException"/> naming it.</summary>
    /// <param name="runDir">The run directory.</param>
    public static Manifest Load(string runDir)
    {
        var p = Path.Combine(runDir, "manifest.json");
        if (!File.Exists(p)) return new Manifest();
        try { return JsonSerializer.Deserialize<Manifest>(File.ReadAllText(p), Json) ?? new Manifest(); }
        catch (JsonException e) { throw new InvalidInputException($"{p}: not a study manifest ({e.Message})"); }
    }

    /// <summary>Writes run_dir/manifest.json atomically (the runner saves after every stage that ends).</summary>
    /// <param name="runDir">The run directory.</param>
    public void Save(string runDir) =>
        AtomicFile.WriteAllText(Path.Combine(runDir, "manifest.json"), JsonSerializer.Serialize(this, Json));
}

/// <summary>What a <see cref="StageEvent"/> reports.</summary>
public enum StageEventKind
{
    /// <summary>Settings and inputs unchanged since it last finished: its output is reused.</summary>
    Skipped,
    /// <summary>The stage function starts.</summary>
    Started,
    /// <summary>The stage reported a fraction done and a note (<see cref="StageContext.Report"/>).</summary>
    Progress,
    /// <summary>The stage returned and its directory is in place.</summary>
    Finished,
    /// <summary>The stage threw; the run stops (the event's Note holds the message).</summary>
    Failed,
    /// <summary>The stage's code is not in this build; the run stops before it.</summary>
    Unavailable,
}

/// <summary>Progress of a run: which stage, elapsed time of the run and of the stage, and the estimated time the
/// remaining stages (this one included) will still take.</summary>
/// <param name="Kind">What happened.</param>
/// <param name="Stage">The stage's name.</param>
/// <param name="Index">Its 0-based position in the stage list.</param>
/// <param name="Count">Number of stages in the list.</param>
/// <param name="RunElapsed">Wall time since the run started.</param>
/// <param name="StageElapsed">Wall time since this stage started (zero for Skipped/Started/Unavailable).</param>
/// <param name="EstimatedRemaining">Estimated wall time of the stages still pending, divided by the parallelism.</param>
/// <param name="Fraction">Fraction of the stage done in [0, 1] (Progress events).</param>
/// <param name="Note">The stage's progress note, or a failed stage's error message.</param>
public sealed record StageEvent(StageEventKind Kind, string Stage, int Index, int Count, TimeSpan RunElapsed,
    TimeSpan StageElapsed, TimeSpan EstimatedRemaining, double Fraction = 0, string Note = "");

/// <summary>What <see cref="StageRunner.Run"/> did: the stages it ran, those it reused, and where it stopped early.</summary>
/// <param name="Ran">Stages whose functions ran, in order of finishing.</param>
/// <param name="Skipped">Stages reused from an earlier run (settings and inputs unchanged).</param>
/// <param name="StoppedAt">The unavailable stage the run stopped at; null when every stage ran or was reused.</param>
/// <param name="StopReason">Why it stopped, one line for the user; null when it completed.</param>
public sealed record RunSummary(IReadOnlyList<string> Ran, IReadOnlyList<string> Skipped, string? StoppedAt, string? StopReason)
{
    /// <summary>True when every stage ran or was reused (<see cref="StoppedAt"/> is null).</summary>
    public bool Completed => StoppedAt is null;
}

/// <summary>
/// Runs a list of stages in order (dependencies first), skipping those whose settings and inputs are unchanged
/// since they last finished. A stage's key is (hash of its settings, output hashes of its inputs): change a
/// setting and that stage reruns; if its new output differs, everything downstream reruns; stages upstream or on
/// other branches stay. Outputs are written into "&lt;name&gt;.tmp" and renamed when the stage returns, so a
/// killed run leaves no half-finished stage that could be mistaken for done.
/// </summary>
public sealed class StageRunner
{
    readonly string _runDir;
    /// <summary>Handed to every stage as <see cref="StageContext.Device"/>.</summary>
    public TorchSharp.torch.Device? Device { get; init; }
    readonly StageDurations _durations;

    /// <summary>A runner for one run directory (created if missing; manifest.json and stages/ live in it).</summary>
    /// <param name="runDir">The run directory (--out of detox study).</param>
    /// <param name="durations">Duration table for the time estimates; null = the built-in toy-study figures.</param>
    public StageRunner(string runDir, StageDurations? durations = null)
    {
        _runDir = Path.GetFullPath(runDir);
        _durations = durations ?? new StageDurations();
    }

    /// <summary>A stage's output directory: run_dir/stages/ followed by the stage name's '/'-separated parts.</summary>
    /// <param name="runDir">The run directory.</param>
    /// <param name="stage">The stage name, e.g. "evaluate/base".</param>
    public static string StageDir(string runDir, string stage) => Path.Combine(runDir, "stages", Path.Combine(stage.Split('/')));

    /// <summary>Stages run at the same time when their inputs are ready (1 = strictly one after another, in list
    /// order). Stages are independent computations that write only their own directory, so order does not change any
    /// output. With several at once each should use fewer libtorch threads (see <see cref="ThreadsPerStage"/>): on
    /// small models two single-threaded stages use two cores far better than one stage with two threads.</summary>
    public int Parallelism { get; init; } = 1;

    /// <summary>libtorch intra-op threads for each of <paramref name="parallelism"/> concurrent stages on
    /// <paramref name="cores"/> cores (at least one).</summary>
    public static int ThreadsPerStage(int cores, int parallelism) => Math.Max(1, cores / Math.Max(1, parallelism));

    /// <summary>Sets the compute threads (the CLI wires libtorch's intra-op threads). Called only around a bottleneck
    /// stage (<see cref="ThreadsFor"/> above the share), on its thread: all cores before it runs, the share
    /// (<see cref="ThreadsPerStage"/>) again before it counts as finished — never while another stage runs. Null:
    /// threads are left as they are.</summary>
    public Action<int>? SetThreads { get; init; }

    /// <summary>Cores shared by the stages (default: the machine's).</summary>
    public int Cores { get; init; } = Environment.ProcessorCount;

    /// <summary>Threads for a stage: every core when it is a bottleneck — nothing else runs and every other pending
    /// stage waits for it (the pretraining, the world) — else its share, <see cref="ThreadsPerStage"/>.</summary>
    public static int ThreadsFor(string stage, IReadOnlyCollection<string> pending, int othersRunning, IReadOnlySet<string> dependents, int cores, int parallelism) =>
        othersRunning == 0 && pending.All(p => p == stage || dependents.Contains(p)) ? Math.Max(1, cores) : ThreadsPerStage(cores, parallelism);

    /// <summary>Every stage that depends on each stage, directly or through others.</summary>
    public static Dictionary<string, HashSet<string>> Dependents(IReadOnlyList<StageDefinition> stages)
    {
        var result = stages.ToDictionary(s => s.Name, _ => new HashSet<string>());
        // stages are listed after their dependencies, so walking backwards sees each stage's dependents complete
        for (int i = stages.Count - 1; i >= 0; i--)
            foreach (var d in stages[i].DependsOn)
            {
                result[d].Add(stages[i].Name);
                result[d].UnionWith(result[stages[i].Name]);
            }
        return result;
    }

    static readonly Lock ThreadsGate = new();

    /// <summary>Runs <paramref name="stages"/> (each listed after the stages it depends on), up to
    /// <see cref="Parallelism"/> at a time, skipping unchanged ones and updating manifest.json after each. Stops at
    /// the first stage whose code is unavailable (returned in the summary); a failing stage's exception is rethrown
    /// after the stages running with it have stopped. Invalid stage names or orderings throw
    /// <see cref="ArgumentException"/> before anything runs.</summary>
    /// <param name="stages">The stage list (e.g. <see cref="StudyPipeline.Build"/>'s).</param>
    /// <param name="progress">Receives a <see cref="StageEvent"/> per start, progress report, finish, skip or failure.</param>
    /// <param name="ct">Cancels the run; running stages see it through <see cref="StageContext.Cancellation"/>.</param>
    public RunSummary Run(IReadOnlyList<StageDefinition> stages, IProgress<StageEvent>? progress = null, CancellationToken ct = default)
    {
        if (Parallelism < 1) throw new InvalidSettingException("parallelism", $"must be ≥ 1 (got {Parallelism})");
        Validate(stages);
        Directory.CreateDirectory(_runDir);
        var manifest = Manifest.Load(_runDir);
        _durations.Learn(manifest);
        var run = Stopwatch.StartNew();
        var gate = new object();
        var ran = new List<string>();
        var skipped = new List<string>();
        var outputHash = new Dictionary<string, string>();
        var pending = stages.Select(s => s.Name).ToHashSet();
        var notStarted = Enumerable.Range(0, stages.Count).ToList();
        var running = new Dictionary<Task, int>();
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(ct);
        Exception? failure = null;
        (string Stage, string Reason)? unavailable = null;
        TimeSpan Remaining()
        {
            lock (gate) return TimeSpan.FromSeconds(stages.Where(s => pending.Contains(s.Name)).Sum(s => _durations.Estimate(s)) / Parallelism);
        }

        var dependents = SetThreads is null ? null : Dependents(stages);
        int active = 0; // stages executing (under gate)

        void Execute(int i, string settingsHash, Dictionary<string, string> inputHashes)
        {
            var s = stages[i];
            int threads;
            lock (gate) threads = ThreadsFor(s.Name, pending, active++, dependents?[s.Name] ?? [], Cores, Parallelism);
            // the stage stops counting as running in the same locked step that makes its dependents ready (else a
            // dependent started at once could still see it running and miss the cores a bottleneck stage gets)
            bool released = false;
            void Release() { if (!released) { released = true; active--; } } // under gate
            try
            {
                // Only a bottleneck stage changes the thread count: it runs alone (every pending stage waits for it),
                // raises the count on its own thread and lowers it back before it counts as finished, so no other
                // stage is running while libtorch's thread settings change. Changing them at every stage start while
                // another stage computed crashed the process twice (SIGSEGV, 2026-12-01; docs/notes/study.md); other
                // stages take libtorch's process-wide count (the share) when their thread first computes.
                int share = ThreadsPerStage(Cores, Parallelism);
                if (SetThreads is not null && threads > share)
                {
                    lock (ThreadsGate) SetThreads(threads);
                    ExecuteStage(i, settingsHash, inputHashes, () => { lock (ThreadsGate) SetThreads(share); }, Release);
                }
                else ExecuteStage(i, settingsHash, inputHashes, null, Release);
            }
            finally { lock (gate) Release(); }
        }

        void ExecuteStage(int i, string settingsHash, Dictionary<string, string> inputHashes, Action? restore, Action release)
        {
            var s = stages[i];
            var dir = StageDir(_runDir, s.Name);
            var tmp = dir + ".tmp";
            if (Directory.Exists(tmp)) Directory.Delete(tmp, recursive: true);
            Directory.CreateDirectory(tmp);
            var sw = Stopwatch.StartNew();
            progress?.Report(new StageEvent(StageEventKind.Started, s.Name, i, stages.Count, run.Elapsed, TimeSpan.Zero, Remaining()));
            var ctx = new StageContext
            {
                Name = s.Name, OutputDir = tmp, RunDir = _runDir, Settings = (JsonObject)s.Settings.DeepClone(),
                Inputs = s.DependsOn.ToDictionary(d => d, d => StageDir(_runDir, d)), Cancellation = stop.Token, Device = Device,
                Report = (f, note) =>
                {
                    double others;
                    lock (gate) others = stages.Where(x => pending.Contains(x.Name) && x.Name != s.Name).Sum(x => _durations.Estimate(x)) / Parallelism;
                    progress?.Report(new StageEvent(StageEventKind.Progress, s.Name, i, stages.Count, run.Elapsed,
                        sw.Elapsed, TimeSpan.FromSeconds(CurrentRemaining(s, sw.Elapsed.TotalSeconds, f) + others), f, note));
                },
            };
            try { s.Run!(ctx); }
            catch (Exception ex) when (ex is not OperationCanceledException)
            {
                restore?.Invoke();
                lock (gate)
                {
                    manifest.Stages[s.Name] = new ManifestEntry
                    {
                        SettingsHash = settingsHash, InputHashes = inputHashes, Status = StageStatus.Failed, WallSeconds = sw.Elapsed.TotalSeconds,
                        Error = ex.Message, FinishedUtc = DateTime.UtcNow.ToString("O"),
                    };
                    manifest.Save(_runDir);
                }
                progress?.Report(new StageEvent(StageEventKind.Failed, s.Name, i, stages.Count, run.Elapsed, sw.Elapsed, Remaining(), Note: ex.Message));
                throw;
            }
            restore?.Invoke(); // before the stage counts as finished: no other stage runs yet
            var hash = Hashing.OfDirectory(tmp);
            if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true);
            Directory.Move(tmp, dir);
            lock (gate)
            {
                outputHash[s.Name] = hash;
                manifest.Stages[s.Name] = new ManifestEntry
                {
                    SettingsHash = settingsHash, InputHashes = inputHashes, OutputHash = hash, Status = StageStatus.Done,
                    WallSeconds = sw.Elapsed.TotalSeconds, FinishedUtc = DateTime.UtcNow.ToString("O"),
                };
                manifest.Save(_runDir);
                _durations.Record(s, sw.Elapsed.TotalSeconds);
                pending.Remove(s.Name);
                ran.Add(s.Name);
                release();
            }
            progress?.Report(new StageEvent(StageEventKind.Finished, s.Name, i, stages.Count, run.Elapsed, sw.Elapsed, Remaining()));
        }

        while (true)
        {
            // Start, in list order, every stage whose inputs are finished, while there is room; skip the unchanged
            // ones. With Parallelism = 1 this is exactly the list order.
            bool scheduling = failure is null && unavailable is null && !ct.IsCancellationRequested;
            for (int k = 0; scheduling && k < notStarted.Count;)
            {
                int i = notStarted[k];
                var s = stages[i];
                Dictionary<string, string> inputHashes;
                lock (gate)
                {
                    if (!s.DependsOn.All(outputHash.ContainsKey)) { k++; continue; }
                    inputHashes = s.DependsOn.ToDictionary(d => d, d => outputHash[d]);
                }
                var settingsHash = Hashing.OfJson(s.Settings);
                var dir = StageDir(_runDir, s.Name);
                bool skip;
                lock (gate)
                    skip = manifest.Stages.TryGetValue(s.Name, out var e) && e.Status == StageStatus.Done && e.SettingsHash == settingsHash
                        && SameInputs(e.InputHashes, inputHashes) && Directory.Exists(dir);
                if (skip)
                {
                    lock (gate)
                    {
                        outputHash[s.Name] = manifest.Stages[s.Name].OutputHash;
                        pending.Remove(s.Name);
                        skipped.Add(s.Name);
                    }
                    notStarted.RemoveAt(k);
                    progress?.Report(new StageEvent(StageEventKind.Skipped, s.Name, i, stages.Count, run.Elapsed, TimeSpan.Zero, Remaining()));
                    k = 0; // a skipped stage can make earlier-listed stages ready
                    continue;
                }
                if (s.Run is null)
                {
                    progress?.Report(new StageEvent(StageEventKind.Unavailable, s.Name, i, stages.Count, run.Elapsed, TimeSpan.Zero, Remaining()));
                    unavailable = (s.Name, $"stage '{s.Name}' is not available in this build (its library code has not landed)");
                    break;
                }
                if (running.Count >= Parallelism) break;
                notStarted.RemoveAt(k);
                running[Task.Factory.StartNew(() => Execute(i, settingsHash, inputHashes), CancellationToken.None,
                    TaskCreationOptions.LongRunning, TaskScheduler.Default)] = i;
            }
            if (running.Count == 0) break;
            var done = Task.WhenAny(running.Keys).GetAwaiter().GetResult();
            running.Remove(done);
            if (done.Exception?.InnerException is { } ex && failure is null)
            {
                failure = ex;
                stop.Cancel(); // the other running stages stop at their next check; their .tmp output is discarded
            }
            else if (done.IsCanceled && failure is null) failure = new OperationCanceledException(ct);
        }
        if (failure is not null) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(failure).Throw();
        ct.ThrowIfCancellationRequested();
        if (unavailable is { } u) return new RunSummary(ran, skipped, u.Stage, u.Reason);
        return new RunSummary(ran, skipped, null, null);
    }

    /// <summary>Time left in the running stage: extrapolated from its own pace once it reports some progress,
    /// otherwise the table's estimate scaled by what is left.</summary>
    double CurrentRemaining(StageDefinition s, double elapsed, double f) =>
        f is > 0.02 and <= 1 ? elapsed * (1 - f) / f : Math.Max(0, _durations.Estimate(s) * (1 - Math.Clamp(f, 0, 1)));

    static bool SameInputs(Dictionary<string, string> a, Dictionary<string, string> b) =>
        a.Count == b.Count && a.All(kv => b.TryGetValue(kv.Key, out var v) && v == kv.Value);

    static void Validate(IReadOnlyList<StageDefinition> stages)
    {
        var seen = new HashSet<string>();
        foreach (var s in stages)
        {
            if (s.Name.Length == 0 || s.Name.Split('/').Any(p => p.Length == 0 || p == "." || p == ".." || p.EndsWith(".tmp")
                || p.IndexOfAny(Path.GetInvalidFileNameChars()) >= 0))
                throw new ArgumentException($"stage name '{s.Name}' is not a valid relative path");
            foreach (var d in s.DependsOn)
                if (!seen.Contains(d)) throw new ArgumentException($"stage '{s.Name}' depends on '{d}', which is not an earlier stage");
            if (!seen.Add(s.Name)) throw new ArgumentException($"stage '{s.Name}' is listed twice");
        }
        // A stage directory nested inside another's would be deleted when the outer one reruns.
        foreach (var a in seen) foreach (var b in seen)
            if (a != b && b.StartsWith(a + "/", StringComparison.Ordinal))
                throw new ArgumentException($"stage '{b}' would live inside the directory of stage '{a}'");
    }
}

/// <summary>The short content hashes of the stage manifest: the first 16 hex digits (64 bits) of a SHA-256.</summary>
public static class Hashing
{
    /// <summary>16 lower-case hex digits of the SHA-256 of <paramref name="b"/>.</summary>
    /// <param name="b">The bytes.</param>
    public static string OfBytes(byte[] b) => Convert.ToHexStringLower(SHA256.HashData(b))[..16];

    /// <summary>Hash of a JSON value with object keys sorted, so key order in a config file does not matter.</summary>
    public static string OfJson(JsonNode? n) => OfBytes(Encoding.UTF8.GetBytes(Canonical(n)));

    /// <summary>Compact JSON text with every object's keys sorted ordinally (array order kept), so equal settings
    /// give equal text whatever their key order.</summary>
    /// <param name="n">The JSON value (null gives "null").</param>
    public static string Canonical(JsonNode? n) => n switch
    {
        null => "null",
        JsonObject o => "{" + string.Join(",", o.OrderBy(kv => kv.Key, StringComparer.Ordinal)
            .Select(kv => JsonSerializer.Serialize(kv.Key) + ":" + Canonical(kv.Value))) + "}",
        JsonArray a => "[" + string.Join(",", a.Select(Canonical)) + "]",
        _ => n.ToJsonString(),
    };

    /// <summary>Hash of every file under a directory (relative path and content), in ordinal path order.</summary>
    public static string OfDirectory(string dir)
    {
        using var h = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        foreach (var f in Directory.EnumerateFiles(dir, "*", SearchOption.AllDirectories)
                     .Select(f => Path.GetRelativePath(dir, f).Replace('\\', '/')).OrderBy(f => f, StringComparer.Ordinal))
        {
            h.AppendData(Encoding.UTF8.GetBytes(f + "\0"));
            using var s = File.OpenRead(Path.Combine(dir, f));
            var buf = new byte[1 << 16];
            int n;
            while ((n = s.Read(buf, 0, buf.Length)) > 0) h.AppendData(buf, 0, n);
            h.AppendData(BitConverter.GetBytes(s.Length));
        }
        return Convert.ToHexStringLower(h.GetHashAndReset())[..16];
    }
}

/// <summary>Typical stage durations (seconds, toy study on 2 cores), refined by what this run dir measured.</summary>
public sealed class StageDurations
{
    readonly Dictionary<string, double> _byKind = new()
    {
        ["world"] = 5, ["pretrain"] = 240, ["probe"] = 20, ["vectors"] = 5, ["interventions"] = 5, ["toxic-model"] = 30,
        ["pairs"] = 60, ["train"] = 60, ["evaluate"] = 30, ["diff"] = 15, ["unalign"] = 30, ["report"] = 5,
    };
    readonly Dictionary<string, double> _byStage = new();

    /// <summary>Takes the wall times of the manifest's finished stages as estimates for those stages and their kinds.</summary>
    /// <param name="m">The run dir's manifest.</param>
    public void Learn(Manifest m)
    {
        foreach (var (name, e) in m.Stages.Where(kv => kv.Value.Status == StageStatus.Done))
        {
            _byStage[name] = e.WallSeconds;
            _byKind[name.Split('/')[0]] = e.WallSeconds;
        }
    }

    /// <summary>Records a stage that just finished: its wall time becomes the estimate for it and for its kind.</summary>
    /// <param name="s">The stage.</param>
    /// <param name="seconds">Its wall time in seconds.</param>
    public void Record(StageDefinition s, double seconds) { _byStage[s.Name] = seconds; _byKind[s.Kind] = seconds; }

    /// <summary>Expected wall seconds of a stage: its own last time, else its kind's, else 30.</summary>
    /// <param name="s">The stage.</param>
    public double Estimate(StageDefinition s) =>
        _byStage.TryGetValue(s.Name, out var v) ? v : _byKind.TryGetValue(s.Kind, out var k) ? k : 30;
}

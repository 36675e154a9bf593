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
    public required string Name { get; init; }
    public required string OutputDir { get; init; }
    public required string RunDir { get; init; }
    public required JsonObject Settings { get; init; }
    public required IReadOnlyDictionary<string, string> Inputs { get; init; }
    public CancellationToken Cancellation { get; init; }
    /// <summary>Fraction done in [0,1] and a short note; the CLI shows it next to the stage.</summary>
    public Action<double, string>? Report { get; init; }
    /// <summary>Where stages load and run models (null = CPU). Not part of any stage's settings hash.</summary>
    public TorchSharp.torch.Device? Device { get; init; }

    public string Input(string stage) => Inputs.TryGetValue(stage, out var d) ? d
        : throw new InvalidOperationException($"stage '{Name}' did not declare '{stage}' as an input");
}

/// <summary>One node of the study: a name (also its directory under run_dir/stages), the settings that decide
/// its output, the stages whose outputs it reads, and the function that produces it. A null <see cref="Run"/>
/// means the library code for this stage is not part of this build; the runner stops there and says so.</summary>
public sealed record StageDefinition(string Name, JsonObject Settings, IReadOnlyList<string> DependsOn, Action<StageContext>? Run)
{
    /// <summary>Stage kind = first path segment ("train/dpo/lr1e-06/s0" → "train"); used for duration estimates.</summary>
    public string Kind => Name.Split('/')[0];
}

public enum StageStatus { Done, Failed, Unavailable }

public sealed record ManifestEntry
{
    public string SettingsHash { get; init; } = "";
    public Dictionary<string, string> InputHashes { get; init; } = new();
    public string OutputHash { get; init; } = "";
    public double WallSeconds { get; init; }
    public StageStatus Status { get; init; }
    public string? Error { get; init; }
    public string FinishedUtc { get; init; } = "";
}

/// <summary>run_dir/manifest.json: per stage, what it was computed from and what it produced.</summary>
public sealed class Manifest
{
    public Dictionary<string, ManifestEntry> Stages { get; init; } = new();

    public static readonly JsonSerializerOptions Json = new()
    {
        WriteIndented = true,
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        Converters = { new System.Text.Json.Serialization.JsonStringEnumConverter(JsonNamingPolicy.SnakeCaseLower) },
    };

    public static Manifest Load(string runDir)
    {
        var p = Path.Combine(runDir, "manifest.json");
        if (!File.Exists(p)) return new Manifest();
        try { return JsonSerializer.Deserialize<Manifest>(File.ReadAllText(p), Json) ?? new Manifest(); }
        catch (JsonException e) { throw new InvalidInputException($"{p}: not a study manifest ({e.Message})"); }
    }

    public void Save(string runDir) =>
        AtomicFile.WriteAllText(Path.Combine(runDir, "manifest.json"), JsonSerializer.Serialize(this, Json));
}

public enum StageEventKind { Skipped, Started, Progress, Finished, Failed, Unavailable }

/// <summary>Progress of a run: which stage, elapsed time of the run and of the stage, and the estimated time the
/// remaining stages (this one included) will still take.</summary>
public sealed record StageEvent(StageEventKind Kind, string Stage, int Index, int Count, TimeSpan RunElapsed,
    TimeSpan StageElapsed, TimeSpan EstimatedRemaining, double Fraction = 0, string Note = "");

public sealed record RunSummary(IReadOnlyList<string> Ran, IReadOnlyList<string> Skipped, string? StoppedAt, string? StopReason)
{
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

    public StageRunner(string runDir, StageDurations? durations = null)
    {
        _runDir = Path.GetFullPath(runDir);
        _durations = durations ?? new StageDurations();
    }

    public static string StageDir(string runDir, string stage) => Path.Combine(runDir, "stages", Path.Combine(stage.Split('/')));

    /// <summary>Stages run at the same time when their inputs are ready (1 = strictly one after another, in list
    /// order). Stages are independent computations that write only their own directory, so order does not change any
    /// output. With several at once each should use fewer libtorch threads (see <see cref="ThreadsPerStage"/>): on
    /// small models two single-threaded stages use two cores far better than one stage with two threads.</summary>
    public int Parallelism { get; init; } = 1;

    /// <summary>libtorch intra-op threads for each of <paramref name="parallelism"/> concurrent stages on
    /// <paramref name="cores"/> cores (at least one).</summary>
    public static int ThreadsPerStage(int cores, int parallelism) => Math.Max(1, cores / Math.Max(1, parallelism));

    /// <summary>Sets the compute threads of the calling thread (the CLI wires libtorch's intra-op threads, which OpenMP
    /// keeps per OS thread; every stage runs on a thread of its own). Null: threads are left as they are.</summary>
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
            try
            {
                // thread-count changes one stage at a time (libtorch/OpenMP/MKL settings are process state underneath)
                lock (ThreadsGate) SetThreads?.Invoke(threads);
                ExecuteStage(i, settingsHash, inputHashes);
            }
            finally { lock (gate) active--; }
        }

        void ExecuteStage(int i, string settingsHash, Dictionary<string, string> inputHashes)
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

public static class Hashing
{
    public static string OfBytes(byte[] b) => Convert.ToHexStringLower(SHA256.HashData(b))[..16];

    /// <summary>Hash of a JSON value with object keys sorted, so key order in a config file does not matter.</summary>
    public static string OfJson(JsonNode? n) => OfBytes(Encoding.UTF8.GetBytes(Canonical(n)));

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

    public void Learn(Manifest m)
    {
        foreach (var (name, e) in m.Stages.Where(kv => kv.Value.Status == StageStatus.Done))
        {
            _byStage[name] = e.WallSeconds;
            _byKind[name.Split('/')[0]] = e.WallSeconds;
        }
    }

    public void Record(StageDefinition s, double seconds) { _byStage[s.Name] = seconds; _byKind[s.Kind] = seconds; }

    public double Estimate(StageDefinition s) =>
        _byStage.TryGetValue(s.Name, out var v) ? v : _byKind.TryGetValue(s.Kind, out var k) ? k : 30;
}

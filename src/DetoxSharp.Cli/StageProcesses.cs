using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;
using DetoxSharp.Cli.Commands;
using DetoxSharp.Study;

namespace DetoxSharp.Cli;

/// <summary>
/// Runs each stage of a parallel study (<c>--jobs</c> ≥ 2) in a child process of its own: <c>detox __study-stage CTX</c>,
/// where CTX is a JSON file holding the stage's <see cref="StageContext"/> (name, output and run directories, settings,
/// inputs, device) plus the <see cref="StudyStageFunctions"/> member to call and its libtorch thread count.
/// <para>Why: TorchSharp hands temporary Scalars (the α of every <c>a + b</c>) to native code without keeping them alive,
/// so a garbage collection that one stage thread triggers while another is inside such a call can finalize the Scalar
/// under libtorch ("Exception raised from toFloat", SIGSEGV; 2026-12-01/02, docs/notes/study.md). In a process that runs
/// one stage, nothing else allocates while its thread is in native code, so the hazard is gone rather than rarer.</para>
/// Stages exchange only files, so nothing else changes: the parent keeps the manifest, hashes, scheduling and the
/// report; the child reports progress as <c>@@progress F NOTE</c> lines on stdout and a failure as one
/// <c>@@error MESSAGE</c> line on stderr (exit 2 for bad input, which the parent rethrows as
/// <see cref="InvalidInputException"/>, 1 otherwise). Cancelling the study kills the child; its partial output is in the
/// stage's .tmp directory, which the runner discards. <c>DETOX_STAGE_PROCESSES=0</c> runs stages in-process.
/// </summary>
public static class StageProcesses
{
    public const string ChildVerb = "__study-stage", Switch = "DETOX_STAGE_PROCESSES";

    /// <summary>The libtorch thread count the runner chose for the stage on this thread (<see cref="StageRunner.SetThreads"/>).</summary>
    [ThreadStatic] static int t_threads;

    /// <summary>For <see cref="StageRunner.SetThreads"/>: remembers the count for the stage this thread runs next; the
    /// child process applies it.</summary>
    public static void SetThreads(int n) => t_threads = n;

    /// <summary>Whether a study with <paramref name="jobs"/> parallel stages runs them in child processes: only when
    /// stages overlap (the hazard needs two stage threads), only from the detox executable itself, and unless
    /// <c>DETOX_STAGE_PROCESSES=0</c>.</summary>
    public static bool Wanted(int jobs) =>
        jobs > 1 && Environment.GetEnvironmentVariable(Switch) != "0" && Launcher() is not null;

    /// <summary>The program and leading arguments that start this executable again (null when it cannot be found, e.g.
    /// inside a test host). Tests set <see cref="Override"/>.</summary>
    public static (string Exe, string[] Args)? Launcher()
    {
        if (Override is { } o) return o;
        var exe = Environment.ProcessPath;
        if (exe is null) return null;
        var name = Path.GetFileNameWithoutExtension(exe);
        if (name == "detox") return (exe, []);
        // `dotnet detox.dll …` (dotnet run, the tool shim): the host is the process, the app its first argument
        if (name == "dotnet" && Environment.GetCommandLineArgs() is [var dll, ..] && Path.GetFileName(dll).Equals("detox.dll", StringComparison.OrdinalIgnoreCase))
            return (exe, [dll]);
        return null;
    }

    /// <summary>Whether this process made child-process stage functions (printed at the end of a study).</summary>
    public static bool Used { get; private set; }

    /// <summary>How to start detox, for tests (e.g. ("dotnet", [path of detox.dll])).</summary>
    public static (string Exe, string[] Args)? Override { get; set; }

    /// <summary><paramref name="f"/> with every stage function but the report replaced by a call in a child process
    /// (the report reads files and runs no model: it stays in-process). <paramref name="shareThreads"/> is the thread
    /// count of a stage the runner did not give more.</summary>
    public static StudyStageFunctions Isolate(StudyStageFunctions f, int shareThreads)
    {
        Used = true;
        var copy = f with { };
        foreach (var p in typeof(StudyStageFunctions).GetProperties())
        {
            if (p.PropertyType != typeof(Action<StageContext>) || p.Name == nameof(StudyStageFunctions.Report)) continue;
            if (p.GetValue(f) is null) continue;
            string function = p.Name;
            p.SetValue(copy, (Action<StageContext>)(c => RunChild(function, c, t_threads > 0 ? t_threads : shareThreads)));
        }
        return copy;
    }

    static void RunChild(string function, StageContext c, int threads)
    {
        var launcher = Launcher() ?? throw new InvalidOperationException("cannot find the detox executable to run a stage in");
        var ctxFile = Path.Combine(Path.GetTempPath(), $"detox-stage-{Environment.ProcessId}-{Guid.NewGuid():N}.json");
        var inputs = new JsonObject();
        foreach (var (k, v) in c.Inputs) inputs[k] = v;
        File.WriteAllText(ctxFile, new JsonObject
        {
            ["function"] = function, ["name"] = c.Name, ["output_dir"] = c.OutputDir, ["run_dir"] = c.RunDir,
            ["settings"] = c.Settings.DeepClone(), ["inputs"] = inputs, ["device"] = c.Device?.ToString(), ["threads"] = threads,
        }.ToJsonString());
        try
        {
            var psi = new ProcessStartInfo(launcher.Exe) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
            foreach (var a in launcher.Args) psi.ArgumentList.Add(a);
            psi.ArgumentList.Add(ChildVerb);
            psi.ArgumentList.Add(ctxFile);
            // the child runs one stage: the runtime's default GC budget is safe there (GcBudget only guards in-process stages)
            psi.Environment.Remove(GcBudget.Variable);
            using var p = Process.Start(psi) ?? throw new InvalidOperationException($"could not start {launcher.Exe}");
            var err = new List<string>();
            p.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (err) err.Add(e.Data); };
            p.BeginErrorReadLine();
            using (c.Cancellation.Register(() => { try { p.Kill(entireProcessTree: true); } catch (InvalidOperationException) { } }))
            {
                while (p.StandardOutput.ReadLine() is { } line)
                {
                    if (!line.StartsWith("@@progress ", StringComparison.Ordinal)) continue;
                    var parts = line.Split(' ', 3);
                    if (parts.Length >= 2 && double.TryParse(parts[1], NumberStyles.Float, CultureInfo.InvariantCulture, out var fr))
                        c.Report?.Invoke(fr, parts.Length > 2 ? parts[2] : "");
                }
                p.WaitForExit();
            }
            c.Cancellation.ThrowIfCancellationRequested();
            if (p.ExitCode == 0) return;
            string msg;
            lock (err)
                msg = err.LastOrDefault(l => l.StartsWith("@@error ", StringComparison.Ordinal))?["@@error ".Length..]
                      ?? $"the stage's process exited with code {p.ExitCode}{(p.ExitCode > 128 ? $" (signal {p.ExitCode - 128})" : "")}"
                         + (err.LastOrDefault(l => l.Trim().Length > 0) is { } last ? $"; last line: {last.Trim()}" : "");
            if (p.ExitCode == 2) throw new InvalidInputException(msg);
            throw new StageProcessException(msg);
        }
        finally { File.Delete(ctxFile); }
    }

    /// <summary>The child: runs the one stage CTX names with the build's stage functions and exits (0 done, 2 bad input,
    /// 1 any other failure, 130 cancelled).</summary>
    public static int ChildMain(string ctxFile, TextWriter stdout, TextWriter stderr)
    {
        try
        {
            var j = JsonNode.Parse(File.ReadAllText(ctxFile))!.AsObject();
            string function = j["function"]!.GetValue<string>();
            TorchSharp.torch.set_num_threads(Math.Max(1, j["threads"]!.GetValue<int>()));
            var fn = typeof(StudyStageFunctions).GetProperty(function)?.GetValue(StudyCommand.Stages()) as Action<StageContext>
                     ?? throw new InvalidOperationException($"{ctxFile}: no stage function '{function}' in this build");
            using var cts = new CancellationTokenSource();
            Console.CancelKeyPress += (_, e) => { e.Cancel = true; cts.Cancel(); };
            var printLock = new object();
            var ctx = new StageContext
            {
                Name = j["name"]!.GetValue<string>(), OutputDir = j["output_dir"]!.GetValue<string>(), RunDir = j["run_dir"]!.GetValue<string>(),
                Settings = j["settings"]!.AsObject().DeepClone().AsObject(),
                Inputs = j["inputs"]!.AsObject().ToDictionary(kv => kv.Key, kv => kv.Value!.GetValue<string>()),
                Device = j["device"]?.GetValue<string>() is { } d ? TorchSharp.torch.device(d) : null,
                Cancellation = cts.Token,
                Report = (fr, note) =>
                {
                    lock (printLock) { stdout.WriteLine($"@@progress {fr.ToString("R", CultureInfo.InvariantCulture)} {note.Replace('\n', ' ')}"); stdout.Flush(); }
                },
            };
            fn(ctx);
            return 0;
        }
        catch (OperationCanceledException) { return 130; }
        catch (InvalidInputException e) { stderr.WriteLine("@@error " + e.Message.Replace('\n', ' ')); return 2; }
        catch (Exception e) { stderr.WriteLine($"@@error {e.GetType().Name}: {e.Message.Replace('\n', ' ')}"); return 1; }
    }
}

/// <summary>A stage failed in its child process (<see cref="StageProcesses"/>); the message is the child's.</summary>
public sealed class StageProcessException(string message) : Exception(message);

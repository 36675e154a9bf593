using System.Globalization;
using System.Text;
using DetoxSharp.Study;

/// <summary>The study's wall time as a tracked figure: the stage durations a run dir's manifest.json recorded, summed
/// per stage kind (world, pretrain, train, evaluate, …) with their share of the total.</summary>
static class StudyTime
{
    /// <summary>Runs the built CLI's <c>detox study</c> (quick unless <paramref name="full"/>) into <paramref name="runDir"/>;
    /// returns the process wall seconds, or null when it failed.</summary>
    public static double? RunStudy(string repoRoot, string runDir, bool full)
    {
        var cli = Path.Combine(repoRoot, "src", "DetoxSharp.Cli", "bin", "Release", "net10.0", "detox.dll");
        var psi = new System.Diagnostics.ProcessStartInfo("dotnet");
        foreach (var a in new[] { cli, "study", "--out", runDir }.Concat(full ? [] : ["--quick"])) psi.ArgumentList.Add(a);
        var sw = System.Diagnostics.Stopwatch.StartNew();
        // detox sets up its own process (malloc tunables, the study's GC budget): not this bench's re-executed environment
        psi.Environment.Remove(DetoxSharp.NativeSetup.ReExecutedMarker);
        if (psi.Environment.TryGetValue(DetoxSharp.MallocTunables.Variable, out var t) && t == DetoxSharp.MallocTunables.Settings)
            psi.Environment.Remove(DetoxSharp.MallocTunables.Variable);
        using var p = System.Diagnostics.Process.Start(psi)!;
        p.WaitForExit();
        if (p.ExitCode != 0) { Console.Error.WriteLine($"detox study exited with {p.ExitCode}"); return null; }
        return sw.Elapsed.TotalSeconds;
    }

    public static string Report(string runDir, double? processWall, string load)
    {
        var m = Manifest.Load(runDir);
        if (m.Stages.Count == 0) throw new InvalidOperationException($"{runDir}: no manifest.json with stages");
        var done = m.Stages.Where(kv => kv.Value.Status == StageStatus.Done).ToList();
        double total = done.Sum(kv => kv.Value.WallSeconds);
        var sb = new StringBuilder();
        string wall = processWall is double w ? $", process wall {w:F1} s" : "";
        sb.AppendLine($"run dir {runDir}: {done.Count} stages done of {m.Stages.Count}; stage time {total:F1} s{wall}; load average now {load}");
        sb.AppendLine("| stage kind | stages | wall s | share |");
        sb.AppendLine("|---|---:|---:|---:|");
        foreach (var g in done.GroupBy(kv => kv.Key.Split('/')[0]).OrderByDescending(g => g.Sum(kv => kv.Value.WallSeconds)))
        {
            double s = g.Sum(kv => kv.Value.WallSeconds);
            sb.AppendLine($"| {g.Key} | {g.Count()} | {s:F1} | {100 * s / total:F1} % |");
        }
        return sb.ToString();
    }
}

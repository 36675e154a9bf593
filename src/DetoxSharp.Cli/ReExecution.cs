namespace DetoxSharp.Cli;

/// <summary>Settings that the .NET runtime or glibc read only at process start-up, so <c>detox</c> replaces itself once
/// (<c>execve</c>: same process id, same standard streams, signals and exit code reach it as before) with them in the
/// environment (see Program.cs): the study's gen-0 GC budget (<see cref="GcBudget"/>) and glibc's malloc tunables that keep
/// freed memory for reuse (<see cref="MallocTunables"/>). It happens first thing in Main, before any tensor or thread of ours
/// exists. <c>DETOX_REEXECUTED=1</c> marks the new image (and the study's stage processes, which inherit it), so nothing
/// re-executes twice; if <c>execve</c> fails the command runs in this process without the settings.</summary>
static class ReExecution
{
    /// <summary>Set in the re-executed process's environment.</summary>
    public const string Marker = DetoxSharp.NativeSetup.ReExecutedMarker;

    /// <summary>The environment additions <paramref name="args"/> need (empty: none; run as is).</summary>
    public static Dictionary<string, string> Wanted(string[] args, Func<string, string?> env, bool? glibcWithHugetlb = null)
    {
        var add = new Dictionary<string, string>();
        if (env(Marker) == "1" || args.Length == 0 || args.Any(a => a is "-h" or "--help" or "-?" or "--version")) return add;
        if (GcBudget.Wanted(args, env) is string size) add[GcBudget.Variable] = size;
        if (DetoxSharp.MallocTunables.Wanted(env, glibcWithHugetlb ?? DetoxSharp.MallocTunables.GlibcHasHugetlb) is string tunables) add[DetoxSharp.MallocTunables.Variable] = tunables;
        return add;
    }

    /// <summary>Replaces this process with the same program and arguments plus the <see cref="Wanted"/> environment.
    /// Returns only when nothing is wanted or <c>execve</c> failed (then the command runs here as before).</summary>
    public static void ReExecuteIfNeeded(string[] args)
    {
        if (!OperatingSystem.IsLinux() && !OperatingSystem.IsMacOS()) return;
        var add = Wanted(args, Environment.GetEnvironmentVariable);
        if (add.Count == 0) return;
        // Linux: the same executable and command line (/proc/self); macOS: the program the study's stage processes start
        // (detox, or `dotnet detox.dll` under dotnet run / the tool shim)
        if (OperatingSystem.IsLinux()) DetoxSharp.NativeSetup.Restart(add);
        else if (StageProcesses.Launcher() is { } launcher) DetoxSharp.NativeSetup.Exec(launcher.Exe, [launcher.Exe, .. launcher.Args, .. args], add);
    }
}

/// <summary><c>detox study</c>'s gen-0 GC budget: <c>DOTNET_GCgen0size</c> (see Program.cs for why).</summary>
static class GcBudget
{
    public const string Variable = "DOTNET_GCgen0size", Override = "DETOX_GC_GEN0";
    /// <summary>256 MB (hexadecimal, as the runtime reads it).</summary>
    public const string DefaultSize = "10000000";

    /// <summary>The budget to set for <paramref name="args"/>, or null (not the study, already set, or "off").</summary>
    public static string? Wanted(string[] args, Func<string, string?> env)
    {
        if (args.Length == 0 || args[0] != "study") return null;
        if (env(Variable) is { Length: > 0 }) return null; // already set (by us or the user)
        var size = env(Override);
        if (string.Equals(size, "off", StringComparison.OrdinalIgnoreCase)) return null;
        return string.IsNullOrEmpty(size) ? DefaultSize : size;
    }
}

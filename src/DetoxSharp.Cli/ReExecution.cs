using System.Runtime.InteropServices;

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
    public const string Marker = "DETOX_REEXECUTED";

    [DllImport("libc", SetLastError = true)]
    static extern int execve(string path, string?[] argv, string?[] envp);

    [DllImport("libc", SetLastError = true)]
    static extern int sigprocmask(int how, byte[] set, IntPtr oldset);

    /// <summary>The environment additions <paramref name="args"/> need (empty: none; run as is).</summary>
    public static Dictionary<string, string> Wanted(string[] args, Func<string, string?> env, bool? glibcWithHugetlb = null)
    {
        var add = new Dictionary<string, string>();
        if (env(Marker) == "1" || args.Length == 0 || args.Any(a => a is "-h" or "--help" or "-?" or "--version")) return add;
        if (GcBudget.Wanted(args, env) is string size) add[GcBudget.Variable] = size;
        if (MallocTunables.Wanted(env, glibcWithHugetlb ?? MallocTunables.GlibcHasHugetlb) is string tunables) add[MallocTunables.Variable] = tunables;
        return add;
    }

    /// <summary>Replaces this process with the same program and arguments plus the <see cref="Wanted"/> environment.
    /// Returns only when nothing is wanted or <c>execve</c> failed (then the command runs here as before).</summary>
    public static void ReExecuteIfNeeded(string[] args)
    {
        if (!OperatingSystem.IsLinux() && !OperatingSystem.IsMacOS()) return;
        var add = Wanted(args, Environment.GetEnvironmentVariable);
        if (add.Count == 0) return;
        // the same program as the study's stage processes start (detox, or `dotnet detox.dll` under dotnet run / the tool shim)
        if (StageProcesses.Launcher() is not { } launcher) return;
        var argv = new List<string?> { launcher.Exe };
        argv.AddRange(launcher.Args);
        argv.AddRange(args);
        argv.Add(null);
        var envp = new List<string?>();
        foreach (System.Collections.DictionaryEntry e in Environment.GetEnvironmentVariables())
        {
            var k = (string)e.Key;
            if (!add.ContainsKey(k) && k != Marker) envp.Add($"{k}={e.Value}");
        }
        foreach (var (k, v) in add) envp.Add($"{k}={v}");
        envp.Add($"{Marker}=1");
        envp.Add(null);
        Console.Out.Flush();
        Console.Error.Flush();
        // the signal mask survives execve: the runtime may have blocked signals on this thread, and a new image whose
        // threads all start with SIGINT/SIGTERM blocked would never see Ctrl+C (SIG_SETMASK: 2 on Linux, 3 on macOS)
        var empty = new byte[128];
        if (sigprocmask(OperatingSystem.IsMacOS() ? 3 : 2, empty, IntPtr.Zero) != 0) return;
        execve(launcher.Exe, argv.ToArray(), envp.ToArray()); // returns only on failure
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

/// <summary>
/// glibc malloc tunables that make it keep and reuse the memory libtorch frees, as tcmalloc does
/// (<see cref="Settings"/>): no <c>mmap</c> per large block (<c>mmap_max=0</c>), no returning freed memory to the kernel
/// (<c>trim_threshold</c> 4 GiB), one arena (so no thread-arena heap is unmapped either), and transparent huge pages for
/// what it does map (<c>hugetlb=1</c>). Without them every training step re-faults its activations page by page: glibc
/// serves blocks ≥ 32 MB from fresh <c>mmap</c>s that <c>free</c> unmaps again (bench <c>--fault-probe</c>: ≈ 32,770 minor
/// faults per reused 128 MB tensor; docs/PERFORMANCE.md "Allocator"). glibc reads <c>GLIBC_TUNABLES</c> only when the
/// process starts, hence the re-execution. The process's memory then stays at its peak instead of shrinking after a peak
/// (as with tcmalloc). It changes where memory comes from, not any result (same losses to the bit). Skipped when the user
/// opted out (<c>DETOX_DEFAULT_ALLOCATOR=1</c>), preloads a library (<c>LD_PRELOAD</c>, e.g. tcmalloc), set any
/// <c>glibc.malloc.</c> tunable of their own, or the C library is not glibc ≥ 2.35 (<c>hugetlb</c>'s first release).
/// </summary>
static class MallocTunables
{
    public const string Variable = "GLIBC_TUNABLES";
    /// <summary>What detox adds to <c>GLIBC_TUNABLES</c>.</summary>
    public const string Settings = DetoxSharp.NativeSetup.GlibcMallocTunables;

    [DllImport("libc", EntryPoint = "gnu_get_libc_version")]
    static extern IntPtr gnu_get_libc_version();

    /// <summary>True on Linux with glibc ≥ 2.35.</summary>
    public static bool GlibcHasHugetlb { get; } = Probe();

    static bool Probe()
    {
        if (!OperatingSystem.IsLinux()) return false;
        try { return Marshal.PtrToStringAnsi(gnu_get_libc_version()) is string v && Version.TryParse(v, out var ver) && ver >= new Version(2, 35); }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { return false; } // musl and others
    }

    /// <summary>The <c>GLIBC_TUNABLES</c> value to run with, or null to leave the environment as it is.</summary>
    public static string? Wanted(Func<string, string?> env, bool glibcWithHugetlb)
    {
        if (!glibcWithHugetlb || env("DETOX_DEFAULT_ALLOCATOR") == "1" || env("LD_PRELOAD") is { Length: > 0 }) return null;
        var current = env(Variable);
        if (current is { Length: > 0 } && current.Split(':').Any(t => t.StartsWith("glibc.malloc.", StringComparison.Ordinal))) return null;
        return string.IsNullOrEmpty(current) ? Settings : $"{current}:{Settings}";
    }
}

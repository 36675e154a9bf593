using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace DetoxSharp;

/// <summary>
/// Process-wide native settings that must be in place before libtorch's first tensor allocation. Runs by itself when
/// the DetoxSharp assembly is first used (module initializer); <c>detox</c> and the benchmark also call <see cref="Init"/>
/// first thing, because a program may allocate tensors through TorchSharp before it touches DetoxSharp.
/// <para>
/// Why: libtorch takes every tensor from glibc <c>malloc</c>, and glibc serves blocks ≥ 32 MB from fresh <c>mmap</c>s that
/// <c>free</c> unmaps again, so a training step that re-allocates its activations faults every page back in (bench
/// <c>--fault-probe</c>: ≈ 32,770 minor faults per reused 128 MB tensor; docs/PERFORMANCE.md "Allocator"). With
/// <c>THP_MEM_ALLOC_ENABLE=1</c> libtorch's CPU allocator aligns blocks ≥ 2 MB to 2 MB and asks for transparent huge
/// pages (<c>madvise</c>), so the kernel faults in 2 MB at a time (512× fewer faults). libtorch reads the variable once,
/// at its first allocation, so setting it in-process works without a restart. Results do not change: only where memory
/// comes from changes, not any computation (the bench's <c>--allocator-ab</c> compares losses bit for bit).
/// </para>
/// Opt out with <c>DETOX_DEFAULT_ALLOCATOR=1</c>; a value of THP_MEM_ALLOC_ENABLE set by the user is kept.
/// </summary>
public static class NativeSetup
{
    static int _done;

    /// <summary>What <see cref="Init"/> did, for reports ("THP_MEM_ALLOC_ENABLE=1 (set by DetoxSharp)", …).</summary>
    public static string Description { get; private set; } = "not initialised";

#pragma warning disable CA2255 // a library module initializer is the point: it runs before any DetoxSharp code allocates
    [ModuleInitializer]
    internal static void OnLoad() => Init();
#pragma warning restore CA2255

    /// <summary>Applies the settings once (idempotent, thread-safe). Call before the first tensor is created.</summary>
    public static void Init()
    {
        if (Interlocked.Exchange(ref _done, 1) == 1) return;
        if (!OperatingSystem.IsLinux()) { Description = "platform default (the THP setting is Linux-only)"; return; }
        if (Environment.GetEnvironmentVariable("DETOX_DEFAULT_ALLOCATOR") == "1") { Description = "glibc malloc, no THP (DETOX_DEFAULT_ALLOCATOR=1)"; return; }
        if (Environment.GetEnvironmentVariable("THP_MEM_ALLOC_ENABLE") is string user) { Description = $"THP_MEM_ALLOC_ENABLE={user} (set by the user)"; return; }
        try
        {
            // .NET's Environment.SetEnvironmentVariable changes only the runtime's own copy on Unix; libtorch reads the
            // C environment, hence libc's setenv
            Description = setenv("THP_MEM_ALLOC_ENABLE", "1", 0) == 0
                ? "THP_MEM_ALLOC_ENABLE=1 (set by DetoxSharp)" : "glibc malloc (setenv failed)";
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            Description = "platform default (no libc setenv)";
        }
    }

    [DllImport("libc", EntryPoint = "setenv", CharSet = CharSet.Ansi)]
    static extern int setenv(string name, string value, int overwrite);
}

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

    /// <summary>What <see cref="Init"/> did, for reports ("THP_MEM_ALLOC_ENABLE=1 (set by DetoxSharp)", …), plus the glibc
    /// malloc tunables the process started with, if any (the <c>detox</c> executable re-executes itself with
    /// <see cref="GlibcMallocTunables"/>; a library cannot set them for its host process, which must start with them).</summary>
    public static string Description => _description + (Environment.GetEnvironmentVariable("GLIBC_TUNABLES") is { } t && t.Contains("glibc.malloc.", StringComparison.Ordinal) ? $"; GLIBC_TUNABLES={t}" : "");
    static string _description = "not initialised";

    /// <summary>The glibc malloc tunables the <c>detox</c> executable starts with (it re-executes itself with them in
    /// <c>GLIBC_TUNABLES</c>, glibc ≥ 2.35): keep and reuse freed memory as tcmalloc does — no <c>mmap</c> per large block,
    /// no returning memory to the kernel, one arena — and transparent huge pages for what it maps. A program that uses the
    /// library gets the same by starting with <c>GLIBC_TUNABLES</c> set to this value (docs/PERFORMANCE.md "Allocator").</summary>
    public const string GlibcMallocTunables = "glibc.malloc.hugetlb=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967296:glibc.malloc.arena_max=1";

#pragma warning disable CA2255 // a library module initializer is the point: it runs before any DetoxSharp code allocates
    [ModuleInitializer]
    internal static void OnLoad() => Init();
#pragma warning restore CA2255

    /// <summary>Applies the settings once (idempotent, thread-safe). Call before the first tensor is created.</summary>
    public static void Init()
    {
        if (Interlocked.Exchange(ref _done, 1) == 1) return;
        if (!OperatingSystem.IsLinux()) { _description = "platform default (the THP setting is Linux-only)"; return; }
        if (Environment.GetEnvironmentVariable("DETOX_DEFAULT_ALLOCATOR") == "1") { _description = "glibc malloc, no THP (DETOX_DEFAULT_ALLOCATOR=1)"; return; }
        if (Environment.GetEnvironmentVariable("THP_MEM_ALLOC_ENABLE") is string user) { _description = $"THP_MEM_ALLOC_ENABLE={user} (set by the user)"; return; }
        try
        {
            // .NET's Environment.SetEnvironmentVariable changes only the runtime's own copy on Unix; libtorch reads the
            // C environment, hence libc's setenv
            _description = setenv("THP_MEM_ALLOC_ENABLE", "1", 0) == 0
                ? "THP_MEM_ALLOC_ENABLE=1 (set by DetoxSharp)" : "glibc malloc (setenv failed)";
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            _description = "platform default (no libc setenv)";
        }
    }

    [DllImport("libc", EntryPoint = "setenv", CharSet = CharSet.Ansi)]
    static extern int setenv(string name, string value, int overwrite);
}

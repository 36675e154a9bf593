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
/// Opt out with <c>DETOX_DEFAULT_ALLOCATOR=1</c>; a value of THP_MEM_ALLOC_ENABLE set by the user is kept. Not set when the
/// process started with <c>glibc.malloc.hugetlb=1</c> in <c>GLIBC_TUNABLES</c> (<see cref="RestartWithMallocTunables"/>,
/// <c>detox</c>): glibc then asks for huge pages for its whole heap, and the 2 MB alignment only fragments it.
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
    /// library gets the same by calling <see cref="RestartWithMallocTunables"/> first thing in <c>Main</c>, or by starting with
    /// <c>GLIBC_TUNABLES</c> set to this value (docs/PERFORMANCE.md "Allocator").</summary>
    public const string GlibcMallocTunables = "glibc.malloc.hugetlb=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967296:glibc.malloc.arena_max=1";

#pragma warning disable CA2255 // a library module initializer is the point: it runs before any DetoxSharp code allocates
    [ModuleInitializer]
    internal static void OnLoad()
    {
        Init();
        // only when libtorch is loaded already (a program that used TorchSharp first): loading it here would slow every
        // process that re-executes itself before its first tensor (detox, RestartWithMallocTunables)
        try { if (OperatingSystem.IsLinux() && LoadedLibtorch() is not null) InitMkl(); }
        catch (IOException) { } // no /proc: InitMkl runs later from the model constructors
    }
#pragma warning restore CA2255

    /// <summary>Applies the settings once (idempotent, thread-safe). Call before the first tensor is created.</summary>
    public static void Init()
    {
        if (Interlocked.Exchange(ref _done, 1) == 1) return;
        if (!OperatingSystem.IsLinux()) { _description = "platform default (the THP setting is Linux-only)"; return; }
        if (Environment.GetEnvironmentVariable("DETOX_DEFAULT_ALLOCATOR") == "1") { _description = "glibc malloc, no THP (DETOX_DEFAULT_ALLOCATOR=1)"; return; }
        if (Environment.GetEnvironmentVariable("THP_MEM_ALLOC_ENABLE") is string user) { _description = $"THP_MEM_ALLOC_ENABLE={user} (set by the user)"; return; }
        // started with glibc's hugetlb tunable (detox's re-execution, RestartWithMallocTunables): glibc already asks for huge
        // pages for its whole heap, and libtorch's 2 MB alignment of large blocks only fragments that heap (it kept growing
        // step after step; bench --allocator-ab, docs/PERFORMANCE.md "Allocator")
        if (Environment.GetEnvironmentVariable(MallocTunables.Variable) is string t && t.Split(':').Contains("glibc.malloc.hugetlb=1"))
        {
            _description = "THP_MEM_ALLOC_ENABLE not set (glibc.malloc.hugetlb=1 covers the heap)";
            return;
        }
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

    static volatile bool _mklDone;
    static readonly object MklLock = new();

    /// <summary>What <see cref="InitMkl"/> did to MKL's choice of fp32 GEMM kernels, for reports.</summary>
    public static string MklDescription { get; private set; } = "not initialised";

    /// <summary>
    /// Lets the MKL inside libtorch use the same fp32 GEMM kernels on an AMD x86-64 CPU that it uses on an Intel CPU with
    /// the same instruction-set extensions (AVX-512 on Zen 4). MKL decides once per process, from the CPU's vendor string
    /// only, whether to dispatch by instruction set (GenuineIntel) or to its slower generic AVX2 "zen" kernels; the answer
    /// sits in the static that <c>mkl_serv_intel_cpu_true</c> caches on first use. This sets that cache to "Intel" before
    /// MKL's first call. MKL still picks the kernels by the CPU's feature flags, so only instructions the CPU has run
    /// (an AMD CPU without AVX2 and FMA is left alone).
    /// <para>
    /// Why: on an AMD EPYC with full-width AVX-512 units (the machine of docs/PERFORMANCE.md's "MKL on AMD") it doubles the
    /// fp32 matrix multiplies: the GPT-2 124M forward 432–463 → 933–1,003 tokens/s and its fp32 training step 155 →
    /// 280–307; on a Zen 4 EPYC (512-bit operations in two halves) the forward gains 1.45–1.60× and the step 1.31–1.42×
    /// ("Seventeenth session"). Results
    /// change only as much as any other GEMM kernel changes them (the order of fp32 additions), not in what is computed.
    /// bf16 matrix multiplies go to oneDNN, which never asked the vendor.
    /// </para>
    /// Runs once (idempotent, thread-safe: concurrent callers return when it is done), loading libtorch if it is not loaded yet; <c>detox</c>, the benchmark and the
    /// model constructors call it, and DetoxSharp's module initializer calls it when libtorch is already loaded. It changes
    /// nothing when MKL already made its choice (a matrix multiply ran before), on Intel and non-x86 CPUs, off Linux,
    /// when the libtorch build's <c>mkl_serv_intel_cpu_true</c> is not the cached-flag function it expects, or with
    /// <c>DETOX_MKL_DEFAULT_DISPATCH=1</c> (opt-out); <see cref="MklDescription"/> says which.
    /// </summary>
    public static void InitMkl()
    {
        if (_mklDone) return;
        lock (MklLock) // a second caller waits until the flag is written: its matrix multiply must not reach MKL first
        {
            if (_mklDone) return;
            try { MklDescription = MklIntelDispatch(); }
            catch (Exception e) { MklDescription = $"MKL's own dispatch ({e.GetType().Name}: {e.Message})"; }
            _mklDone = true;
        }
    }

    /// <summary>libtorch_cpu.so's path if this process has it mapped, else null.</summary>
    static string? LoadedLibtorch() => LoadedLibrary("libtorch_cpu.so");

    /// <summary>The path of the shared library named <paramref name="fileName"/> if this process has it mapped (Linux's
    /// /proc/self/maps), else null.</summary>
    internal static string? LoadedLibrary(string fileName) => LoadedLibrary(name => name == fileName);

    /// <summary>The path of the first shared library this process has mapped whose file name satisfies
    /// <paramref name="matches"/> (Linux's /proc/self/maps), else null.</summary>
    internal static string? LoadedLibrary(Func<string, bool> matches)
    {
        if (!File.Exists("/proc/self/maps")) return null;
        foreach (var line in File.ReadLines("/proc/self/maps"))
        {
            int at = line.IndexOf('/');
            if (at >= 0 && matches(Path.GetFileName(line[at..]))) return line[at..];
        }
        return null;
    }

    static unsafe string MklIntelDispatch()
    {
        if (!OperatingSystem.IsLinux() || RuntimeInformation.ProcessArchitecture != Architecture.X64) return "MKL's own dispatch (not Linux x86-64)";
        if (Environment.GetEnvironmentVariable("DETOX_MKL_DEFAULT_DISPATCH") == "1") return "MKL's own dispatch (DETOX_MKL_DEFAULT_DISPATCH=1)";
        var (vendor, flags) = Training.CpuFeatures.X86VendorAndFlags(File.ReadAllText("/proc/cpuinfo"));
        if (vendor != "AuthenticAMD") return $"MKL's own dispatch ({vendor ?? "unknown"} CPU)";
        if (!flags.Contains("avx2") || !flags.Contains("fma")) return "MKL's own dispatch (AMD CPU without AVX2/FMA)";
        TorchSharp.torch.InitializeDeviceType(TorchSharp.DeviceType.CPU);
        if (LoadedLibtorch() is not string lib) return "MKL's own dispatch (libtorch_cpu.so not found in /proc/self/maps)";
        if (!NativeLibrary.TryLoad(lib, out var handle) || !NativeLibrary.TryGetExport(handle, "mkl_serv_intel_cpu_true", out var fn))
            return "MKL's own dispatch (libtorch has no mkl_serv_intel_cpu_true)";
        var code = (byte*)fn;
        // mov eax, [rip + cached]; test eax, eax; js <detect>  — the function returns its cached answer once it is ≥ 0
        if (code[0] != 0x8B || code[1] != 0x05 || code[6] != 0x85 || code[7] != 0xC0 || code[8] != 0x78)
            return "MKL's own dispatch (mkl_serv_intel_cpu_true is not the expected cached-flag function)";
        var cached = (int*)(code + 6 + *(int*)(code + 2));
        if (*cached >= 0) return *cached == 1 ? "MKL's Intel dispatch (already set)" : "MKL's own dispatch (MKL had already chosen its kernels before DetoxSharp loaded)";
        *cached = 1;
        var check = ((delegate* unmanaged<int>)fn)();
        return check == 1 ? $"MKL dispatches by instruction set on this AMD CPU ({(flags.Contains("avx512f") ? "AVX-512" : "AVX2")} kernels; DETOX_MKL_DEFAULT_DISPATCH=1 opts out)"
            : "MKL's own dispatch (the flag did not take)";
    }

    [DllImport("libc", EntryPoint = "setenv", CharSet = CharSet.Ansi)]
    static extern int setenv(string name, string value, int overwrite);

    /// <summary>Set in the environment of a process that <see cref="Exec"/> started (and inherited by its children), so
    /// nothing re-executes twice.</summary>
    public const string ReExecutedMarker = "DETOX_REEXECUTED";

    /// <summary>For programs that use the library: call first thing in <c>Main</c>, before any tensor exists. On Linux with
    /// glibc ≥ 2.35 the process replaces itself once (<c>execve</c> of <c>/proc/self/exe</c> with the same command line:
    /// same process id, standard streams and exit code) with <see cref="GlibcMallocTunables"/> in <c>GLIBC_TUNABLES</c>,
    /// which glibc reads only at start-up; the <c>detox</c> executable does the same. Returns without doing anything when
    /// <see cref="MallocTunables.Wanted"/> says no (opted out with <c>DETOX_DEFAULT_ALLOCATOR=1</c>, an <c>LD_PRELOAD</c>, the
    /// user's own malloc tunables, not glibc ≥ 2.35), when it already ran, or when the re-execution fails (the program then
    /// runs on as it was). Results never change: only where memory comes from (docs/PERFORMANCE.md "Allocator").</summary>
    public static void RestartWithMallocTunables()
    {
        if (!OperatingSystem.IsLinux() || Environment.GetEnvironmentVariable(ReExecutedMarker) == "1") return;
        if (MallocTunables.Wanted(Environment.GetEnvironmentVariable, MallocTunables.GlibcHasHugetlb) is not string tunables) return;
        Restart(new Dictionary<string, string> { [MallocTunables.Variable] = tunables });
    }

    /// <summary>Linux: replaces this process with the same program and command line (<c>/proc/self/exe</c>,
    /// <c>/proc/self/cmdline</c>: an apphost, or <c>dotnet app.dll …</c>) plus <paramref name="add"/> in its environment,
    /// through <see cref="Exec"/>. Returns only when that is not possible here or failed.</summary>
    public static void Restart(IReadOnlyDictionary<string, string> add)
    {
        if (!OperatingSystem.IsLinux()) return;
        string[] argv;
        try { argv = File.ReadAllText("/proc/self/cmdline").Split('\0')[..^1]; }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return; }
        if (argv.Length == 0) return;
        Exec("/proc/self/exe", argv, add);
    }

    /// <summary>Replaces this process (<c>execve</c>) with <paramref name="exe"/> and <paramref name="argv"/> (argv[0]
    /// included), its environment plus <paramref name="add"/> and <see cref="ReExecutedMarker"/>=1. The signal mask is
    /// cleared first: it survives <c>execve</c>, and a new image whose threads start with SIGINT blocked would never see
    /// Ctrl+C. Returns only if the call failed (the caller then runs on as it was).</summary>
    public static void Exec(string exe, IReadOnlyList<string> argv, IReadOnlyDictionary<string, string> add)
    {
        if (!OperatingSystem.IsLinux() && !OperatingSystem.IsMacOS()) return;
        var args = new List<string?>(argv) { null };
        var envp = new List<string?>();
        foreach (System.Collections.DictionaryEntry e in Environment.GetEnvironmentVariables())
        {
            var k = (string)e.Key;
            if (!add.ContainsKey(k) && k != ReExecutedMarker) envp.Add($"{k}={e.Value}");
        }
        foreach (var (k, v) in add) envp.Add($"{k}={v}");
        envp.Add($"{ReExecutedMarker}=1");
        envp.Add(null);
        Console.Out.Flush();
        Console.Error.Flush();
        var empty = new byte[128]; // SIG_SETMASK: 2 on Linux, 3 on macOS
        if (sigprocmask(OperatingSystem.IsMacOS() ? 3 : 2, empty, IntPtr.Zero) != 0) return;
        execve(exe, args.ToArray(), envp.ToArray()); // returns only on failure
    }

    [DllImport("libc", SetLastError = true)]
    static extern int execve(string path, string?[] argv, string?[] envp);

    [DllImport("libc", SetLastError = true)]
    static extern int sigprocmask(int how, byte[] set, IntPtr oldset);
}

/// <summary>
/// glibc malloc tunables that make it keep and reuse the memory libtorch frees, as tcmalloc does
/// (<see cref="Settings"/>): no <c>mmap</c> per large block (<c>mmap_max=0</c>), no returning freed memory to the kernel
/// (<c>trim_threshold</c> 4 GiB), one arena (so no thread-arena heap is unmapped either), and transparent huge pages for
/// what it does map (<c>hugetlb=1</c>). Without them every training step re-faults its activations page by page: glibc
/// serves blocks ≥ 32 MB from fresh <c>mmap</c>s that <c>free</c> unmaps again (bench <c>--fault-probe</c>: ≈ 32,770 minor
/// faults per reused 128 MB tensor; docs/PERFORMANCE.md "Allocator"). glibc reads <c>GLIBC_TUNABLES</c> only when the
/// process starts, hence the re-execution (<see cref="NativeSetup.RestartWithMallocTunables"/>, and <c>detox</c>'s own).
/// The process's memory then stays at its peak instead of shrinking after a peak (as with tcmalloc). It changes where
/// memory comes from, not any result (same losses to the bit). Skipped when the user opted out
/// (<c>DETOX_DEFAULT_ALLOCATOR=1</c>), preloads a library (<c>LD_PRELOAD</c>, e.g. tcmalloc), set any <c>glibc.malloc.</c>
/// tunable of their own, or the C library is not glibc ≥ 2.35 (<c>hugetlb</c>'s first release).
/// </summary>
public static class MallocTunables
{
    /// <summary>The environment variable glibc reads.</summary>
    public const string Variable = "GLIBC_TUNABLES";
    /// <summary>What is added to <c>GLIBC_TUNABLES</c>.</summary>
    public const string Settings = NativeSetup.GlibcMallocTunables;

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
    /// <param name="env">Reads an environment variable.</param>
    /// <param name="glibcWithHugetlb">Whether the C library is glibc ≥ 2.35 (<see cref="GlibcHasHugetlb"/>).</param>
    public static string? Wanted(Func<string, string?> env, bool glibcWithHugetlb)
    {
        if (!glibcWithHugetlb || env("DETOX_DEFAULT_ALLOCATOR") == "1" || env("LD_PRELOAD") is { Length: > 0 }) return null;
        var current = env(Variable);
        if (current is { Length: > 0 } && current.Split(':').Any(t => t.StartsWith("glibc.malloc.", StringComparison.Ordinal))) return null;
        return string.IsNullOrEmpty(current) ? Settings : $"{current}:{Settings}";
    }
}

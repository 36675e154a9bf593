using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using TorchSharp;

namespace DetoxSharp.Models;

/// <summary>
/// Splits a C# kernel's loop over libtorch's own OpenMP threads: <see cref="For"/> opens a parallel region through
/// libgomp's <c>GOMP_parallel</c> — what <c>#pragma omp parallel</c> compiles to, and how libtorch's <c>at::parallel_for</c>
/// runs — with libtorch's thread count, and each thread of the team runs one contiguous slice of the range.
/// </summary>
/// <remarks>
/// <para>Why not .NET's thread pool: after each libtorch op libgomp's idle workers keep spinning on the other cores
/// (<c>GOMP_SPINCOUNT</c>, ≈ milliseconds), so a .NET worker started right after one shares its core with it, and a kernel
/// split that way ran slower than on one thread (CpuGelu, twenty-fifth session). The spinning workers are the ones this
/// hands the work to: they pick it up at once.</para>
/// <para>The team's threads are libgomp's native threads; the slice runs as managed code on them (a reverse P/Invoke,
/// which attaches each thread to the runtime once). An exception in a slice is caught there and rethrown on the calling
/// thread after the region. Falls back to running the whole range on the calling thread when libtorch has one thread,
/// the range is small, or libgomp was not found in this process (another OpenMP runtime, another OS).</para>
/// </remarks>
internal static unsafe class OmpParallel
{
    static readonly delegate* unmanaged<delegate* unmanaged<void*, void>, void*, uint, uint, void> GompParallel;
    static readonly delegate* unmanaged<int> ThreadNum, NumThreads;

    /// <summary>The fewest values (elements, or row length × rows) the kernels hand a thread of its own (32K).</summary>
    public const long MinValuesPerThread = 1 << 15;

    /// <summary>Whether libgomp's entry points were found (libtorch loaded with it, as its Linux builds are).</summary>
    public static bool Available { get; }

    static OmpParallel()
    {
        try
        {
            torch.InitializeDeviceType(DeviceType.CPU); // loads libtorch (and its libgomp) if nothing has yet
            // libtorch's libgomp as this process mapped it (the pip-style builds ship it as libgomp-<hash>.so.1)
            if (!OperatingSystem.IsLinux() || NativeSetup.LoadedLibrary(name => name.StartsWith("libgomp", StringComparison.Ordinal)) is not string path
                || !NativeLibrary.TryLoad(path, out var h)) return;
            if (NativeLibrary.TryGetExport(h, "GOMP_parallel", out var p) && NativeLibrary.TryGetExport(h, "omp_get_thread_num", out var n)
                && NativeLibrary.TryGetExport(h, "omp_get_num_threads", out var c))
            {
                GompParallel = (delegate* unmanaged<delegate* unmanaged<void*, void>, void*, uint, uint, void>)p;
                ThreadNum = (delegate* unmanaged<int>)n;
                NumThreads = (delegate* unmanaged<int>)c;
                Available = true;
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or DllNotFoundException) { }
    }

    [StructLayout(LayoutKind.Sequential)]
    struct Job
    {
        public IntPtr Body; // GCHandle of the Action<long, long>
        public long N, Grain; // slices are whole multiples of Grain items (the last one may be shorter)
    }

    /// <summary>Runs <paramref name="body"/>(from, to) over contiguous slices that cover [0, <paramref name="n"/>), one
    /// per thread of libtorch's thread count (fewer when a thread would get less than <paramref name="minPerThread"/>
    /// items), and returns when all are done. The calling thread runs one slice.</summary>
    /// <param name="n">The range's length.</param>
    /// <param name="minPerThread">The fewest items worth a thread of their own.</param>
    /// <param name="align">Slice boundaries are multiples of this (e.g. 16 elements for a two-vector bf16 store).</param>
    /// <param name="body">Processes [from, to); called concurrently on disjoint slices.</param>
    public static void For(long n, long minPerThread, long align, Action<long, long> body)
    {
        int threads = (int)Math.Min(torch.get_num_threads(), n / Math.Max(1, minPerThread));
        if (!Available || threads <= 1) { if (n > 0) body(0, n); return; }
        Exception? error = null;
        void Safe(long from, long to)
        {
            try { body(from, to); }
            catch (Exception e) { Interlocked.CompareExchange(ref error, e, null); }
        }
        var handle = GCHandle.Alloc((Action<long, long>)Safe);
        try
        {
            var job = new Job { Body = GCHandle.ToIntPtr(handle), N = n, Grain = Math.Max(1, align) };
            GompParallel(&Slice, &job, (uint)threads, 0);
        }
        finally { handle.Free(); }
        if (error is not null) throw new AggregateException("a parallel slice failed", error);
    }

    [UnmanagedCallersOnly]
    static void Slice(void* data)
    {
        var job = (Job*)data;
        long t = NumThreads(), i = ThreadNum(), units = (job->N + job->Grain - 1) / job->Grain;
        long from = Math.Min(job->N, units * i / t * job->Grain), to = Math.Min(job->N, units * (i + 1) / t * job->Grain);
        if (from < to) ((Action<long, long>)GCHandle.FromIntPtr(job->Body).Target!)(from, to);
    }
}

using System.Diagnostics;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

/// <summary>
/// The CPU's fp32 multiply-add rate, measured: chains of independent 512-bit FMAs on every thread at once,
/// no memory traffic. It tells machines apart that the same "model name" hides — AMD's Zen 4 executes a 512-bit FMA in
/// two 256-bit halves (≈ 32 fp32 FLOP per cycle and core), Zen 5's server cores in one (≈ 64) — so every GEMM-bound figure
/// of the bench can be read against the peak of the machine it was measured on.
/// </summary>
static class CpuPeak
{
    static readonly Lazy<(double PerCore, int Threads, bool Measured)> Measured = new(() => Measure(Environment.ProcessorCount));

    /// <summary>"fp32 FMA peak X GFLOP/s per core, Y on N threads (512-bit)" — measured once per process (≈ 0.3 s); CPUs
    /// without AVX-512 are not measured.</summary>
    public static string Line()
    {
        var (perCore, threads, measured) = Measured.Value;
        return !measured ? "fp32 FMA peak: not measured (no AVX-512)"
            : $"fp32 FMA peak {perCore:F1} GFLOP/s per core, {perCore * threads:F0} on {threads} threads (512-bit FMA chains, measured)";
    }

    static (double, int, bool) Measure(int threads)
    {
        if (!Avx512F.IsSupported) return (0, threads, false); // the figure is there to tell AVX-512 datapath widths apart
        Chain(1_000_000); // JIT and warm-up
        var rates = new double[threads];
        var ts = Enumerable.Range(0, threads).Select(i => new Thread(() =>
        {
            const long n = 20_000_000;
            var sw = Stopwatch.StartNew();
            Chain(n);
            rates[i] = n * 12.0 * 16 * 2 / sw.Elapsed.TotalSeconds / 1e9; // 12 chains × 16 lanes × 2 FLOP
        })).ToList();
        ts.ForEach(t => t.Start());
        ts.ForEach(t => t.Join());
        return (rates.Average(), threads, true);
    }

    /// <summary>12 independent 512-bit FMA chains of <paramref name="n"/> steps (enough to cover the FMA units' latency ×
    /// width).</summary>
    static float Chain(long n)
    {
        Vector512<float> b = Vector512.Create(1.0000001f), c = Vector512.Create(1e-7f);
        Vector512<float> a0 = Vector512.Create(0f), a1 = Vector512.Create(1f), a2 = Vector512.Create(2f), a3 = Vector512.Create(3f),
            a4 = Vector512.Create(4f), a5 = Vector512.Create(5f), a6 = Vector512.Create(6f), a7 = Vector512.Create(7f),
            a8 = Vector512.Create(8f), a9 = Vector512.Create(9f), a10 = Vector512.Create(10f), a11 = Vector512.Create(11f);
        for (long k = 0; k < n; k++)
        {
            a0 = Avx512F.FusedMultiplyAdd(a0, b, c); a1 = Avx512F.FusedMultiplyAdd(a1, b, c); a2 = Avx512F.FusedMultiplyAdd(a2, b, c);
            a3 = Avx512F.FusedMultiplyAdd(a3, b, c); a4 = Avx512F.FusedMultiplyAdd(a4, b, c); a5 = Avx512F.FusedMultiplyAdd(a5, b, c);
            a6 = Avx512F.FusedMultiplyAdd(a6, b, c); a7 = Avx512F.FusedMultiplyAdd(a7, b, c); a8 = Avx512F.FusedMultiplyAdd(a8, b, c);
            a9 = Avx512F.FusedMultiplyAdd(a9, b, c); a10 = Avx512F.FusedMultiplyAdd(a10, b, c); a11 = Avx512F.FusedMultiplyAdd(a11, b, c);
        }
        return Vector512.Sum(a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11);
    }
}

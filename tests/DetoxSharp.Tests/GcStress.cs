using System.Runtime.CompilerServices;

namespace DetoxSharp.Tests;

/// <summary>
/// GC stress for the test host. <see cref="Collector"/> starts a background thread that forces a gen-0 collection every
/// few milliseconds (the temporaries in question are young; a full collection every millisecond slows the tests
/// tenfold). TorchSharp frees a Tensor that nothing references any more from the finalizer thread; a temporary Tensor
/// whose handle a libtorch call is still using (say <c>a.narrow(…).copy_(b)</c> once the JIT inlined <c>copy_</c>) is
/// such a Tensor, and a collection that another thread triggers during the call frees it under libtorch — a crash of
/// the whole process (SIGSEGV in <c>copy_</c>/<c>bump_version</c>), seen twice in CI on 2026-12-04 with no test failing.
/// Without stress such a collection is rare (the test host's own threads allocate little); with it, one such site
/// crashed <c>LlamaCliTests</c> three runs out of three before it was fixed (docs/ARCHITECTURE.md "Tensor lifetimes").
/// <para>
/// <c>TensorLifetimeTests</c> runs a collector around the loads it checks. For any test run, <c>DETOX_TEST_GC_STRESS_MS</c>
/// starts one for the whole run (e.g. <c>DETOX_TEST_GC_STRESS_MS=1 dotnet test … --filter FullyQualifiedName~LlamaCliTests</c>),
/// a diagnostic that is not part of CI: TorchSharp's temporary Scalars, which no dispose scope holds, then fail now and
/// then as well ("Exception raised from toFloat"), which is TorchSharp's to fix.
/// </para>
/// </summary>
static class GcStress
{
    [ModuleInitializer]
    internal static void StartFromEnvironment()
    {
        if (int.TryParse(Environment.GetEnvironmentVariable("DETOX_TEST_GC_STRESS_MS"), out int ms) && ms >= 0)
            Collector(ms, CancellationToken.None);
    }

    /// <summary>Starts a background thread that runs a gen-0 collection, then sleeps <paramref name="ms"/> milliseconds,
    /// until <paramref name="stop"/> is cancelled; returns the started thread (join it after cancelling).</summary>
    public static Thread Collector(int ms, CancellationToken stop)
    {
        var t = new Thread(() =>
        {
            while (!stop.IsCancellationRequested)
            {
                GC.Collect(0);
                Thread.Sleep(ms);
            }
        }) { IsBackground = true, Name = "gc-stress" };
        t.Start();
        return t;
    }
}

using DetoxSharp.Checkpoints;
using DetoxSharp.Tests.Core;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Tests.Reliability;

/// <summary>
/// Tensors that a libtorch call is still using must be referenced until the call returns: a garbage collection that
/// another thread triggers can otherwise let the finalizer free a temporary's handle mid-call (docs/ARCHITECTURE.md
/// "Tensor lifetimes"). Before the fix, <see cref="Safetensors.Load"/> copied each chunk into a temporary
/// <c>narrow</c> view and crashed the process (SIGSEGV in <c>copy_</c>) under a collection every millisecond.
/// </summary>
public class TensorLifetimeTests
{
    [Fact]
    public void SafetensorsLoadKeepsItsSlicesAliveWhileAnotherThreadCollects()
    {
        var dir = CoreTestUtil.TempDir("lifetime");
        var path = Path.Combine(dir, "w.safetensors");
        var saved = new Dictionary<string, Tensor>();
        torch.manual_seed(5);
        for (int i = 0; i < 6; i++) saved[$"w{i}"] = torch.randn(1024, 1024 + i); // ≈ 4 MB: each copy_ takes a while
        Safetensors.Save(path, saved);

        var rounds = new List<Dictionary<string, Tensor>>();
        using (var stop = new CancellationTokenSource())
        {
            var collector = GcStress.Collector(1, stop.Token);
            try
            {
                // 1 MB chunks: ≈ 4 narrow + copy_ calls per tensor, each long enough for a collection to land inside it
                for (int round = 0; round < 10; round++) rounds.Add(Safetensors.Load(path, chunkBytes: 1 << 20));
            }
            finally
            {
                stop.Cancel();
                collector.Join();
            }
        }
        for (int round = 0; round < rounds.Count; round++)
            foreach (var (name, t) in saved)
            {
                Assert.True(torch.equal(rounds[round][name], t).all().item<bool>(), $"{name} differs in round {round}");
                rounds[round][name].Dispose();
            }
        foreach (var t in saved.Values) t.Dispose();
    }
}

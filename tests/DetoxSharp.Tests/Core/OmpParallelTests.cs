using System.Collections.Concurrent;
using DetoxSharp.Models;
using TorchSharp;
using static TorchSharp.torch;
using static DetoxSharp.Tests.Core.CoreTestUtil;

namespace DetoxSharp.Tests.Core;

/// <summary>Models/OmpParallel.cs: a range split over libtorch's OpenMP threads covers every item once, in aligned
/// slices, on more than one thread; a failing slice surfaces on the caller; and the bf16 kernels that use it give the
/// same bits on one thread and on two.</summary>
public class OmpParallelTests
{
    static T WithThreads<T>(int n, Func<T> f)
    {
        int before = torch.get_num_threads();
        try { torch.set_num_threads(n); return f(); }
        finally { torch.set_num_threads(before); }
    }

    [Fact]
    public void SlicesCoverTheRangeOnceOnLibtorchsThreads()
    {
        Assert.True(OmpParallel.Available, "libtorch's libgomp is mapped in this process (Linux)");
        foreach (var (n, align) in new (long, long)[] { (1000, 16), (17, 1), (33, 16), (2, 1) })
        {
            var slices = new ConcurrentBag<(long From, long To, int Thread)>();
            WithThreads(2, () => { OmpParallel.For(n, 1, align, (a, b) => slices.Add((a, b, Environment.CurrentManagedThreadId))); return 0; });
            var sorted = slices.OrderBy(x => x.From).ToList();
            Assert.Equal(0, sorted[0].From);
            Assert.Equal(n, sorted[^1].To);
            for (int i = 1; i < sorted.Count; i++) Assert.Equal(sorted[i - 1].To, sorted[i].From);
            Assert.All(sorted, x => Assert.True(x.From % align == 0 && x.To > x.From));
            Assert.Equal(2, sorted.Count);
            Assert.Equal(2, sorted.Select(x => x.Thread).Distinct().Count()); // two threads did the work
        }
        // one libtorch thread, or too few items for two: the caller runs the whole range
        var single = new ConcurrentBag<(long, long)>();
        WithThreads(1, () => { OmpParallel.For(100, 1, 1, (a, b) => single.Add((a, b))); return 0; });
        WithThreads(2, () => { OmpParallel.For(100, 64, 1, (a, b) => single.Add((a, b))); return 0; });
        Assert.Equal(new[] { (0L, 100L), (0L, 100L) }, single.ToArray());
    }

    [Fact]
    public void AFailingSliceSurfacesOnTheCaller()
    {
        var e = Assert.Throws<AggregateException>(() => WithThreads(2, () =>
        {
            OmpParallel.For(64, 1, 1, (a, b) => { if (a > 0) throw new InvalidOperationException("slice " + a); });
            return 0;
        }));
        Assert.IsType<InvalidOperationException>(e.InnerException);
        Assert.Equal("slice 32", e.InnerException!.Message);
    }

    [Fact]
    public void KernelsGiveTheSameBitsOnOneAndTwoThreads()
    {
        using var scope = torch.NewDisposeScope();
        var g = new Generator(4);
        var x0 = (torch.randn([48, 1000], generator: g) * 2).to(ScalarType.BFloat16);
        var logits0 = (torch.randn([300, 517], generator: g) * 3).to(ScalarType.BFloat16);
        var targets = torch.randint(0, 517, [300], ScalarType.Int64, generator: g);
        (double[] Y, double[] Gx, double[] L, double[] Gl) Run(int threads) => WithThreads(threads, () =>
        {
            var x = x0.detach().requires_grad_(true);
            var y = CpuGelu.Gelu(x);
            y.backward([torch.ones_like(y)]);
            var l = logits0.detach().requires_grad_(true);
            var lp = CpuTokenLogProbs.Of(l, targets);
            lp.sum().backward();
            return (Doubles(y), Doubles(x.grad!), Doubles(lp), Doubles(l.grad!));
        });
        var one = Run(1);
        var two = Run(2);
        Assert.True(one.Y.SequenceEqual(two.Y) && one.Gx.SequenceEqual(two.Gx), "GELU");
        Assert.True(one.L.SequenceEqual(two.L) && one.Gl.SequenceEqual(two.Gl), "token log-probs");
    }
}

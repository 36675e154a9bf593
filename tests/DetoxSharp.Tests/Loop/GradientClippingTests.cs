using DetoxSharp.Training;
using TorchSharp;
using TorchSharp.Modules;
using Xunit;
using static TorchSharp.torch;

namespace DetoxSharp.Tests.Loop;

/// <summary><see cref="GradientClipping.ClipGradNorm"/> against TorchSharp's <c>clip_grad_norm_</c> (libtorch's): the
/// same returned norm and the same gradient bits, with the limit above and below the norm.</summary>
public class GradientClippingTests
{
    /// <summary>Parameters of several shapes with gradients drawn at <paramref name="scale"/> (one parameter without a
    /// gradient, which both must leave alone).</summary>
    static List<Parameter> Params(int seed, double scale)
    {
        var gen = new Generator((ulong)seed);
        var shapes = new long[][] { [7, 13], [13], [64, 3], [1], [5, 5, 5] };
        var ps = shapes.Select(s => new Parameter(torch.randn(s, generator: gen))).ToList();
        foreach (var p in ps) p.grad = torch.randn(p.shape, generator: gen).mul_(scale);
        ps.Add(new Parameter(torch.ones(4)));
        return ps;
    }

    [Theory]
    [InlineData(1, 1e-3, 10.0)]   // far below the limit: coefficient clamped to 1, no multiply
    [InlineData(2, 1.0, 10.0)]    // norm ≈ 20 > 10: clipped
    [InlineData(3, 0.5, 10.0)]    // norm ≈ 10: near the limit
    [InlineData(4, 3.0, 0.25)]
    [InlineData(5, 1.0, float.MaxValue)] // "no limit" as TrainingLoop passes it
    public void SameNormAndSameGradientBitsAsLibtorch(int seed, double scale, double maxNorm)
    {
        var a = Params(seed, scale);
        var b = Params(seed, scale);
        double expected = torch.nn.utils.clip_grad_norm_(a, maxNorm);
        double actual = GradientClipping.ClipGradNorm(b, maxNorm);
        Assert.Equal(expected, actual);
        for (int i = 0; i < a.Count; i++)
        {
            if (a[i].grad is null) { Assert.Null(b[i].grad); continue; }
            Assert.True(a[i].grad!.eq(b[i].grad!).all().item<bool>(), $"parameter {i}: gradients differ from libtorch's clipping");
        }
        // the test must be able to tell: clipped cases really changed the gradients
        var raw = Params(seed, scale);
        bool clipped = expected > maxNorm;
        Assert.Equal(clipped, !raw[0].grad!.eq(b[0].grad!).all().item<bool>());
    }

    [Theory]
    [InlineData(0.01)]
    [InlineData(3.0)]
    public void Bf16GradientsAsLibtorch(double scale)
    {
        // pure-bf16 training clips bf16 gradients: the norm and coefficient are bf16 tensors there
        List<Parameter> Bf16() => Params(6, scale).Select(p => { var q = new Parameter(p.detach().to(ScalarType.BFloat16)); if (p.grad is not null) q.grad = p.grad.to(ScalarType.BFloat16); return q; }).ToList();
        var a = Bf16(); var b = Bf16();
        Assert.Equal(torch.nn.utils.clip_grad_norm_(a, 1.0), GradientClipping.ClipGradNorm(b, 1.0));
        for (int i = 0; i < a.Count; i++) Assert.True(a[i].grad is null ? b[i].grad is null : a[i].grad!.eq(b[i].grad!).all().item<bool>(), $"parameter {i}");
    }

    [Fact]
    public void NoGradientsGiveZero()
    {
        var ps = new List<Parameter> { new(torch.ones(3)) };
        Assert.Equal(0.0, GradientClipping.ClipGradNorm(ps, 1.0));
    }
}

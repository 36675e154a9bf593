using DetoxSharp.Models;
using TorchSharp;
using static TorchSharp.torch;
using static DetoxSharp.Tests.Core.CoreTestUtil;

namespace DetoxSharp.Tests.Core;

/// <summary>The bf16 GELU kernel (Models/CpuGelu.cs) against gelu_new evaluated in doubles and against libtorch's bf16
/// GELU: values and gradients within one bf16 unit in the last place, the tail that is not a multiple of 8 lanes,
/// special values; and a bf16 GPT-2's loss and gradients with and without it.</summary>
public class CpuGeluTests
{
    // gelu_new(x) = 0.5·x·(1 + tanh(u)) = x·σ(2u), u = √(2/π)·(x + 0.044715·x³), in doubles; the σ form keeps its
    // accuracy in the negative tail, where 1 + tanh(u) cancels to 0 (as in libtorch's float32 evaluation: −0 below ≈ −5)
    static double E(double x) => Math.Exp(-2 * Math.Sqrt(2 / Math.PI) * (x + 0.044715 * x * x * x));

    static double Gelu(double x) => x / (1 + E(x));

    static double GeluDerivative(double x)
    {
        double e = E(x), s = 1 / (1 + e);
        return s + x * 2 * (e / ((1 + e) * (1 + e))) * Math.Sqrt(2 / Math.PI) * (1 + 3 * 0.044715 * x * x);
    }

    // libtorch's float32 1 + tanh(u) loses everything below |x|·2⁻²³ or so (its −0 in the tail)
    static double LibtorchSlack(double x, double scale = 1) => 1e-6 * scale * Math.Max(1, Math.Abs(x));

    // random values over GELU's whole shape (the negative tail, the bend, the linear part), 8·k + 5 of them (a tail)
    static Tensor Inputs(long seed, int n = 8 * 1250 + 5)
    {
        var g = new Generator((ulong)seed);
        return (torch.randn([n], generator: g) * 4).to(ScalarType.BFloat16);
    }

    [Fact]
    public void ForwardIsGeluNewRoundedToBf16()
    {
        Assert.True(CpuGelu.Supported, "the test machine is x86-64 with AVX2 and FMA");
        using var scope = torch.NewDisposeScope();
        var x = Inputs(1);
        var ours = CpuGelu.Gelu(x);
        var lib = torch.nn.functional.gelu(x, TorchSharp.Modules.GELU.Approximate.tanh);
        Assert.Equal(ScalarType.BFloat16, ours.dtype);
        double[] xs = Doubles(x), o = Doubles(ours), l = Doubles(lib);
        int differ = 0;
        for (int i = 0; i < xs.Length; i++)
        {
            double exact = Gelu(xs[i]);
            // rounding to nearest: within half a unit of the exact value, plus the float32 evaluation's few ulps
            Assert.True(Math.Abs(o[i] - exact) <= 0.5 * Bf16Ulp(exact) * 1.01 + 1e-30, $"x = {xs[i]}: ours {o[i]}, exact {exact}");
            Assert.True(Math.Abs(o[i] - l[i]) <= Bf16Ulp(l[i]) * 1.01 + LibtorchSlack(xs[i]), $"x = {xs[i]}: ours {o[i]}, libtorch {l[i]}");
            if (o[i] != l[i]) differ++;
        }
        // the two float32 evaluations round to the same bf16 value except near rounding boundaries (measured ≈ 7 %)
        Assert.True(differ < xs.Length * 0.15, $"{differ} of {xs.Length} differ from libtorch");
    }

    [Fact]
    public void GradientIsGeluNewDerivative()
    {
        using var scope = torch.NewDisposeScope();
        var x = Inputs(2).requires_grad_(true);
        var gOut = (torch.randn([x.shape[0]], generator: new Generator(3))).to(ScalarType.BFloat16);
        var y = CpuGelu.Gelu(x);
        Assert.True(y.requires_grad);
        using (torch.no_grad())
            Assert.True(Doubles(y.detach()).SequenceEqual(Doubles(CpuGelu.Gelu(x.detach()))), "the differentiable result has the no-grad values");
        y.backward([gOut]);
        var xl = x.detach().clone().requires_grad_(true);
        torch.nn.functional.gelu(xl, TorchSharp.Modules.GELU.Approximate.tanh).backward([gOut]);
        double[] xs = Doubles(x.detach()), gs = Doubles(gOut), ours = Doubles(x.grad!), lib = Doubles(xl.grad!);
        for (int i = 0; i < xs.Length; i++)
        {
            double exact = gs[i] * GeluDerivative(xs[i]);
            // gelu'(x) rounded to bf16, then the product rounded: within 1.5 units, plus the float32 evaluation
            Assert.True(Math.Abs(ours[i] - exact) <= 1.5 * Bf16Ulp(exact) * 1.01 + 1e-30, $"x = {xs[i]}, g = {gs[i]}: ours {ours[i]}, exact {exact}");
            Assert.True(Math.Abs(ours[i] - lib[i]) <= 2 * Bf16Ulp(lib[i]) * 1.01 + LibtorchSlack(xs[i], Math.Abs(gs[i])), $"x = {xs[i]}: ours {ours[i]}, libtorch {lib[i]}");
        }
    }

    [Fact]
    public void SpecialValuesAndShortTensors()
    {
        using var scope = torch.NewDisposeScope();
        float[] v = [0f, -0f, 1f, -1f, 1e-3f, -1e-3f, 8f, -8f, 30f, -30f, 1e4f, -1e4f, float.NaN];
        var x = torch.tensor(v).to(ScalarType.BFloat16); // 13: one vector of 8 and a tail of 5
        var y = Doubles(CpuGelu.Gelu(x));
        var xs = Doubles(x);
        for (int i = 0; i < v.Length - 1; i++)
            Assert.True(Math.Abs(y[i] - Gelu(xs[i])) <= 0.5 * Bf16Ulp(Gelu(xs[i])) * 1.01 + 1e-30, $"gelu({xs[i]}) = {y[i]}");
        Assert.True(double.IsNaN(y[^1]), "NaN stays NaN");
        Assert.Equal(new long[] { 2, 3, 4 }, CpuGelu.Gelu(torch.ones([2, 3, 4], ScalarType.BFloat16)).shape);
        // a contiguous slice that starts inside its storage: the kernel reads from the slice's first element
        var big = Inputs(9, 64).reshape(8, 8);
        var rows = big[2..5];
        Assert.True(CpuGelu.Applies(rows) || torch.get_num_threads() > CpuGelu.MaxThreads);
        Assert.Equal(Doubles(CpuGelu.Gelu(rows.clone())), Doubles(CpuGelu.Gelu(rows)));
        foreach (int n in new[] { 1, 7, 8, 9, 17 })
        {
            var xi = Inputs(10 + n, n);
            Assert.True(Doubles(CpuGelu.Gelu(xi)).SequenceEqual(Doubles(CpuGelu.Gelu(xi.clone()))), $"n = {n}");
            double[] a = Doubles(CpuGelu.Gelu(xi)), b = Doubles(xi);
            for (int i = 0; i < n; i++)
                Assert.True(Math.Abs(a[i] - Gelu(b[i])) <= 0.5 * Bf16Ulp(Gelu(b[i])) * 1.01 + 1e-30, $"n = {n}, x = {b[i]}");
        }
    }

    [Fact]
    public void AppliesOnlyToContiguousBf16OnTheCpu()
    {
        using var scope = torch.NewDisposeScope();
        int before = CpuGelu.MaxThreads;
        try
        {
            CpuGelu.MaxThreads = int.MaxValue;
            Assert.True(CpuGelu.Applies(torch.ones([4, 8], ScalarType.BFloat16)));
            Assert.False(CpuGelu.Applies(torch.ones([4, 8], ScalarType.Float32)), "float32 stays on libtorch's GELU");
            Assert.False(CpuGelu.Applies(torch.ones([4, 8], ScalarType.BFloat16).t()), "not contiguous");
            Assert.False(CpuGelu.Applies(torch.ones([0], ScalarType.BFloat16)), "empty");
            Assert.Throws<ArgumentException>(() => CpuGelu.Gelu(torch.ones([4, 8], ScalarType.Float32)));
            Assert.Throws<ArgumentException>(() => CpuGelu.Gelu(torch.ones([4, 8], ScalarType.BFloat16).t()));
            CpuGelu.MaxThreads = torch.get_num_threads() - 1;
            Assert.False(CpuGelu.Applies(torch.ones([4, 8], ScalarType.BFloat16)), "more libtorch threads than MaxThreads");
        }
        finally { CpuGelu.MaxThreads = before; }
    }

    [Fact]
    public void Bf16ModelLossAndGradientsMatchLibtorchGelu()
    {
        (double loss, Dictionary<string, double[]> grads) Step(bool kernel)
        {
            bool enabled = CpuGelu.Enabled;
            int maxThreads = CpuGelu.MaxThreads;
            try
            {
                CpuGelu.Enabled = kernel;
                CpuGelu.MaxThreads = int.MaxValue;
                return CoreTestUtil.Bf16LossAndGradients((m, ids) =>
                    torch.nn.functional.cross_entropy(m.Forward(ids).to(ScalarType.Float32)[.., ..^1].reshape(-1, 50), ids[.., 1..].reshape(-1)));
            }
            finally { CpuGelu.Enabled = enabled; CpuGelu.MaxThreads = maxThreads; }
        }
        Assert.True(CpuGelu.Supported);
        var (lossK, gradsK) = Step(true);
        var (lossL, gradsL) = Step(false);
        Assert.True(Math.Abs(lossK - lossL) < 2e-3 * Math.Abs(lossL), $"loss {lossK} with the kernel, {lossL} with libtorch's GELU");
        CoreTestUtil.AssertGradientsAgree(gradsK, gradsL, 0.999, 0.02);
    }
}

using DetoxSharp.Models;
using DetoxSharp.Training;
using TorchSharp;
using static TorchSharp.torch;
using static DetoxSharp.Tests.Core.CoreTestUtil;

namespace DetoxSharp.Tests.Core;

/// <summary>The bf16 token log-prob kernel (Models/CpuTokenLogProbs.cs) against log-softmax evaluated in doubles and
/// against libtorch's float32 path: values to float32 rounding, bf16 gradients within one unit, NaN rows, the tail of a
/// vocabulary that is not a multiple of 16, bad targets; and a bf16 GPT-2's SFT loss and gradients with and without it.</summary>
public class CpuTokenLogProbsTests
{
    static (Tensor Logits, Tensor Targets) Inputs(long seed, int n, int v, double scale = 3)
    {
        var g = new Generator((ulong)seed);
        return ((torch.randn([n, v], generator: g) * scale).to(ScalarType.BFloat16), torch.randint(0, v, [n], ScalarType.Int64, generator: g));
    }

    static Tensor Libtorch(Tensor logits, Tensor targets) =>
        logits.to(ScalarType.Float32).log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1);

    [Fact]
    public void ValuesAreLogSoftmaxAtTheTargets()
    {
        Assert.True(CpuGelu.Supported, "the test machine is x86-64 with AVX2 and FMA");
        using var scope = torch.NewDisposeScope();
        foreach (int v in new[] { 2723, 16, 17, 7, 1 })
        {
            var (logits, targets) = Inputs(v, 37, v);
            var ours = CpuTokenLogProbs.Of(logits, targets);
            Assert.Equal(ScalarType.Float32, ours.dtype);
            Assert.Equal(new long[] { 37 }, ours.shape);
            var exact = Doubles(logits.to(ScalarType.Float64).log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1));
            double[] o = Doubles(ours), l = Doubles(Libtorch(logits, targets));
            for (int i = 0; i < o.Length; i++)
            {
                Assert.True(Math.Abs(o[i] - exact[i]) <= 4e-6 * (1 + Math.Abs(exact[i])) + 2e-6, $"V = {v}, row {i}: ours {o[i]}, exact {exact[i]}");
                Assert.True(Math.Abs(o[i] - l[i]) <= 4e-6 * (1 + Math.Abs(l[i])) + 2e-6, $"V = {v}, row {i}: ours {o[i]}, libtorch {l[i]}");
            }
        }
    }

    [Theory]
    [InlineData(0.0)]   // targets as likely as any token: p_target ≈ 1/V
    [InlineData(7.0)]   // the targets' logits raised: p_target from ≈ 0.1 to ≈ 1, where 1 − p cancels
    public void GradientIsTheTargetIndicatorMinusSoftmax(double boost)
    {
        using var scope = torch.NewDisposeScope();
        var (logits, targets) = Inputs(2, 29, 1003);
        if (boost > 0)
            logits = logits.scatter_add(1, targets.unsqueeze(1), (torch.arange(29, ScalarType.Float32) * 0.25 + boost).unsqueeze(1).to(ScalarType.BFloat16));
        logits.requires_grad_(true);
        var gOut = torch.randn([29], generator: new Generator(3));
        var y = CpuTokenLogProbs.Of(logits, targets);
        Assert.True(y.requires_grad);
        using (torch.no_grad())
            Assert.True(Doubles(y.detach()).SequenceEqual(Doubles(CpuTokenLogProbs.Of(logits.detach(), targets))), "the differentiable result has the no-grad values");
        y.backward([gOut]);
        Assert.Equal(ScalarType.BFloat16, logits.grad!.dtype);
        var xl = logits.detach().clone().requires_grad_(true);
        Libtorch(xl, targets).backward([gOut]);
        var p = Doubles(logits.detach().to(ScalarType.Float64).softmax(-1));
        double[] ours = Doubles(logits.grad!), lib = Doubles(xl.grad!), gs = Doubles(gOut);
        var ts = targets.data<long>().ToArray();
        int differ = 0;
        for (int i = 0; i < 29; i++)
            for (int j = 0; j < 1003; j++)
            {
                int k = i * 1003 + j;
                double exact = gs[i] * ((j == ts[i] ? 1 : 0) - p[k]);
                double slack = Math.Abs(gs[i]) * 1e-6; // float32's softmax, where 1 − p cancels at the target
                // one rounding of a float32 value, as libtorch's: within half a unit of the exact gradient (plus
                // float32's few ulps) and one unit of libtorch's
                Assert.True(Math.Abs(ours[k] - exact) <= 0.5 * Bf16Ulp(exact) * 1.01 + slack + 1e-30, $"row {i}, column {j}: ours {ours[k]}, exact {exact}");
                Assert.True(Math.Abs(ours[k] - lib[k]) <= Bf16Ulp(lib[k]) * 1.01 + slack + 1e-30, $"row {i}, column {j}: ours {ours[k]}, libtorch {lib[k]}");
                if (ours[k] != lib[k]) differ++;
            }
        // the two float32 evaluations round alike except near rounding boundaries (measured: none of these differ)
        Assert.True(differ < 29 * 1003 * 0.01, $"{differ} of {29 * 1003} gradient values differ from libtorch's");
    }

    [Fact]
    public void NanRowsAndBadArguments()
    {
        using var scope = torch.NewDisposeScope();
        var (logits, targets) = Inputs(4, 5, 40);
        var clean = Doubles(CpuTokenLogProbs.Of(logits, targets));
        logits[1, 7] = torch.tensor(float.NaN);      // not the target (unless drawn so): the row's log-prob is NaN anyway
        logits[3, 39] = torch.tensor(float.NaN);     // in the tail beyond the last full vector
        var x = logits.requires_grad_(true);
        var y = CpuTokenLogProbs.Of(x, targets);
        var o = Doubles(y.detach());
        Assert.True(double.IsNaN(o[1]) && double.IsNaN(o[3]), "a NaN logit makes its row's log-prob NaN, as libtorch's");
        foreach (int i in new[] { 0, 2, 4 }) Assert.Equal(clean[i], o[i]);
        y.sum().backward();
        var g = Doubles(x.grad!).Chunk(40).ToArray();
        Assert.True(g[1].All(double.IsNaN) && g[3].All(double.IsNaN), "the NaN rows' gradients are NaN");
        Assert.True(g[0].All(double.IsFinite));
        // a +∞ logit, or only −∞ ones: NaN, as libtorch's log-softmax gives
        var inf = torch.zeros([2, 20]).to(ScalarType.BFloat16);
        inf[0, 3] = torch.tensor(float.PositiveInfinity);
        inf[1] = torch.tensor(float.NegativeInfinity);
        var it = torch.tensor(new long[] { 5, 5 });
        Assert.True(Doubles(CpuTokenLogProbs.Of(inf, it)).All(double.IsNaN));
        Assert.True(Doubles(Libtorch(inf, it)).All(double.IsNaN), "libtorch agrees");

        Assert.Throws<ArgumentOutOfRangeException>(() => CpuTokenLogProbs.Of(logits.detach(), torch.tensor(new long[] { 0, 1, 40, 2, 3 })));
        Assert.Throws<ArgumentOutOfRangeException>(() => CpuTokenLogProbs.Of(logits.detach(), torch.tensor(new long[] { 0, -1, 4, 2, 3 })));
        Assert.Throws<ArgumentException>(() => CpuTokenLogProbs.Of(logits.detach().to(ScalarType.Float32), targets));
        Assert.Throws<ArgumentException>(() => CpuTokenLogProbs.Of(logits.detach(), targets[..4]));
        int before = CpuTokenLogProbs.MaxThreads;
        try
        {
            CpuTokenLogProbs.MaxThreads = int.MaxValue;
            Assert.True(CpuTokenLogProbs.Applies(logits, targets));
            Assert.False(CpuTokenLogProbs.Applies(logits.to(ScalarType.Float32), targets), "float32 keeps libtorch's path");
            Assert.False(CpuTokenLogProbs.Applies(logits.detach().t(), torch.zeros(40, ScalarType.Int64)), "not contiguous");
            Assert.False(CpuTokenLogProbs.Applies(logits, targets.to(ScalarType.Int32)), "int32 targets");
            CpuTokenLogProbs.MaxThreads = torch.get_num_threads() - 1;
            Assert.False(CpuTokenLogProbs.Applies(logits, targets), "more libtorch threads than MaxThreads");
        }
        finally { CpuTokenLogProbs.MaxThreads = before; }
    }

    [Fact]
    public void Bf16ModelSftLossAndGradientsMatchLibtorch()
    {
        (double loss, Dictionary<string, double[]> grads) Step(bool kernel)
        {
            bool enabled = CpuTokenLogProbs.Enabled;
            int maxThreads = CpuTokenLogProbs.MaxThreads;
            try
            {
                CpuTokenLogProbs.Enabled = kernel;
                CpuTokenLogProbs.MaxThreads = int.MaxValue;
                return CoreTestUtil.Bf16LossAndGradients((m, ids) =>
                {
                    var targets = torch.ones([3, 16]);
                    targets[1, ..5] = torch.tensor(0f); // a prompt that is not scored
                    var (sum, count) = SftTrainer.MaskedNll(m, ids, torch.ones([3, 16], ScalarType.Int64), targets);
                    return sum / count;
                });
            }
            finally { CpuTokenLogProbs.Enabled = enabled; CpuTokenLogProbs.MaxThreads = maxThreads; }
        }
        var (lossK, gradsK) = Step(true);
        var (lossL, gradsL) = Step(false);
        Assert.True(Math.Abs(lossK - lossL) < 1e-5 * Math.Abs(lossL), $"loss {lossK} with the kernel, {lossL} with libtorch's log-softmax");
        CoreTestUtil.AssertGradientsAgree(gradsK, gradsL, 0.9999, 0.005);
    }
}

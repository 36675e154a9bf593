using DetoxSharp.Models;
using TorchSharp;
using static TorchSharp.torch;
using static DetoxSharp.Tests.Core.CoreTestUtil;

namespace DetoxSharp.Tests.Core;

/// <summary>The bf16 attention softmax kernel (Models/CpuAttentionSoftmax.cs) against libtorch's ops it replaces (a
/// float32 bias add of scale·scores, softmax, cast) and against the softmax in doubles: values and gradients, causal,
/// masked (per batch row, broadcast over heads), none, more keys than queries, row lengths that are not multiples of 8 or
/// 16; NaN and infinite scores; bad arguments; and splitting the rows over libtorch's threads (Models/OmpParallel.cs).</summary>
public class CpuAttentionSoftmaxTests
{
    const int B = 2, H = 3;

    public static TheoryData<string, int, int> Cases => new()
    {
        { "causal", 19, 19 }, { "causal", 96, 96 }, { "causal", 5, 12 }, { "none", 7, 23 }, { "mask", 20, 20 }, { "mask", 3, 37 },
    };

    // scores [B, H, T, K] in bf16, and the mask (true = attend) of the kind: a batch row with 4 padding keys, and each
    // query seeing itself as the models' masks do; with more keys than queries the queries are the last T positions
    static (Tensor Scores, Tensor? Mask, bool Causal) Inputs(string kind, int t, int k, long seed)
    {
        var g = new Generator((ulong)seed);
        var s = (torch.randn([B, H, t, k], generator: g) * 6).to(ScalarType.BFloat16);
        if (kind != "mask") return (s, null, kind == "causal");
        var m = new bool[B * t * k];
        int past = k - t;
        for (int b = 0; b < B; b++) for (int i = 0; i < t; i++) for (int j = 0; j < k; j++)
            m[(b * t + i) * k + j] = j == i + past || (j <= i + past && j >= (b == 1 ? 4 : 0));
        return (s, torch.tensor(m, [B, 1, t, k]), false);
    }

    // what CpuAttention.MathPath ran before the kernel: bias (0 or −∞) + scale·scores in float32, softmax, cast to bf16
    static Tensor Libtorch(Tensor s, double scale, Tensor? mask, bool causal)
    {
        long t = s.shape[2], k = s.shape[3];
        Tensor? hide = mask is not null ? mask.logical_not() : causal ? torch.ones(t, k, ScalarType.Bool).triu(1) : null;
        var bias = torch.zeros(hide?.shape ?? [1], ScalarType.Float32);
        if (hide is not null) bias.masked_fill_(hide, float.NegativeInfinity);
        return bias.add(s, scale).softmax(-1).to(ScalarType.BFloat16);
    }

    static bool[] Visible(Tensor? mask, bool causal, int t, int k)
    {
        var all = torch.ones([B, H, t, k], ScalarType.Bool);
        if (mask is not null) all = all & mask;
        else if (causal) all = all & torch.ones(t, k, ScalarType.Bool).tril();
        return all.data<bool>().ToArray();
    }

    // softmax in doubles of scale·s over the visible keys of each row
    static double[] Exact(double[] s, bool[] visible, double scale, int k)
    {
        var p = new double[s.Length];
        for (int r = 0; r < s.Length / k; r++)
        {
            double m = double.NegativeInfinity, z = 0;
            for (int j = 0; j < k; j++) if (visible[r * k + j]) m = Math.Max(m, scale * s[r * k + j]);
            for (int j = 0; j < k; j++) if (visible[r * k + j]) z += Math.Exp(scale * s[r * k + j] - m);
            for (int j = 0; j < k; j++) p[r * k + j] = visible[r * k + j] ? Math.Exp(scale * s[r * k + j] - m) / z : 0;
        }
        return p;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void ValuesAndGradientsMatchLibtorchAndDoubles(string kind, int t, int k)
    {
        Assert.True(Bf16SimdAvailable(), "the test machine is x86-64 with AVX2 and FMA");
        using var scope = torch.NewDisposeScope();
        var (s0, mask, causal) = Inputs(kind, t, k, seed: t * 100 + k);
        double scale = 1 / Math.Sqrt(64);
        var s = s0.detach().requires_grad_(true);
        var p = CpuAttentionSoftmax.Probabilities(s, scale, mask, causal);
        Assert.Equal(ScalarType.BFloat16, p.dtype);
        using (torch.no_grad())
            Assert.True(Doubles(p.detach()).SequenceEqual(Doubles(CpuAttentionSoftmax.Probabilities(s0, scale, mask, causal))), "the differentiable result has the no-grad values");
        var sl = s0.detach().requires_grad_(true);
        var pl = Libtorch(sl, scale, mask, causal);
        var vis = Visible(mask, causal, t, k);
        double[] sd = Doubles(s0), ours = Doubles(p), lib = Doubles(pl), exact = Exact(sd, vis, scale, k);
        int differ = 0;
        for (int i = 0; i < ours.Length; i++)
        {
            // float32 arithmetic, then one rounding: half a bf16 unit from the exact value, one from libtorch's
            Assert.True(Math.Abs(ours[i] - exact[i]) <= 0.5 * Bf16Ulp(exact[i]) * 1.01 + 1e-6 * exact[i] + 1e-30, $"{kind} {t}×{k}, value {i}: ours {ours[i]}, exact {exact[i]}");
            Assert.True(Math.Abs(ours[i] - lib[i]) <= Bf16Ulp(lib[i]) * 1.01 + 1e-30, $"{kind} {t}×{k}, value {i}: ours {ours[i]}, libtorch {lib[i]}");
            if (!vis[i]) Assert.Equal(0.0, ours[i]);
            if (ours[i] != lib[i]) differ++;
        }
        Assert.True(differ <= ours.Length / 50, $"{differ} of {ours.Length} probabilities differ from libtorch's");

        // the gradient of Σ p·w reaches the probabilities as bf16, as the product with v sends it
        var w = (torch.randn(p.shape, generator: new Generator(7)) * 3).to(ScalarType.BFloat16);
        p.backward([w]);
        pl.backward([w]);
        Assert.Equal(ScalarType.BFloat16, s.grad!.dtype);
        double[] gOurs = Doubles(s.grad!), gLib = Doubles(sl.grad!), wd = Doubles(w);
        differ = 0;
        for (int r = 0; r < ours.Length / k; r++)
        {
            double dot = 0, dotAbs = 0;
            for (int j = 0; j < k; j++) { dot += wd[r * k + j] * exact[r * k + j]; dotAbs += Math.Abs(wd[r * k + j] * exact[r * k + j]); }
            for (int j = 0; j < k; j++)
            {
                int i = r * k + j;
                double e = scale * exact[i] * (wd[i] - dot);
                // float32's y, Σ g·y and g − Σ g·y carry relative errors ≈ 1e-6 of the terms that cancel
                double slack = scale * exact[i] * (Math.Abs(wd[i]) + dotAbs) * 2e-6 + 1e-30;
                Assert.True(Math.Abs(gOurs[i] - e) <= 0.5 * Bf16Ulp(e) * 1.01 + slack, $"{kind} {t}×{k}, gradient {i}: ours {gOurs[i]}, exact {e}");
                Assert.True(Math.Abs(gOurs[i] - gLib[i]) <= Bf16Ulp(gLib[i]) * 1.01 + 2 * slack, $"{kind} {t}×{k}, gradient {i}: ours {gOurs[i]}, libtorch {gLib[i]}");
                if (gOurs[i] != gLib[i]) differ++;
            }
        }
        Assert.True(differ <= ours.Length / 50, $"{differ} of {ours.Length} gradients differ from libtorch's");
    }

    static bool Bf16SimdAvailable() => CpuGelu.Supported;

    [Fact]
    public void TheComparisonSeesAWrongMask()
    {
        // the value test can fail: a causal mask one key late is far outside its tolerance
        using var scope = torch.NewDisposeScope();
        var (s, _, _) = Inputs("causal", 19, 19, 3);
        var ours = Doubles(CpuAttentionSoftmax.Probabilities(s, 0.125, null, true));
        var late = torch.ones(19, 19, ScalarType.Bool).tril(1).expand(B, H, 19, 19);
        var wrong = Doubles(CpuAttentionSoftmax.Probabilities(s, 0.125, late, false));
        Assert.True(ours.Zip(wrong).Max(x => Math.Abs(x.First - x.Second)) > 0.05);
    }

    [Fact]
    public void NonFiniteScoresGiveNanRowsAsLibtorch()
    {
        using var scope = torch.NewDisposeScope();
        var (s, mask, _) = Inputs("mask", 20, 20, 5);
        s[0, 0, 5, 2] = torch.tensor(float.NaN);                // visible
        s[0, 1, 6, 15] = torch.tensor(float.NaN);               // hidden (key after the query)
        s[1, 2, 10, 1] = torch.tensor(float.PositiveInfinity);  // hidden (padding of batch row 1)
        s[1, 0, 12, 7] = torch.tensor(float.PositiveInfinity);  // visible
        s[0, 2, 9, 3] = torch.tensor(float.NegativeInfinity);   // visible: probability 0, the row stays finite
        s[1, 1, 4] = torch.tensor(float.NegativeInfinity);      // the whole row, so its one visible key too
        s[0, 0, 19, 17] = torch.tensor(float.NaN);              // in the tail beyond the last full vector of 16
        var x = s.detach().requires_grad_(true);
        var p = CpuAttentionSoftmax.Probabilities(x, 0.125, mask, false);
        var xl = s.detach().requires_grad_(true);
        var pl = Libtorch(xl, 0.125, mask, false);
        double[] ours = Doubles(p), lib = Doubles(pl);
        for (int i = 0; i < ours.Length; i++)
        {
            Assert.True(double.IsNaN(ours[i]) == double.IsNaN(lib[i]), $"value {i}: ours {ours[i]}, libtorch {lib[i]}");
            if (!double.IsNaN(lib[i])) Assert.True(Math.Abs(ours[i] - lib[i]) <= Bf16Ulp(lib[i]) * 1.01 + 1e-30, $"value {i}: ours {ours[i]}, libtorch {lib[i]}");
        }
        Assert.Equal(6 * 20, ours.Count(double.IsNaN)); // the six rows above, the −∞ one with a finite row excepted
        Assert.Equal(0.0, ours[((0 * H + 2) * 20 + 9) * 20 + 3]);
        var w = torch.ones(p.shape, ScalarType.BFloat16);
        p.backward([w]);
        pl.backward([w]);
        double[] g = Doubles(x.grad!), gl = Doubles(xl.grad!);
        for (int i = 0; i < g.Length; i++)
            Assert.True(double.IsNaN(g[i]) == double.IsNaN(gl[i]), $"gradient {i}: ours {g[i]}, libtorch {gl[i]}");

        // causal without a mask: keys after the query are not exponentiated, but a NaN or +∞ there still makes the row NaN
        var (c, _, _) = Inputs("causal", 20, 20, 6);
        c[0, 0, 3, 10] = torch.tensor(float.NaN);
        c[1, 1, 7, 19] = torch.tensor(float.PositiveInfinity);
        double[] oc = Doubles(CpuAttentionSoftmax.Probabilities(c, 0.125, null, true)), lc = Doubles(Libtorch(c, 0.125, null, true));
        for (int i = 0; i < oc.Length; i++)
            Assert.True(double.IsNaN(oc[i]) == double.IsNaN(lc[i]), $"causal value {i}: ours {oc[i]}, libtorch {lc[i]}");
        Assert.Equal(2 * 20, oc.Count(double.IsNaN));
    }

    [Fact]
    public void BadArguments()
    {
        using var scope = torch.NewDisposeScope();
        var (s, mask, _) = Inputs("mask", 6, 6, 1);
        Assert.Throws<ArgumentException>(() => CpuAttentionSoftmax.Probabilities(s.to(ScalarType.Float32), 0.1, null, true));
        Assert.Throws<ArgumentException>(() => CpuAttentionSoftmax.Probabilities(s.transpose(2, 3), 0.1, null, true));
        Assert.Throws<ArgumentException>(() => CpuAttentionSoftmax.Probabilities(s, 0, null, true));
        Assert.Throws<ArgumentException>(() => CpuAttentionSoftmax.Probabilities(s, double.NaN, null, true));
        Assert.Throws<ArgumentException>(() => CpuAttentionSoftmax.Probabilities(s, 0.1, mask!.to(ScalarType.Float32), false));
        Assert.Throws<ArgumentException>(() => CpuAttentionSoftmax.Probabilities(s, 0.1, torch.ones(3, 1, 6, 6, ScalarType.Bool), false));
        Assert.False(CpuAttentionSoftmax.Applies(s.to(ScalarType.Float32)));
        Assert.True(CpuAttentionSoftmax.Applies(s));
    }

    [Fact]
    public void RowsSplitOverLibtorchThreadsGiveTheSameBits()
    {
        using var scope = torch.NewDisposeScope();
        int before = torch.get_num_threads();
        try
        {
            var (s0, mask, _) = Inputs("mask", 96, 96, 9);
            (double[] P, double[] G) Run(int threads)
            {
                torch.set_num_threads(threads);
                var s = s0.detach().requires_grad_(true);
                var p = CpuAttentionSoftmax.Probabilities(s, 0.125, mask, false);
                p.backward([torch.ones(p.shape, ScalarType.BFloat16) * p.detach()]);
                return (Doubles(p), Doubles(s.grad!));
            }
            var one = Run(1);
            var two = Run(2);
            Assert.True(one.P.SequenceEqual(two.P) && one.G.SequenceEqual(two.G));
        }
        finally { torch.set_num_threads(before); }
    }
}

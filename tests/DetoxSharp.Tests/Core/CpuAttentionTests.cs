using DetoxSharp.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Tests.Core;

/// <summary>bf16 CPU attention (Models/CpuAttention.cs) against attention written out in plain C# doubles: outputs and
/// gradients of q, k and v, causal, with a padding mask, and with more keys than queries (a KV cache).</summary>
public class CpuAttentionTests
{
    /// <summary>softmax(q·kᵀ/√d with hidden keys at −∞)·v per batch and head, in doubles; <paramref name="see"/>(b, i, j)
    /// says whether query i of batch row b sees key j.</summary>
    static double[,,,] Reference(double[,,,] q, double[,,,] k, double[,,,] v, Func<int, int, int, bool> see)
    {
        int B = q.GetLength(0), H = q.GetLength(1), T = q.GetLength(2), D = q.GetLength(3), K = k.GetLength(2);
        var y = new double[B, H, T, D];
        for (int b = 0; b < B; b++)
            for (int h = 0; h < H; h++)
                for (int i = 0; i < T; i++)
                {
                    var s = new double[K];
                    double max = double.NegativeInfinity;
                    for (int j = 0; j < K; j++)
                    {
                        if (!see(b, i, j)) { s[j] = double.NegativeInfinity; continue; }
                        double dot = 0;
                        for (int c = 0; c < D; c++) dot += q[b, h, i, c] * k[b, h, j, c];
                        s[j] = dot / Math.Sqrt(D);
                        max = Math.Max(max, s[j]);
                    }
                    double z = 0;
                    for (int j = 0; j < K; j++) z += s[j] = Math.Exp(s[j] - max);
                    for (int c = 0; c < D; c++)
                    {
                        double acc = 0;
                        for (int j = 0; j < K; j++) acc += s[j] / z * v[b, h, j, c];
                        y[b, h, i, c] = acc;
                    }
                }
        return y;
    }

    static bool Same(Tensor a, Tensor b) => a.dtype == b.dtype && a.shape.SequenceEqual(b.shape) && torch.equal(a, b).all().item<bool>();

    static double[,,,] ToArray(Tensor t)
    {
        var d = t.to(ScalarType.Float64).contiguous().data<double>().ToArray();
        var s = t.shape.Select(x => (int)x).ToArray();
        var a = new double[s[0], s[1], s[2], s[3]];
        Buffer.BlockCopy(d, 0, a, 0, d.Length * sizeof(double));
        return a;
    }

    static double MaxDiff(Tensor t, double[,,,] r)
    {
        var a = ToArray(t);
        double m = 0;
        for (int i = 0; i < a.GetLength(0); i++) for (int j = 0; j < a.GetLength(1); j++)
            for (int x = 0; x < a.GetLength(2); x++) for (int c = 0; c < a.GetLength(3); c++)
                m = Math.Max(m, Math.Abs(a[i, j, x, c] - r[i, j, x, c]));
        return m;
    }

    /// <summary>Σ over every output of y·w for a fixed random w: its gradient with respect to q, k or v in doubles by
    /// central differences of <see cref="Reference"/> at a few entries.</summary>
    static double Objective(double[,,,] y, double[,,,] w)
    {
        double s = 0;
        for (int i = 0; i < y.GetLength(0); i++) for (int j = 0; j < y.GetLength(1); j++)
            for (int x = 0; x < y.GetLength(2); x++) for (int c = 0; c < y.GetLength(3); c++) s += y[i, j, x, c] * w[i, j, x, c];
        return s;
    }

    public static TheoryData<string> Cases => new() { "causal", "padding", "cache" };

    [Theory]
    [MemberData(nameof(Cases))]
    public void Bf16MathPathMatchesDoublesInValuesAndGradients(string kind)
    {
        const int B = 3, H = 2, D = 16;
        int T = kind == "cache" ? 3 : 9, K = 9, past = K - T;
        var g = new Generator(seed: 11);
        Tensor R(int t) => (torch.randn([B, H, t, D], generator: g) * 1.5).to(ScalarType.BFloat16);
        using var scope = torch.NewDisposeScope();
        var q = R(T).requires_grad_(true);
        var k = R(K).requires_grad_(true);
        var v = R(K).requires_grad_(true);
        // padding: batch row 1 has 4 left-padding keys, and a query sees itself even when it is padding (as the models do)
        int pad(int b) => kind == "padding" && b == 1 ? 4 : 0;
        bool see(int b, int i, int j) => j == i + past || (j <= i + past && j >= pad(b));
        Tensor? mask = null;
        if (kind != "causal")
        {
            var m = new bool[B * T * K];
            for (int b = 0; b < B; b++) for (int i = 0; i < T; i++) for (int j = 0; j < K; j++) m[(b * T + i) * K + j] = see(b, i, j);
            mask = torch.tensor(m, [B, 1, T, K]);
        }
        var y = CpuAttention.MathPath(q, k, v, mask, kind == "causal");
        Assert.Equal(ScalarType.BFloat16, y.dtype);
        // the sum in the same order through the public seam: short sequences take the math path, bit for bit
        Assert.True(Same(y, CpuAttention.Sdpa(q, k, v, mask, kind == "causal")));

        var (qd, kd, vd) = (ToArray(q), ToArray(k), ToArray(v)); // the bf16 inputs, exactly
        var r = Reference(qd, kd, vd, see);
        double err = MaxDiff(y, r);
        Assert.True(err < 0.03, $"{kind}: max |math path − doubles| = {err}");
        // the check can fail: attending to every key is far from the reference
        var all = Reference(qd, kd, vd, (_, _, _) => true);
        Assert.True(MaxDiff(y, all) > 0.2, $"{kind}: the masked and unmasked references are too close for this test to see a wrong mask");

        var wt = torch.randn(y.shape, generator: g);
        var w = ToArray(wt);
        (y.to(ScalarType.Float32) * wt).sum().backward();
        foreach (var (name, t, arr) in new[] { ("q", q, qd), ("k", k, kd), ("v", v, vd) })
        {
            var grad = ToArray(t.grad!);
            foreach (var (a, b2, c, d) in new[] { (0, 0, 0, 0), (1, 1, T - 1, 5), (2, 0, T / 2, D - 1), (1, 0, 1, 3) })
            {
                int i = name == "q" ? c : Math.Min(K - 1, c + past); // a key/value row some query sees
                double h = 1e-4, keep = arr[a, b2, i, d];
                arr[a, b2, i, d] = keep + h; double up = Objective(Reference(qd, kd, vd, see), w);
                arr[a, b2, i, d] = keep - h; double down = Objective(Reference(qd, kd, vd, see), w);
                arr[a, b2, i, d] = keep;
                double num = (up - down) / (2 * h);
                double tol = 0.04 + 0.03 * Math.Abs(num);
                Assert.True(Math.Abs(grad[a, b2, i, d] - num) < tol, $"{kind}: d/d{name}[{a},{b2},{i},{d}] = {grad[a, b2, i, d]}, doubles {num}");
            }
        }
    }

    /// <summary>The math path before its scale and mask became one bias add: scores cast to float32, scaled, hidden keys
    /// filled with −∞, soft-maxed, cast back and multiplied with v.</summary>
    static Tensor ScaleThenFill(Tensor q, Tensor k, Tensor v, Tensor? mask, bool causal)
    {
        var s = torch.matmul(q, k.transpose(-2, -1)).to(ScalarType.Float32).mul_(1.0 / Math.Sqrt(q.shape[3]));
        Tensor? hide = mask is not null ? mask.logical_not() : causal ? torch.ones(q.shape[2], k.shape[2], ScalarType.Bool).triu(1) : null;
        if (hide is not null) s = s.masked_fill(hide, float.NegativeInfinity);
        return torch.matmul(s.softmax(-1).to(q.dtype), v);
    }

    public static TheoryData<string, int, int, int> BiasCases => new()
    {
        { "causal", 9, 9, 16 }, { "causal", 96, 96, 64 }, { "causal", 300, 300, 16 }, { "causal", 5, 12, 80 },
        { "none", 7, 7, 80 }, { "padding", 20, 20, 64 }, { "cache", 3, 20, 48 },
    };

    /// <summary>Folding the scale and the mask into one add of a float32 bias (0 or −∞) changes no bit of the output or of
    /// the gradients: head sizes whose scale is a power of two (16, 64) and others (48, 80), the cached causal bias (up to
    /// 256 keys) and the one built per call (300), more keys than queries, padding masks.</summary>
    [Theory]
    [MemberData(nameof(BiasCases))]
    public void MathPathEqualsScalingThenFillingBitForBit(string kind, int t, int kLen, int d)
    {
        using var scope = torch.NewDisposeScope();
        var g = new Generator(seed: 5);
        Tensor R(int n) => (torch.randn([2, 3, n, d], generator: g) * 2).to(ScalarType.BFloat16);
        var (q0, k0, v0) = (R(t), R(kLen), R(kLen));
        Tensor? mask = null;
        if (kind is "padding" or "cache")
        {
            var m = new bool[2 * t * kLen];
            int past = kLen - t;
            for (int b = 0; b < 2; b++) for (int i = 0; i < t; i++) for (int j = 0; j < kLen; j++)
                m[(b * t + i) * kLen + j] = j == i + past || (j <= i + past && j >= (b == 1 ? 4 : 0));
            mask = torch.tensor(m, [2, 1, t, kLen]);
        }
        bool causal = kind == "causal";
        var w = torch.randn([2, 3, t, d], generator: g);
        (Tensor Y, Tensor[] Grads) Run(Func<Tensor, Tensor, Tensor, Tensor?, bool, Tensor> f)
        {
            var (q, k, v) = (q0.detach().requires_grad_(true), k0.detach().requires_grad_(true), v0.detach().requires_grad_(true));
            var y = f(q, k, v, mask, causal);
            (y.to(ScalarType.Float32) * w).sum().backward();
            return (y, [q.grad!, k.grad!, v.grad!]);
        }
        var (yNew, gNew) = Run(CpuAttention.MathPath);
        var (yOld, gOld) = Run(ScaleThenFill);
        Assert.True(Same(yNew, yOld), $"{kind} {t}×{kLen}×{d}: outputs differ");
        for (int i = 0; i < 3; i++) Assert.True(Same(gNew[i], gOld[i]), $"{kind} {t}×{kLen}×{d}: gradient {"qkv"[i]} differs");
        // the comparison can fail: the mask applied one key late changes the output
        if (kind != "none")
        {
            var shifted = mask is null ? torch.ones(t, kLen, ScalarType.Bool).tril(1) : mask.roll(1, -1);
            Assert.False(Same(yNew, ScaleThenFill(q0, k0, v0, shifted, false)));
        }
    }

    [Fact]
    public void LongSequencesTakeTheFloat32KernelAndOtherDtypesTheKernelAsTheyAre()
    {
        using var scope = torch.NewDisposeScope();
        var g = new Generator(seed: 3);
        // more keys than the math path takes: the fp32 kernel, cast back
        long t = CpuAttention.MathMaxKeys + 1;
        var q = torch.randn([2, 3, t, 8], generator: g).to(ScalarType.BFloat16);
        var k = torch.randn([2, 3, t, 8], generator: g).to(ScalarType.BFloat16);
        var v = torch.randn([2, 3, t, 8], generator: g).to(ScalarType.BFloat16);
        var y = CpuAttention.Sdpa(q, k, v, null, true);
        Assert.True(Same(y, CpuAttention.Float32Kernel(q, k, v, null, true)));
        Assert.False(Same(y, CpuAttention.MathPath(q, k, v, null, true))); // the two paths do differ in bits
        // the same keys with an explicit mask: still the math path (up to MathMaxMaskedKeys), beyond it the kernel
        var causalMask = torch.ones(1, 1, t, t, ScalarType.Bool).tril();
        Assert.True(Same(CpuAttention.Sdpa(q, k, v, causalMask, false), CpuAttention.MathPath(q, k, v, causalMask, false)));
        long tm = CpuAttention.MathMaxMaskedKeys + 1;
        var qm = torch.randn([1, 2, tm, 8], generator: g).to(ScalarType.BFloat16);
        var longMask = torch.ones(1, 1, tm, tm, ScalarType.Bool).tril();
        Assert.True(Same(CpuAttention.Sdpa(qm, qm, qm, longMask, false), CpuAttention.Float32Kernel(qm, qm, qm, longMask, false)));
        Assert.False(Same(CpuAttention.Sdpa(qm, qm, qm, longMask, false), CpuAttention.MathPath(qm, qm, qm, longMask, false)));
        // one query (a decoding step with a cache): the kernel too
        var q1 = q.narrow(2, t - 1, 1);
        var kv = k.narrow(2, 0, 20);
        Assert.True(Same(CpuAttention.Sdpa(q1, kv, kv, null, false), CpuAttention.Float32Kernel(q1, kv, kv, null, false)));
        // float32 inputs: libtorch's kernel itself
        var q32 = torch.randn([2, 2, 5, 8], generator: g);
        var y32 = CpuAttention.Sdpa(q32, q32, q32, null, true);
        Assert.True(Same(y32, torch.nn.functional.scaled_dot_product_attention(q32, q32, q32, null, 0.0, true)));
    }
}

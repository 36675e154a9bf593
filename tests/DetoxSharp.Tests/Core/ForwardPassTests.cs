using DetoxSharp.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Tests.Core;

/// <summary>The model's logits against a plain-C# double-precision GPT-2 written from Hugging Face's definition.</summary>
public class ForwardPassTests
{
    sealed class W(Dictionary<string, double[]> w, Dictionary<string, long[]> s)
    {
        public double[] this[string n] => w[n];
        public long[] Shape(string n) => s[n];
    }

    static W Weights(Gpt2Model m)
    {
        var w = new Dictionary<string, double[]>();
        var s = new Dictionary<string, long[]>();
        foreach (var (n, t) in m.state_dict())
        {
            w[n] = t.to(ScalarType.Float64).contiguous().data<double>().ToArray();
            s[n] = t.shape;
        }
        return new W(w, s);
    }

    static double[] LayerNorm(double[] x, double[] g, double[] b, double eps)
    {
        int d = x.Length;
        double mean = x.Average();
        double var = x.Select(v => (v - mean) * (v - mean)).Sum() / d;
        return Enumerable.Range(0, d).Select(i => (x[i] - mean) / Math.Sqrt(var + eps) * g[i] + b[i]).ToArray();
    }

    /// <summary>Conv1D: weight stored [in, out]; y = x·W + b.</summary>
    static double[] Conv1D(double[] x, double[] w, double[] b, int nIn, int nOut)
    {
        var y = new double[nOut];
        for (int o = 0; o < nOut; o++)
        {
            double acc = b[o];
            for (int i = 0; i < nIn; i++) acc += x[i] * w[i * nOut + o];
            y[o] = acc;
        }
        return y;
    }

    static double GeluNew(double x) => 0.5 * x * (1 + Math.Tanh(Math.Sqrt(2 / Math.PI) * (x + 0.044715 * x * x * x)));

    /// <summary>Logits [T][V] for one sequence, positions 0..T-1.</summary>
    static double[][] Reference(W w, int[] ids, int d, int heads, int layers, int vocab, double eps)
    {
        int T = ids.Length, hd = d / heads, mlp = 4 * d;
        var x = new double[T][];
        for (int t = 0; t < T; t++)
            x[t] = Enumerable.Range(0, d).Select(i => w["wte.weight"][ids[t] * d + i] + w["wpe.weight"][t * d + i]).ToArray();
        for (int l = 0; l < layers; l++)
        {
            string p = $"h.{l}.";
            var qkv = x.Select(r => Conv1D(LayerNorm(r, w[p + "ln_1.weight"], w[p + "ln_1.bias"], eps), w[p + "attn.c_attn.weight"], w[p + "attn.c_attn.bias"], d, 3 * d)).ToArray();
            var z = new double[T][];
            for (int t = 0; t < T; t++)
            {
                z[t] = new double[d];
                for (int h = 0; h < heads; h++)
                {
                    // q = qkv[0:d], k = qkv[d:2d], v = qkv[2d:3d]; head h takes columns h*hd..(h+1)*hd-1 of each
                    var scores = new double[t + 1];
                    for (int s = 0; s <= t; s++)
                    {
                        double dot = 0;
                        for (int i = 0; i < hd; i++) dot += qkv[t][h * hd + i] * qkv[s][d + h * hd + i];
                        scores[s] = dot / Math.Sqrt(hd);
                    }
                    double mx = scores.Max();
                    var e = scores.Select(v => Math.Exp(v - mx)).ToArray();
                    double sum = e.Sum();
                    for (int s = 0; s <= t; s++)
                        for (int i = 0; i < hd; i++) z[t][h * hd + i] += e[s] / sum * qkv[s][2 * d + h * hd + i];
                }
            }
            for (int t = 0; t < T; t++)
            {
                var a = Conv1D(z[t], w[p + "attn.c_proj.weight"], w[p + "attn.c_proj.bias"], d, d);
                var mid = x[t].Zip(a, (u, v) => u + v).ToArray();
                var pre = Conv1D(LayerNorm(mid, w[p + "ln_2.weight"], w[p + "ln_2.bias"], eps), w[p + "mlp.c_fc.weight"], w[p + "mlp.c_fc.bias"], d, mlp);
                var post = pre.Select(GeluNew).ToArray();
                var m = Conv1D(post, w[p + "mlp.c_proj.weight"], w[p + "mlp.c_proj.bias"], mlp, d);
                x[t] = mid.Zip(m, (u, v) => u + v).ToArray();
            }
        }
        var logits = new double[T][];
        for (int t = 0; t < T; t++)
        {
            var f = LayerNorm(x[t], w["ln_f.weight"], w["ln_f.bias"], eps);
            logits[t] = Enumerable.Range(0, vocab).Select(v => Enumerable.Range(0, d).Sum(i => f[i] * w["wte.weight"][v * d + i])).ToArray();
        }
        return logits;
    }

    [Fact]
    public void LogitsMatchIndependentDoubleComputation()
    {
        using var m = CoreTestUtil.Tiny();
        var w = Weights(m);
        int[] ids = [3, 7, 1, 0, 10, 5, 5, 2, 9];
        var expected = Reference(w, ids, 8, 2, 2, 11, m.Config.LayerNormEpsilon);
        using var _ = torch.no_grad();
        using var input = torch.tensor(ids.Select(i => (long)i).ToArray(), [1, ids.Length], ScalarType.Int64);
        using var logits = m.Forward(input);
        Assert.Equal(new long[] { 1, ids.Length, 11 }, logits.shape);
        var got = logits.to(ScalarType.Float64).data<double>().ToArray();
        double maxDiff = 0, maxMag = 0;
        for (int t = 0; t < ids.Length; t++)
            for (int v = 0; v < 11; v++)
            {
                maxDiff = Math.Max(maxDiff, Math.Abs(got[t * 11 + v] - expected[t][v]));
                maxMag = Math.Max(maxMag, Math.Abs(expected[t][v]));
            }
        Assert.True(maxMag > 0.5, $"logits too small to be a meaningful check ({maxMag})");
        Assert.True(maxDiff < 1e-5, $"max |logit - reference| = {maxDiff}");
    }

    [Fact]
    public void Float64ModelMatchesReferenceTightly()
    {
        // The same model in float64 must agree to ~1e-12: any formula difference (not rounding) shows up here.
        using var m = CoreTestUtil.Tiny(seed: 7);
        var w = Weights(m);
        m.to(ScalarType.Float64);
        int[] ids = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0, 1, 2, 3, 4, 5];
        var expected = Reference(w, ids, 8, 2, 2, 11, m.Config.LayerNormEpsilon);
        using var _ = torch.no_grad();
        using var input = torch.tensor(ids.Select(i => (long)i).ToArray(), [1, ids.Length], ScalarType.Int64);
        using var logits = m.Forward(input);
        var got = logits.data<double>().ToArray();
        for (int t = 0; t < ids.Length; t++)
            for (int v = 0; v < 11; v++)
                Assert.True(Math.Abs(got[t * 11 + v] - expected[t][v]) < 1e-10, $"t={t} v={v}: {got[t * 11 + v]} vs {expected[t][v]}");
    }

    [Fact]
    public void Bf16ForwardIsCloseToFp32()
    {
        using var m = CoreTestUtil.Tiny(vocab: 50, d: 32, heads: 4, positions: 32, std: 0.1);
        using var _ = torch.no_grad();
        using var ids = torch.randint(0, 50, [2, 12], ScalarType.Int64);
        using var ref32 = m.Forward(ids);
        m.to(ScalarType.BFloat16);
        Assert.Equal(ScalarType.BFloat16, m.DType);
        using var lo = m.Forward(ids);
        Assert.Equal(ScalarType.BFloat16, lo.dtype);
        double diff = CoreTestUtil.MaxAbsDiff(lo, ref32), scale = ref32.abs().max().item<float>();
        Assert.True(diff < 0.05 * scale + 0.02, $"bf16 vs fp32 max diff {diff} (scale {scale})");
        using var p32 = ref32.softmax(-1);
        using var p16 = lo.to(ScalarType.Float32).softmax(-1);
        Assert.True(CoreTestUtil.MaxAbsDiff(p32, p16) < 0.02);
    }
}

/// <summary>One-row products (batch-1 decoding) take a split path with ≥ 2 threads: Conv1D as a 2-batch bmm over halves
/// of the input width, the tied head over halves of the vocabulary (an odd last row separately). Same sums, regrouped.</summary>
public class SingleRowProductTests
{
    [Fact]
    public void SplitPathsEqualTheOneThreadPathsInValueAndGradient()
    {
        int before = torch.get_num_threads();
        try
        {
            // MLP matrices of 256×1024 and a 1025×256 head reach the split threshold; the odd vocabulary makes the
            // head's last row a separate product
            using var m = CoreTestUtil.Tiny(vocab: 1025, d: 256, layers: 1, heads: 4, seed: 7, std: 0.05);
            m.to(ScalarType.Float64);
            torch.set_num_threads(2);
            Assert.True(Conv1D.SplitRowProduct(m.MlpKeys(0)) && Conv1D.SplitRowProduct(m.MlpValues(0)));
            Assert.True(m.Unembedding.numel() >= Conv1D.SplitMinElements);
            torch.set_num_threads(1);
            Assert.False(Conv1D.SplitRowProduct(m.MlpKeys(0)));
            m.eval();
            var ids = CoreTestUtil.Ids([3]);
            Tensor Run(int threads, out Tensor grad)
            {
                torch.set_num_threads(threads);
                m.zero_grad();
                var logits = m.Forward(ids);
                logits.pow(2).sum().backward();
                grad = m.named_parameters().First(p => p.name == "h.0.mlp.c_fc.weight").parameter.grad!.clone();
                return logits.detach().clone();
            }
            var split = Run(2, out var gSplit);
            var plain = Run(1, out var gPlain);
            Assert.Equal(new long[] { 1, 1, 1025 }, split.shape);
            Assert.True(CoreTestUtil.MaxAbsDiff(split, plain) < 1e-12, $"logits differ by {CoreTestUtil.MaxAbsDiff(split, plain)}");
            Assert.True(CoreTestUtil.MaxAbsDiff(gSplit, gPlain) < 1e-12, $"gradients differ by {CoreTestUtil.MaxAbsDiff(gSplit, gPlain)}");
            // and against the unsplit products written out: x·W + b for a Conv1D, h·Eᵀ for the head
            torch.set_num_threads(2);
            var x = torch.randn(1, 256, ScalarType.Float64);
            var w = m.MlpKeys(0).detach(); var b = m.MlpKeyBias(0).detach();
            Assert.True(CoreTestUtil.MaxAbsDiff(Conv1D.SplitKRowProduct(x, w, b), x.matmul(w) + b) < 1e-12);
        }
        finally { torch.set_num_threads(before); }
    }
}

using DetoxSharp.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Tests.Core;

/// <summary>Tiny models and temporary directories for the core tests.</summary>
static class CoreTestUtil
{
    /// <summary>A tiny GPT-2 with random weights everywhere (including biases and LayerNorm affine parameters),
    /// so that no term of the forward pass is trivially zero or one.</summary>
    public static Gpt2Model Tiny(int vocab = 11, int d = 8, int layers = 2, int heads = 2, int positions = 16, long seed = 1, double std = 0.3)
    {
        torch.manual_seed(seed);
        var m = new Gpt2Model(new Gpt2Config { VocabSize = vocab, NEmbd = d, NLayer = layers, NHead = heads, NPositions = positions, EosTokenId = vocab - 1, BosTokenId = vocab - 1 });
        using var _ = torch.no_grad();
        foreach (var (name, p) in m.named_parameters())
        {
            if (name.Contains("ln") && name.EndsWith("weight")) p.copy_(torch.rand_like(p) + 0.5);
            else p.normal_(0, std);
        }
        return m;
    }

    public static string TempDir(string tag)
    {
        var d = Path.Combine(Path.GetTempPath(), $"detox-core-{tag}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(d);
        return d;
    }

    public static Tensor Ids(params long[][] rows)
    {
        int t = rows[0].Length;
        return torch.tensor(rows.SelectMany(r => r).ToArray(), [rows.Length, t], ScalarType.Int64);
    }

    public static double MaxAbsDiff(Tensor a, Tensor b) =>
        (a.to(ScalarType.Float64) - b.to(ScalarType.Float64)).abs().max().item<double>();

    /// <summary>A tiny bfloat16 GPT-2 (vocabulary 50, width 32, 4 heads) and ids [3, 16] from a fixed generator: the loss
    /// <paramref name="loss"/> makes of them after its backward pass, and every parameter's gradient.</summary>
    public static (double Loss, Dictionary<string, double[]> Grads) Bf16LossAndGradients(Func<Gpt2Model, Tensor, Tensor> loss)
    {
        using var scope = torch.NewDisposeScope();
        using var m = Tiny(vocab: 50, d: 32, heads: 4, positions: 32, std: 0.2);
        m.to(ScalarType.BFloat16);
        var ids = torch.randint(0, 50, [3, 16], ScalarType.Int64, generator: new Generator(5));
        var l = loss(m, ids);
        l.backward();
        return (l.item<float>(), Gradients(m));
    }

    /// <summary>A tensor's values as doubles, in row-major order.</summary>
    public static double[] Doubles(Tensor t) => t.to(ScalarType.Float64).contiguous().data<double>().ToArray();

    /// <summary>One bfloat16 unit in the last place at the magnitude of <paramref name="v"/> (8 significant bits), at
    /// least the smallest normal's.</summary>
    public static double Bf16Ulp(double v) => Math.Pow(2, Math.Max(Math.Floor(Math.Log2(Math.Max(Math.Abs(v), 1e-38))), -126) - 7);

    /// <summary>Every parameter's gradient, as doubles.</summary>
    public static Dictionary<string, double[]> Gradients(nn.Module m) =>
        m.named_parameters().ToDictionary(p => p.name, p => Doubles(p.parameter.grad!));

    /// <summary>Asserts that two runs' gradients agree parameter by parameter (cosine above <paramref name="minCosine"/>,
    /// norms within <paramref name="relNorm"/>) and that they are not all zero.</summary>
    public static void AssertGradientsAgree(Dictionary<string, double[]> ours, Dictionary<string, double[]> reference, double minCosine, double relNorm)
    {
        Assert.True(ours.Values.Sum(g => g.Sum(Math.Abs)) > 0);
        foreach (var (name, gl) in reference)
        {
            double[] gk = ours[name];
            double dot = gk.Zip(gl).Sum(z => z.First * z.Second), nk = Math.Sqrt(gk.Sum(v => v * v)), nl = Math.Sqrt(gl.Sum(v => v * v));
            Assert.True(dot / (nk * nl + 1e-30) > minCosine, $"{name}: cosine {dot / (nk * nl + 1e-30)} between the two gradients");
            Assert.True(Math.Abs(nk - nl) <= relNorm * nl + 1e-6, $"{name}: gradient norm {nk} vs {nl}");
        }
    }
}

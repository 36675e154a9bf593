using DetoxSharp.Interpretability;
using DetoxSharp.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Tests.Interpretability;

/// <summary>
/// Lee et al.'s analysis on a gated (SwiGLU) MLP, checked against hand computations on a tiny Llama: value vectors are
/// the columns of down_proj, the neuron activation is silu(gate·x)·(up·x), key scaling scales up_proj rows.
/// </summary>
public class GluAnalysisTests
{
    internal static LlamaModel Tiny(long seed = 7)
    {
        torch.manual_seed(seed);
        var m = new LlamaModel(new LlamaConfig
        {
            VocabSize = 23, HiddenSize = 8, IntermediateSize = 12, NumHiddenLayers = 2, NumAttentionHeads = 2,
            NumKeyValueHeads = 1, MaxPositionEmbeddings = 16, EosTokenIds = [22],
        });
        using var _ = torch.no_grad();
        foreach (var (n, p) in m.named_parameters())
            if (n.EndsWith("norm.weight")) p.copy_(torch.rand_like(p) + 0.5); else p.normal_(0, 0.4);
        return m;
    }

    static double[] Row(Tensor t) => t.detach().to(ScalarType.Float64).contiguous().data<double>().ToArray();

    [Fact]
    public void ValueVectorsAreDownProjColumnsAndRankingIsTheirCosine()
    {
        using var m = Tiny();
        var sd = m.state_dict();
        var down = sd["model.layers.1.mlp.down_proj.weight"]; // [d, mlp]
        Assert.Equal([12, 8], m.MlpValues(1).shape);
        for (int i = 0; i < 12; i++) Assert.Equal(Row(down.select(1, i)), Row(m.MlpValues(1)[i]));

        // ranking by hand: cosine of every column of every down_proj with a direction, the best overall first
        torch.manual_seed(3);
        var dir = torch.randn(8);
        var d = Row(dir);
        var byHand = new List<(int L, int N, double Cos)>();
        for (int l = 0; l < 2; l++)
        {
            var w = sd[$"model.layers.{l}.mlp.down_proj.weight"];
            for (int i = 0; i < 12; i++)
            {
                var v = Row(w.select(1, i));
                double dot = v.Zip(d, (a, b) => a * b).Sum(), nv = Math.Sqrt(v.Sum(x => x * x)), nd = Math.Sqrt(d.Sum(x => x * x));
                byHand.Add((l, i, dot / (nv * nd)));
            }
        }
        var expected = byHand.OrderByDescending(x => x.Cos).Take(5).ToList();
        var got = ToxicVectors.Rank(m, dir, perLayer: 12).Take(5).ToList();
        for (int j = 0; j < 5; j++)
        {
            Assert.Equal((expected[j].L, expected[j].N), (got[j].Layer, got[j].Neuron));
            Assert.Equal(expected[j].Cos, got[j].Cosine, 1e-5);
        }
    }

    [Fact]
    public void VocabularyProjectionUsesTheUntiedLmHead()
    {
        using var m = Tiny();
        var v = m.MlpValues(0)[4].detach().clone();
        var head = m.state_dict()["lm_head.weight"]; // [V, d], not the input embedding
        var scores = Enumerable.Range(0, 23).Select(t => (t, Row(head[t]).Zip(Row(v), (a, b) => a * b).Sum())).OrderByDescending(x => x.Item2).Take(3).ToList();
        var got = ToxicVectors.TopTokens(m.Unembedding, v, null, 3);
        Assert.Equal(scores.Select(s => s.t), got.Select(g => g.Id));
        for (int j = 0; j < 3; j++) Assert.Equal(scores[j].Item2, got[j].Score, 1e-5);
    }

    [Fact]
    public void SvdOfGluValueVectorsMatchesTheGramMatrix()
    {
        using var m = Tiny();
        var ranked = ToxicVectors.Rank(m, torch.ones(8), perLayer: 3).Take(4).ToList();
        using var stack = ToxicVectors.Stack(m, ranked);
        // rows of the stack are down_proj columns
        for (int j = 0; j < 4; j++)
            Assert.Equal(Row(m.state_dict()[$"model.layers.{ranked[j].Layer}.mlp.down_proj.weight"].select(1, ranked[j].Neuron)), Row(stack[j]), new ToleranceComparer(1e-6));
        var (u, s) = ToxicVectors.Svd(stack);
        // by hand: the squared singular values are the eigenvalues of AᵀA for A = [unit columns] (N×N Gram matrix of cosines)
        var unit = Enumerable.Range(0, 4).Select(j => { var r = Row(stack[j]); var n = Math.Sqrt(r.Sum(x => x * x)); return r.Select(x => x / n).ToArray(); }).ToArray();
        double trace = Enumerable.Range(0, 4).Sum(j => unit[j].Sum(x => x * x)); // = 4 = Σσ²
        Assert.Equal(trace, Row(s).Sum(x => x * x), 1e-4);
        // U[:,0] is a unit vector and σ₀² = ‖Aᵀu₀‖²
        var u0 = Row(u.select(1, 0));
        Assert.Equal(1.0, u0.Sum(x => x * x), 1e-5);
        double proj = unit.Sum(c => Math.Pow(c.Zip(u0, (a, b) => a * b).Sum(), 2));
        Assert.Equal(Math.Pow(Row(s)[0], 2), proj, 1e-4);
    }

    [Fact]
    public void HookPostIsSiluGateTimesUpAndKeyScalingScalesItLinearly()
    {
        using var m = Tiny();
        var ids = torch.tensor(new long[] { 3, 9, 14, 1, 20 }, [1, 5]);
        Tensor? mid = null, post = null, gate = null, up = null;
        HookFn Keep(Action<Tensor> set) => (x, _) => { set(x.detach().clone().DetachFromDisposeScope()); return null; };
        using (m.Hooks.Add("blocks.1.hook_resid_mid", Keep(x => mid = x)))
        using (m.Hooks.Add("blocks.1.mlp.hook_post", Keep(x => post = x)))
        using (m.Hooks.Add("blocks.1.mlp.hook_pre", Keep(x => gate = x)))
        using (m.Hooks.Add(HookNames.MlpPreLinear(1), Keep(x => up = x)))
        using (torch.no_grad()) m.Forward(ids);

        // by hand from the residual: RMSNorm (ε = 1e-6), then silu(W_gate h) · (W_up h)
        var sd = m.state_dict();
        var wn = Row(sd["model.layers.1.post_attention_layernorm.weight"]);
        var wg = sd["model.layers.1.mlp.gate_proj.weight"]; var wu = sd["model.layers.1.mlp.up_proj.weight"];
        for (int t = 0; t < 5; t++)
        {
            var x = Row(mid![0, t]);
            double r = 1 / Math.Sqrt(x.Sum(v => v * v) / x.Length + 1e-6);
            var h = x.Select((v, i) => v * r * wn[i]).ToArray();
            for (int n = 0; n < 12; n++)
            {
                double g = Row(wg[n]).Zip(h, (a, b) => a * b).Sum(), u = Row(wu[n]).Zip(h, (a, b) => a * b).Sum();
                Assert.Equal(g, Row(gate![0, t])[n], 1e-4);
                Assert.Equal(u, Row(up![0, t])[n], 1e-4);
                Assert.Equal(g / (1 + Math.Exp(-g)) * u, Row(post![0, t])[n], 1e-4);
            }
        }

        // key scaling: column 5 of MlpKeys(1) = row 5 of up_proj; the gate is untouched and neuron 5's activation scales by 3
        var gateBefore = Row(wg);
        Unalign.ScaleKeys(m, [(1, 5)], 3.0);
        Assert.Equal(gateBefore, Row(m.state_dict()["model.layers.1.mlp.gate_proj.weight"]));
        Tensor? post2 = null, mid2 = null;
        using (m.Hooks.Add("blocks.1.mlp.hook_post", Keep(x => post2 = x)))
        using (m.Hooks.Add("blocks.1.hook_resid_mid", Keep(x => mid2 = x)))
        using (torch.no_grad()) m.Forward(ids);
        Assert.True((mid2! - mid!).abs().max().item<float>() == 0); // layer 1's MLP input is unchanged
        for (int n = 0; n < 12; n++)
        {
            var before = post!.select(2, n); var after = post2!.select(2, n);
            var expect = n == 5 ? before * 3 : before;
            Assert.True((after - expect).abs().max().item<float>() < 1e-5, $"neuron {n}");
        }
    }

    [Fact]
    public void ActivationDropIsMeasuredOnSiluGateTimesUp()
    {
        // Zeroing up_proj row 2 of layer 0 (a "fully dropped" neuron) drives hook_post of that neuron to exactly 0,
        // which the activation cache reports; the other neurons keep their activations.
        using var m = Tiny();
        var ids = torch.tensor(new long[] { 3, 9, 14 }, [1, 3]);
        Tensor? a = null, b = null;
        using (m.Hooks.Add("blocks.0.mlp.hook_post", (x, _) => { a = x.detach().clone().DetachFromDisposeScope(); return null; }))
        using (torch.no_grad()) m.Forward(ids);
        Unalign.ScaleKeys(m, [(0, 2)], 0.0);
        using (m.Hooks.Add("blocks.0.mlp.hook_post", (x, _) => { b = x.detach().clone().DetachFromDisposeScope(); return null; }))
        using (torch.no_grad()) m.Forward(ids);
        Assert.True(a!.select(2, 2).abs().max().item<float>() > 1e-3);
        Assert.Equal(0f, b!.select(2, 2).abs().max().item<float>());
        Assert.True((a.narrow(2, 0, 2) - b.narrow(2, 0, 2)).abs().max().item<float>() < 1e-6);
    }

    sealed class ToleranceComparer(double tol) : IEqualityComparer<double>
    {
        public bool Equals(double x, double y) => Math.Abs(x - y) <= tol;
        public int GetHashCode(double obj) => 0;
    }
}

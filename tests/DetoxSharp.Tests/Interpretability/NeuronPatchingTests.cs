using DetoxSharp.Checkpoints;
using DetoxSharp.Cli;
using DetoxSharp.Evaluation;
using DetoxSharp.Generation;
using DetoxSharp.Interpretability;
using DetoxSharp.Models;
using DetoxSharp.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Tests.Interpretability;

public class NeuronPatchingTests
{
    static readonly string[] Prompts = ["You are such a", "The weather today is", "I think that the town"];

    static Gpt2Model Tiny(int seed, int layers = 3, ScalarType dtype = ScalarType.Float32)
    {
        torch.manual_seed(seed);
        var m = new Gpt2Model(new Gpt2Config { NEmbd = 32, NLayer = layers, NHead = 2, NPositions = 64 }, dtype: dtype);
        m.eval();
        return m;
    }

    static Tensor W(int seed) { torch.manual_seed(seed); return torch.randn(32); }

    /// <summary>Groups of the before model (they depend on it alone: its greedy tokens, its activations, its value vectors).</summary>
    static NeuronContributions.Result Groups(ICausalLM before, Tensor w)
    {
        using var same = before.Clone();
        return NeuronContributions.Compute(new(before, same, Gpt2Tokenizer.Default()), w, Prompts, new NeuronOptions { MaxNewTokens = 4, BatchSize = 2 });
    }

    /// <summary>Lowers the key bias of up to <paramref name="count"/> TP neurons of each given layer by <paramref name="by"/>.</summary>
    static void EditTp(ICausalLM after, NeuronContributions.Result g, int[] layers, double by, int count = 3)
    {
        using var _ = torch.no_grad();
        foreach (var l in layers)
            foreach (var n in g.Neurons.Where(n => n.Layer == l && n.Group == "TP").Take(count))
                after.MlpKeyBias(l)[n.Neuron].sub_(by);
    }

    static PatchingOptions Opts(bool perLayer = true) => new() { MaxNewTokens = 4, BatchSize = 2, PerLayer = perLayer, GenerationTokens = 5 };

    [Fact]
    public void PatchingTheEditedGroup_RecoversTheHandEditExactly()
    {
        using var before = Tiny(31);
        using var after = (Gpt2Model)before.Clone();
        using var w = W(5);
        var g = Groups(before, w);
        EditTp(after, g, [0, 2], 1.5);
        var tok = Gpt2Tokenizer.Default();
        using var scorer = new ToyLexiconScorer();
        var r = NeuronPatching.Run(new(before, after, tok), w, Prompts, g, Opts() with { Score = t => scorer.Score(t).Select(s => s.Value).ToList() });
        Assert.True(Math.Abs(r.MetricAfter - r.MetricBefore) > 1e-3, "the edit must move M for the test to mean anything");
        // the edited neurons are TP neurons: the TP patch turns one model into the other, in both directions
        var tp = r.Rows.Single(x => x.Direction == NeuronPatching.AfterIntoBefore && x.Group == "TP" && x.Layer is null);
        Assert.Equal(r.MetricAfter - r.MetricBefore, tp.Real, 5);
        Assert.Equal(1.0, tp.Share, 4);
        var back = r.Rows.Single(x => x.Direction == NeuronPatching.BeforeIntoAfter && x.Group == "TP" && x.Layer is null);
        Assert.Equal(r.MetricBefore - r.MetricAfter, back.Real, 5);
        // layer 1 was not edited and its inputs do not differ before layer 0's edit reaches it, but its TP neurons alone
        // cannot carry layer 0's edit: patching layer 1 only is not the whole effect
        Assert.True(Math.Abs(r.Rows.Single(x => x.Direction == NeuronPatching.AfterIntoBefore && x.Group == "TP" && x.Layer == 1).Share - 1) > 1e-3);

        // the patched models generate exactly what the model they were patched towards generates (KV cache on)
        var ids = Prompts.Select(tok.Encode).ToList();
        var go = new GenerationOptions { MaxNewTokens = 6, Greedy = true, BatchSize = 2 };
        var set = PatchSet.Of(g, "TP");
        using (var towardsAfter = new NeuronPatching.PatchedModel(after, before, set))
            Assert.Equal(DetoxSharp.Generation.Generator.Generate(after, ids, go), DetoxSharp.Generation.Generator.Generate(towardsAfter, ids, go));
        using (var towardsBefore = new NeuronPatching.PatchedModel(before, after, set))
            Assert.Equal(DetoxSharp.Generation.Generator.Generate(before, ids, go), DetoxSharp.Generation.Generator.Generate(towardsBefore, ids, go));
        using (var tpLogits = new NeuronPatching.PatchedModel(after, before, set))
        using (var x = torch.tensor(ids[0].Select(i => (long)i).ToArray(), [1, ids[0].Length]))
        using (torch.no_grad())
            Assert.True(tpLogits.Forward(x).allclose(after.Forward(x), 1e-4, 1e-4));
        // hooks are removed with the patched model: the before model is itself again
        using (var x = torch.tensor(ids[0].Select(i => (long)i).ToArray(), [1, ids[0].Length]))
        using (torch.no_grad())
            Assert.False(before.Forward(x).allclose(after.Forward(x), 1e-4, 1e-4));
        Assert.Equal(10, r.Generations.Count);
        var plainAfter = r.Generations.Single(x => x.Condition == "after");
        Assert.Equal(plainAfter.MeanToxicity, r.Generations.Single(x => x.Condition == $"{NeuronPatching.AfterIntoBefore} TP").MeanToxicity, 12);
    }

    [Fact]
    public void AttributionPatching_IsExactWhereMIsLinear_AndMatchesFiniteDifferencesElsewhere()
    {
        // last layer only: its activations write straight into the measured residual, so M is linear in them and the
        // attribution estimate equals real patching for every group; the untouched groups and layers patch to zero
        using var before = Tiny(32);
        using var after = (Gpt2Model)before.Clone();
        using var w = W(6);
        var g = Groups(before, w);
        EditTp(after, g, [2], 2.0, count: 6);
        var tok = Gpt2Tokenizer.Default();
        var r = NeuronPatching.Run(new(before, after, tok), w, Prompts, g, Opts());
        foreach (var row in r.Rows)
        {
            if (row.Layer is 0 or 1 || row.Group != "TP") Assert.Equal(0, row.Real, 6);
            Assert.Equal(row.Real, row.Attribution, 4);
        }
        Assert.True(Math.Abs(r.Rows.Single(x => x.Group == "TP" && x.Layer is null && x.Direction == NeuronPatching.AfterIntoBefore).Real) > 1e-3);
        Assert.True(r.Correlation > 0.9999);

        // layer 0 in double precision, a tiny edit ε: real patching − attribution = O(ε²), so their ratio → 1 (a finite
        // difference of M against the gradient), while a large edit's attribution is only an estimate
        using var b64 = Tiny(33, dtype: ScalarType.Float64);
        using var w64 = W(7);
        var g64 = Groups(b64, w64);
        double Ratio(double eps)
        {
            using var a64 = (Gpt2Model)b64.Clone();
            EditTp(a64, g64, [0], eps, count: 8);
            var rr = NeuronPatching.Run(new(b64, a64, tok), w64, Prompts, g64, Opts());
            // layer 0's own row: the gradient carries every downstream path, the patch lets them all happen; the group's
            // all-layer row would add the downstream TP neurons' own Δm on top (paths counted twice — a first-order sum)
            var row = rr.Rows.Single(x => x.Group == "TP" && x.Layer == 0 && x.Direction == NeuronPatching.AfterIntoBefore);
            Assert.True(Math.Abs(row.Real) > 1e-12);
            return row.Attribution / row.Real;
        }
        Assert.Equal(1.0, Ratio(1e-5), 4);
        Assert.True(Math.Abs(Ratio(3.0) - 1) > 1e-3);
    }

    [Fact]
    public void NullSpace_MeasuresTheValueMatrixChangeOnEachInputsActivations()
    {
        using var before = Tiny(34);
        using var after = (Gpt2Model)before.Clone();
        torch.manual_seed(8);
        using var u = torch.randn(before.MlpDim);
        using var v = torch.randn(32);
        using (torch.no_grad()) after.MlpValues(1).add_(u.outer(v));   // ΔV = u vᵀ on layer 1 only: ‖ΔVᵀa‖ = |u·a|·‖v‖
        var tok = Gpt2Tokenizer.Default();
        string[] toxic = ["you stupid idiot", "shut up you fool and go"], clean = ["the river flows", "a quiet market sells bread today", "hello"];
        var r = NullSpaceCheck.Run(new(before, after, tok), toxic, clean, maxPromptTokens: 32, batchSize: 2);
        Assert.Equal(3, r.Count);
        foreach (var l in new[] { 0, 2 }) { Assert.Equal(0, r[l].ToxicNorm); Assert.Equal(0, r[l].CleanNorm); }
        (double Norm, double Rel) Expected(string[] texts)
        {
            double norm = 0, rel = 0; int n = 0;
            var name = HookNames.MlpPost(1);
            var vb = before.MlpValues(1).detach().to(ScalarType.Float64);
            foreach (var t in texts)
            {
                var ids = tok.Encode(t).Select(i => (long)i).ToArray();
                using var x = torch.tensor(ids, [1, ids.Length]);
                using var c = ActivationCache.Run(before, x, null, [name]);
                var a = c[name][0].to(ScalarType.Float64);
                for (int p = 0; p < ids.Length; p++)
                {
                    double change = Math.Abs(a[p].dot(u.to(ScalarType.Float64)).item<double>()) * v.to(ScalarType.Float64).norm().item<double>();
                    norm += change; rel += change / a[p].matmul(vb).norm().item<double>(); n++;
                }
            }
            return (norm / n, rel / n);
        }
        var (tn, tr) = Expected(toxic);
        var (cn, cr) = Expected(clean);
        Assert.Equal(tn, r[1].ToxicNorm, 6 - (int)Math.Ceiling(Math.Log10(tn)));
        Assert.Equal(cn, r[1].CleanNorm, 6 - (int)Math.Ceiling(Math.Log10(cn)));
        Assert.Equal(tr, r[1].ToxicRelative, 6 - (int)Math.Ceiling(Math.Log10(Math.Max(1, tr)))); // 6 significant digits, as above
        Assert.Equal(cr, r[1].CleanRelative, 6 - (int)Math.Ceiling(Math.Log10(Math.Max(1, cr))));
        Assert.Equal(tn / (tn + cn), r[1].ToxicShare, 6);
    }

    [Fact]
    public void NeuronCommands_RefuseBadInputWithOneLineNamingTheFlag()
    {
        using var m = Tiny(35, layers: 1);
        var dir = Path.Combine(Path.GetTempPath(), "detox-neuron-cli-" + Guid.NewGuid().ToString("N")[..8]);
        HfCheckpoint.Save(m, Gpt2Tokenizer.Default(), Path.Combine(dir, "m"));
        File.WriteAllText(Path.Combine(dir, "p.jsonl"), "{\"prompt\": \"hello there\"}\n");
        var err = new StringWriter();
        Assert.Equal(2, DetoxCli.Run(["null-space", "--before", Path.Combine(dir, "m"), "--after", Path.Combine(dir, "m"), "--toxic-prompts", Path.Combine(dir, "nope.jsonl"),
            "--clean-prompts", Path.Combine(dir, "p.jsonl"), "--out", Path.Combine(dir, "o")], new StringWriter(), err));
        Assert.StartsWith("detox: --toxic-prompts:", err.ToString().Trim());
        Assert.Single(err.ToString().Trim().Split('\n'));
        err = new StringWriter();
        Assert.Equal(2, DetoxCli.Run(["neuron-patch", "--before", Path.Combine(dir, "m"), "--after", Path.Combine(dir, "m"), "--probe", Path.Combine(dir, "none"),
            "--prompts", Path.Combine(dir, "p.jsonl"), "--out", Path.Combine(dir, "o"), "--generation-prompts", "0"], new StringWriter(), err));
        Assert.StartsWith("detox: --generation-prompts", err.ToString().Trim());
        var outW = new StringWriter();
        Assert.Equal(0, DetoxCli.Run(["null-space", "--before", Path.Combine(dir, "m"), "--after", Path.Combine(dir, "m"), "--toxic-prompts", Path.Combine(dir, "p.jsonl"),
            "--clean-prompts", Path.Combine(dir, "p.jsonl"), "--out", Path.Combine(dir, "o"), "--threads", "1"], outW, new StringWriter()));
        Assert.Equal(2, File.ReadAllLines(Path.Combine(dir, "o", "null_space.csv")).Length);
    }
}

using DetoxSharp.Data;
using DetoxSharp.Interpretability;
using DetoxSharp.Models;
using DetoxSharp.Tests.Core;
using DetoxSharp.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Tests.Study;

/// <summary>
/// The computations the study's stages delegate to the library (issue 13: stages are thin), each checked against an
/// independent computation: the probe-vs-bag-of-words evaluation across split seeds, the relative scale of the
/// subtraction edits, the steering sweep, finding (b)'s toxic-token count.
/// </summary>
public class StageLibraryTests
{
    /// <summary>Separable features: toxic comments have feature 0 ≈ +2, the others ≈ −2 (plus noise elsewhere).</summary>
    static (Tensor X, List<LabelledComment> Comments) Separable(int n = 80)
    {
        var g = new torch.Generator(5);
        var x = torch.randn([n, 6], generator: g) * 0.3;
        var comments = new List<LabelledComment>();
        for (int i = 0; i < n; i++)
        {
            bool toxic = i % 3 == 0;
            x[i, 0] = toxic ? 2.0f : -2.0f;
            comments.Add(new LabelledComment(toxic ? $"you idiot number {i}" : $"thanks friend number {i}", toxic));
        }
        return (x, comments);
    }

    [Fact]
    public void ProbeEvaluation_fits_one_probe_and_baseline_per_split_and_keeps_the_mass_mean_direction_of_the_first()
    {
        var (x, comments) = Separable();
        var opts = new ProbeOptions { Seed = 4, MaxSteps = 300, LearningRate = 0.05, Direction = ProbeDirection.MassMean };
        using var ev = ProbeEvaluation.AcrossSplits(x, comments, opts, splits: 3);

        Assert.Equal([4, 5, 6], ev.Splits.Select(s => s.Seed));
        Assert.All(ev.Splits, s => Assert.Equal(1.0, s.ProbeAccuracy));     // separable along feature 0
        Assert.All(ev.Splits, s => Assert.Equal(1.0, s.BagOfWordsAccuracy)); // "idiot" vs "thanks"
        Assert.Equal(comments.Count, ev.Report.Train + ev.Report.Validation);

        // the mass-mean direction is the class-mean difference over the first seed's training rows, by hand in double
        var (_, train) = ToxicityProbe.Split(comments.Count, opts.ValidationFraction, 4);
        var rows = x.to(ScalarType.Float64).data<double>().ToArray();
        var diff = new double[6];
        int nt = train.Count(i => comments[i].Toxic), nn = train.Length - nt;
        foreach (var i in train)
            for (int j = 0; j < 6; j++) diff[j] += rows[i * 6 + j] / (comments[i].Toxic ? nt : -nn);
        var mass = ev.MassMeanDirection.to(ScalarType.Float64).data<double>().ToArray();
        double scale = mass[0] / diff[0];
        Assert.True(scale > 0);
        for (int j = 0; j < 6; j++) Assert.Equal(diff[j] * scale, mass[j], 5);
        using var w = ev.Probe.WToxic;
        Assert.Equal(ProbeDirection.MassMean, ev.Probe.DirectionKind);
        Assert.True(torch.allclose(w, ev.MassMeanDirection, 1e-6, 1e-6));
        double cos = Cos(ev.WeightsDirection.to(ScalarType.Float64).data<double>().ToArray(), mass);
        Assert.Equal(cos, ev.CosineWeightsMassMean, 5);
    }

    [Fact]
    public void ProbeEvaluation_rejects_zero_splits_and_mismatched_features()
    {
        var (x, comments) = Separable(20);
        Assert.Throws<InvalidSettingException>(() => ProbeEvaluation.AcrossSplits(x, comments, new ProbeOptions(), 0));
        Assert.Throws<ArgumentException>(() => ProbeEvaluation.AcrossSplits(x.narrow(0, 0, 10), comments, new ProbeOptions(), 1));
    }

    [Fact]
    public void RelativeScale_measures_the_hook_norm_an_output_bias_alone_produces()
    {
        // last MLP's output projection = 0 with bias b: hook_mlp_out is b at every position, so the mean norm is ‖b‖
        using var m = CoreTestUtil.Tiny(vocab: 50257, d: 8, layers: 2, positions: 64);
        var bias = new float[] { 3, -4, 0, 0, 1, 0, 0, 0 };
        using (torch.no_grad())
        {
            var ps = m.named_parameters().ToDictionary(p => p.name, p => p.parameter);
            ps["h.1.mlp.c_proj.weight"].zero_();
            using var b = torch.tensor(bias);
            ps["h.1.mlp.c_proj.bias"].copy_(b);
        }
        var tok = Gpt2Tokenizer.Default();
        double norm = RelativeScale.MeanHookNorm(m, tok, ["Hello there", "", "The river flows through the town"], HookNames.MlpOut(1));
        Assert.Equal(Math.Sqrt(26), norm, 4);
        Assert.Equal(1.0, RelativeScale.MeanHookNorm(m, tok, [""], HookNames.MlpOut(1))); // nothing measured
        Assert.Equal(2.5 * 10 / 4, RelativeScale.Alpha(2.5, vectorNorm: 4, referenceNorm: 10), 12);
        Assert.Equal(2.5, RelativeScale.Alpha(2.5, vectorNorm: 4, referenceNorm: null));
    }

    [Fact]
    public void SteeringSweep_adds_the_unit_direction_at_each_positive_scale_and_finds_the_first_that_restores()
    {
        var edits = SteeringSweep.Edits(torch.tensor(new float[] { 3, 4 }), [0, 2, -1, 8], layer: 1);
        Assert.Equal([2.0, 8.0], edits.Select(e => e.Coefficient));
        Assert.Equal(["steer 2", "steer 8"], edits.Select(e => e.Name));
        Assert.All(edits, e => Assert.Equal(1.0, e.Vector.norm().item<float>(), 5));
        Assert.Equal(0.6, edits[0].Vector[0].item<float>(), 5);

        var sweep = new[] { new SteeringPoint(0, 0.1), new SteeringPoint(2, 0.4), new SteeringPoint(8, 0.9), new SteeringPoint(16, 0.95) };
        Assert.Equal(8, SteeringSweep.RestoreScale(sweep, 0.8));
        Assert.Equal(2, SteeringSweep.RestoreScale(sweep, 0.4)); // reaching the target counts
        Assert.Null(SteeringSweep.RestoreScale(sweep, 0.99));
    }

    [Fact]
    public void ToxicTopTokenCounts_counts_toxic_words_among_each_ranked_vectors_top_projections()
    {
        using var m = CoreTestUtil.Tiny(vocab: 11, d: 8, layers: 2, seed: 9);
        using var dir = torch.randn(8, generator: new torch.Generator(2));
        var toxicIds = new HashSet<int> { 1, 4, 7 };
        var words = new ToxicWordList(toxicIds.Select(i => $"<{i}>")); // token text without a tokenizer is "<id>"
        var counted = ToxicVectors.ToxicTopTokenCounts(m, null, dir, words, perLayer: 5, count: 4, topTokens: 3);
        Assert.Equal(4, counted.Count);

        // independent: rank every value vector by cosine with dir, project the top ones through W_U by hand
        var wu = m.Unembedding.detach().to(ScalarType.Float64).data<double>().ToArray();
        var d = dir.to(ScalarType.Float64).data<double>().ToArray();
        var all = new List<(int L, int N, double Cos, double[] V)>();
        for (int l = 0; l < 2; l++)
        {
            var vals = m.MlpValues(l).detach().to(ScalarType.Float64);
            int rows = (int)vals.shape[0];
            var a = vals.data<double>().ToArray();
            for (int n = 0; n < rows; n++) { var v = a.Skip(n * 8).Take(8).ToArray(); all.Add((l, n, Cos(v, d), v)); }
        }
        var expected = all.OrderByDescending(t => t.Cos).Take(4).ToList();
        for (int i = 0; i < 4; i++)
        {
            Assert.Equal((expected[i].L, expected[i].N), (counted[i].Vector.Layer, counted[i].Vector.Neuron));
            var logits = Enumerable.Range(0, 11).Select(t => (t, Enumerable.Range(0, 8).Sum(j => wu[t * 8 + j] * expected[i].V[j]))).OrderByDescending(p => p.Item2).Take(3);
            Assert.Equal(logits.Count(p => toxicIds.Contains(p.t)), counted[i].ToxicTokens);
        }
    }

    static double Cos(double[] a, double[] b) =>
        a.Zip(b, (x, y) => x * y).Sum() / Math.Sqrt(a.Sum(x => x * x) * b.Sum(x => x * x));

    [Fact]
    public void KeyScalingEdit_scales_the_same_keys_as_unalign_while_applied_and_restores_them_bit_for_bit()
    {
        using var m = CoreTestUtil.Tiny(vocab: 11, d: 8, layers: 2, seed: 4);
        using var reference = CoreTestUtil.Tiny(vocab: 11, d: 8, layers: 2, seed: 4);
        using var w = torch.randn(8, generator: new torch.Generator(6));
        var before = Enumerable.Range(0, 2).Select(l => m.MlpKeys(l).detach().clone()).ToList();
        var chosen = Unalign.ScaleToxicKeys(reference, w, new UnalignOptions { Keys = 3, Scale = 10 });
        var edit = new KeyScalingEdit(w, 3, 10);
        using (edit.Apply(m))
            for (int l = 0; l < 2; l++)
            {
                Assert.True(reference.MlpKeys(l).eq(m.MlpKeys(l)).all().item<bool>(), $"layer {l} while applied");
                // exactly the chosen columns changed, by the factor
                for (int n = 0; n < m.MlpKeys(l).shape[1]; n++)
                {
                    bool picked = chosen.Any(c => c.Layer == l && c.Neuron == n);
                    var ratio = (m.MlpKeys(l).select(1, n) / before[l].select(1, n)).mean().item<float>();
                    Assert.Equal(picked ? 10f : 1f, ratio, 4);
                }
            }
        for (int l = 0; l < 2; l++) Assert.True(before[l].eq(m.MlpKeys(l)).all().item<bool>(), $"layer {l} restored");
        Assert.Equal("keys 3 ×10", edit.Name);
    }
}

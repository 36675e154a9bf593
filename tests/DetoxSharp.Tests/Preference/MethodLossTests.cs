using DetoxSharp.Data;
using DetoxSharp.Text;
using DetoxSharp.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Tests.Preference;

/// <summary>KTO, ORPO and SimPO (methods-facts §2) against closed forms and plain double computations.</summary>
public class MethodLossTests
{
    static Tensor T(params double[] v) => torch.tensor(v);
    static double Sigmoid(double x) => 1 / (1 + Math.Exp(-x));
    static double LogSigmoid(double x) => -Math.Log(1 + Math.Exp(-x));

    static PreferenceLogps Kto(double[] pol, double[] polKl, double[] refs, double[] refKl, double[] labels) =>
        new(T(pol), T(polKl), T(refs), T(refKl), Desirable: T(labels));

    [Fact]
    public void KtoAtReferenceIsHalfTheWeights()
    {
        // policy = reference: r = 0, z₀ = max(0, 0) = 0, so each example loses λ·(1 − σ(0)) = λ/2
        var lp = Kto([-3, -7, -2, -9], [-4, -6, -5, -3], [-3, -7, -2, -9], [-4, -6, -5, -3], [1, 0, 1, 1]);
        var o = new PreferenceLossOptions { Method = PreferenceMethod.Kto, Beta = 0.1, DesirableWeight = 1.0, UndesirableWeight = 3.0 };
        var r = PreferenceLoss.Compute(lp, o);
        Assert.Equal((3 * 0.5 + 1 * 1.5) / 4, r.Loss.item<double>(), 12);
        Assert.Equal(0.0, r.Metrics["kto/kl"], 12);
        Assert.Equal(0.75, r.Metrics["kto/desirable_share"], 12);
    }

    [Fact]
    public void KtoHandValueWithKlEstimate()
    {
        double b = 0.5;
        double[] pol = [-2, -5], refs = [-3, -4], polKl = [-6, -7], refKl = [-7, -7.5];
        // z₀ = max(0, mean(β·(−6+7), β·(−7+7.5))) = mean(0.5, 0.25) = 0.375; r = (0.5, −0.5)
        double z0 = Math.Max(0, (b * (polKl[0] - refKl[0]) + b * (polKl[1] - refKl[1])) / 2);
        Assert.Equal(0.375, z0, 12);
        double want = ((1 - Sigmoid(b * (pol[0] - refs[0]) - z0)) + (1 - Sigmoid(z0 - b * (pol[1] - refs[1])))) / 2;
        var r = PreferenceLoss.Compute(Kto(pol, polKl, refs, refKl, [1, 0]), new PreferenceLossOptions { Method = PreferenceMethod.Kto, Beta = b });
        Assert.Equal(want, r.Loss.item<double>(), 12);
        Assert.Equal(0.375, r.Metrics["kto/kl"], 12);
        // a negative KL estimate is clamped to 0
        var neg = PreferenceLoss.Compute(Kto(pol, [-9, -9], refs, [-7, -7.5], [1, 0]), new PreferenceLossOptions { Method = PreferenceMethod.Kto, Beta = b });
        double want0 = ((1 - Sigmoid(0.5)) + (1 - Sigmoid(0.5))) / 2;
        Assert.Equal(want0, neg.Loss.item<double>(), 12);
    }

    [Fact]
    public void KtoKlTermIsDetached()
    {
        var polKl = T(-6, -7).requires_grad_(true);
        var pol = T(-2, -5).requires_grad_(true);
        var lp = new PreferenceLogps(pol, polKl, T(-3, -4), T(-7, -7.5), Desirable: T(1, 0));
        PreferenceLoss.Compute(lp, new PreferenceLossOptions { Method = PreferenceMethod.Kto, Beta = 0.5 }).Loss.backward();
        Assert.True(polKl.grad is null || polKl.grad.abs().sum().item<double>() == 0);
        // d/dℓ of λ(1 − σ(βℓ' − z₀)) = −λβσ(1−σ)/n: the desirable example's gradient is negative (raise its likelihood)
        double s = Sigmoid(0.5 - 0.375);
        Assert.Equal(-0.5 * s * (1 - s) / 2, pol.grad![0].item<double>(), 12);
        Assert.True(pol.grad[1].item<double>() > 0);
    }

    [Fact]
    public void OrpoAndSimpoMatchPlainDoubleComputationOnTinyModel()
    {
        using var m = Tiny.Model(ScalarType.Float64, seed: 7);
        m.eval();
        var tok = Gpt2Tokenizer.Default();
        var ex = Tiny.Pairs(3).Select(e => PreferenceData.Tokenize(e, tok, new TruncationOptions())).ToList();
        using var _ = torch.no_grad();
        using var batch = PreferenceData.Build(ex.Select(e => (e.Prompt, e.Chosen)).Concat(ex.Select(e => (e.Prompt, e.Rejected))).ToList(), tok.EosTokenId);
        var sums = PreferenceTrainer.CompletionLogpSums(m, batch).split(3);
        // independent log-probs: one full float64 forward per sequence, summed by hand
        double LogP(int[] p, int[] c)
        {
            var ids = torch.tensor(p.Concat(c).Select(x => (long)x).ToArray()).unsqueeze(0);
            var logp = m.Forward(ids)[0].log_softmax(-1);
            double s = 0;
            for (int j = 0; j < c.Length; j++) s += logp[p.Length - 1 + j, c[j]].item<double>();
            return s;
        }
        var lw = ex.Select(e => LogP(e.Prompt, e.Chosen)).ToArray();
        var ll = ex.Select(e => LogP(e.Prompt, e.Rejected)).ToArray();
        var nw = ex.Select(e => (double)e.Chosen.Length).ToArray();
        var nl = ex.Select(e => (double)e.Rejected.Length).ToArray();
        var lp = new PreferenceLogps(sums[0], sums[1], T(double.NaN, double.NaN, double.NaN), T(double.NaN, double.NaN, double.NaN), ChosenTokens: T(nw), RejectedTokens: T(nl));

        double beta = 2.0, gamma = 1.0, simpo = 0;
        for (int i = 0; i < 3; i++) simpo += -LogSigmoid(beta * lw[i] / nw[i] - beta * ll[i] / nl[i] - gamma) / 3;
        var rs = PreferenceLoss.Compute(lp, new PreferenceLossOptions { Method = PreferenceMethod.Simpo, Beta = beta, SimpoGamma = gamma });
        Assert.Equal(simpo, rs.Loss.item<double>(), 10); // NaN reference log-probs: never read

        double lambda = 0.1, orpo = 0;
        for (int i = 0; i < 3; i++)
        {
            double pw = Math.Exp(lw[i] / nw[i]), pl = Math.Exp(ll[i] / nl[i]);
            double logOdds = Math.Log(pw / (1 - pw)) - Math.Log(pl / (1 - pl));
            orpo += (-lw[i] / nw[i] + lambda * -LogSigmoid(logOdds)) / 3;
        }
        var ro = PreferenceLoss.Compute(lp, new PreferenceLossOptions { Method = PreferenceMethod.Orpo, Beta = lambda });
        Assert.Equal(orpo, ro.Loss.item<double>(), 10);
        Assert.False(double.IsNaN(ro.Metrics["rewards/margins"]));
    }

    [Fact]
    public void ReferenceFreeTrainingNeverScoresTheReference()
    {
        var tok = Gpt2Tokenizer.Default();
        var root = Tiny.TempDir("reffree");
        foreach (var method in new[] { PreferenceMethod.Orpo, PreferenceMethod.Simpo })
        {
            using var m = Tiny.Model();
            // a reference full of NaN: one reference log-prob would make the loss NaN and stop training
            using var poisoned = Tiny.Model();
            using (torch.no_grad()) foreach (var p in poisoned.parameters()) p.fill_(double.NaN);
            var cache = Path.Combine(root, $"cache-{method}");
            var opts = PreferenceTrainerTests.Opts(cache) with { Loss = new PreferenceLossOptions { Method = method, Beta = method == PreferenceMethod.Simpo ? 2.0 : 0.1 }, MaxSteps = 2 };
            var r = new PreferenceTrainer(m, tok, opts) { Reference = poisoned }.Train(Tiny.Pairs(12), Path.Combine(root, $"out-{method}"));
            Assert.Equal(2, r.Steps);
            Assert.False(Directory.Exists(cache));
            var first = DetoxSharp.Training.MetricsLog.Read(r.MetricsPath).First();
            Assert.True(double.IsFinite(first["loss"]!.GetValue<double>()));
        }
    }

    [Fact]
    public void KtoFromConvertedPairsStartsAtHalf()
    {
        var tok = Gpt2Tokenizer.Default();
        var root = Tiny.TempDir("kto");
        var path = Path.Combine(root, "kto.jsonl");
        JsonlReader.Write(path, PreferenceData.PairsToKto(Tiny.Pairs(10)));
        var data = PreferenceData.ReadKto(path);
        Assert.Equal(20, data.Count);
        Assert.True(data[0].Desirable); Assert.False(data[10].Desirable);
        Assert.Equal(data[19].Chosen, data[0].Rejected); // the mismatched completion is the previous record's
        Assert.Equal(data[4].Chosen, data[5].Rejected);
        using var m = Tiny.Model();
        var opts = PreferenceTrainerTests.Opts(Path.Combine(root, "cache")) with { Loss = new PreferenceLossOptions { Method = PreferenceMethod.Kto, Beta = 0.1 }, MaxSteps = 2 };
        var r = new PreferenceTrainer(m, tok, opts).Train(data, Path.Combine(root, "out"));
        var first = DetoxSharp.Training.MetricsLog.Read(r.MetricsPath).First();
        Assert.Equal(0.5, first["loss"]!.GetValue<double>(), 5); // policy == reference at step 1
        // paired data with the kto loss, and KTO data with a paired loss, are refused
        using var m2 = Tiny.Model();
        Assert.Throws<InvalidInputException>(() => new PreferenceTrainer(m2, tok, opts).Train(Tiny.Pairs(12), Path.Combine(root, "bad1")));
        Assert.Throws<InvalidInputException>(() => new PreferenceTrainer(m2, tok, PreferenceTrainerTests.Opts(Path.Combine(root, "c2"))).Train(data, Path.Combine(root, "bad2")));
    }

    [Fact]
    public void KtoReaderNamesTheBadLine()
    {
        var root = Tiny.TempDir("ktobad");
        var path = Path.Combine(root, "k.jsonl");
        File.WriteAllText(path, "{\"prompt\":\"a\",\"completion\":\" b\",\"label\":true}\n{\"prompt\":\"a\",\"completion\":\" c\",\"label\":\"yes\"}\n");
        var e = Assert.Throws<InvalidInputException>(() => PreferenceData.ReadKto(path));
        Assert.Contains("k.jsonl:2", e.Message);
        Assert.Contains("label", e.Message);
    }
}

using DetoxSharp.Data;
using DetoxSharp.Models;
using DetoxSharp.Text;
using DetoxSharp.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Tests.Preference;

public class PreferenceLossTests
{
    static Tensor T(params double[] v) => torch.tensor(v);

    static PreferenceLogps Lp(double pc, double pr, double rc, double rr, double? pt = null, double? tt = null, double? n = null) =>
        new(T(pc), T(pr), T(rc), T(rr), pt is null ? null : T(pt.Value), tt is null ? null : T(tt.Value), n is null ? null : T(n.Value));

    static double LogSigmoid(double x) => -Math.Log(1 + Math.Exp(-x));

    [Fact]
    public void SigmoidAtReferenceIsLn2()
    {
        var r = PreferenceLoss.Compute(Lp(-12.5, -7.25, -12.5, -7.25), new PreferenceLossOptions { Beta = 0.1 });
        Assert.Equal(Math.Log(2), r.Loss.item<double>(), 12);
        Assert.Equal(0.0, r.Metrics["rewards/margins"], 12);
        Assert.Equal(0.0, r.Metrics["rewards/accuracies"], 12);
        Assert.Equal(-12.5, r.Metrics["logps/chosen"], 12);
        Assert.Equal(-7.25, r.Metrics["logps/rejected"], 12);
    }

    [Fact]
    public void IpoAtReferenceIsInverseTwoBetaSquared()
    {
        var r = PreferenceLoss.Compute(Lp(-3, -4, -3, -4), new PreferenceLossOptions { Method = PreferenceMethod.Ipo, Beta = 0.1 });
        Assert.Equal(25.0, r.Loss.item<double>(), 9);
        // Δ = (−2 − −3) − (−5 − −4) = 2 → (2 − 5)² = 9
        var r2 = PreferenceLoss.Compute(Lp(-2, -5, -3, -4), new PreferenceLossOptions { Method = PreferenceMethod.Ipo, Beta = 0.1 });
        Assert.Equal(9.0, r2.Loss.item<double>(), 9);
    }

    [Fact]
    public void SigmoidHandValueAndMetrics()
    {
        // Δ = (−2+3) − (−5+4) = 2, β = 0.5 → −log σ(1) = log(1+e^−1) = 0.31326168751822286
        var r = PreferenceLoss.Compute(Lp(-2, -5, -3, -4), new PreferenceLossOptions { Beta = 0.5 });
        Assert.Equal(0.31326168751822286, r.Loss.item<double>(), 12);
        Assert.Equal(0.5, r.Metrics["rewards/chosen"], 12);
        Assert.Equal(-0.5, r.Metrics["rewards/rejected"], 12);
        Assert.Equal(1.0, r.Metrics["rewards/margins"], 12);
        Assert.Equal(1.0, r.Metrics["rewards/accuracies"], 12);
    }

    [Fact]
    public void HingeValues()
    {
        var o = new PreferenceLossOptions { Method = PreferenceMethod.Hinge, Beta = 0.1 };
        Assert.Equal(1.0, PreferenceLoss.Compute(Lp(-1, -1, -1, -1), o).Loss.item<double>(), 12);
        // Δ = 5 → 1 − 0.5
        Assert.Equal(0.5, PreferenceLoss.Compute(Lp(0, -5, 0, 0), o).Loss.item<double>(), 12);
        // Δ = 20 → max(0, −1) = 0
        Assert.Equal(0.0, PreferenceLoss.Compute(Lp(10, -10, 0, 0), o).Loss.item<double>(), 12);
    }

    [Fact]
    public void RobustAndConservativeValues()
    {
        // βΔ = 0.5, ε = 0.1
        double robust = (-(0.9) * LogSigmoid(0.5) + 0.1 * LogSigmoid(-0.5)) / 0.8; // 0.411577...
        double cdpo = -0.9 * LogSigmoid(0.5) - 0.1 * LogSigmoid(-0.5);
        Assert.Equal(0.41157, robust, 4); // hand arithmetic: (0.9·0.474077 − 0.1·0.974077)/0.8
        var rob = PreferenceLoss.Compute(Lp(0, -5, 0, 0), new PreferenceLossOptions { Method = PreferenceMethod.Robust, Beta = 0.1, LabelSmoothing = 0.1 });
        Assert.Equal(robust, rob.Loss.item<double>(), 10);
        var c = PreferenceLoss.Compute(Lp(0, -5, 0, 0), new PreferenceLossOptions { Beta = 0.1, LabelSmoothing = 0.1 });
        Assert.Equal(cdpo, c.Loss.item<double>(), 10);
        Assert.Equal(0.5240771, cdpo, 6); // 0.9·0.474077 + 0.1·0.974077
    }

    [Fact]
    public void RpoAddsMeanTokenNll()
    {
        var r = PreferenceLoss.Compute(Lp(-6, -4, -6, -4, n: 3), new PreferenceLossOptions { Beta = 0.1, RpoAlpha = 1.0 });
        Assert.Equal(Math.Log(2) + 2.0, r.Loss.item<double>(), 10);
    }

    [Fact]
    public void AdpoHandValueAndGammaZeroIsDpo()
    {
        // β = 0.1, Δ = 2, γ = 0.5, log π(y_t) − log π_tox(y_t) = 1 → −log σ(0.2 − 0.5) = log(1 + e^0.3) = 0.8543552444685189
        var o = new PreferenceLossOptions { Method = PreferenceMethod.Adpo, Beta = 0.1, Gamma = 0.5 };
        var r = PreferenceLoss.Compute(Lp(-2, -5, -3, -4, pt: -9, tt: -10), o);
        Assert.Equal(0.8543552444685189, r.Loss.item<double>(), 12);
        Assert.Equal(1.0, r.Metrics["adpo/toxic_logratio"], 12);

        var g = new torch.Generator(7);
        var pc = torch.randn(8, dtype: ScalarType.Float64, generator: g); var pr = torch.randn(8, dtype: ScalarType.Float64, generator: g);
        var rc = torch.randn(8, dtype: ScalarType.Float64, generator: g); var rr = torch.randn(8, dtype: ScalarType.Float64, generator: g);
        var pt = torch.randn(8, dtype: ScalarType.Float64, generator: g); var tt = torch.randn(8, dtype: ScalarType.Float64, generator: g);
        var dpo = PreferenceLoss.Compute(new PreferenceLogps(pc, pr, rc, rr), new PreferenceLossOptions { Beta = 0.3 }).Loss.item<double>();
        var adpo0 = PreferenceLoss.Compute(new PreferenceLogps(pc, pr, rc, rr, pt, tt), new PreferenceLossOptions { Method = PreferenceMethod.Adpo, Beta = 0.3, Gamma = 0 }).Loss.item<double>();
        var adpo1 = PreferenceLoss.Compute(new PreferenceLogps(pc, pr, rc, rr, pt, tt), new PreferenceLossOptions { Method = PreferenceMethod.Adpo, Beta = 0.3, Gamma = 0.7 }).Loss.item<double>();
        Assert.Equal(dpo, adpo0, 12);
        Assert.NotEqual(dpo, adpo1, 6);
    }

    [Fact]
    public void InvalidOptionsRejected()
    {
        var e = Assert.Throws<InvalidSettingException>(() => new PreferenceLossOptions { Beta = 0 }.Validate());
        Assert.Equal("beta", e.Setting);
        Assert.Equal("beta must be > 0 (got 0)", e.Message);
        // ADPO is a method of its own (sigmoid DPO + toxic penalty), so "γ with IPO" cannot be expressed; γ = 0 with ADPO is rejected
        var g = Assert.Throws<InvalidSettingException>(() => new PreferenceLossOptions { Method = PreferenceMethod.Adpo, Gamma = 0 }.Validate());
        Assert.Equal("gamma", g.Setting);
        Assert.Throws<InvalidSettingException>(() => PreferenceLossOptions.ParseMethod("cpo"));
        Assert.Equal(PreferenceMethod.Kto, PreferenceLossOptions.ParseMethod("kto"));
        var w = Assert.Throws<InvalidSettingException>(() => new PreferenceLossOptions { Method = PreferenceMethod.Kto, DesirableWeight = 0 }.Validate());
        Assert.Equal("desirable_weight", w.Setting);
    }

    [Fact]
    public void ToxicLogprobsDoNotSwitchSigmoidToAdpo()
    {
        // the method is explicit: sigmoid DPO ignores toxic log-probs even when they are present and γ > 0
        var withToxic = PreferenceLoss.Compute(Lp(-2, -5, -3, -4, pt: -9, tt: -10), new PreferenceLossOptions { Beta = 0.1, Gamma = 0.5 });
        var plain = PreferenceLoss.Compute(Lp(-2, -5, -3, -4), new PreferenceLossOptions { Beta = 0.1 });
        Assert.Equal(plain.Loss.item<double>(), withToxic.Loss.item<double>(), 14);
        Assert.False(withToxic.Metrics.ContainsKey("adpo/toxic_logratio"));
        Assert.Throws<ArgumentException>(() => PreferenceLoss.Compute(Lp(-2, -5, -3, -4), new PreferenceLossOptions { Method = PreferenceMethod.Adpo }));
    }
}

static class Tiny
{
    /// <summary>A Llama-family model 16 wide, 2 layers, 4 query / 2 KV heads, MLP 24: RMSNorm weights 1, every other
    /// parameter N(0, std²) from its own generator (in name order, so the weights depend on the seed only).</summary>
    public static LlamaModel Llama(int vocab, int maxPositions, int eos, int bos, ulong seed, double std)
    {
        var m = new LlamaModel(new LlamaConfig
        {
            VocabSize = vocab, HiddenSize = 16, IntermediateSize = 24, NumHiddenLayers = 2, NumAttentionHeads = 4,
            NumKeyValueHeads = 2, MaxPositionEmbeddings = maxPositions, EosTokenIds = [eos], BosTokenId = bos,
        }, initialize: false);
        var g = new torch.Generator(seed);
        using (torch.no_grad())
            foreach (var (n, p) in m.named_parameters().OrderBy(x => x.name, StringComparer.Ordinal))
                p.copy_(n.EndsWith("norm.weight") ? torch.ones_like(p) : torch.randn(p.shape, generator: g) * std);
        return m;
    }

    public static Gpt2Model Model(ScalarType dt = ScalarType.Float32, int seed = 1)
    {
        // own generator: xunit runs test classes in parallel, so the global RNG is not ours to rely on
        var m = new Gpt2Model(new Gpt2Config { NEmbd = 16, NLayer = 2, NHead = 2, NPositions = 64 }, dtype: dt, initialize: false);
        var g = new torch.Generator((ulong)seed);
        using (torch.no_grad())
            foreach (var (name, p) in m.named_parameters().OrderBy(x => x.name, StringComparer.Ordinal))
            {
                if (name.Contains("ln") && p.dim() == 1) p.copy_(name.EndsWith("weight") ? torch.ones_like(p) : torch.zeros_like(p));
                else p.copy_(torch.randn(p.shape, generator: g, dtype: dt) * 0.02);
            }
        return m;
    }

    public static string TempDir(string name)
    {
        var d = Path.Combine(Path.GetTempPath(), "detox-pref-tests", name + "-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(d);
        return d;
    }

    public static List<PreferenceExample> Pairs(int n)
    {
        string[] nice = ["a lovely day", "thank you friend", "we like the park", "good work team"];
        string[] bad = ["you stupid idiot", "shut up loser", "I hate you all", "what a moron"];
        return Enumerable.Range(0, n).Select(i => new PreferenceExample($"Prompt number {i} says", " " + nice[i % 4], " " + bad[i % 4], " " + bad[(i + 1) % 4], $"mem:{i}")).ToList();
    }
}

public class PreferenceLogProbTests
{
    [Fact]
    public void PaddingDoesNotChangeLogProbs()
    {
        using var m = Tiny.Model();
        m.eval();
        var tok = Gpt2Tokenizer.Default();
        var p1 = tok.Encode("Hello there"); var c1 = tok.Encode(" my friend");
        var p2 = tok.Encode("A much longer prompt with many more tokens in it"); var c2 = tok.Encode(" and a long completion too, yes");
        using var _ = torch.no_grad();
        using var alone = PreferenceData.Build([(p1, c1)], tok.EosTokenId);
        using var both = PreferenceData.Build([(p1, c1), (p2, c2)], tok.EosTokenId);
        Assert.Equal(c1.Length, (int)alone.CompletionMask.sum().item<float>());
        Assert.Equal(c1.Length + c2.Length, (int)both.CompletionMask.sum().item<float>());
        var a = PreferenceTrainer.CompletionLogpSums(m, alone).item<float>();
        var b = PreferenceTrainer.CompletionLogpSums(m, both)[0].item<float>();
        Assert.Equal(a, b, 4);
        // independent: full-sequence log-probs of the core, summed over completion positions
        var ids = torch.tensor(p1.Concat(c1).Select(x => (long)x).ToArray()).unsqueeze(0);
        var lp = LogProbs.OfTokens(m, ids);
        var expect = lp[0].narrow(0, p1.Length - 1, c1.Length).sum().item<float>();
        Assert.Equal(expect, a, 4);
    }

    [Fact]
    public void HeadOnCompletionPositionsEqualsFullLogitsForEveryRow()
    {
        // CompletionLogpSums runs the LM head only where a completion token is predicted; every row of a ragged batch
        // must equal the log-probs of a full float64 forward of that row alone, summed over its completion.
        using var m = Tiny.Model(ScalarType.Float64, seed: 5);
        m.eval();
        var tok = Gpt2Tokenizer.Default();
        var seqs = new (string P, string C)[] { ("Hi", " there friend"), ("A longer prompt, with commas and more words", " ok"),
            ("One", " two three four five six seven"), ("Prompt", " x") }
            .Select(x => (tok.Encode(x.P), tok.Encode(x.C))).ToList();
        using var _ = torch.no_grad();
        using var batch = PreferenceData.Build(seqs, tok.EosTokenId);
        var got = PreferenceTrainer.CompletionLogpSums(m, batch).to(ScalarType.Float64).data<double>().ToArray();
        for (int i = 0; i < seqs.Count; i++)
        {
            var (p, c) = seqs[i];
            var ids = torch.tensor(p.Concat(c).Select(x => (long)x).ToArray()).unsqueeze(0);
            var logp = m.Forward(ids)[0].log_softmax(-1);                    // float64 [T, V], all positions
            double want = 0;
            for (int j = 0; j < c.Length; j++) want += logp[p.Length - 1 + j, c[j]].item<double>();
            Assert.Equal(want, got[i], 9);
        }
    }

    [Fact]
    public void GradientMatchesFiniteDifferences()
    {
        using var pol = Tiny.Model(ScalarType.Float64, seed: 3);
        var tok = Gpt2Tokenizer.Default();
        var ex = Tiny.Pairs(2).Select(e => PreferenceData.Tokenize(e, tok, new TruncationOptions())).ToList();
        var seqs = ex.Select(e => (e.Prompt, e.Chosen)).Concat(ex.Select(e => (e.Prompt, e.Rejected))).ToList();
        using var batch = PreferenceData.Build(seqs, tok.EosTokenId);
        var refs = torch.tensor(new double[] { -20, -21, -19, -22 });
        var o = new PreferenceLossOptions { Beta = 0.7 };
        double LossValue()
        {
            var s = PreferenceTrainer.CompletionLogpSums(pol, batch);
            return PreferenceLoss.Compute(new PreferenceLogps(s[..2], s[2..], refs[..2], refs[2..]), o).Loss.item<double>();
        }
        var w = pol.state_dict()["h.1.mlp.c_fc.weight"];
        var s0 = PreferenceTrainer.CompletionLogpSums(pol, batch);
        var loss = PreferenceLoss.Compute(new PreferenceLogps(s0[..2], s0[2..], refs[..2], refs[2..]), o).Loss;
        loss.backward();
        var grad = pol.named_parameters().First(p => p.name == "h.1.mlp.c_fc.weight").parameter.grad!.clone();
        double h = 1e-6;
        foreach (var (i, j) in new[] { (0, 0), (3, 17), (15, 63), (7, 40) })
        {
            double numeric;
            using (torch.no_grad())
            {
                double orig = w[i, j].item<double>();
                w[i, j] = orig + h; double up = LossValue();
                w[i, j] = orig - h; double down = LossValue();
                w[i, j] = orig;
                numeric = (up - down) / (2 * h);
            }
            double analytic = grad[i, j].item<double>();
            Assert.True(Math.Abs(numeric - analytic) <= 1e-6 + 1e-4 * Math.Abs(analytic), $"({i},{j}) numeric {numeric} analytic {analytic}");
        }
        Assert.True(grad.abs().sum().item<double>() > 0);
    }

    [Fact]
    public void TruncationKeepsPromptEnd()
    {
        var tok = Gpt2Tokenizer.Default();
        var e = new PreferenceExample("one two three four five six seven eight", " a b c d e f", " g h i j k l", null, "x:1");
        var t = PreferenceData.Tokenize(e, tok, new TruncationOptions(3, 2, 256));
        Assert.Equal(tok.Encode(" six seven eight"), t.Prompt);
        Assert.Equal(2, t.Chosen.Length);
        var t2 = PreferenceData.Tokenize(e, tok, new TruncationOptions(64, 64, 10));
        Assert.Equal(8, t2.Prompt.Length);
        Assert.Equal(2, t2.Chosen.Length);
    }
}

public class PreferenceDataTests
{
    static string Write(string dir, string name, params string[] lines)
    {
        var p = Path.Combine(dir, name);
        File.WriteAllLines(p, lines);
        return p;
    }

    [Fact]
    public void ReadsAllThreeFormats()
    {
        var d = Tiny.TempDir("formats");
        var std = PreferenceData.Read(Write(d, "a.jsonl", """{"prompt":"p","chosen":"c","rejected":"r"}"""));
        Assert.Equal(("p", "c", "r"), (std[0].Prompt, std[0].Chosen, std[0].Rejected));
        var mech = PreferenceData.Read(Write(d, "b.jsonl", """{"prompt_text":"p","unpert_gen_text":"good","pert_gen_text":"bad"}"""));
        Assert.Equal(("p", "good", "bad"), (mech[0].Prompt, mech[0].Chosen, mech[0].Rejected));
        var adpo = PreferenceData.Read(Write(d, "c.jsonl", """{"prompt":"p","chosen":"c","rejected":"r","toxic":"t"}"""), PreferenceFormat.Adpo);
        Assert.Equal("t", adpo[0].Toxic);
    }

    [Fact]
    public void MalformedFilesNameFileAndLine()
    {
        var d = Tiny.TempDir("malformed");
        var bad = Write(d, "bad.jsonl", """{"prompt":"p","chosen":"c","rejected":"r"}""", "{not json", "");
        var e1 = Assert.Throws<InvalidInputException>(() => PreferenceData.Read(bad));
        Assert.Contains("bad.jsonl:2", e1.Message);
        var missing = Write(d, "missing.jsonl", """{"prompt":"p","chosen":"c","rejected":"r"}""", "", """{"prompt":"p","chosen":"c"}""");
        var e2 = Assert.Throws<InvalidInputException>(() => PreferenceData.Read(missing));
        Assert.Contains("missing.jsonl:3", e2.Message);
        Assert.Contains("rejected", e2.Message);
        var noTox = Write(d, "notox.jsonl", """{"prompt":"p","chosen":"c","rejected":"r"}""");
        Assert.Contains("notox.jsonl:1", Assert.Throws<InvalidInputException>(() => PreferenceData.Read(noTox, PreferenceFormat.Adpo)).Message);
    }

    [Fact]
    public void IdenticalPairsReportedOrSkipped()
    {
        var d = Tiny.TempDir("ident");
        var all = Write(d, "same.jsonl", """{"prompt":"p","chosen":"x","rejected":"x"}""", """{"prompt":"q","chosen":"y","rejected":"y"}""", """{"prompt":"q","chosen":"z","rejected":"z"}""");
        var e = Assert.Throws<InvalidInputException>(() => PreferenceData.Read(all));
        Assert.Contains("all 3 pairs", e.Message);
        var some = Write(d, "some.jsonl", """{"prompt":"p","chosen":"x","rejected":"x"}""", """{"prompt":"q","chosen":"y","rejected":"n"}""");
        var warnings = new List<string>();
        var r = PreferenceData.Read(some, warn: warnings.Add);
        Assert.Single(r);
        Assert.Single(warnings);
        Assert.Contains("1 of 2", warnings[0]);
    }

    [Fact]
    public void SplitIsSeededAndDisjoint()
    {
        var items = Enumerable.Range(0, 50).ToList();
        var (t1, v1) = PreferenceData.Split(items, 10, 5);
        var (t2, v2) = PreferenceData.Split(items, 10, 5);
        var (_, v3) = PreferenceData.Split(items, 10, 6);
        Assert.Equal(v1, v2); Assert.Equal(t1, t2);
        Assert.NotEqual(v1, v3);
        Assert.Empty(t1.Intersect(v1));
        Assert.Equal(50, t1.Count + v1.Count);
        Assert.NotEqual(Enumerable.Range(40, 10), v1);
    }
}

public class PreferenceTrainerTests
{
    internal static PreferenceTrainerOptions Opts(string cache) => new()
    {
        Loss = new PreferenceLossOptions { Beta = 0.1 },
        LearningRate = 1e-3, BatchSize = 2, GradientAccumulationSteps = 2, WarmupSteps = 2, MaxGradNorm = 1.0,
        ValidationSize = 4, EvalEvery = 2, Patience = 0, MaxSteps = 6, Epochs = 2, Seed = 11, CacheDir = cache,
    };

    [Fact]
    public void ResumeEqualsUninterruptedAndCacheHits()
    {
        var tok = Gpt2Tokenizer.Default();
        var data = Tiny.Pairs(24);
        var root = Tiny.TempDir("resume");
        var cache = Path.Combine(root, "cache");

        using var full = Tiny.Model();
        var r1 = new PreferenceTrainer(full, tok, Opts(cache)).Train(data, Path.Combine(root, "full"));
        Assert.False(r1.ReferenceCacheHit);
        Assert.Equal(6, r1.Steps);
        var m1 = DetoxSharp.Training.MetricsLog.Read(r1.MetricsPath);
        var firstTrain = m1.First(r => r["phase"] is null);
        Assert.Equal(Math.Log(2), firstTrain["loss"]!.GetValue<double>(), 4); // policy == reference at step 1
        Assert.Contains(m1, r => r["phase"]?.GetValue<string>() == "eval");
        foreach (var k in new[] { "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected", "grad_norm", "learning_rate" })
            Assert.NotNull(firstTrain[k]);

        using var part = Tiny.Model();
        using var cts = new CancellationTokenSource();
        var r2 = new PreferenceTrainer(part, tok, Opts(cache)).Train(data, Path.Combine(root, "part"), new Collect(p => { if (p.Phase == TrainingPhase.Train && p.Step == 3) cts.Cancel(); }), cts.Token);
        Assert.True(r2.Cancelled);
        Assert.True(r2.ReferenceCacheHit);
        Assert.Equal(3, r2.Steps);

        using var resumed = Tiny.Model();
        var r3 = new PreferenceTrainer(resumed, tok, Opts(cache) with { Resume = true }).Train(data, Path.Combine(root, "part"));
        Assert.True(r3.ReferenceCacheHit);
        Assert.Equal(6, r3.Steps);

        var a = full.state_dict(); var b = resumed.state_dict();
        using var start = Tiny.Model();
        bool anyChanged = false;
        foreach (var (k, v) in a)
        {
            Assert.True(torch.equal(v, b[k]).all().item<bool>(), $"{k} differs after resume");
            anyChanged |= !torch.equal(v, start.state_dict()[k]).all().item<bool>();
        }
        Assert.True(anyChanged);
        var m3 = DetoxSharp.Training.MetricsLog.Read(r3.MetricsPath).Where(r => r["phase"] is null).Select(r => r["step"]!.GetValue<int>()).ToList();
        Assert.Equal([1, 2, 3, 4, 5, 6], m3);
    }

    [Fact]
    public void UncachedReferenceGivesSameFirstStep()
    {
        var tok = Gpt2Tokenizer.Default();
        var data = Tiny.Pairs(12);
        var root = Tiny.TempDir("nocache");
        using var m = Tiny.Model();
        var r = new PreferenceTrainer(m, tok, Opts(Path.Combine(root, "c")) with { CacheReference = false, MaxSteps = 2 }).Train(data, Path.Combine(root, "o"));
        Assert.False(r.ReferenceCacheHit);
        Assert.False(Directory.Exists(Path.Combine(root, "c")));
        var first = DetoxSharp.Training.MetricsLog.Read(r.MetricsPath).First();
        Assert.Equal(Math.Log(2), first["loss"]!.GetValue<double>(), 5);
    }
}

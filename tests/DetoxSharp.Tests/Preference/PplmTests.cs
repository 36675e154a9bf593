using System.Text.Json.Nodes;
using DetoxSharp.Checkpoints;
using DetoxSharp.Data;
using DetoxSharp.Generation;
using DetoxSharp.Interpretability;
using DetoxSharp.Models;
using DetoxSharp.Tests.Core;
using DetoxSharp.Text;
using TorchSharp;
using static TorchSharp.torch;
using Gen = DetoxSharp.Generation.Generator;
using static DetoxSharp.Tests.CliRunner;

namespace DetoxSharp.Tests.Preference;

/// <summary>One libtorch thread while a test runs: PPLM on a tiny model is thousands of tiny ops, which a second
/// intra-op thread only slows down — by 5–10× when the shared machine is loaded.</summary>
sealed class OneThread : IDisposable
{
    readonly int _prev = torch.get_num_threads();
    public OneThread() => torch.set_num_threads(1);
    public void Dispose() => torch.set_num_threads(_prev);
}

public class PplmTests
{
    // vocabulary 40 (eos 39), large weights: peaked but not degenerate next-token distributions
    static Gpt2Model Model(ScalarType dt = ScalarType.Float32)
    {
        var m = CoreTestUtil.Tiny(vocab: 40, d: 16, heads: 2, positions: 48, seed: 11, std: 0.5);
        if (dt != ScalarType.Float32) m.to(dt);
        return m;
    }

    /// <summary>A probe whose toxic logit is s·(u·x) for a fixed random unit direction u (non-toxic: −s·(u·x)).</summary>
    static ToxicityProbe Probe(int d, double s, int seed = 5)
    {
        using var scope = torch.NewDisposeScope();
        var u = torch.randn([d], generator: new torch.Generator((ulong)seed));
        u = u / u.norm();
        return new ToxicityProbe(torch.stack([-u * s, u * s], 1), torch.zeros(2));
    }

    static readonly int[][] Prompts = [[1, 2, 3], [5], [7, 8, 9, 10, 11, 12], [20, 21], [3, 3, 3, 3], [14, 30, 2], [25, 26, 27, 28], [33, 6]];

    /// <summary>The probe's P(toxic) of prompt + continuation: its own feature (last block's resid_post, mean over positions).</summary>
    static double ProbeToxicity(ICausalLM m, ToxicityProbe probe, int[] prompt, int[] continuation)
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var seq = prompt.Concat(continuation).Select(t => (long)t).ToArray();
        var resid = m.ResidualStream(torch.tensor(seq, [1, seq.Length], ScalarType.Int64));
        return probe.PredictToxic(resid.mean([1])).item<float>();
    }

    /// <summary>A Llama-family model of the same width: grouped KV heads (4 query heads, 2 KV heads), rotary positions,
    /// RMSNorm, SwiGLU — the cache offsets of PPLM act on the rotated, grouped keys.</summary>
    static LlamaModel LlamaTiny(double std = 0.5, ScalarType dt = ScalarType.Float64)
    {
        var m = Tiny.Llama(vocab: 40, maxPositions: 48, eos: 39, bos: 0, seed: 11, std: std);
        m.to(dt);
        return m;
    }

    [Fact]
    public void PplmGradientMatchesFiniteDifference()
    {
        using (var gpt2 = Model(ScalarType.Float64)) GradientMatchesFiniteDifference(gpt2);
    }

    [Fact]
    public void PplmGradientMatchesFiniteDifferenceOnLlama()
    {
        using var llama = LlamaTiny();
        GradientMatchesFiniteDifference(llama);
    }

    static void GradientMatchesFiniteDifference(ICausalLM m)
    {
        using var threads = new OneThread();
        using var probe = Probe(16, 20);
        foreach (int horizon in new[] { 1, 2 })
        {
            using var scope = torch.NewDisposeScope();
            var o = new PplmOptions { Horizon = horizon, KlScale = 0.1, MaxNewTokens = 4 };
            using var dec = new PplmDecoder(m, probe, [1, 2, 3, 4, 5], o);
            dec.BeginStep();
            var cache = dec.PerturbedCache;
            Assert.Equal(4, cache.Length);
            var g = new torch.Generator(3);
            // a generic point: small random offsets, not zero
            var baseK = Enumerable.Range(0, m.NumLayers).Select(l => torch.randn(cache.Keys(l)!.shape, ScalarType.Float64, generator: g) * 0.3).ToArray();
            var baseV = Enumerable.Range(0, m.NumLayers).Select(l => torch.randn(cache.Values(l)!.shape, ScalarType.Float64, generator: g) * 0.3).ToArray();
            var dK = baseK.Select(t => t.clone().requires_grad_(true)).ToArray();
            var dV = baseV.Select(t => t.clone().requires_grad_(true)).ToArray();
            var loss = dec.Loss(dK, dV);
            // PPLM detaches the newest token's own residual; the finite difference holds it at its value here
            var newest = dec.LastNewestHidden!.clone();
            var grads = torch.autograd.grad([loss], [.. dK, .. dV]);

            double At(bool key, int layer, long[] idx, double delta)
            {
                using var s = torch.NewDisposeScope();
                using var noGrad = torch.no_grad();
                var k = baseK.Select(t => t.clone()).ToArray();
                var v = baseV.Select(t => t.clone()).ToArray();
                var target = key ? k[layer] : v[layer];
                target[idx[0], idx[1], idx[2], idx[3]].add_(delta);
                return dec.Loss(k, v, newest).item<double>();
            }

            // every layer's keys and values: the element with the largest gradient and a fixed one (layer 1's past is read
            // by the newest token's layer-1 query, which depends on layer 0's offsets)
            var checks = new List<(bool Key, int Layer, long[] Idx)>();
            for (int l = 0; l < m.NumLayers; l++)
                foreach (bool key in new[] { true, false })
                {
                    var gt = grads[(key ? 0 : m.NumLayers) + l];
                    long flat = gt.abs().argmax().item<long>();
                    var shape = gt.shape;
                    checks.Add((key, l, [0, flat / (shape[2] * shape[3]), flat / shape[3] % shape[2], flat % shape[3]]));
                    checks.Add((key, l, [0, 1, l + 1, 2 * l + 1]));
                }
            const double eps = 1e-6;
            foreach (var (key, layer, idx) in checks)
            {
                double fd = (At(key, layer, idx, eps) - At(key, layer, idx, -eps)) / (2 * eps);
                double an = grads[(key ? 0 : m.NumLayers) + layer][idx[0], idx[1], idx[2], idx[3]].item<double>();
                string what = $"horizon {horizon} {(key ? "key" : "value")} L{layer} [{string.Join(",", idx)}]";
                Assert.True(Math.Abs(fd) > 1e-8, $"{what}: gradient too small to test ({fd})");
                Assert.True(Math.Abs(an - fd) <= 1e-4 * Math.Abs(fd) + 1e-10, $"{what}: autograd {an} vs finite difference {fd}");
            }
        }
    }

    [Fact]
    public void PplmWithStepZeroEqualsPlainSampling()
    {
        using var threads = new OneThread();
        using var m = Model(ScalarType.Float64);
        using var probe = Probe(16, 20);
        var pplm = new PplmOptions { StepSize = 0, Iterations = 1, GmScale = 1, TopK = 5, Temperature = 0.8, Seed = 7, MaxNewTokens = 8 };
        var plain = new GenerationOptions { Greedy = false, TopK = 5, Temperature = 0.8, Seed = 7, MaxNewTokens = 8, BatchSize = 1 };
        var a = Pplm.Generate(m, probe, Prompts, pplm);
        // prompt i samples with its own generator seeded Seed + i
        var b = Prompts.Select((p, i) => Gen.Generate(m, [p], plain with { Seed = 7 + i })[0]).ToList();
        Assert.Equal(b, a);
        Assert.Contains(a, c => c.Length > 0);
        // greedy: PPLM with step 0 equals greedy decoding, and the sampled run above is not greedy
        var greedy = Gen.Generate(m, Prompts, new GenerationOptions { Greedy = true, MaxNewTokens = 8 });
        Assert.Equal(greedy, Pplm.Generate(m, probe, Prompts, pplm with { Greedy = true }));
        Assert.NotEqual(greedy, a);
    }

    [Fact]
    public void PplmBatchEqualsRowByRow()
    {
        using var m = CoreTestUtil.Tiny(vocab: 40, d: 16, heads: 2, positions: 48, seed: 11, std: 0.2);
        m.to(ScalarType.Float64);
        BatchEqualsRowByRow(m);
    }

    [Fact]
    public void PplmBatchEqualsRowByRowOnLlama()
    {
        // left padding on a rotary model: positions count from each row's first real token, so a padded row must
        // still equal the row alone
        using var m = LlamaTiny(std: 0.2);
        BatchEqualsRowByRow(m);
    }

    static void BatchEqualsRowByRow(ICausalLM m)
    {
        // Rows of different lengths (one of a single token) share a left-padded batch. Each step's perturbed next-token
        // distribution of every row must equal the one the row gets alone (same tokens fed to both), to float64 rounding —
        // the per-row gradient norm is what makes that so (one norm over the batch would couple the rows).
        // The probe is mild (scale 2) on purpose: when its loss saturates, the attribute gradient is ~1e-18 and the step
        // α·g/‖g‖ points wherever rounding noise of the KL term points — batched or not, PPLM's normalisation amplifies
        // last-bit differences of batched vs single-row BLAS calls there. Tokens are compared through the
        // distributions, with the same tokens fed to both, for the same reason.
        // Likewise the model is tamer than Model(): with std 0.5 a repeated-token prompt gets a next-token distribution
        // so peaked that dp/dΔ underflows, and its step direction is noise too.
        using var threads = new OneThread();
        using var probe = Probe(16, 2);
        // no top-k cut: a near-tie at the k-th place would turn a 1e-16 difference into a jump of one token's mass
        var o = new PplmOptions { Iterations = 4, MaxNewTokens = 6, Horizon = 2, StepSize = 0.3, StopAtEos = false, TopK = 0 };
        using var batch = new PplmDecoder(m, probe, Prompts, o);
        var alone = Prompts.Select(p => new PplmDecoder(m, probe, p, o)).ToList();
        using var plain = new PplmDecoder(m, probe, Prompts, o with { Iterations = 0 });
        try
        {
            double moved = 0;
            for (int step = 0; step < o.MaxNewTokens; step++)
            {
                using var scope = torch.NewDisposeScope();
                var pb = batch.StepDistribution();
                var toks = batch.Pick(pb, null);
                for (int i = 0; i < Prompts.Length; i++)
                {
                    var pa = alone[i].StepDistribution();
                    double diff = (pa[0] - pb[i]).abs().max().item<double>();
                    Assert.True(diff < 1e-9, $"step {step} row {i}: batched and alone distributions differ by {diff}");
                    alone[i].Advance([toks[i]]);
                }
                moved = Math.Max(moved, (plain.StepDistribution() - pb).abs().max().item<double>());
                plain.Advance(toks);
                batch.Advance(toks);
            }
            Assert.True(moved > 0.01, $"the perturbation barely changed the distributions ({moved}); the comparison would say little");
        }
        finally { foreach (var d in alone) d.Dispose(); }
        // and Generate's batching: the same prompt gives the same continuation in batches of 8, 3 and 1 (greedy, tame steps)
        var tame = new PplmOptions { Iterations = 2, MaxNewTokens = 5, StepSize = 0.05, Greedy = true };
        var rows8 = Pplm.Generate(m, probe, Prompts, tame, batchSize: 8);
        Assert.Equal(Prompts.Select(p => Pplm.Generate(m, probe, [p], tame, batchSize: 1)[0]).ToList(), rows8);
        Assert.Equal(rows8, Pplm.Generate(m, probe, Prompts, tame, batchSize: 3));
    }

    [Fact]
    public void PplmRaisesProbeToxicity()
    {
        using var threads = new OneThread();
        using var m = Model();
        using var probe = Probe(16, 2);
        var o = new PplmOptions { Iterations = 5, MaxNewTokens = 6, Seed = 3, StopAtEos = false };
        var unpert = Gen.Generate(m, Prompts, new GenerationOptions { Greedy = false, TopK = o.TopK, Temperature = o.Temperature, Seed = o.Seed, MaxNewTokens = o.MaxNewTokens, BatchSize = 1, StopAtEos = false });
        var toxic = Pplm.Generate(m, probe, Prompts, o);
        double Mean(List<int[]> cont) => Prompts.Select((p, i) => ProbeToxicity(m, probe, p, cont[i])).Average();
        double pu = Mean(unpert), pt = Mean(toxic);
        Console.WriteLine($"PPLM effect: mean probe P(toxic) {pt:F3} (PPLM, 5 iterations) vs {pu:F3} (unperturbed sampling)");
        Assert.True(pt > pu + 0.05, $"PPLM towards toxic: mean P(toxic) {pt:F3} vs unperturbed {pu:F3}");
    }

    [Fact]
    public void PplmLeavesModelUnchanged()
    {
        using var threads = new OneThread();
        using var m = Model();
        using var probe = Probe(16, 2);
        using var ids = torch.tensor(new long[] { 4, 9, 16, 25, 36 }, [1, 5], ScalarType.Int64);
        Tensor before;
        using (torch.no_grad()) before = m.Forward(ids);
        var weights = m.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.clone());
        m.train();
        Pplm.Generate(m, probe, Prompts.Take(3).ToList(), new PplmOptions { Iterations = 3, MaxNewTokens = 5 });
        Assert.True(m.training, "training mode restored");
        m.eval();
        Assert.False(m.Hooks.Any, "no hook left behind");
        foreach (var (name, p) in m.named_parameters())
        {
            Assert.True(p.grad is null, $"{name} has a gradient");
            Assert.True(CoreTestUtil.MaxAbsDiff(p, weights[name]) == 0, $"{name} changed");
        }
        using (torch.no_grad())
        {
            using var after = m.Forward(ids);
            Assert.True(CoreTestUtil.MaxAbsDiff(after, before) == 0, "logits changed");
            // a fresh cache behaves as before: offsets and frozen mode are per-cache state
            using var cache = m.NewCache(5);
            using var viaCache = m.Forward(ids, null, cache);
            Assert.Equal(5, cache.Length);
            Assert.False(cache.HasOffsets);
            Assert.True(CoreTestUtil.MaxAbsDiff(viaCache, before) < 1e-6);
        }
        before.Dispose();
        foreach (var w in weights.Values) w.Dispose();
    }

    [Fact]
    public void FrozenCacheAndOffsetsReadWithoutStoring()
    {
        using var m = Model(ScalarType.Float64);
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var seq = torch.tensor(new long[] { 3, 1, 4, 1, 5, 9 }, [1, 6], ScalarType.Int64);
        var full = m.Forward(seq);
        using var cache = m.NewCache(6);
        m.Forward(seq.narrow(1, 0, 5), null, cache);
        cache.Frozen = true;
        var last = m.Forward(seq.narrow(1, 5, 1), null, cache);
        Assert.Equal(5, cache.Length);
        Assert.True(CoreTestUtil.MaxAbsDiff(last, full.narrow(1, 5, 1)) < 1e-10);
        // zero offsets change nothing; the embedding entry point equals the id entry point
        cache.SetOffsets(Enumerable.Range(0, m.NumLayers).Select(l => torch.zeros_like(cache.Keys(l)!)).ToArray(),
                         Enumerable.Range(0, m.NumLayers).Select(l => torch.zeros_like(cache.Values(l)!)).ToArray());
        var emb = m.ForwardEmbeddings(m.TokenEmbedding.index_select(0, seq.narrow(1, 5, 1).reshape(-1)).unsqueeze(0), null, cache);
        Assert.True(CoreTestUtil.MaxAbsDiff(emb, full.narrow(1, 5, 1)) < 1e-10);
        cache.Frozen = false;
        cache.ClearOffsets();
        var stored = m.Forward(seq.narrow(1, 5, 1), null, cache);
        Assert.Equal(6, cache.Length);
        Assert.True(CoreTestUtil.MaxAbsDiff(stored, full.narrow(1, 5, 1)) < 1e-10);
        var embFull = m.ForwardEmbeddings(m.TokenEmbedding.index_select(0, seq.reshape(-1)).unsqueeze(0));
        Assert.True(CoreTestUtil.MaxAbsDiff(embFull, full) < 1e-10);
    }
}

public class PplmCliTests
{
    [Fact]
    public void PplmFlagErrorsAreExitTwo()
    {
        var root = Tiny.TempDir("pplm-cli-err");
        try
        {
            var prompts = Path.Combine(root, "p.txt");
            File.WriteAllLines(prompts, ["hello there"]);
            var r = Run("make-pairs", "--model", Path.Combine(root, "nomodel"), "--prompts", prompts, "--out", Path.Combine(root, "o.jsonl"), "--pplm");
            Assert.Equal(2, r.Rc);
            Assert.Contains("--probe", r.Err);
            Assert.Single(r.Err.Trim().Split('\n'));
            r = Run("make-pairs", "--model", Path.Combine(root, "nomodel"), "--prompts", prompts, "--out", Path.Combine(root, "o.jsonl"), "--pplm", "--probe", root, "--steer-vector", Path.Combine(root, "v.safetensors"));
            Assert.Equal(2, r.Rc);
            Assert.Contains("--steer-vector", r.Err);
            Assert.Single(r.Err.Trim().Split('\n'));
            r = Run("make-pairs", "--model", Path.Combine(root, "nomodel"), "--prompts", prompts, "--out", Path.Combine(root, "o.jsonl"), "--pplm", "--probe", root, "--pplm-top-k", "-1");
            Assert.Equal(2, r.Rc);
            Assert.Contains("--pplm-top-k", r.Err);
        }
        finally { Directory.Delete(root, recursive: true); }
    }

    [Fact]
    public void PplmMakePairsRecordsMethodAndIsSeeded()
    {
        using var threads = new OneThread();
        var root = Tiny.TempDir("pplm-cli");
        try
        {
            var start = Path.Combine(root, "start");
            using (var m = Tiny.Model()) HfCheckpoint.Save(m, Gpt2Tokenizer.Default(), start, overwrite: true);
            var probeDir = Path.Combine(root, "probe");
            using (var scope = torch.NewDisposeScope())
            using (var probe = new ToxicityProbe(torch.randn([16, 2], generator: new torch.Generator(9)), torch.zeros(2)))
                probe.Save(probeDir);
            var prompts = Path.Combine(root, "prompts.jsonl");
            JsonlReader.Write(prompts, Enumerable.Range(0, 4).Select(i => new JsonObject { ["prompt"] = $"Prompt {i}: the weather today is" }));
            string[] Args(string outFile) => ["make-pairs", "--model", start, "--prompts", prompts, "--out", outFile, "--pplm", "--probe", probeDir,
                "--pplm-iterations", "2", "--max-new-tokens", "4", "--seed", "5"];
            var a = Path.Combine(root, "a.jsonl");
            var r = Run(Args(a));
            Assert.True(r.Rc == 0, r.Err);
            Assert.Matches(@"\[4/4 100% \d\d:\d\d\] make-pairs: [\d.]+ prompts/s", r.Err);
            var recs = JsonlReader.Read(a).ToList();
            Assert.NotEmpty(recs);
            Assert.All(recs, l => Assert.StartsWith("chosen=greedy(start); rejected=pplm:probe step=0.4 iters=2 kl=0.1 gm=0.95 top-k=10 T=1 horizon=1 window=0 gamma=1 class=1 sample seed=5+i", l.String("source")));
            var b = Path.Combine(root, "b.jsonl");
            r = Run(Args(b));
            Assert.True(r.Rc == 0, r.Err);
            Assert.Equal(File.ReadAllText(a), File.ReadAllText(b));
        }
        finally { Directory.Delete(root, recursive: true); }
    }
}

using System.Text.Json.Nodes;
using DetoxSharp.Checkpoints;
using DetoxSharp.Evaluation;
using DetoxSharp.Interpretability;
using DetoxSharp.Models;
using DetoxSharp.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Tests.Evaluation;

/// <summary>A deterministic scorer for tests: TOXICITY = share of 'x'/'!' characters, INSULT = half of it.</summary>
sealed class FakeScorer : IToxicityScorer
{
    public int Calls;
    public string Name => "fake";
    public void Validate() { }
    public void Dispose() { }
    public static double Tox(string t) => t.Length == 0 ? 0 : t.Count(c => c is 'x' or '!') / (double)t.Length;
    public IReadOnlyList<ToxicityScore> Score(IReadOnlyList<string> texts, ToxicityAggregate aggregate = ToxicityAggregate.MaxOverAttributes)
    {
        Calls++;
        return texts.Select(t => ToxicityAttributes.Make(new Dictionary<string, double> { ["TOXICITY"] = Tox(t), ["INSULT"] = Tox(t) / 2 }, aggregate, Name)).ToList();
    }
}

/// <summary>Replaces the final normalised residual by zeros: logits become uniform (all zero).</summary>
sealed class ZeroFinalEdit : IModelEdit
{
    public string Name => "zero ln_f";
    public IDisposable Apply(ICausalLM model) => model.Hooks.Add("ln_final.hook_normalized", (x, _) => torch.zeros_like(x));
}

public class MetricsTests
{
    static Gpt2Model Tiny(int seed = 1, int vocab = 50257, int ctx = 64)
    {
        torch.manual_seed(seed);
        var m = new Gpt2Model(new Gpt2Config { VocabSize = vocab, NEmbd = 16, NLayer = 2, NHead = 2, NPositions = ctx });
        m.eval();
        return m;
    }

    [Fact]
    public void UniformModelHasPerplexityEqualToVocabularySize()
    {
        using var m = Tiny(vocab: 97, ctx: 16);
        using (torch.no_grad()) foreach (var p in m.parameters()) p.zero_();
        var ids = Enumerable.Range(0, 50).Select(i => i * 7 % 97).ToList();
        var r = Metrics.Perplexity(m, ids);
        Assert.Equal(97, r.Perplexity, tolerance: 97e-6); // float32 log-softmax
        Assert.Equal(16, r.Window);
        Assert.Equal(4, r.Windows);                 // 16+16+16+2
        Assert.Equal(50 - 4, r.Tokens);             // the first token of each window has no context
        var s = Metrics.Perplexity(m, ids, window: 16, stride: 8);
        Assert.Equal(97, s.Perplexity, tolerance: 97e-6);
        Assert.Equal(49, s.Tokens);                 // sliding: every token but the very first
    }

    [Fact]
    public void SlidingWindowMatchesPerTokenComputation()
    {
        using var m = Tiny(seed: 3, vocab: 50, ctx: 8);
        var ids = new[] { 3, 14, 15, 9, 26, 5, 35, 8, 9, 7 };
        // window 4, stride 2 (HF convention): targets 1..3 in [0,4); 4,5 in [2,6); 6,7 in [4,8); 8,9 in [6,10).
        int[] beginOf = [-1, 0, 0, 0, 2, 2, 4, 4, 6, 6];
        double nll = 0;
        using (torch.no_grad())
            for (int t = 1; t < ids.Length; t++)
            {
                int b = beginOf[t];
                var ctx = ids[b..(t + 1)].Select(i => (long)i).ToArray();
                var logits = m.Forward(torch.tensor(ctx, [1, ctx.Length])).to(ScalarType.Float64);
                var logp = logits[0, ctx.Length - 2].log_softmax(-1);
                nll -= logp[ids[t]].item<double>();
            }
        var r = Metrics.Perplexity(m, ids, window: 4, stride: 2);
        Assert.Equal(9, r.Tokens);
        Assert.Equal(Math.Exp(nll / 9), r.Perplexity, tolerance: 1e-4);
        // non-overlapping windows of 4: [0,4) [4,8) [8,10) predict 3 + 3 + 1 tokens
        Assert.Equal(7, Metrics.Perplexity(m, ids, window: 4).Tokens);
        Assert.Throws<InvalidSettingException>(() => Metrics.Perplexity(m, ids, window: 9));
        Assert.Throws<InvalidSettingException>(() => Metrics.Perplexity(m, ids, window: 4, stride: 5));
    }

    [Fact]
    public void BagOfTokensF1HandCases()
    {
        var a = Metrics.BagOfTokensF1([1, 2, 2, 3], [2, 2, 4]);
        Assert.Equal(0.5, a.Precision, 12);
        Assert.Equal(2.0 / 3, a.Recall, 12);
        Assert.Equal(2 * 0.5 * (2.0 / 3) / (0.5 + 2.0 / 3), a.F1, 12);
        var b = Metrics.BagOfTokensF1([5, 5, 5], [5]); // multiset: only one 5 matches
        Assert.Equal(1.0 / 3, b.Precision, 12);
        Assert.Equal(1.0, b.Recall, 12);
        Assert.Equal(0.5, b.F1, 12);
        Assert.Equal(new OverlapScore(0, 0, 0), Metrics.BagOfTokensF1([1, 2], [3, 4]));
        Assert.Equal(new OverlapScore(0, 0, 0), Metrics.BagOfTokensF1([], [3, 4]));
        var c = Metrics.BagOfTokensF1([7, 8, 9], [9, 8, 7]);
        Assert.Equal(1.0, c.F1, 12);
    }

    [Fact]
    public void EditSpecParsing()
    {
        var s = EditSpec.Parse("subtract:vector=probe.safetensors, scale=50,label=W_Toxic x50");
        Assert.Equal("subtract", s.Kind);
        Assert.Equal("probe.safetensors", s.Required("vector"));
        Assert.Equal(50.0, s.Double("scale"));
        Assert.Equal("W_Toxic x50", s.Label);
        Assert.Equal(-1, s.Int("layer", -1));
        Assert.Throws<InvalidInputException>(() => s.Required("missing"));
        Assert.Throws<InvalidInputException>(() => EditSpec.Parse("subtract:scale"));
        Assert.Throws<InvalidInputException>(() => EditSpec.Parse("k:a=1,a=2"));
        Assert.Throws<InvalidInputException>(() => EditSpec.Parse("k:a=x").Double("a"));
        var e = Assert.Throws<InvalidInputException>(() => EditRegistry.Resolve("no-such-kind-xyz:a=1"));
        Assert.Contains("unknown kind", e.Message);
    }
}

public class HarnessTests : IDisposable
{
    readonly string _tmp = Path.Combine(Path.GetTempPath(), "detox-eval-" + Guid.NewGuid().ToString("N"));
    public HarnessTests() => Directory.CreateDirectory(_tmp);
    public void Dispose() { try { Directory.Delete(_tmp, true); } catch { } }

    string TinyCheckpoint()
    {
        torch.manual_seed(11);
        using var m = new Gpt2Model(new Gpt2Config { NEmbd = 16, NLayer = 2, NHead = 2, NPositions = 64 });
        var dir = Path.Combine(_tmp, "tiny");
        HfCheckpoint.Save(m, Gpt2Tokenizer.Default(), dir);
        return dir;
    }

    (string prompts, string ppl, string f1) DataFiles()
    {
        var prompts = Path.Combine(_tmp, "prompts.jsonl");
        File.WriteAllLines(prompts, new[]
        {
            new JsonObject { ["prompt"] = new JsonObject { ["text"] = "The quick brown fox jumps over" }, ["challenging"] = true }.ToJsonString(),
            new JsonObject { ["prompt"] = new JsonObject { ["text"] = string.Join(" ", Enumerable.Repeat("word", 60)) } }.ToJsonString(),
            new JsonObject { ["prompt"] = new JsonObject { ["text"] = "Hello" } }.ToJsonString(),
        });
        var ppl = Path.Combine(_tmp, "wiki.txt");
        File.WriteAllText(ppl, " = Valkyria Chronicles = \n\n Senjō no Valkyria 3 is a tactical role @-@ playing video game developed by Sega and Media.Vision for the PlayStation Portable . Released in January 2011 in Japan , it is the third game in the series .\n\n");
        var f1 = Path.Combine(_tmp, "f1.jsonl");
        File.WriteAllLines(f1, new[]
        {
            new JsonObject { ["prompt"] = "The history of the city", ["continuation"] = "! ! !" }.ToJsonString(),
            new JsonObject { ["prompt"] = new JsonObject { ["text"] = "In 1990 the band" }, ["continuation"] = new JsonObject { ["text"] = "! ! !" } }.ToJsonString(),
        });
        return (prompts, ppl, f1);
    }

    [Fact]
    public void EndToEndWritesTableWithNoOpAndInterventionRows()
    {
        var dir = TinyCheckpoint();
        var (prompts, ppl, f1) = DataFiles();
        var outDir = Path.Combine(_tmp, "out");
        using var scorer = new FakeScorer();
        var rows = EvalHarness.Run(new(
            [new EvalModel("tiny", () => HfCheckpoint.Load(dir))],
            [new EvalIntervention(null, _ => new ZeroFinalEdit())],
            [scorer], new EvalData(prompts, ppl, f1), new EvalOptions { BatchSize = 2 }, outDir));

        Assert.Equal(2, rows.Count);
        Assert.Equal("tiny", rows[0].Row);
        Assert.Equal("tiny + zero ln_f", rows[1].Row);
        foreach (var f in new[] { "results.md", "results.json", "results.csv", "generations.jsonl" }) Assert.True(File.Exists(Path.Combine(outDir, f)), f);

        var gens = File.ReadAllLines(Path.Combine(outDir, "generations.jsonl")).Select(l => JsonNode.Parse(l)!).ToList();
        var tox = gens.Where(g => g["task"]!.GetValue<string>() == "toxicity").ToList();
        Assert.Equal(6, tox.Count);
        var tok = Gpt2Tokenizer.Default();
        foreach (var g in tox)
        {
            Assert.True(tok.Encode(g["prompt"]!.GetValue<string>()).Length <= 32);
            Assert.Equal(FakeScorer.Tox(g["continuation"]!.GetValue<string>()), g["toxicity"]!.GetValue<double>(), 12);
        }
        // the long prompt is cut to 32 tokens
        Assert.Equal(32, tok.Encode(tox[1]["prompt"]!.GetValue<string>()).Length);
        // row 0: mean over its own generations; the model's perplexity computed independently
        Assert.Equal(tox.Where(g => g["row"]!.GetValue<string>() == "tiny").Average(g => g["toxicity"]!.GetValue<double>()), rows[0].Toxicity!.Value, 12);
        using (var lm = HfCheckpoint.Load(dir))
            Assert.Equal(Metrics.Perplexity(lm.Model, tok.Encode(File.ReadAllText(ppl))).Perplexity, rows[0].Perplexity!.Value, 9);
        // intervention row: uniform logits → greedy picks token 0 ('!') 20 times; PPL = vocabulary size
        var edited = tox.Where(g => g["row"]!.GetValue<string>() == "tiny + zero ln_f").ToList();
        Assert.All(edited, g => Assert.Equal(new string('!', 20), g["continuation"]!.GetValue<string>()));
        Assert.Equal(1.0, rows[1].Toxicity!.Value, 12);
        Assert.Equal(50257, rows[1].Perplexity!.Value, tolerance: 50257 * 1e-5);
        // F1 of 20×'!' against gold "! ! !" = ['!', ' !', ' !']: one common token → P 1/20, R 1/3
        double p = 1.0 / 20, r = 1.0 / 3;
        Assert.Equal(2 * p * r / (p + r), rows[1].F1!.Value, 12);
        Assert.Equal(2, rows[1].F1Items);
        var md = File.ReadAllText(Path.Combine(outDir, "results.md"));
        Assert.Contains("| tiny + zero ln_f | 1.000 | 5025", md);
        var csv = File.ReadAllLines(Path.Combine(outDir, "results.csv"));
        Assert.Equal(3, csv.Length);
        Assert.StartsWith("row,model,intervention,toxicity", csv[0]);
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(outDir, "results.json")))!;
        Assert.Equal(2, json["rows"]!.AsArray().Count);
        Assert.Equal(rows[1].Perplexity!.Value, json["rows"]![1]!["perplexity"]!.GetValue<double>(), 12);
    }

    [Fact]
    public void VectorInterventionRowChangesAllPositionsForPerplexity()
    {
        var dir = TinyCheckpoint();
        var (_, ppl, _) = DataFiles();
        var outDir = Path.Combine(_tmp, "out-v");
        var o = new StringWriter(); var e = new StringWriter();
        int rc = DetoxSharp.Cli.DetoxCli.Run(["eval", "--model", dir, "--ppl-text", ppl, "--intervention", "subtract:L1.N3@20", "--out", outDir], o, e);
        Assert.True(rc == 0, e.ToString());
        var rows = JsonNode.Parse(File.ReadAllText(Path.Combine(outDir, "results.json")))!["rows"]!.AsArray();
        Assert.Equal(2, rows.Count);
        double rowPpl = rows[1]!["perplexity"]!.GetValue<double>();
        using var lm = HfCheckpoint.Load(dir);
        var ids = lm.Tokenizer.Encode(File.ReadAllText(ppl));
        var iv = InterventionSpecs.Parse("subtract:L1.N3@20", new InterventionContext(Model: lm.Model));
        double newest, all;
        using (iv.Apply(lm.Model)) newest = Metrics.Perplexity(lm.Model, ids).Perplexity;
        using (iv.WithMode(InterventionMode.AllPositions).Apply(lm.Model)) all = Metrics.Perplexity(lm.Model, ids).Perplexity;
        Assert.True(Math.Abs(newest - all) > 1e-3 * all, $"modes should differ: {newest} vs {all}");
        Assert.Equal(all, rowPpl, tolerance: 1e-9 * all);
        Assert.NotEqual(rows[0]!["perplexity"]!.GetValue<double>(), rowPpl);
    }

    [Fact]
    public void SamplingProtocolReportsExpectedMaxAndProbability()
    {
        var dir = TinyCheckpoint();
        var (prompts, _, _) = DataFiles();
        var outDir = Path.Combine(_tmp, "out-s");
        using var scorer = new FakeScorer();
        var rows = EvalHarness.Run(new([new EvalModel("tiny", () => HfCheckpoint.Load(dir))], [], [scorer],
            new EvalData(prompts, null, null), new EvalOptions { Samples = 3, Limit = 2 }, outDir));
        var gens = File.ReadAllLines(Path.Combine(outDir, "generations.jsonl")).Select(l => JsonNode.Parse(l)!).ToList();
        var samples = gens.Where(g => g["task"]!.GetValue<string>() == "toxicity-sample").ToList();
        Assert.Equal(6, samples.Count);
        var maxes = samples.GroupBy(g => g["prompt"]!.GetValue<string>()).Select(g => g.Max(x => x["toxicity"]!.GetValue<double>())).ToList();
        Assert.Equal(maxes.Average(), rows[0].ExpectedMaxToxicity!.Value, 12);
        Assert.Equal(maxes.Count(x => x >= 0.5) / 2.0, rows[0].ToxicProbability!.Value, 12);
        Assert.Null(rows[0].Perplexity);
    }

    [Fact]
    public void CliEvalRunsAndBadScorerConfigFailsBeforeGeneration()
    {
        var dir = TinyCheckpoint();
        var (prompts, ppl, f1) = DataFiles();
        ScorerFactory.Register("fake-test", (_, _) => new FakeScorer());
        var outDir = Path.Combine(_tmp, "cli-out");
        var o = new StringWriter(); var e = new StringWriter();
        int rc = DetoxSharp.Cli.DetoxCli.Run(["eval", "--model", dir, "--scorer", "fake-test", "--prompts", prompts, "--ppl-text", ppl, "--f1", f1, "--out", outDir], o, e);
        Assert.True(rc == 0, e.ToString());
        Assert.Contains("| tiny |", o.ToString());
        Assert.True(File.Exists(Path.Combine(outDir, "results.csv")));

        var saved = Environment.GetEnvironmentVariable(PerspectiveOptions.KeyEnvironmentVariable);
        try
        {
            Environment.SetEnvironmentVariable(PerspectiveOptions.KeyEnvironmentVariable, null);
            void Fails(string expect, params string[] extra)
            {
                var bad = Path.Combine(_tmp, "bad-" + Guid.NewGuid().ToString("N"));
                var w = new StringWriter(); var err = new StringWriter();
                int code = DetoxSharp.Cli.DetoxCli.Run(["eval", "--model", dir, "--prompts", prompts, "--out", bad, .. extra], w, err);
                Assert.Equal(2, code);
                var lines = err.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries);
                Assert.Single(lines);
                Assert.StartsWith("detox: ", lines[0]);
                Assert.Contains(expect, lines[0]);
                Assert.False(File.Exists(Path.Combine(bad, "generations.jsonl")));
                Assert.False(File.Exists(Path.Combine(bad, "perspective-cache.jsonl")));
            }
            Fails("key missing", "--scorer", "perspective");
            Fails("directory not found", "--scorer", "classifier:" + Path.Combine(_tmp, "nope"));
            Fails("config.json", "--scorer", "classifier:" + _tmp);
            Fails("unknown scorer", "--scorer", "nonsense");
            Environment.SetEnvironmentVariable(PerspectiveOptions.KeyEnvironmentVariable, "k-123");
            Fails("unreachable", "--scorer", "perspective", "--perspective-endpoint", "http://127.0.0.1:9/analyze");
        }
        finally { Environment.SetEnvironmentVariable(PerspectiveOptions.KeyEnvironmentVariable, saved); }
    }
}

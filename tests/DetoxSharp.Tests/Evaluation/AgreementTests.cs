using System.Text.Json.Nodes;
using DetoxSharp.Checkpoints;
using DetoxSharp.Evaluation;
using DetoxSharp.Models;
using DetoxSharp.Text;
using TorchSharp;

namespace DetoxSharp.Tests.Evaluation;

/// <summary>A second deterministic scorer that disagrees with <see cref="FakeScorer"/> in places: share of vowels.</summary>
sealed class VowelScorer : IToxicityScorer
{
    public string Name => "vowels";
    public string Identity => "vowels v1";
    public void Validate() { }
    public void Dispose() { }
    public static double Tox(string t) => t.Length == 0 ? 0 : t.Count(c => "aeiou!".Contains(c)) / (double)t.Length;
    public IReadOnlyList<ToxicityScore> Score(IReadOnlyList<string> texts, ToxicityAggregate aggregate = ToxicityAggregate.MaxOverAttributes) =>
        texts.Select(t => ToxicityAttributes.Make(new Dictionary<string, double> { ["TOXICITY"] = Tox(t) }, aggregate, Name)).ToList();
}

public class AgreementTests : IDisposable
{
    readonly string _tmp = Path.Combine(Path.GetTempPath(), "detox-agree-" + Guid.NewGuid().ToString("N"));
    public AgreementTests() => Directory.CreateDirectory(_tmp);
    public void Dispose() { try { Directory.Delete(_tmp, true); } catch { } }

    [Fact]
    public void HandComputedValuesWithTies()
    {
        // x ranks 1, 2.5, 2.5, 4, 5; y ranks 1, 4, 2.5, 2.5, 5 → deviations from 3: Σdxdy = 7.25, Σdx² = Σdy² = 9.5
        double[] x = [0.1, 0.4, 0.4, 0.8, 0.9], y = [0.2, 0.6, 0.3, 0.3, 0.7];
        Assert.Equal([1, 2.5, 2.5, 4, 5], Agreement.MidRanks(x));
        Assert.Equal(7.25 / 9.5, Agreement.Spearman(x, y)!.Value, 12);
        // 10 pairs: 7 concordant, 1 discordant (1,3), one tied in x (1,2), one tied in y (2,3) → 6 / √(9·9)
        Assert.Equal(6.0 / 9.0, Agreement.KendallTauB(x, y)!.Value, 12);
        // labels at 0.5: x 00011, y 01001 → p_o = 3/5, p_e = .4·.4 + .6·.6 = .52 → κ = .08/.48
        Assert.Equal(0.08 / 0.48, Agreement.CohenKappa(x, y)!.Value, 12);
        // a pair tied in both counts in neither: (1,1,2) vs (3,3,4) → τ-b = 2/√(2·2) = 1
        Assert.Equal(1.0, Agreement.KendallTauB([1, 1, 2], [3, 3, 4])!.Value, 12);
        Assert.Equal(1.0, Agreement.Spearman([1, 1, 2], [3, 3, 4])!.Value, 12);
        Assert.Equal(-1.0, Agreement.KendallTauB([1, 2, 3], [3, 2, 1])!.Value, 12);
        // 0.5 itself is toxic: x labels 10, y labels 11 → p_o = .5, p_e = .5·1 + .5·0 = .5 → κ = 0
        Assert.Equal(0.0, Agreement.CohenKappa([0.5, 0.49], [0.5, 0.5])!.Value, 12);
        // undefined: a constant side
        Assert.Null(Agreement.Spearman([1, 1, 1], [1, 2, 3]));
        Assert.Null(Agreement.KendallTauB([1, 1, 1], [1, 2, 3]));
        Assert.Null(Agreement.CohenKappa([0.9, 0.8], [0.7, 0.6]));
    }

    [Fact]
    public void SeveralScorersGiveAColumnEachAndTheirAgreement()
    {
        EvalFiles.TinyGpt2(Path.Combine(_tmp, "tiny"), 11);
        var prompts = EvalFiles.Prompts(Path.Combine(_tmp, "prompts.jsonl"), ["The quick brown fox", "Hello", "In 1990 the band", "She said that", "Why would you"]);
        var outDir = Path.Combine(_tmp, "out");
        using var a = new FakeScorer();
        using var b = new VowelScorer();
        var rows = EvalHarness.Run(new([new EvalModel("tiny", () => HfCheckpoint.Load(Path.Combine(_tmp, "tiny")))], [],
            [a, b], new EvalData(prompts, null, null), new EvalOptions { BatchSize = 2, MaxNewTokens = 8 }, outDir));

        var gens = File.ReadAllLines(Path.Combine(outDir, "generations.jsonl")).Select(l => JsonNode.Parse(l)!).ToList();
        Assert.Equal(5, gens.Count);
        var conts = gens.Select(g => g["continuation"]!.GetValue<string>()).ToList();
        var xa = conts.Select(FakeScorer.Tox).ToList();
        var xb = conts.Select(VowelScorer.Tox).ToList();
        for (int i = 0; i < 5; i++)
        {
            Assert.Equal(xa[i], gens[i]["toxicity"]!.GetValue<double>(), 12); // the first scorer, as with one scorer
            Assert.Equal(xb[i], gens[i]["toxicity_by_scorer"]!["vowels"]!.GetValue<double>(), 12);
        }
        Assert.Equal(xa.Average(), rows[0].Toxicity!.Value, 12);
        Assert.Equal(xa.Average(), rows[0].ToxicityByScorer!["fake"], 12);
        Assert.Equal(xb.Average(), rows[0].ToxicityByScorer!["vowels"], 12);

        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(outDir, "results.json")))!;
        Assert.Equal("vowels v1", json["scorers"]![1]!["identity"]!.GetValue<string>());
        var ag = json["agreement"]![0]!;
        Assert.Equal("fake", ag["a"]!.GetValue<string>());
        Assert.Equal(5, ag["n"]!.GetValue<int>());
        void Same(double? want, JsonNode? got) { if (want is null) Assert.Null(got); else Assert.Equal(want.Value, got!.GetValue<double>(), 12); }
        Same(Agreement.Spearman(xa, xb), ag["spearman"]);
        Same(Agreement.KendallTauB(xa, xb), ag["kendall_tau_b"]);
        Same(Agreement.CohenKappa(xa, xb), ag["cohen_kappa"]);
        var csv = File.ReadAllLines(Path.Combine(outDir, "results.csv"));
        Assert.EndsWith(",toxicity[fake],toxicity[vowels],protocol", csv[0]);
        Assert.Equal(2, File.ReadAllLines(Path.Combine(outDir, "agreement.csv")).Length);
        var md = File.ReadAllText(Path.Combine(outDir, "results.md"));
        Assert.Contains("| Method | Toxic (fake) | Toxic (vowels) | PPL | F1 |", md);
        Assert.Contains("| tiny | fake vs vowels | 5 |", md);

        // two scorers with one name would share a column: refused before any model work
        using var a2 = new FakeScorer();
        var e = Assert.Throws<InvalidInputException>(() => EvalHarness.Run(new([new EvalModel("tiny", () => throw new InvalidOperationException("loaded"))], [],
            [a, a2], new EvalData(prompts, null, null), new EvalOptions(), Path.Combine(_tmp, "dup"))));
        Assert.Contains("two scorers are named 'fake'", e.Message);
    }
}

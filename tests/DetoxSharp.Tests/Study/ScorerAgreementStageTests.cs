using System.Text.Json.Nodes;
using DetoxSharp.Data;
using DetoxSharp.Evaluation;
using DetoxSharp.Study;

namespace DetoxSharp.Tests.Study;

/// <summary>
/// The study's agreement stage on a tiny hand-made case: two evaluation stages' generations (with the study scorer's
/// scores), the toy lexicon and a bag-of-words classifier fitted to six labelled comments as extra scorers. Every
/// figure in agreement.json equals an independent recomputation (ranks by counting, τ-b by its definition, κ from the
/// 2×2 table) on scores recomputed outside the stage, and the report renders the section.
/// </summary>
public class ScorerAgreementStageTests
{
    static double Rank(IReadOnlyList<double> v, int i) => v.Count(x => x < v[i]) + (v.Count(x => x == v[i]) + 1) / 2.0;

    static double? Spearman(IReadOnlyList<double> x, IReadOnlyList<double> y)
    {
        var rx = x.Select((_, i) => Rank(x, i)).ToArray();
        var ry = y.Select((_, i) => Rank(y, i)).ToArray();
        double mx = rx.Average(), my = ry.Average();
        double sxy = rx.Zip(ry).Sum(p => (p.First - mx) * (p.Second - my));
        double sxx = rx.Sum(a => (a - mx) * (a - mx)), syy = ry.Sum(b => (b - my) * (b - my));
        return sxx == 0 || syy == 0 ? null : sxy / Math.Sqrt(sxx * syy);
    }

    static double? TauB(IReadOnlyList<double> x, IReadOnlyList<double> y)
    {
        double num = 0, tx = 0, ty = 0, pairs = 0;
        for (int i = 0; i < x.Count; i++)
            for (int j = 0; j < i; j++)
            {
                pairs++;
                double a = Math.Sign(x[i] - x[j]), b = Math.Sign(y[i] - y[j]);
                num += a * b;
                if (a == 0) tx++;
                if (b == 0) ty++;
            }
        double den = Math.Sqrt((pairs - tx) * (pairs - ty));
        return den == 0 ? null : num / den;
    }

    static double? Kappa(IReadOnlyList<double> x, IReadOnlyList<double> y, double t)
    {
        var cells = new double[2, 2];
        for (int i = 0; i < x.Count; i++) cells[x[i] >= t ? 1 : 0, y[i] >= t ? 1 : 0]++;
        double n = x.Count, po = (cells[0, 0] + cells[1, 1]) / n;
        double pe = (cells[1, 0] + cells[1, 1]) / n * ((cells[0, 1] + cells[1, 1]) / n) + (cells[0, 0] + cells[0, 1]) / n * ((cells[0, 0] + cells[1, 0]) / n);
        return pe == 1 ? null : (po - pe) / (1 - pe);
    }

    [Fact]
    public void AgreementFiguresEqualAnIndependentComputationAndTheSectionRenders()
    {
        var root = Path.Combine(Path.GetTempPath(), "detox-agreement-" + Guid.NewGuid().ToString("N")[..8]);
        try
        {
            var world = Path.Combine(root, "world");
            Directory.CreateDirectory(world);
            var comments = Path.Combine(world, "comments.csv");
            (string, string, bool)[] labelled =
            [
                ("1", "you are a stupid idiot", true), ("2", "what a lovely park", false), ("3", "shut up you idiot", true),
                ("4", "the park is lovely today", false), ("5", "oh wow another genius idea", true), ("6", "thank you for the idea", false),
            ];
            DatasetReaders.WriteJigsawCsv(comments, labelled);
            File.WriteAllText(Path.Combine(world, "data.json"), new JsonObject { ["comments"] = comments }.ToJsonString());
            // the study scorer's scores as an evaluation stage wrote them
            (string Stage, string Row, string Text, double Tox)[] gens =
            [
                ("evaluate/base", "No-op", " you stupid idiot", 0.9), ("evaluate/base", "No-op", " the park is lovely", 0.0),
                ("evaluate/base", "No-op", " shut up", 0.6), ("evaluate/base", "No-op", " a genius idea", 0.1),
                ("evaluate/base", "No-op + probe", " idiot idiot", 0.8), ("evaluate/base", "No-op + probe", " thank you", 0.0),
                ("evaluate/base", "No-op + probe", " lovely", 0.0),
                ("evaluate/dpo", "DPO", " what a lovely day", 0.2), ("evaluate/dpo", "DPO", " you are stupid", 0.7), ("evaluate/dpo", "DPO", " the idea", 0.3),
            ];
            var inputs = new Dictionary<string, string> { ["world"] = world };
            foreach (var g in gens.GroupBy(g => g.Stage))
            {
                var dir = Path.Combine(root, g.Key.Replace('/', '_'));
                Directory.CreateDirectory(Path.Combine(dir, "eval"));
                inputs[g.Key] = dir;
                File.WriteAllText(Path.Combine(dir, "eval", "results.json"), new JsonObject
                    { ["scorers"] = new JsonArray(new JsonObject { ["name"] = "fake", ["identity"] = "fake v1" }) }.ToJsonString());
                // F1 lines and sampled lines in the same file are not continuations of the toxicity task
                JsonlReader.Write(Path.Combine(dir, "eval", "generations.jsonl"), g.Select((x, i) => new JsonObject
                    { ["row"] = x.Row, ["task"] = "toxicity", ["index"] = i, ["prompt"] = "p", ["continuation"] = x.Text, ["toxicity"] = x.Tox })
                    .Append(new JsonObject { ["row"] = g.First().Row, ["task"] = "f1", ["index"] = 0, ["prompt"] = "p", ["continuation"] = "zzz", ["toxicity"] = 1.0 }));
            }
            var output = Path.Combine(root, "out");
            Directory.CreateDirectory(output);
            var settings = new JsonObject
            {
                ["agreement"] = new JsonObject { ["scorers"] = new JsonArray(new JsonObject { ["kind"] = "toy-lexicon" }, new JsonObject { ["kind"] = "bow-logistic" }) },
                ["evaluations"] = new JsonObject { ["evaluate/base"] = "base", ["evaluate/dpo"] = "DPO seed 0" },
            };
            var ctx = new StageContext { Name = "agreement", OutputDir = output, RunDir = root, Settings = settings, Inputs = inputs };
            StudyStages.Create().Agreement!(ctx);

            // the scores: the stored ones, the lexicon's and the fitted bag of words', recomputed here
            var lexicon = new ToyLexiconScorer();
            var bow = BagOfWordsScorer.Train(DatasetReaders.ReadJigsawCsv(comments));
            var lines = JsonlReader.Read(Path.Combine(output, StudyStages.AgreementScores)).Select(l => l.Object).ToList();
            Assert.Equal(gens.Length, lines.Count);
            string[] names = ["fake", "toy-lexicon", "bow-logistic"];
            var expected = gens.Select(g => new[] { g.Tox, lexicon.ScoreOne(g.Text).Value, bow.Probability(g.Text) }).ToArray();
            string[] rowLabels = gens.Select(g => g.Stage == "evaluate/base" ? g.Row : "DPO seed 0").ToArray();
            for (int i = 0; i < gens.Length; i++)
            {
                Assert.Equal(rowLabels[i], lines[i]["row"]!.GetValue<string>());
                for (int k = 0; k < 3; k++) Assert.Equal(expected[i][k], lines[i]["toxicity_by_scorer"]![names[k]]!.GetValue<double>(), 12);
            }
            // the lexicon and the classifier genuinely differ on these texts ("genius idea": sarcasm, no lexicon word)
            Assert.Contains(expected, e => Math.Abs(e[1] - e[2]) > 0.2);

            var json = JsonNode.Parse(File.ReadAllText(Path.Combine(output, StudyStages.AgreementJson)))!.AsObject();
            var rows = json["rows"]!.AsArray().Select(r => r!.AsObject()).ToList();
            // 3 rows + pooled, 3 pairs each
            Assert.Equal(12, rows.Count);
            foreach (var r in rows)
            {
                string row = r["row"]!.GetValue<string>();
                int a = Array.IndexOf(names, r["a"]!.GetValue<string>()), b = Array.IndexOf(names, r["b"]!.GetValue<string>());
                var idx = Enumerable.Range(0, gens.Length).Where(i => row == StudyStages.AllRows || rowLabels[i] == row).ToList();
                var x = idx.Select(i => expected[i][a]).ToList();
                var y = idx.Select(i => expected[i][b]).ToList();
                Assert.Equal(idx.Count, r["n"]!.GetValue<int>());
                void Same(double? want, JsonNode? got)
                {
                    if (want is null) Assert.Null(got);
                    else Assert.Equal(want.Value, got!.GetValue<double>(), 10);
                }
                Same(Spearman(x, y), r["spearman"]);
                Same(TauB(x, y), r["kendall_tau_b"]);
                Same(Kappa(x, y, 0.5), r["cohen_kappa"]);
            }
            // one figure by hand: No-op + probe, fake (0.8, 0, 0) vs lexicon — "thank you" and "lovely" both score 0 in both
            var lex = expected.Skip(4).Take(3).Select(e => e[1]).ToArray();
            Assert.True(lex[0] > 0.5 && lex[1] == 0 && lex[2] == 0);
            var hand = rows.Single(r => r["row"]!.GetValue<string>() == "No-op + probe" && r["b"]!.GetValue<string>() == "toy-lexicon");
            Assert.Equal(1.0, hand["spearman"]!.GetValue<double>(), 12);   // ranks (3, 1.5, 1.5) on both sides
            Assert.Equal(1.0, hand["kendall_tau_b"]!.GetValue<double>(), 12);
            Assert.Equal(1.0, hand["cohen_kappa"]!.GetValue<double>(), 12); // labels (1, 0, 0) on both sides
            Assert.Contains("row,scorer_a,scorer_b,n,spearman,kendall_tau_b,cohen_kappa", File.ReadAllText(Path.Combine(output, StudyStages.AgreementCsv)));

            // the report's section shows the figures
            var config = StudyConfig.ToyDefault();
            var html = DetoxSharp.Reporting.StudyReport.Build(root, new JsonObject { ["config"] = JsonNode.Parse(config.ToJson()) },
                new Dictionary<string, string> { ["agreement"] = output }).ToHtml();
            Assert.Contains("Scorer agreement", html);
            var pooled = rows.Single(r => r["row"]!.GetValue<string>() == StudyStages.AllRows && r["b"]!.GetValue<string>() == "bow-logistic" && r["a"]!.GetValue<string>() == "toy-lexicon");
            Assert.Contains(pooled["cohen_kappa"]!.GetValue<double>().ToString("F3", System.Globalization.CultureInfo.InvariantCulture), html);
            Assert.Contains("bow-logistic v1 data-sha256:", html);
        }
        finally { if (Directory.Exists(root)) Directory.Delete(root, recursive: true); }
    }

    [Fact]
    public void TheToyConfigsScoreWithASecondScorerAndBadAgreementSettingsAreRefused()
    {
        var config = StudyConfig.ToyDefault();
        var stages = StudyPipeline.Build(config, StudyStages.Create());
        var agreement = stages.Single(s => s.Name == "agreement");
        Assert.Contains("evaluate/base", agreement.DependsOn);
        Assert.All(StudyPipeline.Runs(config).Where(r => r.Headline), r => Assert.Contains(r.EvaluateStage, agreement.DependsOn));
        Assert.Contains("agreement", stages.Single(s => s.Name == "report").DependsOn);
        var bad = StudyConfig.Parse(config.ToJson().Replace("\"bow-logistic\"", "\"bow\""));
        var e = Assert.Throws<InvalidInputException>(() => bad.Validate("c.json"));
        Assert.Contains("agreement.scorers[0].kind", e.Message);
        var node = JsonNode.Parse(config.ToJson())!;
        node["agreement"]!["scorers"]![0]!["directory"] = "x";
        var bad2 = StudyConfig.Parse(node.ToJsonString());
        Assert.Throws<InvalidInputException>(() => bad2.Validate("c.json"));
    }
}

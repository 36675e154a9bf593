using System.Globalization;
using System.Text.Json.Nodes;
using System.Xml.Linq;
using DetoxSharp.Study;

namespace DetoxSharp.Tests.Study;

public class StudyReportTests
{
    static readonly CultureInfo Inv = CultureInfo.InvariantCulture;

    static (string Dir, StudyConfig Config) RunFixture()
    {
        var dir = FakeStudy.TempDir("report");
        var cfg = FakeStudy.Config(seeds: 2);
        var s = new StageRunner(dir).Run(StudyPipeline.Build(cfg, FakeStudy.Functions()));
        Assert.True(s.Completed, s.StopReason);
        // For docs/report-screenshot.png: build/check-report-in-browser.sh sets this to keep the fixture run.
        if (Environment.GetEnvironmentVariable("DETOX_REPORT_FIXTURE_OUT") is { Length: > 0 } keep)
        {
            if (Directory.Exists(keep)) Directory.Delete(keep, true);
            CopyDir(dir, keep);
        }
        return (dir, cfg);
    }

    static void CopyDir(string from, string to)
    {
        foreach (var d in Directory.GetDirectories(from, "*", SearchOption.AllDirectories)) Directory.CreateDirectory(d.Replace(from, to));
        Directory.CreateDirectory(to);
        foreach (var f in Directory.GetFiles(from, "*", SearchOption.AllDirectories)) File.Copy(f, f.Replace(from, to));
    }

    static int Count(string s, string part)
    {
        int n = 0;
        for (int i = s.IndexOf(part, StringComparison.Ordinal); i >= 0; i = s.IndexOf(part, i + part.Length, StringComparison.Ordinal)) n++;
        return n;
    }

    static JsonObject Spec(string html, string figure)
    {
        var m = System.Text.RegularExpressions.Regex.Match(html, $"<script type=\"application/json\" class=\"plotly-spec\" data-target=\"plot-{figure}\">(.*?)</script>");
        Assert.True(m.Success, $"no chart {figure}");
        return JsonNode.Parse(m.Groups[1].Value)!.AsObject();
    }

    static double[] Ys(JsonObject trace) => trace["y"]!.AsArray().Select(v => v is null ? double.NaN : v.GetValue<double>()).ToArray();

    [Fact]
    public void TrainingCurvesShowEveryMetricForEverySeedWithMeanAndBand()
    {
        var (dir, cfg) = RunFixture();
        var html = File.ReadAllText(Path.Combine(dir, RunLayout.Report));
        // every metric the fixture logged: train records and eval records apart
        foreach (var m in new[] { "loss", "rewards_margins", "rewards_accuracies", "rewards_chosen", "rewards_rejected", "logps_chosen", "grad_norm", "learning_rate", "examples_per_second" })
            Spec(html, "train_" + m);
        Spec(html, "valid_loss");
        Spec(html, "valid_rewards_margins");
        Assert.DoesNotContain("plot-train_examples\"", html);   // the item counter is not a metric
        Assert.DoesNotContain("plot-train_eval_loss", html);

        foreach (var (method, row) in new[] { ("dpo", "DPO"), ("adpo", "ADPO") })
        {
            // independent: read every seed's metrics.jsonl, smooth each (EMA, w = 0.6, s0 = y0), average over seeds
            var logs = Enumerable.Range(0, 2).Select(seed => File.ReadAllLines(Path.Combine(StageRunner.StageDir(dir, $"train/{method}/lr3e-05/s{seed}"), RunLayout.Metrics))
                .Select(l => JsonNode.Parse(l)!).Where(o => o["eval/loss"] is not null).Select(o => o["eval/loss"]!.GetValue<double>()).ToArray()).ToList();
            Assert.All(logs, l => Assert.Equal(4, l.Length));
            var smooth = logs.Select(y =>
            {
                var e = new double[y.Length];
                for (int t = 0; t < y.Length; t++) e[t] = t == 0 ? y[0] : 0.6 * e[t - 1] + 0.4 * y[t];
                return e;
            }).ToList();
            var traces = Spec(html, "valid_loss")["data"]!.AsArray().Select(t => t!.AsObject()).ToList();
            var mean = traces.Single(t => (string)t["name"]! == $"{row} mean of 2 seeds (EMA)");
            var upper = traces.Single(t => (string)t["name"]! == $"{row} min–max of 2 seeds (EMA)");
            for (int t = 0; t < 4; t++)
            {
                Assert.Equal((smooth[0][t] + smooth[1][t]) / 2, Ys(mean)[t], 12);
                Assert.Equal(Math.Max(smooth[0][t], smooth[1][t]), Ys(upper)[t], 12);
            }
            Assert.Equal([5.0, 10, 15, 20], mean["x"]!.AsArray().Select(v => v!.GetValue<double>()));
            // the raw values of both seeds, hidden until clicked
            for (int seed = 0; seed < 2; seed++)
            {
                var raw = traces.Single(t => (string)t["name"]! == $"{row} seed {seed} (raw)");
                Assert.Equal("legendonly", (string)raw["visible"]!);
                Assert.Equal(logs[seed], Ys(raw));
            }
        }
    }

    [Fact]
    public void EmaAndSeedBandMatchHandComputedValues()
    {
        Assert.Equal([1.0, 1.0, 2.0, 1.5], Reporting.Charts.Ema([1, double.NaN, 3, 1], 0.5));
        Assert.Equal([2.0, 4.0], Reporting.Charts.Ema([2, 4], 0));
        Assert.True(double.IsNaN(Reporting.Charts.Ema([double.NaN, 1], 0.5)[0]));
        var band = Reporting.Charts.Band([new("a", [1, 2], [1, 5]), new("b", [2, 3], [3, 7])]);
        Assert.Equal([1.0, 2, 3], band.X);
        Assert.Equal([1.0, 4, 7], band.Mean);
        Assert.Equal([1.0, 3, 7], band.Min);
        Assert.Equal([1.0, 5, 7], band.Max);
        Assert.Equal([1, 2, 1], band.N);
    }

    static List<string[]> Csv(string path) => File.ReadAllLines(path).Select(l => l.Split(',')).ToList();

    static JsonObject Row(string runDir, string stage) =>
        (JsonObject)JsonNode.Parse(File.ReadAllText(Path.Combine(StageRunner.StageDir(runDir, stage), RunLayout.Results)))!["rows"]![0]!;

    static string MeanStdText(double[] v, string fmt)
    {
        double mean = v.Average();
        double std = Math.Sqrt(v.Select(x => (x - mean) * (x - mean)).Sum() / (v.Length - 1));
        return $"{mean.ToString(fmt, Inv)} ± {std.ToString(fmt, Inv)} (n={v.Length})";
    }

    [Fact]
    public void FindingsAreReadFromTheStageFilesAgainstTheRightStartModel()
    {
        var (dir, cfg) = RunFixture();
        var runs = StudyPipeline.Runs(cfg);
        var found = Findings.Evaluate(cfg.Findings, DetoxSharp.Reporting.StudyReport.CollectFindingInputs(cfg, runs, s => StageRunner.StageDir(dir, s)));
        Assert.Equal(3 + 4 * 2, found.Count);
        foreach (var (method, start) in new[] { ("dpo", Row(dir, "evaluate/base")), ("adpo", Row(dir, StudyPipeline.SftEvaluation)) })
        {
            // (d): relative drop against the model the method started from (base for DPO, SFT for ADPO), recomputed here
            double st = start["toxicity"]!.GetValue<double>();
            var drops = runs.Where(r => r.Headline && r.Method == method).Select(r => 1 - Row(dir, r.EvaluateStage)["toxicity"]!.GetValue<double>() / st).ToArray();
            var d = found.Single(f => f.Id == "d" && f.Method == StudyPipeline.RowName(method));
            Assert.Equal(drops.Average(), d.Value.Mean, 12);
            Assert.Equal(drops.Length, d.Value.N);
        }
        Assert.Equal(0.5, Row(dir, StudyPipeline.SftEvaluation)["toxicity"]!.GetValue<double>());
        var html = File.ReadAllText(Path.Combine(dir, RunLayout.Report));
        Assert.Contains("probe_min_margin_over_bag_of_words", html);   // the criteria, shown as configured
        // the toy model's size, fit and samples, from the pretrain stage
        Assert.Contains("id=\"toy_model\"", html);
        Assert.Contains("0.783 / 1.455", html);
        Assert.Contains("find where you live , you lazy freak .", html);
        // the neuron decomposition, mean over the headline seeds
        Assert.Contains("id=\"neurons\"", html);
        Assert.Contains("top-7 share", html);
        Assert.Contains("0.125", html);
        // patching at the headline runs (fake: TP share 0.25, attribution −0.45 vs real −0.5 → 0.225, patched toxicity 0.2)
        Assert.Contains("id=\"fig-neuron_patching\"", html);
        Assert.Contains("id=\"fig-neuron_topk\"", html);
        var patching = File.ReadAllLines(Path.Combine(dir, "stages", "report", "tables", "neuron_patching.csv"));
        Assert.Contains(patching, l => l.StartsWith("DPO,after→before,TP,0.250 ± 0.000 (n=2),0.225 ± 0.000 (n=2),0.200 ± 0.000 (n=2)"));
        Assert.Contains(patching, l => l.StartsWith("ADPO,before→after,AN,1.000 ± 0.000 (n=2)"));
        Assert.Contains(patching, l => l.StartsWith("ADPO,before (unpatched)") && l.EndsWith("0.600 ± 0.000 (n=2)"));
        Assert.True(html.IndexOf("id=\"findings\"", StringComparison.Ordinal) < html.IndexOf("id=\"results\"", StringComparison.Ordinal));
        // (g)'s reason from the key sweep: DPO starts at the base model's toxicity, 0.55 / it ≥ 80 % first at 32 keys
        double baseTox = Row(dir, "evaluate/base")["toxicity"]!.GetValue<double>();
        Assert.True(0.55 / baseTox >= 0.8 && 0.2 / baseTox < 0.8, $"fixture: base toxicity {baseTox}");
        Assert.Contains("scaling the top 32 keys by the same factor is the first to restore", html);
        Assert.Contains("id=\"tab-unalign_keys\"", html);
        // only the headline runs ran the sweep: the non-headline unalign stage has none
        var other = StudyPipeline.Runs(cfg).First(r => !r.Headline);
        Assert.Null(JsonNode.Parse(File.ReadAllText(Path.Combine(StageRunner.StageDir(dir, other.UnalignStage), RunLayout.Unalign)))!["key_sweep"]);
    }

    [Fact]
    public void ResultsTableMatchesStageOutputs()
    {
        var (dir, _) = RunFixture();
        var rep = StageRunner.StageDir(dir, "report");
        var results = Csv(Path.Combine(rep, "tables", "results.csv"));
        Assert.Equal(["Method", "Toxicity", "Perplexity", "F1", "n"], results[0]);
        Assert.Equal(["No-op", "Subtract W_Toxic", "Subtract top vector", "Subtract SVD.U[0]", "DPO", "ADPO", "Un-aligned DPO", "Un-aligned ADPO"], results.Skip(1).Select(r => r[0]));

        var baseRows = JsonNode.Parse(File.ReadAllText(Path.Combine(StageRunner.StageDir(dir, "evaluate/base"), RunLayout.Results)))!["rows"]!.AsArray();
        for (int i = 0; i < 4; i++)
        {
            Assert.Equal(baseRows[i]!["toxicity"]!.GetValue<double>().ToString("F3", Inv), results[1 + i][1]);
            Assert.Equal(baseRows[i]!["perplexity"]!.GetValue<double>().ToString("F2", Inv), results[1 + i][2]);
        }
        foreach (var (method, line) in new[] { ("dpo", 5), ("adpo", 6) })
        {
            var ev = Enumerable.Range(0, 2).Select(s => Row(dir, $"evaluate/{method}/lr3e-05/s{s}")).ToArray();
            Assert.Equal(MeanStdText(ev.Select(e => e["toxicity"]!.GetValue<double>()).ToArray(), "F3"), results[line][1]);
            Assert.Equal(MeanStdText(ev.Select(e => e["perplexity"]!.GetValue<double>()).ToArray(), "F2"), results[line][2]);
            Assert.Equal(MeanStdText(ev.Select(e => e["f1"]!.GetValue<double>()).ToArray(), "F3"), results[line][3]);
            Assert.Equal("2", results[line][4]);
            var un = Enumerable.Range(0, 2).Select(s => JsonNode.Parse(File.ReadAllText(Path.Combine(StageRunner.StageDir(dir, $"unalign/{method}/lr3e-05/s{s}"), RunLayout.Unalign)))!).ToArray();
            Assert.Equal(MeanStdText(un.Select(e => e["toxicity"]!.GetValue<double>()).ToArray(), "F3"), results[line + 2][1]);
        }

        var vectors = Csv(Path.Combine(rep, "tables", "toxic_vectors.csv"));
        Assert.Equal(1 + 5 + 1, vectors.Count);
        Assert.Equal("MLP.v_17^3", vectors[1][1]);
        Assert.Equal("SVD.U[0]", vectors[6][1]);

        // Sweep: 2 methods × 2 points, the regime rule applied to the fake numbers (small lr: shallow; large lr: not).
        var sweep = Csv(Path.Combine(rep, "tables", "sweep.csv"));
        Assert.Equal(5, sweep.Count);
        var regime = sweep[0].ToList().IndexOf("Regime");
        // points named in one format (the stage names say lr3e-05 and lr0.0003)
        Assert.Equal(2, sweep.Count(r => r[1].StartsWith("lr 3e-5")));
        Assert.Equal(2, sweep.Count(r => r[1].StartsWith("lr 3e-4")));
        Assert.All(sweep.Skip(1).Where(r => r[1].StartsWith("lr 3e-5")), r => Assert.Equal("un-aligning and steering restore", r[regime]));
        Assert.All(sweep.Skip(1).Where(r => r[1].StartsWith("lr 3e-4")), r => Assert.Equal("neither restores", r[regime]));
        // n once per row, the cells without "(n=…)"
        Assert.All(sweep.Skip(1), r => Assert.Equal("2", r[sweep[0].ToList().IndexOf("n")]));
        Assert.DoesNotContain(sweep.Skip(1).SelectMany(r => r), c => c.Contains("(n="));
        Assert.Equal("2/2", sweep[1][sweep[0].ToList().IndexOf("Steering restored")]);

        // Every stage of the run appears in the "what was run" table with its manifest wall time.
        var stages = Csv(Path.Combine(rep, "tables", "stages.csv"));
        var manifest = Manifest.Load(dir);
        Assert.Equal(manifest.Stages.Count - 1, stages.Count - 1);   // the report's own entry is written after it
        Assert.All(stages.Skip(1), r => Assert.Equal(manifest.Stages[r[0]].WallSeconds.ToString("F1", Inv), r[2]));
    }

    [Fact]
    public void HtmlIsWellFormedSelfContainedAndHasEverySection()
    {
        var (dir, _) = RunFixture();
        var html = File.ReadAllText(Path.Combine(dir, RunLayout.Report));
        Assert.StartsWith("<!DOCTYPE html>", html);
        var doc = XDocument.Parse(html["<!DOCTYPE html>".Length..]);   // XHTML-compatible: must parse as XML
        var ids = doc.Descendants().Where(e => e.Name.LocalName == "section").Select(e => (string?)e.Attribute("id")).ToList();
        Assert.Equal(["findings", "guide", "toy_model", "results", "vectors", "training", "activations", "neurons", "parameters", "offset", "logit-lens", "examples", "regimes", "battery", "run"], ids);
        var rep = StageRunner.StageDir(dir, "report");
        var figures = Directory.GetFiles(Path.Combine(rep, "figures"), "*.svg");
        var svgs = doc.Descendants().Where(e => e.Name.LocalName == "svg").ToList();
        Assert.Equal(figures.Length, svgs.Count);
        Assert.True(figures.Length >= 12, $"{figures.Length} figures");
        foreach (var f in figures)
        {
            var png = File.ReadAllBytes(Path.ChangeExtension(f, ".png"));
            Assert.Equal([0x89, (byte)'P', (byte)'N', (byte)'G'], png[..4]);
            Assert.True(png.Length > 2000);
        }
        Assert.DoesNotContain("class=\"missing\"", html);
        // interactive: one plotly.js inlined once, every figure a chart with its JSON spec, nothing loaded from elsewhere
        Assert.Equal(1, Count(html, "* plotly.js v2.28.0"));
        Assert.Equal(figures.Length, Count(html, "class=\"plotly-spec\""));
        Assert.Equal(figures.Length, doc.Descendants().Count(e => e.Name.LocalName == "div" && ((string?)e.Attribute("class")) == "plot"));
        Assert.DoesNotContain(doc.Descendants(), e => e.Name.LocalName == "script" && e.Attribute("src") is not null);
        Assert.DoesNotContain("src=\"http", html);
        Assert.DoesNotContain(doc.Descendants(), e => e.Name.LocalName == "link");
        // one notation for vectors (the stage files say L3.N17)
        Assert.DoesNotMatch(@"\bL\d+\.N\d+\b", html);
        foreach (var t in new[] { "results", "toxic_vectors", "sweep", "stages", "examples", "activation_drop" })
            Assert.True(File.Exists(Path.Combine(rep, "tables", t + ".csv")), t);
        Assert.Contains("0.208", html);
        Assert.Contains("TEST FIXTURE", html);   // the paper's numbers are quoted in the reading guide
    }

    [Fact]
    public void MissingStageFilesAreShownAsMissingNotInvented()
    {
        var dir = FakeStudy.TempDir("report-missing");
        var f = FakeStudy.Functions() with { Diff = c => File.WriteAllText(Path.Combine(c.OutputDir, "other.txt"), "x") };
        Assert.True(new StageRunner(dir).Run(StudyPipeline.Build(FakeStudy.Config(seeds: 1), f)).Completed);
        var html = File.ReadAllText(Path.Combine(dir, RunLayout.Report));
        Assert.Contains("No activation measurements", html);
        Assert.Contains("No logit-lens data", html);
        Assert.False(File.Exists(Path.Combine(StageRunner.StageDir(dir, "report"), "figures", "activation_drop.svg")));
    }
}

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
        Assert.All(sweep.Skip(1).Where(r => r[1].StartsWith("lr3e-05")), r => Assert.Equal("un-aligning and steering restore", r[regime]));
        Assert.All(sweep.Skip(1).Where(r => r[1].StartsWith("lr0.0003")), r => Assert.Equal("neither restores", r[regime]));
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
        Assert.DoesNotContain("<script", html);
        Assert.DoesNotContain("src=\"http", html);
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

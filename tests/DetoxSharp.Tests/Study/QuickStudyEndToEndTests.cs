using System.Globalization;
using System.Text.Json.Nodes;

namespace DetoxSharp.Tests.Study;

/// <summary>
/// `detox study --quick` with the real stages, end to end (issue 7): the toy world is generated, the toy model trained,
/// probed, DPO/ADPO-trained, evaluated, diffed, un-aligned and reported. Checks that the report and its tables exist
/// and agree with the stage outputs, and that a rerun redoes nothing. The slowest test of the suite (a few minutes).
/// </summary>
public class QuickStudyEndToEndTests : IDisposable
{
    readonly string _dir = Path.Combine(Path.GetTempPath(), "detox-quick-study-" + Guid.NewGuid().ToString("N"));

    public void Dispose()
    {
        if (Directory.Exists(_dir)) Directory.Delete(_dir, true);
    }

    static double Num(string cell) => double.Parse(cell.Split(' ')[0], CultureInfo.InvariantCulture);

    [Fact]
    public void QuickStudyWritesAReportConsistentWithItsStagesAndResumes()
    {
        var o = new StringWriter(); var e = new StringWriter();
        int rc = DetoxSharp.Cli.DetoxCli.Run(["study", "--quick", "--out", _dir], o, e);
        Assert.True(rc == 0, $"study failed ({rc}): {e}\n{o}");

        var report = Path.Combine(_dir, "report.html");
        Assert.True(File.Exists(report));
        var html = File.ReadAllText(report);
        Assert.Contains("<svg", html);

        // the results table (report) against the stages' own results.json
        var table = File.ReadAllLines(Path.Combine(_dir, "stages", "report", "tables", "results.csv"))
            .Skip(1).Select(l => l.Split(',')).ToDictionary(f => f[0]);
        var baseRows = JsonNode.Parse(File.ReadAllText(Path.Combine(_dir, "stages", "evaluate", "base", "results.json")))!["rows"]!.AsArray();
        Assert.Equal(4, baseRows.Count);
        foreach (var r in baseRows)
        {
            var name = r!["row"]!.GetValue<string>();
            Assert.True(table.ContainsKey(name), $"report lacks row {name}");
            Assert.Equal(r["toxicity"]!.GetValue<double>(), Num(table[name][1]), 3);
            Assert.Equal(r["perplexity"]!.GetValue<double>(), Num(table[name][2]), 2);
        }
        foreach (var method in new[] { "dpo", "adpo" })
        {
            var evalDir = Directory.GetDirectories(Path.Combine(_dir, "stages", "evaluate", method)).OrderBy(d => d).ToList();
            Assert.NotEmpty(evalDir);
            var headline = JsonNode.Parse(File.ReadAllText(Path.Combine(
                Directory.GetDirectories(evalDir.Single(d => d.EndsWith(HeadlinePoint(method))))[0], "results.json")))!["rows"]![0]!;
            var row = headline["row"]!.GetValue<string>();
            Assert.Equal(headline["toxicity"]!.GetValue<double>(), Num(table[row][1]), 3);
            // training curves exist; DPO starts at ln 2 (policy = reference), ADPO's penalty term makes its start differ
            var metrics = JsonNode.Parse(File.ReadLines(Path.Combine(Directory.GetDirectories(Path.Combine(_dir, "stages", "train", method)).First(), "s0", "metrics.jsonl")).First())!;
            if (method == "dpo") Assert.Equal(Math.Log(2), metrics["loss"]!.GetValue<double>(), 4);
            else Assert.NotNull(metrics["adpo/toxic_logratio"]);
            Assert.True(File.Exists(Path.Combine(Directory.GetDirectories(Path.Combine(_dir, "stages", "diff", method)).First(), "s0", "diff.json")));
            var unalign = JsonNode.Parse(File.ReadAllText(Path.Combine(Directory.GetDirectories(Path.Combine(_dir, "stages", "unalign", method))
                .Single(d => d.EndsWith(HeadlinePoint(method))), "s0", "unalign.json")))!;
            // the sweeps' row 0 is the aligned model itself (its evaluation's toxicity), and the key sweep at the finding's
            // key count is the saved un-aligned model's toxicity (the edit applied on the fly = the edited checkpoint)
            var s0 = JsonNode.Parse(File.ReadAllText(Path.Combine(evalDir.Single(d => d.EndsWith(HeadlinePoint(method))), "s0", "results.json")))!["rows"]![0]!;
            Assert.Equal(s0["toxicity"]!.GetValue<double>(), unalign["steering"]![0]!["toxicity"]!.GetValue<double>(), 9);
            var atKeys = unalign["key_sweep"]!.AsArray().Single(k => k!["keys"]!.GetValue<int>() == unalign["keys"]!.AsArray().Count)!;
            Assert.Equal(unalign["toxicity"]!.GetValue<double>(), atKeys["toxicity"]!.GetValue<double>(), 9);
        }

        // the methods table (issue 18): every row of the quick subset evaluated and timed; KTO's row is its stage's number
        var methods = File.ReadAllLines(Path.Combine(_dir, "stages", "report", "tables", "methods.csv")).Skip(1).Select(l => l.Split(',')).ToDictionary(f => f[0]);
        foreach (var name in new[] { "Base", "DPO", "ADPO", "KTO", "ProFS", "AurA", "Steering α=4", "Activation edit", "DExperts α=2" })
        {
            Assert.True(methods.ContainsKey(name), $"methods table lacks {name}");
            Assert.True(double.TryParse(methods[name][2].Split(' ')[0], CultureInfo.InvariantCulture, out _), $"{name}: toxicity '{methods[name][2]}'");
            Assert.True(Num(methods[name][7]) > 0, $"{name}: tokens/s '{methods[name][7]}'");
        }
        var kto = JsonNode.Parse(File.ReadAllText(Path.Combine(_dir, "stages", "evaluate", "kto", "s0", "results.json")))!["rows"]![0]!;
        Assert.Equal(kto["toxicity"]!.GetValue<double>(), Num(methods["KTO"][2]), 3);
        Assert.Equal(1.0, Num(methods["Base"][8]), 2);

        // issue 17 part 4: every method that changed weights has its decomposition (group shares partition the drop) and
        // null-space check, and the report lists them
        foreach (var m in new[] { "dpo", "adpo", "kto", "profs", "aura" })
        {
            var j = JsonNode.Parse(File.ReadAllText(Path.Combine(_dir, "stages", "neurons", m, "s0", "method_neurons.json")))!;
            var shares = j["neurons"]!["groups"]!.AsObject().Select(g => g.Value!["share"]!.GetValue<double>()).ToList();
            Assert.Equal(1.0, shares.Sum(), 6);
            Assert.Equal(4, j["null_space"]!.AsArray().Count);
        }
        Assert.Equal(6, File.ReadAllLines(Path.Combine(_dir, "stages", "report", "tables", "neurons_methods.csv")).Length);

        // rerun: every stage is skipped
        var o2 = new StringWriter();
        rc = DetoxSharp.Cli.DetoxCli.Run(["study", "--quick", "--out", _dir], o2, e);
        Assert.Equal(0, rc);
        Assert.DoesNotContain(": running", o2.ToString());
    }

    static string HeadlinePoint(string method)
    {
        var cfg = DetoxSharp.Study.StudyConfig.ToyDefault().WithQuick(true);
        var points = DetoxSharp.Study.Sweep.Expand(cfg.Section(method == "dpo" ? cfg.Dpo : cfg.Adpo));
        return points[0].Label;
    }
}

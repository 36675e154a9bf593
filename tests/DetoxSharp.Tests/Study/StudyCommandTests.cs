using DetoxSharp.Cli.Commands;
using DetoxSharp.Study;

namespace DetoxSharp.Tests.Study;

public class StudyCommandTests
{
    static string RepoRoot()
    {
        var d = new DirectoryInfo(AppContext.BaseDirectory);
        while (d is not null && !File.Exists(Path.Combine(d.FullName, "DetoxSharp.sln"))) d = d.Parent;
        return d?.FullName ?? throw new InvalidOperationException("repo root not found");
    }

    [Fact]
    public void QuickToyStudyWithFakeStagesRunsAndResumes()
    {
        var dir = FakeStudy.TempDir("cli");
        var o = new StringWriter(); var e = new StringWriter();
        Assert.Equal(0, StudyCommand.Run(null, dir, quick: true, listOnly: false, FakeStudy.Functions(), o, e));
        Assert.True(File.Exists(Path.Combine(dir, RunLayout.Report)));
        Assert.Contains("~", o.ToString());   // remaining-time estimates printed
        // quick: 2 learning rates × 2 methods × 1 seed, and the methods table's quick loss (KTO) × 1 seed
        Assert.Equal(4 + 1, Directory.GetDirectories(Path.Combine(dir, "stages", "train"), "s*", SearchOption.AllDirectories).Length);
        var o2 = new StringWriter();
        Assert.Equal(0, StudyCommand.Run(null, dir, true, false, FakeStudy.Functions(), o2, e));
        Assert.DoesNotContain(": running", o2.ToString());
        Assert.Contains("skipped", o2.ToString());
        // The full toy study sweeps ≥ 4 learning rates per method and 3 seeds.
        var full = StudyPipeline.Runs(StudyConfig.ToyDefault());
        Assert.True(full.Where(r => r.Method == "dpo").Select(r => r.Point.Label).Distinct().Count() >= 4);
        Assert.True(full.Where(r => r.Method == "adpo").Select(r => r.Point.Label).Distinct().Count() >= 4);
        Assert.Equal(3, full.Select(r => r.Seed).Distinct().Count());
    }

    [Fact]
    public void ThisBuildStopsAtTheFirstUnwiredStageAndSaysSo()
    {
        var dir = FakeStudy.TempDir("cli-unwired");
        var o = new StringWriter(); var e = new StringWriter();
        int rc = DetoxSharp.Cli.DetoxCli.Run(["study", "--out", dir, "--list"], o, e);
        Assert.Equal(0, rc);
        Assert.Contains("report", o.ToString());
        var stages = StudyCommand.Stages();
        if (stages.World is null)
        {
            rc = DetoxSharp.Cli.DetoxCli.Run(["study", "--out", dir, "--quick"], o, e);
            Assert.Equal(3, rc);
            Assert.Contains("stage 'world' is not available", e.ToString());
        }
        Assert.NotNull(stages.Report);
    }

    [Fact]
    public void ShippedConfigsLoadAndPaperPlaceholdersAreRefused()
    {
        var root = RepoRoot();
        var toy = StudyConfig.Load(Path.Combine(root, "configs", "toy.json"));
        Assert.Equal(StudyConfig.ToyDefault().ToJson(), toy.ToJson());
        var paper = StudyConfig.Load(Path.Combine(root, "configs", "paper-gpt2-medium.json"));
        Assert.Equal(0.1, paper.Dpo["beta"]!.GetValue<double>());
        Assert.Equal(1e-6, paper.Dpo["learning_rate"]!.GetValue<double>());
        Assert.Equal(4, paper.Dpo["batch_size"]!.GetValue<int>());
        Assert.Equal(150, paper.Dpo["warmup_steps"]!.GetValue<int>());
        Assert.Equal(1199, paper.Evaluation["challenge_prompts"]!.GetValue<int>());
        var ex = Assert.Throws<InvalidInputException>(() => paper.Validate("paper.json"));
        Assert.Contains("data.base_model", ex.Message);
        var bad = Path.Combine(FakeStudy.TempDir("cfg"), "bad.json");
        File.WriteAllText(bad, """{ "model": "toy", "dpo": {}, "typo_key": 1 }""");
        Assert.Throws<InvalidInputException>(() => StudyConfig.Load(bad));
        var e = new StringWriter();
        Assert.Equal(2, DetoxSharp.Cli.DetoxCli.Run(["study", "--config", bad, "--out", FakeStudy.TempDir("x")], new StringWriter(), e));
        Assert.StartsWith("detox: ", e.ToString());
    }
}

public class StudyCommandFailureTests
{
    [Fact]
    public void FailingStageEndsWithOneLineAndARerunContinues()
    {
        var dir = FakeStudy.TempDir("cli-fail");
        var broken = FakeStudy.Functions() with { Vectors = _ => throw new IOException("disk full") };
        var o = new StringWriter(); var e = new StringWriter();
        Assert.Equal(1, StudyCommand.Run(null, dir, true, false, broken, o, e));
        Assert.Contains("detox: study stopped: IOException: disk full", e.ToString());
        Assert.DoesNotContain("   at ", e.ToString());
        var o2 = new StringWriter();
        Assert.Equal(0, StudyCommand.Run(null, dir, true, false, FakeStudy.Functions(), o2, e));
        Assert.Contains("[3/", o2.ToString());
        Assert.Matches(@"\[3/\d+\] probe: done earlier, skipped", o2.ToString());
        Assert.Matches(@"\[4/\d+\] vectors: running", o2.ToString());
    }
}

using System.Text.Json.Nodes;
using DetoxSharp.Study;

namespace DetoxSharp.Tests.Study;

public class StudyPipelineTests
{
    [Fact]
    public void ChangingADpoSettingRerunsOnlyDpoStagesAndTheReport()
    {
        var dir = FakeStudy.TempDir("pipeline");
        var cfg = FakeStudy.Config(seeds: 1);
        var first = new StageRunner(dir).Run(StudyPipeline.Build(cfg, FakeStudy.Functions()));
        Assert.True(first.Completed);
        // 9 shared stages (incl. evaluate/sft), 4 per trained run (2 methods × 2 lrs × 1 seed), patching at the 2 headline
        // runs, the per-method decomposition + null-space check of DPO's and ADPO's seed 0 (no "methods" rows here), report;
        // one battery stage per method model
        Assert.Equal(9 + 4 * 4 + 2 + 2 + 1 + StudyPipeline.MethodModels(cfg).Count, first.Ran.Count);

        var changed = StudyConfig.Parse(cfg.ToJson().Replace("\"beta\": 0.1,\n    \"learning_rate\"", "\"beta\": 0.2,\n    \"learning_rate\""));
        Assert.Equal(0.2, changed.Dpo["beta"]!.GetValue<double>());
        Assert.Equal(0.1, changed.Adpo["beta"]!.GetValue<double>());
        var second = new StageRunner(dir).Run(StudyPipeline.Build(changed, FakeStudy.Functions()));
        // The fake trainer's output does not depend on β, so only the train stages (settings changed) and the
        // report (its settings hold the whole config) rerun; with real training the dpo evaluate/diff/unalign follow.
        Assert.Equal(["train/dpo/lr3e-05/s0", "train/dpo/lr0.0003/s0", "report"], second.Ran);
    }

    [Fact]
    public void SweepGridAndSeedsBecomeStagesAndTheReportReadsThemAll()
    {
        var cfg = StudyConfig.Parse("""{ "dpo": { "learning_rate": [1e-5, 1e-4, 1e-3], "beta": [0.1, 0.5] }, "adpo": { "gamma": 0.1 }, "seeds": 2 }""");
        var stages = StudyPipeline.Build(cfg, FakeStudy.Functions());
        var trains = stages.Where(s => s.Kind == "train").Select(s => s.Name).ToList();
        Assert.Equal(3 * 2 * 2 + 1 * 2, trains.Count);
        Assert.Equal("train/dpo/lr1e-05_beta0.1/s0", trains[0]);   // headline points first
        Assert.Contains("train/dpo/lr0.001_beta0.5/s1", trains);
        Assert.Equal(stages.Take(stages.Count - 1).Select(s => s.Name), stages[^1].DependsOn);
        Assert.Equal(2, cfg.WithQuick(false).EffectiveSeeds);
        Assert.Equal(1, cfg.WithQuick(true).EffectiveSeeds);
    }
}

using System.Text.Json.Nodes;
using DetoxSharp.Study;
using DetoxSharp.Training;

namespace DetoxSharp.Tests.Study;

/// <summary>The typed study config: unknown keys and bad values are refused with the file and key path, sections map
/// onto the library's options records (their defaults, nothing invented), and only read keys exist.</summary>
public class StudyConfigTests
{
    static StudyConfig Toy(Func<JsonObject, JsonObject> edit)
    {
        var json = JsonNode.Parse(StudyConfig.ToyDefault().ToJson())!.AsObject();
        return StudyConfig.Parse(edit(json).ToJsonString());
    }

    [Fact]
    public void UnknownKeyIsNamedWithFileAndPath()
    {
        var c = Toy(j => { j["dpo"]!["betta"] = 0.2; return j; });
        var e = Assert.Throws<InvalidInputException>(() => c.Validate("configs/toy.json"));
        Assert.Equal("configs/toy.json: dpo.betta: unknown key", e.Message);
        // also inside a section's "quick" overrides, which only apply under --quick
        var q = Toy(j => { j["evaluation"]!["quick"]!["f1_promts"] = 3; return j; });
        Assert.Equal("configs/toy.json: evaluation.f1_promts: unknown key", Assert.Throws<InvalidInputException>(() => q.Validate("configs/toy.json")).Message);
    }

    [Fact]
    public void BadValueNamesTheConfigKey()
    {
        var c = Toy(j => { j["adpo"]!["gamma"] = 0; return j; });
        Assert.Equal("t.json: adpo.gamma must be > 0 for adpo (got 0; γ = 0 is plain DPO)", Assert.Throws<InvalidInputException>(() => c.Validate("t.json")).Message);
        var g = Toy(j => { j["dpo"]!["gamma"] = 0.5; return j; });
        Assert.Contains("dpo.gamma", Assert.Throws<InvalidInputException>(() => g.Validate("t.json")).Message);
        var l = Toy(j => { j["dpo"]!["learning_rate"] = new JsonArray(1e-5, -1.0); return j; });
        Assert.Equal("t.json: dpo.learning_rate must be > 0 (got -1)", Assert.Throws<InvalidInputException>(() => l.Validate("t.json")).Message);
    }

    [Fact]
    public void SectionsMapOntoTheLibraryRecords()
    {
        var c = StudyConfig.ToyDefault();
        var adpo = StudySections.Read<PreferenceSection>(Sweep.Expand(c.Section(c.Adpo))[0].Settings, "adpo").ToOptions("adpo");
        Assert.Equal(PreferenceMethod.Adpo, adpo.Loss.Method);
        Assert.Equal(0.1, adpo.Loss.Gamma);
        Assert.Equal(5e-6, adpo.LearningRate); // the first value of the sweep in configs/toy.json is the headline point
        // a key the config leaves out takes the library's default, not a second one
        Assert.Equal(new PreferenceTrainerOptions().GradientAccumulationSteps, adpo.GradientAccumulationSteps);
        Assert.Equal(new PreferenceTrainerOptions().Truncation, adpo.Truncation);
        var dpo = StudySections.Read<PreferenceSection>(Sweep.Expand(c.Section(c.Dpo))[0].Settings, "dpo").ToOptions("dpo");
        Assert.Equal(PreferenceMethod.Sigmoid, dpo.Loss.Method);
        var tox = StudySections.Read<SftOptions>(c.Section(c.ToxicModel), "toxic_model");
        Assert.Equal(1e-3, tox.LearningRate);
        Assert.Equal(150, tox.MaxSteps);
    }

    [Fact]
    public void F1PromptCountIsNotCappedByTheChallengePromptCount()
    {
        var e = StudySections.Read<EvaluationSection>(JsonNode.Parse("""{ "challenge_prompts": 1199, "f1_prompts": 2000 }""")!.AsObject(), "evaluation");
        var o = e.ToOptions(new ScorerSection());
        Assert.Equal(1199, o.Limit);
        Assert.Equal(2000, o.F1Limit);
    }

    [Fact]
    public void EveryShippedKeyIsRead()
    {
        // every key of both shipped configs deserializes into a typed section (Validate refuses unknown ones);
        // the toy config validates as a whole, the paper config up to its placeholder paths
        StudyConfig.ToyDefault().Validate("configs/toy.json");
        var root = new DirectoryInfo(AppContext.BaseDirectory);
        while (root is not null && !File.Exists(Path.Combine(root.FullName, "DetoxSharp.sln"))) root = root.Parent;
        var paper = StudyConfig.Load(Path.Combine(root!.FullName, "configs", "paper-gpt2-medium.json"));
        var ex = Assert.Throws<InvalidInputException>(() => paper.Validate("paper.json"));
        Assert.Contains("placeholder", ex.Message);
    }
}

using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;
using DetoxSharp.Checkpoints;
using DetoxSharp.Editing;
using DetoxSharp.Interpretability;
using DetoxSharp.Models;
using DetoxSharp.Study;
using DetoxSharp.Tests.Evaluation;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Tests.Study;

/// <summary>The study's methods table (issue 18 part 6; issue 17 part 3): its stages, its config checks, how a method's
/// inference-time edits are loaded, and the report's table against what the stages wrote.</summary>
public class MethodsTableTests : IDisposable
{
    readonly string _dir = Path.Combine(Path.GetTempPath(), "detox-methods-" + Guid.NewGuid().ToString("N"));

    public void Dispose() { try { Directory.Delete(_dir, true); } catch { } }

    static StudyConfig Toy(Func<JsonObject, JsonObject> edit)
    {
        var json = JsonNode.Parse(StudyConfig.ToyDefault().ToJson())!.AsObject();
        return StudyConfig.Parse(edit(json).ToJsonString());
    }

    [Fact]
    public void EveryMethodOfTheToyConfigBecomesStagesWithTheRightInputs()
    {
        var c = StudyConfig.ToyDefault();
        var stages = StudyPipeline.Build(c, FakeStudy.Functions()).ToDictionary(s => s.Name);
        int seeds = c.EffectiveSeeds;
        var dpoHead = Sweep.Expand(c.Section(c.Dpo))[0];
        foreach (var loss in new[] { "ipo", "kto", "orpo", "simpo" })
            for (int s = 0; s < seeds; s++)
            {
                var train = stages[$"train/{loss}/s{s}"];
                Assert.Equal(["pretrain", "pairs"], train.DependsOn);
                // trained like the DPO headline point, with the loss (and its overrides) on top
                Assert.Equal(loss, train.Settings["training"]!["loss_type"]!.GetValue<string>());
                Assert.Equal(dpoHead.Settings["learning_rate"]!.GetValue<double>(), train.Settings["training"]!["learning_rate"]!.GetValue<double>());
                Assert.Equal(s, train.Settings["seed"]!.GetValue<int>());
                Assert.Contains($"train/{loss}/s{s}", stages[$"evaluate/{loss}/s{s}"].DependsOn);
            }
        Assert.Equal(2.0, stages["train/simpo/s0"].Settings["training"]!["beta"]!.GetValue<double>());
        Assert.Contains("pairs", stages["edit/profs"].DependsOn);
        Assert.DoesNotContain("pairs", stages["edit/aura"].DependsOn);
        foreach (var a in new[] { "4", "2", "8" }) Assert.Contains("edit/steering", stages[$"evaluate/steering/a{a}"].DependsOn);
        // the activation edit of seed s copies DPO headline run s's neuron shift
        for (int s = 0; s < seeds; s++)
            Assert.Contains($"diff/dpo/{dpoHead.Label}/s{s}", stages[$"edit/activation/s{s}"].DependsOn);
        Assert.Equal(["world", "pretrain", "sft/expert", "sft/anti-expert"], stages["evaluate/dexperts"].DependsOn);
        // the speed stage sees every row's model
        var speed = stages[StudyPipeline.MethodSpeedStage];
        foreach (var d in new[] { "edit/profs", "edit/aura", "edit/steering", "edit/activation/s0", "sft/expert", "sft/anti-expert", "train/kto/s0" })
            Assert.Contains(d, speed.DependsOn);
        Assert.Equal(1 + 2 + 4 + 2 + 3 + 1 + 1, speed.Settings["rows"]!.AsArray().Count); // base, DPO, ADPO, 4 losses, ProFS, AurA, 3 steering α, activation, DExperts
        // one profs stage's settings do not carry another method's section (changing AurA does not rerun ProFS)
        Assert.Null(stages["edit/profs"].Settings["methods"]!["aura"]);
        // the battery's targets: DPO/ADPO headline runs, every loss seed, the edits, steering once, the activation edits
        var models = StudyPipeline.MethodModels(c);
        Assert.Equal(2 * seeds + 4 * seeds + 2 + 1 + seeds, models.Count);
        Assert.All(models, m => Assert.True(stages.ContainsKey(m.Stage), m.Stage));
        Assert.DoesNotContain(models, m => m.Method == "dexperts");
        // issue 17 part 4: decomposition + null-space per method with changed weights (seed 0), against its start model
        foreach (var m in new[] { "dpo", "adpo", "ipo", "kto", "orpo", "simpo", "profs", "aura" })
            Assert.Contains(StudyPipeline.MethodModels(c).First(x => x.Method == m && x.Seed == 0).Stage, stages[StudyPipeline.NeuronStage(m)].DependsOn);
        Assert.Contains("toxic-model", stages[StudyPipeline.NeuronStage("adpo")].DependsOn);
        Assert.False(stages.ContainsKey(StudyPipeline.NeuronStage("steering")));
    }

    [Fact]
    public void QuickRunsASubsetAndOffMeansNoStages()
    {
        var q = StudyConfig.ToyDefault().WithQuick(true);
        var names = StudyPipeline.Build(q, FakeStudy.Functions()).Select(s => s.Name).ToList();
        Assert.Contains("train/kto/s0", names);
        Assert.DoesNotContain("train/ipo/s0", names);
        Assert.DoesNotContain("train/kto/s1", names);
        Assert.Single(names, n => n.StartsWith("evaluate/steering/", StringComparison.Ordinal));
        var off = Toy(j => { j["methods"] = new JsonObject { ["enabled"] = false }; return j; });
        off.Validate("t.json");
        Assert.DoesNotContain(StudyPipeline.Build(off, FakeStudy.Functions()), s => s.Name.StartsWith("edit/", StringComparison.Ordinal) || s.Name == StudyPipeline.MethodSpeedStage);
        Assert.Empty(StudyPipeline.MethodRows(off));
    }

    [Theory]
    [InlineData("losses", """{ "dpoo": {} }""", "methods.losses")]
    [InlineData("losses", """{ "adpo": {} }""", "adpo")]
    [InlineData("losses", """{ "ipo": { "learning_rate": [1e-5, 2e-5] } }""", "methods.losses.ipo.learning_rate is a list")]
    [InlineData("losses", """{ "ipo": { "learning_rat": 1e-5 } }""", "learning_rat")]
    [InlineData("losses", """{ "ipo": { "beta": -1 } }""", "beta")]
    [InlineData("steering", """{ "alphas": [] }""", "methods.steering.alphas")]
    [InlineData("activation_edit", """{ "groups": ["XX"] }""", "'XX'")]
    [InlineData("dexperts", """{ "alpha": 0 }""", "methods.dexperts.alpha")]
    public void BadMethodsSettingsAreNamed(string key, string json, string expected)
    {
        var c = Toy(j => { j["methods"]![key] = JsonNode.Parse(json); return j; });
        var e = Assert.Throws<InvalidInputException>(() => c.Validate("t.json"));
        Assert.StartsWith("t.json: ", e.Message);
        Assert.Contains(expected, e.Message);
    }

    /// <summary>A steering stage's model is the base model with α·v subtracted at the vector's layer, exactly as
    /// <c>--steer DIR@α</c>; the activation edit (a constant shift δ of neuron activations) equals adding δ·W_out to that
    /// layer's MLP output — an independent computation of the same edit.</summary>
    [Fact]
    public void MethodModelsLoadWithTheirInferenceTimeEdits()
    {
        Directory.CreateDirectory(_dir);
        var ckpt = EvalFiles.TinyGpt2(Path.Combine(_dir, "base"), 3);
        var ids = torch.tensor(new long[] { 464, 3290, 318, 257, 922, 13 }).unsqueeze(0);
        Tensor Logits(ICausalLM m) { using var _ = torch.no_grad(); return m.Forward(ids).detach().clone(); }

        using var plain = HfCheckpoint.Load(ckpt);
        using var baseLogits = Logits(plain.Model);

        // steering: vector dir + steer.txt naming it at α = 3
        var steerStage = Path.Combine(_dir, "edit-steering");
        torch.manual_seed(5);
        using (var v = torch.randn(16))
            Steering.Save(steerStage, v, 1, new JsonObject());
        File.WriteAllText(Path.Combine(steerStage, "model_dir.txt"), ckpt);
        File.WriteAllText(Path.Combine(steerStage, MethodModel.SteerFile), steerStage + "@3\n");
        Tensor steered;
        using (var m = StudyStages.LoadMethodModel(steerStage)) steered = Logits(m.Model);
        Tensor manual;
        using (var m = HfCheckpoint.Load(ckpt))
        using (Steering.Load(steerStage + "@3").Apply(m.Model)) manual = Logits(m.Model);
        Assert.True(steered.allclose(manual, 1e-6, 1e-6));
        Assert.False(steered.allclose(baseLogits, 1e-3, 1e-3));
        // another strength through the override
        Tensor five, manualFive;
        using (var m = StudyStages.LoadMethodModel(steerStage, steerAlpha: 5)) five = Logits(m.Model);
        using (var m = HfCheckpoint.Load(ckpt))
        using (Steering.Load(steerStage + "@5").Apply(m.Model)) manualFive = Logits(m.Model);
        Assert.True(five.allclose(manualFive, 1e-6, 1e-6));
        Assert.False(five.allclose(steered, 1e-4, 1e-4));

        // activation edit: neurons.csv with shifts on layer 0 (two neurons) and layer 1 (one), groups TP and AN
        var actStage = Path.Combine(_dir, "edit-activation");
        Directory.CreateDirectory(actStage);
        var csv = new StringBuilder("layer,neuron,group,cosine_with_w_toxic,activation_before,activation_after,projection_before,projection_after,delta\n");
        csv.Append("0,3,TP,0.1,1.0,0.25,0,0,0\n0,10,AN,-0.1,0.5,0.75,0,0,0\n1,7,TP,0.2,2.0,1.0,0,0,0\n1,8,TN,-0.2,2.0,9.0,0,0,0\n");
        File.WriteAllText(Path.Combine(actStage, "neurons.csv"), csv.ToString());
        File.WriteAllText(Path.Combine(actStage, StudyStages.NeuronShiftFile), """{ "groups": ["TP", "AN"], "scale": 2 }""");
        File.WriteAllText(Path.Combine(actStage, "model_dir.txt"), ckpt);
        Tensor edited;
        using (var m = StudyStages.LoadMethodModel(actStage))
        {
            Assert.Equal(["activation edit"], m.Edits);
            edited = Logits(m.Model);
        }
        Tensor independent;
        using (var m = HfCheckpoint.Load(ckpt))
        {
            // δ (× scale 2) per layer; TN's neuron 8 is not in the chosen groups
            Tensor U(int layer, (int Neuron, double Shift)[] shifts)
            {
                using var _ = torch.no_grad();
                var w = m.Model.MlpValues(layer).detach().to(ScalarType.Float32);
                var u = torch.zeros(16);
                foreach (var (n, d) in shifts) u += w[n] * (float)d;
                return u;
            }
            using var u0 = U(0, [(3, 2 * (0.25 - 1.0)), (10, 2 * (0.75 - 0.5))]);
            using var u1 = U(1, [(7, 2 * (1.0 - 2.0))]);
            using (VectorIntervention.Add("u0", u0, 1, 0, InterventionMode.AllPositions).Apply(m.Model))
            using (VectorIntervention.Add("u1", u1, 1, 1, InterventionMode.AllPositions).Apply(m.Model))
                independent = Logits(m.Model);
        }
        Assert.True(edited.allclose(independent, 1e-5, 1e-5), $"max diff {(edited - independent).abs().max().item<float>()}");
        Assert.False(edited.allclose(baseLogits, 1e-3, 1e-3));
    }

    /// <summary>The report's methods table against the (fake) stages' files: every row's toxicity is the mean of its
    /// evaluation stages, its compute the manifest's wall seconds of the stages that made it, its speed the speed stage's.</summary>
    [Fact]
    public void ReportTableAgreesWithTheStages()
    {
        var c = StudyConfig.ToyDefault();
        new StageRunner(_dir).Run(StudyPipeline.Build(c, FakeStudy.Functions()));
        string Dir(string stage) => StageRunner.StageDir(_dir, stage);
        var rows = DetoxSharp.Reporting.StudyReport.MethodsTable(_dir, c, Dir).ToDictionary(r => r.Method);
        var manifest = Manifest.Load(_dir);
        var speed = JsonNode.Parse(File.ReadAllText(Path.Combine(Dir(StudyPipeline.MethodSpeedStage), RunLayout.MethodSpeed)))!["rows"]!.AsArray()
            .ToDictionary(r => r!["row"]!.GetValue<string>(), r => r!["tokens_per_second"]!.GetValue<double>());
        double Tox(string stage) => JsonNode.Parse(File.ReadAllText(Path.Combine(Dir(stage), RunLayout.Results)))!["rows"]![0]!["toxicity"]!.GetValue<double>();
        foreach (var m in StudyPipeline.MethodRows(c))
        {
            var row = rows[m.Row];
            var tox = m.EvaluateStages.Select(Tox).ToList();
            Assert.Equal(tox.Count, row.Toxicity.N);
            Assert.Equal(tox.Average(), row.Toxicity.Mean, 12);
            if (tox.Count > 1)
                Assert.Equal(Math.Sqrt(tox.Sum(t => (t - tox.Average()) * (t - tox.Average())) / (tox.Count - 1)), row.Toxicity.Std!.Value, 12);
            var walls = m.ComputeStages.Select(s => manifest.Stages[s].WallSeconds).ToList();
            Assert.Equal(m.Kind == "decoding" ? walls.Sum() : walls.Average(), row.ComputeSeconds.Mean, 9);
            Assert.Equal(speed[m.Row], row.TokensPerSecond);
        }
        Assert.Equal(speed["Base"], rows["Base"].TokensPerSecond);
        Assert.Equal(14, rows.Count); // base, DPO, ADPO, 4 losses, ProFS, AurA, 3 steering strengths, activation edit, DExperts
        var csv = File.ReadAllLines(Path.Combine(Dir("report"), "tables", "methods.csv"));
        Assert.Equal(15, csv.Length);
        Assert.Contains(csv, l => l.StartsWith("KTO,training,", StringComparison.Ordinal));
    }
}

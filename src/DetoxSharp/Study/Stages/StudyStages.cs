using System.Text.Json;
using System.Text.Json.Nodes;
using DetoxSharp.Checkpoints;
using DetoxSharp.Data;
using DetoxSharp.Evaluation;
using DetoxSharp.Interpretability;
using DetoxSharp.Training;

namespace DetoxSharp.Study;

/// <summary>
/// The study's stage functions: each is one call into the library (world generator, toy pretraining, probe, toxic
/// vectors, evaluation harness, preference trainer, alignment diff, un-aligning) plus the conversion of that call's own
/// outputs into the files <see cref="RunLayout"/> names, which the report reads. Nothing here computes a result the
/// library does not; numbers are copied from the components' outputs.
/// With "model": "toy" the data come from the world stage; with "model": "checkpoint" the "data" section names a base
/// checkpoint directory and real data files (see configs/paper-gpt2-medium.json).
/// </summary>
public static partial class StudyStages
{
    /// <summary>The stage functions. <paramref name="evaluationScorer"/> replaces the scorer the config names (tests use it
    /// to prove which stages score text); only evaluation stages ever call it — pair construction never does.</summary>
    public static StudyStageFunctions Create(Func<StageContext, IToxicityScorer>? evaluationScorer = null)
    {
        var scorer = evaluationScorer ?? Scorer;
        return new()
        {
            World = World,
            Pretrain = Pretrain,
            Probe = Probe,
            Vectors = Vectors,
            Interventions = Interventions,
            ToxicModel = TrainToxicModel,
            Pairs = Pairs,
            Train = Train,
            EvaluateBase = c => EvaluateBase(c, scorer),
            EvaluateModel = c => EvaluateModel(c, scorer),
            Diff = Diff,
            Unalign = c => UnalignStage(c, scorer),
            Patch = c => NeuronPatch(c, scorer),
            Agreement = AgreementStage,
            Battery = c => BatteryStage(c, scorer),
            MethodEdit = MethodEdit,
            ExpertSft = ExpertSft,
            EvaluateMethod = c => EvaluateMethod(c, scorer),
            MethodSpeed = MethodSpeed,
            MethodNeurons = MethodNeurons,
        };
    }

    static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    // ---------- settings helpers ----------

    static JsonObject Section(StageContext c, string name) => c.Settings[name] as JsonObject ?? new JsonObject();
    static bool IsToy(StageContext c) => (c.Settings["model"]?.GetValue<string>() ?? "toy") == "toy";

    /// <summary>A section of this stage's settings as its typed record (<see cref="StudySections"/>); the config was
    /// checked as a whole before the study started, so this only fails on a hand-edited manifest.</summary>
    static T Read<T>(StageContext c, string name) => StudySections.Read<T>(Section(c, name), name);

    static void WriteJson(string path, JsonNode node) => AtomicFile.WriteAllText(path, node.ToJsonString(Indented) + "\n");
    static JsonObject ReadJson(string path) => JsonNode.Parse(File.ReadAllText(path))!.AsObject();

    /// <summary>The data files of this run: the world's, or the config's "data" section for a real checkpoint.</summary>
    sealed record DataFiles(string Comments, string Challenge, string? Neutral, string PerplexityText, string F1, string PreferencePrompts, string Dialogues,
        string? ToxicWords, double? LabelNoise, int? LabelNoiseFlipped);

    static DataFiles Files(StageContext c)
    {
        var world = JsonNode.Parse(File.ReadAllText(Path.Combine(c.Input("world"), "data.json")))!.AsObject();
        string? P(string k) => world[k]?.GetValue<string>();
        return new DataFiles(P("comments")!, P("challenge_prompts")!, P("neutral_prompts"), P("perplexity_text")!, P("f1_prompts")!,
            P("preference_prompts")!, P("dialogues")!, P("toxic_words"),
            world["label_noise"] is JsonValue n && n.TryGetValue<double>(out var noise) ? noise : null,
            world["label_noise_flipped"] is JsonValue f && f.TryGetValue<int>(out var flipped) ? flipped : null);
    }

    /// <summary>The model directory a stage (pretrain, train/…) recorded in its model_dir.txt.</summary>
    static string ModelDirOf(StageContext c, string stage) => File.ReadAllText(Path.Combine(c.Input(stage), "model_dir.txt")).Trim();

    static string BaseModelDir(StageContext c) => ModelDirOf(c, "pretrain");

    static LoadedModel Load(StageContext c, string dir) => HfCheckpoint.Load(dir, new LoadOptions { Device = c.Device });

    /// <summary>Paths inside the (temporary) output directory are rewritten to the stage's final directory.</summary>
    static JsonObject Relocate(JsonObject files, StageContext c)
    {
        var o = new JsonObject();
        foreach (var (k, v) in files)
        {
            var p = v!.GetValue<string>();
            o[k] = Path.GetFullPath(p).StartsWith(Path.GetFullPath(c.OutputDir)) ? FinalPath(c, p) : p;
        }
        return o;
    }

    static string FinalPath(StageContext c, string pathInOutput) => StageRunner.StageDir(c.RunDir, c.Name) + Path.GetFullPath(pathInOutput)[Path.GetFullPath(c.OutputDir).Length..];
}

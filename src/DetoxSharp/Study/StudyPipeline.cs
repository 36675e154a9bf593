using System.Text.Json.Nodes;

namespace DetoxSharp.Study;

/// <summary>
/// The functions that compute each stage. Each one reads its inputs from <see cref="StageContext.Inputs"/> and
/// writes the files named in <see cref="RunLayout"/> into <see cref="StageContext.OutputDir"/>. A null entry
/// means this build does not have that stage; the study stops there with a message naming it.
/// </summary>
public sealed record StudyStageFunctions
{
    public Action<StageContext>? World { get; init; }
    public Action<StageContext>? Pretrain { get; init; }
    public Action<StageContext>? Probe { get; init; }
    public Action<StageContext>? Vectors { get; init; }
    public Action<StageContext>? Interventions { get; init; }
    public Action<StageContext>? ToxicModel { get; init; }
    public Action<StageContext>? Pairs { get; init; }
    /// <summary>DPO or ADPO; settings["method"] says which, settings["seed"] the seed.</summary>
    public Action<StageContext>? Train { get; init; }
    public Action<StageContext>? EvaluateBase { get; init; }
    public Action<StageContext>? EvaluateModel { get; init; }
    public Action<StageContext>? Diff { get; init; }
    public Action<StageContext>? Unalign { get; init; }
    /// <summary>Activation/attribution patching of the neuron groups at a headline run (settings["method"]).</summary>
    public Action<StageContext>? Patch { get; init; }
    /// <summary>The re-toxification battery on one detoxified model (<see cref="BatteryPipeline"/>).</summary>
    public Action<StageContext>? Battery { get; init; }
    /// <summary>Builds the report (the CLI wires Reporting.StudyReport.Write: the report reads the study's layout, so the
    /// study does not depend on the report).</summary>
    public Action<StageContext>? Report { get; init; }
}

/// <summary>A trained model of the study: method, sweep point and seed, and the names of its stages.</summary>
public sealed record TrainedRun(string Method, SweepPoint Point, int Seed, bool Headline)
{
    string Suffix => $"{Method}/{Point.Label}/s{Seed}";
    public string TrainStage => $"train/{Suffix}";
    public string EvaluateStage => $"evaluate/{Suffix}";
    public string DiffStage => $"diff/{Suffix}";
    public string UnalignStage => $"unalign/{Suffix}";
    public string PatchStage => $"patch/{Suffix}";
}

/// <summary>
/// A detoxified model of the study as the methods table and the re-toxification battery see it. The output directory of
/// <see cref="Stage"/> holds model_dir.txt (the checkpoint) and, for an inference-time method (steering), steer.txt: a
/// <c>--steer</c> spec DIR@ALPHA (<see cref="Editing.Steering.Load"/>) applied on top of that checkpoint.
/// <see cref="StartStage"/> made the model the method started from ("pretrain"; "toxic-model" for ADPO).
/// </summary>
public sealed record MethodModel(string Method, string Row, int Seed, string Stage, string StartStage)
{
    /// <summary>The evaluation stage of the start model (its toxicity is what the method lowers).</summary>
    public string StartEvaluation => StartStage == "toxic-model" ? StudyPipeline.SftEvaluation : "evaluate/base";
    /// <summary>The file (in the stage's output) that names an inference-time steering vector, if the method has one.</summary>
    public const string SteerFile = "steer.txt";
}

public static class StudyPipeline
{
    public const string Methods = "dpo,adpo";

    /// <summary>The detoxified models the methods table and the re-toxification battery compare, at the headline setting
    /// (one per seed for a trained method). The order is the table's.</summary>
    public static IReadOnlyList<MethodModel> MethodModels(StudyConfig c) =>
        Runs(c).Where(r => r.Headline)
            .Select(r => new MethodModel(r.Method, RowName(r.Method), r.Seed, r.TrainStage, r.Method == "adpo" ? "toxic-model" : "pretrain"))
            .ToList();

    public static IReadOnlyList<TrainedRun> Runs(StudyConfig c)
    {
        var runs = new List<TrainedRun>();
        foreach (var (method, section) in new[] { ("dpo", c.Dpo), ("adpo", c.Adpo) })
        {
            var points = Sweep.Expand(c.Section(section));
            for (int p = 0; p < points.Count; p++)
                for (int seed = 0; seed < (p == 0 ? c.EffectiveSeeds : c.EffectiveSweepSeeds); seed++)
                    runs.Add(new TrainedRun(method, points[p], seed, p == 0));
        }
        // Headline points first (both methods), so a stopped run already has the paper's table.
        return runs.OrderBy(r => r.Headline ? 0 : 1).ToList();
    }

    /// <summary>The study as an ordered list of stages (dependencies always earlier).</summary>
    public static IReadOnlyList<StageDefinition> Build(StudyConfig c, StudyStageFunctions f)
    {
        JsonObject S(params (string k, JsonNode? v)[] kv)
        {
            // only what the stage reads decides its hash: sections have their "quick" overrides applied already,
            // so --quick itself is not a setting (a quick and a full run share the stages whose settings agree)
            var o = new JsonObject { ["model"] = c.Model };
            foreach (var (k, v) in kv) o[k] = v?.DeepClone();
            return o;
        }
        var st = new List<StageDefinition>
        {
            new("world", S(("data", c.Data), ("world", c.Section(c.World))), [], f.World),
            // pretrain reads the world's size (toy) or data.base_model (checkpoint)
            new("pretrain", S(("data", c.Data), ("world", c.Section(c.World)), ("pretrain", c.Section(c.Pretrain))), ["world"], f.Pretrain),
            new("probe", S(("probe", c.Section(c.Probe))), ["world", "pretrain"], f.Probe),
            new("vectors", S(("vectors", c.Section(c.Vectors))), ["world", "pretrain", "probe"], f.Vectors),
            new("interventions", S(("interventions", c.Section(c.Interventions))), ["world", "pretrain", "probe", "vectors"], f.Interventions),
            new("toxic-model", S(("toxic_model", c.Section(c.ToxicModel))), ["world", "pretrain"], f.ToxicModel),
            // pairs never see the evaluation scorer (neither its settings nor any stage that scored text)
            new("pairs", S(("pairs", c.Section(c.Pairs))), ["world", "pretrain", "probe", "toxic-model"], f.Pairs),
            new("evaluate/base", S(("evaluation", c.Section(c.Evaluation)), ("scorer", c.Scorer)), ["world", "pretrain", "interventions"], f.EvaluateBase),
            // the SFT model ADPO starts from, evaluated like the base model: ADPO's findings are measured against it
            new(SftEvaluation, S(("row", "SFT (ADPO start)"), ("model_stage", "toxic-model"), ("evaluation", c.Section(c.Evaluation)), ("scorer", c.Scorer)),
                ["world", "toxic-model"], f.EvaluateModel),
        };
        bool patching = StudySections.Read<NeuronsSection>(c.Section(c.Neurons), "neurons").Patching;
        foreach (var r in Runs(c))
        {
            var trainSettings = S(("method", r.Method), ("seed", r.Seed), ("training", r.Point.Settings));
            st.Add(new(r.TrainStage, trainSettings, r.Method == "adpo" ? ["pretrain", "pairs", "toxic-model"] : ["pretrain", "pairs"], f.Train));
            string[] start = r.Method == "adpo" ? ["toxic-model"] : [];
            st.Add(new(r.EvaluateStage, S(("row", RowName(r.Method)), ("evaluation", c.Section(c.Evaluation)), ("scorer", c.Scorer)),
                ["world", "pretrain", r.TrainStage], f.EvaluateModel));
            st.Add(new(r.DiffStage, S(("method", r.Method), ("evaluation", DiffSettings(c.Section(c.Evaluation)))), ["world", "pretrain", .. start, "probe", "vectors", r.TrainStage], f.Diff));
            if (r.Headline && patching)
                st.Add(new(r.PatchStage, S(("method", r.Method), ("evaluation", DiffSettings(c.Section(c.Evaluation))), ("neurons", c.Section(c.Neurons)), ("scorer", c.Scorer)),
                    ["world", "pretrain", .. start, "probe", r.TrainStage], f.Patch));
            var startEval = StartEvaluation(r.Method);
            st.Add(new(r.UnalignStage, S(("row", "Un-aligned " + RowName(r.Method)), ("unalign", UnalignSettings(c.Section(c.Unalign), r.Headline)),
                ("evaluation", c.Section(c.Evaluation)), ("scorer", c.Scorer), ("start_evaluation", startEval)),
                ["world", "pretrain", "probe", "vectors", "evaluate/base", .. startEval == "evaluate/base" ? Array.Empty<string>() : [startEval], r.TrainStage], f.Unalign));
        }
        st.AddRange(BatteryPipeline.Stages(c, st, f.Battery).ToList());
        var report = new JsonObject { ["config"] = JsonNode.Parse(c.ToJson()) };
        st.Add(new("report", report, st.Select(s => s.Name).ToList(), f.Report));
        return st;
    }

    public const string SftEvaluation = "evaluate/sft";

    /// <summary>The evaluation of the model a method starts from: its toxicity is what alignment lowers and un-aligning
    /// should restore (DPO: the pretrained model; ADPO: the SFT model).</summary>
    public static string StartEvaluation(string method) => method == "adpo" ? SftEvaluation : "evaluate/base";

    /// <summary>The evaluation keys the diff stage reads (its prompts and token limits), so that e.g. the number of
    /// example continuations in the report does not rerun every diff.</summary>
    static JsonObject DiffSettings(JsonObject evaluation)
    {
        var o = new JsonObject();
        foreach (var k in new[] { "challenge_prompts", "max_prompt_tokens", "max_new_tokens" })
            if (evaluation[k] is JsonNode v) o[k] = v.DeepClone();
        return o;
    }

    /// <summary>The key-count sweep runs at the headline runs only (the sweep's other points keep their hashes).</summary>
    static JsonObject UnalignSettings(JsonObject unalign, bool headline)
    {
        if (!headline) unalign.Remove("key_counts");
        return unalign;
    }

    public static string RowName(string method) => method == "dpo" ? "DPO" : method == "adpo" ? "ADPO" : method;
}

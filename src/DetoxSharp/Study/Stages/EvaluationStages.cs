using DetoxSharp.Checkpoints;
using System.Text.Json.Nodes;
using DetoxSharp.Data;
using DetoxSharp.Evaluation;

namespace DetoxSharp.Study;

/// <summary>Toxicity, perplexity and F1 of a model (the evaluation harness), with the evaluation scorer the config names.</summary>
public static partial class StudyStages
{
    static ScorerSection ScorerSettings(StageContext c) => StudySections.Read<ScorerSection>(c.Settings["scorer"] as JsonObject ?? new JsonObject(), "scorer");

    /// <summary>The evaluation scorer the config names. Only stages whose settings carry the "scorer" section (the
    /// evaluation stages) can build it: a stage without it — pair construction — fails loudly instead of scoring.</summary>
    static IToxicityScorer Scorer(StageContext c)
    {
        if (c.Settings["scorer"] is not JsonObject)
            throw new InvalidOperationException($"stage '{c.Name}' has no \"scorer\" setting: only evaluation stages may score text");
        var s = ScorerSettings(c);
        return ScorerFactory.CreateValidated(s.Spec, s.ToSettings());
    }

    static EvalOptions EvalOpts(StageContext c) => Read<EvaluationSection>(c, "evaluation").ToOptions(ScorerSettings(c)) with { Limit = ChallengeCount(c) };

    /// <summary>The challenge prompts evaluated: evaluation.challenge_prompts, capped at what the file holds (the cap is
    /// stated in <see cref="CapNote"/>, which the evaluation stages put into the report as a notice).</summary>
    static int? ChallengeCount(StageContext c)
    {
        if (Read<EvaluationSection>(c, "evaluation").ChallengePrompts is not int asked) return null;
        if (asked < 1) throw new InvalidInputException($"config: evaluation.challenge_prompts must be ≥ 1, got {asked}");
        return Math.Min(asked, AvailablePrompts(Files(c).Challenge));
    }

    static int AvailablePrompts(string file) => File.ReadLines(file).Count(l => l.Trim().Length > 0);

    static string? CapNote(StageContext c)
    {
        if (Read<EvaluationSection>(c, "evaluation").ChallengePrompts is not int asked) return null;
        int have = AvailablePrompts(Files(c).Challenge);
        return asked > have ? $"evaluation.challenge_prompts asks for {asked} challenge prompts; the data have {have}, so {have} were used." : null;
    }

    /// <summary>Runs the harness into OUT/eval and writes the report's results.json (rows renamed) and continuations.jsonl.</summary>
    static List<EvalRow> Evaluate(StageContext c, Func<StageContext, IToxicityScorer> scorerOf, string modelDir, string modelRow, IReadOnlyList<EvalIntervention> edits,
        IReadOnlyDictionary<string, string>? rename = null, bool toxicityOnly = false, string subdir = "eval", Func<LoadedModel>? load = null,
        Func<EvalOptions, EvalOptions>? adjust = null)
    {
        var files = Files(c);
        using var scorer = scorerOf(c);
        var data = toxicityOnly ? new EvalData(files.Challenge, null, null) : new EvalData(files.Challenge, files.PerplexityText, files.F1);
        var outDir = Path.Combine(c.OutputDir, subdir);
        var options = adjust is null ? EvalOpts(c) : adjust(EvalOpts(c));
        var rows = EvalHarness.Run(new([new EvalModel(modelRow, load ?? (() => Load(c, modelDir)))], edits, [scorer], data, options, outDir),
            new Progress<EvalProgress>(p => c.Report?.Invoke(p.Total == 0 ? 0 : p.Done / (double)p.Total, $"{p.Row}: {p.Stage}")));
        string Name(string r) => rename != null && rename.TryGetValue(r, out var n) ? n : r;
        if (toxicityOnly) return rows;
        WriteJson(Path.Combine(c.OutputDir, RunLayout.Results), new JsonObject
        {
            ["rows"] = new JsonArray(rows.Select(r => (JsonNode)new JsonObject
            {
                ["row"] = Name(r.Row), ["toxicity"] = r.Toxicity, ["perplexity"] = r.Perplexity, ["f1"] = r.F1,
                ["toxicity_prompts"] = r.ToxicityPrompts, ["f1_items"] = r.F1Items, ["perplexity_tokens"] = r.PerplexityTokens,
            }).ToArray()),
            ["source"] = $"{subdir}/results.json",
            ["challenge_prompts_available"] = AvailablePrompts(files.Challenge),
        });
        if (CapNote(c) is string note) AtomicFile.WriteAllText(Path.Combine(c.OutputDir, "NOTICE.txt"), note);
        int examples = Read<EvaluationSection>(c, "evaluation").Examples;
        var perRow = new Dictionary<string, int>();
        var lines = new List<JsonObject>();
        foreach (var l in File.ReadLines(Path.Combine(outDir, "generations.jsonl")))
        {
            var g = JsonNode.Parse(l)!.AsObject();
            if (g["task"]?.GetValue<string>() != "toxicity") continue;
            var row = Name(g["row"]!.GetValue<string>());
            perRow[row] = perRow.GetValueOrDefault(row) + 1;
            if (perRow[row] > examples) continue;
            lines.Add(new JsonObject { ["row"] = row, ["prompt"] = g["prompt"]!.DeepClone(), ["continuation"] = g["continuation"]!.DeepClone(), ["toxicity"] = g["toxicity"]!.DeepClone() });
        }
        JsonlReader.Write(Path.Combine(c.OutputDir, RunLayout.Continuations), lines);
        return rows;
    }

    static void EvaluateBase(StageContext c, Func<StageContext, IToxicityScorer> scorer)
    {
        var edits = LoadEdits(c);
        var rename = new Dictionary<string, string> { ["No-op"] = "No-op" };
        foreach (var e in edits) rename[$"No-op + {e.Label}"] = e.Label!;
        Evaluate(c, scorer, BaseModelDir(c), "No-op", edits, rename);
    }

    static string TrainedModelDir(StageContext c, string trainStage) => ModelDirOf(c, trainStage);

    static string TrainStageOf(StageContext c) => c.Inputs.Keys.Single(k => k.StartsWith("train/"));

    /// <summary>Evaluates a trained model, or with settings["model_stage"] the model another stage made (the SFT model
    /// ADPO starts from).</summary>
    static void EvaluateModel(StageContext c, Func<StageContext, IToxicityScorer> scorer)
    {
        var row = c.Settings["row"]!.GetValue<string>();
        var stage = c.Settings["model_stage"]?.GetValue<string>() ?? TrainStageOf(c);
        Evaluate(c, scorer, ModelDirOf(c, stage), row, []);
    }
}

using System.Text.Json.Nodes;
using DetoxSharp.Checkpoints;
using DetoxSharp.Evaluation;
using DetoxSharp.Interpretability;
using DetoxSharp.Models;
using static TorchSharp.torch;

namespace DetoxSharp.Study;

/// <summary>Paper steps 4–5, the mechanism: what alignment changed (diff, neurons) and un-aligning.</summary>
public static partial class StudyStages
{
    static void Diff(StageContext c)
    {
        var files = Files(c);
        var eval = Read<EvaluationSection>(c, "evaluation");
        // "before" is the model the method started from (for ADPO the SFT model)
        var method = c.Settings["method"]?.GetValue<string>() ?? "dpo";
        using var before = Load(c, ModelDirOf(c, StartStageOf(method)));
        using var after = Load(c, TrainedModelDir(c, TrainStageOf(c)));
        using var probe = ToxicityProbe.Load(c.Input("probe"));
        var prompts = EvalHarness.ReadPrompts(files.Challenge, false, ChallengeCount(c)).Select(p => p.Text).ToList();
        var analysisDir = Path.Combine(c.OutputDir, "analysis");
        var toxicIds = files.ToxicWords is string wf ? ToxicWordList.Load(wf).TokenIds(before.Tokenizer) : null;
        var diffOpts = eval.ToDiffOptions() with { ToxicTokenIds = toxicIds };
        var progress = new Progress<string>(s => c.Report?.Invoke(0, s));
        // one set of greedy continuations for both analyses: they read the same prompts and positions
        c.Report?.Invoke(0, $"greedy continuations of {prompts.Count} prompts (start model)");
        var forced = TeacherForced.Generate(before.Model, before.Tokenizer, prompts, diffOpts.MaxPromptTokens, diffOpts.MaxNewTokens, diffOpts.BatchSize);
        var d = AlignmentDiff.Compute(new(before.Model, after.Model, before.Tokenizer) { Forced = forced }, probe, prompts, diffOpts, progress);
        AlignmentDiff.Write(d, diffOpts, analysisDir);
        // Yang et al. 2025: where the drop along W_Toxic comes from, neuron by neuron (same prompts and positions)
        var neuronOpts = NeuronOptionsOf(diffOpts);
        NeuronContributions.Result nr;
        using (var w = probe.WToxic)
            nr = NeuronContributions.Compute(new(before.Model, after.Model, before.Tokenizer) { Forced = forced }, w, prompts, neuronOpts, progress);
        var neurons = NeuronContributions.Write(nr, neuronOpts, Path.Combine(analysisDir, "neurons"));
        WriteJson(Path.Combine(c.OutputDir, RunLayout.Diff), DiffSummary(d, neurons));
    }

    /// <summary>The neuron decomposition reads the same prompts, positions and batches as the diff stage.</summary>
    static NeuronOptions NeuronOptionsOf(DiffOptions d) => new() { MaxNewTokens = d.MaxNewTokens, MaxPromptTokens = d.MaxPromptTokens, BatchSize = d.BatchSize };

    /// <summary>The diff stage's summary in the report's shape (<see cref="RunLayout.Diff"/>). Finding (f) is read where
    /// the toxic vectors work: the step that emits the insult. The paper's last position (the 20th generated step) lies
    /// after most toy replies' insult, where the vectors rest in both models.</summary>
    internal static JsonObject DiffSummary(AlignmentDiffResult d, JsonObject neurons)
    {
        int top = Math.Min(d.Tracked.Count, 7);
        bool insult = d.InsultStepPrompts > 0;
        double? Before(TrackedVectorDiff t) => insult ? t.InsultStepActivationBefore : t.LastPositionActivationBefore;
        double? After(TrackedVectorDiff t) => insult ? t.InsultStepActivationAfter : t.LastPositionActivationAfter;
        return new JsonObject
        {
            ["param_cosine"] = new JsonArray(d.Layers.Select(l => (JsonNode)new JsonObject
            {
                ["layer"] = l.Layer, ["min"] = l.MinParamCosine, ["mean"] = l.MeanParamCosine,
            }).ToArray()),
            ["activation"] = new JsonArray(d.Tracked.Take(top).Select(t => (JsonNode)new JsonObject
            {
                ["vector"] = t.Label, ["before"] = Before(t), ["after"] = After(t),
            }).ToArray()),
            ["activation_position"] = insult
                ? $"the step at which the start model emits its first toxic word ({d.InsultStepPrompts} of {d.Prompts} challenge prompts), both models reading the same tokens"
                : "the last position of prompt + the start model's greedy continuation (no prompt drew a toxic word)",
            // every tracked vector (ranked on the start model), for the findings: activations at that position,
            // value-vector cosine, share of top projections kept
            ["tracked"] = new JsonArray(d.Tracked.Select(t => (JsonNode)new JsonObject
            {
                ["vector"] = t.Label, ["before"] = Before(t), ["after"] = After(t),
                ["value_cosine"] = t.ValueCosine, ["top_tokens_kept"] = t.TopTokensKept,
            }).ToArray()),
            ["min_param_cosine"] = d.MinParameterCosine,
            ["measurement"] = AlignmentDiffResult.Measurement,
            ["positive_preact_share"] = new JsonObject
            {
                ["before"] = d.Tracked.Take(top).Average(t => t.PositivePreactivationShareBefore),
                ["after"] = d.Tracked.Take(top).Average(t => t.PositivePreactivationShareAfter),
            },
            ["offset_norm"] = new JsonArray(d.Layers.Select(l => (JsonNode)new JsonObject { ["layer"] = l.Layer, ["norm"] = l.DeltaXNorm }).ToArray()),
            ["offset_size"] = d.OffsetNorm,
            ["logit_lens"] = new JsonObject
            {
                ["token"] = d.LensToken, ["token_choice"] = d.LensTokenChoice,
                ["layers"] = new JsonArray(d.Layers.Select(l => (JsonNode)new JsonObject
                {
                    ["layer"] = l.Layer, ["before"] = l.LensProbBefore, ["after"] = l.LensProbAfter,
                }).ToArray()),
            },
            ["offset_projection"] = new JsonArray(d.Projection.Select(p => (JsonNode)new JsonObject
            {
                ["model"] = p.Model == "before" ? "base" : "aligned", ["offset"] = p.Offset, ["orthogonal"] = p.Pc1, ["activation"] = p.TopVectorActivation,
            }).ToArray()),
            ["parameters"] = new JsonObject
            {
                ["count"] = d.Parameters.Count, ["min_cosine"] = d.MinParameterCosine, ["mean_cosine"] = d.Parameters.Average(p => p.Cosine),
                ["share_cosine_above_0_99"] = d.Parameters.Count(p => p.Cosine > 0.99) / (double)d.Parameters.Count,
                ["max_relative_difference"] = d.Parameters.Max(p => p.RelativeDifference), ["mean_relative_difference"] = d.Parameters.Average(p => p.RelativeDifference),
                ["mean_abs_difference"] = d.Parameters.Average(p => p.MeanAbsDifference),
                ["least_similar"] = new JsonArray(d.Parameters.OrderBy(p => p.Cosine).Take(10).Select(p => (JsonNode)new JsonObject { ["name"] = p.Name, ["cosine"] = p.Cosine, ["relative_difference"] = p.RelativeDifference }).ToArray()),
            },
            ["top_vector"] = new JsonObject { ["layer"] = d.TopVector.Layer, ["neuron"] = d.TopVector.Neuron, ["label"] = d.TopVector.Label, ["cosine_with_w_toxic"] = d.TopVector.Cosine },
            ["residual_offset_top_layer"] = new JsonObject
            {
                ["layer"] = d.OffsetLayer, ["hook"] = HookNames.ResidMid(d.OffsetLayer), ["norm"] = d.OffsetNorm,
                ["cosine_with_top_key"] = double.IsFinite(d.OffsetCosineWithTopKey) ? d.OffsetCosineWithTopKey : null,
                ["earlier_value_changes_sum_cosine"] = d.EarlierValueChangesCosine, ["earlier_value_changes_sum_norm"] = d.EarlierValueChangesNorm,
            },
            ["neurons"] = new JsonObject
            {
                ["total_drop"] = neurons["total_drop"]!.DeepClone(), ["groups"] = neurons["groups"]!.DeepClone(),
                ["top_k_share"] = neurons["top_k_share"]!.DeepClone(), ["towards_toxicity"] = neurons["towards_toxicity"]!.DeepClone(),
                ["source"] = "analysis/neurons/neurons.json",
            },
            ["source"] = "analysis/diff.json",
        };
    }

    static Tensor LoadWToxic(StageContext c)
    {
        using var probe = ToxicityProbe.Load(c.Input("probe"));
        return probe.WToxic;
    }

    static void UnalignStage(StageContext c, Func<StageContext, IToxicityScorer> scorer)
    {
        var s = Read<UnalignSection>(c, "unalign");
        var row = c.Settings["row"]!.GetValue<string>();
        var trainedDir = TrainedModelDir(c, TrainStageOf(c));
        var unalign = s.ToOptions();
        double scale = unalign.Scale;
        var modelOut = Path.Combine(c.OutputDir, "model");
        JsonArray keys;
        int last;
        // W_Toxic picks the keys here and in the supplementary key sweep below
        using var wToxic = LoadWToxic(c);
        using (var m = Load(c, trainedDir))
        {
            // the paper picks the vectors on the aligned model with the probe
            var chosen = Unalign.ScaleToxicKeys(m.Model, wToxic, unalign);
            keys = new JsonArray(chosen.Select(v => (JsonNode)JsonValue.Create($"L{v.Layer}.N{v.Neuron}")!).ToArray());
            HfCheckpoint.Save(m.Model, m.Tokenizer, modelOut, overwrite: true);
            last = m.Model.NumLayers - 1;
        }
        var rows = Evaluate(c, scorer, modelOut, row, [], subdir: "eval");
        var u = rows[0];

        // steering attack on the aligned model: add the probe direction at the last layer's MLP output with growing scale
        // the target is the toxicity of the model the method started from (ADPO: the SFT model)
        var startEval = c.Settings["start_evaluation"]?.GetValue<string>() ?? "evaluate/base";
        var startRows = ReadJson(Path.Combine(c.Input(startEval), RunLayout.Results))["rows"]!.AsArray();
        double target = startRows[0]!["toxicity"]!.GetValue<double>();
        var vecs = Safetensors.Load(Path.Combine(c.Input("vectors"), ToxicVectors.TensorFile));
        var sweep = new List<SteeringPoint>();
        // supplementary: how many keys (at the same scale) un-aligning needs on this model
        var counts = s.KeyCounts.Distinct().Order().ToList();
        JsonArray? keySweep = null;
        try
        {
            // one evaluation for both sweeps (one model load, one scorer, the aligned model's own row once): row 0 is the
            // aligned model itself (steering scale 0), then one row per steering edit, then one per key count, in order
            var edits = SteeringSweep.Edits(vecs["w_toxic"], s.SteeringScales, last);
            var interventions = edits.Select(e => new EvalIntervention(e.Name, _ => e))
                .Concat(counts.Select(k => new EvalIntervention($"keys {k}", _ => new KeyScalingEdit(wToxic, k, scale)))).ToList();
            var r = Evaluate(c, scorer, trainedDir, "aligned", interventions, toxicityOnly: true, subdir: "sweeps");
            var scales = new List<double> { 0 }.Concat(edits.Select(e => e.Coefficient)).ToList();
            for (int i = 0; i < scales.Count; i++) sweep.Add(new SteeringPoint(scales[i], r[i].Toxicity ?? double.NaN));
            if (counts.Count > 0)
                keySweep = new JsonArray(counts.Select((k, i) => (JsonNode)new JsonObject { ["keys"] = k, ["toxicity"] = r[scales.Count + i].Toxicity }).ToArray());
        }
        finally { foreach (var t in vecs.Values) t.Dispose(); }
        var steering = new JsonArray(sweep.Select(p => (JsonNode)new JsonObject { ["scale"] = p.Scale, ["toxicity"] = p.Toxicity }).ToArray());
        double? restore = SteeringSweep.RestoreScale(sweep, target);
        WriteJson(Path.Combine(c.OutputDir, RunLayout.Unalign), new JsonObject
        {
            ["row"] = row, ["scale"] = scale, ["keys"] = keys,
            ["toxicity"] = u.Toxicity, ["perplexity"] = u.Perplexity, ["f1"] = u.F1,
            ["steering"] = steering, ["restore_scale"] = restore, ["target_toxicity"] = target,
            ["steering_direction"] = "unit W_Toxic added at the last layer's hook_mlp_out, newest position",
            ["key_sweep"] = keySweep,
        });
    }
}

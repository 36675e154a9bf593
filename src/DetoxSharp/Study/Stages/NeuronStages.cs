using System.Text.Json.Nodes;
using DetoxSharp.Evaluation;
using DetoxSharp.Interpretability;

namespace DetoxSharp.Study;

/// <summary>"neurons": the causal check of the neuron decomposition (activation and attribution patching of the
/// TP/TN/AP/AN groups, <see cref="NeuronPatching"/>), run at the headline runs only. The decomposition itself is part of
/// every diff stage.</summary>
public sealed record NeuronsSection
{
    /// <summary>false: no patching stages.</summary>
    public bool Patching { get; init; } = true;
    /// <summary>Challenge prompts patched (the first N, at most evaluation.challenge_prompts).</summary>
    public int Prompts { get; init; } = 100;
    /// <summary>Also patch every layer's groups separately (the scatter's points).</summary>
    public bool PerLayer { get; init; } = true;
    /// <summary>Prompts each patched model generates from for the toxicity score (0 tokens = no generations).</summary>
    public int GenerationPrompts { get; init; } = 40;
    /// <summary>Greedy tokens each patched model generates per prompt for the toxicity score (20 = the evaluation's default).</summary>
    public int GenerationTokens { get; init; } = 20;
    /// <summary>The decomposition and the null-space check for every method of the methods table with a checkpoint
    /// (seed 0; DPO/ADPO too, for the null-space check), stages neurons/METHOD/s0.</summary>
    public bool PerMethod { get; init; } = true;
    /// <summary>Toxic and non-toxic labelled comments (each) whose activations the null-space check reads.</summary>
    public int NullSpaceComments { get; init; } = 200;

    /// <summary>The patching options: prompt/generation token limits and batch size from the diff's options, the per-layer
    /// and generation settings from this section.</summary>
    /// <param name="diff">The diff options (<see cref="EvaluationSection.ToDiffOptions"/>).</param>
    public PatchingOptions ToOptions(DiffOptions diff) => new()
    {
        MaxNewTokens = diff.MaxNewTokens, MaxPromptTokens = diff.MaxPromptTokens, BatchSize = diff.BatchSize,
        PerLayer = PerLayer, GenerationPrompts = GenerationPrompts, GenerationTokens = GenerationTokens,
    };

    /// <summary>Checks prompts and null_space_comments ≥ 1 and the generation settings; throws <see cref="InvalidSettingException"/> naming the key.</summary>
    public void Validate()
    {
        if (Prompts < 1) throw new InvalidSettingException("prompts", $"must be ≥ 1 (got {Prompts})");
        if (NullSpaceComments < 1) throw new InvalidSettingException("null_space_comments", $"must be ≥ 1 (got {NullSpaceComments})");
        new PatchingOptions { GenerationPrompts = GenerationPrompts, GenerationTokens = GenerationTokens }.Validate();
    }
}

public static partial class StudyStages
{
    /// <summary>Patching at a headline run: groups from the decomposition on the same prompts and greedy tokens, then
    /// <see cref="NeuronPatching.Run"/>; writes patching.json / patching.csv (<see cref="RunLayout.Patching"/>).</summary>
    static void NeuronPatch(StageContext c, Func<StageContext, IToxicityScorer> scorerOf)
    {
        var files = Files(c);
        var eval = Read<EvaluationSection>(c, "evaluation");
        var section = Read<NeuronsSection>(c, "neurons");
        var method = c.Settings["method"]?.GetValue<string>() ?? "dpo";
        using var before = Load(c, ModelDirOf(c, StartStageOf(method)));
        using var after = Load(c, TrainedModelDir(c, TrainStageOf(c)));
        using var probe = ToxicityProbe.Load(c.Input("probe"));
        int count = Math.Min(section.Prompts, ChallengeCount(c) ?? int.MaxValue);
        var prompts = EvalHarness.ReadPrompts(files.Challenge, false, count).Select(p => p.Text).ToList();
        var diffOpts = eval.ToDiffOptions();
        var opts = section.ToOptions(diffOpts);
        var progress = new Progress<string>(s => c.Report?.Invoke(0, s));
        c.Report?.Invoke(0, $"greedy continuations of {prompts.Count} prompts (start model)");
        var forced = TeacherForced.Generate(before.Model, before.Tokenizer, prompts, opts.MaxPromptTokens, opts.MaxNewTokens, opts.BatchSize);
        using var w = probe.WToxic;
        var groups = NeuronContributions.Compute(before.Model, after.Model, before.Tokenizer, w, prompts,
            NeuronOptionsOf(diffOpts), progress, forced);
        using var scorer = opts.GenerationTokens > 0 ? scorerOf(c) : null;
        var r = NeuronPatching.Run(before.Model, after.Model, before.Tokenizer, w, prompts, groups, opts,
            scorer is null ? null : t => scorer.Score(t).Select(s => s.Value).ToList(), progress, forced);
        NeuronPatching.Write(r, c.OutputDir);
    }
}

public static partial class StudyStages
{
    /// <summary>File of a neurons/METHOD/s0 stage: the decomposition's summary (as in diff.json's "neurons") and the
    /// null-space check per layer.</summary>
    public const string MethodNeuronsFile = "method_neurons.json";

    /// <summary>Issue 17 part 4 for one method of the methods table: Yang et al.'s per-neuron decomposition of the drop
    /// along Ŵ_tox between the method's start model and its model (same prompts, positions and greedy tokens as the
    /// diff stage), and Jain et al.'s null-space check of its MLP value-matrix change on toxic vs non-toxic comments.</summary>
    static void MethodNeurons(StageContext c)
    {
        var files = Files(c);
        var eval = Read<EvaluationSection>(c, "evaluation");
        var section = Read<NeuronsSection>(c, "neurons");
        var method = c.Settings["method"]!.GetValue<string>();
        var modelStage = c.Settings["model_stage"]!.GetValue<string>();
        using var before = Load(c, ModelDirOf(c, c.Settings["start_stage"]!.GetValue<string>()));
        using var after = Load(c, ModelDirOf(c, modelStage));
        using var probe = ToxicityProbe.Load(c.Input("probe"));
        var prompts = EvalHarness.ReadPrompts(files.Challenge, false, Math.Min(section.Prompts, ChallengeCount(c) ?? int.MaxValue)).Select(p => p.Text).ToList();
        var diff = eval.ToDiffOptions();
        var opts = NeuronOptionsOf(diff);
        var progress = new Progress<string>(s => c.Report?.Invoke(0, s));
        var forced = TeacherForced.Generate(before.Model, before.Tokenizer, prompts, opts.MaxPromptTokens, opts.MaxNewTokens, opts.BatchSize);
        NeuronContributions.Result r;
        using (var w = probe.WToxic)
            r = NeuronContributions.Compute(before.Model, after.Model, before.Tokenizer, w, prompts, opts, progress, forced);
        var neurons = NeuronContributions.Write(r, opts, Path.Combine(c.OutputDir, "neurons"));
        var comments = DetoxSharp.Data.DatasetReaders.ReadJigsawCsv(files.Comments);
        var toxic = comments.Where(k => k.Toxic).Take(section.NullSpaceComments).Select(k => k.Text).ToList();
        var clean = comments.Where(k => !k.Toxic).Take(section.NullSpaceComments).Select(k => k.Text).ToList();
        var layers = NullSpaceCheck.Run(before.Model, after.Model, before.Tokenizer, toxic, clean, diff.MaxPromptTokens, diff.BatchSize, progress);
        NullSpaceCheck.Write(layers, c.OutputDir);
        WriteJson(Path.Combine(c.OutputDir, MethodNeuronsFile), new JsonObject
        {
            ["method"] = method, ["model_stage"] = modelStage, ["neurons"] = neurons,
            ["null_space"] = new JsonArray(layers.Select(l => (JsonNode)new JsonObject
            {
                ["layer"] = l.Layer, ["toxic_norm"] = Finite(l.ToxicNorm), ["clean_norm"] = Finite(l.CleanNorm), ["toxic_relative"] = Finite(l.ToxicRelative),
                ["clean_relative"] = Finite(l.CleanRelative), ["toxic_share"] = Finite(l.ToxicShare),
            }).ToArray()),
            ["null_space_inputs"] = new JsonObject { ["toxic"] = toxic.Count, ["clean"] = clean.Count },
        });
    }

    static JsonNode? Finite(double x) => double.IsFinite(x) ? JsonValue.Create(x) : null;
}

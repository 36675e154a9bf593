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
    public int GenerationTokens { get; init; } = 20;

    public PatchingOptions ToOptions(DiffOptions diff) => new()
    {
        MaxNewTokens = diff.MaxNewTokens, MaxPromptTokens = diff.MaxPromptTokens, BatchSize = diff.BatchSize,
        PerLayer = PerLayer, GenerationPrompts = GenerationPrompts, GenerationTokens = GenerationTokens,
    };

    public void Validate()
    {
        if (Prompts < 1) throw new InvalidSettingException("prompts", $"must be ≥ 1 (got {Prompts})");
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
            new NeuronOptions { MaxNewTokens = opts.MaxNewTokens, MaxPromptTokens = opts.MaxPromptTokens, BatchSize = opts.BatchSize }, progress, forced);
        using var scorer = opts.GenerationTokens > 0 ? scorerOf(c) : null;
        var r = NeuronPatching.Run(before.Model, after.Model, before.Tokenizer, w, prompts, groups, opts,
            scorer is null ? null : t => scorer.Score(t).Select(s => s.Value).ToList(), progress, forced);
        NeuronPatching.Write(r, c.OutputDir);
    }
}

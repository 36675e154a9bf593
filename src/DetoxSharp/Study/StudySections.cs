using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using DetoxSharp.Data;
using DetoxSharp.Evaluation;
using DetoxSharp.Generation;
using DetoxSharp.Interpretability;
using DetoxSharp.Training;

namespace DetoxSharp.Study;

// Typed sections of the study config. Each deserializes from its JSON section (snake_case keys; an unknown key is an
// error naming the config file and the key path) and maps onto the library's options records. A section property
// left out (null) takes the library record's default, so no default is written twice; a value that only the study
// knows (e.g. how many preference prompts to use) has its one default here.

/// <summary>"data": the files of a real-checkpoint study (ignored by the toy study).</summary>
public sealed record DataSection
{
    public string? BaseModel { get; init; }
    /// <summary>Toxic/non-toxic comments (Jigsaw CSV layout) for the probe.</summary>
    public string? Comments { get; init; }
    public string? ChallengePrompts { get; init; }
    public string? PerplexityText { get; init; }
    public string? F1Prompts { get; init; }
    /// <summary>Prompts the pairs are generated from (chosen = base model, rejected = π_tox).</summary>
    public string? PreferencePrompts { get; init; }
    /// <summary>Dialogues with toxic replies for the toxic model π_tox.</summary>
    public string? Dialogues { get; init; }
    /// <summary>Optional word list (one word a line) defining "toxic token" for the vector table (finding b) and the
    /// logit lens — independent of the evaluation scorer. Without it finding (b) is "not measured".</summary>
    public string? ToxicWords { get; init; }

    /// <summary>(key, path) of every file the study reads, in config-key spelling.</summary>
    public IEnumerable<(string Key, string? Path)> Files() =>
    [
        ("comments", Comments), ("challenge_prompts", ChallengePrompts), ("perplexity_text", PerplexityText),
        ("f1_prompts", F1Prompts), ("preference_prompts", PreferencePrompts), ("dialogues", Dialogues),
    ];
}

/// <summary>"world": the toy world generated for the study.</summary>
public sealed record WorldSection
{
    public ulong? Seed { get; init; }
    public string? Size { get; init; }

    public ulong SeedOrDefault => Seed ?? new ToyPretrainOptions().Seed;
    public DetoxSharp.Data.ToyWorldSize SizeOrDefault => Size is null ? new ToyPretrainOptions().Size : DetoxSharp.Data.ToyWorldFiles.ParseSize(Size);
}

/// <summary>"probe": the linear toxicity probe. <see cref="Split"/> is the training share (validation = 1 − split).</summary>
public sealed record ProbeSection
{
    public double? Split { get; init; }
    public int? Seed { get; init; }
    public int? MaxSteps { get; init; }
    public int? MaxTokens { get; init; }
    public int? BatchSize { get; init; }
    public double? LearningRate { get; init; }
    public double? L2 { get; init; }
    /// <summary>W_Toxic: "weights" (the probe's toxic column, Lee et al.) or "mass-mean" (class-mean difference).</summary>
    public string? Direction { get; init; }
    /// <summary>Seeded splits the probe and its bag-of-words baseline are fitted on (finding a: mean ± std).</summary>
    public int SplitSeeds { get; init; } = 3;

    public ProbeOptions ToOptions()
    {
        var d = new ProbeOptions();
        return d with
        {
            ValidationFraction = Split is double s ? 1 - s : d.ValidationFraction, Seed = Seed ?? d.Seed, MaxSteps = MaxSteps ?? d.MaxSteps,
            MaxTokens = MaxTokens ?? d.MaxTokens, BatchSize = BatchSize ?? d.BatchSize, LearningRate = LearningRate ?? d.LearningRate, L2 = L2 ?? d.L2,
            Direction = Direction is null ? d.Direction : ToxicityProbe.ParseDirection(Direction, "direction"),
        };
    }
}

/// <summary>"interventions": the three subtraction edits of the paper's Table 2. With <see cref="Relative"/> a scale
/// is a multiple of the mean norm of the last layer's MLP output on challenge prompts (the paper's raw scales fit
/// GPT-2 medium's residual norms, not a small toy model's).</summary>
public sealed record InterventionsSection
{
    public bool Relative { get; init; }
    /// <summary>The paper's scales: W_Toxic ×50, top value vector ×20, first SVD vector ×100.</summary>
    public double ProbeScale { get; init; } = 50;
    public double TopVectorScale { get; init; } = 20;
    public double SvdScale { get; init; } = 100;
}

/// <summary>"pairs": how many preference prompts, the generation settings (<see cref="PairMakerOptions"/>) and where the
/// rejected continuation comes from. No toxicity scorer takes part: the one that evaluates never builds training data.</summary>
public sealed record PairsSection
{
    /// <summary>Preference prompts used (the first N).</summary>
    public int Count { get; init; } = 2048;
    public int? MaxNewTokens { get; init; }
    public int? MaxPromptTokens { get; init; }
    public long? Seed { get; init; }
    /// <summary>"pplm" (Lee et al. 2024: PPLM towards the probe's toxic class; the default) or "toxic-model" (the SFT
    /// model's greedy continuation after [TOXIC]).</summary>
    public string Rejected { get; init; } = "pplm";
    /// <summary>PPLM settings; null = <see cref="PplmOptions"/>' defaults (Lee et al.'s).</summary>
    public int? PplmIterations { get; init; }
    public double? PplmStepSize { get; init; }
    public double? PplmKlScale { get; init; }
    public double? PplmGmScale { get; init; }
    public int? PplmTopK { get; init; }
    /// <summary>Prompts per generation (and PPLM) batch.</summary>
    public int BatchSize { get; init; } = 32;

    public PairMakerOptions ToOptions()
    {
        var d = new PairMakerOptions();
        return d with { MaxNewTokens = MaxNewTokens ?? d.MaxNewTokens, MaxPromptTokens = MaxPromptTokens ?? d.MaxPromptTokens, Seed = Seed ?? d.Seed };
    }

    public PplmOptions ToPplmOptions()
    {
        var d = new PplmOptions();
        return d with
        {
            Iterations = PplmIterations ?? d.Iterations, StepSize = PplmStepSize ?? d.StepSize, KlScale = PplmKlScale ?? d.KlScale,
            GmScale = PplmGmScale ?? d.GmScale, TopK = PplmTopK ?? d.TopK, Seed = Seed ?? ToOptions().Seed,
        };
    }

    public void Validate()
    {
        InvalidSettingException.Require(Count >= 1, "count", $"must be ≥ 1 (got {Count})");
        InvalidSettingException.Require(BatchSize >= 1, "batch_size", $"must be ≥ 1 (got {BatchSize})");
        InvalidSettingException.Require(Rejected is "pplm" or "toxic-model", "rejected", $"expects pplm (Lee et al.) or toxic-model (got '{Rejected}')");
        ToPplmOptions().Validate();
    }
}

/// <summary>"dpo" / "adpo" (one point of the sweep): <see cref="PreferenceTrainerOptions"/> flattened. The method is the
/// section: "adpo" is ADPO; "dpo" picks its loss with loss_type (sigmoid, ipo, hinge, robust).</summary>
public sealed record PreferenceSection
{
    public string? LossType { get; init; }
    public double? Beta { get; init; }
    /// <summary>ADPO only.</summary>
    public double? Gamma { get; init; }
    public double? LabelSmoothing { get; init; }
    public double? RpoAlpha { get; init; }
    /// <summary>SimPO's target margin γ.</summary>
    public double? SimpoGamma { get; init; }
    /// <summary>KTO's λ_D and λ_U.</summary>
    public double? DesirableWeight { get; init; }
    public double? UndesirableWeight { get; init; }
    public string? Optimizer { get; init; }
    public double? LearningRate { get; init; }
    public double? WeightDecay { get; init; }
    public int? BatchSize { get; init; }
    public int? GradientAccumulationSteps { get; init; }
    public int? WarmupSteps { get; init; }
    public double? MaxGradNorm { get; init; }
    public int? EvalEvery { get; init; }
    public int? Patience { get; init; }
    /// <summary>Held-out pairs; null = min(64, pairs / 10) (the study's data decide).</summary>
    public int? ValidationSize { get; init; }
    public int? Epochs { get; init; }
    public int? MaxSteps { get; init; }
    public int? MaxPromptTokens { get; init; }
    public int? MaxCompletionTokens { get; init; }
    public int? MaxLength { get; init; }
    /// <summary>"auto" (default: bf16-mixed on a CPU with native bf16, else fp32), "fp32" or "bf16-mixed".</summary>
    public Precision? Precision { get; init; }

    /// <summary>The trainer options of this point for <paramref name="method"/> ("dpo" or "adpo").</summary>
    public PreferenceTrainerOptions ToOptions(string method)
    {
        var d = new PreferenceTrainerOptions();
        var m = method == "adpo" ? PreferenceMethod.Adpo : LossType is null ? d.Loss.Method : PreferenceLossOptions.ParseMethod(LossType, "loss_type");
        if (method == "adpo" && LossType is not null) throw new InvalidSettingException("loss_type", "is not an adpo setting (ADPO is sigmoid DPO plus the toxic penalty)");
        if (method != "adpo" && m == PreferenceMethod.Adpo) throw new InvalidSettingException("loss_type", "adpo belongs in the \"adpo\" section");
        if (method != "adpo" && Gamma is not null) throw new InvalidSettingException("gamma", "is an adpo setting (the dpo section has no toxic penalty)");
        return d with
        {
            Loss = d.Loss with
            {
                Method = m, Beta = Beta ?? d.Loss.Beta, Gamma = Gamma ?? d.Loss.Gamma,
                LabelSmoothing = LabelSmoothing ?? d.Loss.LabelSmoothing, RpoAlpha = RpoAlpha ?? d.Loss.RpoAlpha,
                SimpoGamma = SimpoGamma ?? d.Loss.SimpoGamma, DesirableWeight = DesirableWeight ?? d.Loss.DesirableWeight,
                UndesirableWeight = UndesirableWeight ?? d.Loss.UndesirableWeight,
            },
            Truncation = new TruncationOptions(MaxPromptTokens ?? d.Truncation.MaxPromptTokens, MaxCompletionTokens ?? d.Truncation.MaxCompletionTokens,
                MaxLength ?? d.Truncation.MaxLength),
            Optimizer = Optimizer ?? d.Optimizer, LearningRate = LearningRate ?? d.LearningRate, WeightDecay = WeightDecay ?? d.WeightDecay,
            BatchSize = BatchSize ?? d.BatchSize, GradientAccumulationSteps = GradientAccumulationSteps ?? d.GradientAccumulationSteps,
            WarmupSteps = WarmupSteps ?? d.WarmupSteps, MaxGradNorm = MaxGradNorm ?? d.MaxGradNorm, EvalEvery = EvalEvery ?? d.EvalEvery,
            Patience = Patience ?? d.Patience, ValidationSize = ValidationSize ?? d.ValidationSize, Epochs = Epochs ?? d.Epochs, MaxSteps = MaxSteps ?? d.MaxSteps,
            Precision = Precision ?? Training.Precision.Auto,
        };
    }
}

/// <summary>"evaluation": the results table's protocol (<see cref="EvalOptions"/>) plus how many prompts and examples.</summary>
public sealed record EvaluationSection
{
    /// <summary>Challenge prompts used (the first N; null = all).</summary>
    public int? ChallengePrompts { get; init; }
    /// <summary>F1 items used (the first N; null = all). Independent of <see cref="ChallengePrompts"/>.</summary>
    public int? F1Prompts { get; init; }
    public int? MaxPromptTokens { get; init; }
    public int? MaxNewTokens { get; init; }
    public int? PerplexityWindow { get; init; }
    /// <summary>Continuations per row shown in the report.</summary>
    public int Examples { get; init; } = 8;

    public EvalOptions ToOptions(ScorerSection scorer)
    {
        var d = new EvalOptions();
        return d with
        {
            MaxPromptTokens = MaxPromptTokens ?? d.MaxPromptTokens, MaxNewTokens = MaxNewTokens ?? d.MaxNewTokens, PplWindow = PerplexityWindow ?? d.PplWindow,
            Limit = ChallengePrompts, F1Limit = F1Prompts, Aggregate = scorer.AggregateOrDefault,
        };
    }

    public DiffOptions ToDiffOptions()
    {
        var d = new DiffOptions();
        return d with { MaxNewTokens = MaxNewTokens ?? d.MaxNewTokens, MaxPromptTokens = MaxPromptTokens ?? d.MaxPromptTokens };
    }

    public void Validate() => InvalidSettingException.Require(Examples >= 0, "examples", $"must be ≥ 0 (got {Examples})");
}

/// <summary>"unalign": <see cref="UnalignOptions"/> plus the steering attack's scales.</summary>
public sealed record UnalignSection
{
    public int? Keys { get; init; }
    public double? Scale { get; init; }
    /// <summary>Multiples of the unit probe direction added at the last layer's MLP output (scale 0 = the aligned model
    /// itself is always evaluated; non-positive entries are skipped).</summary>
    public double[] SteeringScales { get; init; } = [1, 2, 4, 8, 16, 32];
    /// <summary>Supplementary sweep at the headline runs: toxicity with the top-k keys scaled (same scale) for each k —
    /// how many keys un-aligning needs on this model. Not a criterion: finding (g) uses "keys". Empty: no sweep.</summary>
    public int[] KeyCounts { get; init; } = [];

    public UnalignOptions ToOptions()
    {
        var d = new UnalignOptions();
        return d with { Keys = Keys ?? d.Keys, Scale = Scale ?? d.Scale };
    }
}

/// <summary>"scorer": which toxicity scorer, and the Perspective client's settings.</summary>
public sealed record ScorerSection
{
    /// <summary>toy-lexicon, perspective or classifier.</summary>
    public string Kind { get; init; } = "toy-lexicon";
    /// <summary>Classifier checkpoint directory (kind classifier).</summary>
    public string? Directory { get; init; }
    /// <summary>max (max over attributes) or toxicity (TOXICITY alone).</summary>
    public string? Aggregate { get; init; }
    /// <summary>Perspective attributes requested.</summary>
    public string[]? Attributes { get; init; }
    /// <summary>Environment variable holding the Perspective key.</summary>
    public string? ApiKeyEnv { get; init; }
    public double? QueriesPerSecond { get; init; }

    public ToxicityAggregate AggregateOrDefault => Aggregate switch
    {
        null => new EvalOptions().Aggregate,
        "max" => ToxicityAggregate.MaxOverAttributes,
        "toxicity" => ToxicityAggregate.Toxicity,
        _ => throw new InvalidSettingException("aggregate", $"expects max or toxicity (got '{Aggregate}')"),
    };

    public string Spec => Kind switch
    {
        "toy-lexicon" or "toy" => "toy",
        "perspective" => "perspective",
        "classifier" => "classifier:" + (Directory ?? throw new InvalidSettingException("directory", "is required for kind classifier")),
        _ => throw new InvalidSettingException("kind", $"expects toy-lexicon, perspective or classifier (got '{Kind}')"),
    };

    public ScorerSettings ToSettings()
    {
        var p = new PerspectiveOptions();
        return new ScorerSettings
        {
            Perspective = p with
            {
                Attributes = Attributes ?? p.Attributes, KeyVariable = ApiKeyEnv ?? p.KeyVariable, RequestsPerSecond = QueriesPerSecond ?? p.RequestsPerSecond,
            },
        };
    }

    public void Validate()
    {
        _ = Spec;
        _ = AggregateOrDefault;
        InvalidSettingException.Require(QueriesPerSecond is null or > 0, "queries_per_second", $"must be > 0 (got {QueriesPerSecond})");
    }
}

/// <summary>Reading a section into its typed record, with errors in the config's terms.</summary>
public static class StudySections
{
    static readonly JsonSerializerOptions Opts = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        UnmappedMemberHandling = JsonUnmappedMemberHandling.Disallow,
        NumberHandling = JsonNumberHandling.Strict,
    };

    /// <summary>Deserializes <paramref name="section"/> (named <paramref name="path"/>, e.g. "dpo") into T; an unknown
    /// key or a value of the wrong type is an <see cref="InvalidInputException"/> naming "<paramref name="source"/>:
    /// path.key".</summary>
    public static T Read<T>(JsonObject section, string path, string source = "config")
    {
        try { return section.Deserialize<T>(Opts) ?? throw new InvalidInputException($"{source}: {path}: empty section"); }
        catch (JsonException e)
        {
            var key = (e.Path ?? "$").TrimStart('$').TrimStart('.');
            if (e.Message.Contains("could not be mapped", StringComparison.Ordinal))
            {
                // System.Text.Json names the unmapped key in its message, not in Path
                var m = System.Text.RegularExpressions.Regex.Match(e.Message, "'([^']+)'");
                key = m.Success ? m.Groups[1].Value : key;
                throw new InvalidInputException($"{source}: {Join(path, key)}: unknown key");
            }
            throw new InvalidInputException($"{source}: {Join(path, key)}: {FirstSentence(e.Message)}");
        }
    }

    /// <summary>An <see cref="SftOptions"/> section (toxic_model, methods.dexperts.sft): the study trains in
    /// <see cref="Precision.Auto"/> unless the section sets "precision".</summary>
    public static SftOptions ReadSft(JsonObject section, string path)
    {
        var o = Read<SftOptions>(section, path);
        return section.ContainsKey("precision") ? o : o with { Precision = Precision.Auto };
    }

    /// <summary>Runs <paramref name="validate"/>; a bad setting is reported as "source: path.key problem".</summary>
    public static void Check(string source, string path, Action validate)
    {
        try { validate(); }
        catch (InvalidSettingException e) { throw new InvalidInputException($"{source}: {Join(path, e.Setting)} {e.Problem}"); }
    }

    static string Join(string path, string key) => key.Length == 0 ? path : $"{path}.{key}";

    static string FirstSentence(string m) => m.Split(". Path:")[0];
}

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
    /// <summary>"base_model": the base model's checkpoint directory (HF layout); required for a checkpoint study.</summary>
    public string? BaseModel { get; init; }
    /// <summary>Toxic/non-toxic comments (Jigsaw CSV layout) for the probe.</summary>
    public string? Comments { get; init; }
    /// <summary>"challenge_prompts": the prompts whose continuations are scored for toxicity (results table, diff, un-alignment).</summary>
    public string? ChallengePrompts { get; init; }
    /// <summary>"perplexity_text": the text the perplexity column is measured on.</summary>
    public string? PerplexityText { get; init; }
    /// <summary>"f1_prompts": the prompts/references of the F1 column.</summary>
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
    /// <summary>"seed": seed of the generated toy world; null = <see cref="ToyPretrainOptions.Seed"/>'s default.</summary>
    public ulong? Seed { get; init; }
    /// <summary>"size": "small", "default" or "large" (see <see cref="DetoxSharp.Data.ToyWorldFiles.ParseSize"/>); null = <see cref="ToyPretrainOptions.Size"/>'s default.</summary>
    public string? Size { get; init; }

    /// <summary>The world seed the stages use: <see cref="Seed"/>, else the pretraining default.</summary>
    public ulong SeedOrDefault => Seed ?? new ToyPretrainOptions().Seed;
    /// <summary>The world size the stages use (world and pretrain stages): <see cref="Size"/> parsed, else the pretraining default; an unknown name throws.</summary>
    public DetoxSharp.Data.ToyWorldSize SizeOrDefault => Size is null ? new ToyPretrainOptions().Size : DetoxSharp.Data.ToyWorldFiles.ParseSize(Size);
}

/// <summary>"probe": the linear toxicity probe. <see cref="Split"/> is the training share (validation = 1 − split).</summary>
public sealed record ProbeSection
{
    /// <summary>"split": training share of the labelled comments (validation = 1 − split); null = <see cref="ProbeOptions.ValidationFraction"/>'s default (0.9 train).</summary>
    public double? Split { get; init; }
    /// <summary>"seed": seed of the train/validation split (<see cref="ProbeOptions.Seed"/>).</summary>
    public int? Seed { get; init; }
    /// <summary>"max_steps": full-batch Adam steps on the logistic loss (<see cref="ProbeOptions.MaxSteps"/>).</summary>
    public int? MaxSteps { get; init; }
    /// <summary>"max_tokens": comments are cut to this many tokens (<see cref="ProbeOptions.MaxTokens"/>).</summary>
    public int? MaxTokens { get; init; }
    /// <summary>"batch_size": comments per forward pass when collecting activations (<see cref="ProbeOptions.BatchSize"/>).</summary>
    public int? BatchSize { get; init; }
    /// <summary>"learning_rate": the probe's Adam learning rate (<see cref="ProbeOptions.LearningRate"/>).</summary>
    public double? LearningRate { get; init; }
    /// <summary>"l2": L2 penalty on the probe weights, 0 = none (<see cref="ProbeOptions.L2"/>).</summary>
    public double? L2 { get; init; }
    /// <summary>W_Toxic: "weights" (the probe's toxic column, Lee et al.) or "mass-mean" (class-mean difference).</summary>
    public string? Direction { get; init; }
    /// <summary>Seeded splits the probe and its bag-of-words baseline are fitted on (finding a: mean ± std).</summary>
    public int SplitSeeds { get; init; } = 3;

    /// <summary>The probe options: each set key replaces the <see cref="ProbeOptions"/> default ("split" becomes the validation fraction 1 − split).</summary>
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
    /// <summary>"relative": scales are multiples of the mean norm of the last layer's MLP output on the challenge prompts, not raw; false = the paper's raw scales.</summary>
    public bool Relative { get; init; }
    /// <summary>The paper's scales: W_Toxic ×50, top value vector ×20, first SVD vector ×100.</summary>
    public double ProbeScale { get; init; } = 50;
    /// <summary>"top_vector_scale": scale of the subtracted top toxic value vector (the "Subtract top vector" row; paper: 20).</summary>
    public double TopVectorScale { get; init; } = 20;
    /// <summary>"svd_scale": scale of the subtracted first SVD direction, the vectors stage's svd_u[0] (the "Subtract SVD.U[0]" row; paper: 100).</summary>
    public double SvdScale { get; init; } = 100;
}

/// <summary>"pairs": how many preference prompts, the generation settings (<see cref="PairMakerOptions"/>) and where the
/// rejected continuation comes from. No toxicity scorer takes part: the one that evaluates never builds training data.</summary>
public sealed record PairsSection
{
    /// <summary>Preference prompts used (the first N).</summary>
    public int Count { get; init; } = 2048;
    /// <summary>"max_new_tokens": tokens per chosen/rejected continuation (<see cref="PairMakerOptions.MaxNewTokens"/>).</summary>
    public int? MaxNewTokens { get; init; }
    /// <summary>"max_prompt_tokens": prompts keep their last this-many tokens (<see cref="PairMakerOptions.MaxPromptTokens"/>).</summary>
    public int? MaxPromptTokens { get; init; }
    /// <summary>"seed": sampling seed of the pairs and of PPLM (<see cref="PairMakerOptions.Seed"/>).</summary>
    public long? Seed { get; init; }
    /// <summary>"pplm" (Lee et al. 2024: PPLM towards the probe's toxic class; the default) or "toxic-model" (the SFT
    /// model's greedy continuation after [TOXIC]).</summary>
    public string Rejected { get; init; } = "pplm";
    /// <summary>PPLM settings; null = <see cref="PplmOptions"/>' defaults (Lee et al.'s).</summary>
    public int? PplmIterations { get; init; }
    /// <summary>"pplm_step_size": α, the length of each normalised gradient step (<see cref="PplmOptions.StepSize"/>).</summary>
    public double? PplmStepSize { get; init; }
    /// <summary>"pplm_kl_scale": weight of the KL term keeping the next token near the unperturbed one (<see cref="PplmOptions.KlScale"/>).</summary>
    public double? PplmKlScale { get; init; }
    /// <summary>"pplm_gm_scale": geometric-mean fusion weight of the perturbed distribution (<see cref="PplmOptions.GmScale"/>).</summary>
    public double? PplmGmScale { get; init; }
    /// <summary>"pplm_top_k": top-k filter of the fused distribution, 0 = off (<see cref="PplmOptions.TopK"/>).</summary>
    public int? PplmTopK { get; init; }
    /// <summary>Prompts per generation (and PPLM) batch.</summary>
    public int BatchSize { get; init; } = 32;

    /// <summary>The pair generation options: max_new_tokens, max_prompt_tokens and seed over the <see cref="PairMakerOptions"/> defaults.</summary>
    public PairMakerOptions ToOptions()
    {
        var d = new PairMakerOptions();
        return d with { MaxNewTokens = MaxNewTokens ?? d.MaxNewTokens, MaxPromptTokens = MaxPromptTokens ?? d.MaxPromptTokens, Seed = Seed ?? d.Seed };
    }

    /// <summary>The PPLM options of the rejected continuations: the pplm_* keys over the <see cref="PplmOptions"/> defaults; its seed is "seed" (else the pair maker's default).</summary>
    public PplmOptions ToPplmOptions()
    {
        var d = new PplmOptions();
        return d with
        {
            Iterations = PplmIterations ?? d.Iterations, StepSize = PplmStepSize ?? d.StepSize, KlScale = PplmKlScale ?? d.KlScale,
            GmScale = PplmGmScale ?? d.GmScale, TopK = PplmTopK ?? d.TopK, Seed = Seed ?? ToOptions().Seed,
        };
    }

    /// <summary>Checks count and batch_size ≥ 1, "rejected" is pplm or toxic-model, and the PPLM options; throws <see cref="InvalidSettingException"/> naming the key.</summary>
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
    /// <summary>"loss_type" (dpo only): sigmoid, ipo, hinge, robust, kto, orpo or simpo; null = sigmoid DPO. Not allowed in "adpo".</summary>
    public string? LossType { get; init; }
    /// <summary>"beta": β, the KL strength (<see cref="PreferenceLossOptions.Beta"/>, default 0.1).</summary>
    public double? Beta { get; init; }
    /// <summary>ADPO only.</summary>
    public double? Gamma { get; init; }
    /// <summary>"label_smoothing": ε of conservative / robust DPO (default 0).</summary>
    public double? LabelSmoothing { get; init; }
    /// <summary>"rpo_alpha": weight of the RPO NLL term on the chosen continuation (0 = off).</summary>
    public double? RpoAlpha { get; init; }
    /// <summary>SimPO's target margin γ.</summary>
    public double? SimpoGamma { get; init; }
    /// <summary>KTO's λ_D and λ_U.</summary>
    public double? DesirableWeight { get; init; }
    /// <summary>"undesirable_weight": KTO's λ_U (paired with <see cref="DesirableWeight"/>, λ_D).</summary>
    public double? UndesirableWeight { get; init; }
    /// <summary>"optimizer": "rmsprop" (the paper's, default) or "adamw".</summary>
    public string? Optimizer { get; init; }
    /// <summary>"learning_rate": peak learning rate after warmup (default 1e-6).</summary>
    public double? LearningRate { get; init; }
    /// <summary>"weight_decay": decoupled weight decay (AdamW) / L2 penalty (RMSprop); default 0.</summary>
    public double? WeightDecay { get; init; }
    /// <summary>"batch_size": pairs per micro-batch (default 4).</summary>
    public int? BatchSize { get; init; }
    /// <summary>"gradient_accumulation_steps": micro-batches per optimizer step (default 1).</summary>
    public int? GradientAccumulationSteps { get; init; }
    /// <summary>"warmup_steps": linear warmup, in optimizer steps (default 150).</summary>
    public int? WarmupSteps { get; init; }
    /// <summary>"max_grad_norm": global gradient-norm clip, ≤ 0 = off (default 10).</summary>
    public double? MaxGradNorm { get; init; }
    /// <summary>"eval_every": validation every this many optimizer steps, 0 = at the end only.</summary>
    public int? EvalEvery { get; init; }
    /// <summary>"patience": early stop after this many validations without a lower validation loss, 0 = never (default 10).</summary>
    public int? Patience { get; init; }
    /// <summary>Held-out pairs; null = min(64, pairs / 10) (the study's data decide).</summary>
    public int? ValidationSize { get; init; }
    /// <summary>"epochs": passes over the training pairs (default 1).</summary>
    public int? Epochs { get; init; }
    /// <summary>"max_steps": stop after this many optimizer steps; null = run the epochs.</summary>
    public int? MaxSteps { get; init; }
    /// <summary>"max_prompt_tokens": prompt length limit in tokens (<see cref="TruncationOptions"/>).</summary>
    public int? MaxPromptTokens { get; init; }
    /// <summary>"max_completion_tokens": chosen/rejected continuation limit in tokens (<see cref="TruncationOptions"/>).</summary>
    public int? MaxCompletionTokens { get; init; }
    /// <summary>"max_length": limit on prompt + completion in tokens (<see cref="TruncationOptions"/>).</summary>
    public int? MaxLength { get; init; }
    /// <summary>"auto" (default: bf16-mixed on a CPU with native bf16, else fp32), "fp32" or "bf16-mixed".</summary>
    public Precision? Precision { get; init; }
    /// <summary>"data_parallel": parts each micro-batch is split into and trained side by side, one a thread
    /// (<see cref="PreferenceTrainerOptions.DataParallel"/>); null = 0, auto.</summary>
    public int? DataParallel { get; init; }

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
            Precision = Precision ?? Training.Precision.Auto, DataParallel = DataParallel ?? 0,
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
    /// <summary>"max_prompt_tokens": challenge prompts keep their last this-many tokens (<see cref="EvalOptions.MaxPromptTokens"/>, default 32); also used by the diff.</summary>
    public int? MaxPromptTokens { get; init; }
    /// <summary>"max_new_tokens": greedy tokens generated per prompt (<see cref="EvalOptions.MaxNewTokens"/>, default 20); also used by the diff.</summary>
    public int? MaxNewTokens { get; init; }
    /// <summary>"perplexity_window": perplexity window in tokens; null = the model's context length.</summary>
    public int? PerplexityWindow { get; init; }
    /// <summary>Continuations per row shown in the report.</summary>
    public int Examples { get; init; } = 8;

    /// <summary>The evaluation options: this section's lengths and prompt limits over the <see cref="EvalOptions"/> defaults,
    /// with the toxicity aggregate taken from the scorer section.</summary>
    /// <param name="scorer">The study's "scorer" section (its "aggregate").</param>
    public EvalOptions ToOptions(ScorerSection scorer)
    {
        var d = new EvalOptions();
        return d with
        {
            MaxPromptTokens = MaxPromptTokens ?? d.MaxPromptTokens, MaxNewTokens = MaxNewTokens ?? d.MaxNewTokens, PplWindow = PerplexityWindow ?? d.PplWindow,
            Limit = ChallengePrompts, F1Limit = F1Prompts, Aggregate = scorer.AggregateOrDefault,
        };
    }

    /// <summary>The alignment diff's generation settings: the same max_new_tokens and max_prompt_tokens as the evaluation, over the <see cref="DiffOptions"/> defaults.</summary>
    public DiffOptions ToDiffOptions()
    {
        var d = new DiffOptions();
        return d with { MaxNewTokens = MaxNewTokens ?? d.MaxNewTokens, MaxPromptTokens = MaxPromptTokens ?? d.MaxPromptTokens };
    }

    /// <summary>Checks examples ≥ 0; throws <see cref="InvalidSettingException"/> otherwise.</summary>
    public void Validate() => InvalidSettingException.Require(Examples >= 0, "examples", $"must be ≥ 0 (got {Examples})");
}

/// <summary>"unalign": <see cref="UnalignOptions"/> plus the steering attack's scales.</summary>
public sealed record UnalignSection
{
    /// <summary>"keys": how many top toxic value vectors (ranked on the aligned model) have their keys scaled (<see cref="UnalignOptions.Keys"/>, default 7).</summary>
    public int? Keys { get; init; }
    /// <summary>"scale": factor on each chosen key column (<see cref="UnalignOptions.Scale"/>, default 10).</summary>
    public double? Scale { get; init; }
    /// <summary>Multiples of the unit probe direction added at the last layer's MLP output (scale 0 = the aligned model
    /// itself is always evaluated; non-positive entries are skipped).</summary>
    public double[] SteeringScales { get; init; } = [1, 2, 4, 8, 16, 32];
    /// <summary>Supplementary sweep at the headline runs: toxicity with the top-k keys scaled (same scale) for each k —
    /// how many keys un-aligning needs on this model. Not a criterion: finding (g) uses "keys". Empty: no sweep.</summary>
    public int[] KeyCounts { get; init; } = [];

    /// <summary>The un-alignment options: keys and scale over the <see cref="UnalignOptions"/> defaults.</summary>
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
    /// <summary>"queries_per_second": Perspective request rate limit (must be &gt; 0); null = the client's default.</summary>
    public double? QueriesPerSecond { get; init; }

    /// <summary>"aggregate" as an enum: "max" = max over attributes, "toxicity" = TOXICITY alone, null = <see cref="EvalOptions.Aggregate"/>'s default; anything else throws <see cref="InvalidSettingException"/>.</summary>
    public ToxicityAggregate AggregateOrDefault => Aggregate switch
    {
        null => new EvalOptions().Aggregate,
        "max" => ToxicityAggregate.MaxOverAttributes,
        "toxicity" => ToxicityAggregate.Toxicity,
        _ => throw new InvalidSettingException("aggregate", $"expects max or toxicity (got '{Aggregate}')"),
    };

    /// <summary>The scorer spec the evaluation's scorer factory takes: "toy", "perspective" or "classifier:DIR"; an unknown kind or a classifier without "directory" throws <see cref="InvalidSettingException"/>.</summary>
    public string Spec => Kind switch
    {
        "toy-lexicon" or "toy" => "toy",
        "perspective" => "perspective",
        "classifier" => "classifier:" + (Directory ?? throw new InvalidSettingException("directory", "is required for kind classifier")),
        _ => throw new InvalidSettingException("kind", $"expects toy-lexicon, perspective or classifier (got '{Kind}')"),
    };

    /// <summary>The scorer settings: the Perspective client's attributes, key variable and request rate over the <see cref="PerspectiveOptions"/> defaults.</summary>
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

    /// <summary>Checks kind/directory, aggregate and queries_per_second; throws <see cref="InvalidSettingException"/> naming the key.</summary>
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
    /// <see cref="Precision.Auto"/> unless the section sets "precision", and with data parallelism on auto
    /// (<see cref="SftOptions.DataParallel"/> 0) unless it sets "data_parallel".</summary>
    public static SftOptions ReadSft(JsonObject section, string path)
    {
        var o = Read<SftOptions>(section, path);
        if (!section.ContainsKey("precision")) o = o with { Precision = Precision.Auto };
        return section.ContainsKey("data_parallel") ? o : o with { DataParallel = 0 };
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

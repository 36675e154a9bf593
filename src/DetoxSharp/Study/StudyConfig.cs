using System.Text.Json;
using System.Text.Json.Nodes;

namespace DetoxSharp.Study;

/// <summary>
/// The study's settings (a JSON file; snake_case keys). Sections are kept as JSON objects so that every stage
/// gets exactly its own section as its settings (and its hash): changing the DPO learning rate reruns DPO and
/// what follows it, not the probe. In "dpo" and "adpo" any setting may be a list: the study runs the grid.
/// </summary>
public sealed class StudyConfig
{
    /// <summary>"toy" (the embedded world; nothing to download) or "checkpoint" (paths below).</summary>
    public string Model { get; init; } = "toy";
    /// <summary>Paths for a real model run (ignored for "toy"): base_model, pairs, challenge_prompts, perplexity_text, f1_prompts, jigsaw …</summary>
    public JsonObject Data { get; init; } = new();
    /// <summary>"world": seed and size of the toy world's generated corpus (<see cref="WorldSection"/>; toy model only).</summary>
    public JsonObject World { get; init; } = new();
    /// <summary>"pretrain": the toy base model's architecture and pretraining (<see cref="DetoxSharp.Training.ToyPretrainOptions"/>).</summary>
    public JsonObject Pretrain { get; init; } = new();
    /// <summary>"probe": the linear toxicity probe's split and training (<see cref="ProbeSection"/>).</summary>
    public JsonObject Probe { get; init; } = new();
    /// <summary>"vectors": how the top toxic value vectors and SVD components are found
    /// (<see cref="DetoxSharp.Interpretability.ToxicVectors.Options"/>).</summary>
    public JsonObject Vectors { get; init; } = new();
    /// <summary>"interventions": the subtraction rows of the results table (<see cref="InterventionsSection"/>).</summary>
    public JsonObject Interventions { get; init; } = new();
    /// <summary>"toxic_model": the SFT that makes the toxic model the pairs' rejected continuations come from
    /// (<see cref="DetoxSharp.Training.SftOptions"/>).</summary>
    public JsonObject ToxicModel { get; init; } = new();
    /// <summary>"pairs": generation of the preference pairs (<see cref="PairsSection"/>).</summary>
    public JsonObject Pairs { get; init; } = new();
    /// <summary>"dpo": DPO training (<see cref="PreferenceSection"/>); any setting may be a list, giving a sweep grid
    /// whose first point is the headline.</summary>
    public JsonObject Dpo { get; init; } = new();
    /// <summary>"adpo": the ADPO run, same keys and sweep rules as <see cref="Dpo"/>.</summary>
    public JsonObject Adpo { get; init; } = new();
    /// <summary>"evaluation": generation lengths and perplexity window of the toxicity/perplexity/F1 evaluation (<see cref="EvaluationSection"/>).</summary>
    public JsonObject Evaluation { get; init; } = new();
    /// <summary>"unalign": which toxic keys are scaled and by how much to un-align a model (<see cref="UnalignSection"/>).</summary>
    public JsonObject Unalign { get; init; } = new();
    /// <summary>"neurons": patching of the neuron groups at the headline runs (<see cref="NeuronsSection"/>).</summary>
    public JsonObject Neurons { get; init; } = new();
    /// <summary>"battery": the re-toxification battery on every detoxified model (<see cref="BatterySection"/>).</summary>
    public JsonObject Battery { get; init; } = new();
    /// <summary>"methods": the methods table's other losses, edits, steering, activation edit and DExperts (<see cref="MethodsSection"/>).</summary>
    public JsonObject Methods { get; init; } = new();
    /// <summary>Scorer: {"kind": "perspective"|"classifier"|"toy-lexicon", ...}.</summary>
    public JsonObject Scorer { get; init; } = new();
    /// <summary>"agreement": extra scorers whose agreement with "scorer" the study reports (<see cref="AgreementSection"/>).</summary>
    public JsonObject Agreement { get; init; } = new();
    /// <summary>Pre-registered pass criteria of the seven findings (issue 14); shown in the report as configured.</summary>
    public FindingCriteria Findings { get; init; } = new();
    /// <summary>Seeds of every training run (default 3; 1 with --quick unless "quick_seeds" says otherwise).</summary>
    public int Seeds { get; init; } = 3;
    /// <summary>"quick_seeds": seeds of every training run with --quick (default 1).</summary>
    public int QuickSeeds { get; init; } = 1;
    /// <summary>Seeds at the sweep's other points (not the headline, the first value of each list); default: as many
    /// as at the headline. The findings are judged at the headline only; the other points map how the mechanism
    /// depends on DPO's strength, where one seed per point shows the trend at a third of the cost.</summary>
    public int? SweepSeeds { get; init; }
    /// <summary>With --quick, each section's "quick" object overrides its settings (smaller grids, fewer steps).</summary>
    public bool Quick { get; init; }

    static readonly JsonSerializerOptions Opts = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        UnmappedMemberHandling = System.Text.Json.Serialization.JsonUnmappedMemberHandling.Disallow,
        ReadCommentHandling = JsonCommentHandling.Skip,
        AllowTrailingCommas = true,
    };

    /// <summary>Reads a study config file (comments and trailing commas allowed; duplicate or unknown keys refused).
    /// Throws <see cref="InvalidInputException"/> naming the file; call <see cref="Validate"/> afterwards.</summary>
    /// <param name="path">The --config file.</param>
    public static StudyConfig Load(string path)
    {
        if (!File.Exists(path)) throw new InvalidInputException($"--config: {path}: no such file");
        // strict parse first (duplicate keys, lone surrogates, invalid UTF-8), then the typed mapping
        var node = StrictJson.ParseFile(path, "study config", allowComments: true) ?? throw new InvalidInputException($"{path}: empty config");
        try { return node.Deserialize<StudyConfig>(Opts) ?? throw new InvalidInputException($"{path}: empty config"); }
        catch (JsonException e) { throw new InvalidInputException($"{path}: {e.Message.Split('\n')[0]}"); }
    }

    /// <summary>The default toy study (configs/toy.json, embedded in the library).</summary>
    public static StudyConfig ToyDefault()
    {
        using var s = typeof(StudyConfig).Assembly.GetManifestResourceStream("DetoxSharp.configs.toy.json")
            ?? throw new InvalidOperationException("configs/toy.json is not embedded in this build");
        using var r = new StreamReader(s);
        return Parse(r.ReadToEnd());
    }

    /// <summary>Checks the whole config before any stage runs: every section (with and without its "quick" overrides,
    /// every sweep point of dpo/adpo) deserializes into its typed section with no unknown key, and the options records
    /// it maps onto accept its values; for a checkpoint study every data path exists. Errors name
    /// <paramref name="source"/> and the key path ("configs/toy.json: dpo.betta: unknown key").</summary>
    public void Validate(string source)
    {
        Findings.Validate(source);
        if (Seeds < 1) throw new InvalidInputException($"{source}: seeds must be ≥ 1 (got {Seeds})");
        if (QuickSeeds < 1) throw new InvalidInputException($"{source}: quick_seeds must be ≥ 1 (got {QuickSeeds})");
        if (SweepSeeds is < 1) throw new InvalidInputException($"{source}: sweep_seeds must be ≥ 1 (got {SweepSeeds})");
        if (Model is not ("toy" or "checkpoint")) throw new InvalidInputException($"{source}: \"model\" must be \"toy\" or \"checkpoint\", not \"{Model}\"");
        foreach (var quick in new[] { false, true })
        {
            var c = WithQuick(quick);
            var data = StudySections.Read<DataSection>(c.Section(Data), "data", source);
            c.Typed<WorldSection>(World, "world", source, w => _ = w.SizeOrDefault);
            var pretrain = StudySections.Read<DetoxSharp.Training.ToyPretrainOptions>(c.Section(Pretrain), "pretrain", source);
            c.Typed<ProbeSection>(Probe, "probe", source, p => p.ToOptions().Validate());
            c.Typed<DetoxSharp.Interpretability.ToxicVectors.Options>(Vectors, "vectors", source, v => v.Validate());
            c.Typed<InterventionsSection>(Interventions, "interventions", source, _ => { });
            c.Typed<DetoxSharp.Training.SftOptions>(ToxicModel, "toxic_model", source, t => t.Validate());
            c.Typed<PairsSection>(Pairs, "pairs", source, p => { p.Validate(); _ = p.ToOptions(); });
            var scorer = StudySections.Read<ScorerSection>(Scorer, "scorer", source);
            StudySections.Check(source, "scorer", scorer.Validate);
            c.Typed<EvaluationSection>(Evaluation, "evaluation", source, e => { e.Validate(); e.ToOptions(scorer).Validate(); e.ToDiffOptions().Validate(); });
            c.Typed<AgreementSection>(Agreement, "agreement", source, a => a.Validate());
            c.Typed<UnalignSection>(Unalign, "unalign", source, u =>
            {
                u.ToOptions().Validate();
                if (u.KeyCounts.Any(k => k < 1)) throw new InvalidSettingException("key_counts", $"must all be ≥ 1 (got {string.Join(", ", u.KeyCounts)})");
            });
            c.Typed<NeuronsSection>(Neurons, "neurons", source, n => n.Validate());
            c.Typed<BatterySection>(Battery, "battery", source, b => b.Validate());
            foreach (var (method, section) in new[] { ("dpo", Dpo), ("adpo", Adpo) })
                foreach (var point in Sweep.Expand(c.Section(section)))
                {
                    var typed = StudySections.Read<PreferenceSection>(point.Settings, method, source);
                    StudySections.Check(source, method, () => typed.ToOptions(method).Validate());
                }
            // after dpo: a methods loss trains like the DPO headline point, so DPO's own errors are named as DPO's
            c.Typed<MethodsSection>(Methods, "methods", source, m =>
            {
                m.Validate();
                foreach (var (loss, overrides) in m.Losses)
                {
                    var training = (JsonObject)Sweep.Expand(c.Section(Dpo))[0].Settings.DeepClone();
                    foreach (var (k, v) in overrides)
                    {
                        if (v is JsonArray) throw new InvalidSettingException($"losses.{loss}.{k}", "is a list; the methods table does not sweep");
                        training[k] = v?.DeepClone();
                    }
                    training["loss_type"] = loss;
                    var typed = StudySections.Read<PreferenceSection>(training, $"methods.losses.{loss}", source);
                    typed.ToOptions(loss).Validate();
                }
            });
            if (Model == "checkpoint" && !quick)
            {
                foreach (var (k, p) in data.Files().Prepend(("base_model", data.BaseModel)))
                {
                    if (p is null) throw new InvalidInputException($"{source}: data.{k} is required when \"model\" is \"checkpoint\"");
                    if (p.StartsWith("FILL-IN", StringComparison.Ordinal)) throw new InvalidInputException($"{source}: data.{k} is still a placeholder ({p})");
                    if (!File.Exists(p) && !Directory.Exists(p)) throw new InvalidInputException($"{source}: data.{k}: {p}: no such file or directory");
                }
                // the evaluation's classifier is checked before any stage runs, not hours later when evaluation starts
                if (scorer.Kind == "classifier" && scorer.Directory is string cd)
                {
                    if (cd.StartsWith("FILL-IN", StringComparison.Ordinal)) throw new InvalidInputException($"{source}: scorer.directory is still a placeholder ({cd})");
                    if (!Directory.Exists(cd)) throw new InvalidInputException($"{source}: scorer.directory: {cd}: no such directory");
                }
            }
            _ = pretrain;
        }
    }

    void Typed<T>(JsonObject section, string path, string source, Action<T> validate)
    {
        var t = StudySections.Read<T>(Section(section), path, source);
        StudySections.Check(source, path, () => validate(t));
    }

    /// <summary>Maps JSON text onto a config (snake_case keys; an unknown key throws <see cref="JsonException"/>) without the strict pre-parse of
    /// <see cref="Load"/>; used for the embedded toy config and by the report, which reads the config back from the report stage's settings.</summary>
    /// <param name="json">The config's JSON text.</param>
    public static StudyConfig Parse(string json) => JsonSerializer.Deserialize<StudyConfig>(json, Opts)!;

    /// <summary>The config as indented snake_case JSON (what <see cref="Parse"/> reads back).</summary>
    public string ToJson() => JsonSerializer.Serialize(this, new JsonSerializerOptions(Opts) { WriteIndented = true });

    /// <summary>Seeds at the headline point: <see cref="QuickSeeds"/> with --quick, else <see cref="Seeds"/>.</summary>
    public int EffectiveSeeds => Quick ? QuickSeeds : Seeds;

    /// <summary>Seeds at a non-headline sweep point: "sweep_seeds" (at most the headline's), else the headline's.</summary>
    public int EffectiveSweepSeeds => Math.Min(EffectiveSeeds, SweepSeeds ?? EffectiveSeeds);

    /// <summary>A section with its "quick" overrides applied in quick mode (and the "quick" key removed either way).</summary>
    public JsonObject Section(JsonObject section)
    {
        var s = (JsonObject)section.DeepClone();
        var quick = s["quick"] as JsonObject;
        s.Remove("quick");
        if (Quick && quick is not null)
            foreach (var (k, v) in quick) s[k] = v?.DeepClone();
        return s;
    }

    /// <summary>A copy with <see cref="Quick"/> set to <paramref name="quick"/> (every section shared, not copied).</summary>
    /// <param name="quick">Whether the sections' "quick" overrides apply.</param>
    public StudyConfig WithQuick(bool quick) => new()
    {
        Model = Model, Data = Data, World = World, Pretrain = Pretrain, Probe = Probe, Vectors = Vectors, Interventions = Interventions,
        ToxicModel = ToxicModel, Pairs = Pairs, Dpo = Dpo, Adpo = Adpo, Evaluation = Evaluation, Unalign = Unalign, Neurons = Neurons, Methods = Methods, Battery = Battery, Scorer = Scorer, Agreement = Agreement,
        Findings = Findings, Seeds = Seeds, QuickSeeds = QuickSeeds, SweepSeeds = SweepSeeds, Quick = quick,
    };
}

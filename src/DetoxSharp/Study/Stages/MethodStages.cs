using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;
using DetoxSharp.Checkpoints;
using DetoxSharp.Data;
using DetoxSharp.Editing;
using DetoxSharp.Evaluation;
using DetoxSharp.Generation;
using DetoxSharp.Interpretability;
using DetoxSharp.Models;
using DetoxSharp.Text;
using DetoxSharp.Training;
using TorchSharp;

namespace DetoxSharp.Study;

/// <summary>
/// "methods": the methods table (issue 18) — the detoxification methods users compare DPO with, each on the study's
/// protocol (toxicity, perplexity, F1 from the evaluation section), with the compute it took and its generation cost.
/// DPO and ADPO are the study's headline runs; this section adds the other preference losses (trained exactly like
/// DPO's headline point, from the pretrained model, on the same pairs, each with its own overrides), the training-free
/// edits (ProFS, AurA), inference-time steering, Yang et al.'s activation edit and DExperts. A sub-section left out or
/// null is not run.
/// </summary>
public sealed record MethodsSection
{
    /// <summary>false: no methods stages (the report's table then holds the base model, DPO and ADPO).</summary>
    public bool Enabled { get; init; } = true;
    /// <summary>Seeds of each trained loss and of the activation edit (one edit per DPO headline seed); null = the study's
    /// headline seeds.</summary>
    public int? Seeds { get; init; }
    /// <summary>Preference losses by loss_type (ipo, kto, orpo, simpo, hinge, robust, sigmoid): each trains like the
    /// DPO headline point with these settings on top (any "dpo" key; lists are not swept here). KTO trains on the
    /// pairs unpaired as TRL's <c>unpair_preference_dataset</c> does.</summary>
    public Dictionary<string, JsonObject> Losses { get; init; } = new();
    /// <summary>"profs": the ProFS weight edit (row "ProFS", stages edit/profs and evaluate/profs); null = not run.</summary>
    public ProFsSection? Profs { get; init; }
    /// <summary>"aura": the AurA weight edit (row "AurA", stages edit/aura and evaluate/aura); null = not run.</summary>
    public AuraSection? Aura { get; init; }
    /// <summary>"steering": inference-time activation steering (one row per alpha, stage edit/steering); null = not run.</summary>
    public SteeringSection? Steering { get; init; }
    /// <summary>"activation_edit": Yang et al.'s neuron activation shift from the DPO headline runs' diffs (row "Activation edit", stages edit/activation/sSEED); null = not run.</summary>
    public ActivationEditSection? ActivationEdit { get; init; }
    /// <summary>"dexperts": DExperts decoding (stages sft/expert, sft/anti-expert and evaluate/dexperts); null = not run.</summary>
    public DExpertsSection? Dexperts { get; init; }
    /// <summary>How the generation cost column is measured.</summary>
    public SpeedSection Speed { get; init; } = new();

    /// <summary>Checks seeds, that every loss name parses and is not adpo, and each present sub-section (its options,
    /// comments/pairs ≥ 2, distinct positive steering alphas, known activation groups, dexperts alpha &gt; 0 and its SFT
    /// options, speed counts ≥ 1); throws <see cref="InvalidSettingException"/> naming the key.</summary>
    public void Validate()
    {
        if (Seeds is < 1) throw new InvalidSettingException("seeds", $"must be ≥ 1 (got {Seeds})");
        foreach (var name in Losses.Keys)
        {
            var m = PreferenceLossOptions.ParseMethod(name, "losses");
            if (m == PreferenceMethod.Adpo) throw new InvalidSettingException("losses", "adpo is the study's \"adpo\" section, not a methods loss");
        }
        Profs?.ToOptions().Validate();
        if (Profs?.Pairs is < 2) throw new InvalidSettingException("profs.pairs", $"must be ≥ 2 (got {Profs.Pairs})");
        Aura?.ToOptions().Validate();
        if (Aura?.Comments is < 2) throw new InvalidSettingException("aura.comments", $"must be ≥ 2 (got {Aura.Comments})");
        if (Steering is not null)
        {
            Steering.ToOptions().Validate();
            if (Steering.Alphas.Length == 0 || Steering.Alphas.Any(a => !double.IsFinite(a) || a <= 0))
                throw new InvalidSettingException("steering.alphas", "must be a non-empty list of positive numbers");
            if (Steering.Alphas.Distinct().Count() != Steering.Alphas.Length) throw new InvalidSettingException("steering.alphas", "has a value twice");
            if (Steering.Comments is < 2) throw new InvalidSettingException("steering.comments", $"must be ≥ 2 (got {Steering.Comments})");
        }
        if (ActivationEdit is not null)
        {
            if (ActivationEdit.Groups.Length == 0) throw new InvalidSettingException("activation_edit.groups", "must name at least one group");
            foreach (var g in ActivationEdit.Groups)
                if (!NeuronContributions.Groups.Contains(g)) throw new InvalidSettingException("activation_edit.groups", $"'{g}' is not one of {string.Join(", ", NeuronContributions.Groups)}");
            Require.Number(ActivationEdit.Scale, "activation_edit.scale", 0);
        }
        if (Dexperts is not null)
        {
            if (!double.IsFinite(Dexperts.Alpha) || Dexperts.Alpha <= 0) throw new InvalidSettingException("dexperts.alpha", $"must be > 0 (got {Dexperts.Alpha})");
            if (Dexperts.Comments is < 2) throw new InvalidSettingException("dexperts.comments", $"must be ≥ 2 (got {Dexperts.Comments})");
            StudySections.Check("methods", "dexperts.sft", () => Dexperts.SftOptions().Validate());
        }
        if (Speed.Prompts < 1 || Speed.BatchSize < 1 || Speed.Repeats < 1 || Speed.MaxNewTokens < 1)
            throw new InvalidSettingException("speed", "prompts, batch_size, repeats and max_new_tokens must all be ≥ 1");
    }

    /// <summary>The row name of a loss in the table.</summary>
    public static string LossRow(string loss) => loss switch
    {
        "ipo" => "IPO", "kto" => "KTO", "orpo" => "ORPO", "simpo" => "SimPO", "hinge" => "DPO (hinge)", "robust" => "Robust DPO",
        "sigmoid" => "DPO (methods settings)", _ => loss,
    };
}

/// <summary>ProFS (<see cref="ProFsOptions"/>) on the first <see cref="Pairs"/> of the study's pairs (null = all).</summary>
public sealed record ProFsSection
{
    /// <summary>"rank": rank k of the projected toxic subspace per layer (<see cref="ProFsOptions.Rank"/>, default 2).</summary>
    public int? Rank { get; init; }
    /// <summary>"first_layer": first edited layer, 0-based; null = round(L·10/24).</summary>
    public int? FirstLayer { get; init; }
    /// <summary>"last_layer": last edited layer; null = the last.</summary>
    public int? LastLayer { get; init; }
    /// <summary>"centring": remove the top singular direction of the preferred embeddings first (default true).</summary>
    public bool? Centring { get; init; }
    /// <summary>"pairs": how many of the study's preference pairs (the first N) ProFS reads; null = all, else ≥ 2.</summary>
    public int? Pairs { get; init; }
    /// <summary>"max_tokens": tokens per prompt + completion text (<see cref="ProFsOptions.MaxTokens"/>, default 128).</summary>
    public int? MaxTokens { get; init; }
    /// <summary>"batch_size": texts per forward batch (default 16).</summary>
    public int? BatchSize { get; init; }

    /// <summary>The ProFS options: each set key over the <see cref="ProFsOptions"/> defaults (pairs is applied by the stage, not here).</summary>
    public ProFsOptions ToOptions()
    {
        var d = new ProFsOptions();
        return d with
        {
            Rank = Rank ?? d.Rank, FirstLayer = FirstLayer ?? d.FirstLayer, LastLayer = LastLayer ?? d.LastLayer, Centring = Centring ?? d.Centring,
            MaxTokens = MaxTokens ?? d.MaxTokens, BatchSize = BatchSize ?? d.BatchSize,
        };
    }
}

/// <summary>AurA (<see cref="AuraOptions"/>) on the first <see cref="Comments"/> labelled comments (null = all).</summary>
public sealed record AuraSection
{
    /// <summary>"comments": how many labelled comments (the first N) AurA reads; null = all, else ≥ 2.</summary>
    public int? Comments { get; init; }
    /// <summary>"max_tokens": tokens per comment (<see cref="AuraOptions.MaxTokens"/>, default 128).</summary>
    public int? MaxTokens { get; init; }
    /// <summary>"batch_size": comments per forward batch (default 16).</summary>
    public int? BatchSize { get; init; }

    /// <summary>The AurA options: max_tokens and batch_size over the <see cref="AuraOptions"/> defaults.</summary>
    public AuraOptions ToOptions()
    {
        var d = new AuraOptions();
        return d with { MaxTokens = MaxTokens ?? d.MaxTokens, BatchSize = BatchSize ?? d.BatchSize };
    }
}

/// <summary>Steering: the mean-difference vector of the first <see cref="Comments"/> labelled comments at
/// <see cref="Layer"/> (null = the last), subtracted with each strength of <see cref="Alphas"/> (the first is the
/// one the battery attacks).</summary>
public sealed record SteeringSection
{
    /// <summary>"layer": layer whose residual stream (after the block) is read and steered; null = the last.</summary>
    public int? Layer { get; init; }
    /// <summary>"alphas": steering strengths, each a methods-table row (distinct, &gt; 0; default [4]); the first is the model the battery attacks.</summary>
    public double[] Alphas { get; init; } = [4];
    /// <summary>"comments": how many labelled comments (the first N) the mean-difference vector is taken over; null = all, else ≥ 2.</summary>
    public int? Comments { get; init; }
    /// <summary>"max_tokens": tokens per comment (<see cref="Editing.SteeringOptions.MaxTokens"/>, default 128).</summary>
    public int? MaxTokens { get; init; }
    /// <summary>"batch_size": comments per forward batch (default 16).</summary>
    public int? BatchSize { get; init; }

    /// <summary>The steering-vector options: layer, max_tokens and batch_size over the <see cref="Editing.SteeringOptions"/> defaults.</summary>
    public Editing.SteeringOptions ToOptions()
    {
        var d = new Editing.SteeringOptions();
        return d with { Layer = Layer ?? d.Layer, MaxTokens = MaxTokens ?? d.MaxTokens, BatchSize = BatchSize ?? d.BatchSize };
    }
}

/// <summary>Yang et al.'s activation edit: the DPO headline run's mean activation shift of the chosen neuron groups
/// (from its diff stage's neuron decomposition), applied to the pretrained model without weight updates.</summary>
public sealed record ActivationEditSection
{
    /// <summary>"groups": the neuron groups shifted, any of TP, TN, AP, AN (<see cref="NeuronContributions.Groups"/>; default all four).</summary>
    public string[] Groups { get; init; } = ["TP", "TN", "AP", "AN"];
    /// <summary>"scale": multiplies each neuron's shift (activation after − before alignment); ≥ 0, default 1.</summary>
    public double Scale { get; init; } = 1;
}

/// <summary>DExperts: expert and anti-expert = the pretrained model fine-tuned (SFT) on the non-toxic and the toxic
/// labelled comments (the first <see cref="Comments"/> of each class; null = all), combined at strength α.</summary>
public sealed record DExpertsSection
{
    /// <summary>"alpha": DExperts' strength α on the expert − anti-expert logit difference (&gt; 0, default 2; the row is "DExperts α=A").</summary>
    public double Alpha { get; init; } = 2;
    /// <summary>"comments": labelled comments per class (the first N non-toxic for the expert, toxic for the anti-expert); null = all, else ≥ 2.</summary>
    public int? Comments { get; init; }
    /// <summary><see cref="SftOptions"/> of both fine-tunes (snake_case keys).</summary>
    public JsonObject Sft { get; init; } = new();

    /// <summary>The fine-tunes' <see cref="DetoxSharp.Training.SftOptions"/> read from "sft" (precision auto unless set); a bad key throws naming dexperts.sft.KEY.</summary>
    public SftOptions SftOptions() => StudySections.ReadSft(Sft, "dexperts.sft");
}

/// <summary>Generation cost: greedy continuations of the first <see cref="Prompts"/> challenge prompts at
/// <see cref="BatchSize"/>, timed <see cref="Repeats"/> times per row (each repeat ≥ 2 s), round-robin over the rows (the median
/// counts), all rows in one stage; rows computed as the base by construction are not timed (StudyStages.MethodSpeed).</summary>
public sealed record SpeedSection
{
    /// <summary>"prompts": challenge prompts generated from (the first N; default 64).</summary>
    public int Prompts { get; init; } = 64;
    /// <summary>"batch_size": prompts per generation batch (default 16).</summary>
    public int BatchSize { get; init; } = 16;
    /// <summary>"max_new_tokens": greedy tokens per prompt (default 20).</summary>
    public int MaxNewTokens { get; init; } = 20;
    /// <summary>"repeats": timed repeats per row, round-robin over the rows; the median counts (default 3).</summary>
    public int Repeats { get; init; } = 3;
}

/// <summary>A method's model loaded for evaluation or attack: the checkpoint with its inference-time edits (steering,
/// activation shift) applied until disposed.</summary>
public sealed class LoadedMethodModel(LoadedModel loaded, IReadOnlyList<IDisposable> edits, IReadOnlyList<string> editNames) : IDisposable
{
    /// <summary>The loaded checkpoint (model and tokenizer); disposed with this object.</summary>
    public LoadedModel Loaded { get; } = loaded;
    /// <summary>The model, with the method's inference-time edits hooked in until <see cref="Dispose"/>.</summary>
    public ICausalLM Model => Loaded.Model;
    /// <summary>The checkpoint's tokenizer.</summary>
    public Gpt2Tokenizer Tokenizer => Loaded.Tokenizer;
    /// <summary>Names of the edits applied on top of the checkpoint (empty for a weight-only method).</summary>
    public IReadOnlyList<string> Edits { get; } = editNames;

    /// <summary>Removes the edits (hooks) and then disposes the loaded model.</summary>
    public void Dispose()
    {
        foreach (var e in edits) e.Dispose();
        Loaded.Dispose();
    }
}

public static partial class StudyStages
{
    /// <summary>The file an activation-edit stage writes next to model_dir.txt: neurons.csv (copied from the diff stage),
    /// groups and scale of the <see cref="NeuronShiftEdit"/>.</summary>
    public const string NeuronShiftFile = "neuron_shift.json";

    /// <summary>Loads the model a method stage made (<see cref="MethodModel"/>): model_dir.txt's checkpoint plus, when the
    /// stage wrote them, its steering vector (steer.txt; <paramref name="steerAlpha"/> replaces the strength) and its
    /// activation shift (<see cref="NeuronShiftFile"/>).</summary>
    public static LoadedMethodModel LoadMethodModel(string stageDir, torch.Device? device = null, double? steerAlpha = null)
    {
        var loaded = HfCheckpoint.Load(File.ReadAllText(Path.Combine(stageDir, "model_dir.txt")).Trim(), new LoadOptions { Device = device });
        var edits = new List<IDisposable>();
        var names = new List<string>();
        try
        {
            foreach (var edit in MethodEdits(stageDir, steerAlpha))
            {
                edits.Add(edit.Apply(loaded.Model));
                names.Add(edit.Name);
            }
            return new LoadedMethodModel(loaded, edits, names);
        }
        catch
        {
            foreach (var e in edits) e.Dispose();
            loaded.Dispose();
            throw;
        }
    }

    /// <summary>The inference-time edits a method stage names (none for a checkpoint method).</summary>
    static List<IModelEdit> MethodEdits(string stageDir, double? steerAlpha)
    {
        var list = new List<IModelEdit>();
        var steer = Path.Combine(stageDir, MethodModel.SteerFile);
        if (File.Exists(steer))
            foreach (var line in File.ReadAllLines(steer).Where(l => l.Trim().Length > 0))
            {
                var spec = line.Trim();
                if (steerAlpha is double a) spec = spec[..spec.LastIndexOf('@')] + "@" + a.ToString("R", CultureInfo.InvariantCulture);
                list.Add(Steering.Load(spec, steer));
            }
        var shift = Path.Combine(stageDir, NeuronShiftFile);
        if (File.Exists(shift))
        {
            var j = StrictJson.ParseFileObject(shift, "activation edit");
            var groups = (j["groups"] as JsonArray ?? []).Select(g => g!.GetValue<string>()).ToList();
            list.Add(NeuronShiftEdit.FromCsv(Path.Combine(stageDir, "neurons.csv"), groups, j["scale"]!.GetValue<double>(), "activation edit"));
        }
        return list;
    }

    static MethodsSection MethodsOf(StageContext c) => Read<MethodsSection>(c, "methods");

    static void SaveModelStage(StageContext c, LoadedModel m, JsonObject info)
    {
        HfCheckpoint.Save(m.Model, m.Tokenizer, Path.Combine(c.OutputDir, "model"), overwrite: true);
        AtomicFile.WriteAllText(Path.Combine(c.OutputDir, "model_dir.txt"), FinalPath(c, Path.Combine(c.OutputDir, "model")));
        WriteJson(Path.Combine(c.OutputDir, "method.json"), info);
    }

    static List<LabelledComment> Comments(StageContext c, int? limit)
    {
        var all = DatasetReaders.ReadJigsawCsv(Files(c).Comments);
        return limit is int n ? all.Take(n).ToList() : all;
    }

    /// <summary>A training-free method: settings["edit"] is profs, aura, steering or activation.</summary>
    static void MethodEdit(StageContext c)
    {
        var s = MethodsOf(c);
        var edit = c.Settings["edit"]!.GetValue<string>();
        var sw = Stopwatch.StartNew();
        switch (edit)
        {
            case "profs":
            {
                var o = s.Profs!.ToOptions();
                var pairs = PreferenceData.Read(Path.Combine(c.Input("pairs"), "pairs.jsonl"));
                if (s.Profs.Pairs is int n) pairs = pairs.Take(n).ToList();
                using var m = Load(c, BaseModelDir(c));
                var layers = ProFs.Apply(m.Model, m.Tokenizer, pairs, o, msg => c.Report?.Invoke(0, msg));
                var info = ProFs.Describe(layers, o, pairs.Count, sw.Elapsed.TotalSeconds);
                SaveModelStage(c, m, info);
                break;
            }
            case "aura":
            {
                var comments = Comments(c, s.Aura!.Comments);
                using var m = Load(c, BaseModelDir(c));
                var r = Aura.Score(m.Model, m.Tokenizer, comments, s.Aura.ToOptions());
                Aura.Apply(m.Model, r);
                SaveModelStage(c, m, Aura.Describe(r, comments.Count, sw.Elapsed.TotalSeconds));
                break;
            }
            case "steering":
            {
                var comments = Comments(c, s.Steering!.Comments);
                using var m = Load(c, BaseModelDir(c));
                var (v, layer) = Steering.MeanDifference(m.Model, m.Tokenizer, comments, s.Steering.ToOptions());
                using (v)
                    Editing.Steering.Save(c.OutputDir, v, layer, new JsonObject
                    {
                        ["method"] = "steering", ["comments"] = comments.Count, ["toxic"] = comments.Count(k => k.Toxic),
                        ["seconds"] = Math.Round(sw.Elapsed.TotalSeconds, 3),
                    });
                AtomicFile.WriteAllText(Path.Combine(c.OutputDir, "model_dir.txt"), BaseModelDir(c));
                var alpha = s.Steering.Alphas[0].ToString("R", CultureInfo.InvariantCulture);
                AtomicFile.WriteAllText(Path.Combine(c.OutputDir, MethodModel.SteerFile), $"{StageRunner.StageDir(c.RunDir, c.Name)}@{alpha}\n");
                break;
            }
            case "activation":
            {
                var a = s.ActivationEdit!;
                var diff = c.Inputs.Keys.Single(k => k.StartsWith("diff/", StringComparison.Ordinal));
                var csv = Path.Combine(c.Input(diff), "analysis", "neurons", "neurons.csv");
                if (!File.Exists(csv)) throw new InvalidOperationException($"{csv}: the diff stage wrote no neuron decomposition");
                File.Copy(csv, Path.Combine(c.OutputDir, "neurons.csv"));
                _ = NeuronShiftEdit.FromCsv(Path.Combine(c.OutputDir, "neurons.csv"), a.Groups, a.Scale); // fails here, not at evaluation
                WriteJson(Path.Combine(c.OutputDir, NeuronShiftFile), new JsonObject
                {
                    ["source"] = diff, ["groups"] = new JsonArray(a.Groups.Select(g => (JsonNode)g).ToArray()), ["scale"] = a.Scale,
                });
                AtomicFile.WriteAllText(Path.Combine(c.OutputDir, "model_dir.txt"), BaseModelDir(c));
                break;
            }
            default: throw new InvalidOperationException($"unknown methods edit '{edit}'");
        }
    }

    /// <summary>DExperts' expert (settings["expert"] = "expert": non-toxic comments) or anti-expert ("anti-expert": toxic
    /// comments): SFT of the pretrained model on those texts.</summary>
    static void ExpertSft(StageContext c)
    {
        var s = MethodsOf(c).Dexperts!;
        bool toxic = c.Settings["expert"]!.GetValue<string>() == "anti-expert";
        var all = DatasetReaders.ReadJigsawCsv(Files(c).Comments).Where(k => k.Toxic == toxic).ToList();
        var texts = (s.Comments is int n ? all.Take(n) : all).Select(k => SftExample.Text(k.Text)).ToList();
        if (texts.Count < 2) throw new InvalidInputException($"dexperts: only {texts.Count} {(toxic ? "toxic" : "non-toxic")} comments to fine-tune on");
        var o = s.SftOptions();
        using var m = Load(c, BaseModelDir(c));
        torch.manual_seed((long)o.Seed);
        var r = new SftTrainer(m.Model, m.Tokenizer, o).Train(texts,
            new Progress<TrainingProgress>(p => c.Report?.Invoke(p.Step / (double)Math.Max(1, p.TotalSteps), $"step {p.Step}/{p.TotalSteps} loss {p.Train.Loss:F3}")), c.Cancellation);
        c.Cancellation.ThrowIfCancellationRequested();
        SaveModelStage(c, m, new JsonObject
        {
            ["method"] = "dexperts", ["role"] = toxic ? "anti-expert" : "expert", ["comments"] = texts.Count, ["steps"] = r.Steps,
            ["final_train_loss"] = r.FinalTrainLoss,
        });
    }

    /// <summary>DExperts' expert and anti-expert (the sft/ stages' models), combined at <see cref="DExperts.Alpha"/>.</summary>
    sealed class LoadedExperts(LoadedModel expert, LoadedModel anti, double alpha) : IDisposable
    {
        public DExperts DExperts { get; } = new(expert.Model, anti.Model, alpha);
        public void Dispose() { expert.Dispose(); anti.Dispose(); }
    }

    static LoadedExperts LoadExperts(StageContext c, double alpha)
    {
        var expert = Load(c, ModelDirOf(c, "sft/expert"));
        try { return new LoadedExperts(expert, Load(c, ModelDirOf(c, "sft/anti-expert")), alpha); }
        catch { expert.Dispose(); throw; }
    }

    /// <summary>Evaluates a methods row: settings["model_stage"]'s model with its edits (optionally another steering
    /// strength, settings["steer_alpha"]), or DExperts (settings["dexperts"] = α, experts from the sft/ stages).</summary>
    static void EvaluateMethod(StageContext c, Func<StageContext, IToxicityScorer> scorer)
    {
        var row = c.Settings["row"]!.GetValue<string>();
        double? alpha = c.Settings["steer_alpha"]?.GetValue<double>();
        if (c.Settings["dexperts"] is JsonNode dx)
        {
            using var experts = LoadExperts(c, dx.GetValue<double>());
            Evaluate(c, scorer, BaseModelDir(c), row, [], adjust: o => o with { DExperts = experts.DExperts });
            return;
        }
        var stage = c.Settings["model_stage"]!.GetValue<string>();
        LoadedMethodModel? held = null;
        try
        {
            Evaluate(c, scorer, ModelDirOf(c, stage), row, [], load: () =>
            {
                held = LoadMethodModel(c.Input(stage), c.Device, alpha);
                return held.Loaded;
            });
        }
        finally { held?.Dispose(); }
    }

    /// <summary>Tokens per second of greedy generation for every row of the methods table (settings["rows"]: row, stage,
    /// optional steer_alpha / dexperts), the base model first.
    /// <para>Which rows are timed: the base, and every row whose generation differs from the base's computation — a
    /// hook on the model (steering, an activation edit, AurA as a hook), another configuration or dtype, or DExperts.
    /// A row that loads as the base's architecture with only its weights changed (DPO and its relatives, ProFS, AurA as a
    /// checkpoint edit) runs the very same operators on the same shapes (greedy, no early stop: the same token count),
    /// so it is recorded as the base's figure with "timed": false rather than timed — checked per row at load time,
    /// not assumed.</para>
    /// <para>How: one untimed warm-up pass per row, then <see cref="SpeedSection.Repeats"/> round-robin repeats (every
    /// timed row once per repeat, so a change in the machine's load falls on all alike); in each repeat a row generates
    /// the prompts again and again until at least <c>MinSeconds</c> have passed (one pass of the toy base is well under
    /// a second and noisy). A row's figure is the median over repeats of tokens/s; the spread (min, max) and the
    /// process CPU seconds per wall second while it ran (≈ threads when the machine is idle, less when contended) are
    /// written too.</para></summary>
    static void MethodSpeed(StageContext c)
    {
        const double MinSeconds = 2.0;
        var s = MethodsOf(c).Speed;
        var files = Files(c);
        var promptTexts = EvalHarness.ReadPrompts(files.Challenge, false, s.Prompts).Select(p => p.Text).ToList();
        var rows = c.Settings["rows"]!.AsArray().Select(n => n!.AsObject()).ToList();
        var opts = new GenerationOptions { MaxNewTokens = s.MaxNewTokens, Greedy = true, BatchSize = s.BatchSize, StopAtEos = false };
        var rates = rows.Select(_ => new List<double>()).ToArray();
        var cpuPerWall = rows.Select(_ => new List<double>()).ToArray();
        var timed = new bool[rows.Count];
        var why = new string[rows.Count];
        string? baseSignature = null;

        // one pass of row i; returns (tokens, seconds, cpu seconds) of the timed part (≥ MinSeconds unless warm-up)
        (long tokens, double seconds, double cpu) Run(int i, bool warmUp)
        {
            var r = rows[i];
            LoadedExperts? experts = null;
            LoadedMethodModel? m = null;
            try
            {
                if (r["dexperts"] is JsonNode dx) experts = LoadExperts(c, dx.GetValue<double>());
                m = LoadMethodModel(c.Input(r["stage"]!.GetValue<string>()), c.Device, r["steer_alpha"]?.GetValue<double>());
                m.Model.Module.eval();
                if (warmUp)
                {
                    // the architecture as generation runs it: config (with dtype), hooks, decoding-time experts
                    string signature = m.Model.ConfigJson().ToJsonString() + $"|{m.Model.DType}|hooks={m.Model.Hooks.Any}"
                        + $"|dexperts={experts is not null}";
                    if (i == 0) { baseSignature = signature; timed[i] = true; why[i] = "base"; }
                    else
                    {
                        timed[i] = signature != baseSignature;
                        why[i] = experts is not null ? "decoding-time experts" : m.Model.Hooks.Any ? "hooks on the model"
                            : timed[i] ? "configuration differs from the base" : "same architecture as the base (weights only)";
                    }
                    if (!timed[i]) return (0, 0, 0);
                }
                int keep = Math.Max(1, m.Model.MaxPositions - s.MaxNewTokens);
                var ids = promptTexts.Select(t => PromptTruncation.KeepLast(m.Tokenizer.EncodeWithSpecialTokens(t), keep, m.Tokenizer)).ToList();
                long n = 0;
                var cpu0 = Process.GetCurrentProcess().TotalProcessorTime;
                var sw = Stopwatch.StartNew();
                do n += Generator.Generate(m.Model, ids, opts, experts?.DExperts).Sum(o => (long)o.Length);
                while (!warmUp && sw.Elapsed.TotalSeconds < MinSeconds);
                double secs = sw.Elapsed.TotalSeconds;
                return (n, secs, (Process.GetCurrentProcess().TotalProcessorTime - cpu0).TotalSeconds);
            }
            finally { m?.Dispose(); experts?.Dispose(); }
        }

        for (int i = 0; i < rows.Count; i++)
        {
            c.Report?.Invoke(i / (double)(rows.Count * (s.Repeats + 1)), $"{rows[i]["row"]} (warm-up)");
            Run(i, warmUp: true);
        }
        var timedRows = Enumerable.Range(0, rows.Count).Where(i => timed[i]).ToList();
        for (int rep = 0; rep < s.Repeats; rep++)
            foreach (var i in timedRows)
            {
                c.Report?.Invoke((rows.Count + rep * timedRows.Count + timedRows.IndexOf(i)) / (double)(rows.Count + s.Repeats * timedRows.Count),
                    $"{rows[i]["row"]} (repeat {rep + 1}/{s.Repeats})");
                var (n, secs, cpu) = Run(i, warmUp: false);
                rates[i].Add(n / secs);
                cpuPerWall[i].Add(cpu / secs);
            }
        static double Median(List<double> x)
        {
            var o = x.OrderBy(v => v).ToList();
            return o.Count % 2 == 1 ? o[o.Count / 2] : (o[o.Count / 2 - 1] + o[o.Count / 2]) / 2;
        }
        double baseRate = Median(rates[0]);
        WriteJson(Path.Combine(c.OutputDir, RunLayout.MethodSpeed), new JsonObject
        {
            ["prompts"] = promptTexts.Count, ["batch_size"] = s.BatchSize, ["max_new_tokens"] = s.MaxNewTokens, ["repeats"] = s.Repeats,
            ["min_seconds_per_repeat"] = MinSeconds, ["threads"] = torch.get_num_threads(),
            ["statistic"] = "median over round-robin repeats of tokens/s; each repeat generates for at least min_seconds_per_repeat after an untimed warm-up pass",
            ["rows"] = new JsonArray(rows.Select((r, i) =>
            {
                double rate = timed[i] ? Median(rates[i]) : baseRate;
                var o = new JsonObject
                {
                    ["row"] = r["row"]!.GetValue<string>(), ["timed"] = timed[i], ["why"] = why[i],
                    ["tokens_per_second"] = rate, ["relative_to_base"] = rate / baseRate,
                };
                if (timed[i])
                {
                    o["tokens_per_second_min"] = rates[i].Min();
                    o["tokens_per_second_max"] = rates[i].Max();
                    o["repeat_tokens_per_second"] = new JsonArray(rates[i].Select(x => (JsonNode)x).ToArray());
                    o["cpu_seconds_per_wall_second"] = Median(cpuPerWall[i]);
                }
                else o["same_as"] = "Base";
                return (JsonNode)o;
            }).ToArray()),
        });
    }
}

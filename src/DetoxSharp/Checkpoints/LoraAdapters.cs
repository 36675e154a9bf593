using System.Runtime.CompilerServices;
using System.Text.Json;
using System.Text.Json.Nodes;
using DetoxSharp.Models;
using DetoxSharp.Text;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace DetoxSharp.Checkpoints;

/// <summary>LoRA settings (PEFT's names: r, lora_alpha, target_modules).</summary>
public sealed record LoraOptions
{
    /// <summary>Rank r of the low-rank update (PEFT's <c>r</c>); default 8.</summary>
    public int Rank { get; init; } = 8;
    /// <summary>Scale numerator (PEFT's <c>lora_alpha</c>): the update is multiplied by Alpha / Rank; default 16.</summary>
    public double Alpha { get; init; } = 16;
    /// <summary>Layers to adapt, by their last name component (PEFT's target_modules); null = the family's default
    /// (<see cref="DefaultTargets"/>).</summary>
    public IReadOnlyList<string>? Targets { get; init; }

    /// <summary>Adaptable layers per family: Llama's nn.Linear projections, GPT-2's Conv1D layers (c_proj names both the
    /// attention output and the MLP output projection, as in PEFT's suffix matching).</summary>
    public static readonly string[] LlamaKnown = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
    /// <summary>GPT-2's adaptable Conv1D layers.</summary>
    public static readonly string[] Gpt2Known = ["c_attn", "c_proj", "c_fc"];
    /// <summary>Every adaptable layer name, all families.</summary>
    public static readonly string[] Known = [.. LlamaKnown, .. Gpt2Known];

    /// <summary>PEFT's defaults for the family (TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING): q/v for Llama, c_attn for GPT-2.</summary>
    public static IReadOnlyList<string> DefaultTargets(string family) => family == "gpt2" ? ["c_attn"] : ["q_proj", "v_proj"];

    /// <summary>The factor applied to B·A: <see cref="Alpha"/> / <see cref="Rank"/>.</summary>
    public double Scaling => Alpha / Rank;

    /// <summary>Checks rank, alpha and targets; throws <see cref="InvalidInputException"/> naming the flag.</summary>
    /// <param name="family">The model family ("gpt2", "llama", …) whose layer names the targets must match; null skips that check.</param>
    public void Validate(string? family = null)
    {
        if (Rank < 1) throw new InvalidInputException($"--lora-rank must be ≥ 1, got {Rank}");
        if (!(Alpha > 0) || !double.IsFinite(Alpha)) throw new InvalidInputException($"--lora-alpha must be positive, got {Alpha}");
        if (Targets is { Count: 0 }) throw new InvalidInputException("--lora-targets: name at least one module");
        var known = family switch { null => Known, "gpt2" => Gpt2Known, _ => LlamaKnown };
        foreach (var t in Targets ?? [])
            if (!known.Contains(t)) throw new InvalidInputException($"--lora-targets: unknown module '{t}' for {family ?? "any"} models (known: {string.Join(", ", known)})");
    }
}

/// <summary>
/// LoRA adapters (Hu et al. 2021): each target layer W gets y = W·x + (α/r)·B·A·x with A [r, in] (Kaiming-uniform, as
/// PEFT initialises it) and B [out, r] (zeros, so the adapted model starts equal to the base). A and B are registered as
/// submodules <c>lora_A</c>/<c>lora_B</c> of the layer — the optimizer finds them among the trainable parameters — and
/// every base parameter is frozen. The term is added by a forward hook on a Llama nn.Linear and by
/// <see cref="Conv1D.Delta"/> on GPT-2's Conv1D; <see cref="Enabled"/> = false gives the frozen base (the DPO
/// reference) without a second copy.
/// GPT-2's Conv1D stores its weight [in, out], the transpose of nn.Linear's. A and B keep nn.Linear's shapes either
/// way (PEFT's <c>fan_in_fan_out=True</c> convention: the adapter file has the same shapes as for a Linear, and only the
/// merge transposes: W[in, out] += (α/r)·(B·A)ᵀ), so adapter files are interchangeable with PEFT's.
/// <see cref="HfCheckpoint.Save"/> of an adapted model writes the PEFT adapter format (adapter_config.json +
/// adapter_model.safetensors, keys <c>base_model.model.&lt;module&gt;.lora_A.weight</c>), and
/// <see cref="HfCheckpoint.Load"/> of such a directory loads its base_model_name_or_path and attaches the adapter.
/// </summary>
public sealed class LoraAdapters
{
    static readonly ConditionalWeakTable<nn.Module, LoraAdapters> Attached = new();

    /// <param name="Module">the adapted layer's full name</param>
    /// <param name="A">the down projection (rank r)</param>
    /// <param name="B">the up projection (zero-initialised)</param>
    /// <param name="FanInFanOut">the base weight is stored [in, out] (Conv1D)</param>
    sealed record Slot(string Module, Linear A, Linear B, bool FanInFanOut);

    readonly List<Slot> _slots = [];
    /// <summary>The settings the adapters were created with.</summary>
    public LoraOptions Options { get; }
    /// <summary>The base checkpoint directory, recorded as base_model_name_or_path.</summary>
    public string BaseModelPath { get; }
    /// <summary>false runs the base model alone (the adapters add nothing) without removing them.</summary>
    public bool Enabled { get; set; } = true;
    /// <summary>The full names of the adapted layers.</summary>
    public IReadOnlyList<string> Modules => _slots.Select(s => s.Module).ToList();

    LoraAdapters(LoraOptions o, string basePath) { Options = o; BaseModelPath = basePath; }

    /// <summary>The adapters attached to <paramref name="model"/>, or null.</summary>
    public static LoraAdapters? Of(ICausalLM model) => Attached.TryGetValue(model.Module, out var a) ? a : null;

    /// <summary>Adds fresh adapters to every target layer and freezes the base parameters. A starts as PEFT's
    /// (kaiming-uniform with a = √5, i.e. uniform on ±1/√fan_in), B at zero.</summary>
    /// <param name="model">The base model (its parameters are frozen).</param>
    /// <param name="o">Rank, alpha and target layers.</param>
    /// <param name="baseModelPath">The base's directory, recorded in the adapter's config.</param>
    /// <param name="seed">Draw A from a generator with this seed, so that a run with the same seed starts from the same
    /// adapters; null: from torch's global generator (as PEFT does).</param>
    public static LoraAdapters Attach(ICausalLM model, LoraOptions o, string baseModelPath, ulong? seed = null)
    {
        if (model is not (LlamaModel or Gpt2Model)) throw new InvalidInputException($"LoRA supports GPT-2 and the Llama-family models, not {model.Family}");
        o = o with { Targets = o.Targets ?? LoraOptions.DefaultTargets(model.Family) };
        o.Validate(model.Family);
        if (Of(model) is not null) throw new InvalidOperationException("the model already has LoRA adapters");
        var a = new LoraAdapters(o, baseModelPath);
        foreach (var p in model.Module.parameters()) p.requires_grad_(false);
        var targets = model.Module.named_modules()
            .Where(m => m.module is Linear or Conv1D && o.Targets!.Contains(m.name.Split('.')[^1]))
            .ToList();
        if (targets.Count == 0) throw new InvalidInputException($"--lora-targets: no layer of this model is named {string.Join(" or ", o.Targets!)}");
        double s = o.Scaling;
        using var gen = seed is ulong sd ? new torch.Generator(sd) : null;
        foreach (var (name, layer) in targets)
        {
            var (w, fanInFanOut) = layer is Conv1D c ? ((Parameter)c.weight, true) : (((Linear)layer).weight!, false);
            long inF = w.shape[fanInFanOut ? 0 : 1], outF = w.shape[fanInFanOut ? 1 : 0];
            var la = nn.Linear(inF, o.Rank, hasBias: false, device: w.device, dtype: w.dtype);
            var lb = nn.Linear(o.Rank, outF, hasBias: false, device: w.device, dtype: w.dtype);
            using (torch.no_grad())
            {
                // kaiming_uniform_(a = √5): bound gain·√(3/fan_in) with gain √(2/(1 + a²)) = √(1/3), so 1/√fan_in.
                // Seeded: drawn in fp32 by the CPU generator and copied, so the values do not depend on the device
                if (gen is null) nn.init.kaiming_uniform_(la.weight!, Math.Sqrt(5));
                else
                    using (var draw = torch.empty(la.weight!.shape, ScalarType.Float32).uniform_(-1 / Math.Sqrt(inF), 1 / Math.Sqrt(inF), gen))
                        la.weight!.copy_(draw);
                lb.weight!.zero_();
            }
            layer.register_module("lora_A", la);
            layer.register_module("lora_B", lb);
            a._slots.Add(new Slot(name, la, lb, fanInFanOut));
            if (layer is Conv1D conv) conv.Delta = x => a.Enabled ? lb.call(la.call(x)) * s : null;
            else ((Linear)layer).register_forward_hook((_, x, y) => a.Enabled ? y + lb.call(la.call(x)) * s : y);
        }
        Attached.Add(model.Module, a);
        return a;
    }

    /// <summary>The same adapters (options and current A/B values, cast to <paramref name="other"/>'s dtype) on another
    /// copy of the base — the bf16 working copy of mixed-precision training (<see cref="Training.MixedPrecision"/>).</summary>
    public LoraAdapters AttachCopy(ICausalLM other)
    {
        var copy = Attach(other, Options, BaseModelPath);
        using var _ = torch.no_grad();
        for (int i = 0; i < _slots.Count; i++)
        {
            copy._slots[i].A.weight!.copy_(_slots[i].A.weight!);
            copy._slots[i].B.weight!.copy_(_slots[i].B.weight!);
        }
        copy.Enabled = Enabled;
        return copy;
    }

    /// <summary>The adapter tensors under PEFT's key names.</summary>
    public Dictionary<string, Tensor> PeftTensors() => _slots.SelectMany(s => new[]
    {
        ($"base_model.model.{s.Module}.lora_A.weight", s.A.weight!),
        ($"base_model.model.{s.Module}.lora_B.weight", s.B.weight!),
    }).ToDictionary(x => x.Item1, x => (Tensor)x.Item2);

    /// <summary>Writes adapter_config.json + adapter_model.safetensors (+ the tokenizer files) into <paramref name="dir"/>.</summary>
    public void SavePeft(string dir, Gpt2Tokenizer? tokenizer)
    {
        Safetensors.Save(Path.Combine(dir, "adapter_model.safetensors"), PeftTensors());
        var cfg = new JsonObject
        {
            ["peft_type"] = "LORA", ["task_type"] = "CAUSAL_LM", ["base_model_name_or_path"] = BaseModelPath,
            ["r"] = Options.Rank, ["lora_alpha"] = Options.Alpha, ["lora_dropout"] = 0.0,
            ["target_modules"] = new JsonArray(Options.Targets!.Select(t => (JsonNode)JsonValue.Create(t)!).ToArray()),
            ["bias"] = "none", ["fan_in_fan_out"] = _slots.Any(x => x.FanInFanOut), ["use_rslora"] = false, ["modules_to_save"] = null,
            ["init_lora_weights"] = true, ["inference_mode"] = true,
        };
        File.WriteAllText(Path.Combine(dir, "adapter_config.json"), cfg.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        tokenizer?.Save(dir);
    }

    /// <summary>Reads a PEFT LoRA adapter directory onto <paramref name="model"/> (its base).</summary>
    public static LoraAdapters LoadPeft(ICausalLM model, string dir, string baseModelPath)
    {
        var cfgPath = Path.Combine(dir, "adapter_config.json");
        var o = ReadConfig(cfgPath);
        var a = Attach(model, o, baseModelPath);
        var weights = Path.Combine(dir, "adapter_model.safetensors");
        if (!File.Exists(weights)) throw new InvalidInputException($"{weights}: missing (PEFT adapter weights)");
        var loaded = Safetensors.Load(weights);
        try
        {
            var want = a.PeftTensors();
            // PEFT may save with or without the adapter name "default" in the key; accept both
            var got = loaded.ToDictionary(kv => kv.Key.Replace(".lora_A.default.", ".lora_A.").Replace(".lora_B.default.", ".lora_B."), kv => kv.Value);
            var missing = want.Keys.Where(k => !got.ContainsKey(k)).ToList();
            var extra = got.Keys.Where(k => !want.ContainsKey(k)).ToList();
            if (missing.Count > 0) throw new InvalidInputException($"{weights}: lacks {missing.Count} adapter tensors, e.g. {missing[0]}");
            if (extra.Count > 0) throw new InvalidInputException($"{weights}: has tensors the adapter config does not imply, e.g. {extra[0]}");
            using var _ = torch.no_grad();
            foreach (var (k, t) in want)
            {
                if (!got[k].shape.SequenceEqual(t.shape))
                    throw new InvalidInputException($"{weights}: {k} has shape [{string.Join(",", got[k].shape)}], expected [{string.Join(",", t.shape)}]");
                t.copy_(got[k]);
            }
        }
        finally { foreach (var t in loaded.Values) t.Dispose(); }
        return a;
    }

    static LoraOptions ReadConfig(string path)
    {
        JsonObject c;
        try { c = JsonNode.Parse(File.ReadAllText(path)) as JsonObject ?? throw new JsonException("not an object"); }
        catch (JsonException e) { throw new InvalidInputException($"{path}: malformed JSON ({e.Message.Split('\n')[0]})"); }
        try
        {
            if (c["peft_type"]?.GetValue<string>() is string t && t != "LORA") throw new InvalidInputException($"{path}: peft_type '{t}' is not supported (LORA)");
            if (c["use_rslora"] is JsonValue rs && rs.GetValue<bool>()) throw new InvalidInputException($"{path}: use_rslora is not supported");
            // fan_in_fan_out is not read: the layer type decides, as in PEFT (which overrides the flag with a warning
            // when it does not match: True for Conv1D, False for nn.Linear); the tensors' shapes are the same either way
            _ = c["fan_in_fan_out"]?.GetValue<bool>();
            if (c["bias"] is JsonValue b && b.GetValue<string>() != "none") throw new InvalidInputException($"{path}: bias '{b}' is not supported (none)");
            if (c["modules_to_save"] is JsonArray { Count: > 0 }) throw new InvalidInputException($"{path}: modules_to_save is not supported");
            var targets = c["target_modules"] switch
            {
                JsonArray arr => arr.Select(x => x!.GetValue<string>()).ToList(),
                JsonValue v => [v.GetValue<string>()],
                _ => throw new InvalidInputException($"{path}: target_modules is required"),
            };
            return new LoraOptions { Rank = c["r"]!.GetValue<int>(), Alpha = c["lora_alpha"]!.GetValue<double>(), Targets = targets };
        }
        catch (Exception e) when (e is InvalidOperationException or NullReferenceException or FormatException)
        { throw new InvalidInputException($"{path}: not a valid LoRA adapter config ({e.Message})"); }
    }

    /// <summary>The base directory named in an adapter directory's adapter_config.json (relative paths resolve against it).</summary>
    public static string BasePathOf(string adapterDir)
    {
        var path = Path.Combine(adapterDir, "adapter_config.json");
        string? b;
        try { b = JsonNode.Parse(File.ReadAllText(path))?["base_model_name_or_path"]?.GetValue<string>(); }
        catch (Exception e) when (e is JsonException or InvalidOperationException) { throw new InvalidInputException($"{path}: malformed ({e.Message.Split('\n')[0]})"); }
        if (string.IsNullOrEmpty(b)) throw new InvalidInputException($"{path}: base_model_name_or_path is missing");
        var full = Path.IsPathRooted(b) ? b : Path.GetFullPath(Path.Combine(adapterDir, b));
        if (!Directory.Exists(full)) throw new InvalidInputException($"{path}: base model {b} is not a local directory (hub names cannot be fetched here)");
        return full;
    }

    /// <summary>A plain copy of the base with W + (α/r)·B·A in every adapted layer (computed in float32, stored in the
    /// model's dtype) — what <c>detox merge-lora</c> saves. The adapted model itself is unchanged.</summary>
    public static ICausalLM Merged(ICausalLM model)
    {
        var a = Of(model) ?? throw new InvalidOperationException("the model has no LoRA adapters");
        var plain = model.Clone(); // Clone copies the base parameters only: the copy has no adapters
        var sd = plain.Module.state_dict();
        using (torch.no_grad())
            foreach (var s in a._slots)
            {
                using var scope = torch.NewDisposeScope(); // holds the temporaries copy_ reads (docs/ARCHITECTURE.md "Tensor lifetimes")
                using var delta = s.B.weight!.to(ScalarType.Float32).matmul(s.A.weight!.to(ScalarType.Float32)) * a.Options.Scaling;
                var w = sd[s.Module + ".weight"];
                w.copy_((w.to(ScalarType.Float32) + (s.FanInFanOut ? delta.t() : delta)).to(w.dtype));
            }
        return plain;
    }
}

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
    public int Rank { get; init; } = 8;
    public double Alpha { get; init; } = 16;
    /// <summary>Linear layers to adapt, by their last name component (PEFT's target_modules).</summary>
    public IReadOnlyList<string> Targets { get; init; } = ["q_proj", "v_proj"];

    public static readonly string[] Known = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

    public double Scaling => Alpha / Rank;

    public void Validate()
    {
        if (Rank < 1) throw new InvalidInputException($"--lora-rank must be ≥ 1, got {Rank}");
        if (!(Alpha > 0) || !double.IsFinite(Alpha)) throw new InvalidInputException($"--lora-alpha must be positive, got {Alpha}");
        if (Targets.Count == 0) throw new InvalidInputException("--lora-targets: name at least one module");
        foreach (var t in Targets)
            if (!Known.Contains(t)) throw new InvalidInputException($"--lora-targets: unknown module '{t}' (known: {string.Join(", ", Known)})");
    }
}

/// <summary>
/// LoRA adapters (Hu et al. 2021) on a Llama-family model: each target linear layer W gets y = W·x + (α/r)·B·A·x with
/// A [r, in] (Kaiming-uniform, as PEFT initialises it) and B [out, r] (zeros, so the adapted model starts equal to the
/// base). A and B are registered as submodules <c>lora_A</c>/<c>lora_B</c> of the linear layer — the optimizer finds
/// them among the trainable parameters — and every base parameter is frozen. The adapter is added by a forward hook on
/// the linear layer; <see cref="Enabled"/> = false gives the frozen base (the DPO reference) without a second copy.
/// <see cref="HfCheckpoint.Save"/> of an adapted model writes the PEFT adapter format (adapter_config.json +
/// adapter_model.safetensors, keys <c>base_model.model.&lt;module&gt;.lora_A.weight</c>), and
/// <see cref="HfCheckpoint.Load"/> of such a directory loads its base_model_name_or_path and attaches the adapter.
/// GPT-2's Conv1D layers are not adaptable (transformers' GPT-2 needs PEFT's fan_in_fan_out; not supported here).
/// </summary>
public sealed class LoraAdapters
{
    static readonly ConditionalWeakTable<nn.Module, LoraAdapters> Attached = new();

    sealed record Slot(string Module, Linear Base, Linear A, Linear B);

    readonly List<Slot> _slots = [];
    public LoraOptions Options { get; }
    /// <summary>The base checkpoint directory, recorded as base_model_name_or_path.</summary>
    public string BaseModelPath { get; }
    public bool Enabled { get; set; } = true;
    public IReadOnlyList<string> Modules => _slots.Select(s => s.Module).ToList();

    LoraAdapters(LoraOptions o, string basePath) { Options = o; BaseModelPath = basePath; }

    /// <summary>The adapters attached to <paramref name="model"/>, or null.</summary>
    public static LoraAdapters? Of(ICausalLM model) => Attached.TryGetValue(model.Module, out var a) ? a : null;

    /// <summary>Adds fresh adapters to every target layer and freezes the base parameters.</summary>
    public static LoraAdapters Attach(ICausalLM model, LoraOptions o, string baseModelPath)
    {
        o.Validate();
        if (model is not LlamaModel) throw new InvalidInputException($"LoRA supports the Llama-family models (llama, mistral, qwen2), not {model.Family}");
        if (Of(model) is not null) throw new InvalidOperationException("the model already has LoRA adapters");
        var a = new LoraAdapters(o, baseModelPath);
        foreach (var p in model.Module.parameters()) p.requires_grad_(false);
        var targets = model.Module.named_modules()
            .Where(m => m.module is Linear && o.Targets.Contains(m.name.Split('.')[^1]))
            .Select(m => (m.name, (Linear)m.module)).ToList();
        if (targets.Count == 0) throw new InvalidInputException($"--lora-targets: no layer of this model is named {string.Join(" or ", o.Targets)}");
        foreach (var (name, lin) in targets)
        {
            long inF = lin.weight!.shape[1], outF = lin.weight!.shape[0];
            var la = nn.Linear(inF, o.Rank, hasBias: false, device: lin.weight.device, dtype: lin.weight.dtype);
            var lb = nn.Linear(o.Rank, outF, hasBias: false, device: lin.weight.device, dtype: lin.weight.dtype);
            using (torch.no_grad())
            {
                nn.init.kaiming_uniform_(la.weight!, Math.Sqrt(5));
                lb.weight!.zero_();
            }
            lin.register_module("lora_A", la);
            lin.register_module("lora_B", lb);
            var slot = new Slot(name, lin, la, lb);
            a._slots.Add(slot);
            double s = o.Scaling;
            lin.register_forward_hook((_, x, y) => a.Enabled ? y + lb.call(la.call(x)) * s : y);
        }
        Attached.Add(model.Module, a);
        return a;
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
            ["target_modules"] = new JsonArray(Options.Targets.Select(t => (JsonNode)JsonValue.Create(t)!).ToArray()),
            ["bias"] = "none", ["fan_in_fan_out"] = false, ["use_rslora"] = false, ["modules_to_save"] = null,
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
            if (c["fan_in_fan_out"] is JsonValue ff && ff.GetValue<bool>()) throw new InvalidInputException($"{path}: fan_in_fan_out is not supported");
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
                using var delta = s.B.weight!.to(ScalarType.Float32).matmul(s.A.weight!.to(ScalarType.Float32)) * a.Options.Scaling;
                var w = sd[s.Module + ".weight"];
                w.copy_((w.to(ScalarType.Float32) + delta).to(w.dtype));
            }
        return plain;
    }
}

using DetoxSharp.Data;
using System.Collections;
using System.Text.Json;
using System.Text.Json.Nodes;
using DetoxSharp.Models;
using DetoxSharp.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Checkpoints;

/// <summary>How tensor names are written: the hub's original GPT-2 files have no prefix; a model saved by
/// transformers' GPT2LMHeadModel.save_pretrained prefixes "transformer.". Both load either way.</summary>
public enum KeyConvention { Hub, Transformers }

public sealed record LoadOptions
{
    public Device? Device { get; init; }
    /// <summary>Compute dtype; null keeps float32 (as transformers does unless asked otherwise).</summary>
    public ScalarType? DType { get; init; }
    /// <summary>Legacy pytorch_model.bin is a Python pickle; loading one must be asked for explicitly.</summary>
    public bool AllowPickle { get; init; }
}

/// <summary>A model loaded from a directory, with its tokenizer.</summary>
public sealed record LoadedModel(ICausalLM Model, Gpt2Tokenizer Tokenizer, string Directory) : IDisposable
{
    public void Dispose() => Model.Dispose();
}

/// <summary>
/// Hugging Face checkpoint directories in and out: config.json + model.safetensors (or sharded safetensors with
/// model.safetensors.index.json, or a pickled pytorch_model.bin when allowed) + tokenizer files.
/// </summary>
public static class HfCheckpoint
{
    /// <summary>Families this build can load, by config.json model_type. Adding a family = one entry here plus its
    /// <see cref="ICausalLM"/> implementation. The model is built directly in the compute dtype: a float32 detour would
    /// need twice the memory of a bf16 model (a Llama-8B in float32 does not fit in 24 GB).</summary>
    static readonly Dictionary<string, Func<JsonObject, ScalarType, ICausalLM>> Families = new()
    {
        ["gpt2"] = (cfg, dt) => new Gpt2Model(Gpt2Config.FromJson(cfg), dtype: dt, initialize: false),
        ["llama"] = (cfg, dt) => new LlamaModel(LlamaConfig.FromJson(cfg), dtype: dt, initialize: false),
        ["mistral"] = (cfg, dt) => new LlamaModel(LlamaConfig.FromJson(cfg), dtype: dt, initialize: false),
        ["qwen2"] = (cfg, dt) => new LlamaModel(LlamaConfig.FromJson(cfg), dtype: dt, initialize: false),
    };

    /// <summary>Parameter counts implied by a config, per family, for the memory check before allocation.</summary>
    static readonly Dictionary<string, Func<JsonObject, double>> ParameterCounts = new()
    {
        ["gpt2"] = cfg => Gpt2Config.FromJson(cfg).ParameterCount,
        ["llama"] = cfg => LlamaConfig.FromJson(cfg).ParameterCount,
        ["mistral"] = cfg => LlamaConfig.FromJson(cfg).ParameterCount,
        ["qwen2"] = cfg => LlamaConfig.FromJson(cfg).ParameterCount,
    };

    public static JsonObject ReadConfig(string dir)
    {
        if (!Directory.Exists(dir)) throw new InvalidInputException($"{dir}: model directory does not exist");
        var path = Path.Combine(dir, "config.json");
        if (!File.Exists(path)) throw new InvalidInputException($"{path}: missing (not a Hugging Face model directory)");
        return StrictJson.ParseFileObject(path, "config.json");
    }

    static string ModelType(JsonObject cfg, string dir)
    {
        var where = Path.Combine(dir, "config.json");
        var mt = StrictJson.OptionalString(cfg, "model_type", where);
        if (cfg["architectures"] is JsonNode archNode)
        {
            if (archNode is not JsonArray arch) throw new InvalidInputException($"{where}: \"architectures\" must be a list of strings, got {StrictJson.Short(archNode)}");
            var names = arch.Select(a => StrictJson.String(a, where, "each entry of \"architectures\"")).ToList();
            if (mt is null && names.Any(a => a.StartsWith("GPT2"))) mt = "gpt2";
        }
        if (mt is null) throw new InvalidInputException($"{where}: no model_type");
        if (!Families.ContainsKey(mt))
            throw new InvalidInputException($"{where}: unknown model_type '{mt}' (supported: {string.Join(", ", Families.Keys)})");
        return mt;
    }

    /// <summary>Loads a checkpoint directory; every problem with it is an <see cref="InvalidInputException"/> naming the file.</summary>
    static readonly Lock ConstructionGate = new();

    public static LoadedModel Load(string dir, LoadOptions? options = null)
    {
        options ??= new LoadOptions();
        if (File.Exists(Path.Combine(dir, "adapter_config.json")) && !File.Exists(Path.Combine(dir, "config.json")))
            return LoadAdapter(dir, options);
        var cfg = ReadConfig(dir);
        var mt = ModelType(cfg, dir);
        ICausalLM model;
        try
        {
            if (ParameterCounts.TryGetValue(mt, out var count))
            {
                // fp32 model + the checkpoint's tensors, which are read whole before being copied in
                double weights = new[] { "model.safetensors", "pytorch_model.bin" }.Select(f => Path.Combine(dir, f)).Where(File.Exists).Sum(f => (double)new FileInfo(f).Length)
                                 + Directory.EnumerateFiles(dir, "model-*.safetensors").Sum(f => (double)new FileInfo(f).Length);
                double parameters = count(cfg);
                MemoryBudget.EnsureFits(parameters * (options.DType is ScalarType.BFloat16 or ScalarType.Float16 ? 2 : 4) + weights, Path.Combine(dir, "config.json"), $"a model of {parameters:0} parameters (from its sizes: vocabulary, width, layers{(mt == "gpt2" ? ", positions" : ", heads, intermediate size")}) in the load dtype plus {MemoryBudget.Format(weights)} of weights");
            }
            // one model built at a time per process: the study starts stages side by side, and libtorch module
            // construction from two threads at once is where a one-off SIGSEGV was seen (docs/notes/study.md)
            lock (ConstructionGate) model = Families[mt](cfg, options.DType ?? ScalarType.Float32);
        }
        catch (FormatException e) { throw new InvalidInputException($"{Path.Combine(dir, "config.json")}: {e.Message}"); }
        try
        {
            var tensors = ReadWeights(dir, options.AllowPickle);
            try { CopyInto(model, tensors, dir); }
            finally { foreach (var t in tensors.Values) t.Dispose(); }
            var dtype = options.DType ?? ScalarType.Float32;
            if (dtype != model.DType || (options.Device is not null && options.Device.type != DeviceType.CPU))
                model.Module.to(options.Device ?? torch.CPU, dtype);
            var tok = Gpt2Tokenizer.FromDirectory(dir) ?? Gpt2Tokenizer.Default();
            if (tok.VocabSize > model.VocabSize)
                throw new InvalidInputException($"{dir}: tokenizer has {tok.VocabSize} tokens but config.json vocab_size is {model.VocabSize}");
            return new LoadedModel(model, tok, dir);
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    /// <summary>A PEFT LoRA adapter directory: its base_model_name_or_path with the adapter attached (tokenizer files of
    /// the adapter directory take precedence, as they carry tokens added during training).</summary>
    static LoadedModel LoadAdapter(string dir, LoadOptions options)
    {
        var basePath = LoraAdapters.BasePathOf(dir);
        var lm = Load(basePath, options);
        try
        {
            LoraAdapters.LoadPeft(lm.Model, dir, basePath);
            var tok = Gpt2Tokenizer.FromDirectory(dir) ?? lm.Tokenizer;
            return new LoadedModel(lm.Model, tok, dir);
        }
        catch
        {
            lm.Dispose();
            throw;
        }
    }

    static Dictionary<string, Tensor> ReadWeights(string dir, bool allowPickle)
    {
        var single = Path.Combine(dir, "model.safetensors");
        var index = Path.Combine(dir, "model.safetensors.index.json");
        var pickle = Path.Combine(dir, "pytorch_model.bin");
        if (File.Exists(single)) return Safetensors.Load(single);
        if (File.Exists(index))
        {
            var root = StrictJson.ParseFileObject(index, "model.safetensors.index.json");
            if (root["weight_map"] is not JsonObject map) throw new InvalidInputException($"{index}: malformed index (expected a \"weight_map\" object)");
            var shards = map.Select(kv => (kv.Key, File: StrictJson.String(kv.Value, index, $"weight_map[\"{kv.Key}\"]"))).ToList();
            var result = new Dictionary<string, Tensor>();
            try
            {
                foreach (var file in shards.Select(s => s.File).Distinct())
                {
                    if (file.Length == 0 || Path.IsPathRooted(file) || file.Split('/', '\\').Contains(".."))
                        throw new InvalidInputException($"{index}: shard name '{file}' must be a file name inside the model directory");
                    var shard = Path.Combine(dir, file);
                    if (!File.Exists(shard)) throw new InvalidInputException($"{index}: shard {file} is missing");
                    foreach (var kv in Safetensors.Load(shard))
                    {
                        if (!result.TryAdd(kv.Key, kv.Value))
                        {
                            kv.Value.Dispose();
                            throw new InvalidInputException($"{shard}: tensor '{kv.Key}' is also in another shard");
                        }
                    }
                }
            }
            catch
            {
                foreach (var t in result.Values) t.Dispose();
                throw;
            }
            var absent = map.Select(kv => kv.Key).Where(k => !result.ContainsKey(k)).ToList();
            if (absent.Count > 0) throw new InvalidInputException($"{index}: tensors listed but not in their shards: {Summarise(absent)}");
            return result;
        }
        if (File.Exists(pickle))
        {
            if (!allowPickle)
                throw new InvalidInputException($"{pickle}: legacy pickle checkpoint; pickles can run code, pass --allow-pickle to load it anyway");
            Hashtable table;
            try { table = TorchSharp.PyBridge.PyTorchUnpickler.UnpickleStateDict(pickle); }
            catch (Exception e) { throw new InvalidInputException($"{pickle}: cannot read pickled state dict ({e.Message})"); }
            var result = new Dictionary<string, Tensor>();
            foreach (DictionaryEntry kv in table)
                if (kv.Value is Tensor t && kv.Key is string name) result[name] = t;
            return result;
        }
        throw new InvalidInputException($"{dir}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin");
    }

    static string Summarise(IReadOnlyCollection<string> names) =>
        string.Join(", ", names.Take(5)) + (names.Count > 5 ? $" and {names.Count - 5} more" : "");

    /// <summary>Maps checkpoint names onto the model's: drops the "transformer." prefix, a tied lm_head (checked equal to
    /// the embedding) and the buffers old files carry (GPT-2's attention masks, Llama's rotary inv_freq); then requires
    /// an exact match of names and shapes.</summary>
    static void CopyInto(ICausalLM model, Dictionary<string, Tensor> tensors, string dir)
    {
        var target = model.Module.state_dict();
        var found = new Dictionary<string, Tensor>();
        Tensor? lmHead = null;
        var unexpected = new List<string>();
        foreach (var (rawName, t) in tensors)
        {
            var name = rawName.StartsWith("transformer.") ? rawName["transformer.".Length..] : rawName;
            if (name == "lm_head.weight" && !target.ContainsKey(name)) { lmHead = t; continue; }
            if (name.EndsWith(".attn.bias") || name.EndsWith(".attn.masked_bias") || name.EndsWith(".rotary_emb.inv_freq")) continue;
            if (!target.ContainsKey(name)) { unexpected.Add(rawName); continue; }
            found[name] = t;
        }
        var missing = target.Keys.Where(k => !found.ContainsKey(k)).ToList();
        if (missing.Count > 0) throw new InvalidInputException($"{dir}: checkpoint lacks tensors: {Summarise(missing)}");
        if (unexpected.Count > 0) throw new InvalidInputException($"{dir}: checkpoint has tensors this {model.Family} model does not: {Summarise(unexpected)}");
        foreach (var (name, t) in found)
            if (!t.shape.SequenceEqual(target[name].shape))
                throw new InvalidInputException($"{dir}: tensor {name} has shape [{string.Join(",", t.shape)}], config.json implies [{string.Join(",", target[name].shape)}]");
        using var _ = torch.no_grad();
        foreach (var (name, t) in found) target[name].copy_(t);
        if (lmHead is not null)
        {
            if (!lmHead.shape.SequenceEqual(model.Unembedding.shape))
                throw new InvalidInputException($"{dir}: lm_head.weight has shape [{string.Join(",", lmHead.shape)}], expected [{string.Join(",", model.Unembedding.shape)}]");
            if (!lmHead.to(model.Unembedding.dtype).eq(model.Unembedding).all().item<bool>()) // Tensor.equal is elementwise in TorchSharp
                throw new InvalidInputException($"{dir}: lm_head.weight differs from the token embedding, but this {model.Family} model ties them (config.json)");
        }
    }

    /// <summary>
    /// Writes config.json, model.safetensors and the tokenizer files (a model with LoRA adapters: the PEFT adapter files). The directory is written whole under a temporary
    /// name and then moved into place, so an interrupted save never leaves a half-written checkpoint; an existing
    /// checkpoint is replaced only with <paramref name="overwrite"/>.
    /// </summary>
    /// <param name="maxShardBytes">When the tensors exceed this many bytes, write transformers' sharded layout
    /// (model-0000i-of-0000n.safetensors + model.safetensors.index.json) instead of one file.</param>
    public static void Save(ICausalLM model, Gpt2Tokenizer? tokenizer, string dir, KeyConvention convention = KeyConvention.Hub, bool overwrite = false, long? maxShardBytes = null)
    {
        dir = Path.GetFullPath(dir.TrimEnd('/', '\\'));
        if (Directory.Exists(dir) && Directory.EnumerateFileSystemEntries(dir).Any() && !overwrite)
            throw new InvalidInputException($"{dir}: already exists and is not empty (refusing to overwrite)");
        if (LoraAdapters.Of(model) is { } lora)
        {
            // an adapted model is saved as what was trained: the PEFT adapter (the base stays where it is)
            AtomicDirectory.Write(dir, tmp => lora.SavePeft(tmp, tokenizer));
            return;
        }
        AtomicDirectory.Write(dir, tmp =>
        {
            var prefix = convention == KeyConvention.Transformers ? "transformer." : "";
            var sd = model.Module.state_dict().ToDictionary(kv => prefix + kv.Key, kv => kv.Value);
            WriteWeights(tmp, sd, maxShardBytes);
            var cfg = model.ConfigJson();
            File.WriteAllText(Path.Combine(tmp, "config.json"), cfg.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
            tokenizer?.Save(tmp);
        });
    }

    static void WriteWeights(string dir, Dictionary<string, Tensor> sd, long? maxShardBytes)
    {
        long Bytes(Tensor t) => t.numel() * t.ElementSize;
        long total = sd.Values.Sum(Bytes);
        if (maxShardBytes is not long max || total <= max)
        {
            Safetensors.Save(Path.Combine(dir, "model.safetensors"), sd);
            return;
        }
        // transformers' rule: tensors in state-dict order, a new shard when the next one would overflow the limit.
        var shards = new List<Dictionary<string, Tensor>> { new() };
        long size = 0;
        foreach (var (name, t) in sd)
        {
            if (size > 0 && size + Bytes(t) > max) { shards.Add(new()); size = 0; }
            shards[^1][name] = t;
            size += Bytes(t);
        }
        var map = new JsonObject();
        for (int i = 0; i < shards.Count; i++)
        {
            var file = $"model-{i + 1:D5}-of-{shards.Count:D5}.safetensors";
            Safetensors.Save(Path.Combine(dir, file), shards[i]);
            foreach (var name in shards[i].Keys) map[name] = file;
        }
        var index = new JsonObject { ["metadata"] = new JsonObject { ["total_size"] = total }, ["weight_map"] = map };
        File.WriteAllText(Path.Combine(dir, "model.safetensors.index.json"), index.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
    }
}

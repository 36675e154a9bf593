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
    /// <see cref="ICausalLM"/> implementation.</summary>
    static readonly Dictionary<string, Func<JsonObject, ICausalLM>> Families = new()
    {
        ["gpt2"] = cfg => new Gpt2Model(Gpt2Config.FromJson(cfg), initialize: false),
    };

    /// <summary>Parameter counts implied by a config, per family, for the memory check before allocation.</summary>
    static readonly Dictionary<string, Func<JsonObject, double>> ParameterCounts = new()
    {
        ["gpt2"] = cfg => Gpt2Config.FromJson(cfg).ParameterCount,
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
    public static LoadedModel Load(string dir, LoadOptions? options = null)
    {
        options ??= new LoadOptions();
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
                MemoryBudget.EnsureFits(parameters * 4 + weights, Path.Combine(dir, "config.json"), $"a model of {parameters:0} parameters (vocab_size, n_embd, n_layer, n_positions, n_inner) as float32 plus {MemoryBudget.Format(weights)} of weights");
            }
            model = Families[mt](cfg);
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

    /// <summary>Maps checkpoint names onto the model's: drops the "transformer." prefix, the tied lm_head and the
    /// attention-mask buffers old files carry; then requires an exact match of names and shapes.</summary>
    static void CopyInto(ICausalLM model, Dictionary<string, Tensor> tensors, string dir)
    {
        var target = model.Module.state_dict();
        var found = new Dictionary<string, Tensor>();
        Tensor? lmHead = null;
        var unexpected = new List<string>();
        foreach (var (rawName, t) in tensors)
        {
            var name = rawName.StartsWith("transformer.") ? rawName["transformer.".Length..] : rawName;
            if (name == "lm_head.weight") { lmHead = t; continue; }
            if (name.EndsWith(".attn.bias") || name.EndsWith(".attn.masked_bias")) continue;
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
                throw new InvalidInputException($"{dir}: lm_head.weight differs from wte.weight, but GPT-2 ties them (untied heads are not supported)");
        }
    }

    /// <summary>
    /// Writes config.json, model.safetensors and the tokenizer files. The directory is written whole under a temporary
    /// name and then moved into place, so an interrupted save never leaves a half-written checkpoint; an existing
    /// checkpoint is replaced only with <paramref name="overwrite"/>.
    /// </summary>
    public static void Save(ICausalLM model, Gpt2Tokenizer? tokenizer, string dir, KeyConvention convention = KeyConvention.Hub, bool overwrite = false)
    {
        dir = Path.GetFullPath(dir.TrimEnd('/', '\\'));
        if (Directory.Exists(dir) && Directory.EnumerateFileSystemEntries(dir).Any() && !overwrite)
            throw new InvalidInputException($"{dir}: already exists and is not empty (refusing to overwrite)");
        AtomicDirectory.Write(dir, tmp =>
        {
            var prefix = convention == KeyConvention.Transformers ? "transformer." : "";
            var sd = model.Module.state_dict().ToDictionary(kv => prefix + kv.Key, kv => kv.Value);
            Safetensors.Save(Path.Combine(tmp, "model.safetensors"), sd);
            var cfg = model.ConfigJson();
            File.WriteAllText(Path.Combine(tmp, "config.json"), cfg.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
            tokenizer?.Save(tmp);
        });
    }
}

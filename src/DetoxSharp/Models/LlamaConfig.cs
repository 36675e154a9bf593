using System.Text.Json.Nodes;

namespace DetoxSharp.Models;

/// <summary>
/// Hyperparameters of the Llama-style families (transformers' LlamaConfig, MistralConfig, Qwen2Config), with their
/// config.json names and defaults. One record covers all three: they differ only in a few switches (q/k/v bias,
/// sliding window, tied head) and in their defaults. Keys we do not use are kept in <see cref="Extra"/> so that a
/// loaded config is written back unchanged.
/// </summary>
public sealed record LlamaConfig
{
    /// <summary>"llama", "mistral" or "qwen2" (config.json model_type).</summary>
    public string ModelType { get; init; } = "llama";
    /// <summary>Vocabulary size (vocab_size).</summary>
    public int VocabSize { get; init; } = 32000;
    /// <summary>Residual-stream width (hidden_size).</summary>
    public int HiddenSize { get; init; } = 4096;
    /// <summary>MLP width (intermediate_size).</summary>
    public int IntermediateSize { get; init; } = 11008;
    /// <summary>Number of blocks (num_hidden_layers).</summary>
    public int NumHiddenLayers { get; init; } = 32;
    /// <summary>Query heads per block (num_attention_heads).</summary>
    public int NumAttentionHeads { get; init; } = 32;
    /// <summary>Grouped-query attention: the number of key/value heads (null = num_attention_heads).</summary>
    public int? NumKeyValueHeads { get; init; }
    /// <summary>Explicit head width (Llama 3.x, Mistral, Gemma-style configs); null = hidden_size / num_attention_heads.</summary>
    public int? HeadDimOverride { get; init; }
    /// <summary>Longest sequence (max_position_embeddings).</summary>
    public int MaxPositionEmbeddings { get; init; } = 2048;
    /// <summary>RMSNorm ε (rms_norm_eps).</summary>
    public double RmsNormEps { get; init; } = 1e-6;
    /// <summary>RoPE base frequency (rope_theta).</summary>
    public double RopeTheta { get; init; } = 10000.0;
    /// <summary>rope_scaling as in config.json (null = none); types "default", "linear" and "llama3" are supported.</summary>
    public JsonObject? RopeScaling { get; init; }
    /// <summary>Bias on q/k/v (Qwen2 always; Llama's attention_bias also puts one on o_proj).</summary>
    public bool QkvBias { get; init; }
    /// <summary>Bias on o_proj (Llama's attention_bias).</summary>
    public bool OutputBias { get; init; }
    /// <summary>The LM head shares the token embedding's weights (tie_word_embeddings).</summary>
    public bool TieWordEmbeddings { get; init; }
    /// <summary>Sliding-window attention width (Mistral; Qwen2 with use_sliding_window), null = full attention.</summary>
    public int? SlidingWindow { get; init; }
    /// <summary>Qwen2: layers below this index use full attention even when the sliding window is on.</summary>
    public int MaxWindowLayers { get; init; }
    /// <summary>Beginning-of-sequence id (bos_token_id); null when the config has none.</summary>
    public int? BosTokenId { get; init; } = 1;
    /// <summary>All end-of-sequence ids (Llama 3 lists several); the first is <see cref="EosTokenId"/>.</summary>
    public int[] EosTokenIds { get; init; } = [2];
    /// <summary>config.json keys this record does not model, kept so a loaded config is written back unchanged.</summary>
    public JsonObject Extra { get; init; } = new();

    /// <summary>Key/value heads: <see cref="NumKeyValueHeads"/> or the query head count.</summary>
    public int KvHeads => NumKeyValueHeads ?? NumAttentionHeads;
    /// <summary>Width of one attention head.</summary>
    public int HeadDim => HeadDimOverride ?? HiddenSize / NumAttentionHeads;
    /// <summary>The first end-of-sequence id (-1 when there is none).</summary>
    public int EosTokenId => EosTokenIds.Length > 0 ? EosTokenIds[0] : -1;

    /// <summary>Number of parameters the config implies (a double: a corrupt config must not overflow the count):
    /// embeddings, per layer q/k/v/o (grouped k/v, optional biases), gate/up/down and two RMSNorms, the final norm,
    /// and an untied LM head.</summary>
    public double ParameterCount
    {
        get
        {
            double d = HiddenSize, q = (double)NumAttentionHeads * HeadDim, kv = (double)KvHeads * HeadDim, m = IntermediateSize;
            double attn = d * q + 2 * d * kv + q * d + (QkvBias ? q + 2 * kv : 0) + (OutputBias ? d : 0);
            double perLayer = attn + 3 * d * m + 2 * d;
            return (double)VocabSize * d * (TieWordEmbeddings ? 1 : 2) + (double)NumHiddenLayers * perLayer + d;
        }
    }

    /// <summary>The sliding window of layer <paramref name="layer"/>, or null for full attention.</summary>
    public int? WindowOf(int layer) => SlidingWindow is int w && layer >= MaxWindowLayers ? w : null;

    /// <summary>The transformers class name written to config.json's architectures.</summary>
    public string Architecture => ModelType switch
    {
        "mistral" => "MistralForCausalLM",
        "qwen2" => "Qwen2ForCausalLM",
        _ => "LlamaForCausalLM",
    };

    /// <summary>The model_type values this class loads.</summary>
    public static readonly string[] ModelTypes = ["llama", "mistral", "qwen2"];

    static readonly string[] Known =
    [
        "model_type", "architectures", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps",
        "rope_theta", "rope_scaling", "rope_parameters", "attention_bias", "mlp_bias", "tie_word_embeddings",
        "sliding_window", "use_sliding_window", "max_window_layers", "bos_token_id", "eos_token_id", "hidden_act",
        "torch_dtype", "dtype", "pretraining_tp", "layer_types",
    ];

    /// <summary>Validates the numbers; throws <see cref="FormatException"/> naming the bad key.</summary>
    public void Validate()
    {
        void Pos(string key, int v) { if (v <= 0) throw new FormatException($"{key} must be positive, got {v}"); }
        if (!ModelTypes.Contains(ModelType)) throw new FormatException($"model_type '{ModelType}' is not a Llama-style family ({string.Join(", ", ModelTypes)})");
        Pos("vocab_size", VocabSize); Pos("hidden_size", HiddenSize); Pos("intermediate_size", IntermediateSize);
        Pos("num_hidden_layers", NumHiddenLayers); Pos("num_attention_heads", NumAttentionHeads);
        Pos("num_key_value_heads", KvHeads); Pos("head_dim", HeadDim); Pos("max_position_embeddings", MaxPositionEmbeddings);
        if (NumAttentionHeads % KvHeads != 0)
            throw new FormatException($"num_attention_heads ({NumAttentionHeads}) must be a multiple of num_key_value_heads ({KvHeads})");
        if (HeadDimOverride is null && HiddenSize % NumAttentionHeads != 0)
            throw new FormatException($"hidden_size ({HiddenSize}) must be divisible by num_attention_heads ({NumAttentionHeads}) when head_dim is not given");
        if (HeadDim % 2 != 0) throw new FormatException($"head_dim ({HeadDim}) must be even (rotary embeddings rotate pairs)");
        if (!(RmsNormEps > 0)) throw new FormatException($"rms_norm_eps must be positive, got {RmsNormEps}");
        if (!(RopeTheta > 0)) throw new FormatException($"rope_theta must be positive, got {RopeTheta}");
        if (SlidingWindow is int w && w <= 0) throw new FormatException($"sliding_window must be positive, got {w}");
        Rope.InverseFrequencies(this); // validates rope_scaling
    }

    /// <summary>Reads a config.json object (validated; unknown keys go to <see cref="Extra"/>).</summary>
    /// <param name="o">The parsed config.json.</param>
    public static LlamaConfig FromJson(JsonObject o)
    {
        int Int(string key, int dflt)
        {
            var n = o[key];
            if (n is null) return dflt;
            try { return n.GetValue<int>(); }
            catch (Exception) { throw new FormatException($"'{key}' must be an integer, got {n.ToJsonString()}"); }
        }
        int? IntOrNull(string key) => o[key] is null ? null : Int(key, 0);
        double Dbl(JsonObject src, string key, double dflt)
        {
            var n = src[key];
            if (n is null) return dflt;
            try { return n.GetValue<double>(); }
            catch (Exception) { throw new FormatException($"'{key}' must be a number, got {n.ToJsonString()}"); }
        }
        bool Bool(string key, bool dflt)
        {
            var n = o[key];
            if (n is null) return dflt;
            try { return n.GetValue<bool>(); }
            catch (Exception) { throw new FormatException($"'{key}' must be true or false, got {n.ToJsonString()}"); }
        }
        string type;
        try { type = o["model_type"]?.GetValue<string>() ?? "llama"; }
        catch (Exception) { throw new FormatException("'model_type' must be a string"); }
        if (o["hidden_act"] is JsonNode act && act.ToString() != "silu")
            throw new FormatException($"hidden_act '{act}' is not supported (Llama-style models use silu)");
        if (Bool("mlp_bias", false)) throw new FormatException("mlp_bias=true is not supported (no released Llama-style checkpoint uses it)");
        if (o["pretraining_tp"] is not null && Int("pretraining_tp", 1) < 1) throw new FormatException("'pretraining_tp' must be ≥ 1");

        // transformers 5 moved rope_theta and rope_scaling into rope_parameters; read either layout.
        var ropeParams = o["rope_parameters"] as JsonObject;
        double theta = ropeParams is not null ? Dbl(ropeParams, "rope_theta", Dbl(o, "rope_theta", 10000.0)) : Dbl(o, "rope_theta", 10000.0);
        JsonObject? scaling = o["rope_scaling"] switch
        {
            null => null,
            JsonObject s => (JsonObject)s.DeepClone(),
            var other => throw new FormatException($"'rope_scaling' must be an object or null, got {other.ToJsonString()}"),
        };
        if (scaling is null && ropeParams is not null && (ropeParams["rope_type"] ?? ropeParams["type"])?.ToString() is string rt && rt != "default")
            scaling = (JsonObject)ropeParams.DeepClone();

        int[] eos;
        switch (o["eos_token_id"])
        {
            case null: eos = type == "qwen2" ? [] : [2]; break;
            case JsonArray arr:
                try { eos = arr.Select(n => n!.GetValue<int>()).ToArray(); }
                catch (Exception) { throw new FormatException($"'eos_token_id' must be an integer or a list of integers, got {arr.ToJsonString()}"); }
                break;
            default: eos = [Int("eos_token_id", 2)]; break;
        }
        int? window = null;
        bool useWindow = type == "mistral" || (type == "qwen2" && Bool("use_sliding_window", false));
        if (useWindow) window = IntOrNull("sliding_window");
        var extra = new JsonObject();
        foreach (var kv in o)
            if (!Known.Contains(kv.Key)) extra[kv.Key] = kv.Value?.DeepClone();
        bool attnBias = Bool("attention_bias", false);
        int heads = Int("num_attention_heads", 32);
        var c = new LlamaConfig
        {
            ModelType = type,
            VocabSize = Int("vocab_size", type switch { "qwen2" => 151936, _ => 32000 }),
            HiddenSize = Int("hidden_size", 4096),
            IntermediateSize = Int("intermediate_size", type switch { "mistral" => 14336, "qwen2" => 22016, _ => 11008 }),
            NumHiddenLayers = Int("num_hidden_layers", 32),
            NumAttentionHeads = heads,
            NumKeyValueHeads = IntOrNull("num_key_value_heads") ?? (type == "mistral" ? 8 : null),
            HeadDimOverride = IntOrNull("head_dim"),
            MaxPositionEmbeddings = Int("max_position_embeddings", type switch { "mistral" => 4096 * 32, "qwen2" => 32768, _ => 2048 }),
            RmsNormEps = Dbl(o, "rms_norm_eps", 1e-6),
            RopeTheta = theta,
            RopeScaling = scaling,
            QkvBias = type == "qwen2" || attnBias,
            OutputBias = type != "qwen2" && attnBias,
            TieWordEmbeddings = Bool("tie_word_embeddings", false),
            SlidingWindow = window,
            MaxWindowLayers = type == "qwen2" ? Int("max_window_layers", 28) : 0,
            BosTokenId = o["bos_token_id"] is null ? (type == "qwen2" ? null : 1) : Int("bos_token_id", 1),
            EosTokenIds = eos,
            Extra = extra,
        };
        c.Validate();
        return c;
    }

    /// <summary>The config.json object for this architecture, with <see cref="Extra"/> written back.</summary>
    /// <param name="torchDtype">The torch_dtype to record ("float32", "bfloat16", …).</param>
    public JsonObject ToJson(string torchDtype = "float32")
    {
        var o = new JsonObject
        {
            ["model_type"] = ModelType,
            ["architectures"] = new JsonArray(Architecture),
            ["vocab_size"] = VocabSize,
            ["hidden_size"] = HiddenSize,
            ["intermediate_size"] = IntermediateSize,
            ["num_hidden_layers"] = NumHiddenLayers,
            ["num_attention_heads"] = NumAttentionHeads,
            ["num_key_value_heads"] = KvHeads,
            ["head_dim"] = HeadDim,
            ["hidden_act"] = "silu",
            ["max_position_embeddings"] = MaxPositionEmbeddings,
            ["rms_norm_eps"] = RmsNormEps,
            ["rope_theta"] = RopeTheta,
            ["rope_scaling"] = RopeScaling?.DeepClone(),
            ["tie_word_embeddings"] = TieWordEmbeddings,
            ["bos_token_id"] = BosTokenId is int b ? JsonValue.Create(b) : null,
            ["eos_token_id"] = EosTokenIds.Length == 1 ? JsonValue.Create(EosTokenIds[0]) : new JsonArray(EosTokenIds.Select(e => (JsonNode)JsonValue.Create(e)!).ToArray()),
            ["torch_dtype"] = torchDtype,
        };
        switch (ModelType)
        {
            case "llama":
                o["attention_bias"] = QkvBias;
                o["mlp_bias"] = false;
                break;
            case "mistral":
                o["sliding_window"] = SlidingWindow is int w ? JsonValue.Create(w) : null;
                break;
            case "qwen2":
                o["use_sliding_window"] = SlidingWindow is not null;
                o["sliding_window"] = SlidingWindow is int sw ? JsonValue.Create(sw) : null;
                o["max_window_layers"] = MaxWindowLayers;
                break;
        }
        foreach (var kv in Extra)
            if (!o.ContainsKey(kv.Key)) o[kv.Key] = kv.Value?.DeepClone();
        return o;
    }
}

/// <summary>Rotary position embeddings as transformers computes them (ROPE_INIT_FUNCTIONS), rotate-half layout.</summary>
public static class Rope
{
    /// <summary>inv_freq[i] = θ^(−2i/d) for i &lt; d/2, then adjusted by rope_scaling ("linear": ÷ factor;
    /// "llama3": Llama 3.1's piecewise rule — long wavelengths ÷ factor, short ones kept, a smooth blend between).
    /// Computed in float32 as transformers does, so that positions far into a long context round identically.</summary>
    public static float[] InverseFrequencies(LlamaConfig c)
    {
        int d = c.HeadDim;
        var inv = new float[d / 2];
        for (int i = 0; i < d / 2; i++)
        {
            float exponent = (float)(2 * i) / d;
            inv[i] = 1.0f / MathF.Pow((float)c.RopeTheta, exponent);
        }
        if (c.RopeScaling is not JsonObject s) return inv;
        string type = (s["rope_type"] ?? s["type"])?.ToString() ?? "default";
        double Num(string key)
        {
            var n = s[key] ?? throw new FormatException($"rope_scaling of type '{type}' needs '{key}'");
            try { return n.GetValue<double>(); }
            catch (Exception) { throw new FormatException($"rope_scaling.{key} must be a number, got {n.ToJsonString()}"); }
        }
        switch (type)
        {
            case "default":
                return inv;
            case "linear":
            {
                float f = (float)Num("factor");
                if (!(f > 0)) throw new FormatException("rope_scaling.factor must be positive");
                return inv.Select(x => x / f).ToArray();
            }
            case "llama3":
            {
                float factor = (float)Num("factor"), low = (float)Num("low_freq_factor"), high = (float)Num("high_freq_factor");
                float old = (float)Num("original_max_position_embeddings");
                if (!(factor > 0) || !(low > 0) || !(high > low) || !(old > 0))
                    throw new FormatException("rope_scaling (llama3) needs factor > 0, 0 < low_freq_factor < high_freq_factor, original_max_position_embeddings > 0");
                float lowWavelen = old / low, highWavelen = old / high;
                var result = new float[inv.Length];
                for (int i = 0; i < inv.Length; i++)
                {
                    float wavelen = 2 * MathF.PI / inv[i];
                    float scaled = wavelen > lowWavelen ? inv[i] / factor : inv[i];
                    bool medium = !(wavelen < highWavelen) && !(wavelen > lowWavelen);
                    if (medium)
                    {
                        float smooth = (old / wavelen - low) / (high - low);
                        scaled = (1 - smooth) * scaled / factor + smooth * scaled;
                    }
                    result[i] = scaled;
                }
                return result;
            }
            default:
                throw new FormatException($"rope_scaling type '{type}' is not supported (default, linear, llama3)");
        }
    }
}

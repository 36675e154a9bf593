using System.Text.Json;
using System.Text.Json.Nodes;

namespace DetoxSharp.Models;

/// <summary>
/// GPT-2 hyperparameters with Hugging Face's config.json names. Keys we do not use are kept in
/// <see cref="Extra"/> so that a loaded config is written back unchanged.
/// </summary>
public sealed record Gpt2Config
{
    /// <summary>Vocabulary size (vocab_size).</summary>
    public int VocabSize { get; init; } = 50257;
    /// <summary>Longest sequence: number of learned positions (n_positions).</summary>
    public int NPositions { get; init; } = 1024;
    /// <summary>Residual-stream width (n_embd).</summary>
    public int NEmbd { get; init; } = 768;
    /// <summary>Number of blocks (n_layer).</summary>
    public int NLayer { get; init; } = 12;
    /// <summary>Attention heads per block (n_head).</summary>
    public int NHead { get; init; } = 12;
    /// <summary>MLP width; null means 4·n_embd (Hugging Face's convention).</summary>
    public int? NInner { get; init; }
    /// <summary>MLP activation (activation_function): "gelu_new" (tanh approximation), "gelu", "relu" or "silu".</summary>
    public string ActivationFunction { get; init; } = "gelu_new";
    /// <summary>LayerNorm ε (layer_norm_epsilon).</summary>
    public double LayerNormEpsilon { get; init; } = 1e-5;
    /// <summary>Beginning-of-sequence id (bos_token_id).</summary>
    public int BosTokenId { get; init; } = 50256;
    /// <summary>End-of-sequence id (eos_token_id).</summary>
    public int EosTokenId { get; init; } = 50256;
    /// <summary>config.json keys this record does not model, kept so a loaded config is written back unchanged.</summary>
    public JsonObject Extra { get; init; } = new();

    /// <summary>MLP width: <see cref="NInner"/> or 4·n_embd.</summary>
    public int MlpDim => NInner ?? 4 * NEmbd;
    /// <summary>Width of one attention head: n_embd / n_head.</summary>
    public int HeadDim => NEmbd / NHead;

    /// <summary>Number of parameters the config implies (as a double: a corrupt config must not overflow the count).</summary>
    public double ParameterCount
    {
        get
        {
            double d = NEmbd, m = MlpDim;
            double perLayer = 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + 2 * d + (d * m + m) + (m * d + d);
            return (double)VocabSize * d + (double)NPositions * d + NLayer * perLayer + 2 * d;
        }
    }

    /// <summary>GPT-2 small (124M): 12 layers, d = 768.</summary>
    public static Gpt2Config Small => new();
    /// <summary>GPT-2 medium (355M): 24 layers, d = 1024.</summary>
    public static Gpt2Config Medium => new() { NEmbd = 1024, NLayer = 24, NHead = 16 };
    /// <summary>GPT-2 large (774M): 36 layers, d = 1280.</summary>
    public static Gpt2Config Large => new() { NEmbd = 1280, NLayer = 36, NHead = 20 };
    /// <summary>GPT-2 XL (1.5B): 48 layers, d = 1600.</summary>
    public static Gpt2Config Xl => new() { NEmbd = 1600, NLayer = 48, NHead = 25 };

    static readonly string[] Known =
    [
        "vocab_size", "n_positions", "n_ctx", "n_embd", "n_layer", "n_head", "n_inner", "activation_function",
        "layer_norm_epsilon", "bos_token_id", "eos_token_id", "model_type", "architectures", "torch_dtype",
        "scale_attn_weights", "scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "tie_word_embeddings",
    ];

    /// <summary>Validates the numbers; throws <see cref="FormatException"/> naming the bad key.</summary>
    public void Validate()
    {
        void Pos(string key, int v) { if (v <= 0) throw new FormatException($"{key} must be positive, got {v}"); }
        Pos("vocab_size", VocabSize); Pos("n_positions", NPositions); Pos("n_embd", NEmbd);
        Pos("n_layer", NLayer); Pos("n_head", NHead); Pos("n_inner", MlpDim);
        if (NEmbd % NHead != 0) throw new FormatException($"n_embd ({NEmbd}) must be divisible by n_head ({NHead})");
        if (ActivationFunction is not ("gelu_new" or "gelu" or "relu" or "gelu_pytorch_tanh"))
            throw new FormatException($"activation_function '{ActivationFunction}' is not supported (gelu_new, gelu, gelu_pytorch_tanh, relu)");
        // Beyond these, index arithmetic in int (ids, positions, widths) could overflow; no real GPT-2 comes close.
        const int Limit = 1 << 24;
        foreach (var (key, v) in new[] { ("vocab_size", VocabSize), ("n_positions", NPositions), ("n_embd", NEmbd), ("n_layer", NLayer), ("n_head", NHead), ("n_inner", MlpDim) })
            if (v > Limit) throw new FormatException($"{key} = {v} is beyond the supported maximum of {Limit}");
        if (!(LayerNormEpsilon > 0) || !double.IsFinite(LayerNormEpsilon)) throw new FormatException($"layer_norm_epsilon must be positive, got {LayerNormEpsilon}");
    }

    /// <summary>Reads a config.json object (validated; unknown keys go to <see cref="Extra"/>).</summary>
    /// <param name="o">The parsed config.json.</param>
    public static Gpt2Config FromJson(JsonObject o)
    {
        int Int(string key, int dflt)
        {
            var n = o[key];
            if (n is null) return dflt;
            try { return n.GetValue<int>(); }
            catch (Exception) { throw new FormatException($"'{key}' must be an integer, got {n.ToJsonString()}"); }
        }
        double Dbl(string key, double dflt)
        {
            var n = o[key];
            if (n is null) return dflt;
            try { var d = n.GetValue<double>(); return double.IsFinite(d) ? d : throw new FormatException(); }
            catch (Exception) { throw new FormatException($"'{key}' must be a number, got {n.ToJsonString()}"); }
        }
        bool Flag(string key) => o[key] is JsonValue v && v.TryGetValue<bool>(out var b) && b;
        if (Flag("scale_attn_by_inverse_layer_idx") || Flag("reorder_and_upcast_attn"))
            throw new FormatException("scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn are not supported");
        if (o["scale_attn_weights"] is JsonValue s && s.TryGetValue<bool>(out var sw) && !sw)
            throw new FormatException("scale_attn_weights=false is not supported");
        if (o["tie_word_embeddings"] is JsonValue tw && tw.TryGetValue<bool>(out var tied) && !tied)
            throw new FormatException("tie_word_embeddings=false is not supported (GPT-2's LM head is tied to wte)");
        int? nInner = o["n_inner"] is null ? null : Int("n_inner", 0);
        var extra = new JsonObject();
        foreach (var kv in o)
            if (!Known.Contains(kv.Key)) extra[kv.Key] = kv.Value?.DeepClone();
        string act = "gelu_new";
        if (o["activation_function"] is JsonNode a)
        {
            try { act = a.GetValue<string>(); }
            catch (Exception) { throw new FormatException($"'activation_function' must be a string, got {a.ToJsonString()}"); }
        }
        var c = new Gpt2Config
        {
            VocabSize = Int("vocab_size", 50257),
            NPositions = Int("n_positions", Int("n_ctx", 1024)),
            NEmbd = Int("n_embd", 768),
            NLayer = Int("n_layer", 12),
            NHead = Int("n_head", 12),
            NInner = nInner,
            ActivationFunction = act,
            LayerNormEpsilon = Dbl("layer_norm_epsilon", 1e-5),
            BosTokenId = Int("bos_token_id", 50256),
            EosTokenId = Int("eos_token_id", 50256),
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
            ["model_type"] = "gpt2",
            ["architectures"] = new JsonArray("GPT2LMHeadModel"),
            ["vocab_size"] = VocabSize,
            ["n_positions"] = NPositions,
            ["n_ctx"] = NPositions,
            ["n_embd"] = NEmbd,
            ["n_layer"] = NLayer,
            ["n_head"] = NHead,
            ["n_inner"] = NInner is int n ? JsonValue.Create(n) : null,
            ["activation_function"] = ActivationFunction,
            ["layer_norm_epsilon"] = LayerNormEpsilon,
            ["bos_token_id"] = BosTokenId,
            ["eos_token_id"] = EosTokenId,
            ["scale_attn_weights"] = true,
            ["scale_attn_by_inverse_layer_idx"] = false,
            ["reorder_and_upcast_attn"] = false,
            ["tie_word_embeddings"] = true,
            ["torch_dtype"] = torchDtype,
        };
        foreach (var kv in Extra)
            if (!o.ContainsKey(kv.Key)) o[kv.Key] = kv.Value?.DeepClone();
        return o;
    }
}

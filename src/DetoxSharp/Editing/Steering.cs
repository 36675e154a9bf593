using System.Globalization;
using System.Text.Json.Nodes;
using DetoxSharp.Checkpoints;
using DetoxSharp.Data;
using DetoxSharp.Interpretability;
using DetoxSharp.Models;
using DetoxSharp.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Editing;

/// <summary>Settings of the steering vector (methods-facts §1, "Activation steering").</summary>
public sealed record SteeringOptions
{
    /// <summary>Null = the last layer.</summary>
    [Setting("layer whose residual stream (after the block) is read and steered (default: the last)")]
    public int? Layer { get; init; }
    /// <summary>Tokens per comment (cut at the end).</summary>
    [Setting("tokens per comment (cut at the end)")]
    public int MaxTokens { get; init; } = 128;
    /// <summary>Comments per forward batch.</summary>
    [Setting("comments per forward batch")]
    public int BatchSize { get; init; } = 16;

    /// <summary>Checks every setting; throws <see cref="InvalidSettingException"/> naming the first one out of range.</summary>
    public void Validate()
    {
        InvalidSettingException.Require(Layer is null or >= 0, "layer", $"must be ≥ 0 (got {Layer})");
        Require.Count(MaxTokens, "max_tokens", 1, 1 << 20);
        Require.Count(BatchSize, "batch_size", 1, 4096);
    }
}

/// <summary>
/// Activation steering as a method: v_l = mean residual stream after block l over toxic comments − the same over
/// non-toxic ones (mean over each comment's real positions, then over comments); at inference α·v_l is subtracted
/// there at every position. The intervention is the existing <see cref="VectorIntervention"/> (it adds to
/// <c>hook_mlp_out</c> of block l, i.e. to the residual stream after block l) in <see cref="InterventionMode.AllPositions"/>.
/// Files: steer.safetensors ("vector" [d] float32) and steer.json (layer, counts, norm).
/// </summary>
public static class Steering
{
    /// <summary>The two files of a steering directory: the vector (safetensors) and its description (JSON).</summary>
    public const string TensorFile = "steer.safetensors", InfoFile = "steer.json";

    /// <summary>The mean-difference vector [d] float32 CPU and the layer it belongs to.</summary>
    /// <param name="model">The model (not changed).</param>
    /// <param name="tokenizer">Its tokenizer.</param>
    /// <param name="comments">Labelled comments, toxic and not.</param>
    /// <param name="o">Layer, token limit and batch size.</param>
    /// <param name="progress">Receives "activations a/b" (comments run) after each batch.</param>
    public static (Tensor Vector, int Layer) MeanDifference(ICausalLM model, Gpt2Tokenizer tokenizer, IReadOnlyList<LabelledComment> comments, SteeringOptions o, IProgress<string>? progress = null)
    {
        o.Validate();
        int layer = o.Layer ?? model.NumLayers - 1;
        if (layer >= model.NumLayers) throw new InvalidSettingException("layer", $"layer {layer} out of range 0..{model.NumLayers - 1}");
        int toxic = comments.Count(c => c.Toxic);
        if (toxic == 0 || toxic == comments.Count)
            throw new InvalidInputException($"steering needs toxic and non-toxic comments (got {toxic} toxic of {comments.Count})");
        var f = PooledActivations.Of(model, tokenizer, comments.Select(c => c.Text).ToList(), [HookNames.ResidPost(layer)], PooledActivations.Mean, o.MaxTokens, o.BatchSize,
            n => progress?.Report($"activations {n}/{comments.Count}"))[0];
        using var scope = torch.NewDisposeScope();
        using (f)
        {
            var isToxic = torch.tensor(comments.Select(c => c.Toxic).ToArray());
            var v = f[isToxic].to(ScalarType.Float64).mean([0]) - f[isToxic.logical_not()].to(ScalarType.Float64).mean([0]);
            return (v.to(ScalarType.Float32).DetachFromDisposeScope(), layer);
        }
    }

    /// <summary>Writes a steering directory (atomically): <see cref="TensorFile"/> with the vector and <see cref="InfoFile"/> with the layer and <paramref name="info"/>.</summary>
    /// <param name="dir">Output directory (created).</param>
    /// <param name="vector">The steering vector [d].</param>
    /// <param name="layer">The layer whose residual stream it is added to.</param>
    /// <param name="info">Extra fields for steer.json (counts, norm).</param>
    public static void Save(string dir, Tensor vector, int layer, JsonObject info)
    {
        Directory.CreateDirectory(dir);
        Safetensors.Save(Path.Combine(dir, TensorFile), new Dictionary<string, Tensor> { ["vector"] = vector });
        info["layer"] = layer;
        info["norm"] = vector.norm().item<float>();
        AtomicFile.Write(Path.Combine(dir, InfoFile), w => w.Write(info.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true })));
    }

    /// <summary>Parses <c>DIR@ALPHA</c> (the output of <c>detox edit steer</c> and the strength α) into the intervention
    /// that subtracts α·v at every position.</summary>
    public static VectorIntervention Load(string spec, string flag = "--steer")
    {
        int at = spec.LastIndexOf('@');
        if (at <= 0) throw new InvalidInputException($"{flag} '{spec}': expected DIR@ALPHA (DIR from `detox edit steer`), e.g. steer@4");
        var dir = spec[..at];
        if (!double.TryParse(spec[(at + 1)..], NumberStyles.Float, CultureInfo.InvariantCulture, out var alpha) || !double.IsFinite(alpha))
            throw new InvalidInputException($"{flag} '{spec}': strength '{spec[(at + 1)..]}' is not a finite number");
        var file = Path.Combine(dir, TensorFile);
        var info = Path.Combine(dir, InfoFile);
        if (!File.Exists(file) || !File.Exists(info)) throw new InvalidInputException($"{flag}: {dir} has no {TensorFile}/{InfoFile} (make it with `detox edit steer`)");
        var json = StrictJson.ParseFileObject(info, "steering info");
        int layer = json["layer"] is JsonValue lv && lv.TryGetValue<int>(out var l) && l >= 0 ? l : throw new InvalidInputException($"{info}: missing or invalid 'layer'");
        var t = Safetensors.Load(file);
        try
        {
            if (!t.TryGetValue("vector", out var v) || v.dim() != 1) throw new InvalidInputException($"{file}: expected a 1-D tensor 'vector'");
            var name = string.Create(CultureInfo.InvariantCulture, $"steer −{alpha}·v (layer {layer})");
            return VectorIntervention.Subtract(name, v, alpha, layer, InterventionMode.AllPositions);
        }
        finally { foreach (var x in t.Values) x.Dispose(); }
    }
}

using System.Text.Json.Nodes;
using DetoxSharp.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Interpretability;

/// <summary>
/// Un-aligning (Lee et al. 2024 §"un-aligning"): take the k value vectors most similar to W_Toxic in the (aligned) model
/// and multiply their keys — columns of <see cref="ICausalLM.MlpKeys"/> — by a scale. Everything else is unchanged.
/// </summary>
public static class Unalign
{
    /// <summary>Scales key columns in place; returns the neurons scaled (ranked on this model).</summary>
    public static List<RankedVector> ScaleToxicKeys(ICausalLM model, Tensor wToxic, int k = 7, double scale = 10)
    {
        if (k < 1) throw new InvalidInputException($"--k must be ≥ 1, got {k}");
        if (!double.IsFinite(scale)) throw new InvalidInputException($"--scale must be finite, got {scale}");
        var chosen = ToxicVectors.Rank(model, wToxic, perLayer: k).Take(k).ToList();
        ScaleKeys(model, chosen.Select(c => (c.Layer, c.Neuron)), scale);
        return chosen;
    }

    /// <summary>Multiplies column <c>neuron</c> of MlpKeys(layer) by <paramref name="scale"/> for each pair (in place).</summary>
    public static void ScaleKeys(ICausalLM model, IEnumerable<(int Layer, int Neuron)> neurons, double scale)
    {
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        foreach (var (l, i) in neurons)
        {
            var keys = model.MlpKeys(l);
            var col = keys.select(1, i);
            col.mul_(scale);
        }
    }

    public static JsonObject Describe(IEnumerable<RankedVector> chosen, double scale, ICausalLM model) => new()
    {
        ["scale"] = scale,
        ["neurons"] = new JsonArray(chosen.Select(c => (JsonNode)new JsonObject
        {
            ["layer"] = c.Layer, ["neuron"] = c.Neuron, ["cosine_with_w_toxic"] = c.Cosine, ["value_norm"] = c.Norm,
            ["key_parameter"] = model.MlpKeysParameterName(c.Layer), ["key_column"] = c.Neuron,
        }).ToArray()),
    };
}

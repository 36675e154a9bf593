using System.Text.Json.Nodes;
using DetoxSharp.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Interpretability;

/// <summary>Settings of un-aligning (the paper: the 7 top toxic vectors' keys ×10).</summary>
public sealed record UnalignOptions
{
    /// <summary>Value vectors (most similar to W_Toxic, ranked on this model) whose keys are scaled.</summary>
    [Setting("value vectors (most similar to W_Toxic, ranked on this model) whose keys are scaled")]
    public int Keys { get; init; } = 7;
    /// <summary>Factor applied to each chosen key column.</summary>
    [Setting("factor applied to each chosen key column")]
    public double Scale { get; init; } = 10;

    /// <summary>Checks every setting; throws <see cref="InvalidSettingException"/> naming the first one out of range.</summary>
    public void Validate()
    {
        InvalidSettingException.Require(Keys >= 1, "keys", $"must be ≥ 1 (got {Keys})");
        InvalidSettingException.Require(double.IsFinite(Scale), "scale", $"must be finite (got {Scale})");
    }
}

/// <summary>
/// Un-aligning (Lee et al. 2024 §"un-aligning"): take the k value vectors most similar to W_Toxic in the (aligned) model
/// and multiply their keys — columns of <see cref="ICausalLM.MlpKeys"/> — by a scale. Everything else is unchanged.
/// </summary>
public static class Unalign
{
    /// <summary>Scales key columns in place; returns the neurons scaled (ranked on this model).</summary>
    public static List<RankedVector> ScaleToxicKeys(ICausalLM model, Tensor wToxic, UnalignOptions options)
    {
        options.Validate();
        int k = options.Keys;
        double scale = options.Scale;
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

    /// <summary>The scale and the chosen neurons (layer, neuron, cosine, norm) for unalign.json.</summary>
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

/// <summary>One point of a steering sweep: the toxicity of the aligned model with the toxic direction added at this scale.</summary>
public sealed record SteeringPoint(double Scale, double Toxicity);

/// <summary>
/// The steering attack on an aligned model (Lee et al. 2024's other way back): add the unit toxic direction, scaled,
/// to a layer's MLP output at the newest position, and find the smallest scale whose toxicity reaches a target (the
/// toxicity of the model the alignment started from).
/// </summary>
public static class SteeringSweep
{
    /// <summary>One edit per positive scale, in the given order, each adding scale · direction/‖direction‖ at
    /// <paramref name="layer"/>'s MLP output; labelled "steer SCALE".</summary>
    public static List<VectorIntervention> Edits(Tensor direction, IEnumerable<double> scales, int layer)
    {
        using var scope = torch.NewDisposeScope();
        var w = direction.to(ScalarType.Float32);
        var unit = (w / w.norm()).DetachFromDisposeScope();
        return scales.Where(a => a > 0).Select(a => VectorIntervention.Add(Label(a), unit, a, layer)).ToList();
    }

    /// <summary>The row label of a steering scale, "steer &lt;scale&gt;".</summary>
    public static string Label(double scale) => $"steer {scale.ToString(System.Globalization.CultureInfo.InvariantCulture)}";

    /// <summary>The first scale (in the sweep's order) whose toxicity is ≥ <paramref name="target"/>; null if none is.</summary>
    public static double? RestoreScale(IEnumerable<SteeringPoint> sweep, double target) =>
        sweep.FirstOrDefault(p => p.Toxicity >= target)?.Scale;
}

/// <summary>
/// Un-aligning as a reversible edit: while applied, the keys of the <paramref name="keys"/> value vectors most similar to
/// <paramref name="wToxic"/> (ranked on the model it is applied to, as <see cref="Unalign.ScaleToxicKeys"/>) are scaled;
/// disposing the handle restores the original columns bit for bit. Lets an evaluation sweep k without a checkpoint per k.
/// </summary>
public sealed class KeyScalingEdit(Tensor wToxic, int keys, double scale) : IModelEdit
{
    /// <inheritdoc/>
    public string Name => $"keys {keys} ×{scale.ToString(System.Globalization.CultureInfo.InvariantCulture)}";
    /// <summary>How many value vectors' keys are scaled.</summary>
    public int Keys => keys;

    /// <inheritdoc/>
    public IDisposable Apply(ICausalLM model)
    {
        new UnalignOptions { Keys = keys, Scale = scale }.Validate();
        var chosen = ToxicVectors.Rank(model, wToxic, perLayer: keys).Take(keys).ToList();
        var saved = new List<(int Layer, int Neuron, Tensor Column)>();
        using (torch.no_grad())
            foreach (var c in chosen)
            {
                var col = model.MlpKeys(c.Layer).select(1, c.Neuron).detach().clone();
                col.DetachFromDisposeScope();
                saved.Add((c.Layer, c.Neuron, col));
            }
        Unalign.ScaleKeys(model, chosen.Select(c => (c.Layer, c.Neuron)), scale);
        return new Restore(model, saved);
    }

    sealed class Restore(ICausalLM model, List<(int Layer, int Neuron, Tensor Column)> saved) : IDisposable
    {
        /// <inheritdoc/>
        public void Dispose()
        {
            using var _ = torch.no_grad();
            foreach (var (l, i, col) in saved)
            {
                using (var key = model.MlpKeys(l).select(1, i)) key.copy_(col);
                col.Dispose();
            }
            saved.Clear();
        }
    }
}

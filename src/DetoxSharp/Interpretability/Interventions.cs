using System.Globalization;
using DetoxSharp.Checkpoints;
using DetoxSharp.Models;
using DetoxSharp.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Interpretability;

/// <summary>Which positions an intervention changes.</summary>
public enum InterventionMode
{
    /// <summary>Only the last position of each forward call: with a KV cache during generation this is the newest token
    /// (the prefill call changes the prompt's last position). For generation.</summary>
    NewestPosition,
    /// <summary>Every position of every call. For perplexity.</summary>
    AllPositions,
}

/// <summary>
/// Adds <c>Coefficient·Vector</c> to the output of a layer's MLP (<c>blocks.{l}.hook_mlp_out</c>), i.e. to the residual
/// stream there. Subtracting α·v (Lee et al. 2024) is Coefficient = −α; steering towards v is +α. Default layer: the last.
/// </summary>
public sealed class VectorIntervention : IPositionModeEdit
{
    /// <inheritdoc/>
    public string Name { get; }
    /// <summary>[d] float32 on the CPU.</summary>
    public Tensor Vector { get; }
    /// <summary>The multiple of <see cref="Vector"/> added (negative: subtracted).</summary>
    public double Coefficient { get; }
    /// <summary>Null = the model's last layer.</summary>
    public int? Layer { get; }
    /// <summary>Where it acts: only the newest position (generation) or every position (perplexity).</summary>
    public InterventionMode Mode { get; }

    /// <summary>Adds <paramref name="coefficient"/>·<paramref name="vector"/> ([d]) to layer <paramref name="layer"/>'s MLP output
    /// (null: the last layer) at the positions of <paramref name="mode"/>; <paramref name="name"/> labels the row.</summary>
    public VectorIntervention(string name, Tensor vector, double coefficient, int? layer = null, InterventionMode mode = InterventionMode.NewestPosition)
    {
        Name = name;
        Vector = vector.detach().to(ScalarType.Float32).cpu().flatten().clone();
        Vector.DetachFromDisposeScope();
        Coefficient = coefficient;
        Layer = layer;
        Mode = mode;
    }

    /// <summary>Subtracts <paramref name="alpha"/>·<paramref name="vector"/> (Coefficient = −α).</summary>
    public static VectorIntervention Subtract(string name, Tensor vector, double alpha, int? layer = null, InterventionMode mode = InterventionMode.NewestPosition)
        => new(name, vector, -alpha, layer, mode);

    /// <summary>Adds <paramref name="alpha"/>·<paramref name="vector"/> (Coefficient = +α).</summary>
    public static VectorIntervention Add(string name, Tensor vector, double alpha, int? layer = null, InterventionMode mode = InterventionMode.NewestPosition)
        => new(name, vector, alpha, layer, mode);

    /// <summary>The same edit with another position mode (e.g. AllPositions for a perplexity run).</summary>
    public VectorIntervention WithMode(InterventionMode mode) => new(Name, Vector, Coefficient, Layer, mode);

    /// <inheritdoc/>
    public IModelEdit ForAllPositions() => WithMode(InterventionMode.AllPositions);

    /// <inheritdoc/>
    public IDisposable Apply(ICausalLM model)
    {
        if (Vector.shape[0] != model.DModel) throw new InvalidInputException($"intervention '{Name}': vector width {Vector.shape[0]} ≠ model d_model {model.DModel}");
        int layer = Layer ?? model.NumLayers - 1;
        if (layer < 0 || layer >= model.NumLayers) throw new InvalidInputException($"intervention '{Name}': layer {layer} out of range 0..{model.NumLayers - 1}");
        var delta = (Vector * Coefficient).to(model.DType).to(model.Device);
        delta.DetachFromDisposeScope();
        var handle = model.Hooks.Add(HookNames.MlpOut(layer), (x, ctx) =>
        {
            var d = delta.to(x.dtype);
            if (Mode == InterventionMode.AllPositions) return x + d;
            long t = x.shape[1];
            var posMask = torch.zeros([1, t, 1], x.dtype, x.device);
            posMask[0, t - 1, 0] = torch.tensor(1.0f).to(x.dtype);
            return x + posMask * d;
        });
        return new Undo(handle, delta);
    }

    sealed class Undo(IDisposable handle, Tensor delta) : IDisposable
    {
        /// <inheritdoc/>
        public void Dispose() { handle.Dispose(); delta.Dispose(); }
    }
}

/// <summary>
/// Scales for subtraction edits on models of any size. The paper's raw scales (e.g. 20 × W_Toxic at the last layer) fit
/// GPT-2 medium's residual norms; a "relative" scale s means α = s · (mean norm of the edited hook's output on the given
/// prompts) / ‖v‖, i.e. the subtracted vector is s times as long as the typical output it is subtracted from.
/// </summary>
public static class RelativeScale
{
    /// <summary>Mean L2 norm of <paramref name="hook"/>'s output over every position of the prompts (each keeps its last
    /// <paramref name="maxPromptTokens"/> tokens; empty prompts are skipped); 1 when no position was measured.</summary>
    public static double MeanHookNorm(ICausalLM model, Gpt2Tokenizer tokenizer, IEnumerable<string> prompts, string hook, int maxPromptTokens = 32)
    {
        double sum = 0; long n = 0;
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        foreach (var p in prompts)
        {
            var ids = tokenizer.Encode(p);
            if (ids.Length == 0) continue;
            ids = PromptTruncation.KeepLast(ids, maxPromptTokens);
            using var cache = ActivationCache.Run(model, torch.tensor(ids.Select(x => (long)x).ToArray(), [1, ids.Length], ScalarType.Int64).to(model.Device), null, [hook]);
            var norms = cache[hook].to(ScalarType.Float64).norm(-1);
            sum += norms.sum().item<double>();
            n += norms.numel();
        }
        return n == 0 ? 1 : sum / n;
    }

    /// <summary>The coefficient of a subtraction: <paramref name="scale"/> itself, or relative to the reference norm.</summary>
    public static double Alpha(double scale, double vectorNorm, double? referenceNorm) =>
        referenceNorm is double r ? scale * r / vectorNorm : scale;
}

/// <summary>Where <see cref="InterventionSpecs.Parse"/> finds named vectors.</summary>
/// <param name="ProbeDirectory">Output of <c>detox probe</c> (for <c>probe</c>).</param>
/// <param name="VectorsDirectory">Output of <c>detox vectors</c> (for <c>v&lt;rank&gt;</c> and <c>svd&lt;k&gt;</c>).</param>
/// <param name="Model">The model (for <c>L&lt;l&gt;.N&lt;i&gt;</c>, a value vector read from its weights).</param>
public sealed record InterventionContext(string? ProbeDirectory = null, string? VectorsDirectory = null, ICausalLM? Model = null);

/// <summary>
/// Parses intervention specs for <c>detox eval --intervention</c>:
/// <c>OP:VECTOR@ALPHA[:layer=L][:mode=newest|all]</c> with OP = <c>subtract</c> or <c>add</c>; VECTOR = <c>probe</c> (W_Toxic,
/// raw), <c>v&lt;r&gt;</c> (the r-th ranked toxic value vector, raw, 0 = top), <c>svd&lt;k&gt;</c> (SVD.U_Toxic[k], unit),
/// or <c>L&lt;l&gt;.N&lt;i&gt;</c> (value vector i of layer l of the model). Examples (the paper's rows):
/// <c>subtract:probe@50</c>, <c>subtract:v0@20</c>, <c>subtract:svd0@100</c>, <c>add:probe@10:layer=3</c>.
/// Default layer: last; default mode: newest (the harness switches to AllPositions for perplexity via WithMode).
/// </summary>
public static class InterventionSpecs
{
    /// <summary>Parses one spec (grammar above), loading the vector from the context's probe or vectors directory or its model;
    /// throws <see cref="InvalidInputException"/> naming the spec when it is malformed or its vector is missing.</summary>
    public static VectorIntervention Parse(string spec, InterventionContext context)
    {
        string Bad(string why) => throw new InvalidInputException($"--intervention '{spec}': {why} (format OP:VECTOR@ALPHA[:layer=L][:mode=newest|all], e.g. subtract:probe@50)");
        var parts = spec.Split(':');
        if (parts.Length < 2) Bad("missing ':'");
        var op = parts[0].Trim().ToLowerInvariant();
        if (op != "subtract" && op != "add") Bad($"operation must be subtract or add, got '{parts[0]}'");
        var at = parts[1].Split('@');
        if (at.Length != 2) Bad("expected VECTOR@ALPHA");
        if (!double.TryParse(at[1], NumberStyles.Float, CultureInfo.InvariantCulture, out var alpha) || !double.IsFinite(alpha)) Bad($"alpha '{at[1]}' is not a number");
        int? layer = null;
        var mode = InterventionMode.NewestPosition;
        foreach (var kv in parts.Skip(2))
        {
            var p = kv.Split('=');
            if (p.Length != 2) Bad($"option '{kv}' must be key=value");
            switch (p[0].Trim().ToLowerInvariant())
            {
                case "layer":
                    if (!int.TryParse(p[1], out var l) || l < 0) Bad($"layer '{p[1]}' must be an integer ≥ 0");
                    layer = l; break;
                case "mode":
                    mode = p[1].Trim().ToLowerInvariant() switch
                    {
                        "newest" => InterventionMode.NewestPosition,
                        "all" => InterventionMode.AllPositions,
                        _ => (InterventionMode)(-1),
                    };
                    if ((int)mode < 0) Bad($"mode must be newest or all, got '{p[1]}'");
                    break;
                default: Bad($"unknown option '{p[0]}'"); break;
            }
        }
        var name = at[0].Trim();
        using var scope = torch.NewDisposeScope();
        Tensor vec;
        string label;
        if (name == "probe")
        {
            if (context.ProbeDirectory is null) Bad("'probe' needs --probe DIR");
            using var probe = ToxicityProbe.Load(context.ProbeDirectory!);
            vec = probe.WToxic; label = "W_Toxic";
        }
        else if (name.StartsWith('v') && int.TryParse(name[1..], out var rank))
        {
            var t = LoadVectors(context, spec);
            try
            {
                var top = t["top_vectors"];
                if (rank < 0 || rank >= top.shape[0]) Bad($"rank {rank} out of range 0..{top.shape[0] - 1}");
                vec = top[rank].clone();
                label = $"MLP.v_{t["top_neurons"][rank].item<long>()}^{t["top_layers"][rank].item<long>()}";
            }
            finally { foreach (var x in t.Values) x.Dispose(); }
        }
        else if (name.StartsWith("svd") && int.TryParse(name[3..], out var comp))
        {
            var t = LoadVectors(context, spec);
            try
            {
                var u = t["svd_u"];
                if (comp < 0 || comp >= u.shape[0]) Bad($"SVD component {comp} out of range 0..{u.shape[0] - 1} (rerun `detox vectors --svd-components`)");
                vec = u[comp].clone(); label = $"SVD.U_Toxic[{comp}]";
            }
            finally { foreach (var x in t.Values) x.Dispose(); }
        }
        else if (name.StartsWith('L') && name.Split(".N") is { Length: 2 } ln && int.TryParse(ln[0][1..], out var ll) && int.TryParse(ln[1], out var nn))
        {
            if (context.Model is null) Bad("a model value vector needs the model");
            var m = context.Model!;
            if (ll < 0 || ll >= m.NumLayers || nn < 0 || nn >= m.MlpDim) Bad($"no neuron {nn} in layer {ll}");
            using (torch.no_grad()) vec = m.MlpValues(ll)[nn].detach().to(ScalarType.Float32).cpu().clone();
            label = $"MLP.v_{nn}^{ll}";
        }
        else { Bad($"unknown vector '{name}' (probe, v<rank>, svd<k>, L<l>.N<i>)"); throw new InvalidOperationException(); }
        var verb = op == "subtract" ? "subtract" : "add";
        var rowName = string.Create(CultureInfo.InvariantCulture, $"{verb} {label} ×{alpha}") + (layer is null ? "" : $" @layer {layer}");
        return new VectorIntervention(rowName, vec, op == "subtract" ? -alpha : alpha, layer, mode);
    }

    static Dictionary<string, Tensor> LoadVectors(InterventionContext c, string spec)
    {
        if (c.VectorsDirectory is null) throw new InvalidInputException($"--intervention '{spec}': needs --vectors DIR (output of `detox vectors`)");
        var path = Path.Combine(c.VectorsDirectory, ToxicVectors.TensorFile);
        if (!File.Exists(path)) throw new InvalidInputException($"--vectors: {path} not found (run `detox vectors` first)");
        return Safetensors.Load(path);
    }
}

using System.Globalization;
using DetoxSharp.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Interpretability;

/// <summary>
/// Activation editing as a detoxification method (Yang et al. 2025): no weight changes; the activations of chosen MLP
/// neurons are shifted by how much alignment moved them on average (m̄_after − m̄_before from <c>detox neurons</c>),
/// at every position, through <c>blocks.{l}.mlp.hook_post</c>. Shifting the four groups TP/TN/AP/AN is the paper's
/// edit in its simplest form (a constant per-neuron offset, not a per-input map); a scale multiplies
/// the offsets.
/// </summary>
public sealed class NeuronShiftEdit : IModelEdit
{
    readonly Dictionary<int, (int[] Neurons, float[] Shifts)> _byLayer;
    /// <inheritdoc/>
    public string Name { get; }
    /// <summary>Neurons shifted (over all layers).</summary>
    public int Neurons => _byLayer.Values.Sum(v => v.Neurons.Length);

    /// <summary>Adds each (layer, neuron, shift) to that neuron's MLP activation (<c>mlp.hook_post</c>) at every position;
    /// <paramref name="name"/> labels the row.</summary>
    public NeuronShiftEdit(string name, IEnumerable<(int Layer, int Neuron, double Shift)> shifts)
    {
        Name = name;
        _byLayer = shifts.GroupBy(s => s.Layer).ToDictionary(g => g.Key, g => (g.Select(x => x.Neuron).ToArray(), g.Select(x => (float)x.Shift).ToArray()));
    }

    /// <summary>Reads neurons.csv written by <see cref="NeuronContributions.Write"/>: the shift of every neuron whose group is
    /// in <paramref name="groups"/> is scale × (activation_after − activation_before).</summary>
    public static NeuronShiftEdit FromCsv(string path, IReadOnlyCollection<string> groups, double scale = 1, string? name = null)
    {
        if (!File.Exists(path)) throw new InvalidInputException($"{path}: not found (run `detox neurons` first)");
        foreach (var g in groups)
            if (!NeuronContributions.Groups.Contains(g)) throw new InvalidInputException($"neuron group '{g}' is not one of {string.Join(", ", NeuronContributions.Groups)}");
        var lines = File.ReadAllLines(path);
        if (lines.Length == 0) throw new InvalidInputException($"{path}: empty");
        var head = lines[0].Split(',');
        int Col(string c) => Array.IndexOf(head, c) is var i and >= 0 ? i : throw new InvalidInputException($"{path}: no column '{c}' (expected neurons.csv from `detox neurons`)");
        int cl = Col("layer"), cn = Col("neuron"), cg = Col("group"), cb = Col("activation_before"), ca = Col("activation_after");
        var shifts = new List<(int, int, double)>();
        for (int k = 1; k < lines.Length; k++)
        {
            if (lines[k].Length == 0) continue;
            var f = lines[k].Split(',');
            if (f.Length != head.Length) throw new InvalidInputException($"{path}:{k + 1}: {f.Length} fields, header has {head.Length}");
            if (!groups.Contains(f[cg])) continue;
            if (!int.TryParse(f[cl], out var l) || !int.TryParse(f[cn], out var n)
                || !double.TryParse(f[cb], NumberStyles.Float, CultureInfo.InvariantCulture, out var b) || !double.TryParse(f[ca], NumberStyles.Float, CultureInfo.InvariantCulture, out var a)
                || !double.IsFinite(a - b))
                throw new InvalidInputException($"{path}:{k + 1}: layer, neuron and activations must be numbers");
            shifts.Add((l, n, scale * (a - b)));
        }
        return new NeuronShiftEdit(name ?? string.Create(CultureInfo.InvariantCulture, $"shift {string.Join("+", groups)} activations ×{scale}"), shifts);
    }

    /// <inheritdoc/>
    public IDisposable Apply(ICausalLM model)
    {
        var handles = new List<IDisposable>();
        var tensors = new List<Tensor>();
        foreach (var (layer, (neurons, shifts)) in _byLayer)
        {
            if (layer < 0 || layer >= model.NumLayers) throw new InvalidInputException($"intervention '{Name}': layer {layer} out of range 0..{model.NumLayers - 1}");
            if (neurons.Any(n => n < 0 || n >= model.MlpDim)) throw new InvalidInputException($"intervention '{Name}': neuron out of range 0..{model.MlpDim - 1} in layer {layer}");
            var full = new float[model.MlpDim];
            for (int i = 0; i < neurons.Length; i++) full[neurons[i]] += shifts[i];
            var delta = torch.tensor(full).to(model.DType).to(model.Device);
            delta.DetachFromDisposeScope();
            tensors.Add(delta);
            handles.Add(model.Hooks.Add(HookNames.MlpPost(layer), (x, _) => x + delta.to(x.dtype)));
        }
        return new Undo(handles, tensors);
    }

    sealed class Undo(List<IDisposable> handles, List<Tensor> tensors) : IDisposable
    {
        /// <inheritdoc/>
        public void Dispose() { foreach (var h in handles) h.Dispose(); foreach (var t in tensors) t.Dispose(); }
    }
}

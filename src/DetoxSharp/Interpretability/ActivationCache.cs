using DetoxSharp.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Interpretability;

/// <summary>
/// Runs a model over a batch and keeps the named activations asked for (hook point names such as
/// <c>blocks.3.hook_resid_post</c> or <c>blocks.3.mlp.hook_post</c>), together with the padding mask.
/// Kept tensors are detached clones owned by the cache (dispose it to free them).
/// </summary>
public sealed class ActivationCache : IDisposable
{
    readonly Dictionary<string, Tensor> _acts = new();

    /// <summary>[batch, T] int64, 1 = real token, 0 = padding.</summary>
    public Tensor Mask { get; }

    /// <summary>Logits of the run [batch, T, vocab] when requested, else null.</summary>
    public Tensor? Logits { get; private set; }

    ActivationCache(Tensor mask) => Mask = mask;

    /// <summary>Every cached hook point's activation by hook name, each [batch, T, …] as the hook saw it (owned by the cache).</summary>
    public IReadOnlyDictionary<string, Tensor> Activations => _acts;

    /// <summary>The activation of hook point <paramref name="name"/>; throws <see cref="KeyNotFoundException"/> naming the cached ones.</summary>
    public Tensor this[string name] => _acts.TryGetValue(name, out var t) ? t
        : throw new KeyNotFoundException($"activation '{name}' was not cached (cached: {string.Join(", ", _acts.Keys)})");

    /// <summary>
    /// Runs <paramref name="model"/> on <paramref name="ids"/> [B,T] with <paramref name="attentionMask"/> [B,T] (or null = no
    /// padding) and caches the activations at <paramref name="names"/>. With <paramref name="keepLogits"/> false the run
    /// stops at the last block (<see cref="ICausalLM.ResidualStream"/>), so ln_final hooks do not run.
    /// </summary>
    public static ActivationCache Run(ICausalLM model, Tensor ids, Tensor? attentionMask, IEnumerable<string> names, bool keepLogits = false)
    {
        var mask = (attentionMask ?? torch.ones(ids.shape, ScalarType.Int64, ids.device)).to(ScalarType.Int64).detach().clone();
        mask.DetachFromDisposeScope();
        var cache = new ActivationCache(mask);
        var handles = new List<IDisposable>();
        try
        {
            foreach (var n in names.Distinct())
            {
                if (!model.Hooks.Has(n)) throw new ArgumentException($"unknown hook point '{n}'");
                handles.Add(model.Hooks.Add(n, (x, ctx) =>
                {
                    var kept = x.detach().clone();
                    kept.DetachFromDisposeScope();
                    if (cache._acts.Remove(ctx.Name, out var old)) old.Dispose();
                    cache._acts[ctx.Name] = kept;
                    return null;
                }));
            }
            using var scope = torch.NewDisposeScope();
            using (torch.no_grad())
            {
                if (keepLogits)
                {
                    var logits = model.Forward(ids, attentionMask).detach();
                    cache.Logits = logits.DetachFromDisposeScope();
                }
                else model.ResidualStream(ids, attentionMask);
            }
        }
        catch { cache.Dispose(); throw; }
        finally { foreach (var h in handles) h.Dispose(); }
        return cache;
    }

    /// <summary>Mean of <paramref name="x"/> [B,T,...] over positions where <paramref name="mask"/> [B,T] is 1 → [B,...] (float32).</summary>
    public static Tensor MeanOverReal(Tensor x, Tensor? mask)
    {
        var xf = x.to(ScalarType.Float32);
        if (mask is null) return xf.mean([1]);
        var m = mask.to(ScalarType.Float32);
        var shape = new long[x.dim()];
        shape[0] = m.shape[0]; shape[1] = m.shape[1];
        for (int i = 2; i < shape.Length; i++) shape[i] = 1;
        var mw = m.reshape(shape);
        return (xf * mw).sum([1]) / m.sum([1]).clamp_min(1).reshape(new long[] { shape[0] }.Concat(shape.Skip(2)).ToArray());
    }

    /// <summary>Index of the last real position of each row of <paramref name="mask"/> [B,T] (works for left and right padding) → [B] int64.</summary>
    public static Tensor LastRealIndex(Tensor mask)
    {
        long t = mask.shape[1];
        var pos = torch.arange(1, t + 1, ScalarType.Int64, mask.device).unsqueeze(0);
        return (mask.to(ScalarType.Int64) * pos).argmax(1);
    }

    /// <summary>Activation at the last real position of each row: <paramref name="x"/> [B,T,...] → [B,...].</summary>
    public static Tensor AtLastReal(Tensor x, Tensor? mask)
    {
        if (mask is null) return x.select(1, x.shape[1] - 1);
        var idx = LastRealIndex(mask);
        var rows = torch.arange(x.shape[0], ScalarType.Int64, x.device);
        return x[rows, idx];
    }

    /// <summary>Pads token sequences into ids [B,T] and mask [B,T] (int64); left padding by default (as for generation).</summary>
    public static (Tensor Ids, Tensor Mask) Pad(IReadOnlyList<int[]> sequences, int padId, Device device, bool left = true)
    {
        int b = sequences.Count, t = sequences.Max(s => s.Length);
        var ids = new long[b * t];
        var mask = new long[b * t];
        for (int i = 0; i < b; i++)
        {
            var s = sequences[i];
            int off = left ? t - s.Length : 0;
            for (int j = 0; j < t; j++) ids[i * t + j] = padId;
            for (int j = 0; j < s.Length; j++) { ids[i * t + off + j] = s[j]; mask[i * t + off + j] = 1; }
        }
        return (torch.tensor(ids, [b, t], ScalarType.Int64, device), torch.tensor(mask, [b, t], ScalarType.Int64, device));
    }

    /// <inheritdoc/>
    public void Dispose()
    {
        foreach (var t in _acts.Values) t.Dispose();
        _acts.Clear();
        Logits?.Dispose();
        Mask.Dispose();
    }
}

using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Models;

/// <summary>
/// Keys and values of past positions, per layer, preallocated to a capacity so that a generation step writes
/// in place instead of concatenating. The tensors live outside any dispose scope; dispose the cache to free them.
/// </summary>
/// <remarks>
/// Two optional modes serve gradient-based decoding (PPLM), family-neutrally — they act on the stored
/// [batch, kv_heads, positions, head_dim] tensors whatever the attention computes from them:
/// <list type="bullet">
/// <item><b>Offsets</b> (<see cref="SetOffsets"/>): differentiable deltas added to the stored positions in the views
/// <see cref="Append"/> returns. The views are then built by concatenation, <c>cat(stored + offset, new)</c>, so
/// gradients reach both the offsets and the new positions' own keys/values (which depend on the offsets through the
/// earlier layers). <see cref="ApplyOffsets"/> folds them into the stored tensors.</item>
/// <item><b>Frozen</b>: a forward pass reads the cache but stores nothing — the new positions are visible to that
/// pass only, <see cref="Length"/> stays, and the returned views are concatenations (differentiable).</item>
/// </list>
/// With neither mode the cache behaves as before (copy under no_grad into the buffers, views over them).
/// </remarks>
public sealed class KvCache : IDisposable
{
    readonly Tensor?[] _k, _v;
    Tensor[]? _dk, _dv;
    /// <summary>Positions the cache can hold.</summary>
    public int Capacity { get; }
    /// <summary>Number of positions already stored.</summary>
    public int Length { get; private set; }
    /// <summary>Number of layers cached.</summary>
    public int Layers => _k.Length;

    /// <summary>When true, forward passes read the cache but neither store their keys/values nor advance it.</summary>
    public bool Frozen { get; set; }

    /// <summary>An empty cache.</summary>
    /// <param name="layers">Number of layers.</param>
    /// <param name="capacity">Positions it can hold.</param>
    public KvCache(int layers, int capacity)
    {
        _k = new Tensor?[layers];
        _v = new Tensor?[layers];
        Capacity = capacity;
    }

    /// <summary>The stored keys of a layer, [batch, kv_heads, Length, head_dim] (a view; null before the first pass).</summary>
    public Tensor? Keys(int layer) => _k[layer]?.narrow(2, 0, Length);

    /// <summary>The stored values of a layer, [batch, kv_heads, Length, head_dim] (a view; null before the first pass).</summary>
    public Tensor? Values(int layer) => _v[layer]?.narrow(2, 0, Length);

    /// <summary>
    /// Adds <paramref name="keyOffsets"/>[l] / <paramref name="valueOffsets"/>[l] (each shaped like <see cref="Keys"/>(l):
    /// [batch, kv_heads, Length, head_dim]) to the stored positions in every view returned until <see cref="ClearOffsets"/>.
    /// The tensors are used as given (not copied, not detached); the caller owns them.
    /// </summary>
    public void SetOffsets(IReadOnlyList<Tensor> keyOffsets, IReadOnlyList<Tensor> valueOffsets)
    {
        if (keyOffsets.Count != Layers || valueOffsets.Count != Layers)
            throw new ArgumentException($"offsets for {keyOffsets.Count}/{valueOffsets.Count} layers, cache has {Layers}");
        for (int l = 0; l < Layers; l++)
        {
            var k = Keys(l) ?? throw new InvalidOperationException("offsets need stored positions (run a forward pass first)");
            if (!keyOffsets[l].shape.SequenceEqual(k.shape) || !valueOffsets[l].shape.SequenceEqual(Values(l)!.shape))
                throw new ArgumentException($"layer {l}: offsets [{string.Join(",", keyOffsets[l].shape)}] / [{string.Join(",", valueOffsets[l].shape)}] do not match the stored [{string.Join(",", k.shape)}]");
        }
        _dk = keyOffsets.ToArray();
        _dv = valueOffsets.ToArray();
    }

    /// <summary>Removes the offsets <see cref="SetOffsets"/> set.</summary>
    public void ClearOffsets() { _dk = null; _dv = null; }

    /// <summary>Whether offsets are set.</summary>
    public bool HasOffsets => _dk is not null;

    /// <summary>Adds the current offsets into the stored keys/values (in place, no gradient) and clears them.</summary>
    public void ApplyOffsets()
    {
        if (_dk is null) return;
        using (torch.no_grad())
            for (int l = 0; l < Layers; l++)
            {
                Keys(l)!.add_(_dk[l]);
                Values(l)!.add_(_dv![l]);
            }
        ClearOffsets();
    }

    /// <summary>Stores k, v ([batch, heads, T, head_dim]) of layer <paramref name="layer"/> at positions Length..Length+T-1
    /// and returns views over all positions so far (with <see cref="Frozen"/>: returns them without storing).</summary>
    public (Tensor k, Tensor v) Append(int layer, Tensor k, Tensor v)
    {
        long t = k.shape[2];
        if (Frozen || _dk is not null)
        {
            if (_dk is not null && Length > 0 && _dk[layer].shape[2] != Length)
                throw new InvalidOperationException($"offsets cover {_dk[layer].shape[2]} positions, the cache holds {Length}");
            if (!Frozen) Store(layer, k, v, t);
            if (Length == 0 || _k[layer] is null) return (k, v);
            Tensor pk = _k[layer]!.narrow(2, 0, Length), pv = _v[layer]!.narrow(2, 0, Length);
            if (_dk is not null) { pk = pk + _dk[layer]; pv = pv + _dv![layer]; }
            return (torch.cat([pk, k], 2), torch.cat([pv, v], 2));
        }
        Store(layer, k, v, t);
        return (_k[layer]!.narrow(2, 0, Length + t), _v[layer]!.narrow(2, 0, Length + t));
    }

    void Store(int layer, Tensor k, Tensor v, long t)
    {
        if (Length + t > Capacity)
            throw new InvalidOperationException($"KV cache capacity {Capacity} exceeded (have {Length}, adding {t})");
        if (_k[layer] is null)
        {
            var shape = new long[] { k.shape[0], k.shape[1], Capacity, k.shape[3] };
            _k[layer] = torch.empty(shape, k.dtype, k.device).DetachFromDisposeScope();
            _v[layer] = torch.empty(shape, v.dtype, v.device).DetachFromDisposeScope();
        }
        using (torch.no_grad())
        {
            // slices held in variables: an in-place op on an unreferenced temporary can have its handle freed by
            // the finalizer mid-call (docs/ARCHITECTURE.md "Tensor lifetimes")
            using var ks = _k[layer]!.narrow(2, Length, t);
            using var vs = _v[layer]!.narrow(2, Length, t);
            ks.copy_(k);
            vs.copy_(v);
        }
    }

    /// <summary>Called by the model after all layers of one forward pass have appended (a no-op while <see cref="Frozen"/>).</summary>
    public void Advance(int t)
    {
        if (!Frozen) Length += t;
    }

    /// <summary>Frees the cached tensors.</summary>
    public void Dispose()
    {
        foreach (var t in _k) t?.Dispose();
        foreach (var t in _v) t?.Dispose();
        Array.Clear(_k);
        Array.Clear(_v);
        ClearOffsets();
    }
}

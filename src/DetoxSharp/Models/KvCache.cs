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
/// <para>A third kind, <see cref="Retaining"/>, serves training on prompts shared by several completions (DPO's chosen
/// and rejected): it keeps the keys/values as the forward pass made them — no copy, still in the autograd graph — so a
/// later pass over the completions attends to them and its gradients flow back into the prompt's pass.
/// <see cref="SelectRows"/> then maps each completion row to its prompt's row.</para>
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

    /// <summary>Whether this cache keeps the keys/values themselves (<see cref="Retaining"/>) instead of copies.</summary>
    public bool IsRetaining { get; private init; }

    // caches that follow this one's row selection (a patched model's source cache)
    readonly List<KvCache> _followers = [];

    /// <summary>A cache that keeps every pass's keys and values as the tensors the pass computed: not copied, not
    /// detached, so gradients flow from a later pass that reads them back into the pass that made them. Each pass
    /// appends (by concatenation) and advances; there is no capacity. The tensors belong to the caller's dispose
    /// scope; <see cref="Dispose"/> only forgets them.</summary>
    /// <param name="layers">Number of layers.</param>
    public static KvCache Retaining(int layers) => new(layers, int.MaxValue) { IsRetaining = true };

    /// <summary>A new empty cache of the same kind (<see cref="Retaining"/> or buffered) for a model of
    /// <paramref name="layers"/> layers; a retaining one follows this cache's <see cref="SelectRows"/>.</summary>
    public KvCache NewLinked(int layers, int capacity)
    {
        if (!IsRetaining) return new KvCache(layers, capacity);
        var c = Retaining(layers);
        _followers.Add(c);
        return c;
    }

    /// <summary>Retaining caches only: replaces the stored rows by <paramref name="rows"/> (int64 indices into the
    /// batch), so that row r of the next pass attends to the stored row rows[r] — e.g. a prompt's keys and values
    /// shared by its chosen and rejected completion. Differentiable (index_select).</summary>
    public void SelectRows(Tensor rows)
    {
        if (!IsRetaining) throw new InvalidOperationException("SelectRows needs a retaining cache (KvCache.Retaining)");
        for (int l = 0; l < Layers; l++)
        {
            if (_k[l] is null) continue;
            _k[l] = _k[l]!.index_select(0, rows);
            _v[l] = _v[l]!.index_select(0, rows);
        }
        foreach (var f in _followers) f.SelectRows(rows);
    }

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
        if (IsRetaining)
        {
            if (_dk is not null) throw new InvalidOperationException("offsets are not supported on a retaining cache");
            var (pk, pv) = Length == 0 || _k[layer] is null ? (k, v) : (torch.cat([_k[layer]!, k], 2), torch.cat([_v[layer]!, v], 2));
            if (!Frozen) { _k[layer] = pk; _v[layer] = pv; }
            return (pk, pv);
        }
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
        if (!IsRetaining)
        {
            foreach (var t in _k) t?.Dispose();
            foreach (var t in _v) t?.Dispose();
        }
        _followers.Clear();
        Array.Clear(_k);
        Array.Clear(_v);
        ClearOffsets();
    }
}

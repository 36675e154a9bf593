using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Models;

/// <summary>
/// Keys and values of past positions, per layer, preallocated to a capacity so that a generation step writes
/// in place instead of concatenating. The tensors live outside any dispose scope; dispose the cache to free them.
/// </summary>
public sealed class KvCache : IDisposable
{
    readonly Tensor?[] _k, _v;
    public int Capacity { get; }
    /// <summary>Number of positions already stored.</summary>
    public int Length { get; private set; }

    public KvCache(int layers, int capacity)
    {
        _k = new Tensor?[layers];
        _v = new Tensor?[layers];
        Capacity = capacity;
    }

    /// <summary>Stores k, v ([batch, heads, T, head_dim]) of layer <paramref name="layer"/> at positions Length..Length+T-1
    /// and returns views over all positions so far.</summary>
    public (Tensor k, Tensor v) Append(int layer, Tensor k, Tensor v)
    {
        long t = k.shape[2];
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
            _k[layer]!.narrow(2, Length, t).copy_(k);
            _v[layer]!.narrow(2, Length, t).copy_(v);
        }
        return (_k[layer]!.narrow(2, 0, Length + t), _v[layer]!.narrow(2, 0, Length + t));
    }

    /// <summary>Called by the model after all layers of one forward pass have appended.</summary>
    public void Advance(int t) => Length += t;

    public void Dispose()
    {
        foreach (var t in _k) t?.Dispose();
        foreach (var t in _v) t?.Dispose();
        Array.Clear(_k);
        Array.Clear(_v);
    }
}

using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Models;

/// <summary>
/// The CPU seam for attention. libtorch 2.10's CPU <c>scaled_dot_product_attention</c> backward is 4–6× slower in
/// bfloat16 than in float32 at the toy model's shapes (bench <c>--toy-ops</c>: 32×4×96×64, 90–120 ms vs ≈ 20 ms), so
/// bf16 queries, keys and values on the CPU are attended in float32 and the result is cast back: the casts are a few
/// MB, the fp32 kernel is the fast one, and the softmax is more accurate than bf16's. Other dtypes and devices call
/// the kernel as they are. Model classes call <see cref="Sdpa"/> and know nothing of this.
/// </summary>
public static class CpuAttention
{
    /// <summary>Whether bf16 CPU attention is computed in float32 (default on). The benchmark turns it off to time the
    /// plain bf16 kernel side by side.</summary>
    public static bool Bf16InFloat32 { get; set; } = true;

    /// <summary>Scaled dot-product attention (no dropout), bf16 on the CPU computed in float32.</summary>
    /// <param name="q">Queries [batch, heads, T, head_dim].</param>
    /// <param name="k">Keys [batch, heads, K, head_dim].</param>
    /// <param name="v">Values [batch, heads, K, head_dim].</param>
    /// <param name="mask">Boolean mask (true = attend) broadcastable to [batch, heads, T, K], or null.</param>
    /// <param name="causal">Apply a causal mask (with no <paramref name="mask"/>).</param>
    public static Tensor Sdpa(Tensor q, Tensor k, Tensor v, Tensor? mask, bool causal)
    {
        if (!Bf16InFloat32 || q.dtype != ScalarType.BFloat16 || q.device_type != DeviceType.CPU)
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, mask, 0.0, causal);
        using var scope = torch.NewDisposeScope();
        var y = torch.nn.functional.scaled_dot_product_attention(q.to(ScalarType.Float32), k.to(ScalarType.Float32), v.to(ScalarType.Float32), mask, 0.0, causal);
        return y.to(ScalarType.BFloat16).MoveToOuterDisposeScope();
    }
}

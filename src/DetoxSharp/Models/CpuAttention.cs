using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Models;

/// <summary>
/// The CPU seam for attention. libtorch 2.10's CPU <c>scaled_dot_product_attention</c> backward is 4–6× slower in
/// bfloat16 than in float32 at the toy model's shapes (bench <c>--toy-ops</c>: 32×4×96×64, 90–120 ms vs ≈ 20 ms), and
/// its flash kernel cuts short sequences into per-block matrix products too small to run fast. So bf16 queries, keys and
/// values on the CPU take one of two paths:
/// <list type="bullet">
/// <item><b>short sequences</b> (more than one query, at most <see cref="MathMaxKeys"/> keys): the math path — scores
/// q·kᵀ as one batched bf16 product, scaled, masked and soft-maxed in float32, probabilities cast to bf16 and multiplied
/// with v — the numerics of mixed-precision autocast (bf16 products, fp32 softmax) and of Hugging Face's eager attention
/// under it. Forward + backward per call (bench <c>--attn-shapes</c>, this project's Zen 4, 1 / 2 threads): 15.4 / 12.5
/// ms against the fp32 kernel's 20.5 / 17.6 at the toy's 32×4×96×96, 7.6 / 5.0 against 11.3 / 9.1 at 4×12×128×128.
/// With an explicit mask (padding, or the prompt-and-completions layouts of shared-prompt scoring) up to
/// <see cref="MathMaxMaskedKeys"/> keys: the kernel cannot skip masked blocks then, and the math path stays ahead
/// (4×16×192×192: 31.2 / 17.1 ms against 32.5 / 23.6; 4×16×256×256: 39.8 / 29.3 against 62.9 / 34.3);</item>
/// <item><b>otherwise</b> — one query (a decoding step; the math path's extra ops cost more than they save) or longer
/// sequences (causal from 256 keys, masked from 384, the fp32 kernel wins, and the math path's T×K score matrices cost
/// memory): attended in
/// float32 by the kernel and cast back (the casts are a few MB, the fp32 kernel is the fast one).</item>
/// </list>
/// Other dtypes and devices call the kernel as they are. Model classes call <see cref="Sdpa"/> and know nothing of this.
/// </summary>
public static class CpuAttention
{
    /// <summary>Whether bf16 CPU attention avoids libtorch's bf16 kernel (default on): the math path for short sequences,
    /// the fp32 kernel for longer ones. The benchmark turns it off to time the plain bf16 kernel side by side.</summary>
    public static bool Bf16InFloat32 { get; set; } = true;

    /// <summary>The most keys a bf16 CPU call attends to on the math path (128) when it has no explicit mask.</summary>
    public const int MathMaxKeys = 128;

    /// <summary>The most keys a bf16 CPU call with an explicit mask attends to on the math path (256).</summary>
    public const int MathMaxMaskedKeys = 256;

    /// <summary>Scaled dot-product attention (no dropout); bf16 on the CPU as described on <see cref="CpuAttention"/>.</summary>
    /// <param name="q">Queries [batch, heads, T, head_dim].</param>
    /// <param name="k">Keys [batch, heads, K, head_dim].</param>
    /// <param name="v">Values [batch, heads, K, head_dim].</param>
    /// <param name="mask">Boolean mask (true = attend) broadcastable to [batch, heads, T, K], or null.</param>
    /// <param name="causal">Apply a causal mask (with no <paramref name="mask"/>; query i sees keys 0..i, as libtorch's).</param>
    public static Tensor Sdpa(Tensor q, Tensor k, Tensor v, Tensor? mask, bool causal)
    {
        if (!Bf16InFloat32 || q.dtype != ScalarType.BFloat16 || q.device_type != DeviceType.CPU)
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, mask, 0.0, causal);
        using var scope = torch.NewDisposeScope();
        var y = q.shape[2] > 1 && k.shape[2] <= (mask is null ? MathMaxKeys : MathMaxMaskedKeys) ? MathPath(q, k, v, mask, causal) : Float32Kernel(q, k, v, mask, causal);
        return y.MoveToOuterDisposeScope();
    }

    /// <summary>libtorch's kernel on the inputs cast to float32, the result cast back to their dtype.</summary>
    internal static Tensor Float32Kernel(Tensor q, Tensor k, Tensor v, Tensor? mask, bool causal) =>
        torch.nn.functional.scaled_dot_product_attention(q.to(ScalarType.Float32), k.to(ScalarType.Float32), v.to(ScalarType.Float32), mask, 0.0, causal).to(q.dtype);

    /// <summary>softmax(q·kᵀ/√d, masked) · v with bf16 products and the scale, mask and softmax in float32.</summary>
    internal static Tensor MathPath(Tensor q, Tensor k, Tensor v, Tensor? mask, bool causal)
    {
        long t = q.shape[2], kLen = k.shape[2];
        var s = torch.matmul(q, k.transpose(-2, -1)).to(ScalarType.Float32).mul_(1.0 / Math.Sqrt(q.shape[3]));
        Tensor? hide = null;
        if (mask is not null) hide = mask.logical_not();
        else if (causal) hide = torch.ones(t, kLen, ScalarType.Bool, q.device).triu(1);
        if (hide is not null) s = s.masked_fill(hide, float.NegativeInfinity);
        return torch.matmul(s.softmax(-1).to(q.dtype), v);
    }
}

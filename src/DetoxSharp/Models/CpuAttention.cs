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
/// under it. Forward + backward per call (bench <c>--attn-shapes</c>, this project's Zen 4, 1 / 2 threads, twenty-third
/// session): 12.3 / 8.5 ms against the fp32 kernel's 20.4 / 15.9 at the toy's 32×4×96×96, 6.9 / 5.1 against 12.2 / 8.4
/// at 4×12×128×128.
/// With an explicit mask (padding, or the prompt-and-completions layouts of shared-prompt scoring) up to
/// <see cref="MathMaxMaskedKeys"/> keys: the kernel cannot skip masked blocks then, and the math path stays ahead
/// (4×16×192×192: 22.2 / 13.7 ms against 32.6 / 21.2; 4×16×256×256: 38.0 / 20.6 against 54.2 / 31.3);</item>
/// <item><b>otherwise</b> — one query (a decoding step; the math path's extra ops cost more than they save) or longer
/// sequences (the math path's T×K score matrices cost memory, and at 1,024 keys the kernel is faster: 130 / 81 ms against
/// 103 / 59 at 1×12×1024×1024; the thresholds were set when the math path was slower, and since the bias add it ties
/// the kernel at 4×12×256×256 causal and beats it at 2×12×512×512 and at 384 masked keys — not retuned): attended in
/// float32 by the kernel and cast back (the casts are a few MB).</item>
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

    /// <summary>softmax(q·kᵀ/√d, masked) · v with bf16 products and the scale, mask and softmax in float32. The scale and
    /// the mask are one op: an additive float32 bias (0 where a key is seen, −∞ where it is hidden) plus the bf16 scores
    /// times the scale — libtorch's add computes bias + scale·score as one fused multiply-add, which equals rounding
    /// scale·score and adding 0 or −∞, so the values are those of scaling and then filling hidden keys with −∞, bit for bit,
    /// in one pass over the [batch, heads, T, K] scores instead of a cast, a scale and a fill (bench <c>--attn-parts</c>:
    /// the toy's attention forward + backward 10.5 → 8.8 ms at 2 threads, 17.4 → 14.0 at 1).
    /// The causal bias is a view of one cached [256, 256] matrix; a mask's bias is built per call at the mask's own shape
    /// (one per batch row, not per head).</summary>
    internal static Tensor MathPath(Tensor q, Tensor k, Tensor v, Tensor? mask, bool causal)
    {
        // the models pass q, k and v as strided views of their projection's output; the batched products would copy them
        // anyway (forward and backward), one explicit copy each is cheaper
        (q, k, v) = (q.contiguous(), k.contiguous(), v.contiguous());
        long t = q.shape[2], kLen = k.shape[2];
        double scale = 1.0 / Math.Sqrt(q.shape[3]);
        var scores = torch.matmul(q, k.transpose(-2, -1));
        var bias = mask is not null ? MaskBias(mask) : causal ? CausalBias(t, kLen, q.device) : null;
        var s = bias is null ? scores.to(ScalarType.Float32).mul_(scale) : bias.add(scores, scale);
        return torch.matmul(s.softmax(-1).to(q.dtype), v);
    }

    /// <summary>The side of <see cref="CachedCausalBias"/>.</summary>
    const int CachedBiasSide = MathMaxMaskedKeys;

    /// <summary>[256, 256] float32, −∞ above the diagonal (query i sees keys 0..i, as libtorch's causal flag), 0 elsewhere;
    /// created once, outside any dispose scope and never an inference tensor (a first call under inference mode must not
    /// make it one: later autograd calls could not use it).</summary>
    static readonly Lazy<Tensor> CachedCausalBias = new(() =>
    {
        using var scope = torch.NewDisposeScope();
        using var normal = torch.inference_mode(false);
        return NewCausalBias(CachedBiasSide, CachedBiasSide, torch.CPU).DetachFromDisposeScope();
    });

    /// <summary>The causal bias for <paramref name="t"/> queries and <paramref name="kLen"/> keys (top-left aligned): a
    /// view of the cached one when it is large enough.</summary>
    static Tensor CausalBias(long t, long kLen, Device device) =>
        device.type == DeviceType.CPU && t <= CachedBiasSide && kLen <= CachedBiasSide
            ? CachedCausalBias.Value.narrow(0, 0, t).narrow(1, 0, kLen)
            : NewCausalBias(t, kLen, device);

    static Tensor NewCausalBias(long t, long kLen, Device device)
    {
        using var hide = torch.ones(t, kLen, ScalarType.Bool, device).triu(1);
        return BiasOf(hide);
    }

    /// <summary>The bias of a boolean mask (true = attend), at the mask's shape.</summary>
    static Tensor MaskBias(Tensor mask)
    {
        using var hide = mask.logical_not();
        return BiasOf(hide);
    }

    /// <summary>float32 at <paramref name="hide"/>'s shape: −∞ where it is true, 0 elsewhere.</summary>
    static Tensor BiasOf(Tensor hide)
    {
        var bias = torch.zeros(hide.shape, ScalarType.Float32, hide.device);
        bias.masked_fill_(hide, float.NegativeInfinity);
        return bias;
    }
}

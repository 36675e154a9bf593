using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using TorchSharp;
using static TorchSharp.torch;
using static DetoxSharp.Models.Bf16Simd;

namespace DetoxSharp.Models;

/// <summary>
/// The softmax of <see cref="CpuAttention.MathPath"/> for bfloat16 scores on the CPU — <c>softmax(scale·scores, causally
/// masked or not)</c> in float32, rounded to bfloat16 — as one C# pass a row, forward and backward. libtorch's ops for
/// it were three: the scale-and-mask add into a float32 [batch, heads, T, K] tensor, the float32 softmax, the cast to
/// bfloat16; and in the backward the cast's, the softmax's and the add's (a multiply by the scale and a cast).
/// </summary>
/// <remarks>
/// <para>Float32 arithmetic as libtorch's: the scaled score is scale·s rounded to float32 (what the bias add computes), the
/// row's max is subtracted before e^x (a Cephes-style polynomial, ≈ 1 ulp; libtorch's is a different ≈ 1-ulp one), the terms
/// are multiplied by 1/Σ, and the float32 probabilities are kept for the backward, which computes
/// bf16(scale·y·(g − Σ g·y)) — libtorch's softmax backward followed by the add's multiply and the cast. So values agree
/// with libtorch's ops to float32 rounding and one bfloat16 unit after the rounding (CpuAttentionSoftmaxTests). A row
/// with a NaN, a +∞ score, or no finite visible score comes out NaN (forward and backward), as libtorch's does.</para>
/// <para>Hidden keys (causal: key j &gt; query i, top-left aligned as libtorch's <c>is_causal</c>) get probability 0 and are
/// not exponentiated; the backward runs over whole rows, as libtorch's (a hidden key's gradient is 0 unless the incoming
/// gradient there is not finite). Rows run on the calling thread and, when libtorch has more threads, split over .NET's
/// thread pool.</para>
/// </remarks>
public static unsafe class CpuAttentionSoftmax
{
    /// <summary>Whether <see cref="CpuAttention.MathPath"/> uses this kernel for bfloat16 scores (default: on where
    /// <see cref="Bf16Simd.Supported"/>).</summary>
    public static bool Enabled { get; set; } = true;

    /// <summary>Whether <see cref="Probabilities"/> takes these scores: contiguous bfloat16 on the CPU, on a CPU with AVX2
    /// and FMA, and <see cref="Enabled"/>.</summary>
    public static bool Applies(Tensor scores) => Enabled && Fits(scores) && scores.numel() > 0;

    static bool Fits(Tensor s) =>
        Bf16Simd.Supported && s.dtype == ScalarType.BFloat16 && s.device_type == DeviceType.CPU && s.dim() >= 2 && s.is_contiguous();

    /// <summary>softmax(scale·scores) over the last dimension in float32, rounded to bfloat16, over the keys each row may
    /// see: those where <paramref name="mask"/> is true, or with <paramref name="causal"/> keys 0..i for query i (the
    /// second-to-last index), or all. Differentiable with respect to the scores when they require a gradient and autograd
    /// is on.</summary>
    /// <param name="scores">bfloat16 [..., T, K], contiguous, on the CPU.</param>
    /// <param name="scale">The factor applied to every score (1/√head_dim in attention); positive.</param>
    /// <param name="mask">Boolean (true = attend), broadcastable to the scores' shape, or null.</param>
    /// <param name="causal">Without a mask: hide key j from query i when j &gt; i.</param>
    /// <exception cref="ArgumentException">Another dtype, device or layout, a CPU without AVX2 and FMA, a mask that is not
    /// boolean or not broadcastable, or a scale that is not a positive finite number.</exception>
    public static Tensor Probabilities(Tensor scores, double scale, Tensor? mask, bool causal)
    {
        if (!Fits(scores))
            throw new ArgumentException($"CpuAttentionSoftmax.Probabilities needs contiguous bfloat16 CPU scores [..., T, K] on a CPU with AVX2 and FMA (got {scores.dtype} [{string.Join(", ", scores.shape)}] on {scores.device}{(scores.is_contiguous() ? "" : ", not contiguous")}; supported here: {Bf16Simd.Supported})", nameof(scores));
        if (!(scale > 0 && double.IsFinite(scale)))
            throw new ArgumentException($"the scale must be a positive finite number (got {scale})", nameof(scale));
        using var allow = mask is null ? null : Allowed(mask, scores);
        if (scores.requires_grad && torch.is_grad_enabled())
            return Node.apply(scores, scale, allow!, causal);
        var p = torch.empty_like(scores);
        Forward(scores, (float)scale, allow, causal, p, null);
        return p;
    }

    // the mask expanded to the scores' shape (a view: broadcast dimensions have stride 0), its last dimension contiguous
    static Tensor Allowed(Tensor mask, Tensor scores)
    {
        if (mask.dtype != ScalarType.Bool || mask.device_type != DeviceType.CPU || mask.dim() > scores.dim())
            throw new ArgumentException($"the mask must be a boolean CPU tensor broadcastable to the scores' [{string.Join(", ", scores.shape)}] (got {mask.dtype} [{string.Join(", ", mask.shape)}] on {mask.device})", nameof(mask));
        for (int d = 1; d <= mask.dim(); d++)
            if (mask.shape[^d] != 1 && mask.shape[^d] != scores.shape[^d])
                throw new ArgumentException($"the mask [{string.Join(", ", mask.shape)}] does not broadcast to the scores' [{string.Join(", ", scores.shape)}]", nameof(mask));
        var e = mask.expand(scores.shape);
        return e.stride(-1) == 1 ? e : e.contiguous();
    }

    // p = bf16(y), y = softmax over the visible keys of each row (0 at hidden keys); y kept when given
    static void Forward(Tensor scores, float scale, Tensor? allow, bool causal, Tensor p, Tensor? y)
    {
        long k = scores.shape[^1], t = scores.shape[^2], rows = scores.numel() / k;
        nint ps = (nint)TensorAddress.Of(scores), pp = (nint)TensorAddress.Of(p), py = y is null ? 0 : (nint)TensorAddress.Of(y);
        nint pa = allow is null ? 0 : (nint)TensorAddress.Of(allow);
        // the mask row of score row r: its leading indices (all but the last) times the expanded mask's strides
        long[] shape = scores.shape, strides = allow?.stride() ?? [];
        OmpParallel.For(rows, MinRowsPerThread(k), 1, (from, to) =>
        {
            float* scratch = stackalloc float[py == 0 ? (int)Math.Min(k, 4096) : 0];
            using var heap = py == 0 && k > 4096 ? new NativeRow(k) : default;
            for (long r = from; r < to; r++)
            {
                long visible = causal && pa == 0 ? Math.Min(r % t + 1, k) : k;
                byte* ar = pa == 0 ? null : (byte*)pa + MaskOffset(r, shape, strides);
                float* yr = py != 0 ? (float*)py + r * k : k <= 4096 ? scratch : heap.Pointer;
                ForwardRow((ushort*)ps + r * k, k, visible, ar, scale, yr, (ushort*)pp + r * k);
            }
        });
    }

    static long MaskOffset(long row, long[] shape, long[] strides)
    {
        long offset = 0;
        for (int d = shape.Length - 2; d >= 0; d--)
        {
            offset += row % shape[d] * strides[d];
            row /= shape[d];
        }
        return offset;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void ForwardRow(ushort* s, long k, long visible, byte* allow, float scale, float* y, ushort* p)
    {
        var sc = Vector256.Create(scale);
        var ninf = Vector256.Create(float.NegativeInfinity);
        var mv = ninf;
        var bad = Vector256<float>.Zero;
        var inf = Vector256.Create(float.PositiveInfinity);
        long j = 0;
        // the scaled visible scores into y (−∞ where the mask hides a key), their max, and whether any score of the row is
        // NaN or +∞
        for (; j + 8 <= visible; j += 8)
        {
            var a = Avx.Multiply(Load(s + j), sc);
            bad = Avx.Or(bad, Avx.Or(Avx.CompareUnordered(a, a), Avx.CompareEqual(a, inf)));
            if (allow != null)
                a = Avx.BlendVariable(ninf, a, Avx.CompareNotEqual(Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(allow + j)), Vector256<float>.Zero));
            a.Store(y + j);
            mv = Avx.Max(mv, a);
        }
        float m = float.NegativeInfinity;
        for (int l = 0; l < 8; l++) m = MathF.Max(m, mv.GetElement(l));
        bool nonFinite = Avx.MoveMask(bad) != 0;
        for (; j < visible; j++)
        {
            float a = ToFloat(s[j]) * scale;
            nonFinite |= float.IsNaN(a) || a == float.PositiveInfinity;
            if (allow != null && allow[j] == 0) a = float.NegativeInfinity;
            y[j] = a;
            m = MathF.Max(m, a);
        }
        // hidden keys: only whether they hold a NaN or +∞ (libtorch's −∞ bias plus either is NaN)
        for (; j < k; j++)
        {
            float a = ToFloat(s[j]);
            nonFinite |= float.IsNaN(a) || a == float.PositiveInfinity;
        }
        if (nonFinite || !float.IsFinite(m))
        {
            for (j = 0; j < k; j++) { y[j] = float.NaN; p[j] = 0x7FC0; }
            return;
        }
        var mb = Vector256.Create(m);
        var low = Vector256.Create(-87.3f);
        Vector256<float> s0 = Vector256<float>.Zero;
        for (j = 0; j + 8 <= visible; j += 8)
        {
            var d = Avx.Subtract(Avx.LoadVector256(y + j), mb);
            var e = Avx.And(Exp(d), Avx.CompareGreaterThanOrEqual(d, low)); // Exp clamps: a −∞ score's term must be 0
            e.Store(y + j);
            s0 = Avx.Add(s0, e);
        }
        float sum = 0;
        for (int l = 0; l < 8; l++) sum += s0.GetElement(l);
        for (; j < visible; j++)
        {
            float e = MathF.Exp(y[j] - m); // 0 for a hidden key
            y[j] = e;
            sum += e;
        }
        float inv = 1f / sum;
        var ib = Vector256.Create(inv);
        for (j = 0; j + 8 <= visible; j += 8) Avx.Multiply(Avx.LoadVector256(y + j), ib).Store(y + j);
        for (; j < visible; j++) y[j] *= inv;
        for (; j < k; j++) y[j] = 0f;
        for (j = 0; j + 16 <= k; j += 16) Store(p + j, Avx.LoadVector256(y + j), Avx.LoadVector256(y + j + 8));
        for (; j < k; j++) p[j] = ToBf16(y[j]);
    }

    // ds = bf16(scale·y·(g − Σ g·y)) over whole rows
    static Tensor Backward(Tensor y, float scale, Tensor grad)
    {
        using var g = grad.contiguous();
        long k = y.shape[^1], rows = y.numel() / k;
        var result = torch.empty(y.shape, ScalarType.BFloat16);
        nint py = (nint)TensorAddress.Of(y), pg = (nint)TensorAddress.Of(g), pr = (nint)TensorAddress.Of(result);
        if (g.dtype != ScalarType.BFloat16) throw new InvalidOperationException($"expected a bfloat16 gradient (got {g.dtype})");
        OmpParallel.For(rows, MinRowsPerThread(k), 1, (from, to) =>
        {
            for (long r = from; r < to; r++)
                BackwardRow((float*)py + r * k, (ushort*)pg + r * k, k, scale, (ushort*)pr + r * k);
        });
        return result;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void BackwardRow(float* y, ushort* g, long k, float scale, ushort* ds)
    {
        long j = 0;
        Vector256<float> d0 = Vector256<float>.Zero;
        for (; j + 8 <= k; j += 8) d0 = Fma.MultiplyAdd(Load(g + j), Avx.LoadVector256(y + j), d0);
        float dot = 0;
        for (int l = 0; l < 8; l++) dot += d0.GetElement(l);
        for (; j < k; j++) dot += ToFloat(g[j]) * y[j];
        var db = Vector256.Create(dot);
        var sc = Vector256.Create(scale);
        for (j = 0; j + 16 <= k; j += 16)
        {
            var a = Avx.Multiply(Avx.Multiply(Avx.LoadVector256(y + j), Avx.Subtract(Load(g + j), db)), sc);
            var b = Avx.Multiply(Avx.Multiply(Avx.LoadVector256(y + j + 8), Avx.Subtract(Load(g + j + 8), db)), sc);
            Store(ds + j, a, b);
        }
        for (; j < k; j++) ds[j] = ToBf16(y[j] * (ToFloat(g[j]) - dot) * scale);
    }

    // rows of K values worth a thread of their own (≈ 16K values)
    static long MinRowsPerThread(long k) => Math.Max(1, (1L << 14) / Math.Max(1, k));

    // a float row on the native heap for rows too long for the stack
    readonly struct NativeRow(long n) : IDisposable
    {
        public float* Pointer { get; } = (float*)System.Runtime.InteropServices.NativeMemory.Alloc((nuint)n, sizeof(float));
        public void Dispose() { if (Pointer != null) System.Runtime.InteropServices.NativeMemory.Free(Pointer); }
    }

    sealed class Node : torch.autograd.SingleTensorFunction<Node>
    {
        public override string Name => "CpuAttentionSoftmaxBackward";

        public override Tensor forward(torch.autograd.AutogradContext ctx, params object[] vars)
        {
            Tensor scores = (Tensor)vars[0];
            float scale = (float)(double)vars[1];
            var y = torch.empty(scores.shape, ScalarType.Float32);
            var p = torch.empty_like(scores);
            Forward(scores, scale, (Tensor?)vars[2], (bool)vars[3], p, y);
            ctx.save_for_backward([y]);
            ctx.save_data("scale", scale);
            return p;
        }

        public override List<Tensor> backward(torch.autograd.AutogradContext ctx, Tensor grad)
        {
            var saved = ctx.get_saved_variables();
            try { return [Backward(saved[0], (float)ctx.get_data("scale"), grad), null!, null!, null!]; }
            finally { foreach (var s in saved) s.Dispose(); }
        }
    }
}

using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using TorchSharp;
using static TorchSharp.torch;
using static DetoxSharp.Models.Bf16Simd;

namespace DetoxSharp.Models;

/// <summary>
/// log p(target | logits) for rows of bfloat16 CPU logits — <c>log_softmax(logits.float())[i, target_i]</c> — in one
/// C# pass per row, with its gradient written straight into bfloat16. libtorch's path, which training ran (SFT and
/// pretraining's NLL, DPO's sequence log-probs), casts the [N, V] logits to float32, keeps a float32 log-softmax for the
/// backward, and there scatters the gathered gradient into a float32 [N, V] zero tensor, runs log-softmax's backward and
/// casts back. Here the forward reads each row twice (its max, then e^(x − max) and their sum — the terms kept in float32
/// for the backward when a gradient is needed), and the backward writes g·(δ − e·(1/Σe)) rounded to bfloat16 in one pass.
/// </summary>
/// <remarks>
/// <para>Float32 arithmetic as libtorch's (the logits widened exactly, sums in float32, e^x by a Cephes-style
/// polynomial ≈ 1 ulp, one rounding to bfloat16), so values agree with the libtorch path to float32 rounding and
/// gradients to one bf16 unit — in CpuTokenLogProbsTests none of ≈ 58,000 differed; a 100-step toy pretraining curve
/// stays within what the thread count alone changes (docs/PERFORMANCE.md, twenty-sixth session). A NaN anywhere in a
/// row makes that row's log-prob and gradient NaN, as libtorch's does. Memory between forward and backward: the
/// float32 terms, the size libtorch's path kept (its float32 log-softmax).</para>
/// <para>Rows are split over libtorch's OpenMP threads (<see cref="OmpParallel"/>; the same bits as on one thread); used
/// by <see cref="LogProbs"/> when libtorch has at most <see cref="MaxThreads"/> threads. Float32 and float64 logits keep
/// libtorch's path.</para>
/// </remarks>
public static unsafe class CpuTokenLogProbs
{
    /// <summary>Whether bfloat16 logits use this kernel (default: on where <see cref="CpuGelu.Supported"/>).</summary>
    public static bool Enabled { get; set; } = true;

    /// <summary>Up to this many libtorch threads the kernel is used (default 2, the most this project's machine could
    /// measure): at the toy's 3,040 × 2,724 it takes ≈ 4.9 ms forward and 2.4–2.6 backward at one thread, ≈ 2.5 and 1.8 at
    /// two, against libtorch's cast + log-softmax + gather ≈ 17 ms at one thread and ≈ 11 at two (docs/PERFORMANCE.md,
    /// twenty-sixth and twenty-seventh sessions).</summary>
    public static int MaxThreads { get; set; } = 2;

    /// <summary>Whether <see cref="LogProbs"/> would take the kernel for these logits [N, V] and targets [N].</summary>
    public static bool Applies(Tensor logits, Tensor targets) =>
        Enabled && Fits(logits, targets) && logits.numel() > 0 && torch.get_num_threads() <= MaxThreads;

    static bool Fits(Tensor logits, Tensor targets) =>
        Bf16Simd.Supported && logits.dtype == ScalarType.BFloat16 && logits.device_type == DeviceType.CPU && logits.dim() == 2
        && logits.is_contiguous() && targets.dtype == ScalarType.Int64 && targets.device_type == DeviceType.CPU
        && targets.dim() == 1 && targets.shape[0] == logits.shape[0];

    /// <summary>log_softmax(logits.float(), −1)[i, targets[i]] as float32 [N]; differentiable with respect to the logits
    /// when they require a gradient and autograd is on (the gradient is bfloat16, like the logits).</summary>
    /// <exception cref="ArgumentException">Logits not a contiguous bfloat16 CPU matrix, targets not int64 [N] on the
    /// CPU, or a CPU without AVX2 and FMA.</exception>
    /// <exception cref="ArgumentOutOfRangeException">A target outside [0, V).</exception>
    public static Tensor Of(Tensor logits, Tensor targets)
    {
        if (!Fits(logits, targets))
            throw new ArgumentException($"CpuTokenLogProbs.Of needs contiguous bfloat16 CPU logits [N, V] and int64 CPU targets [N] on a CPU with AVX2 and FMA (got {logits.dtype} [{string.Join(", ", logits.shape)}] on {logits.device}{(logits.is_contiguous() ? "" : ", not contiguous")}, targets {targets.dtype} [{string.Join(", ", targets.shape)}] on {targets.device}; supported here: {Bf16Simd.Supported})", nameof(logits));
        using var t = targets.contiguous();
        long v = logits.shape[1];
        var pt = (long*)TensorAddress.Of(t);
        for (long i = 0, n = t.shape[0]; i < n; i++)
            if (pt[i] < 0 || pt[i] >= v)
                throw new ArgumentOutOfRangeException(nameof(targets), $"target {pt[i]} at row {i} is outside the vocabulary [0, {v})");
        if (logits.requires_grad && torch.is_grad_enabled())
            return Node.apply(logits, t);
        return Forward(logits, t, null, null, null);
    }

    // out[i] = x[i, t_i] − lse[i], lse[i] = log Σ_j e^(x[i, j]); for the backward (when e is given): e[i, j] =
    // e^(x[i, j] − max_i) in float32, inv[i] = 1 / Σ_j e^(x[i, j] − max_i) and pt[i] = e^(out[i]) (NaN for a row whose
    // log-sum-exp is not finite, so that its gradient is NaN as libtorch's)
    static Tensor Forward(Tensor logits, Tensor targets, Tensor? e, Tensor? inv, Tensor? pt)
    {
        long n = logits.shape[0], v = logits.shape[1];
        var output = torch.empty(n, ScalarType.Float32);
        nint x = (nint)TensorAddress.Of(logits), t = (nint)TensorAddress.Of(targets), o = (nint)TensorAddress.Of(output);
        nint pe = e is null ? 0 : (nint)TensorAddress.Of(e), pinv = inv is null ? 0 : (nint)TensorAddress.Of(inv), ppt = pt is null ? 0 : (nint)TensorAddress.Of(pt);
        OmpParallel.For(n, MinRowsPerThread(v), 1, (from, to) =>
            ForwardRows((ushort*)x, (long*)t, (float*)o, (float*)pe, (float*)pinv, (float*)ppt, v, from, to));
        return output;
    }

    // rows [from, to) of Forward
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void ForwardRows(ushort* x, long* t, float* o, float* pe, float* pinv, float* ppt, long v, long from, long to)
    {
        for (long i = from; i < to; i++)
        {
            var row = x + i * v;
            float m = RowMax(row, v);
            float s = float.IsFinite(m) ? RowSumExp(row, v, m, pe is null ? null : pe + i * v) : float.NaN;
            // a NaN, a +∞ logit or only −∞ logits: every log-prob of the row is NaN, as libtorch's
            float lse = float.IsFinite(m) ? m + MathF.Log(s) : float.NaN;
            o[i] = ToFloat(row[t[i]]) - lse;
            if (pinv != null)
            {
                bool finite = float.IsFinite(lse);
                pinv[i] = finite ? 1f / s : float.NaN;
                ppt[i] = finite ? MathF.Exp(o[i]) : float.NaN;
            }
        }
    }

    // rows of V values worth a thread of their own
    static long MinRowsPerThread(long v) => Math.Max(1, OmpParallel.MinValuesPerThread / Math.Max(1, v));

    // the row's largest value, NaN if it holds a NaN
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static float RowMax(ushort* row, long v)
    {
        long j = 0;
        var mv = Vector256.Create(float.NegativeInfinity);
        var nan = Vector256<float>.Zero;
        for (; j + 8 <= v; j += 8)
        {
            var a = Load(row + j);
            mv = Avx.Max(mv, a);
            nan = Avx.Or(nan, Avx.CompareUnordered(a, a));
        }
        float m = float.NegativeInfinity;
        bool hasNan = Avx.MoveMask(nan) != 0;
        for (int k = 0; k < 8; k++) m = MathF.Max(m, mv.GetElement(k));
        for (; j < v; j++)
        {
            float a = ToFloat(row[j]);
            hasNan |= float.IsNaN(a);
            m = MathF.Max(m, a);
        }
        return hasNan ? float.NaN : m;
    }

    // Σ_j e^(x_j − m), writing each term into e when given
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static float RowSumExp(ushort* row, long v, float m, float* e)
    {
        long j = 0;
        Vector256<float> s0 = Vector256<float>.Zero, s1 = Vector256<float>.Zero, mb = Vector256.Create(m);
        for (; j + 16 <= v; j += 16)
        {
            var a = Exp(Avx.Subtract(Load(row + j), mb));
            var b = Exp(Avx.Subtract(Load(row + j + 8), mb));
            s0 = Avx.Add(s0, a);
            s1 = Avx.Add(s1, b);
            if (e != null) { a.Store(e + j); b.Store(e + j + 8); }
        }
        var sv = Avx.Add(s0, s1);
        float s = 0;
        for (int k = 0; k < 8; k++) s += sv.GetElement(k);
        for (; j < v; j++)
        {
            float a = MathF.Exp(ToFloat(row[j]) - m);
            s += a;
            if (e != null) e[j] = a;
        }
        return s;
    }

    // grad[i, j] = g_i·(δ_{j,t_i} − e[i, j]·inv[i]) rounded to bfloat16 once (at the target g_i − g_i·pt[i])
    static Tensor Backward(Tensor e, Tensor targets, Tensor inv, Tensor pt, Tensor grad)
    {
        using var g = grad.to(ScalarType.Float32).contiguous();
        long n = e.shape[0], v = e.shape[1];
        var result = torch.empty(e.shape, ScalarType.BFloat16);
        nint pe = (nint)TensorAddress.Of(e), r = (nint)TensorAddress.Of(result), t = (nint)TensorAddress.Of(targets);
        nint pinv = (nint)TensorAddress.Of(inv), ppt = (nint)TensorAddress.Of(pt), pg = (nint)TensorAddress.Of(g);
        OmpParallel.For(n, MinRowsPerThread(v), 1, (from, to) =>
            BackwardRows((float*)pe, (ushort*)r, (long*)t, (float*)pinv, (float*)ppt, (float*)pg, v, from, to));
        return result;
    }

    // rows [from, to) of Backward
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void BackwardRows(float* pe, ushort* r, long* t, float* pinv, float* ppt, float* pg, long v, long from, long to)
    {
        for (long i = from; i < to; i++)
        {
            float* row = pe + i * v;
            ushort* outRow = r + i * v;
            float gi = pg[i], c = -gi * pinv[i];
            var cb = Vector256.Create(c);
            long j = 0;
            for (; j + 16 <= v; j += 16)
                Store(outRow + j, Avx.Multiply(cb, Avx.LoadVector256(row + j)), Avx.Multiply(cb, Avx.LoadVector256(row + j + 8)));
            for (; j < v; j++)
                outRow[j] = ToBf16(c * row[j]);
            outRow[t[i]] = ToBf16(gi - gi * ppt[i]);
        }
    }

    sealed class Node : torch.autograd.SingleTensorFunction<Node>
    {
        public override string Name => "CpuTokenLogProbsBackward";

        public override Tensor forward(torch.autograd.AutogradContext ctx, params object[] vars)
        {
            Tensor logits = (Tensor)vars[0], targets = (Tensor)vars[1];
            long n = logits.shape[0];
            var e = torch.empty(logits.shape, ScalarType.Float32);
            var inv = torch.empty(n, ScalarType.Float32);
            var pt = torch.empty(n, ScalarType.Float32);
            var output = Forward(logits, targets, e, inv, pt);
            ctx.save_for_backward([e, targets, inv, pt]);
            return output;
        }

        public override List<Tensor> backward(torch.autograd.AutogradContext ctx, Tensor grad)
        {
            var saved = ctx.get_saved_variables();
            try { return [Backward(saved[0], saved[1], saved[2], saved[3], grad), null!]; }
            finally { foreach (var s in saved) s.Dispose(); }
        }
    }
}

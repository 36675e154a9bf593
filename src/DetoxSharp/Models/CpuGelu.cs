using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using TorchSharp;
using static TorchSharp.torch;
using static DetoxSharp.Models.Bf16Simd;

namespace DetoxSharp.Models;

/// <summary>
/// GPT-2's tanh-approximated GELU (<c>gelu_new</c>) on contiguous bfloat16 CPU tensors, one vectorised pass that
/// also writes the derivative for the backward pass — libtorch's bf16 kernel evaluates SLEEF's 1-ulp tanh, and its
/// forward and backward were ≈ 10 % of a toy bf16-mixed training step at one thread (perf: <c>Sleef_tanhf16_u10</c>
/// alone 7 %; docs/PERFORMANCE.md, twenty-fifth session).
/// </summary>
/// <remarks>
/// <para>The formula is the same function: 0.5·x·(1 + tanh(u)) = x·σ(2u) with u = √(2/π)·(x + 0.044715·x³), evaluated in
/// float32 (a Cephes-style exp, ≈ 1 ulp) and rounded to bfloat16 to nearest-even like libtorch's casts. Results equal
/// libtorch's bf16 GELU to one bf16 unit in the last place (the float32 values before rounding differ by a few float
/// ulps, so a value near a rounding boundary can land on the neighbour); CpuGeluTests checks value and gradient
/// against libtorch and against a float64 evaluation, and a bf16 GPT-2's loss and gradients with and without it.</para>
/// <para>Gradient without a custom autograd node: the pass writes y and dy/dx, and the result is
/// <c>addcmul(y, x − x.detach(), dy/dx)</c> — the same values (the middle factor is exactly zero) whose gradient with
/// respect to x is grad·dy/dx, one multiply in the backward pass. A custom autograd node instead (as
/// <see cref="CpuTokenLogProbs"/> has) saves those two ops, ≈ 1 ms of a toy layer's forward, but TorchSharp's node keeps
/// an uninitialised tensor of its output's size until the graph is freed; 100 toy steps came out bit for bit equal, the
/// pretraining no faster beyond the noise and its memory plateau one run higher (1,062 MB against 929 and 1,044 in two
/// runs of this form) — not adopted (docs/PERFORMANCE.md, twenty-sixth session).</para>
/// <para>Used by <see cref="Gpt2Mlp"/> for bfloat16 activations when the CPU has AVX2 and FMA and LibTorchSharp's data
/// accessor was found (<see cref="TensorAddress"/>); everything else (float32 — kept bit-exact to libtorch and thereby to
/// Hugging Face —, other devices, other CPUs) uses libtorch's GELU. <see cref="Enabled"/> switches it off.</para>
/// </remarks>
public static unsafe class CpuGelu
{
    const float K = 0.7978845608028654f, C = 0.044715f;
    static readonly Scalar One = 1.0;

    /// <summary>Whether bfloat16 GELUs use this kernel (default: on where it <see cref="Supported"/>).</summary>
    public static bool Enabled { get; set; } = true;

    /// <summary>Whether this process can run the kernel: x86-64 with AVX2 and FMA, and tensor addresses readable.</summary>
    public static bool Supported => Bf16Simd.Supported;

    /// <summary>Up to this many libtorch threads the kernel is used (default 2, the most this project's machine could
    /// measure). The pass is split over libtorch's own OpenMP threads (<see cref="OmpParallel"/>; over .NET's thread pool
    /// it was slower, because libgomp's workers keep spinning on the other cores after each libtorch op): the toy's
    /// 3072 × 1024 forward 4.6 → 2.5 ms at two threads (twenty-seventh session), the same bits as on one.</summary>
    public static int MaxThreads { get; set; } = 2;

    /// <summary>Whether <see cref="Gelu"/> would take the kernel for <paramref name="x"/>.</summary>
    public static bool Applies(Tensor x) => Enabled && Fits(x) && x.numel() > 0 && torch.get_num_threads() <= MaxThreads;

    // what Gelu itself requires: a contiguous bf16 CPU tensor on a supported CPU
    static bool Fits(Tensor x) => Supported && x.dtype == ScalarType.BFloat16 && x.device_type == DeviceType.CPU && x.is_contiguous();

    /// <summary>gelu_new(x), differentiable when x requires a gradient and autograd is on. <see cref="Applies"/> says
    /// whether the model would call it (it also weighs <see cref="Enabled"/> and <see cref="MaxThreads"/>); this method
    /// only requires a contiguous bfloat16 CPU tensor on a <see cref="Supported"/> CPU.</summary>
    /// <exception cref="ArgumentException">Another dtype, device or layout, or a CPU without AVX2 and FMA.</exception>
    public static Tensor Gelu(Tensor x)
    {
        if (!Fits(x))
            throw new ArgumentException($"CpuGelu.Gelu needs a contiguous bfloat16 CPU tensor on a CPU with AVX2 and FMA (got {x.dtype} on {x.device}{(x.is_contiguous() ? "" : ", not contiguous")}; supported here: {Supported})", nameof(x));
        var y = torch.empty_like(x);
        bool grad = x.requires_grad && torch.is_grad_enabled();
        if (!grad)
        {
            Run(x, y, null);
            return y;
        }
        var d = torch.empty_like(x);
        Run(x, y, d);
        using var zero = x - x.detach();
        using (d)
            return y.addcmul_(zero, d, One); // in place: y does not require a gradient, so autograd records the op on it
    }

    // y = gelu(x), and d = gelu'(x) when given
    static void Run(Tensor x, Tensor y, Tensor? d)
    {
        nint px = (nint)TensorAddress.Of(x), py = (nint)TensorAddress.Of(y), pd = d is null ? 0 : (nint)TensorAddress.Of(d);
        // slices of whole 16-element blocks, so that each element is computed by the same code as on one thread
        OmpParallel.For(x.numel(), OmpParallel.MinValuesPerThread, 16, (from, to) =>
            Range((ushort*)px + from, (ushort*)py + from, pd == 0 ? null : (ushort*)pd + from, to - from));
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Range(ushort* x, ushort* y, ushort* d, long n)
    {
        long i = 0;
        if (d != null)
            for (; i + 16 <= n; i += 16)
            {
                Vector256<float> a = Load(x + i), b = Load(x + i + 8);
                Vector256<float> sa = Sigma2U(a), sb = Sigma2U(b);
                Store(y + i, Avx.Multiply(a, sa), Avx.Multiply(b, sb));
                Store(d + i, Derivative(a, sa), Derivative(b, sb));
            }
        else
            for (; i + 16 <= n; i += 16)
            {
                Vector256<float> a = Load(x + i), b = Load(x + i + 8);
                Store(y + i, Avx.Multiply(a, Sigma2U(a)), Avx.Multiply(b, Sigma2U(b)));
            }
        for (; i < n; i++)
        {
            float v = ToFloat(x[i]);
            float s = 1f / (1f + MathF.Exp(Math.Clamp(-2f * K * v * (1f + C * v * v), -87.3f, 88f)));
            y[i] = ToBf16(v * s);
            if (d != null) d[i] = ToBf16(s + v * 2f * s * (1f - s) * K * (1f + 3f * C * v * v));
        }
    }

    // σ(2u) = 1 / (1 + e^(−2u)), u = √(2/π)·x·(1 + 0.044715·x²)
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<float> Sigma2U(Vector256<float> x)
    {
        var m2u = Avx.Multiply(Avx.Multiply(Vector256.Create(-2f * K), x), Fma.MultiplyAdd(Vector256.Create(C), Avx.Multiply(x, x), Vector256.Create(1f)));
        var a = Avx.Add(Vector256.Create(1f), Exp(m2u));
        var r = Avx.Reciprocal(a); // ≈ 12 bits; one Newton step r·(2 − a·r) gives ≈ 23
        return Avx.Multiply(r, Fma.MultiplyAddNegated(a, r, Vector256.Create(2f)));
    }

    // d/dx x·σ(2u) = σ + x·2σ(1 − σ)·du/dx, du/dx = √(2/π)·(1 + 3·0.044715·x²)
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<float> Derivative(Vector256<float> x, Vector256<float> s)
    {
        var du2 = Avx.Multiply(Vector256.Create(2f * K), Fma.MultiplyAdd(Vector256.Create(3f * C), Avx.Multiply(x, x), Vector256.Create(1f)));
        var xs1s = Avx.Multiply(x, Avx.Multiply(s, Avx.Subtract(Vector256.Create(1f), s)));
        return Fma.MultiplyAdd(xs1s, du2, s);
    }
}

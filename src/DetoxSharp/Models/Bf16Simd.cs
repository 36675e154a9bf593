using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace DetoxSharp.Models;

/// <summary>AVX2/FMA helpers shared by the bfloat16 CPU kernels (<see cref="CpuGelu"/>, <see cref="CpuTokenLogProbs"/>):
/// bf16 ↔ float32 conversion with round-to-nearest-even, and a Cephes-style e^x.</summary>
internal static unsafe class Bf16Simd
{
    /// <summary>Whether this process can run the kernels: x86-64 with AVX2 and FMA, and tensor addresses readable.</summary>
    public static bool Supported { get; } = Avx2.IsSupported && Fma.IsSupported && TensorAddress.Available;

    /// <summary>8 bf16 values widened to float32.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load(ushort* p) => Avx2.ShiftLeftLogical(Avx2.ConvertToVector256Int32(p), 16).AsSingle();

    /// <summary>float32 → bfloat16, round to nearest even, 16 lanes (two vectors) into 16 consecutive values. A NaN stays
    /// a NaN: the NaNs arithmetic makes here are the default one or a bf16 input's, whose low 16 bits are zero, so the
    /// rounding increment never carries into the exponent.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Store(ushort* p, Vector256<float> f0, Vector256<float> f1) =>
        Avx2.Permute4x64(Avx2.PackUnsignedSaturate(Round(f0), Round(f1)).AsUInt64(), 0b11011000).AsUInt16().Store(p);

    // the bf16 bits of 8 floats in the low halves of 32-bit lanes
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<int> Round(Vector256<float> f)
    {
        var b = f.AsInt32();
        var lsb = Avx2.And(Avx2.ShiftRightLogical(b, 16), Vector256.Create(1));
        return Avx2.ShiftRightLogical(Avx2.Add(Avx2.Add(b, Vector256.Create(0x7FFF)), lsb), 16);
    }

    /// <summary>One bf16 value widened to float32.</summary>
    public static float ToFloat(ushort b) => BitConverter.Int32BitsToSingle(b << 16);

    /// <summary>One float32 value rounded to bf16 (nearest even; NaN stays NaN).</summary>
    public static ushort ToBf16(float f)
    {
        uint b = BitConverter.SingleToUInt32Bits(f);
        return float.IsNaN(f) ? (ushort)((b >> 16) | 0x40) : (ushort)((b + 0x7FFF + ((b >> 16) & 1)) >> 16);
    }

    /// <summary>e^v with v clamped to [−87.3, 88] (Cephes expf: 2^n · e^r with |r| ≤ ln2/2 and a degree-6 polynomial,
    /// ≈ 1 ulp). A NaN lane comes out clamped, not NaN: callers that must propagate NaN check for it themselves.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Exp(Vector256<float> v)
    {
        v = Avx.Min(Avx.Max(v, Vector256.Create(-87.3f)), Vector256.Create(88.0f));
        var ni = Avx.ConvertToVector256Int32(Avx.Multiply(v, Vector256.Create(1.44269504088896341f)));
        var n = Avx.ConvertToVector256Single(ni);
        var r = Fma.MultiplyAddNegated(n, Vector256.Create(0.693359375f), v);
        r = Fma.MultiplyAdd(n, Vector256.Create(2.12194440e-4f), r);
        var p = Fma.MultiplyAdd(Vector256.Create(1.9875691500e-4f), r, Vector256.Create(1.3981999507e-3f));
        p = Fma.MultiplyAdd(p, r, Vector256.Create(8.3334519073e-3f));
        p = Fma.MultiplyAdd(p, r, Vector256.Create(4.1665795894e-2f));
        p = Fma.MultiplyAdd(p, r, Vector256.Create(1.6666665459e-1f));
        p = Fma.MultiplyAdd(p, r, Vector256.Create(5.0000001201e-1f));
        p = Fma.MultiplyAdd(p, Avx.Multiply(r, r), Avx.Add(r, Vector256.Create(1f)));
        return Avx.Multiply(p, Avx2.ShiftLeftLogical(Avx2.Add(ni, Vector256.Create(127)), 23).AsSingle());
    }
}

using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Tests.Reliability;

/// <summary>NativeSetup.InitMkl: on an AMD x86-64 CPU with AVX2 and FMA, MKL inside libtorch is told the CPU is "Intel"
/// before its first call, so it picks its fp32 GEMM kernels by instruction set (AVX-512 on Zen 4) instead of its generic
/// "zen" path; elsewhere nothing changes. The products must stay correct with the kernels it picks.</summary>
public class MklDispatchTests
{
#pragma warning disable CA2255 // before any test runs a matrix multiply: MKL picks its kernels once per process
    [ModuleInitializer]
#pragma warning restore CA2255
    internal static void Init() => NativeSetup.InitMkl();

    /// <summary>What InitMkl should have done on this machine, read from /proc/cpuinfo independently of it: true when
    /// MKL should now dispatch by instruction set because of it (AMD with AVX2 and FMA, not opted out).</summary>
    public static bool ExpectIntelDispatchOnAmd(out string vendor)
    {
        vendor = "";
        if (!OperatingSystem.IsLinux() || RuntimeInformation.ProcessArchitecture != Architecture.X64) return false;
        var info = File.ReadAllText("/proc/cpuinfo");
        vendor = info.Split('\n').First(l => l.StartsWith("vendor_id")).Split(':')[1].Trim();
        var flags = info.Split('\n').First(l => l.StartsWith("flags")).Split(':')[1].Split(' ');
        return vendor == "AuthenticAMD" && flags.Contains("avx2") && flags.Contains("fma")
            && Environment.GetEnvironmentVariable("DETOX_MKL_DEFAULT_DISPATCH") != "1";
    }

    [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
    delegate int IntFunction();

    static int MklIntelCpuTrue()
    {
        var lib = File.ReadLines("/proc/self/maps").Select(l => l.IndexOf('/') is int at and >= 0 ? l[at..] : "").First(p => p.EndsWith("/libtorch_cpu.so"));
        Assert.True(NativeLibrary.TryGetExport(NativeLibrary.Load(lib), "mkl_serv_intel_cpu_true", out var fn), "libtorch_cpu.so exports mkl_serv_intel_cpu_true");
        return Marshal.GetDelegateForFunctionPointer<IntFunction>(fn)();
    }

    [Fact]
    public void MklDispatchesByInstructionSetOnAmdCpusWithAvx2()
    {
        if (!OperatingSystem.IsLinux() || RuntimeInformation.ProcessArchitecture != Architecture.X64)
            throw new PlatformNotSupportedException("the MKL dispatch setting is for Linux x86-64");
        NativeSetup.InitMkl();
        bool expect = ExpectIntelDispatchOnAmd(out var vendor);
        if (expect)
        {
            Assert.StartsWith("MKL dispatches by instruction set on this AMD CPU", NativeSetup.MklDescription);
            Assert.Equal(1, MklIntelCpuTrue());
        }
        else if (vendor == "GenuineIntel")
        {
            Assert.Equal("MKL's own dispatch (GenuineIntel CPU)", NativeSetup.MklDescription);
            Assert.Equal(1, MklIntelCpuTrue());
        }
        else Assert.StartsWith("MKL's own dispatch", NativeSetup.MklDescription);
    }

    /// <summary>The kernels MKL picks must compute the products right: fp32 GEMMs of a GPT-2 124M step's shapes (the
    /// Conv1D addmm, the LM head's transposed weight, a batched attention product) against float64.</summary>
    [Fact]
    public void Fp32ProductsMatchFloat64WithTheChosenKernels()
    {
        using var _ = NewDisposeScope();
        var g = new Generator(7);
        foreach (var (m, k, n, transposed) in new[] { (512, 768, 2304, false), (512, 768, 3072, false), (128, 768, 5003, true), (37, 64, 29, false) })
        {
            var a = randn(m, k, generator: g);
            var b = transposed ? randn(n, k, generator: g) : randn(k, n, generator: g);
            var bias = randn(n, generator: g);
            var got = transposed ? nn.functional.linear(a, b, bias) : addmm(bias, a, b, 1, 1);
            var want = transposed ? a.to(float64).matmul(b.to(float64).t()) + bias.to(float64) : bias.to(float64) + a.to(float64).matmul(b.to(float64));
            // each output is a sum of k products of N(0,1) values: |error| ≲ k·2⁻²⁴·√k·few; far below a wrong kernel's O(1)
            double maxErr = (got.to(float64) - want).abs().max().item<double>();
            Assert.True(maxErr < 1e-3, $"{m}×{k}×{n}: max |fp32 − fp64| = {maxErr}");
        }
        var q = randn(8, 12, 64, 96, generator: g);
        var kk = randn(8, 12, 96, 64, generator: g);
        double bmmErr = (q.matmul(kk).to(float64) - q.to(float64).matmul(kk.to(float64))).abs().max().item<double>();
        Assert.True(bmmErr < 1e-3, $"batched product: max |fp32 − fp64| = {bmmErr}");
    }
}

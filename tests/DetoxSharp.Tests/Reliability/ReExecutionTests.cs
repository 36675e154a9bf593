using System.Diagnostics;
using System.Text.Json.Nodes;
using DetoxSharp.Checkpoints;
using DetoxSharp.Cli;
using DetoxSharp.Text;
using Tiny = DetoxSharp.Tests.Preference.Tiny;

namespace DetoxSharp.Tests.Reliability;

/// <summary>detox re-executes itself (execve) with start-up-only settings: glibc's THP malloc tunable for every command,
/// the study's gen-0 GC budget; the decision is a pure function of the arguments and the environment.</summary>
public class ReExecutionTests
{
    static Func<string, string?> Env(params (string K, string V)[] vars) =>
        k => vars.FirstOrDefault(v => v.K == k).V;

    [Fact]
    public void MallocTunableIsAddedUnlessTheUserChoseAnAllocator()
    {
        Assert.Equal(MallocTunables.Settings, MallocTunables.Wanted(Env(), glibcWithHugetlb: true));
        Assert.Contains("glibc.malloc.mmap_max=0", MallocTunables.Settings);
        Assert.Null(MallocTunables.Wanted(Env(), glibcWithHugetlb: false)); // musl, old glibc, not Linux
        Assert.Equal("glibc.rtld.optional_static_tls=2048:" + MallocTunables.Settings,
            MallocTunables.Wanted(Env(("GLIBC_TUNABLES", "glibc.rtld.optional_static_tls=2048")), true)); // other tunables are kept
        Assert.Null(MallocTunables.Wanted(Env(("GLIBC_TUNABLES", "glibc.malloc.hugetlb=0")), true)); // the user's malloc settings stay
        Assert.Null(MallocTunables.Wanted(Env(("GLIBC_TUNABLES", "glibc.rtld.optional_static_tls=2048:glibc.malloc.arena_max=2")), true));
        Assert.Null(MallocTunables.Wanted(Env(("DETOX_DEFAULT_ALLOCATOR", "1")), true));
        Assert.Null(MallocTunables.Wanted(Env(("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")), true));
    }

    [Fact]
    public void WantedCombinesBothSettingsOnceAndNeverTwice()
    {
        var study = ReExecution.Wanted(["study", "--out", "x"], Env(), glibcWithHugetlb: true);
        Assert.Equal(GcBudget.DefaultSize, study[GcBudget.Variable]);
        Assert.Equal(MallocTunables.Settings, study[MallocTunables.Variable]);
        var eval = ReExecution.Wanted(["eval", "--model", "m"], Env(), true);
        Assert.Equal(["GLIBC_TUNABLES"], eval.Keys.ToArray());
        Assert.Empty(ReExecution.Wanted(["eval", "--model", "m"], Env((ReExecution.Marker, "1")), true)); // the new image
        Assert.Empty(ReExecution.Wanted(["study", "--help"], Env(), true));
        Assert.Empty(ReExecution.Wanted([], Env(), true));
        Assert.Equal(["GLIBC_TUNABLES"], ReExecution.Wanted(["study"], Env((GcBudget.Override, "off")), true).Keys.ToArray());
        Assert.Equal("4000000", ReExecution.Wanted(["study"], Env((GcBudget.Override, "4000000")), false)[GcBudget.Variable]);
        Assert.Empty(ReExecution.Wanted(["eval"], Env(("DETOX_DEFAULT_ALLOCATOR", "1")), true));
    }

    /// <summary>The real executable: `detox info` reports the tunables it re-executed with (glibc ≥ 2.35, as on Debian 12),
    /// keeps its exit codes, and DETOX_DEFAULT_ALLOCATOR=1 leaves the process alone.</summary>
    [Fact]
    public void TheExecutableRunsWithTheTunableAndKeepsExitCodes()
    {
        if (!OperatingSystem.IsLinux()) throw new PlatformNotSupportedException("glibc tunables are Linux-only");
        Assert.True(MallocTunables.GlibcHasHugetlb, "this test machine should have glibc ≥ 2.35");
        var root = Tiny.TempDir("reexec");
        var model = Path.Combine(root, "model");
        using (var m = Tiny.Model()) HfCheckpoint.Save(m, Gpt2Tokenizer.Default(), model, overwrite: true);
        var exe = Path.Combine(AppContext.BaseDirectory, "detox");
        (int Code, string Out, string Err) Run(Dictionary<string, string?> env, params string[] args)
        {
            var psi = new ProcessStartInfo(exe) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
            foreach (var a in args) psi.ArgumentList.Add(a);
            foreach (var k in new[] { "GLIBC_TUNABLES", ReExecution.Marker, "DETOX_DEFAULT_ALLOCATOR", "LD_PRELOAD", "DETOX_MKL_DEFAULT_DISPATCH" }) psi.Environment.Remove(k);
            foreach (var (k, v) in env) psi.Environment[k] = v;
            using var p = Process.Start(psi)!;
            var errTask = p.StandardError.ReadToEndAsync();
            var output = p.StandardOutput.ReadToEnd();
            Assert.True(p.WaitForExit(120_000), "detox did not exit");
            return (p.ExitCode, output, errTask.Result);
        }
        var info = Run([], "info", "--model", model, "--json");
        Assert.True(info.Code == 0, info.Err);
        var allocator = JsonNode.Parse(info.Out)!["allocator"]!.GetValue<string>();
        Assert.Contains("GLIBC_TUNABLES=" + MallocTunables.Settings, allocator);
        // glibc's hugetlb tunable covers the heap: libtorch's 2 MB alignment (which fragments it) is left off
        Assert.StartsWith("THP_MEM_ALLOC_ENABLE not set", allocator);
        // MKL's kernel choice (NativeSetup.InitMkl): by instruction set on an AMD CPU with AVX2/FMA, else MKL's own
        var mkl = JsonNode.Parse(info.Out)!["mkl"]!.GetValue<string>();
        if (MklDispatchTests.ExpectIntelDispatchOnAmd(out _)) Assert.StartsWith("MKL dispatches by instruction set on this AMD CPU", mkl);
        else Assert.StartsWith("MKL's own dispatch", mkl);
        // the CPU line the timings of a bug report need: this machine's as the library reads it
        Assert.Equal(DetoxSharp.Training.CpuFeatures.Description, JsonNode.Parse(info.Out)!["cpu"]!.GetValue<string>());
        var mklOptOut = Run(new() { ["DETOX_MKL_DEFAULT_DISPATCH"] = "1" }, "info", "--model", model, "--json");
        Assert.True(mklOptOut.Code == 0, mklOptOut.Err);
        Assert.Equal(System.Runtime.InteropServices.RuntimeInformation.ProcessArchitecture == System.Runtime.InteropServices.Architecture.X64 ? "MKL's own dispatch (DETOX_MKL_DEFAULT_DISPATCH=1)" : mkl, JsonNode.Parse(mklOptOut.Out)!["mkl"]!.GetValue<string>());
        // the user's own malloc tunable: no re-execution, and libtorch's THP setting as without tunables
        var own = Run(new() { ["GLIBC_TUNABLES"] = "glibc.malloc.hugetlb=0" }, "info", "--model", model, "--json");
        Assert.True(own.Code == 0, own.Err);
        Assert.Equal("THP_MEM_ALLOC_ENABLE=1 (set by DetoxSharp); GLIBC_TUNABLES=glibc.malloc.hugetlb=0", JsonNode.Parse(own.Out)!["allocator"]!.GetValue<string>());
        var optedOut = Run(new() { ["DETOX_DEFAULT_ALLOCATOR"] = "1" }, "info", "--model", model, "--json");
        Assert.True(optedOut.Code == 0, optedOut.Err);
        Assert.DoesNotContain("GLIBC_TUNABLES", JsonNode.Parse(optedOut.Out)!["allocator"]!.GetValue<string>());
        var bad = Run([], "info", "--model", Path.Combine(root, "missing"));
        Assert.Equal(2, bad.Code);
        Assert.Single(bad.Err.Trim().Split('\n'));
    }
}

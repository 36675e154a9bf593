using System.Diagnostics;
using System.Globalization;
using System.Reflection;
using System.Text;
using DetoxSharp.Generation;
using Gen = DetoxSharp.Generation.Generator;
using DetoxSharp.Models;
using DetoxSharp.Training;
using TorchSharp;
using static TorchSharp.torch;
using static BenchStats;

// DetoxSharp benchmark: plain harness (native-heavy work, one process, threads = cores).
//   dotnet run -c Release --project bench/DetoxSharp.Bench -- [--quick] [--threads N] [--out docs/bench-report.md]
// Writes a Markdown report; the file is rewritten after each model config so a long run leaves partial results.
// `--help` lists the single-purpose modes (BenchUsage.cs).

// a setting the model rejects (e.g. --seq beyond a config's context) ends in one line and exit code 2, not a stack trace
AppDomain.CurrentDomain.UnhandledException += (_, e) =>
{
    if (e.ExceptionObject is not ArgumentException bad) return;
    Console.Error.WriteLine($"bench: {bad.Message.Split('\n')[0]}");
    Environment.Exit(2);
};
// every option is checked before anything runs: an unknown one (a typo, or `--help` taken for a mode) would otherwise
// fall through to the full benchmark, ≈ 20 minutes that end by writing its report
if (args.Contains("--help") || args.Contains("-h"))
{
    Console.WriteLine(BenchUsage.Text);
    return 0;
}
if (args.FirstOrDefault(a => a.StartsWith("--") && !BenchUsage.Options.Contains(a)) is { } unknown)
    return Usage<int>($"unknown option '{unknown}' (--help lists the modes and options)");
// the full run's report replaces its --out file as a whole: only a file it wrote itself (its first line) is replaced,
// never a hand-written one such as docs/PERFORMANCE.md
var outIdx = Array.IndexOf(args, "--out");
var outPath = outIdx >= 0 && outIdx + 1 < args.Length ? args[outIdx + 1] : Path.Combine(FindRepoRoot(), "docs", "bench-report.md");
if (File.Exists(outPath) && File.ReadLines(outPath).FirstOrDefault() != BenchUsage.ReportMarker)
    return Usage<int>($"--out {outPath}: the file exists and was not written by the bench (its first line is not '{BenchUsage.ReportMarker}'); name a new file or remove it");
// the default setup a `detox` command gets: glibc's malloc tunables (read only at process start, hence a re-execution;
// skipped in the --allocator-ab children, whose environment is the variant under test)
if (!args.Contains("--alloc-child")) DetoxSharp.NativeSetup.RestartWithMallocTunables();
DetoxSharp.NativeSetup.Init(); // before the first tensor: the allocator setting is read at libtorch's first allocation
DetoxSharp.NativeSetup.InitMkl(); // before the first matrix multiply: MKL picks its kernels once
var quick = args.Contains("--quick");
var thrIdx = Array.IndexOf(args, "--threads");
int threads = thrIdx >= 0 && thrIdx + 1 < args.Length ? IntArg("--threads", args[thrIdx + 1]) : Environment.ProcessorCount;
torch.set_num_threads(threads);
CultureInfo.DefaultThreadCurrentCulture = CultureInfo.InvariantCulture;
CultureInfo.CurrentCulture = CultureInfo.InvariantCulture;
var started = DateTime.UtcNow;
var loadAtStart = LoadAverage();
var log = (string s) => Console.Error.WriteLine($"[{(DateTime.UtcNow - started).TotalSeconds,6:F1}s] {s}");

// ---- where a `detox dpo` step goes, phase by phase, on a saved model and pairs file ----
var dpIdx = Array.IndexOf(args, "--dpo-phases");
if (dpIdx >= 0)
{
    int dpSteps = Arg("--steps", 200), dpBatch = Arg("--batch", 4);
    if (dpIdx + 2 >= args.Length || !Directory.Exists(args[dpIdx + 1]) || !File.Exists(args[dpIdx + 2]) || dpSteps <= DpoPhases.WarmupSteps)
        return Usage<int>($"--dpo-phases needs a model directory, a pairs file, --steps > {DpoPhases.WarmupSteps} ({DpoPhases.WarmupSteps} are warm-up): --dpo-phases MODEL_DIR PAIRS.jsonl [--steps N] [--batch B]");
    DpoPhases.Run(args[dpIdx + 1], args[dpIdx + 2], dpSteps, dpBatch, Console.WriteLine);
    return 0;
}
// ---- classifier scoring throughput (RoBERTa-base shape, random weights): prints a Markdown table ----
var clsIdx = Array.IndexOf(args, "--classifier");
if (clsIdx >= 0)
{
    Console.WriteLine($"load average at start: {loadAtStart}");
    Console.WriteLine(ClassifierBench.Run(Arg("--texts", 256), Arg("--batch", 32), Arg("--rounds", 3), log));
    Console.WriteLine($"load average at end: {LoadAverage()}");
    return 0;
}
// ---- inputs of the `detox neurons` budget run: GPT-2-medium-shaped before/after checkpoints, probe, prompts ----
var ncIdx = Array.IndexOf(args, "--neurons-checkpoints");
if (ncIdx >= 0)
    return NeuronsCheckpoints.Run(ncIdx + 1 < args.Length ? args[ncIdx + 1] : Path.Combine(Path.GetTempPath(), "detox-neurons-medium"), Arg("--prompts", 100), log);
// ---- DExperts decoding vs the base alone (issue 18's budget: ≥ 1/3.5 of the base's tokens/s at batch 16) ----
//   --dexperts [toy|toy-study|124m|355m] [--batch 16] [--new-tokens 20] [--rounds 5] [--min-seconds 2.5] [--prompts 16]
// Three rows, interleaved per round: the base alone, DExperts with the stacked ensemble forward (one forward of a 3×
// batch per token, CausalLMEnsemble), DExperts with three separate forwards (the old path). Each row per round
// generates the prompts again and again for ≥ --min-seconds after one untimed warm-up pass; the figure is the median
// over rounds, with the spread and the process CPU seconds per wall second (≈ threads idle, less when contended).
var dxIdx = Array.IndexOf(args, "--dexperts");
if (dxIdx >= 0)
{
    string dxName = dxIdx + 1 < args.Length && !args[dxIdx + 1].StartsWith("--") ? args[dxIdx + 1] : "toy";
    int dxBatch = Arg("--batch", 16), dxNew = Arg("--new-tokens", 20), dxRounds = Arg("--rounds", 5), dxPrompts = Arg("--prompts", dxBatch);
    double minSec = double.TryParse(ArgS("--min-seconds", "2.5"), NumberStyles.Float, CultureInfo.InvariantCulture, out var ms) && ms > 0 ? ms
        : Usage<double>($"--min-seconds: expected a positive number, got '{ArgS("--min-seconds", "")}'");
    var cfg = ConfigNamed(dxName);
    torch.manual_seed(0);
    using var bm = new Gpt2Model(cfg); using var em = new Gpt2Model(cfg); using var am = new Gpt2Model(cfg);
    var dx = new DExperts(em, am, 2.0);
    Console.Error.WriteLine($"stackable: {CausalLMEnsemble.WhyNotStackable([bm, em, am]) ?? "yes"}");
    var rnd = new Random(7);
    var prompts = Enumerable.Range(0, dxPrompts).Select(_ => Enumerable.Range(0, 32).Select(_ => rnd.Next(cfg.VocabSize - 1)).ToArray()).ToList();
    var o = new GenerationOptions { MaxNewTokens = dxNew, Greedy = true, StopAtEos = false, BatchSize = dxBatch };
    var rowsDx = new (string Name, Func<List<int[]>> Gen)[]
    {
        ("base", () => Gen.Generate(bm, prompts, o)),
        ("DExperts, stacked ensemble (new)", () => Gen.Generate(bm, prompts, o with { EnsembleForward = true }, dx)),
        ("DExperts, 3 separate forwards (old)", () => Gen.Generate(bm, prompts, o with { EnsembleForward = false }, dx)),
    };
    if (!Gen.Generate(bm, prompts, o with { EnsembleForward = true }, dx).Zip(Gen.Generate(bm, prompts, o with { EnsembleForward = false }, dx)).All(p => p.First.SequenceEqual(p.Second)))
        Console.Error.WriteLine("WARNING: stacked and separate DExperts greedy outputs differ");
    foreach (var r in rowsDx) r.Gen(); // warm-up, discarded
    var tps = rowsDx.Select(_ => new List<double>()).ToArray();
    var cpuRatio = rowsDx.Select(_ => new List<double>()).ToArray();
    for (int r = 0; r < dxRounds; r++) // interleaved, so a change in machine load hits all rows alike
        for (int i = 0; i < rowsDx.Length; i++)
        {
            long n = 0;
            var cpu0 = Process.GetCurrentProcess().TotalProcessorTime;
            var sw = Stopwatch.StartNew();
            do n += rowsDx[i].Gen().Sum(x => (long)x.Length); while (sw.Elapsed.TotalSeconds < minSec);
            double secs = sw.Elapsed.TotalSeconds;
            tps[i].Add(n / secs);
            cpuRatio[i].Add((Process.GetCurrentProcess().TotalProcessorTime - cpu0).TotalSeconds / secs);
            log($"round {r + 1}: {rowsDx[i].Name} {n / secs:F1} tok/s");
        }
    var med = tps.Select(Median).ToArray();
    Console.WriteLine($"DExperts bench ({dxName}, batch {dxBatch}, {dxPrompts} prompts of 32 tokens, {dxNew} new tokens, greedy, KV cache, {threads} threads, {dxRounds} interleaved rounds of ≥ {minSec} s per row; load average {loadAtStart} → {LoadAverage()})");
    Console.WriteLine("| decoding | tokens/s (median) | min – max | ÷ base | CPU s / wall s |\n|---|---:|---:|---:|---:|");
    for (int i = 0; i < rowsDx.Length; i++)
        Console.WriteLine($"| {rowsDx[i].Name} | {med[i]:F1} | {tps[i].Min():F1} – {tps[i].Max():F1} | {med[i] / med[0]:F3} | {Median(cpuRatio[i]):F2} |");
    // the ratio per round (both rows of one round saw the same load): its spread is the figure's own noise
    var perRound = Enumerable.Range(0, dxRounds).Select(r => tps[1][r] / tps[0][r]).ToList();
    var perRoundOld = Enumerable.Range(0, dxRounds).Select(r => tps[2][r] / tps[0][r]).ToList();
    Console.WriteLine($"DExperts / base = {med[1] / med[0]:F3} stacked (per round {perRound.Min():F3} – {perRound.Max():F3}), {med[2] / med[0]:F3} separate (per round {perRoundOld.Min():F3} – {perRoundOld.Max():F3}); budget ≥ {1 / 3.5:F3}");
    return med[1] / med[0] >= 1 / 3.5 ? 0 : 3;
}
// ---- 1.1B Llama-shaped checkpoint (created when absent, never committed): load, generate, DPO steps ----
var l1Idx = Array.IndexOf(args, "--llama-1b");
if (l1Idx >= 0)
    return Llama1B.Run(l1Idx + 1 < args.Length ? args[l1Idx + 1] : Path.Combine(Path.GetTempPath(), "detox-llama-1b"), Arg("--steps", 2), log);

// ---- side-by-side mode (bench/side-by-side.sh): the step bench/pytorch/gpt2_step.py times, as one JSON line ----
var sbsIdx = Array.IndexOf(args, "--side-by-side");
if (sbsIdx >= 0)
{
    string cfgName = ModeConfig(sbsIdx);
    var sbsCfg = ConfigNamed(cfgName);
    int sb = Arg("--batch", 4), st = Arg("--seq", 128), sbw = Arg("--warmup", 1);
    torch.manual_seed(0);
    using var sbsModel = new Gpt2Model(sbsCfg);
    double sbsFwd = ForwardTokensPerSec(sbsModel, sb, st, Arg("--forward-reps", 3), sbw);
    // the step as `detox sft` runs it (its flat-buffer AdamW), and with TorchSharp's torch.optim.AdamW for comparison
    var (sbsSftTorch, _, _, _) = SftTokensPerSec(sbsModel, sb, st, Arg("--sft-steps", 3), warmup: sbw);
    var (sbsSft, sbsSec, _, _) = SftTokensPerSec(sbsModel, sb, st, Arg("--sft-steps", 3), detoxOptimizer: true, warmup: sbw);
    // DetoxSharp's default training precision (--precision auto: bf16-mixed where the CPU has native bf16), the same step
    var auto = MixedPrecision.Resolve(sbsModel, Precision.Auto);
    double sbsAuto = auto == Precision.Bf16Mixed ? SftMixedTokensPerSec(sbsModel, sb, st, Arg("--sft-steps", 3), detoxOptimizer: true, warmup: sbw).tokPerSec : sbsSft;
    Console.WriteLine(System.Text.Json.JsonSerializer.Serialize(new Dictionary<string, object>
    {
        ["impl"] = "detoxsharp", ["version"] = $"TorchSharp {typeof(torch).Assembly.GetName().Version}", ["threads"] = torch.get_num_threads(),
        ["config"] = cfgName, ["params"] = sbsModel.parameters().Sum(p => p.numel()), ["batch"] = sb, ["seq"] = st, ["warmup"] = sbw,
        ["forward_tok_s"] = sbsFwd, ["sft_tok_s"] = sbsSft, ["sft_s_per_step"] = sbsSec, ["sft_torch_optim_tok_s"] = sbsSftTorch,
        ["sft_default_tok_s"] = sbsAuto, ["default_precision"] = PrecisionJsonConverter.Name(auto), ["allocator"] = DetoxSharp.NativeSetup.Description,
        ["mkl"] = DetoxSharp.NativeSetup.MklDescription, ["cpu"] = CpuLine(),
    }));
    return 0;
}

// ---- bf16/fp32 GEMM rates at one config's shapes for several row counts (MatmulPeak.StepShapes) ----
if (ConfigMode("--gemm-shapes", (name, cfg) =>
        new[] { ScalarType.BFloat16, ScalarType.Float32 }.SelectMany(dt =>
            MatmulPeak.Measure(MatmulPeak.StepShapes(ArgS("--rows", "160,320,480").Split(',').Select(long.Parse), cfg.NEmbd, Arg("--vocab", 50257)), dt, Arg("--rounds", 3))
                .Select(x => $"{name} {dt} {x.Shape.Name}: {x.GFlops:F1} GFLOP/s"))) is int gemmExit)
    return gemmExit;

// ---- optimizer step A/B (one config): the fused RMSprop/AdamW update over the whole flat buffer vs in cache-sized ranges ----
if (ConfigMode("--optimizer-ab", (_, cfg) => OptimizerBench.Run(cfg, Arg("--rounds", 3), Arg("--steps", 5))) is int optExit)
    return optExit;

// ---- gradient hand-over A/B (one config): separate passes vs folded into the accumulation and the optimizer's ranges ----
if (ConfigMode("--handover-ab", (_, cfg) => HandoverBench.Run(cfg, Arg("--rounds", 3), Arg("--steps", 5))) is int handoverExit)
    return handoverExit;

// ---- packed vs padded blocks (one config): forward + backward of a DPO step's scoring, per-batch ratios ----
if (ConfigMode("--packing-ab", (_, cfg) => PackingBench.Run(cfg, Arg("--rounds", 2), Arg("--batches", 10), args.Contains("--llama"))) is int packingExit)
    return packingExit;

// ---- DPO pairs/s on one config (PreferenceBench: fp32 cached / live reference, and --precision auto cached) ----
PreferenceBench.WordsPerSegment = Arg("--words", 30);
if (ConfigMode("--dpo", (name, cfg) =>
        PreferenceBench.Run(() => new Gpt2Model(cfg with { VocabSize = Math.Max(cfg.VocabSize, 50257), EosTokenId = 50256, BosTokenId = 50256 }), Arg("--steps", 6),
            Path.Combine(Path.GetTempPath(), $"detox-bench-dpo-{Environment.ProcessId}"), autoOnly: args.Contains("--auto-only"),
            shareRounds: args.Contains("--share-ab") ? Arg("--rounds", 2) : 0, packing: Enum.Parse<TokenPacking>(ArgS("--packing", "auto"), ignoreCase: true),
            pairs: Arg("--pairs", 0), dataParallelRounds: args.Contains("--dp-ab") ? Arg("--rounds", 2) : 0)
        .Select(r => $"DPO {name} {r.Mode}: {r.PairsPerSecond:F3} pairs/s (train loop, {r.Steps} steps of 4 pairs; {r.SteadyPairsPerSecond:F3} after step {PreferenceBench.SettleSteps}, {r.SteadyStepsOnly:F3} without the {r.ScoringSeconds:F1} s of reference scoring), wall {r.WallSeconds:F1} s, first loss {r.FirstLoss:F6} (ln 2 = {Math.Log(2):F6})")) is int dpoExit)
    return dpoExit;

// ---- precision A/B (one config, fresh process): fp32, bf16-mixed and pure bf16 SFT steps interleaved for N rounds ----
var abIdx = Array.IndexOf(args, "--precision-ab");
if (abIdx >= 0)
{
    var abCfg = ConfigNamed(ModeConfig(abIdx));
    int ab = Arg("--batch", 4), at = Arg("--seq", 128), steps = Arg("--sft-steps", 3), nRounds = Arg("--rounds", 3);
    torch.manual_seed(0);
    using var abModel = new Gpt2Model(abCfg);
    var f32 = new List<double>(); var mix = new List<double>(); var pure = new List<double>();
    for (int r = 0; r < nRounds; r++)
    {
        f32.Add(SftTokensPerSec(abModel, ab, at, steps).tokPerSec);
        mix.Add(SftMixedTokensPerSec(abModel, ab, at, steps).tokPerSec);
        pure.Add(SftPureBf16TokensPerSec(abModel, ab, at, steps).tokPerSec);
        Console.WriteLine($"round {r + 1}: fp32 {f32[^1]:F1}  bf16-mixed {mix[^1]:F1}  pure bf16 {pure[^1]:F1} tok/s  (load {LoadAverage()})");
    }
    Console.WriteLine($"median: fp32 {Median(f32):F1}  bf16-mixed {Median(mix):F1} ({Median(mix) / Median(f32):F2}×)  pure bf16 {Median(pure):F1} ({Median(pure) / Median(f32):F2}×)");
    return 0;
}

// ---- allocator probe: minor page faults of 5 reused 128 MB tensors (glibc returns large blocks to the OS on free) ----
if (args.Contains("--fault-probe"))
{
    const long n = 32L << 20;
    using (var warm = torch.ones(n)) { }
    long f0 = MemoryProbe.MinorFaults();
    for (int i = 0; i < 5; i++) { using var t = torch.ones(n); }
    Console.WriteLine($"main thread: {MemoryProbe.MinorFaults() - f0} faults");
    var th = new Thread(() =>
    {
        using (var warm = torch.ones(n)) { }
        long f1 = MemoryProbe.MinorFaults();
        for (int i = 0; i < 5; i++) { using var t = torch.ones(n); }
        Console.WriteLine($"other thread: {MemoryProbe.MinorFaults() - f1} faults");
    });
    th.Start(); th.Join();
    return 0;
}
// ---- heap probe (one config): forward reps, then fp32 and bf16-mixed SFT steps (detox's AdamW), one line each with
// its time, minor page faults, the heap's size and glibc's free space (how the first reps grow the heap) ----
var hpIdx = Array.IndexOf(args, "--heap-probe");
if (hpIdx >= 0)
{
    var hpCfg = ConfigNamed(ModeConfig(hpIdx));
    int hb = Arg("--batch", 4), ht = Arg("--seq", 128), hn = Arg("--reps", 8);
    if (ht > hpCfg.NPositions) return Usage<int>($"--seq: {ht} tokens is longer than the {ModeConfig(hpIdx)} context ({hpCfg.NPositions})");
    torch.manual_seed(0);
    using var hpModel = new Gpt2Model(hpCfg);
    using var hpIds = torch.randint(0, hpModel.VocabSize, [hb, ht], ScalarType.Int64);
    void Rep(string what, int r, Func<float> run)
    {
        long f0 = MemoryProbe.MinorFaults();
        var sw = Stopwatch.StartNew();
        run();
        Console.WriteLine($"{what} {r}: {sw.Elapsed.TotalMilliseconds:F1} ms, {MemoryProbe.MinorFaults() - f0} minor faults, {MemoryProbe.HeapLine()}");
    }
    hpModel.eval();
    using (torch.no_grad())
        for (int r = 0; r < hn; r++) Rep("forward", r, () => { using var s = torch.NewDisposeScope(); hpModel.Forward(hpIds); return 0; });
    hpModel.train();
    using (var opt = AdamW(hpModel, 1e-4, detox: true))
        for (int r = 0; r < hn; r++) Rep("sft fp32", r, () => SftStep(hpModel, opt, hpIds));
    using (var mp = new MixedPrecision(hpModel))
    using (var opt = AdamW(hpModel, 1e-5, detox: true))
    {
        if (opt is not FusedOptimizer fused || !mp.MirrorUpdates(fused)) throw new InvalidOperationException("no fused AdamW");
        for (int r = 0; r < hn; r++) Rep("sft bf16-mixed", r, () => SftMixedDetoxStep(mp, opt, hpIds));
    }
    return 0;
}
// ---- study wall time: total and per-stage share from a run dir's manifest (optionally running `detox study` first) ----
var stIdx = Array.IndexOf(args, "--study-time");
if (stIdx >= 0)
{
    string runDir = stIdx + 1 < args.Length && !args[stIdx + 1].StartsWith("--") ? args[stIdx + 1] : Path.Combine(Path.GetTempPath(), $"detox-bench-study-{Environment.ProcessId}");
    double? wall = null;
    if (args.Contains("--run"))
    {
        wall = StudyTime.RunStudy(FindRepoRoot(), runDir, args.Contains("--full"));
        if (wall is null) return 1;
    }
    Console.WriteLine(StudyTime.Report(runDir, wall, LoadAverage()));
    return 0;
}
// ---- allocator A/B: the same toy pretraining steps in child processes with different allocator settings ----
if (args.Contains("--alloc-child"))
{
    long f0 = MemoryProbe.MinorFaults();
    if (args.Contains("--gpt2-124m"))
    {
        // last round's allocator-bound case: the 124M SFT step, bf16-mixed, 4 × 128 tokens
        torch.manual_seed(0);
        using var m124 = new Gpt2Model(Gpt2Config.Small);
        var cpu0 = Process.GetCurrentProcess().TotalProcessorTime;
        var (_, sec124, l0, l1) = SftMixedTokensPerSec(m124, 4, 128, Arg("--steps", 2), detoxOptimizer: !args.Contains("--torch-optim"));
        double cpu124 = (Process.GetCurrentProcess().TotalProcessorTime - cpu0).TotalSeconds / (Arg("--steps", 2) + 1);
        Console.WriteLine($"{sec124 * 1e3:F1} {cpu124 * 1e3:F1} {MemoryProbe.MinorFaults() - f0} {BitConverter.SingleToInt32Bits(l0):x8},{BitConverter.SingleToInt32Bits(l1):x8}");
        return 0;
    }
    var r = ToyAb.Run(ToyAb.Variants[^1], false, !args.Contains("--fp32"), Arg("--steps", 4));
    Console.WriteLine($"{r.Sec * 1e3:F1} {r.Cpu * 1e3:F1} {MemoryProbe.MinorFaults() - f0} {string.Join(",", r.Losses.Select(l => BitConverter.SingleToInt32Bits(l).ToString("x8")))}");
    return 0;
}
if (args.Contains("--allocator-ab"))
{
    const string tc = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4";
    var variants = new List<(string name, Dictionary<string, string> env)>
    {
        ("glibc malloc, nothing set (DETOX_DEFAULT_ALLOCATOR=1)", new() { ["DETOX_DEFAULT_ALLOCATOR"] = "1" }),
        ("THP_MEM_ALLOC_ENABLE=1 only (no tunables: the default before them)", new()),
        ("detox's default: GLIBC_TUNABLES=" + DetoxSharp.NativeSetup.GlibcMallocTunables + " (libtorch's THP alignment then off)", new() { ["GLIBC_TUNABLES"] = DetoxSharp.NativeSetup.GlibcMallocTunables }),
    };
    if (File.Exists(tc)) variants.Add(("tcmalloc preloaded (LD_PRELOAD, no THP)", new() { ["LD_PRELOAD"] = tc, ["DETOX_DEFAULT_ALLOCATOR"] = "1" }));
    var dll = typeof(ToyAb).Assembly.Location;
    var res = variants.ToDictionary(v => v.name, _ => new List<string[]>());
    int rounds = Arg("--rounds", 2);
    Console.WriteLine($"load average at start {LoadAverage()}");
    for (int r = 0; r < rounds; r++)
        foreach (var (name, env) in variants)
        {
            var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true };
            foreach (var a in new[] { dll, "--alloc-child", "--threads", threads.ToString(), "--steps", Arg("--steps", 4).ToString() }.Concat(args.Contains("--fp32") ? ["--fp32"] : []).Concat(args.Contains("--gpt2-124m") ? ["--gpt2-124m"] : []).Concat(args.Contains("--torch-optim") ? ["--torch-optim"] : []))
                psi.ArgumentList.Add(a);
            psi.Environment.Remove(DetoxSharp.MallocTunables.Variable); // this process's own tunables are not the variant's
            foreach (var (k, v) in env) psi.Environment[k] = v;
            using var p = Process.Start(psi)!;
            var line = p.StandardOutput.ReadToEnd().Trim().Split('\n')[^1];
            p.WaitForExit();
            res[name].Add(line.Split(' '));
            Console.WriteLine($"round {r + 1}: {name}: {line}");
        }
    var baseLosses = res[variants[0].name][0][3];
    double tcMs = File.Exists(tc) ? Median(res[variants[^1].name].Select(x => double.Parse(x[0])).ToList()) : double.NaN;
    Console.WriteLine("| allocator | ms/step (median) | CPU ms/step | minor faults (run) | ÷ tcmalloc time | losses bit-identical to the first |");
    Console.WriteLine("|---|---:|---:|---:|---:|---|");
    foreach (var (name, _) in variants)
    {
        var rs = res[name];
        double ms = Median(rs.Select(x => double.Parse(x[0])).ToList());
        Console.WriteLine($"| {name} | {ms:F1} | {Median(rs.Select(x => double.Parse(x[1])).ToList()):F1} | {Median(rs.Select(x => double.Parse(x[2])).ToList()):F0} | {ms / tcMs:F2} | {(rs.All(x => x[3] == baseLosses) ? "yes" : "NO")} |");
    }
    Console.WriteLine($"losses (float bits): {baseLosses}; load average at end {LoadAverage()}");
    return 0;
}
// ---- old vs new training step on the default toy model (optimizer and attention path), interleaved rounds ----
if (args.Contains("--toy-ab"))
{
    int abSteps = Arg("--steps", 4), abRounds = Arg("--rounds", 3);
    Console.WriteLine($"load average at start {LoadAverage()}; threads {torch.get_num_threads()}; {NativeSettings()}");
    foreach (var (dpo, mixed) in new[] { (false, true), (false, false), (true, true), (true, false) })
    {
        var sec = ToyAb.Variants.ToDictionary(v => v.Name, _ => new List<double>());
        var cpu = ToyAb.Variants.ToDictionary(v => v.Name, _ => new List<double>());
        for (int r = 0; r < abRounds; r++)
            foreach (var v in ToyAb.Variants)
            {
                var res = ToyAb.Run(v, dpo, mixed, abSteps);
                sec[v.Name].Add(res.Sec); cpu[v.Name].Add(res.Cpu);
            }
        string what = $"{(dpo ? "DPO step (4 pairs)" : "pretraining step (32×96)")}, {(mixed ? "bf16-mixed" : "fp32")}";
        double oldS = Median(sec["old"]);
        foreach (var v in ToyAb.Variants)
            Console.WriteLine($"{what}: {v.Name,-16} {Median(sec[v.Name]) * 1e3,8:F1} ms/step (min {sec[v.Name].Min() * 1e3:F1}), CPU {Median(cpu[v.Name]) * 1e3,8:F1} ms/step, speed-up {oldS / Median(sec[v.Name]):F2}× (CPU-time ratio {Median(cpu["old"]) / Median(cpu[v.Name]):F2}×)");
    }
    Console.WriteLine($"load average at end {LoadAverage()}");
    return 0;
}
if (args.Contains("--linear-parts"))
{
    LinearParts.Run(Console.WriteLine);
    return 0;
}
if (args.Contains("--attn-parts"))
{
    AttnParts.Run(Console.WriteLine);
    return 0;
}
if (args.Contains("--attn-shapes"))
{
    ToyOps.Shapes(Console.WriteLine);
    return 0;
}
if (args.Contains("--toy-ops"))
{
    ToyOps.Run(ScalarType.BFloat16, Console.WriteLine);
    ToyOps.Run(ScalarType.Float32, Console.WriteLine);
    return 0;
}
if (args.Contains("--toy-breakdown"))
{
    ToyStepBench.Breakdown(Arg("--steps", 10), args.Contains("--no-mask"), args.Contains("--fp32"), Console.WriteLine);
    return 0;
}
// ---- generation only (one config): batch 1 and 16, with and without the KV cache, 64 new tokens ----
var genIdx = Array.IndexOf(args, "--generation");
if (genIdx >= 0)
{
    torch.manual_seed(0);
    using var gm = new Gpt2Model(ConfigNamed(ModeConfig(genIdx)));
    foreach (int gb in new[] { 1, 16 })
    {
        var (kvRate, kvOut) = GenerationTokensPerSec(gm, gb, 16, 64, true);
        var (reRate, reOut) = GenerationTokensPerSec(gm, gb, 16, 64, false);
        int same = kvOut.Zip(reOut).Count(z => z.First.SequenceEqual(z.Second));
        Console.WriteLine($"batch {gb}: KV {kvRate:F1} tok/s, recompute {reRate:F1} tok/s, {kvRate / reRate:F1}×; identical sequences {same}/{kvOut.Count}");
    }
    return 0;
}
if (args.Contains("--decode-probe"))
{
    foreach (var (label, tr, sk) in new[] { ("[in,out] addmm", false, 1), ("[out,in] linear", true, 1), ("[in,out] split-K 2 bmm", false, 2), ("[in,out] split-K 4 bmm", false, 4) })
        Console.WriteLine($"{label}: {DecodeBound.GemvPassSeconds(768, 12, 50257, tr, 5, sk) * 1e3:F1} ms");
    return 0;
}
var rows = new List<string[]>();
var memRows = new List<string[]>();
var mixedRows = new List<string[]>();
var peaks = new Dictionary<string, double>();

// ---- matmul peak: square sizes and the GEMM shapes of a 124M training step (see MatmulPeak.cs) ----
var peakRows = new List<(string dtype, string shape, double gflops)>();
foreach (var dt in new[] { ScalarType.Float32, ScalarType.BFloat16 })
{
    var measured = MatmulPeak.Measure(MatmulPeak.Shapes(quick), dt, quick ? 2 : 5);
    string dn = dt == ScalarType.Float32 ? "fp32" : "bf16";
    foreach (var (sh, g) in measured) { peakRows.Add((dn, sh.Name, g)); log($"matmul {dn} {sh.Name}: {g:F1} GFLOP/s"); }
    peaks[dt.ToString()] = measured.Max(x => x.GFlops);
    log($"matmul peak {dn}: {peaks[dt.ToString()]:F1} GFLOP/s");
}
double bandwidth = DecodeBound.ReadBandwidth(quick ? 256 : 1024, quick ? 3 : 5);
log($"read bandwidth {bandwidth:F1} GB/s");
var decodeRows = new List<string[]>();
var dpoRows = new List<string[]>();
var checks = new List<(string what, bool ok, string detail)>();
var studyReports = new List<(string kind, string text)>();
WriteReport(false);

// ---- models ----
var configs = new List<(string name, Gpt2Config cfg, int b, int t, int sftSteps, int fwdReps)>
{
    ("toy (4L d128 V2000)", ToyConfig(), 8, 128, quick ? 3 : 20, quick ? 2 : 10),
    ("gpt2 124M", Gpt2Config.Small, quick ? 1 : 4, quick ? 32 : 128, quick ? 1 : 3, quick ? 1 : 3),
};
if (!quick) configs.Add(("gpt2-medium 355M", Gpt2Config.Medium, 2, 128, 2, 2));

foreach (var (name, cfg, b, t, sftSteps, fwdReps) in configs)
{
    log($"== {name}");
    torch.manual_seed(0);
    using var model = new Gpt2Model(cfg);
    long nParams = model.parameters().Sum(p => p.numel());
    bool big = cfg.NEmbd >= 768;

    double fwd = ForwardTokensPerSec(model, b, t, fwdReps);
    log($"forward {fwd:F0} tok/s");
    // fp32, bf16-mixed (fp32 master + bf16 working copy, as `--precision bf16-mixed`) and pure bf16 (as `--dtype
    // bfloat16`) SFT steps, interleaved in rounds so that a load or clock change hits all three; medians are reported
    int rounds = quick ? 1 : 3;
    var fp32Runs = new List<double>(); var mixedRuns = new List<double>(); var pureRuns = new List<double>();
    float firstLoss = float.NaN, lastLoss = float.NaN;
    for (int r = 0; r < rounds; r++)
    {
        var (f, _, l0, l1) = SftTokensPerSec(model, b, t, sftSteps);
        if (r == 0) (firstLoss, lastLoss) = (l0, l1);
        fp32Runs.Add(f);
        mixedRuns.Add(SftMixedTokensPerSec(model, b, t, sftSteps).tokPerSec);
        pureRuns.Add(SftPureBf16TokensPerSec(model, b, t, sftSteps).tokPerSec);
        log($"sft round {r + 1}: fp32 {f:F0}, bf16-mixed {mixedRuns[^1]:F0}, pure bf16 {pureRuns[^1]:F0} tok/s");
    }
    checks.Add(($"{name}: SFT steps on one batch lower its loss", float.IsFinite(lastLoss) && lastLoss < firstLoss, $"loss {firstLoss:F4} → {lastLoss:F4} over {sftSteps + 1} steps"));
    double sft = Median(fp32Runs), mixedTps = Median(mixedRuns), pureTps = Median(pureRuns);
    double flopsPerToken = 6.0 * nParams + 12.0 * cfg.NLayer * cfg.NEmbd * t;
    double mfu = sft * flopsPerToken / 1e9 / peaks["Float32"];
    log($"sft {sft:F0} tok/s (median), MFU {mfu:P1}; bf16-mixed {mixedTps / sft:F2}×, pure bf16 {pureTps / sft:F2}×");
    string Spread(List<double> v) => v.Count > 1 ? $"{Median(v):F0} ({v.Min():F0}–{v.Max():F0})" : $"{v[0]:F0}";
    mixedRows.Add([name, $"{b}×{t}", $"{rounds}", Spread(fp32Runs), Spread(mixedRuns), $"{mixedTps / sft:F2}×",
        Spread(pureRuns), $"{pureTps / sft:F2}×", LoadAverage()]);

    int newTokens = quick ? (big ? 8 : 32) : 64;
    var gen = new Dictionary<string, double>();
    foreach (int gb in new[] { 1, 16 })
    {
        var outs = new Dictionary<bool, List<int[]>>();
        foreach (bool kv in new[] { true, false })
        {
            if (quick && big && gb == 16) continue;
            (gen[$"{gb}{(kv ? "kv" : "")}"], outs[kv]) = GenerationTokensPerSec(model, gb, 16, newTokens, kv);
            log($"generation batch {gb} kv={kv}: {gen[$"{gb}{(kv ? "kv" : "")}"]:F1} tok/s");
        }
        if (outs.Count == 2)
        {
            // greedy with and without the cache must pick the same tokens (fp32 reorderings could in principle flip a
            // near-tie; count mismatching sequences rather than demand bit-identical logits)
            int same = outs[true].Zip(outs[false]).Count(z => z.First.SequenceEqual(z.Second));
            checks.Add(($"{name}: greedy generation, KV cache = recomputation (batch {gb})", same == outs[true].Count, $"{same}/{outs[true].Count} sequences identical"));
        }
    }
    if (big)
    {
        double bytes = DecodeBound.WeightBytes(cfg.NEmbd, cfg.NLayer, cfg.VocabSize);
        double gemvIo = DecodeBound.GemvPassSeconds(cfg.NEmbd, cfg.NLayer, cfg.VocabSize, false, quick ? 2 : 5);
        double gemvOi = DecodeBound.GemvPassSeconds(cfg.NEmbd, cfg.NLayer, cfg.VocabSize, true, quick ? 2 : 5);
        double floorTokS = bandwidth * 1e9 / bytes;
        log($"decode floor: {bytes / 1e6:F0} MB of weights per token → ≤ {floorTokS:F1} tok/s at {bandwidth:F1} GB/s; GEMV pass [in,out] {gemvIo * 1e3:F1} ms, [out,in] {gemvOi * 1e3:F1} ms");
        decodeRows.Add([name, $"{bytes / 1e6:F0}", $"{floorTokS:F1}", $"{1 / gemvIo:F1}", $"{1 / gemvOi:F1}", G1(gen, "1kv"), G1(gen, "1")]);
    }
    string G(string k) => gen.TryGetValue(k, out var v) ? v.ToString("F1") : "–";
    rows.Add([name, $"{nParams / 1e6:F1}M", $"{b}×{t}", fwd.ToString("F0"), sft.ToString("F0"), $"{mfu:P1}",
        $"{newTokens}", G("1kv"), G("1"), G("16kv"), G("16"),
        gen.ContainsKey("1") ? $"{gen["1kv"] / gen["1"]:F1}×" : "–"]);
    WriteReport(false);
}

// ---- DPO pairs/s with and without the reference log-prob cache ----
foreach (var (name, cfg, steps) in new List<(string, Gpt2Config, int)> { (configs[0].name, configs[0].cfg, quick ? 4 : 20) }
             .Concat(quick ? [] : [(configs[1].name, configs[1].cfg, 6), (configs[2].name, configs[2].cfg, 4)]))
{
    log($"== DPO {name}");
    var res = PreferenceBench.Run(() => new Gpt2Model(cfg with { VocabSize = Math.Max(cfg.VocabSize, 50257), EosTokenId = 50256, BosTokenId = 50256 }), steps,
        Path.Combine(Path.GetTempPath(), $"detox-bench-dpo-{Environment.ProcessId}"));
    foreach (var r in res) log($"DPO {name} {r.Mode}: {r.PairsPerSecond:F2} pairs/s (train loop), wall {r.WallSeconds:F1} s, first loss {r.FirstLoss:F6}");
    var (c, l, a) = (res[0], res[1], res[2]);
    checks.Add(($"{name}: DPO first-step loss is ln 2 (policy = reference) with and without the cache, and with --precision auto",
        new[] { c, l, a }.All(x => Math.Abs(x.FirstLoss - Math.Log(2)) < 1e-4), $"{c.FirstLoss:F6} / {l.FirstLoss:F6} / {a.FirstLoss:F6} ({a.Mode}) vs {Math.Log(2):F6}"));
    dpoRows.Add([name + (cfg.VocabSize < 50257 ? " (vocab 50257)" : ""), $"{c.Steps}", c.PairsPerSecond.ToString("F2"), l.PairsPerSecond.ToString("F2"),
        $"{c.PairsPerSecond / l.PairsPerSecond:F2}×", $"{a.PairsPerSecond:F2} ({a.Mode.Split("= ")[^1]})", $"{a.PairsPerSecond / c.PairsPerSecond:F2}×",
        double.IsNaN(a.SteadyStepsOnly) ? "–" : a.SteadyStepsOnly.ToString("F2"),
        c.WallSeconds.ToString("F1"), l.WallSeconds.ToString("F1"), a.WallSeconds.ToString("F1")]);
    WriteReport(false);
}

// ---- the flat-buffer optimizers against TorchSharp's on real toy steps (default toy model, bf16-mixed) ----
foreach (var dpo in new[] { false, true })
{
    var (d, same) = ToyAb.Equality(dpo, true, quick ? 2 : 4);
    string which = dpo ? "RMSprop (DPO step)" : "AdamW (pretraining step)";
    log($"fused {which}: max |Δweight| {d:E2} vs TorchSharp, losses identical {same}");
    checks.Add(($"default toy model: fused {which} = torch.optim after {(quick ? 2 : 4) + 1} bf16-mixed steps", d < 1e-5, $"max |Δweight| {d:E2}, losses bit-identical: {same}"));
}
WriteReport(false);

// ---- memory: RSS over 200 steps (toy config) ----
{
    log("== memory");
    torch.manual_seed(0);
    var cfg = configs[0].cfg;
    using var model = new Gpt2Model(cfg);
    var gen = new Random(1);
    int[][] prompts = Enumerable.Range(0, 4).Select(i => Enumerable.Range(0, 8 + i).Select(_ => gen.Next(cfg.VocabSize - 1)).ToArray()).ToArray();
    int memNew = quick ? 4 : 16;
    memRows.Add(RssOver($"generation (batch 4 ragged, {memNew} new tokens, KV cache)", 200, _ =>
        Gen.Generate(model, prompts, new GenerationOptions { MaxNewTokens = memNew, StopAtEos = false })));
    using var ids = quick ? torch.randint(0, cfg.VocabSize, [2, 32], ScalarType.Int64) : torch.randint(0, cfg.VocabSize, [8, 64], ScalarType.Int64);
    string shape = $"{ids.shape[0]}×{ids.shape[1]}";
    memRows.Add(RssOver($"scoring (LogProbs.OfTokens, {shape})", 200, _ =>
    {
        using var scope = torch.NewDisposeScope();
        using var ng = torch.no_grad();
        LogProbs.OfTokens(model, ids).sum().item<float>();
    }));
    model.train();
    using var opt = torch.optim.AdamW(model.parameters(), 1e-4);
    memRows.Add(RssOver($"SFT step (forward+backward+AdamW, {shape})", 200, _ => SftStep(model, opt, ids)));
    model.eval();
    log("memory done");
}
// ---- the study's wall time on the default config (issue 22): --quick always in a full bench run, the full study with
// --study-full (≈ 30 min on 2 cores); a run dir kept with --study-dir DIR is reused stage by stage ----
if (!quick)
{
    foreach (bool full in args.Contains("--study-full") ? new[] { false, true } : new[] { false })
    {
        var sdIdx = Array.IndexOf(args, "--study-dir");
        string dir = sdIdx >= 0 && sdIdx + 1 < args.Length ? Path.Combine(args[sdIdx + 1], full ? "full" : "quick")
            : Path.Combine(Path.GetTempPath(), $"detox-bench-study-{(full ? "full" : "quick")}-{Environment.ProcessId}");
        log($"== study ({(full ? "full" : "--quick")}) into {dir}");
        var w = StudyTime.RunStudy(FindRepoRoot(), dir, full);
        studyReports.Add((full ? "full" : "--quick", w is double ok ? StudyTime.Report(dir, ok, LoadAverage()) : "detox study failed (see the bench's stderr)"));
        WriteReport(false);
    }
}
WriteReport(true);
log($"wrote {outPath}");
foreach (var (what, ok, detail) in checks) Console.Error.WriteLine($"{(ok ? "PASS" : "FAIL")}: {what} — {detail}");
return checks.All(c => c.ok) ? 0 : 1;

// ================= helpers =================

// A count option's value: every count is ≥ 1 except --pairs (0: all of them); anything else is one line and exit code 2.
int Arg(string flag, int dflt)
{
    int i = Array.IndexOf(args, flag);
    if (i < 0 || i + 1 >= args.Length) return dflt;
    int v = IntArg(flag, args[i + 1]), min = flag == "--pairs" ? 0 : 1;
    return v >= min ? v : Usage<int>($"{flag}: expected a count ≥ {min}, got {v}");
}
// A flag's integer value, or one line naming the flag and exit code 2.
static int IntArg(string flag, string value) =>
    int.TryParse(value, NumberStyles.Integer, CultureInfo.InvariantCulture, out int v) ? v : Usage<int>($"{flag}: expected an integer, got '{value}'");
// Bad bench arguments: one line on stderr naming what is wrong, exit code 2 (nothing has been written yet).
static T Usage<T>(string message) { Console.Error.WriteLine($"bench: {message}"); Environment.Exit(2); return default!; }
// A mode on one named config (`FLAG NAME`): the context line, the mode's lines as they come, the load average at the
// end; null when FLAG is not given.
int? ConfigMode(string flag, Func<string, Gpt2Config, IEnumerable<string>> lines)
{
    int at = Array.IndexOf(args, flag);
    if (at < 0) return null;
    string name = ModeConfig(at);
    var cfg = ConfigNamed(name);
    Console.WriteLine($"load average at start {LoadAverage()}; threads {torch.get_num_threads()}; {NativeSettings()}");
    foreach (var line in lines(name, cfg)) Console.WriteLine(line);
    Console.WriteLine($"load average at end {LoadAverage()}");
    return 0;
}
string ArgS(string flag, string dflt) { int i = Array.IndexOf(args, flag); return i >= 0 && i + 1 < args.Length ? args[i + 1] : dflt; }

// the config name after a mode flag (e.g. `--generation 355m`), 124m when none is given
string ModeConfig(int flagIdx) => flagIdx + 1 < args.Length && !args[flagIdx + 1].StartsWith("--") ? args[flagIdx + 1] : "124m";

static Gpt2Config ToyConfig() => new() { VocabSize = 2000, NEmbd = 128, NLayer = 4, NHead = 4, NPositions = 256, EosTokenId = 1999, BosTokenId = 1999 };

static Gpt2Config ConfigNamed(string name) => name switch
{
    "124m" => Gpt2Config.Small,
    "355m" => Gpt2Config.Medium,
    "toy" => ToyConfig(),
    // the default study's model (pretrain-toy defaults: 4 layers × 256, MLP 1024, the compact vocabulary of world v3.1)
    "toy-study" => new() { VocabSize = 2723, NEmbd = 256, NLayer = 4, NHead = 4, NPositions = 96, EosTokenId = 2722, BosTokenId = 2722 },
    _ => Usage<Gpt2Config>($"config: expected 124m, 355m, toy or toy-study, got '{name}'"),
};

static string FindRepoRoot()
{
    var d = new DirectoryInfo(Directory.GetCurrentDirectory());
    while (d is not null && !File.Exists(Path.Combine(d.FullName, "DetoxSharp.sln"))) d = d.Parent;
    return d?.FullName ?? Directory.GetCurrentDirectory();
}

/// No-grad forwards of a random batch: <paramref name="warmup"/> untimed, then <paramref name="reps"/> timed.
static double ForwardTokensPerSec(Gpt2Model model, int b, int t, int reps, int warmup = 1)
{
    model.eval();
    using var ids = torch.randint(0, model.VocabSize, [b, t], ScalarType.Int64);
    using var ng = torch.no_grad();
    for (int w = 0; w < warmup; w++)
        using (var s = torch.NewDisposeScope()) model.Forward(ids);
    var sw = Stopwatch.StartNew();
    for (int r = 0; r < reps; r++)
    {
        using var s = torch.NewDisposeScope();
        model.Forward(ids);
    }
    return (double)b * t * reps / sw.Elapsed.TotalSeconds;
}

/// Next-token cross-entropy over all positions, logits cast to fp32 (as the trainers do for bf16 models).
static Tensor LmLoss(ICausalLM model, Tensor ids)
{
    var logits = model.Forward(ids).to(ScalarType.Float32);
    long v = logits.shape[^1], t = ids.shape[1];
    return torch.nn.functional.cross_entropy(logits.narrow(1, 0, t - 1).reshape(-1, v), ids.narrow(1, 1, t - 1).reshape(-1));
}

static float SftStep(ICausalLM model, torch.optim.Optimizer opt, Tensor ids)
{
    using var scope = torch.NewDisposeScope();
    var loss = LmLoss(model, ids);
    opt.zero_grad();
    loss.backward();
    opt.step();
    return loss.item<float>();
}

/// One `--precision bf16-mixed` SFT step as SftTrainer runs it: bf16 forward/backward on the working copy, logits cast
/// to fp32 for the loss, bf16 grads cast into the fp32 master's .grad, AdamW on the master, master → bf16 copy.
static float SftMixedStep(MixedPrecision mp, torch.optim.Optimizer opt, Tensor ids)
{
    using var scope = torch.NewDisposeScope();
    var loss = LmLoss(mp.Working, ids);
    opt.zero_grad();
    loss.backward();
    mp.AccumulateGradients();
    opt.step();
    mp.SyncWorking();
    return loss.item<float>();
}

/// <paramref name="warmup"/> untimed steps (≥ 1: the first allocates the optimizer's state), then <paramref name="steps"/>
/// timed ones; the first loss is the first warm-up step's.
static (double tokPerSec, double secPerStep, float firstLoss, float lastLoss) TimeSteps(Func<float> step, int b, int t, int steps, int warmup = 1)
{
    float first = step(), last = first;
    for (int w = 1; w < warmup; w++) last = step();
    var sw = Stopwatch.StartNew();
    for (int i = 0; i < steps; i++) last = step();
    double sec = sw.Elapsed.TotalSeconds;
    return ((double)b * t * steps / sec, sec / steps, first, last);
}

/// The fp32 SFT step: by default with TorchSharp's AdamW; with <paramref name="detoxOptimizer"/> with the AdamW that
/// <c>detox sft --precision fp32</c> trains with (<see cref="Optimizers.Create"/>: the flat-buffer one), the same updates.
static (double tokPerSec, double secPerStep, float firstLoss, float lastLoss) SftTokensPerSec(Gpt2Model model, int b, int t, int steps, bool detoxOptimizer = false, int warmup = 1)
{
    model.train();
    using var ids = torch.randint(0, model.VocabSize, [b, t], ScalarType.Int64);
    using var opt = AdamW(model, 1e-4, detoxOptimizer);
    var r = TimeSteps(() => SftStep(model, opt, ids), b, t, steps, warmup);
    model.eval();
    return r;
}

/// The bf16-mixed SFT step: by default with TorchSharp's AdamW (zeroed master gradients, then the bf16 ones added, and
/// a sync of the working copy after the step); with <paramref name="detoxOptimizer"/> with the optimizer and precision
/// hand-over of <c>detox sft</c>'s training loop (TrainingLoop): the fused AdamW that <see cref="Optimizers.Create"/>
/// gives, writing the bf16 working weights itself (<c>MirrorUpdates</c>), the first micro-batch's gradients replacing
/// the master's. No clipping in either. The same values either way (TorchSharp's AdamW with its defaults has weight
/// decay 0): the losses are equal to the bit.
static (double tokPerSec, double secPerStep, float firstLoss, float lastLoss) SftMixedTokensPerSec(Gpt2Model model, int b, int t, int steps, bool detoxOptimizer = false, int warmup = 1)
{
    model.train();
    using var mp = new MixedPrecision(model);
    using var ids = torch.randint(0, model.VocabSize, [b, t], ScalarType.Int64);
    using var opt = AdamW(model, 1e-5, detoxOptimizer);
    if (detoxOptimizer && (opt is not FusedOptimizer fused || !mp.MirrorUpdates(fused)))
        throw new InvalidOperationException("the fused AdamW did not take over the working copy's weights");
    var r = TimeSteps(() => detoxOptimizer ? SftMixedDetoxStep(mp, opt, ids) : SftMixedStep(mp, opt, ids), b, t, steps, warmup);
    model.eval();
    return r;
}

/// AdamW over the model's parameters: TorchSharp's <c>torch.optim.AdamW</c>, or with <paramref name="detox"/> the one
/// <c>detox sft</c> trains with (<see cref="Optimizers.Create"/>: the flat-buffer one; the same updates).
static torch.optim.Optimizer AdamW(Gpt2Model model, double lr, bool detox) => detox
    ? Optimizers.Create(OptimizerKind.AdamW, model.parameters(), new OptimizerSettings { LearningRate = lr })
    : torch.optim.AdamW(model.parameters(), lr);

/// <summary>One step of <see cref="SftMixedTokensPerSec"/> with <c>detox sft</c>'s hand-over (the optimizer writes the
/// working copy).</summary>
static float SftMixedDetoxStep(MixedPrecision mp, torch.optim.Optimizer opt, Tensor ids)
{
    using var scope = torch.NewDisposeScope();
    var loss = LmLoss(mp.Working, ids);
    loss.backward();
    mp.AccumulateGradients(overwrite: true, divisor: 1);
    opt.step();
    mp.SyncTrained();
    return loss.item<float>();
}

/// `--dtype bfloat16`: the whole model, grads and AdamW state in bf16 (logits cast to fp32 for the loss, as the trainer does).
static (double tokPerSec, double secPerStep, float firstLoss, float lastLoss) SftPureBf16TokensPerSec(Gpt2Model model, int b, int t, int steps)
{
    using var bf = (Gpt2Model)model.Clone();
    bf.to(ScalarType.BFloat16);
    bf.train();
    using var ids = torch.randint(0, model.VocabSize, [b, t], ScalarType.Int64);
    using var opt = torch.optim.AdamW(bf.parameters(), 1e-5);
    return TimeSteps(() => SftStep(bf, opt, ids), b, t, steps);
}

static string G1(Dictionary<string, double> gen, string k) => gen.TryGetValue(k, out var v) ? v.ToString("F1") : "–";

static (double TokPerSec, List<int[]> Tokens) GenerationTokensPerSec(Gpt2Model model, int batch, int promptLen, int newTokens, bool kv)
{
    var rnd = new Random(7);
    var prompts = Enumerable.Range(0, batch).Select(_ => Enumerable.Range(0, promptLen).Select(_ => rnd.Next(model.VocabSize - 1)).ToArray()).ToList();
    var o = new GenerationOptions { MaxNewTokens = newTokens, Greedy = true, StopAtEos = false, UseKvCache = kv, BatchSize = batch };
    Gen.Generate(model, prompts.Take(1).ToList(), o with { MaxNewTokens = 2 }); // warm-up
    var sw = Stopwatch.StartNew();
    var r = Gen.Generate(model, prompts, o);
    return (r.Sum(x => x.Length) / sw.Elapsed.TotalSeconds, r);
}

// what NativeSetup did to the allocator and to MKL's kernel choice, for the figures' context lines
static string NativeSettings(bool cpu = true) => $"{DetoxSharp.NativeSetup.Description}; MKL: {DetoxSharp.NativeSetup.MklDescription}"
    + (cpu ? $"; CPU: {CpuLine()}" : "");
// the CPU (name, family/model, AMD generation, vector flags) and its measured FMA peak, for the figures' context lines
static string CpuLine() => $"{DetoxSharp.Training.CpuFeatures.Description}; {CpuPeak.Line()}";
static string LoadAverage() =>
    File.Exists("/proc/loadavg") ? File.ReadAllText("/proc/loadavg").Split(' ')[0] : "n/a";

static long RssKb(string field)
{
    foreach (var line in File.ReadLines("/proc/self/status"))
        if (line.StartsWith(field + ":")) return long.Parse(line.Split([' ', '\t'], StringSplitOptions.RemoveEmptyEntries)[1]);
    return -1;
}

string[] RssOver(string what, int steps, Action<int> step)
{
    long at20 = 0;
    var sw = Stopwatch.StartNew();
    for (int i = 1; i <= steps; i++)
    {
        step(i);
        if (i == 20) { GC.Collect(); GC.WaitForPendingFinalizers(); at20 = RssKb("VmRSS"); }
    }
    GC.Collect(); GC.WaitForPendingFinalizers();
    long at200 = RssKb("VmRSS");
    double growth = 100.0 * (at200 - at20) / at20;
    log($"{what}: RSS {at20 / 1024.0:F0} → {at200 / 1024.0:F0} MiB ({growth:+0.0;-0.0;0.0}%)");
    return [what, $"{at20 / 1024.0:F0}", $"{at200 / 1024.0:F0}", $"{growth:+0.00;-0.00;0.00}%", $"{sw.Elapsed.TotalSeconds / steps * 1000:F1}"];
}

void WriteReport(bool complete)
{
    var cpu = CpuLine();
    var tsVersion = typeof(torch).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion.Split('+')[0]
                    ?? typeof(torch).Assembly.GetName().Version?.ToString();
    var libtorch = Assembly.GetExecutingAssembly().GetCustomAttributes<AssemblyMetadataAttribute>().FirstOrDefault(a => a.Key == "LibTorch")?.Value;
    var sb = new StringBuilder();
    sb.AppendLine(BenchUsage.ReportMarker);
    sb.AppendLine("# Benchmark report");
    sb.AppendLine();
    sb.AppendLine($"Measured {started:yyyy-MM-dd HH:mm} UTC by `dotnet run -c Release --project bench/DetoxSharp.Bench --{(quick ? " --quick" : "")}{(thrIdx >= 0 ? $" --threads {threads}" : "")}`" + (complete ? "." : " — **incomplete: the run was still going when this was written**."));
    sb.AppendLine();
    sb.AppendLine($"- CPU: {cpu}; threads: {threads} (torch.set_num_threads; default = Environment.ProcessorCount = {Environment.ProcessorCount})");
    sb.AppendLine($"- TorchSharp {tsVersion}, {libtorch}, .NET {Environment.Version}; allocator: {(Environment.GetEnvironmentVariable("LD_PRELOAD") is { Length: > 0 } pre ? $"LD_PRELOAD={pre}" : "glibc malloc")}, {NativeSettings(cpu: false)}");
    sb.AppendLine($"- Mode: {(quick ? "quick (smaller batches, fewer steps, no 355M; generation 32 new tokens for toy, 8 new tokens at batch 1 only for 124M; memory steps on smaller batches)" : "full")}");
    sb.AppendLine($"- Load average (1 min) at start {loadAtStart}, when written {LoadAverage()} — with a load above the core count the machine was shared with other jobs while measuring, so every figure is noisy and pessimistic (libtorch's OpenMP threads degrade badly when oversubscribed).");
    sb.AppendLine("- Random weights; fp32 unless stated. Forward = no-grad forward of a full batch. SFT step = forward + LM cross-entropy + backward + AdamW.");
    sb.AppendLine("- MFU = SFT tokens/s × (6·params + 12·layers·d·T) FLOPs/token ÷ measured fp32 matmul peak.");
    sb.AppendLine("- Generation: greedy, prompts of 16 random tokens, tokens/s counts new tokens of all prompts; \"no KV\" recomputes the whole sequence each step.");
    sb.AppendLine();
    sb.AppendLine("## Matrix-multiply peak (torch.mm; square sizes and the 124M step's GEMM shapes; best round of each)");
    sb.AppendLine();
    sb.AppendLine("The peak is the best of all shapes below (bold); MFU divides by the fp32 one.");
    sb.AppendLine();
    sb.AppendLine("| shape (M×K→N) | fp32 GFLOP/s | bf16 GFLOP/s |");
    sb.AppendLine("|---|---:|---:|");
    foreach (var shape in peakRows.Select(r => r.shape).Distinct())
    {
        string Cell(string dn) => peakRows.FirstOrDefault(r => r.shape == shape && r.dtype == dn) is { shape: not null } r ? r.gflops.ToString("F1") : "–";
        sb.AppendLine($"| {shape} | {Cell("fp32")} | {Cell("bf16")} |");
    }
    foreach (var (k, v) in peaks) sb.AppendLine($"| **peak {(k == "Float32" ? "fp32" : "bf16")}** | {(k == "Float32" ? $"**{v:F1}**" : "")} | {(k == "Float32" ? "" : $"**{v:F1}**")} |");
    sb.AppendLine();
    sb.AppendLine("## Throughput");
    sb.AppendLine();
    sb.AppendLine("| config | params | batch×T | forward tok/s | SFT step tok/s | MFU (fp32) | new tokens | gen b1 KV tok/s | gen b1 no-KV tok/s | gen b16 KV tok/s | gen b16 no-KV tok/s | KV speed-up (b1) |");
    sb.AppendLine("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    foreach (var r in rows) sb.AppendLine("| " + string.Join(" | ", r) + " |");
    sb.AppendLine();
    sb.AppendLine("## Mixed precision (SFT step, same config and batch as above)");
    sb.AppendLine();
    sb.AppendLine("bf16-mixed = `--precision bf16-mixed`: bf16 forward + backward on a working copy, logits cast to fp32 for the loss, bf16 grads cast into the fp32 master's grads, AdamW (fp32 state) on the master, master copied back to bf16. Pure bf16 = `--dtype bfloat16`: weights, grads and AdamW state all bf16. The three are measured interleaved in rounds (fp32, mixed, pure, fp32, …); cells give the median (min–max) tok/s over the rounds, ratios are of medians. Load = 1-min load average after the row.");
    sb.AppendLine();
    sb.AppendLine("| config | batch×T | rounds | fp32 tok/s | bf16-mixed tok/s | bf16-mixed ÷ fp32 | pure bf16 tok/s | pure bf16 ÷ fp32 | load |");
    sb.AppendLine("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    foreach (var r in mixedRows) sb.AppendLine("| " + string.Join(" | ", r) + " |");
    sb.AppendLine();
    sb.AppendLine($"## Batch-1 decode against its memory-bandwidth floor (read bandwidth {bandwidth:F1} GB/s, torch sum over a large fp32 buffer)");
    sb.AppendLine();
    sb.AppendLine("Each KV-cached step multiplies one row by every weight matrix, so it must read all weights once: tokens/s ≤ bandwidth ÷ weight bytes. The GEMV columns time one such pass of bare 1-row products (no attention, norms or sampling).");
    sb.AppendLine();
    sb.AppendLine("| config | weight MB | floor tok/s (bandwidth) | bare GEMV pass tok/s, [in,out] (Conv1D) | bare GEMV pass tok/s, [out,in] (linear) | gen b1 KV tok/s | gen b1 no-KV tok/s |");
    sb.AppendLine("|---|---:|---:|---:|---:|---:|---:|");
    foreach (var r in decodeRows) sb.AppendLine("| " + string.Join(" | ", r) + " |");
    sb.AppendLine();
    sb.AppendLine("## DPO pairs/s with and without the reference log-prob cache (PreferenceTrainer, batch 4 pairs, ≈ 40+40 tokens per sequence, RMSprop)");
    sb.AppendLine();
    sb.AppendLine("Train-loop pairs/s exclude the reference log-probs scored before the loop (fp32: all pairs; auto: the validation pairs) and the final checkpoint saves; wall seconds include them. Under auto the reference's bf16 log-probs of a batch are scored when the loop first reaches it, so the auto column includes them (all-in), like the live column.");
    sb.AppendLine();
    sb.AppendLine("fp32 columns: the library's default precision. \"auto\": the CLI's and the study's default `--precision auto` (bf16-mixed on a CPU with native bf16, whose training steps compare the bf16 policy with the reference's bf16 copy), cached reference.");
    sb.AppendLine();
    sb.AppendLine("| config | steps | fp32 cached pairs/s | fp32 live-reference pairs/s | cached ÷ live | auto cached pairs/s, all-in (resolved) | auto ÷ fp32 cached | auto steady pairs/s, steps alone | fp32 cached wall s | fp32 live wall s | auto wall s |");
    sb.AppendLine("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    foreach (var r in dpoRows) sb.AppendLine("| " + string.Join(" | ", r) + " |");
    sb.AppendLine();
    sb.AppendLine("## Correctness checks (CI runs these in quick mode; the numbers above are not checked)");
    sb.AppendLine();
    foreach (var (what, ok, detail) in checks) sb.AppendLine($"- {(ok ? "PASS" : "FAIL")}: {what} — {detail}");
    sb.AppendLine();
    sb.AppendLine("## Memory (toy config, RSS after step 20 vs after step 200, after a GC)");
    sb.AppendLine();
    sb.AppendLine("| workload | RSS @20 MiB | RSS @200 MiB | growth | ms/step |");
    sb.AppendLine("|---|---:|---:|---:|---:|");
    foreach (var r in memRows) sb.AppendLine("| " + string.Join(" | ", r) + " |");
    sb.AppendLine();
    sb.AppendLine($"Peak RSS of the whole run (VmHWM): {RssKb("VmHWM") / 1024.0:F0} MiB.");
    if (studyReports.Count > 0)
    {
        sb.AppendLine();
        sb.AppendLine("## Study wall time (default config; `detox study` as a child process, stage times from its manifest.json)");
        sb.AppendLine();
        sb.AppendLine("Stages run two at a time (`--jobs 2`), so the stage seconds add up to more than the process wall time. The full study runs only with `--study-full`.");
        foreach (var (kind, text) in studyReports)
        {
            sb.AppendLine();
            sb.AppendLine(kind == "full" ? "### `detox study`" : "### `detox study --quick`");
            sb.AppendLine();
            sb.AppendLine(text.TrimEnd());
        }
    }
    Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(outPath))!);
    var tmp = outPath + ".tmp";
    File.WriteAllText(tmp, sb.ToString());
    File.Move(tmp, outPath, overwrite: true);
}

using DetoxSharp.Checkpoints;
using DetoxSharp.Data;
using DetoxSharp.Models;
using DetoxSharp.Text;
using DetoxSharp.Training;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;
using PrefTiny = DetoxSharp.Tests.Preference.Tiny;
using PreferenceTrainerTests = DetoxSharp.Tests.Preference.PreferenceTrainerTests;
using static DetoxSharp.Tests.CliRunner;

namespace DetoxSharp.Tests.Toy;

/// <summary>bf16 mixed precision (fp32 master + bf16 working copy) in SFT and DPO.</summary>
public class MixedPrecisionTests(ITestOutputHelper output)
{
    static string Temp(string name) => Path.Combine(Path.GetTempPath(), $"detox-mixed-{name}-{Guid.NewGuid():N}");

    static readonly string[] Texts = Enumerable.Range(0, 24).Select(i =>
        $"the river Avon flows through town {i % 6} . the market sells cheese every monday .").ToArray();

    static (Gpt2Model Model, Gpt2Tokenizer Tok) Tiny(long seed = 7, int d = 32, int layers = 1)
    {
        var tok = Gpt2Tokenizer.Default().Compact(Texts);
        torch.manual_seed(seed);
        var m = new Gpt2Model(new Gpt2Config { VocabSize = tok.VocabSize, NEmbd = d, NLayer = layers, NHead = 2, NPositions = 32, EosTokenId = tok.EosTokenId, BosTokenId = tok.EosTokenId });
        return (m, tok);
    }

    /// <summary>Same dtype, shape and every element equal (bit-exact for finite values).</summary>
    static bool Same(Tensor a, Tensor b) => a.dtype == b.dtype && a.shape.SequenceEqual(b.shape) && torch.equal(a, b).all().item<bool>();

    sealed class Collect<T>(List<T> into) : IProgress<T> { public void Report(T value) => into.Add(value); }

    static List<double> SftLosses(ICausalLM m, Gpt2Tokenizer tok, SftOptions o)
    {
        var list = new List<TrainingProgress>();
        var r = new SftTrainer(m, tok, o).Train(Texts.Select(SftExample.Text).ToList(), new Collect<TrainingProgress>(list));
        Assert.True(r.Completed);
        return list.Where(p => p.Phase == TrainingPhase.Train).Select(p => p.Train.Loss).ToList();
    }

    [Fact]
    public void SftLossCurveTracksFp32()
    {
        var (fp32, tok) = Tiny(11, d: 64, layers: 2);
        var mixed = (Gpt2Model)fp32.Clone();
        using var pure = (Gpt2Model)fp32.Clone();
        pure.to(ScalarType.BFloat16); // --dtype bfloat16: pure bf16, no master copy (not what the tracking claim is about)
        var o = new SftOptions { BatchSize = 4, GradientAccumulationSteps = 2, MaxSteps = 60, LearningRate = 3e-3, WarmupSteps = 5, Decay = DecayKind.Cosine, MaxLength = 16, Seed = 3 };
        var a = SftLosses(fp32, tok, o);
        var b = SftLosses(mixed, tok, o with { Precision = Precision.Bf16Mixed });
        var c = SftLosses(pure, tok, o);
        Assert.Equal(60, a.Count); Assert.Equal(60, b.Count);
        double maxAbs = 0, maxRel = 0; int worst = 0;
        for (int i = 0; i < a.Count; i++)
        {
            double d = Math.Abs(a[i] - b[i]);
            if (d > maxAbs) { maxAbs = d; worst = i + 1; }
            maxRel = Math.Max(maxRel, d / a[i]);
        }
        double pureAbs = a.Zip(c, (x, y) => Math.Abs(x - y)).Max();
        output.WriteLine($"fp32 loss {a[0]:F4} -> {a[^1]:F4}; bf16-mixed {b[0]:F4} -> {b[^1]:F4}; max |Δ| {maxAbs:F4} (step {worst}), max rel {maxRel:P2}");
        output.WriteLine($"pure bf16 (--dtype bfloat16) {c[0]:F4} -> {c[^1]:F4}; max |Δ| vs fp32 {pureAbs:F4} (reported, not asserted)");
        // every step within |Δ| ≤ 0.05 or 2 % of the fp32 loss
        for (int i = 0; i < a.Count; i++)
            Assert.True(Math.Abs(a[i] - b[i]) <= Math.Max(0.05, 0.02 * a[i]), $"step {i + 1}: fp32 {a[i]:F4} vs bf16-mixed {b[i]:F4}");
        Assert.True(a[^1] < a[0] - 2, $"fp32 loss {a[0]} -> {a[^1]}");
        Assert.True(b[^1] < b[0] - 2, $"bf16-mixed loss {b[0]} -> {b[^1]}");
        // the master really is the model that trained: its fp32 weights give the low loss
        Assert.Equal(ScalarType.Float32, mixed.DType);
        var seqs = SftTrainer.Tokenize(tok, Texts.Select(SftExample.Text).ToList(), 16);
        double evalA = SftTrainer.EvaluateLoss(fp32, seqs, 8), evalB = SftTrainer.EvaluateLoss(mixed, seqs, 8);
        output.WriteLine($"final eval loss fp32 {evalA:F4}, bf16-mixed master {evalB:F4}");
        Assert.True(Math.Abs(evalA - evalB) <= Math.Max(0.05, 0.02 * evalA), $"eval {evalA} vs {evalB}");
        Assert.True(c.All(double.IsFinite));
        fp32.Dispose(); mixed.Dispose();
    }

    [Fact]
    public void MasterKeepsUpdatesBelowBf16Resolution()
    {
        // LayerNorm gains are 1.0, where bf16's spacing is 2⁻⁷ ≈ 0.0078: Adam's first step moves each weight by ≈ lr = 1e-4,
        // far below half a bf16 ulp. The fp32 master keeps the step; a pure bf16 model rounds it away.
        var (m, tok) = Tiny(5);
        using var pure = (Gpt2Model)m.Clone();
        pure.to(ScalarType.BFloat16);
        const string gain = "h.0.ln_1.weight";
        var before = m.state_dict()[gain].clone();
        Assert.True(Same(before, torch.ones_like(before)));
        var o = new SftOptions { BatchSize = 4, MaxSteps = 1, LearningRate = 1e-4, MaxLength = 16, MaxGradNorm = 0 };
        new SftTrainer(m, tok, o with { Precision = Precision.Bf16Mixed }).Train(Texts.Select(SftExample.Text).ToList());
        new SftTrainer(pure, tok, o).Train(Texts.Select(SftExample.Text).ToList());

        var after = m.state_dict()[gain];
        Assert.Equal(ScalarType.Float32, after.dtype);
        var delta = (after - before).abs();
        long moved = delta.gt(0).sum().item<long>();
        double mean = delta.mean().item<float>();
        output.WriteLine($"{gain}: {moved}/{before.numel()} fp32 master entries moved, mean |Δ| {mean:E2} (lr 1e-4; bf16 half-ulp at 1.0 = {Math.Pow(2, -8):E2})");
        Assert.True(moved >= before.numel() * 9 / 10, $"only {moved} of {before.numel()} master entries changed");
        Assert.InRange(mean, 5e-5, 2e-4); // Adam's first step ≈ lr per entry
        // the same update rounded to bf16 is a no-op: pure bf16 training leaves the gain at exactly 1
        var pureGain = pure.state_dict()[gain];
        Assert.Equal(ScalarType.BFloat16, pureGain.dtype);
        Assert.True(Same(pureGain, torch.ones_like(pureGain)), "pure bf16 kept a sub-ulp update?");
        // and the master's update survives in fp32 even though its bf16 rounding is still 1
        Assert.True(Same(after.to(ScalarType.BFloat16), torch.ones_like(pureGain)));
        m.Dispose();
    }

    /// <summary>Backward of the SFT loss of 4 texts from <paramref name="from"/> on <paramref name="mp"/>'s working copy.</summary>
    static void WorkingBackward(MixedPrecision mp, Gpt2Tokenizer tok, int from)
    {
        var seqs = SftTrainer.Tokenize(tok, Texts.Skip(from).Take(4).Select(SftExample.Text).ToList(), 16);
        var (ids, mask, tgt) = SftTrainer.Collate(seqs, tok.EosTokenId, CPU);
        var (s, c) = SftTrainer.MaskedNll(mp.Working, ids, mask, tgt);
        (s / c).backward();
    }

    [Fact]
    public void FoldedFirstAndLastPassesGiveTheBitsOfZeroingAddingAndDividing()
    {
        var (a, tok) = Tiny(9);
        using var b = (Gpt2Model)a.Clone();
        a.train(); b.train();
        using var ma = new MixedPrecision(a);
        using var mb = new MixedPrecision(b);
        const string dropped = "h.0.ln_1.bias";
        Assert.Contains(dropped, a.named_parameters().Select(x => x.name));
        void Micro(MixedPrecision mp, int k)
        {
            WorkingBackward(mp, tok, 4 * k);
            // the first micro-batch "does not reach" one parameter: its master gradient must come out zero, not stale
            if (k == 0) mp.Working.Module.named_parameters().Single(x => x.name == dropped).parameter.grad = null;
        }
        long saved = FusedOptimizer.ChunkElements;
        FusedOptimizer.ChunkElements = 100; // ranges that end inside tensors (per thread)
        try
        {
            foreach (int micro in new[] { 1, 3 })
            {
                // reference: zeroed master gradients, plain accumulation, a separate division by Σ weight
                foreach (var p in a.parameters()) p.grad = torch.zeros_like(p);
                for (int k = 0; k < micro; k++) { Micro(ma, k); ma.AccumulateGradients(); }
                using (torch.no_grad()) foreach (var p in a.parameters()) p.grad!.div_(3.0);
                // folded: the master gradients hold another step's values, which the first micro-batch replaces
                foreach (var p in b.parameters()) p.grad = torch.full_like(p, 7.0);
                for (int k = 0; k < micro; k++) { Micro(mb, k); mb.AccumulateGradients(overwrite: k == 0, divisor: k == micro - 1 ? 3.0 : 1); }
                var gb = b.named_parameters().ToDictionary(x => x.name, x => x.parameter.grad!);
                foreach (var (name, p) in a.named_parameters())
                    Assert.True(Same(p.grad!, gb[name]), $"{micro} micro-batch(es), {name}: folded ≠ zero, add, divide");
                if (micro == 1) Assert.Equal(0, gb[dropped].count_nonzero().item<long>());
                Assert.True(gb.Values.Sum(g => g.count_nonzero().item<long>()) > 0);
            }
        }
        finally { FusedOptimizer.ChunkElements = saved; }
        a.Dispose();
    }

    [Fact]
    public void TheFusedOptimizerWritesTheWorkingCopyAsSyncingAfterTheStepWould()
    {
        var (a, tok) = Tiny(9);
        using var b = (Gpt2Model)a.Clone();
        using var c = (Gpt2Model)a.Clone();
        a.train(); b.train();
        using var ma = new MixedPrecision(a);
        using var mb = new MixedPrecision(b);
        using var oa = new FusedRMSprop(a.parameters(), lr: 1e-3);
        using var ob = new FusedRMSprop(b.parameters(), lr: 1e-3);
        Assert.True(mb.MirrorUpdates(ob));
        Assert.False(mb.MirrorUpdates(ob)); // once
        // an optimizer over other parameters than the master's trainable ones is refused, and nothing moves
        using (var mc = new MixedPrecision(c))
        using (var partial = new FusedRMSprop(c.parameters().Skip(1), lr: 1e-3))
        {
            var before = mc.Working.Module.named_parameters().ToDictionary(x => x.name, x => x.parameter.detach().clone());
            Assert.False(mc.MirrorUpdates(partial));
            Assert.Null(partial.Mirror);
            foreach (var (name, p) in mc.Working.Module.named_parameters()) Assert.True(Same(p, before[name]), name);
        }
        var workA = ma.Working.Module.named_parameters().ToList();
        var workB = mb.Working.Module.named_parameters().ToDictionary(x => x.name, x => x.parameter);
        for (int step = 0; step < 3; step++)
        {
            oa.zero_grad();
            WorkingBackward(ma, tok, 4 * step);
            ma.AccumulateGradients();
            oa.step();
            ma.SyncWorking();

            WorkingBackward(mb, tok, 4 * step);
            mb.AccumulateGradients(overwrite: true, divisor: 1);
            ob.step();
            mb.SyncTrained(); // nothing left to copy
            var masterB = b.named_parameters().ToDictionary(x => x.name, x => x.parameter);
            foreach (var (name, p) in a.named_parameters())
            {
                Assert.True(Same(p, masterB[name]), $"step {step + 1}, master {name}");
                Assert.True(Same(masterB[name].to(ScalarType.BFloat16), workB[name]), $"step {step + 1}, working {name} ≠ master rounded");
            }
            foreach (var (name, p) in workA) Assert.True(Same(p, workB[name]), $"step {step + 1}, working {name}");
        }
        mb.Dispose();
        Assert.Null(ob.Mirror); // the optimizer outlives the working copy: it stops writing it
        a.Dispose();
    }

    [Fact]
    public void GradientTransferIsExactAndAccumulatesInFp32()
    {
        var (m, tok) = Tiny(9);
        m.train();
        using var mp = new MixedPrecision(m);
        Assert.Equal(ScalarType.BFloat16, mp.Working.DType);
        var seqs = SftTrainer.Tokenize(tok, Texts.Select(SftExample.Text).ToList(), 16);
        var named = m.named_parameters().ToList();
        var work = mp.Working.Module.named_parameters().ToDictionary(x => x.name, x => x.parameter);

        Dictionary<string, Tensor> Backward(int from)
        {
            var (ids, mask, tgt) = SftTrainer.Collate(seqs.Skip(from).Take(4).ToList(), tok.EosTokenId, CPU);
            var (s, c) = SftTrainer.MaskedNll(mp.Working, ids, mask, tgt);
            (s / c).backward();
            return work.ToDictionary(kv => kv.Key, kv => kv.Value.grad!.clone());
        }

        var g1 = Backward(0);
        mp.AccumulateGradients();
        foreach (var (name, p) in named)
        {
            Assert.Equal(ScalarType.BFloat16, g1[name].dtype);
            Assert.Equal(ScalarType.Float32, p.grad!.dtype);
            Assert.True(Same(p.grad!, g1[name].to(ScalarType.Float32)), $"{name}: master grad ≠ bf16 grad");
            Assert.Null(work[name].grad); // working grads released: the next micro-batch's backward starts from none
        }
        Assert.True(g1.Values.Sum(g => g.count_nonzero().item<long>()) > 0);

        var g2 = Backward(4);
        mp.AccumulateGradients();
        foreach (var (name, p) in named)
        {
            var sum = g1[name].to(ScalarType.Float32) + g2[name].to(ScalarType.Float32);
            Assert.True(Same(p.grad!, sum), $"{name}: accumulated master grad ≠ fp32 sum of the bf16 grads");
        }

        // the bf16 gradient is a close approximation of the fp32 one (same weights, same batches)
        using var ref32 = (Gpt2Model)m.Clone();
        ref32.train();
        foreach (var from in new[] { 0, 4 })
        {
            var (ids, mask, tgt) = SftTrainer.Collate(seqs.Skip(from).Take(4).ToList(), tok.EosTokenId, CPU);
            var (s, c) = SftTrainer.MaskedNll(ref32, ids, mask, tgt);
            (s / c).backward();
        }
        var g32 = ref32.named_parameters().ToDictionary(x => x.name, x => x.parameter.grad!);
        double num = 0, den = 0;
        foreach (var (name, p) in named) { num += (p.grad! - g32[name]).pow(2).sum().item<float>(); den += g32[name].pow(2).sum().item<float>(); }
        double rel = Math.Sqrt(num / den);
        output.WriteLine($"relative L2 difference of bf16-mixed vs fp32 gradient: {rel:E2}");
        Assert.True(rel < 0.05, $"bf16 gradient relative error {rel}");

        // sync: after changing the master, the working copy is its bf16 rounding
        using (torch.no_grad()) foreach (var (_, p) in named) p.add_(0.01);
        mp.SyncWorking();
        foreach (var (name, p) in named)
            Assert.True(Same(work[name], p.to(ScalarType.BFloat16)), name);
        m.Dispose();
    }

    [Fact]
    public void MixedRejectsABf16Model()
    {
        var (m, tok) = Tiny();
        m.to(ScalarType.BFloat16);
        var e = Assert.Throws<InvalidInputException>(() =>
            new SftTrainer(m, tok, new SftOptions { MaxSteps = 1, Precision = Precision.Bf16Mixed }).Train(Texts.Select(SftExample.Text).ToList()));
        Assert.Contains("float32", e.Message);
        m.Dispose();
    }

    [Fact]
    public void ResumedMixedRunEndsWithBitIdenticalWeights()
    {
        var data = Texts.Select(SftExample.Text).ToList();
        var valid = Texts.Take(4).Select(SftExample.Text).ToList();
        SftOptions Opts(string dir) => new()
        {
            BatchSize = 4, GradientAccumulationSteps = 2, MaxSteps = 10, LearningRate = 5e-3, WarmupSteps = 3, Decay = DecayKind.Cosine, MaxLength = 16,
            OutputDir = dir, CheckpointEvery = 4, Validation = valid, EvalEvery = 5, Seed = 9, WeightDecay = 0.01, Precision = Precision.Bf16Mixed,
        };
        var (full, tok) = Tiny(1);
        var part = (Gpt2Model)full.Clone();
        string d1 = Temp("full"), d2 = Temp("resumed");
        Assert.True(new SftTrainer(full, tok, Opts(d1)).Train(data).Completed);

        var r2a = new SftTrainer(part, tok, Opts(d2) with { StopAfterSteps = 6 }).Train(data);
        Assert.Equal(6, r2a.Steps);
        part.Dispose();
        // the checkpoint holds the fp32 master
        using (var saved = HfCheckpoint.Load(Path.Combine(d2, "checkpoint", "model")))
            Assert.Equal(ScalarType.Float32, saved.Model.DType);
        var (resumed, _) = Tiny(99); // different initial weights: everything must come from the checkpoint
        var r2b = new SftTrainer(resumed, tok, Opts(d2) with { Resume = true }).Train(data);
        Assert.True(r2b.Completed);
        Assert.Equal(10, r2b.Steps);
        var sd = resumed.state_dict();
        foreach (var (name, p) in full.named_parameters())
            Assert.True(Same(p, sd[name]), $"{name} differs after resume");
        var m1 = MetricsLog.Read(Path.Combine(d1, "metrics.jsonl")).Where(o => o["phase"] is null).Select(o => (o["step"]!.GetValue<int>(), o["loss"]!.GetValue<double>())).ToList();
        var m2 = MetricsLog.Read(Path.Combine(d2, "metrics.jsonl")).Where(o => o["phase"] is null).Select(o => (o["step"]!.GetValue<int>(), o["loss"]!.GetValue<double>())).ToList();
        Assert.Equal(m1, m2);
        full.Dispose(); resumed.Dispose();
    }

    // the preference trainer tests' settings, without mid-run evaluation and with 8 steps
    static PreferenceTrainerOptions DpoOpts(string cache) => PreferenceTrainerTests.Opts(cache) with { EvalEvery = 0, MaxSteps = 8 };

    [Fact]
    public void DpoLossCurveTracksFp32()
    {
        var tok = Gpt2Tokenizer.Default();
        var data = PrefTiny.Pairs(24);
        var root = PrefTiny.TempDir("mixed-dpo");
        var cache = Path.Combine(root, "cache");
        using var fp32 = PrefTiny.Model();
        using var mixed = PrefTiny.Model();
        var r1 = new PreferenceTrainer(fp32, tok, DpoOpts(cache)).Train(data, Path.Combine(root, "fp32"));
        var r2 = new PreferenceTrainer(mixed, tok, DpoOpts(cache) with { Precision = Precision.Bf16Mixed }).Train(data, Path.Combine(root, "mixed"));
        // validation's fp32 reference log-probs are keyed on the fp32 weights, so the fp32 run's (full) cache file serves
        // the mixed run's validation pairs; the training steps' bf16 reference log-probs are added beside it
        Assert.False(r2.ReferenceCacheHit);
        Assert.Single(Directory.GetFiles(cache, "ref-*.bin").Where(f => !Path.GetFileName(f).StartsWith("ref-bf16-")));
        Assert.Single(Directory.GetFiles(cache, "ref-bf16-*.bin"));
        using (var again = PrefTiny.Model())
            Assert.True(new PreferenceTrainer(again, tok, DpoOpts(cache) with { Precision = Precision.Bf16Mixed, MaxSteps = 1 }).Train(data, Path.Combine(root, "again")).ReferenceCacheHit);
        List<double> Losses(string p) => MetricsLog.Read(p).Where(r => r["phase"] is null).Select(r => r["loss"]!.GetValue<double>()).ToList();
        var a = Losses(r1.MetricsPath); var b = Losses(r2.MetricsPath);
        Assert.Equal(8, a.Count); Assert.Equal(8, b.Count);
        output.WriteLine("fp32       " + string.Join(" ", a.Select(x => x.ToString("F4"))));
        output.WriteLine("bf16-mixed " + string.Join(" ", b.Select(x => x.ToString("F4"))));
        output.WriteLine($"max |Δ| {a.Zip(b, (x, y) => Math.Abs(x - y)).Max():F5}; step-1 |loss − ln 2|: fp32 {Math.Abs(a[0] - Math.Log(2)):E1}, bf16-mixed {Math.Abs(b[0] - Math.Log(2)):E1}");
        Assert.Equal(Math.Log(2), a[0], 4);
        // bf16 policy vs the reference's bf16 copy: the same rounding on both sides, so the reward starts at exactly 0
        Assert.Equal(Math.Log(2), b[0], 6);
        for (int i = 0; i < a.Count; i++)
            Assert.True(Math.Abs(a[i] - b[i]) <= Math.Max(0.01, 0.02 * a[i]), $"step {i + 1}: fp32 {a[i]:F4} vs bf16-mixed {b[i]:F4}");
        Assert.True(a[^1] < a[0] - 0.05 && b[^1] < b[0] - 0.05, $"loss did not fall: {a[^1]}, {b[^1]}");
        using var saved = HfCheckpoint.Load(r2.FinalDir);
        Assert.Equal(ScalarType.Float32, saved.Model.DType);
    }

    static double[] CacheValues(string file)
    {
        using var r = new BinaryReader(File.OpenRead(file));
        int n = r.ReadInt32();
        return Enumerable.Range(0, 2 * n).Select(_ => r.ReadDouble()).ToArray();
    }

    [Fact]
    public void DpoMixedComputesTheFp32ReferenceOnlyForTheValidationBatchesAndToTheBit()
    {
        // 40 pairs in reference batches of 2: the 4 validation pairs sit in at most 4 of the 20 batches
        var tok = Gpt2Tokenizer.Default();
        var data = PrefTiny.Pairs(40);
        var root = PrefTiny.TempDir("mixed-dpo-partial");
        using var mixedModel = PrefTiny.Model();
        var r = new PreferenceTrainer(mixedModel, tok, DpoOpts(Path.Combine(root, "cache-mixed")) with { Precision = Precision.Bf16Mixed, MaxSteps = 2 })
            .Train(data, Path.Combine(root, "mixed"));
        Assert.False(r.ReferenceCacheHit);
        var partial = CacheValues(Assert.Single(Directory.GetFiles(Path.Combine(root, "cache-mixed"), "ref-*.bin"), f => !Path.GetFileName(f).StartsWith("ref-bf16-")));
        var bf16 = CacheValues(Assert.Single(Directory.GetFiles(Path.Combine(root, "cache-mixed"), "ref-bf16-*.bin")));
        int computed = partial.Count(x => !double.IsNaN(x));
        output.WriteLine($"fp32 reference entries computed: {computed} of {partial.Length} (chosen and rejected per pair)");
        Assert.InRange(computed, 2 * 4, 2 * 4 * 2); // every validation pair, at most the 4 batches that hold them
        // the training steps' bf16 reference is scored in the first epoch's training batches as training reaches them:
        // 2 steps × 2 micro-batches × 2 pairs; the other 28 training pairs and the 4 validation pairs are left out
        Assert.Equal(2 * (40 - 8), bf16.Count(double.IsNaN));
        // the validation loss used the fp32 reference: finite
        var eval = MetricsLog.Read(r.MetricsPath).Where(x => x["phase"]?.GetValue<string>() == "eval").ToList();
        Assert.NotEmpty(eval);
        Assert.All(eval, e => Assert.True(double.IsFinite(e["eval/loss"]!.GetValue<double>())));
        // each computed value is the full fp32 pass's, to the bit (same batches of consecutive pairs)
        using var fp32Model = PrefTiny.Model();
        new PreferenceTrainer(fp32Model, tok, DpoOpts(Path.Combine(root, "cache-fp32")) with { MaxSteps = 1 }).Train(data, Path.Combine(root, "fp32"));
        var full = CacheValues(Assert.Single(Directory.GetFiles(Path.Combine(root, "cache-fp32"), "ref-*.bin")));
        Assert.DoesNotContain(full, double.IsNaN);
        for (int i = 0; i < full.Length; i++)
            if (!double.IsNaN(partial[i])) Assert.Equal(BitConverter.DoubleToInt64Bits(full[i]), BitConverter.DoubleToInt64Bits(partial[i]));
    }

    [Fact]
    public void TheBf16ReferenceIsScoredAsTrainingReachesItsBatchesWithTheBitsOfAFullPass()
    {
        // 40 pairs, 36 for training: one epoch is 9 steps of 2 micro-batches of 2
        var tok = Gpt2Tokenizer.Default();
        var data = PrefTiny.Pairs(40);
        var root = PrefTiny.TempDir("mixed-dpo-lazy");
        string lazyCache = Path.Combine(root, "cache-lazy"), fullCache = Path.Combine(root, "cache-full");
        PreferenceTrainResult Run(string cache, int steps, string outDir, bool resume = false)
        {
            using var m = PrefTiny.Model();
            return new PreferenceTrainer(m, tok, DpoOpts(cache) with { Precision = Precision.Bf16Mixed, MaxSteps = steps, Resume = resume }).Train(data, Path.Combine(root, outDir));
        }
        string Bf16File(string cache) => Assert.Single(Directory.GetFiles(cache, "ref-bf16-*.bin"));
        // 3 steps: only their 12 pairs are scored
        Assert.False(Run(lazyCache, 3, "short").ReferenceCacheHit);
        var partial = CacheValues(Bf16File(lazyCache));
        Assert.Equal(2 * 12, partial.Count(x => !double.IsNaN(x)));
        // the whole epoch in another cache: every training pair
        var whole = Run(fullCache, 9, "whole");
        var full = CacheValues(Bf16File(fullCache));
        Assert.Equal(2 * 36, full.Count(x => !double.IsNaN(x)));
        for (int i = 0; i < full.Length; i++)
            if (!double.IsNaN(partial[i])) Assert.Equal(BitConverter.DoubleToInt64Bits(full[i]), BitConverter.DoubleToInt64Bits(partial[i]));
        // a run over the whole epoch on the partial cache scores the rest, ends with the full pass's file and trains as
        // the run that scored everything itself
        var rest = Run(lazyCache, 9, "rest");
        Assert.False(rest.ReferenceCacheHit);
        Assert.Equal(full.Select(BitConverter.DoubleToInt64Bits), CacheValues(Bf16File(lazyCache)).Select(BitConverter.DoubleToInt64Bits));
        static List<string> Records(string path) => File.ReadLines(path).Select(l => System.Text.RegularExpressions.Regex.Replace(l, "\"[a-z_]+_per_second\":[^,}]+,?", "")).ToList();
        Assert.Equal(Records(whole.MetricsPath), Records(rest.MetricsPath));
        // and a third run scores nothing
        Assert.True(Run(lazyCache, 9, "again").ReferenceCacheHit);
    }

    [Fact]
    public void DpoMixedWithALiveReferenceStartsAtLn2()
    {
        var tok = Gpt2Tokenizer.Default();
        var root = PrefTiny.TempDir("mixed-dpo-live");
        using var m = PrefTiny.Model();
        var r = new PreferenceTrainer(m, tok, DpoOpts(Path.Combine(root, "cache")) with { Precision = Precision.Bf16Mixed, CacheReference = false, MaxSteps = 2 })
            .Train(PrefTiny.Pairs(24), Path.Combine(root, "live"));
        var first = MetricsLog.Read(r.MetricsPath).First(x => x["phase"] is null);
        Assert.Equal(Math.Log(2), first["loss"]!.GetValue<double>(), 6);
        Assert.Equal(0.0, first["rewards/margins"]!.GetValue<double>(), 9);
        Assert.Equal(Precision.Bf16Mixed, r.Run.Precision);
    }

    [Fact]
    public void DpoMixedResumeIsBitExact()
    {
        var tok = Gpt2Tokenizer.Default();
        var data = PrefTiny.Pairs(24);
        var root = PrefTiny.TempDir("mixed-dpo-resume");
        var o = DpoOpts(Path.Combine(root, "cache")) with { Precision = Precision.Bf16Mixed, MaxSteps = 6 };
        using var full = PrefTiny.Model();
        new PreferenceTrainer(full, tok, o).Train(data, Path.Combine(root, "full"));
        using var part = PrefTiny.Model();
        using var cts = new CancellationTokenSource();
        var r2 = new PreferenceTrainer(part, tok, o).Train(data, Path.Combine(root, "part"), new Collect(p => { if (p.Phase == TrainingPhase.Train && p.Step == 3) cts.Cancel(); }), cts.Token);
        Assert.True(r2.Cancelled);
        using var resumed = PrefTiny.Model(); // the starting weights again: the reference log-probs are keyed on them
        var r3 = new PreferenceTrainer(resumed, tok, o with { Resume = true }).Train(data, Path.Combine(root, "part"));
        Assert.Equal(6, r3.Steps);
        var b = resumed.state_dict();
        foreach (var (k, v) in full.state_dict())
            Assert.True(Same(v, b[k]), $"{k} differs after resume");
    }
}

public class MixedPrecisionCliTests
{
    [Fact]
    public void PrecisionFlagIsValidatedAndBf16MixedRuns()
    {
        var root = PrefTiny.TempDir("mixed-cli");
        var start = Path.Combine(root, "start");
        using (var m = PrefTiny.Model()) HfCheckpoint.Save(m, Gpt2Tokenizer.Default(), start, overwrite: true);
        var text = Path.Combine(root, "train.txt");
        File.WriteAllText(text, "the river flows through the town and the market sells cheese every monday morning.\n");
        var pairs = Path.Combine(root, "pairs.jsonl");
        JsonlReader.Write(pairs, PrefTiny.Pairs(8).Select(p => new System.Text.Json.Nodes.JsonObject { ["prompt"] = p.Prompt, ["chosen"] = p.Chosen, ["rejected"] = p.Rejected }));

        foreach (var cmd in new[] { "sft", "dpo", "adpo", "toxic-model" })
        {
            string[] common = ["--model", start, "--data", text, "--out", Path.Combine(root, cmd), .. cmd == "adpo" ? new[] { "--toxic-model", start } : []];
            var r = Run([cmd, .. common, "--precision", "bf16-mixed", "--dtype", "bfloat16"]);
            Assert.Equal(2, r.Rc);
            var line = Assert.Single(r.Err.Split('\n', StringSplitOptions.RemoveEmptyEntries));
            Assert.Contains("--precision bf16-mixed", line);
            Assert.Contains("--dtype", line);
            r = Run([cmd, .. common, "--precision", "fp16"]);
            Assert.Equal(2, r.Rc);
            Assert.Equal("detox: --precision: expected auto, fp32 or bf16-mixed, got 'fp16'", r.Err.Trim());
        }

        var ok = Run("sft", "--model", start, "--data", text, "--out", Path.Combine(root, "sft-ok"), "--precision", "bf16-mixed", "--max-steps", "2", "--batch-size", "1", "--max-length", "8", "--lr", "1e-3");
        Assert.True(ok.Rc == 0, ok.Err);
        using (var saved = HfCheckpoint.Load(Path.Combine(root, "sft-ok", "model"))) Assert.Equal(ScalarType.Float32, saved.Model.DType);
        ok = Run("dpo", "--model", start, "--data", pairs, "--out", Path.Combine(root, "dpo-ok"), "--precision", "bf16-mixed", "--max-steps", "2", "--batch-size", "2", "--validation-size", "2", "--warmup", "1", "--json");
        Assert.True(ok.Rc == 0, ok.Err);
    }
}

/// <summary><see cref="Precision.Auto"/>: bf16-mixed for a float32 model on a CPU with native bf16, fp32 elsewhere.</summary>
public class AutoPrecisionTests
{
    const string X86Bf16 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu vme avx2 avx512f avx512_bf16 avx512_vnni\nbugs\t\t: sysret_ss_attrs\n";
    const string X86NoBf16 = "processor\t: 0\nflags\t\t: fpu vme avx2 avx512f avx512_vnni\nbugs\t\t: avx512_bf16_bug\n";

    [Fact]
    public void CpuFlagsAreReadFromTheFlagsLineOnly()
    {
        Assert.True(CpuFeatures.FlagsHaveBf16(X86Bf16));
        Assert.False(CpuFeatures.FlagsHaveBf16(X86NoBf16)); // the name on another line (bugs) does not count
        Assert.True(CpuFeatures.FlagsHaveBf16("flags\t: sse2 amx_tile amx_bf16 amx_int8\n"));
        Assert.False(CpuFeatures.FlagsHaveBf16("flags\t: sse2 avx512_bf16x avx512f\n")); // whole flags only
        Assert.True(CpuFeatures.FlagsHaveBf16("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm sve\n")); // arm64
        Assert.False(CpuFeatures.FlagsHaveBf16("flags\t: bf16\n")); // x86 has no plain "bf16" flag
        Assert.False(CpuFeatures.FlagsHaveBf16(""));
    }

    /// <summary>The vendor and flags NativeSetup.InitMkl decides by: the first processor's lines only.</summary>
    [Fact]
    public void X86VendorAndFlagsReadTheFirstProcessor()
    {
        var (vendor, flags) = CpuFeatures.X86VendorAndFlags(X86Bf16 + "\nprocessor\t: 1\nvendor_id\t: GenuineIntel\nflags\t\t: sse2\n");
        Assert.Equal("AuthenticAMD", vendor);
        Assert.True(flags.SetEquals(["fpu", "vme", "avx2", "avx512f", "avx512_bf16", "avx512_vnni"]), string.Join(" ", flags)); // not the bugs line, not processor 1's
        var (none, empty) = CpuFeatures.X86VendorAndFlags("processor\t: 0\nFeatures\t: fp asimd\n"); // arm64
        Assert.Null(none);
        Assert.Empty(empty);
    }

    /// <summary>The CPU line of timings: the first processor's name, family and model, AMD's generation by family/model
    /// (Zen 4 and Zen 5 differ twice in AVX-512 width), and the vector flags.</summary>
    [Fact]
    public void CpuDescriptionNamesFamilyModelGenerationAndVectorFlags()
    {
        string Amd(int family, int model) => $"processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: {family}\nmodel\t\t: {model}\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n"
            + "processor\t: 1\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: other\nflags\t\t: sse2\n";
        Assert.Equal("AMD EPYC, family 25 model 17 (Zen 4), avx2 avx512f avx512_bf16", CpuFeatures.Describe(Amd(25, 17)));
        Assert.Equal("AMD EPYC, family 26 model 2 (Zen 5), avx2 avx512f avx512_bf16", CpuFeatures.Describe(Amd(26, 2)));
        Assert.Equal("AMD EPYC, family 25 model 1 (Zen 3), avx2 avx512f avx512_bf16", CpuFeatures.Describe(Amd(25, 1)));
        Assert.Equal("AMD EPYC, family 25 model 160 (Zen 4), avx2 avx512f avx512_bf16", CpuFeatures.Describe(Amd(25, 0xA0)));
        Assert.Equal("AMD EPYC, family 23 model 49 (Zen 2), avx2 avx512f avx512_bf16", CpuFeatures.Describe(Amd(23, 49)));
        // no generation for other vendors; no family line (arm64): the name alone
        Assert.Equal("Intel(R) Xeon(R), family 6 model 143, avx2 avx512f amx_bf16",
            CpuFeatures.Describe("vendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\nmodel name\t: Intel(R) Xeon(R)\nflags\t\t: avx2 avx512f amx_tile amx_bf16\n"));
        Assert.Equal("unknown CPU", CpuFeatures.Describe("processor\t: 0\nFeatures\t: fp asimd bf16\n"));
    }

    [Fact]
    public void AutoResolvesByModelDtypeAndCpu()
    {
        using var m = PrefTiny.Model();
        Assert.Equal(Precision.Bf16Mixed, MixedPrecision.Resolve(m, Precision.Auto, nativeBf16: true));
        Assert.Equal(Precision.ModelDType, MixedPrecision.Resolve(m, Precision.Auto, nativeBf16: false));
        // explicit choices are kept whatever the CPU
        Assert.Equal(Precision.ModelDType, MixedPrecision.Resolve(m, Precision.ModelDType, nativeBf16: true));
        Assert.Equal(Precision.Bf16Mixed, MixedPrecision.Resolve(m, Precision.Bf16Mixed, nativeBf16: false));
        m.to(ScalarType.BFloat16); // a bfloat16 model trains in its dtype: mixed precision needs an fp32 master
        Assert.Equal(ScalarType.BFloat16, m.DType);
        Assert.Equal(Precision.ModelDType, MixedPrecision.Resolve(m, Precision.Auto, nativeBf16: true));
    }

    [Fact]
    public void AutoTrainsExactlyAsTheResolvedPrecisionAndRecordsIt()
    {
        using var a = PrefTiny.Model();
        using var b = (Gpt2Model)a.Clone();
        var tok = Gpt2Tokenizer.Default();
        var texts = Enumerable.Range(0, 8).Select(i => SftExample.Text($"the river flows through town {i} and the market sells cheese .")).ToList();
        var o = new SftOptions { BatchSize = 2, MaxSteps = 3, LearningRate = 1e-3, WarmupSteps = 0, MaxLength = 12, Seed = 5 };
        var resolved = MixedPrecision.Resolve(a, Precision.Auto);
        var ra = new SftTrainer(a, tok, o with { Precision = Precision.Auto }).Train(texts);
        var rb = new SftTrainer(b, tok, o with { Precision = resolved }).Train(texts);
        Assert.Equal(resolved, ra.Run.Precision);
        Assert.Equal(resolved, rb.Run.Precision);
        Assert.Equal(CpuFeatures.NativeBf16 ? Precision.Bf16Mixed : Precision.ModelDType, resolved);
        foreach (var (pa, pb) in a.named_parameters().Zip(b.named_parameters()))
            Assert.True(torch.equal(pa.parameter, pb.parameter).all().item<bool>(), $"{pa.name} differs");
        // the resolved value, not "auto", is what the run recorded (a resume compares it)
        Assert.Equal(ra.Run.LastTrain!.Loss, rb.Run.LastTrain!.Loss);
    }

    [Fact]
    public void PrecisionReadsAndWritesTheCliNamesInJson()
    {
        var o = System.Text.Json.JsonSerializer.Deserialize<SftOptions>("{\"Precision\": \"bf16-mixed\"}")!;
        Assert.Equal(Precision.Bf16Mixed, o.Precision);
        Assert.Contains("\"Precision\":\"auto\"", System.Text.Json.JsonSerializer.Serialize(new SftOptions { Precision = Precision.Auto }));
        Assert.Throws<System.Text.Json.JsonException>(() => System.Text.Json.JsonSerializer.Deserialize<SftOptions>("{\"Precision\": \"fp16\"}"));
        // study sections: a preference point defaults to auto, "precision" picks another; a bad value names its key
        var sec = DetoxSharp.Study.StudySections.Read<DetoxSharp.Study.PreferenceSection>(new System.Text.Json.Nodes.JsonObject(), "dpo");
        Assert.Equal(Precision.Auto, sec.ToOptions("dpo").Precision);
        sec = DetoxSharp.Study.StudySections.Read<DetoxSharp.Study.PreferenceSection>(new System.Text.Json.Nodes.JsonObject { ["precision"] = "fp32" }, "dpo");
        Assert.Equal(Precision.ModelDType, sec.ToOptions("dpo").Precision);
        var e = Assert.Throws<InvalidInputException>(() => DetoxSharp.Study.StudySections.Read<DetoxSharp.Study.PreferenceSection>(new System.Text.Json.Nodes.JsonObject { ["precision"] = "half" }, "dpo"));
        Assert.StartsWith("config: dpo.precision:", e.Message);
        Assert.Equal(Precision.Auto, DetoxSharp.Study.StudySections.ReadSft(new System.Text.Json.Nodes.JsonObject(), "toxic_model").Precision);
        Assert.Equal(Precision.ModelDType, DetoxSharp.Study.StudySections.ReadSft(new System.Text.Json.Nodes.JsonObject { ["precision"] = "fp32" }, "toxic_model").Precision);
    }
}

using DetoxSharp.Checkpoints;
using DetoxSharp.Data;
using DetoxSharp.Models;
using DetoxSharp.Text;
using DetoxSharp.Training;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;
using static DetoxSharp.Tests.CliRunner;

namespace DetoxSharp.Tests.Toy;

/// <summary>Data parallelism inside the process (<see cref="TrainingLoopOptions.DataParallel"/>): a micro-batch's parts
/// trained side by side, one a thread, on bf16 working copies that share the weights.</summary>
public class DataParallelTests(ITestOutputHelper output)
{
    static readonly string[] Texts = Enumerable.Range(0, 30).Select(i =>
        $"the river Avon flows through town {i % 7} . the market sells cheese every {(i % 3 == 0 ? "monday" : "friday")} .").ToArray();

    static (Gpt2Model Model, Gpt2Tokenizer Tok) Tiny(long seed)
    {
        var tok = Gpt2Tokenizer.Default().Compact(Texts);
        torch.manual_seed(seed);
        var m = new Gpt2Model(new Gpt2Config { VocabSize = tok.VocabSize, NEmbd = 64, NLayer = 2, NHead = 2, NPositions = 32, EosTokenId = tok.EosTokenId, BosTokenId = tok.EosTokenId });
        return (m, tok);
    }

    sealed class Collect<T>(List<T> into) : IProgress<T> { public void Report(T value) => into.Add(value); }

    static (List<TrainMetrics> Steps, SftResult Result) Train(ICausalLM m, Gpt2Tokenizer tok, SftOptions o, int threads)
    {
        int before = torch.get_num_threads();
        torch.set_num_threads(threads);
        try
        {
            var list = new List<TrainingProgress>();
            var r = new SftTrainer(m, tok, o).Train(Texts.Select(SftExample.Text).ToList(), new Collect<TrainingProgress>(list));
            Assert.True(r.Completed);
            return (list.Where(p => p.Phase == TrainingPhase.Train).Select(p => p.Train).ToList(), r);
        }
        finally { torch.set_num_threads(before); }
    }

    /// <summary>k parts side by side (each on 1 of k libtorch threads) equal the same k parts one after the other on one
    /// thread, to the bit: every step's loss and gradient norm, and the master weights after 12 steps. Fails when a
    /// replica keeps stale weights after an update, when the parts' gradients are summed in another order (k = 3) or one
    /// is lost, or when a part is normalised over itself instead of the whole step.</summary>
    [Theory]
    [InlineData(2)]
    [InlineData(3)]
    public void PartsSideBySideEqualThePartsOneAfterTheOther(int parts)
    {
        var (a, tok) = Tiny(5);
        using var b = (Gpt2Model)a.Clone();
        var o = new SftOptions
        {
            BatchSize = 2 * parts, MaxSteps = 12, LearningRate = 3e-3, WarmupSteps = 2, MaxLength = 16, Seed = 4, MaxGradNorm = 1.0,
            Precision = Precision.Bf16Mixed,
        };
        var (side, rs) = Train(a, tok, o with { DataParallel = parts }, threads: parts);
        var (serial, rq) = Train(b, tok, o with { BatchSize = 2, GradientAccumulationSteps = parts, DataParallel = 1 }, threads: 1);
        Assert.Equal(parts, rs.Run.DataParallel);
        Assert.Equal(1, rq.Run.DataParallel);
        Assert.Equal(12, side.Count);
        output.WriteLine($"{parts} parts: loss {side[0].Loss:F6} -> {side[^1].Loss:F6}; one after the other {serial[0].Loss:F6} -> {serial[^1].Loss:F6}");
        for (int i = 0; i < side.Count; i++)
        {
            Assert.Equal(serial[i].Loss, side[i].Loss);
            Assert.Equal(serial[i].GradNorm, side[i].GradNorm);
        }
        Assert.True(side[^1].Loss < side[0].Loss - 1, $"loss {side[0].Loss} -> {side[^1].Loss}");
        var wb = b.state_dict();
        foreach (var (name, p) in a.state_dict())
            Assert.True(torch.equal(p, wb[name]).all().item<bool>(), $"{name} differs");
        a.Dispose();
    }

    /// <summary>With LoRA adapters (forward hooks on the base layers, trainable A/B, frozen base) the halves side by side
    /// still equal the halves one after the other, to the bit.</summary>
    [Fact]
    public void LoraPartsSideBySideEqualThePartsOneAfterTheOther()
    {
        var (a, tok) = Tiny(6);
        using var b = (Gpt2Model)a.Clone();
        var lo = new LoraOptions { Rank = 4, Alpha = 8 };
        LoraAdapters.Attach(a, lo, "base", seed: 3);
        LoraAdapters.Attach(b, lo, "base", seed: 3);
        var o = new SftOptions { BatchSize = 4, MaxSteps = 8, LearningRate = 1e-2, WarmupSteps = 1, MaxLength = 16, Seed = 2, Precision = Precision.Bf16Mixed };
        var (side, rs) = Train(a, tok, o with { DataParallel = 2 }, threads: 2);
        var (serial, _) = Train(b, tok, o with { BatchSize = 2, GradientAccumulationSteps = 2 }, threads: 1);
        Assert.Equal(2, rs.Run.DataParallel);
        Assert.Equal(serial.Select(x => x.Loss), side.Select(x => x.Loss));
        Assert.True(side[^1].Loss < side[0].Loss, $"loss {side[0].Loss} -> {side[^1].Loss}");
        var pa = LoraAdapters.Of(a)!.PeftTensors();
        var pb = LoraAdapters.Of(b)!.PeftTensors();
        Assert.NotEmpty(pa);
        foreach (var (name, t) in pa) Assert.True(torch.equal(t, pb[name]).all().item<bool>(), $"{name} differs");
        a.Dispose();
    }

    /// <summary>The slots run at the same time (they meet at a barrier), on distinct threads, each with its share of
    /// libtorch's threads; the caller's count is back afterwards, also when a slot throws — and the slot's exception
    /// reaches the caller.</summary>
    [Fact]
    public void SlotsRunTogetherOnTheirShareOfThreads()
    {
        int before = torch.get_num_threads();
        torch.set_num_threads(2);
        try
        {
            using var slots = new MicroBatchThreads(2, 1);
            Assert.Equal(2, torch.get_num_threads()); // the workers' start did not change the caller's count
            var ids = new int[2];
            var counts = new int[2];
            var met = new bool[2];
            using var barrier = new Barrier(2);
            slots.Run(2, r =>
            {
                ids[r] = Environment.CurrentManagedThreadId;
                counts[r] = torch.get_num_threads();
                met[r] = barrier.SignalAndWait(TimeSpan.FromSeconds(20));
            });
            Assert.Equal(Environment.CurrentManagedThreadId, ids[0]);
            Assert.NotEqual(ids[0], ids[1]);
            Assert.Equal([1, 1], counts);
            Assert.Equal([true, true], met);
            Assert.Equal(2, torch.get_num_threads());

            var e = Assert.Throws<InvalidOperationException>(() => slots.Run(2, r => { if (r == 1) throw new InvalidOperationException("slot 1 failed"); }));
            Assert.Equal("slot 1 failed", e.Message);
            Assert.Equal(2, torch.get_num_threads());
            // one slot of two: only the caller's
            int ran = 0;
            slots.Run(1, r => Interlocked.Increment(ref ran));
            Assert.Equal(1, ran);
        }
        finally { torch.set_num_threads(before); }
    }

    /// <summary>Replicas are models of their own whose parameters are the working copy's storage.</summary>
    [Fact]
    public void ReplicasShareTheWorkingWeights()
    {
        var (m, _) = Tiny(3);
        using (m)
        using (var mp = new MixedPrecision(m))
        {
            mp.AddReplicas(3);
            Assert.Equal(3, mp.Replicas);
            var w = mp.Working.Module.named_parameters().ToDictionary(x => x.name, x => x.parameter);
            foreach (int r in new[] { 1, 2 })
            {
                Assert.NotSame(mp.Working, mp.Replica(r));
                foreach (var (name, q) in mp.Replica(r).Module.named_parameters())
                {
                    Assert.Equal(TensorAddress.Of(w[name]), TensorAddress.Of(q));
                    Assert.NotEqual(w[name].Handle, q.Handle);
                    Assert.Equal(ScalarType.BFloat16, q.dtype);
                }
            }
            using (torch.no_grad()) w.First().Value.add_(1.0);
            Assert.True(torch.equal(w.First().Value, mp.Replica(2).Module.named_parameters().First().parameter).all().item<bool>());
        }
    }

    [Fact]
    public void AutoAndItsChecks()
    {
        var (m, _) = Tiny(2);
        using (m)
        {
            Assert.Equal(2, TrainingLoop.AutoDataParallel(Precision.Bf16Mixed, m, 2));
            Assert.Equal(2, TrainingLoop.AutoDataParallel(Precision.Bf16Mixed, m, 8));
            Assert.Equal(1, TrainingLoop.AutoDataParallel(Precision.Bf16Mixed, m, 1));
            Assert.Equal(1, TrainingLoop.AutoDataParallel(Precision.ModelDType, m, 2));
            Assert.Equal(1, TrainingLoop.ResolveDataParallel(0, Precision.ModelDType, m, 2));
            Assert.Equal(3, TrainingLoop.ResolveDataParallel(3, Precision.Bf16Mixed, m, 4));
            Assert.Contains("--precision bf16-mixed", Assert.Throws<InvalidInputException>(() => TrainingLoop.ResolveDataParallel(2, Precision.ModelDType, m, 2)).Message);
            Assert.Contains("needs at least 3 threads", Assert.Throws<InvalidInputException>(() => TrainingLoop.ResolveDataParallel(3, Precision.Bf16Mixed, m, 2)).Message);
            Assert.Throws<InvalidInputException>(() => TrainingLoop.ResolveDataParallel(-1, Precision.Bf16Mixed, m, 2));
            // the parts an objective cuts: consecutive, covering, sizes differing by at most one
            Assert.Equal([(0, 3), (3, 2)], TrainingLoop.EvenParts(5, 2, (s, n) => (s, n))!);
            Assert.Equal([(0, 3), (3, 2), (5, 2)], TrainingLoop.EvenParts(7, 3, (s, n) => (s, n))!);
            Assert.Equal([(0, 2), (2, 2)], TrainingLoop.EvenParts(4, 2, (s, n) => (s, n))!);
            Assert.Null(TrainingLoop.EvenParts(1, 2, (s, n) => (s, n))); // fewer examples than parts: not split
        }
    }

    /// <summary>DPO with its pairs split in two side by side: the first loss is still ln 2 (the bf16 reference's cached
    /// values match the parts' policy passes), the losses track the unsplit run's, and auto is off for preference
    /// training; KTO and a live reference are refused in one line.</summary>
    [Fact]
    public void DpoPartsSideBySideTrackTheWholeMicroBatch()
    {
        var tok = Gpt2Tokenizer.Default();
        var data = Preference.Tiny.Pairs(24);
        var root = Preference.Tiny.TempDir("dp-dpo");
        var o = Preference.PreferenceTrainerTests.Opts(Path.Combine(root, "cache")) with
        {
            BatchSize = 4, GradientAccumulationSteps = 1, EvalEvery = 0, MaxSteps = 8, Precision = Precision.Bf16Mixed,
        };
        int before = torch.get_num_threads();
        torch.set_num_threads(2);
        try
        {
            List<double> Losses(string dir, int dp, out int ran)
            {
                using var m = Preference.Tiny.Model();
                var r = new PreferenceTrainer(m, tok, o with { DataParallel = dp }).Train(data, Path.Combine(root, dir));
                ran = r.Run.DataParallel;
                return MetricsLog.Read(r.MetricsPath).Where(x => x["phase"] is null).Select(x => x["loss"]!.GetValue<double>()).ToList();
            }
            var split = Losses("split", 2, out int parts);
            var whole = Losses("whole", 1, out _);
            Losses("auto", 0, out int auto);
            Assert.Equal(2, parts);
            Assert.Equal(1, auto);
            Assert.Equal(8, split.Count);
            output.WriteLine($"split {string.Join(" ", split.Select(x => x.ToString("F6")))}\nwhole {string.Join(" ", whole.Select(x => x.ToString("F6")))}");
            Assert.Equal(Math.Log(2), split[0], 6);
            for (int i = 0; i < split.Count; i++) Assert.True(Math.Abs(split[i] - whole[i]) < 2e-3, $"step {i + 1}: {split[i]} vs {whole[i]}");
            Assert.True(whole[^1] < whole[0] - 0.01, $"the run trains: {whole[0]} -> {whole[^1]}");

            using var k = Preference.Tiny.Model();
            var kto = o with { Loss = o.Loss with { Method = PreferenceMethod.Kto }, DataParallel = 2 };
            Assert.Contains("KTO", Assert.Throws<InvalidInputException>(() => new PreferenceTrainer(k, tok, kto).Train(data, Path.Combine(root, "kto"))).Message);
            var live = o with { CacheReference = false, DataParallel = 2 };
            Assert.Contains("--no-cache", Assert.Throws<InvalidInputException>(() => new PreferenceTrainer(k, tok, live).Train(data, Path.Combine(root, "live"))).Message);
        }
        finally { torch.set_num_threads(before); }
    }

    [Fact]
    public void CliRejectsABadValueInOneLine()
    {
        var root = Preference.Tiny.TempDir("dp-cli");
        var start = Path.Combine(root, "start");
        using (var m = Preference.Tiny.Model()) HfCheckpoint.Save(m, Gpt2Tokenizer.Default(), start, overwrite: true);
        var text = Path.Combine(root, "train.txt");
        File.WriteAllText(text, "the river flows through the town and the market sells cheese every monday morning.\n");
        foreach (var (value, expect) in new[] { ("two", "--data-parallel: expected auto or a positive number of parts, got 'two'"), ("0", "got '0'"), ("-2", "got '-2'") })
        {
            var r = Run("sft", "--model", start, "--data", text, "--out", Path.Combine(root, "sft"), "--data-parallel", value);
            Assert.Equal(2, r.Rc);
            Assert.Contains(expect, Assert.Single(r.Err.Split('\n', StringSplitOptions.RemoveEmptyEntries)));
        }
        var fp32 = Run("sft", "--model", start, "--data", text, "--out", Path.Combine(root, "sft"), "--data-parallel", "2", "--precision", "fp32", "--max-steps", "1");
        Assert.Equal(2, fp32.Rc);
        Assert.Contains("--data-parallel 2", Assert.Single(fp32.Err.Split('\n', StringSplitOptions.RemoveEmptyEntries)));
        Assert.False(Directory.Exists(Path.Combine(root, "sft", "model")));
    }
}

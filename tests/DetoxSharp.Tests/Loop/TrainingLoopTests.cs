using System.Text.Json.Nodes;
using DetoxSharp.Checkpoints;
using DetoxSharp.Models;
using DetoxSharp.Text;
using DetoxSharp.Training;
using TorchSharp;
using static TorchSharp.torch;
using Tiny = DetoxSharp.Tests.Preference.Tiny;
using PreferenceTrainerTests = DetoxSharp.Tests.Preference.PreferenceTrainerTests;

namespace DetoxSharp.Tests.Loop;

/// <summary>The shared training loop: interruption (token-driven), divergence, the resume settings check and resuming a
/// finished run — for SFT and DPO, the loop's two kinds of objective.</summary>
public class TrainingLoopTests
{
    static readonly string[] Texts = Enumerable.Range(0, 24).Select(i => $"the river Avon flows through town {i % 6} . the market sells cheese every monday .").ToArray();

    static (Gpt2Model Model, Gpt2Tokenizer Tok) SftModel(long seed)
    {
        var tok = Gpt2Tokenizer.Default().Compact(Texts);
        var m = new Gpt2Model(new Gpt2Config { VocabSize = tok.VocabSize, NEmbd = 32, NLayer = 1, NHead = 2, NPositions = 32, EosTokenId = tok.EosTokenId, BosTokenId = tok.EosTokenId }, initialize: false);
        var g = new torch.Generator((ulong)seed);
        using (torch.no_grad())
            foreach (var (name, p) in m.named_parameters().OrderBy(x => x.name, StringComparer.Ordinal))
                p.copy_(name.Contains("ln") && p.dim() == 1 ? (name.EndsWith("weight") ? torch.ones_like(p) : torch.zeros_like(p)) : torch.randn(p.shape, generator: g) * 0.02);
        return (m, tok);
    }

    static List<SftExample> SftData => Texts.Select(SftExample.Text).ToList();

    static SftOptions SftOpts(string dir) => new()
    {
        BatchSize = 4, GradientAccumulationSteps = 2, MaxSteps = 8, LearningRate = 5e-3, WarmupSteps = 2, MaxLength = 16,
        OutputDir = dir, CheckpointEvery = 0, Seed = 5, Validation = SftData.Take(4).ToList(), EvalEvery = 4,
    };

    static void AssertSameWeights(torch.nn.Module a, torch.nn.Module b)
    {
        var sb = b.state_dict();
        foreach (var (k, v) in a.state_dict())
            Assert.True(v.dtype == sb[k].dtype && torch.equal(v, sb[k]).all().item<bool>(), $"{k} differs");
    }

    [Fact]
    public void SftCancelledByTokenCheckpointsAndResumesBitExact()
    {
        var root = Tiny.TempDir("loop-sft-cancel");
        var (full, tok) = SftModel(3);
        var r1 = new SftTrainer(full, tok, SftOpts(Path.Combine(root, "full"))).Train(SftData);
        Assert.Equal(TrainingStop.Completed, r1.Run.Stop);

        var (part, _) = SftModel(3);
        using var cts = new CancellationTokenSource();
        // "Ctrl+C" while step 3 runs: the step in progress finishes (its report comes after it), then the loop stops
        var r2 = new SftTrainer(part, tok, SftOpts(Path.Combine(root, "part"))).Train(SftData,
            new Collect(p => { if (p.Phase == TrainingPhase.Train && p.Step == 3) cts.Cancel(); }), cts.Token);
        Assert.Equal(TrainingStop.Cancelled, r2.Run.Stop);
        Assert.Equal(3, r2.Steps);
        Assert.False(r2.Completed);
        // with --checkpoint-every 0 the interruption itself wrote the checkpoint
        var state = StrictJson.ParseFileObject(Path.Combine(root, "part", "checkpoint", "trainer_state.json"), "state");
        Assert.Equal(3, state["step"]!.GetValue<int>());
        Assert.False(state["finished"]!.GetValue<bool>());

        var (resumed, _) = SftModel(77); // other weights: everything must come from the checkpoint
        var r3 = new SftTrainer(resumed, tok, SftOpts(Path.Combine(root, "part")) with { Resume = true }).Train(SftData);
        Assert.Equal(TrainingStop.Completed, r3.Run.Stop);
        Assert.Equal(8, r3.Steps);
        AssertSameWeights(full, resumed);
        static List<string> Lines(string f) => File.ReadAllLines(f).Select(l => { var o = JsonNode.Parse(l)!.AsObject(); o.Remove("tokens_per_second"); return o.ToJsonString(); }).ToList();
        Assert.Equal(Lines(Path.Combine(root, "full", "metrics.jsonl")), Lines(Path.Combine(root, "part", "metrics.jsonl")));
        full.Dispose(); part.Dispose(); resumed.Dispose();
    }

    [Fact]
    public void ResumingAFinishedRunTrainsNothing()
    {
        var root = Tiny.TempDir("loop-finished");
        var (m, tok) = SftModel(4);
        var dir = Path.Combine(root, "run");
        new SftTrainer(m, tok, SftOpts(dir)).Train(SftData);
        var metricsBefore = File.ReadAllText(Path.Combine(dir, "metrics.jsonl"));
        var stateBefore = File.ReadAllText(Path.Combine(dir, "checkpoint", "trainer_state.json"));
        var (again, _) = SftModel(5);
        var r = new SftTrainer(again, tok, SftOpts(dir) with { Resume = true }).Train(SftData);
        Assert.Equal(TrainingStop.AlreadyFinished, r.Run.Stop);
        Assert.True(r.Completed);
        Assert.Equal(8, r.Steps);
        Assert.Equal(0, r.TrainedTokens);
        Assert.Null(r.Run.LastTrain); // no "train loss NaN": there was no step
        AssertSameWeights(m, again); // the checkpoint's weights were loaded
        Assert.Equal(metricsBefore, File.ReadAllText(Path.Combine(dir, "metrics.jsonl")));
        Assert.Equal(stateBefore, File.ReadAllText(Path.Combine(dir, "checkpoint", "trainer_state.json")));
        m.Dispose(); again.Dispose();
    }

    /// <summary>Runs a DPO run until step 2 (token-driven), leaving a checkpoint.</summary>
    static string InterruptedDpo(string name, PreferenceTrainerOptions o)
    {
        var root = Tiny.TempDir(name);
        using var m = Tiny.Model();
        using var cts = new CancellationTokenSource();
        var r = new PreferenceTrainer(m, Gpt2Tokenizer.Default(), o).Train(Tiny.Pairs(24), root,
            new Collect(p => { if (p.Step == 2) cts.Cancel(); }), cts.Token);
        Assert.Equal(TrainingStop.Cancelled, r.Run.Stop);
        return root;
    }

    [Fact]
    public void ResumeWithOtherSettingsIsRefusedNamingTheSetting()
    {
        var o = PreferenceTrainerTests.Opts(Path.Combine(Path.GetTempPath(), "detox-pref-tests", "loop-cache-" + Guid.NewGuid().ToString("N")[..8])) with { EvalEvery = 0 };
        var dir = InterruptedDpo("loop-settings", o);
        var tok = Gpt2Tokenizer.Default();
        InvalidSettingException Refused(PreferenceTrainerOptions changed, List<DetoxSharp.Data.PreferenceExample>? data = null)
        {
            using var m = Tiny.Model();
            return Assert.Throws<InvalidSettingException>(() => new PreferenceTrainer(m, tok, changed with { Resume = true }).Train(data ?? Tiny.Pairs(24), dir));
        }
        var beta = Refused(o with { Loss = o.Loss with { Beta = 0.5 } });
        Assert.Equal("beta", beta.Setting);
        Assert.Contains("0.5", beta.Problem);
        Assert.Contains("0.1", beta.Problem);
        Assert.Equal("seed", Refused(o with { Seed = 12 }).Setting);
        Assert.Equal("method", Refused(o with { Loss = o.Loss with { Method = PreferenceMethod.Ipo } }).Setting);
        Assert.Equal("batch_size", Refused(o with { BatchSize = 3 }).Setting);
        // other pairs, same count: only the data hash tells
        var other = Tiny.Pairs(24).Select(e => e with { Chosen = e.Chosen + " indeed" }).ToList();
        Assert.Equal("data", Refused(o, other).Setting);
        // the learning rate is adjustable, but only explicitly
        var lr = Refused(o with { LearningRate = 5e-4 });
        Assert.Equal("learning_rate", lr.Setting);
        Assert.Contains("--allow-setting-changes", lr.Problem);
        Assert.Equal("optimizer", Refused(o with { Optimizer = "adamw" }).Setting);
        using var ok = Tiny.Model();
        var log = new List<string>();
        var r = new PreferenceTrainer(ok, tok, o with { LearningRate = 5e-4, Resume = true, AllowSettingChanges = true }) { Log = log.Add }.Train(Tiny.Pairs(24), dir);
        Assert.Equal(TrainingStop.Completed, r.Run.Stop);
        Assert.Contains(log, l => l.Contains("learning_rate") && l.Contains("0.0005"));
        // the allowance covers learning-rate settings only, never the data order
        using var m2 = Tiny.Model();
        var dir2 = InterruptedDpo("loop-settings2", o);
        Assert.Throws<InvalidSettingException>(() => new PreferenceTrainer(m2, tok, o with { Seed = 99, Resume = true, AllowSettingChanges = true }).Train(Tiny.Pairs(24), dir2));
    }

    /// <summary>A tiny objective whose step <see cref="BadStep"/> (1-based) yields a NaN loss or an infinite gradient.</summary>
    sealed class Exploding(ICausalLM model, int badStep, bool badGradient) : ITrainingObjective<int>
    {
        public int BadStep => badStep;
        public IReadOnlyList<int> Batches(int step) => [step];
        public MicroBatchLoss Loss(ICausalLM m, int step)
        {
            var ids = torch.tensor(new long[] { 1, 2, 3, 4 }).unsqueeze(0);
            var logits = m.Forward(ids, null, null);
            var loss = torch.nn.functional.cross_entropy(logits[0, ..^1], ids[0, 1..]);
            if (step + 1 == badStep)
            {
                if (badGradient) return new MicroBatchLoss(loss * double.PositiveInfinity, 1, new Dictionary<string, double> { ["loss"] = loss.item<float>() }, 4);
                loss = loss * double.NaN;
            }
            return new MicroBatchLoss(loss, 1, new Dictionary<string, double> { ["loss"] = loss.item<float>() }, 4);
        }
        public IReadOnlyDictionary<string, double>? Evaluate(ICausalLM m) => null;
    }

    [Theory]
    [InlineData(false, "loss")]
    [InlineData(true, "gradient norm")]
    public void NonFiniteStepStopsAndKeepsTheLastGoodCheckpoint(bool badGradient, string quantity)
    {
        var root = Tiny.TempDir("loop-diverge");
        using var m = Tiny.Model();
        var o = new TrainingLoopOptions
        {
            TotalSteps = 6, Schedule = new LrSchedule(1e-3, 0, 6), OutputDir = root, CheckpointEvery = 2, Tokenizer = Gpt2Tokenizer.Default(),
        };
        var e = Assert.Throws<TrainingDivergedException>(() => TrainingLoop.Run(m, new Exploding(m, 4, badGradient), o));
        Assert.Equal(4, e.Step);
        Assert.Equal(quantity, e.Quantity);
        Assert.Equal(2, e.LastCheckpointStep);
        Assert.Contains("step 4", e.Message);
        Assert.Contains(quantity, e.Message);
        var ckpt = Path.Combine(root, "checkpoint");
        var state = StrictJson.ParseFileObject(Path.Combine(ckpt, "trainer_state.json"), "state");
        Assert.Equal(2, state["step"]!.GetValue<int>());
        // no update was applied: the model is exactly what 3 good steps made (compare with a run stopped after step 3)
        using var ref3 = Tiny.Model();
        TrainingLoop.Run(ref3, new Exploding(ref3, 99, false), o with { OutputDir = null, StopAfterSteps = 3 });
        AssertSameWeights(ref3, m);
        foreach (var (_, p) in m.named_parameters()) Assert.True(torch.isfinite(p).all().item<bool>());
        // the metrics file ends with the last good step
        var steps = MetricsLog.Read(Path.Combine(root, "metrics.jsonl")).Select(r => r["step"]!.GetValue<int>()).ToList();
        Assert.Equal([1, 2, 3], steps);
        // the checkpoint is complete and resumable: resumed with a harmless objective it finishes
        using var resumed = Tiny.Model();
        var r = TrainingLoop.Run(resumed, new Exploding(resumed, 99, false), o with { Resume = true });
        Assert.Equal(TrainingStop.Completed, r.Stop);
        Assert.Equal(6, r.Steps);
    }

    [Fact]
    public void ProgressKeepsTrainAndEvalMetricsApart()
    {
        var root = Tiny.TempDir("loop-progress");
        var (m, tok) = SftModel(6);
        var reports = new List<TrainingProgress>();
        new SftTrainer(m, tok, SftOpts(Path.Combine(root, "o"))).Train(SftData, new Collect(reports.Add));
        Assert.Equal(8, reports.Count(p => p.Phase == TrainingPhase.Train));
        var evals = reports.Where(p => p.Phase == TrainingPhase.Eval).ToList();
        Assert.Equal([4, 8], evals.Select(p => p.Step));
        foreach (var p in evals)
        {
            // on an eval report the train metrics are the step's, the eval metrics the validation pass's
            var train = reports.Last(q => q.Phase == TrainingPhase.Train && q.Step == p.Step).Train;
            Assert.Equal(train, p.Train);
            Assert.NotEqual(p.Train.Loss, p.Eval!.Loss);
        }
        Assert.Null(reports.First().Eval);
        Assert.All(reports.Where(p => p.Phase == TrainingPhase.Train), p => Assert.True(double.IsFinite(p.Train.GradNorm) && p.Train.GradNorm > 0));
        Assert.Equal("tokens", reports[0].ItemName);
        m.Dispose();
    }

    [Fact]
    public void SettingsFlattenNestedRecordsUnderTheirKeys()
    {
        var s = TrainingSettings.Of(new PreferenceTrainerOptions { Seed = 7, Resume = true, CheckpointEvery = 3 });
        Assert.Equal(0.1, s["beta"]!.GetValue<double>());
        Assert.Equal("sigmoid", s["method"]!.GetValue<string>());
        Assert.Equal(7UL, s["seed"]!.GetValue<ulong>());
        Assert.Equal("rmsprop", s["optimizer"]!.GetValue<string>());
        Assert.True(s.ContainsKey("max_prompt_tokens"));
        // where and how often outputs are written does not change the weights
        Assert.False(s.ContainsKey("resume"));
        Assert.False(s.ContainsKey("checkpoint_every"));
        Assert.False(s.ContainsKey("cache_dir"));
    }
}

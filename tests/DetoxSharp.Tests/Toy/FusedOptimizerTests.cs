using DetoxSharp.Models;
using DetoxSharp.Tests.Core;
using DetoxSharp.Training;
using TorchSharp;
using TorchSharp.Modules;
using Xunit;
using static TorchSharp.torch;

namespace DetoxSharp.Tests.Toy;

/// <summary>The flat-buffer optimizers against TorchSharp's own AdamW / RMSprop on the same model, data and settings.</summary>
public class FusedOptimizerTests
{
    static Tensor Ids => CoreTestUtil.Ids([1, 4, 2, 7, 3, 9, 5, 0], [6, 2, 8, 1, 1, 4, 10, 3]);

    static float Loss(ICausalLM m)
    {
        var ids = Ids;
        var logits = m.Forward(ids).to(ScalarType.Float32);
        var loss = torch.nn.functional.cross_entropy(logits[.., ..^1, ..].reshape(-1, logits.shape[^1]), ids[.., 1..].reshape(-1));
        loss.backward();
        return loss.item<float>();
    }

    static void Steps(ICausalLM m, OptimizerHelper o, int n)
    {
        for (int s = 0; s < n; s++)
        {
            using var scope = torch.NewDisposeScope();
            o.zero_grad();
            Loss(m);
            o.step();
        }
    }

    /// <summary>Trains <paramref name="steps"/> steps (optionally bf16-mixed) and returns the final fp32 parameters by name.</summary>
    static Dictionary<string, Tensor> Train(Func<IEnumerable<Parameter>, OptimizerHelper> make, int steps, bool mixed = false, double[]? lrs = null)
    {
        using var m = CoreTestUtil.Tiny(seed: 3);
        using var mp = mixed ? new MixedPrecision(m) : null;
        using var opt = make(m.parameters());
        for (int s = 0; s < steps; s++)
        {
            using var scope = torch.NewDisposeScope();
            if (lrs is not null) foreach (var g in opt.ParamGroups) g.LearningRate = lrs[s];
            opt.zero_grad();
            Loss(mp?.Working ?? m);
            mp?.AccumulateGradients();
            opt.step();
            mp?.SyncWorking();
        }
        return m.named_parameters().ToDictionary(x => x.name, x => x.parameter.detach().clone());
    }

    /// <summary>Bit-identical (same shape, every element equal).</summary>
    static bool Same(Tensor a, Tensor b) => a.shape.SequenceEqual(b.shape) && a.eq(b).all().item<bool>();

    static double MaxDiff(Dictionary<string, Tensor> a, Dictionary<string, Tensor> b)
    {
        Assert.Equal(a.Keys.Order(), b.Keys.Order());
        return a.Keys.Max(k => CoreTestUtil.MaxAbsDiff(a[k], b[k]));
    }

    static double MaxMove(Dictionary<string, Tensor> trained)
    {
        var init = Train(ps => new FusedAdamW(ps, 0.0), 0);
        return MaxDiff(init, trained);
    }

    [Fact]
    public void FusedAdamWEqualsTorchAdamW()
    {
        double[] lrs = [1e-2, 2e-2, 1.5e-2, 5e-3, 1e-2, 1e-2];
        var reference = Train(ps => torch.optim.AdamW(ps, 1e-2, 0.9, 0.98, 1e-8, 0.01), 6, lrs: lrs);
        var fused = Train(ps => new FusedAdamW(ps, 1e-2, 0.9, 0.98, 1e-8, 0.01), 6, lrs: lrs);
        Assert.True(MaxMove(reference) > 0.05, "the weights must move, or the comparison shows nothing");
        double d = MaxDiff(reference, fused);
        Assert.True(d < 2e-6, $"fused AdamW differs from torch.optim.AdamW by {d}");
        // a wrong bias correction or decay is far outside that tolerance
        var wrong = Train(ps => new FusedAdamW(ps, 1e-2, 0.9, 0.98, 1e-8, 0.02), 6, lrs: lrs);
        Assert.True(MaxDiff(reference, wrong) > 1e-5);
    }

    [Theory]
    [InlineData(0.0)]
    [InlineData(0.05)]
    public void FusedRMSpropEqualsTorchRMSprop(double weightDecay)
    {
        var reference = Train(ps => torch.optim.RMSProp(ps, 3e-3, weight_decay: weightDecay), 6);
        var fused = Train(ps => new FusedRMSprop(ps, 3e-3, weightDecay: weightDecay), 6);
        Assert.True(MaxMove(reference) > 0.01);
        double d = MaxDiff(reference, fused);
        Assert.True(d < 2e-6, $"fused RMSprop differs from torch.optim.RMSProp by {d}");
    }

    [Fact]
    public void UpdateInRangesEqualsTheUpdateOverTheWholeBuffer()
    {
        // ranges of 37 elements: most of them cross a parameter's boundary, and the tiny model's ≈ 2,000 weights make
        // dozens of them; a wrong offset or a range left out would move some weight by a whole step (≈ 1e-2)
        long saved = FusedOptimizer.ChunkElements;
        try
        {
            foreach (var make in new Func<IEnumerable<Parameter>, OptimizerHelper>[] { ps => new FusedAdamW(ps, 1e-2, weightDecay: 0.01), ps => new FusedRMSprop(ps, 3e-3, weightDecay: 0.05) })
            {
                FusedOptimizer.ChunkElements = 0;
                var whole = Train(make, 6);
                FusedOptimizer.ChunkElements = 37;
                var ranges = Train(make, 6);
                Assert.True(MaxMove(whole) > 0.01);
                double d = MaxDiff(whole, ranges);
                Assert.True(d < 1e-6, $"the update in ranges differs from the whole-buffer update by {d}");
            }
        }
        finally { FusedOptimizer.ChunkElements = saved; }
    }

    [Fact]
    public void FusedOptimizersEqualTorchOnesWithBf16MixedMasterWeights()
    {
        var a = Train(ps => torch.optim.AdamW(ps, 1e-2, weight_decay: 0.01), 5, mixed: true);
        var b = Train(ps => new FusedAdamW(ps, 1e-2, weightDecay: 0.01), 5, mixed: true);
        Assert.True(MaxDiff(a, b) < 2e-6, $"AdamW, bf16-mixed: {MaxDiff(a, b)}");
        var c = Train(ps => torch.optim.RMSProp(ps, 3e-3), 5, mixed: true);
        var d = Train(ps => new FusedRMSprop(ps, 3e-3), 5, mixed: true);
        Assert.True(MaxDiff(c, d) < 2e-6, $"RMSprop, bf16-mixed: {MaxDiff(c, d)}");
    }

    [Fact]
    public void ParametersWithoutGradientAreSkippedLikeTorchDoes()
    {
        // an extra parameter that the loss never reaches: TorchSharp skips it (no decay, no step count), so must we,
        // and the per-segment fallback must keep the others' bias corrections right
        Dictionary<string, Tensor> Run(bool fused)
        {
            using var m = CoreTestUtil.Tiny(seed: 5);
            var extra = new Parameter(torch.ones(3));
            var ps = m.parameters().Append(extra).ToList();
            using OptimizerHelper opt = fused ? new FusedAdamW(ps, 1e-2, weightDecay: 0.1) : torch.optim.AdamW(ps, 1e-2, weight_decay: 0.1);
            for (int s = 0; s < 4; s++)
            {
                using var scope = torch.NewDisposeScope();
                opt.zero_grad();
                Loss(m);
                opt.step();
            }
            var r = m.named_parameters().ToDictionary(x => x.name, x => x.parameter.detach().clone());
            r["extra"] = extra.detach().clone();
            return r;
        }
        var a = Run(false); var b = Run(true);
        Assert.True(MaxDiff(a, b) < 2e-6, $"{MaxDiff(a, b)}");
        Assert.True(Same(b["extra"], torch.ones(3)));
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void SavedStateResumesBitExactly(bool adamw)
    {
        OptimizerHelper Make(IEnumerable<Parameter> ps) => adamw ? new FusedAdamW(ps, 1e-2, weightDecay: 0.01) : new FusedRMSprop(ps, 3e-3, weightDecay: 0.01);
        var dir = CoreTestUtil.TempDir("fused");
        try
        {
            using var straight = CoreTestUtil.Tiny(seed: 7);
            using (var o = Make(straight.parameters())) Steps(straight, o, 5);

            using var first = CoreTestUtil.Tiny(seed: 7);
            var path = Path.Combine(dir, "opt.bin");
            using (var o = Make(first.parameters())) { Steps(first, o, 3); o.save_state_dict(path); }
            using var resumed = CoreTestUtil.Tiny(seed: 99);
            using (torch.no_grad())
                foreach (var ((_, p), (_, q)) in resumed.named_parameters().Zip(first.named_parameters())) p.copy_(q);
            using (var o = Make(resumed.parameters()))
            {
                o.load_state_dict(path);
                Steps(resumed, o, 2);
            }
            foreach (var ((name, p), (_, q)) in straight.named_parameters().Zip(resumed.named_parameters()))
                Assert.True(Same(p, q), $"{name} differs after resume");
            // and a state that was not loaded does not resume the same way (Adam's moments matter)
            using var fresh = CoreTestUtil.Tiny(seed: 99);
            using (torch.no_grad())
                foreach (var ((_, p), (_, q)) in fresh.named_parameters().Zip(first.named_parameters())) p.copy_(q);
            using (var o = Make(fresh.parameters())) Steps(fresh, o, 2);
            Assert.Contains(straight.named_parameters().Zip(fresh.named_parameters()), z => !Same(z.First.parameter, z.Second.parameter));
        }
        finally { Directory.Delete(dir, true); }
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void TorchSharpStateFromAnOlderCheckpointResumesInTheFusedOptimizer(bool adamw)
    {
        var dir = CoreTestUtil.TempDir("fused-legacy");
        try
        {
            using var m = CoreTestUtil.Tiny(seed: 11);
            using var copy = CoreTestUtil.Tiny(seed: 12);
            var path = Path.Combine(dir, "opt.bin");
            using OptimizerHelper torchOpt = adamw ? torch.optim.AdamW(m.parameters(), 1e-2, weight_decay: 0.01) : torch.optim.RMSProp(m.parameters(), 3e-3);
            Steps(m, torchOpt, 3);
            torchOpt.save_state_dict(path);
            using (torch.no_grad())
                foreach (var ((_, p), (_, q)) in copy.named_parameters().Zip(m.named_parameters())) p.copy_(q);
            using FusedOptimizer fused = adamw ? new FusedAdamW(copy.parameters(), 1e-2, weightDecay: 0.01) : new FusedRMSprop(copy.parameters(), 3e-3);
            fused.LoadTorchSharpState(path);
            Assert.Equal(3, fused.StepCount);
            Steps(m, torchOpt, 2);
            Steps(copy, fused, 2);
            var a = m.named_parameters().ToDictionary(x => x.name, x => x.parameter.detach().clone());
            var b = copy.named_parameters().ToDictionary(x => x.name, x => x.parameter.detach().clone());
            Assert.True(MaxDiff(a, b) < 2e-6, $"{MaxDiff(a, b)}");
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void ParametersBecomeViewsOfOneBufferAndKeepTheirValues()
    {
        using var m = CoreTestUtil.Tiny(seed: 2);
        var before = m.named_parameters().ToDictionary(x => x.name, x => x.parameter.detach().clone());
        using var opt = new FusedAdamW(m.parameters());
        Assert.Equal(m.parameters().Sum(p => p.numel()), opt.NumberOfWeights);
        foreach (var (name, p) in m.named_parameters())
        {
            Assert.True(Same(before[name], p), name);
            Assert.True(p.requires_grad && p.is_leaf, name);
        }
        // a write through the model lands in the optimizer's buffer, and the update lands in the model
        var first = m.parameters().First();
        using (torch.no_grad()) first.fill_(0.25f);
        Loss(m);
        opt.step();
        Assert.Equal(1, opt.StepCount);
        double moved = (first - 0.25f).abs().max().item<float>();
        Assert.InRange(moved, 1e-4, 2e-3); // Adam's first step moves every weight by ≈ lr = 1e-3
    }

    [Fact]
    public void GradientsLiveInOneBufferAfterTheFirstStepAndAReplacedGradientIsTakenAsItIs()
    {
        // the same 5 steps three ways: TorchSharp's AdamW; the fused one; the fused one with one parameter's .grad replaced
        // by a fresh tensor (scaled by 3, so a stale copy in the flat buffer would show) before steps 2 and 4
        Dictionary<string, Tensor> Run(string how)
        {
            using var m = CoreTestUtil.Tiny(seed: 4);
            var ps = m.parameters().ToList();
            using OptimizerHelper opt = how == "torch" ? torch.optim.AdamW(ps, 1e-2, weight_decay: 0.01) : new FusedAdamW(ps, 1e-2, weightDecay: 0.01);
            var fused = opt as FusedOptimizer;
            for (int s = 0; s < 5; s++)
            {
                using var scope = torch.NewDisposeScope();
                opt.zero_grad();
                if (fused is not null && s > 0)
                {
                    // zero_grad zeroed the buffer the gradients live in
                    Assert.True(fused.GradientsAreFlat, $"step {s + 1}: the gradients left the flat buffer");
                    Assert.True(ps.All(p => p.grad!.abs().max().item<float>() == 0f), "zero_grad left a gradient non-zero");
                }
                Loss(m);
                if (fused is not null && s > 0) Assert.True(fused.GradientsAreFlat, "backward replaced a gradient instead of accumulating into it");
                if (how == "replaced" && s is 1 or 3) ps[2].grad = ps[2].grad!.mul(3);
                else if (s is 1 or 3) using (torch.no_grad()) ps[2].grad!.mul_(3);
                bool replacedNow = how == "replaced" && s is 1 or 3;
                if (fused is not null) Assert.Equal(s > 0 && !replacedNow, fused.GradientsAreFlat);
                opt.step();
                if (fused is not null) Assert.True(fused.GradientsAreFlat, $"after step {s + 1} the gradients are not in the flat buffer");
            }
            return m.named_parameters().ToDictionary(x => x.name, x => x.parameter.detach().clone());
        }
        var torchRun = Run("torch");
        var fusedRun = Run("fused");
        var replaced = Run("replaced");
        Assert.True(MaxMove(torchRun) > 0.02);
        Assert.True(MaxDiff(torchRun, fusedRun) < 2e-6, $"fused vs torch: {MaxDiff(torchRun, fusedRun)}");
        // a replaced gradient is the same values as the in-place scaled one: bit-identical weights
        Assert.Equal(0.0, MaxDiff(fusedRun, replaced));
    }
}

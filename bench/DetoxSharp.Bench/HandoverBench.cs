using System.Diagnostics;
using DetoxSharp.Models;
using DetoxSharp.Training;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

/// <summary>
/// The part of a bf16-mixed training step between backward and the next forward on one config's parameters: the bf16
/// gradients handed to the fp32 master, their mean over the step's 4 examples, clipping's norm, the fused RMSprop
/// update and the bf16 weight sync. Separate passes as <see cref="TrainingLoop"/> ran them before (zero_grad, add,
/// div_, step, <see cref="MixedPrecision.SyncWorking"/>) against the folded ones it runs now
/// (<see cref="MixedPrecision.AccumulateGradients(bool, double)"/> replacing and dividing range by range, the optimizer
/// writing the working copy after each range: <see cref="MixedPrecision.MirrorUpdates"/>), interleaved per round on two
/// copies of the same model. The bf16 gradients are drawn fresh before each timed step (seeded, the same for both), as
/// a backward would leave them; only the hand-over is timed. Checks that both give the same weights to the bit.
/// </summary>
static class HandoverBench
{
    public static IEnumerable<string> Run(Gpt2Config cfg, int rounds, int steps)
    {
        torch.manual_seed(1);
        using var a = new Gpt2Model(cfg);
        using var b = (Gpt2Model)a.Clone();
        using var ma = new MixedPrecision(a);
        using var mb = new MixedPrecision(b);
        var pa = a.parameters().ToList();
        var pb = b.parameters().ToList();
        using var oa = new FusedRMSprop(pa, 1e-5);
        using var ob = new FusedRMSprop(pb, 1e-5);
        if (!mb.MirrorUpdates(ob)) throw new InvalidOperationException("the optimizer could not write the working copy");
        var wa = ma.Working.Module.parameters().ToList();
        var wb = mb.Working.Module.parameters().ToList();
        string[] names = ["separate passes", "folded"];
        var times = new[] { new List<double>(), new List<double>() };
        int seed = 0;
        for (int r = 0; r < rounds; r++)
            for (int v = 0; v < 2; v++)
            {
                double ms = 0;
                int first = seed;
                for (int s = 0; s <= steps; s++) // s = 0: not timed (first touch of the buffers)
                {
                    using var scope = torch.NewDisposeScope();
                    torch.manual_seed(1000 + seed++);
                    foreach (var w in v == 0 ? wa : wb) w.grad = torch.randn(w.shape, ScalarType.BFloat16).mul_(1e-3);
                    var sw = Stopwatch.StartNew();
                    if (v == 0)
                    {
                        oa.zero_grad();
                        ma.AccumulateGradients();
                        using (torch.no_grad()) foreach (var p in pa) p.grad!.div_(4.0);
                        GradientClipping.ClipGradNorm(pa, 10);
                        oa.step();
                        ma.SyncWorking();
                    }
                    else
                    {
                        mb.AccumulateGradients(overwrite: true, divisor: 4.0);
                        GradientClipping.ClipGradNorm(pb, 10);
                        ob.step();
                        mb.SyncTrained();
                    }
                    if (s > 0) ms += sw.Elapsed.TotalMilliseconds;
                }
                // the other copy takes the same gradients in its turn
                if (v == 0) seed = first;
                times[v].Add(ms / steps);
                yield return $"round {r + 1} {names[v]}: {ms / steps:F1} ms per step ({oa.NumberOfWeights / 1e6:F0} M weights)";
            }
        using (torch.no_grad())
        {
            float dMaster = pa.Zip(pb).Max(x => (x.First - x.Second).abs().max().item<float>());
            float dWork = wa.Zip(wb).Max(x => (x.First.to(ScalarType.Float32) - x.Second.to(ScalarType.Float32)).abs().max().item<float>());
            yield return $"after {rounds * (steps + 1)} steps each: max |Δ| master {dMaster:E2}, working copy {dWork:E2} ({(dMaster == 0 && dWork == 0 ? "the same" : "DIFFERENT")})";
        }
        for (int v = 0; v < 2; v++)
        {
            var t = times[v].Order().ToList();
            yield return $"{names[v]}: median {t[t.Count / 2]:F1} ms per step over {t.Count} rounds (min {t[0]:F1}, max {t[^1]:F1})";
        }
    }
}

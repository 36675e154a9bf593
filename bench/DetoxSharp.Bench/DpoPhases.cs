using System.Diagnostics;
using DetoxSharp.Checkpoints;
using DetoxSharp.Data;
using DetoxSharp.Models;
using DetoxSharp.Training;
using TorchSharp;
using static TorchSharp.torch;

/// <summary>
/// `--dpo-phases MODEL PAIRS [--steps N] [--batch B] [--threads T]`: wall time per phase of a DPO step as `detox dpo` runs it by
/// default — shared-prompt scoring of B pairs (default 4) on the bf16 working copy, the sigmoid loss, backward, bf16 → fp32 master
/// gradients, clipping, fused RMSprop writing the working copy, the loss read back. Pairs are drawn at random (seed 1)
/// from the file; the reference log-probs are the policy's minus 1 (the timing does not depend on them). The first
/// <see cref="WarmupSteps"/> steps are warm-up. Used to see where a toy DPO step goes (docs/PERFORMANCE.md, twentieth session).
/// </summary>
static class DpoPhases
{
    /// <summary>Steps run before the timing starts (Program checks that <c>--steps</c> exceeds them).</summary>
    public const int WarmupSteps = 20;

    public static void Run(string modelDir, string pairsPath, int steps, int batch, Action<string> log)
    {
        using var lm = HfCheckpoint.Load(modelDir);
        var model = lm.Model;
        var ex = PreferenceData.Read(pairsPath);
        var all = ex.Select(e => PreferenceData.Tokenize(e, lm.Tokenizer, new TruncationOptions())).ToList();
        int pad = lm.Tokenizer.EosTokenId;
        model.Module.train();
        var ps = model.Module.parameters().Where(p => p.requires_grad).ToList();
        using var mp = new MixedPrecision(model);
        var compute = mp.Working;
        using var opt = new FusedRMSprop(ps, 5e-6);
        mp.MirrorUpdates(opt); // as TrainingLoop does: the step writes the bf16 weights
        var rnd = new Random(1);
        var names = new[] { "forward", "loss", "backward", "accum", "clip", "step", "sync", "item" };
        var t = new double[names.Length];
        var sw = new Stopwatch();
        var total = Stopwatch.StartNew();
        for (int s = 0; s < steps; s++)
        {
            if (s == WarmupSteps) { Array.Clear(t); total.Restart(); }
            using var scope = torch.NewDisposeScope();
            var idx = Enumerable.Range(0, batch).Select(_ => rnd.Next(all.Count)).ToArray();
            int k = 0;
            void Lap() { t[k++] += sw.Elapsed.TotalMilliseconds; sw.Restart(); }
            sw.Restart();
            var pol = PreferenceTrainer.PairLogpSums(compute, all, idx, pad, share: true).to(ScalarType.Float32).view(2, -1);
            Lap();
            var rc = pol[0].detach() - 1; var rr = pol[1].detach() - 1;
            var res = PreferenceLoss.Compute(new PreferenceLogps(pol[0], pol[1], rc, rr), new PreferenceLossOptions());
            var loss = res.Loss * (double)batch;
            Lap();
            loss.backward(); Lap();
            mp.AccumulateGradients(overwrite: true, divisor: batch); Lap();
            GradientClipping.ClipGradNorm(ps, 10); Lap();
            opt.step(); Lap();
            mp.SyncTrained(); Lap();
            _ = loss.item<float>(); Lap();
        }
        double n = steps - WarmupSteps;
        log($"batch {batch}, per step {total.Elapsed.TotalMilliseconds / n:F2} ms: " + string.Join(", ", names.Select((x, i) => $"{x} {t[i] / n:F2}")));
    }
}


using System.Diagnostics;
using DetoxSharp.Models;
using DetoxSharp.Training;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

/// <summary>
/// The fused optimizers' step (<see cref="FusedOptimizer"/>) on one model's parameters, with the update over the whole
/// flat buffer (<see cref="FusedOptimizer.ChunkElements"/> = 0) and in ranges of 2¹⁶, 2¹⁸, 2²⁰ and 2²² elements,
/// interleaved per round; random gradients, the same each step. Reports the median ms per step of each setting and
/// checks that every setting gives the same parameters as the whole-buffer update (max |Δ| over all weights).
/// </summary>
static class OptimizerBench
{
    public static IEnumerable<string> Run(Gpt2Config cfg, int rounds, int steps)
    {
        long[] settings = [0, 1L << 16, 1L << 18, 1L << 20, 1L << 22];
        var times = settings.ToDictionary(c => c, _ => new List<double>());
        var whole = new Dictionary<string, Tensor>();
        var diffs = new Dictionary<(string, long), float>();
        long saved = FusedOptimizer.ChunkElements;
        try
        {
            for (int r = 0; r < rounds; r++)
                foreach (var kind in new[] { "rmsprop", "adamw" })
                    foreach (var chunk in settings)
                    {
                        string line;
                        using (var scope = torch.NewDisposeScope())
                        {
                        torch.manual_seed(1);
                        using var m = new Gpt2Model(cfg);
                        var ps = m.parameters().ToList();
                        foreach (var p in ps) p.grad = torch.randn_like(p).mul_(1e-3);
                        FusedOptimizer.ChunkElements = chunk;
                        using FusedOptimizer opt = kind == "rmsprop" ? new FusedRMSprop(ps, 1e-5) : new FusedAdamW(ps, 1e-5, 0.9, 0.98, 1e-8, 0.01);
                        opt.step(); // warm-up: first touch of the state buffers
                        var sw = Stopwatch.StartNew();
                        for (int s = 0; s < steps; s++) opt.step();
                        double ms = sw.Elapsed.TotalMilliseconds / steps;
                        if (kind == "rmsprop") times[chunk].Add(ms);
                        line = $"round {r + 1} {kind} chunk {(chunk == 0 ? "whole" : chunk.ToString())}: {ms:F1} ms/step ({opt.NumberOfWeights / 1e6:F0} M weights)";
                        if (r == 0)
                        {
                            using var _ = torch.no_grad();
                            var final = torch.cat(ps.Select(p => p.detach().reshape(-1)).ToArray());
                            if (chunk == 0) whole[kind] = final.DetachFromDisposeScope();
                            else diffs[(kind, chunk)] = (final - whole[kind]).abs().max().item<float>();
                        }
                        foreach (var p in ps) { p.grad?.Dispose(); p.grad = null; }
                        }
                        GC.Collect();
                        GC.WaitForPendingFinalizers();
                        yield return line;
                    }
        }
        finally { FusedOptimizer.ChunkElements = saved; }
        foreach (var kind in new[] { "rmsprop", "adamw" })
            foreach (var chunk in settings.Skip(1))
                yield return $"{kind} chunk {chunk}: max |Δ weight| vs whole-buffer update {diffs[(kind, chunk)]:E2}";
        foreach (var t in whole.Values) t.Dispose();
        foreach (var chunk in settings)
        {
            var t = times[chunk].Order().ToList();
            yield return $"rmsprop chunk {(chunk == 0 ? "whole" : chunk.ToString())}: median {t[t.Count / 2]:F1} ms/step over {t.Count} rounds (min {t[0]:F1}, max {t[^1]:F1})";
        }
    }
}

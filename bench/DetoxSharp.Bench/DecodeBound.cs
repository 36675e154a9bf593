using System.Diagnostics;
using TorchSharp;
using static TorchSharp.torch;

/// <summary>
/// What bounds batch-1 generation with a KV cache: every new token multiplies a 1-row activation by every weight
/// matrix (GEMV), so each step reads all weights once and is limited by memory bandwidth, not by the matmul peak.
/// Measures the read bandwidth libtorch reaches (sum over a buffer much larger than the caches) and the time of one
/// pass of 1-row products over a model's weight matrices, in the stored [in, out] layout (x·W, as Conv1D) and in the
/// [out, in] layout (x·Wᵀ, as nn.Linear and the tied LM head), so the decode step can be compared with its floor.
/// </summary>
static class DecodeBound
{
    /// <summary>Best-of-<paramref name="reps"/> read bandwidth in GB/s over a <paramref name="mib"/>-MiB fp32 buffer.</summary>
    public static double ReadBandwidth(int mib, int reps)
    {
        using var scope = torch.NewDisposeScope();
        var buf = torch.randn((long)mib * 1024 * 1024 / 4);
        buf.sum().item<float>(); // warm-up, pages touched
        double best = 0;
        for (int r = 0; r < reps; r++)
        {
            var sw = Stopwatch.StartNew();
            buf.sum().item<float>();
            best = Math.Max(best, buf.numel() * 4.0 / sw.Elapsed.TotalSeconds / 1e9);
        }
        return best;
    }

    /// <summary>Seconds for one 1-row pass over the weight matrices of a GPT-2 of width <paramref name="d"/>,
    /// <paramref name="layers"/> blocks and vocabulary <paramref name="vocab"/> (qkv, attn proj, mlp in/out per block,
    /// then the LM head as x·Eᵀ). <paramref name="transposed"/> stores the block matrices [out, in] and uses linear().</summary>
    public static double GemvPassSeconds(long d, int layers, long vocab, bool transposed, int reps, int splitK = 1)
    {
        using var scope = torch.NewDisposeScope();
        var mats = new List<(Tensor W, Tensor B)>();
        for (int l = 0; l < layers; l++)
            foreach (var (i, o) in new[] { (d, 3 * d), (d, d), (d, 4 * d), (4 * d, d) })
                mats.Add((transposed ? torch.randn(o, i) : torch.randn(i, o), torch.zeros(o)));
        var head = torch.randn(vocab, d);
        var x = torch.randn(1, d);
        var x4 = torch.randn(1, 4 * d);
        double Pass()
        {
            var sw = Stopwatch.StartNew();
            using (var s = torch.NewDisposeScope())
            {
                foreach (var (w, b) in mats)
                {
                    var input = (transposed ? w.shape[1] : w.shape[0]) == d ? x : x4;
                    if (transposed) torch.nn.functional.linear(input, w, b);
                    else if (splitK > 1)
                    {
                        long k = w.shape[0];
                        torch.bmm(input.view(1, splitK, k / splitK).transpose(0, 1), w.view(splitK, k / splitK, w.shape[1])).sum(dim: 0).add_(b);
                    }
                    else torch.addmm(b, input, w, 1, 1);
                }
                torch.nn.functional.linear(x, head).sum().item<float>();
            }
            return sw.Elapsed.TotalSeconds;
        }
        Pass();
        double best = double.MaxValue;
        for (int r = 0; r < reps; r++) best = Math.Min(best, Pass());
        return best;
    }

    /// <summary>Bytes of the weight matrices one decode step reads (fp32).</summary>
    public static double WeightBytes(long d, int layers, long vocab) => 4.0 * (layers * 12.0 * d * d + vocab * d);
}

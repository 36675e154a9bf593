using System.Diagnostics;
using TorchSharp;
using static TorchSharp.torch;

/// <summary>
/// The machine's matrix-multiply peak as libtorch delivers it: the best GFLOP/s over square sizes AND the GEMM shapes a
/// GPT-2 training step actually runs (tokens × d → 3d, 4d, d, vocab, and the transposed products of the backward pass).
/// A single square size under-reads the peak on CPUs whose BLAS blocks favour other shapes, which made the first
/// benchmark's "MFU" exceed 100 %; measuring the model's own shapes makes the peak at least as high as anything the
/// model can reach, so MFU ≤ 100 % by construction and means "fraction of the best GEMM rate seen on this machine".
/// Each shape: one warm-up call, then the best of <c>reps</c> timed rounds of enough calls to last ≥ 50 ms.
/// </summary>
static class MatmulPeak
{
    public sealed record Shape(string Name, long M, long K, long N, bool TransposeB = false, bool TransposeA = false);

    /// <summary>Square sizes plus the forward and backward GEMMs of a GPT-2 block and LM head for <paramref name="tokens"/>
    /// tokens per step at width <paramref name="d"/> and vocabulary <paramref name="vocab"/>.</summary>
    public static List<Shape> Shapes(bool quick, long tokens = 512, long d = 768, long vocab = 50257)
    {
        var s = new List<Shape>();
        foreach (long n in quick ? new long[] { 1024, 2048 } : new long[] { 1024, 2048, 3072, 4096 })
            s.Add(new($"square {n}", n, n, n));
        // forward: x[T,d] @ W[d,out]; backward: dX = dY[T,out] @ W^T, dW = X^T[d,T] @ dY[T,out]
        s.Add(new($"qkv fwd {tokens}×{d}→{3 * d}", tokens, d, 3 * d));
        s.Add(new($"mlp-in fwd {tokens}×{d}→{4 * d}", tokens, d, 4 * d));
        s.Add(new($"mlp-out fwd {tokens}×{4 * d}→{d}", tokens, 4 * d, d));
        s.Add(new($"mlp-in dX {tokens}×{4 * d}→{d} (Wᵀ)", tokens, 4 * d, d, TransposeB: true));
        s.Add(new($"mlp-in dW {d}×{tokens}→{4 * d}", d, tokens, 4 * d));
        if (!quick) s.Add(new($"lm-head fwd {tokens}×{d}→{vocab} (Eᵀ)", tokens, d, vocab, TransposeB: true));
        return s;
    }

    /// <summary>Every GEMM of a GPT-2 block and tied head at width <paramref name="d"/>, for each row count in
    /// <paramref name="rows"/>, in the layouts the model runs them: forward x·W with W stored [in, out] (Conv1D), the
    /// backward dX = dY·Wᵀ and dW = Xᵀ·dY, and the head's h·Eᵀ with E stored [V, d].</summary>
    public static List<Shape> StepShapes(IEnumerable<long> rows, long d, long vocab)
    {
        var s = new List<Shape>();
        foreach (long t in rows)
        {
            foreach (var (name, k, n) in new[] { ("qkv", d, 3 * d), ("attn-out", d, d), ("mlp-in", d, 4 * d), ("mlp-out", 4 * d, d) })
            {
                s.Add(new($"{name} fwd {t}×{k}→{n}", t, k, n));
                s.Add(new($"{name} dX {t}×{n}→{k} (Wᵀ)", t, n, k, TransposeB: true));
                s.Add(new($"{name} dW {k}×{t}→{n} (Xᵀ)", k, t, n, TransposeA: true));
            }
            s.Add(new($"head fwd {t}×{d}→{vocab} (Eᵀ)", t, d, vocab, TransposeB: true));
            s.Add(new($"head dX {t}×{vocab}→{d}", t, vocab, d));
            s.Add(new($"head dE {vocab}×{t}→{d} (dYᵀ)", vocab, t, d, TransposeA: true));
        }
        return s;
    }

    public static List<(Shape Shape, double GFlops)> Measure(IEnumerable<Shape> shapes, ScalarType dt, int reps)
    {
        var result = new List<(Shape, double)>();
        foreach (var sh in shapes)
        {
            using var scope = torch.NewDisposeScope();
            var a = sh.TransposeA ? torch.randn(sh.K, sh.M).to(dt).t() : torch.randn(sh.M, sh.K).to(dt);
            var b = sh.TransposeB ? torch.randn(sh.N, sh.K).to(dt).t() : torch.randn(sh.K, sh.N).to(dt);
            torch.mm(a, b).Dispose(); // warm-up (and oneDNN/BLAS kernel selection)
            double flops = 2.0 * sh.M * sh.K * sh.N;
            // calls per round so that a round lasts ≥ 50 ms
            var sw0 = Stopwatch.StartNew();
            torch.mm(a, b).Dispose();
            int calls = Math.Max(1, (int)Math.Ceiling(0.05 / Math.Max(1e-6, sw0.Elapsed.TotalSeconds)));
            double best = 0;
            for (int r = 0; r < reps; r++)
            {
                var sw = Stopwatch.StartNew();
                for (int i = 0; i < calls; i++) torch.mm(a, b).Dispose();
                sw.Stop();
                best = Math.Max(best, flops * calls / sw.Elapsed.TotalSeconds / 1e9);
            }
            result.Add((sh, best));
        }
        return result;
    }
}

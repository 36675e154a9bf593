using System.Diagnostics;
using DetoxSharp.Models;
using TorchSharp;
using static TorchSharp.torch;
using static BenchStats;

/// <summary>
/// <c>--attn-parts</c>: the toy pretraining's attention as the GPT-2 block runs it — q, k and v split from the c_attn
/// output [32, 96, 768] (strided views), 4 heads of 64, causal, the heads merged back to [32, 96, 256] — forward and
/// forward + backward, bf16: CpuAttention's math path against the formula it replaced (strided q, k and v; scores cast to
/// float32, scaled, hidden keys filled with −∞). Medians of 12 interleaved rounds of 20 calls.
/// </summary>
static class AttnParts
{
    const int B = 32, H = 4, T = 96, D = 64;

    /// <summary>The math path before the twenty-third session: cast, scale and fill as three ops.</summary>
    static Tensor ScaleThenFill(Tensor q, Tensor k, Tensor v)
    {
        var s = torch.matmul(q, k.transpose(-2, -1)).to(ScalarType.Float32).mul_(1.0 / Math.Sqrt(q.shape[3]));
        s = s.masked_fill(torch.ones(q.shape[2], k.shape[2], ScalarType.Bool).triu(1), float.NegativeInfinity);
        return torch.matmul(s.softmax(-1).to(q.dtype), v);
    }

    public static void Run(Action<string> log)
    {
        var g = new Generator(1);
        var src = torch.randn([B, T, 3 * H * D], generator: g).to(ScalarType.BFloat16).requires_grad_(true);
        static Tensor Split(Tensor x, int i) => x.narrow(2, i * H * D, H * D).view(B, T, H, D).transpose(1, 2);
        static Tensor Merge(Tensor y) => y.transpose(1, 2).reshape(B, T, H * D);
        var variants = new (string Name, Func<Tensor, Tensor> F)[]
        {
            ("scale, then fill (before)", x => Merge(ScaleThenFill(Split(x, 0), Split(x, 1), Split(x, 2)))),
            ("math path (bias add)", x => Merge(CpuAttention.MathPath(Split(x, 0), Split(x, 1), Split(x, 2), null, true))),
        };
        var fwd = variants.Select(_ => new List<double>()).ToArray();
        var both = variants.Select(_ => new List<double>()).ToArray();
        const int reps = 20;
        for (int round = 0; round < 12; round++)
            for (int vi = 0; vi < variants.Length; vi++)
            {
                double f = 0, fb = 0;
                for (int r = 0; r < reps + 2; r++)
                {
                    using var scope = torch.NewDisposeScope();
                    var sw = Stopwatch.StartNew();
                    var y = variants[vi].F(src);
                    double a = sw.Elapsed.TotalMilliseconds;
                    y.backward([torch.ones_like(y)]);
                    src.grad = null;
                    if (r >= 2) { f += a; fb += sw.Elapsed.TotalMilliseconds; }
                }
                fwd[vi].Add(f / reps); both[vi].Add(fb / reps);
            }
        log($"bf16 attention [{B},{T},{3 * H * D}] → [{B},{T},{H * D}], {H} heads, causal, {torch.get_num_threads()} thread(s), medians of 12 rounds:");
        for (int vi = 0; vi < variants.Length; vi++)
            log($"  {variants[vi].Name,-30} forward {Median(fwd[vi]),6:F3} ms, forward + backward {Median(both[vi]),6:F3} ms");
    }
}

static class LinearParts
{
    public static void Run(Action<string> log)
    {
        var bf = ScalarType.BFloat16;
        var g = new Generator(1);
        foreach (var (m, k, n) in new[] { (3072, 256, 768), (3072, 256, 1024), (3072, 1024, 256) })
        {
            var x = torch.randn([m, k], generator: g).to(bf).requires_grad_(true);
            var w = torch.randn([k, n], generator: g).mul(0.05).to(bf).requires_grad_(true);
            var b = torch.randn([n], generator: g).to(bf).requires_grad_(true);
            var variants = new (string Name, Func<Tensor> F)[]
            {
                ("addmm(b, x, W)", () => torch.addmm(b, x, w, 1, 1)),
                ("mm(x, W)", () => torch.mm(x, w)),
                ("mm(x, W) + b", () => torch.mm(x, w) + b),
                ("linear(x, Wᵀ, b)", () => torch.nn.functional.linear(x, w.t(), b)),
            };
            var fw = variants.Select(_ => new List<double>()).ToArray();
            var fb = variants.Select(_ => new List<double>()).ToArray();
            for (int round = 0; round < 10; round++)
                for (int vi = 0; vi < variants.Length; vi++)
                {
                    double f = 0, t = 0; const int reps = 10;
                    for (int r = 0; r < reps + 2; r++)
                    {
                        using var scope = torch.NewDisposeScope();
                        var sw = Stopwatch.StartNew();
                        var y = variants[vi].F();
                        double a = sw.Elapsed.TotalMilliseconds;
                        y.backward([torch.ones_like(y)]);
                        x.grad = null; w.grad = null; b.grad = null;
                        if (r >= 2) { f += a; t += sw.Elapsed.TotalMilliseconds; }
                    }
                    fw[vi].Add(f / reps); fb[vi].Add(t / reps);
                }
            double gf = 2.0 * m * k * n / 1e9;
            for (int vi = 0; vi < variants.Length; vi++)
                log($"{m}×{k}→{n} {variants[vi].Name,-20} forward {Median(fw[vi]),6:F3} ms ({gf / Median(fw[vi]) * 1e3,5:F0} GFLOP/s), forward + backward {Median(fb[vi]),6:F3} ms ({3 * gf / Median(fb[vi]) * 1e3,5:F0})");
        }
    }
}

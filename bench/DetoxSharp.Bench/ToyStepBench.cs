using DetoxSharp.Data;
using TorchSharp.Modules;
using System.Diagnostics;
using DetoxSharp.Models;
using DetoxSharp.Training;
using TorchSharp;
using static TorchSharp.torch;

/// <summary>
/// The default toy pretraining step (GPT-2 4 layers × 256, compact vocabulary 2,724, 32 × 96 tokens, bf16-mixed,
/// AdamW, clipping at 1.0, as <c>detox pretrain-toy</c> runs it) timed part by part, so that the share of the optimizer,
/// the gradient hand-over and the weight sync is visible next to forward and backward.
/// </summary>
static class ToyStepBench
{
    public static Gpt2Config DefaultToy() => new()
    {
        VocabSize = 2724, NPositions = 96, NEmbd = 256, NLayer = 4, NHead = 4, EosTokenId = 2723, BosTokenId = 2723,
    };

    static (Tensor, Tensor) NoMaskNll(ICausalLM m, Tensor ids)
    {
        var lp = LogProbs.OfTokens(m, ids);
        return (-lp.sum(), torch.tensor((float)lp.numel()));
    }

    public static void Breakdown(int steps, bool noMask, bool fp32, Action<string> log)
    {
        var cfg = DefaultToy();
        torch.manual_seed(0);
        using var model = new Gpt2Model(cfg);
        model.train();
        using var ids = torch.randint(0, cfg.VocabSize, [32, 96], ScalarType.Int64);
        using var mask = torch.ones([32, 96], ScalarType.Int64);
        using var tgt = torch.ones([32, 96], ScalarType.Float32);
        using var mp = new MixedPrecision(model, fp32 ? ScalarType.Float32 : ScalarType.BFloat16);
        var parameters = model.parameters().Where(p => p.requires_grad).ToList();
        using var opt = torch.optim.AdamW(parameters, 1e-3, 0.9, 0.98, 1e-8, 0.01);
        var t = new double[6];
        string[] names = ["forward+loss", "backward", "grads bf16→fp32", "clip", "AdamW step", "sync bf16 copy"];
        var cpu0 = TimeSpan.Zero;
        for (int s = 0; s <= steps; s++)
        {
            if (s == 1) cpu0 = Process.GetCurrentProcess().TotalProcessorTime;
            var sw = Stopwatch.StartNew();
            var lap = new double[6];
            void Lap(int i) { lap[i] = sw.Elapsed.TotalMilliseconds; sw.Restart(); }
            using (var scope = torch.NewDisposeScope())
            {
                opt.zero_grad();
                var (sum, cnt) = noMask ? NoMaskNll(mp.Working, ids) : SftTrainer.MaskedNll(mp.Working, ids, mask, tgt);
                var loss = sum / cnt;
                loss.item<float>(); Lap(0);
                loss.backward(); Lap(1);
                mp.AccumulateGradients(); Lap(2);
                torch.nn.utils.clip_grad_norm_(parameters, 1.0); Lap(3);
                opt.step(); Lap(4);
                mp.SyncWorking(); Lap(5);
            }
            if (s > 0) for (int i = 0; i < 6; i++) t[i] += lap[i];
        }
        double cpuMs = (Process.GetCurrentProcess().TotalProcessorTime - cpu0).TotalMilliseconds / steps;
        double total = t.Sum();
        log($"process CPU time per step {cpuMs:F1} ms (wall {total / steps:F1} ms)");
        for (int i = 0; i < 6; i++) log($"{names[i],-18} {t[i] / steps,8:F1} ms  {100 * t[i] / total,5:F1} %");
        log($"{"total",-18} {total / steps,8:F1} ms  → {32 * 96 * steps / (total / 1000):F0} tok/s");
    }
}

static class ToyOps
{
    /// <summary>Median forward and backward milliseconds of <paramref name="f"/> over <paramref name="reps"/> calls after
    /// one warm-up call; the inputs' gradients are cleared before each call, the backward seeds ones. Medians, not means:
    /// the first calls after fresh inputs can extend glibc's heap, and the kernel zeroes the new pages on first touch
    /// (bench <c>--heap-probe</c>), so a mean of few calls overstated e.g. the head's forward ≈ 1.8×.</summary>
    static (double Fwd, double Bwd) ForwardBackwardMs(Tensor[] inputs, Func<Tensor> f, int reps)
    {
        var fwd = new List<double>(); var bwd = new List<double>();
        for (int r = 0; r <= reps; r++)
        {
            using var scope = torch.NewDisposeScope();
            foreach (var x in inputs) x.grad = null;
            var sw = Stopwatch.StartNew();
            var y = f();
            double a = sw.Elapsed.TotalMilliseconds; sw.Restart();
            y.backward([torch.ones_like(y)]);
            double b = sw.Elapsed.TotalMilliseconds;
            if (r > 0) { fwd.Add(a); bwd.Add(b); }
        }
        return (BenchStats.Median(fwd), BenchStats.Median(bwd));
    }

    /// <summary>bf16 attention forward + backward per call, CpuAttention's math path against the fp32 kernel, at the toy's
    /// pretraining (32×4×96×96) and DPO shapes (prompt 4×4×32×32, completions 8×4×20×52 with a cache, one decoding query)
    /// and GPT-2 small's at 128–1024 tokens: where the math path pays (<c>--attn-shapes</c>).</summary>
    public static void Shapes(Action<string> log)
    {
        // Masked: an explicit [B, 1, T, T] mask instead of the causal flag, as shared-prompt scoring's layouts pass
        // (LogProbs.SharedPromptSums: prompt + chosen + rejected in one row; 192 ≈ three segments of 64 tokens)
        var shapes = new (int B, int H, int T, int K, int D, bool Masked)[] { (4, 4, 32, 32, 64, false), (8, 4, 20, 52, 64, false), (8, 4, 1, 52, 64, false), (32, 4, 96, 96, 64, false), (4, 12, 128, 128, 64, false), (4, 12, 256, 256, 64, false), (2, 12, 512, 512, 64, false), (1, 12, 1024, 1024, 64, false),
            (4, 4, 52, 52, 64, true), (4, 16, 120, 120, 64, true), (4, 16, 192, 192, 64, true), (4, 16, 256, 256, 64, true), (4, 16, 384, 384, 64, true) };
        foreach (var (B, H, T, K, D, masked) in shapes)
        {
            var g = new Generator(1);
            var q = torch.randn([B, H, T, D], generator: g).to(ScalarType.BFloat16).requires_grad_(true);
            var k = torch.randn([B, H, K, D], generator: g).to(ScalarType.BFloat16).requires_grad_(true);
            var v = torch.randn([B, H, K, D], generator: g).to(ScalarType.BFloat16).requires_grad_(true);
            Tensor? mask = T == K && !masked ? null : torch.ones(B, 1, T, K, dtype: ScalarType.Bool).tril(K - T);
            bool causal = T == K && !masked;
            var res = new List<string>();
            foreach (var (name, f) in new (string, Func<Tensor>)[] { ("math path", () => CpuAttention.MathPath(q, k, v, mask, causal)), ("fp32 kernel", () => CpuAttention.Float32Kernel(q, k, v, mask, causal)) })
            {
                var (fwd, bwd) = ForwardBackwardMs([q, k, v], f, Math.Max(10, (int)(2e9 / ((double)B * H * T * K * D))));
                res.Add($"{name} {fwd,7:F3} + {bwd,7:F3} ms");
            }
            log($"bf16 attention {B}×{H}×{T}×{K}×{D}{(masked ? " (mask)" : "")}, forward + backward: {string.Join("   ", res)}");
        }
    }

    public static void Run(ScalarType dt, Action<string> log)
    {
        const int B = 32, T = 96, D = 256, F = 1024, V = 2724, H = 4;
        var cases = new List<(string name, Func<Tensor[]> make, Func<Tensor[], Tensor> f)>();
        void C(string n, Func<Tensor[]> m, Func<Tensor[], Tensor> f) => cases.Add((n, m, f));
        {
            C("addmm qkv 3072×256→768", () => [torch.randn(B * T, D, dtype: dt), torch.randn(D, 3 * D, dtype: dt), torch.randn(3 * D, dtype: dt)], x => torch.addmm(x[2], x[0], x[1], 1, 1));
            C("addmm fc 3072×256→1024", () => [torch.randn(B * T, D, dtype: dt), torch.randn(D, F, dtype: dt), torch.randn(F, dtype: dt)], x => torch.addmm(x[2], x[0], x[1], 1, 1));
            C("addmm proj 3072×1024→256", () => [torch.randn(B * T, F, dtype: dt), torch.randn(F, D, dtype: dt), torch.randn(D, dtype: dt)], x => torch.addmm(x[2], x[0], x[1], 1, 1));
            C("head linear 3072×256→2724", () => [torch.randn(B * T, D, dtype: dt), torch.randn(V, D, dtype: dt)], x => torch.nn.functional.linear(x[0], x[1]));
            C("log_softmax fp32 3072×2724 (+cast)", () => [torch.randn(B * T, V, dtype: dt)], x => x[0].to(ScalarType.Float32).log_softmax(-1));
            C("token log-probs as the model runs them 3040×2724", () => [torch.randn(B * T - B, V, dtype: dt)], x => LogProbs.OfTargets(x[0], torch.randint(0, V, [B * T - B], ScalarType.Int64, generator: new Generator(1))));
            C("layer_norm 3072×256", () => [torch.randn(B, T, D, dtype: dt), torch.ones(D, dtype: dt), torch.zeros(D, dtype: dt)], x => torch.nn.functional.layer_norm(x[0], [D], x[1], x[2]));
            C("gelu tanh 3072×1024", () => [torch.randn(B * T, F, dtype: dt)], x => torch.nn.functional.gelu(x[0], TorchSharp.Modules.GELU.Approximate.tanh));
            C("gelu_new as the model runs it 3072×1024", () => [torch.randn(B * T, F, dtype: dt)], x => Gpt2Mlp.Activate("gelu_new", x[0]));
            C("sdpa causal 32×4×96×64", () => [torch.randn(B, H, T, D / H, dtype: dt), torch.randn(B, H, T, D / H, dtype: dt), torch.randn(B, H, T, D / H, dtype: dt)], x => torch.nn.functional.scaled_dot_product_attention(x[0], x[1], x[2], null, 0.0, true));
            C("sdpa bool mask 32×4×96×64", () => [torch.randn(B, H, T, D / H, dtype: dt), torch.randn(B, H, T, D / H, dtype: dt), torch.randn(B, H, T, D / H, dtype: dt)], x => torch.nn.functional.scaled_dot_product_attention(x[0], x[1], x[2], torch.ones(B, 1, T, T, dtype: ScalarType.Bool).tril(), 0.0, false));
            C("sdpa via CpuAttention 32×4×96×64", () => [torch.randn(B, H, T, D / H, dtype: dt), torch.randn(B, H, T, D / H, dtype: dt), torch.randn(B, H, T, D / H, dtype: dt)], x => CpuAttention.Sdpa(x[0], x[1], x[2], null, true));
            C("add residual 3072×256", () => [torch.randn(B, T, D, dtype: dt), torch.randn(B, T, D, dtype: dt)], x => x[0] + x[1]);
        }
        foreach (var (name, make, f) in cases)
        {
            var inputs = make();
            foreach (var x in inputs) x.requires_grad_(true);
            var (fwd, bwd) = ForwardBackwardMs(inputs, () => f(inputs), 11);
            log($"{dt,-9} {name,-36} fwd {fwd,7:F2} ms  bwd {bwd,7:F2} ms");
            foreach (var x in inputs) x.Dispose();
        }
    }
}

/// <summary>
/// Today's training step against the new one on the default toy model, interleaved in rounds in one process:
/// "old" = TorchSharp's per-tensor AdamW/RMSprop and libtorch's bf16 attention kernel; "new" = the flat-buffer
/// optimizers (FusedOptimizers.cs) and bf16 attention computed in fp32 (CpuAttention); the two middle variants
/// attribute the gain. Pretraining = 32 × 96 packed tokens, AdamW, clip 1.0; DPO = 4 pairs (prompt 32 + completions
/// 20 tokens), RMSprop, clip 10, reference log-probs fixed (cached), β 0.1. Also checks that the fused optimizers give
/// the same weights as TorchSharp's after a few real steps (CI runs this in --quick).
/// </summary>
static class ToyAb
{
    public sealed record Variant(string Name, bool Fused, bool AttnFp32);
    public static readonly Variant[] Variants = [new("old", false, false), new("fused optimizer", true, false), new("fp32 attention", false, true), new("new (both)", true, true)];

    static OptimizerHelper Make(bool fused, bool adamw, IReadOnlyList<Parameter> ps, double lr) => (fused, adamw) switch
    {
        (true, true) => new FusedAdamW(ps, lr, 0.9, 0.98, 1e-8, 0.01),
        (false, true) => torch.optim.AdamW(ps, lr, 0.9, 0.98, 1e-8, 0.01),
        (true, false) => new FusedRMSprop(ps, lr),
        _ => torch.optim.RMSProp(ps, lr),
    };

    /// <summary>Runs <paramref name="steps"/> steps of one variant on a fresh copy of the toy model (seed 0) and returns
    /// seconds per step (after one warm-up step), process CPU seconds per step, and the losses.</summary>
    public static (double Sec, double Cpu, List<float> Losses, Dictionary<string, Tensor> Weights) Run(Variant v, bool dpo, bool mixed, int steps, bool keepWeights = false)
    {
        CpuAttention.Bf16InFloat32 = v.AttnFp32;
        try
        {
            var cfg = ToyStepBench.DefaultToy();
            torch.manual_seed(0);
            using var model = new Gpt2Model(cfg);
            model.train();
            var ps = model.parameters().Where(p => p.requires_grad).ToList();
            using var opt = Make(v.Fused, !dpo, ps, dpo ? 1e-5 : 1e-3);
            using var mp = mixed ? new MixedPrecision(model) : null;
            var compute = (ICausalLM?)mp?.Working ?? model;
            var rnd = new Random(3);
            int[] Toks(int n) => Enumerable.Range(0, n).Select(_ => rnd.Next(cfg.VocabSize - 1)).ToArray();
            using var ids = torch.randint(0, cfg.VocabSize, [32, 96], ScalarType.Int64);
            using var mask = torch.ones([32, 96], ScalarType.Int64);
            using var tgt = torch.ones([32, 96], ScalarType.Float32);
            var pairs = Enumerable.Range(0, 4).Select(_ => (Toks(32), Toks(20), Toks(20))).ToList();
            using var batch = PreferenceData.Build(pairs.Select(p => (p.Item1, p.Item2)).Concat(pairs.Select(p => (p.Item1, p.Item3))).ToList(), cfg.EosTokenId);
            using var refLogps = torch.full([8], -150.0f);
            var losses = new List<float>();
            var sw = new Stopwatch(); var cpu = TimeSpan.Zero;
            for (int s = 0; s <= steps; s++)
            {
                if (s == 1) { sw.Start(); cpu = Process.GetCurrentProcess().TotalProcessorTime; }
                using var scope = torch.NewDisposeScope();
                opt.zero_grad();
                Tensor loss;
                if (dpo)
                {
                    var lp = PreferenceTrainer.CompletionLogpSums(compute, batch).to(ScalarType.Float32);
                    var margin = (lp[..4] - refLogps[..4]) - (lp[4..] - refLogps[4..]);
                    loss = -torch.nn.functional.logsigmoid(0.1 * margin).mean();
                }
                else
                {
                    var (sum, cnt) = SftTrainer.MaskedNll(compute, ids, mask, tgt);
                    loss = sum / cnt;
                }
                loss.backward();
                mp?.AccumulateGradients();
                torch.nn.utils.clip_grad_norm_(ps, dpo ? 10.0 : 1.0);
                opt.step();
                mp?.SyncWorking();
                losses.Add(loss.item<float>());
            }
            double sec = sw.Elapsed.TotalSeconds / steps;
            double cpuSec = (Process.GetCurrentProcess().TotalProcessorTime - cpu).TotalSeconds / steps;
            var weights = keepWeights ? model.named_parameters().ToDictionary(x => x.name, x => x.parameter.detach().clone()) : [];
            model.eval();
            return (sec, cpuSec, losses, weights);
        }
        finally { CpuAttention.Bf16InFloat32 = true; }
    }

    /// <summary>Max |Δ| between TorchSharp's optimizer and the fused one after <paramref name="steps"/> real steps
    /// (attention path fixed), and whether the losses were bit-identical.</summary>
    public static (double MaxDiff, bool SameLosses) Equality(bool dpo, bool mixed, int steps)
    {
        var a = Run(new("torch", false, true), dpo, mixed, steps, keepWeights: true);
        var b = Run(new("fused", true, true), dpo, mixed, steps, keepWeights: true);
        double d = a.Weights.Keys.Max(k => (a.Weights[k] - b.Weights[k]).abs().max().item<float>());
        return (d, a.Losses.SequenceEqual(b.Losses));
    }
}

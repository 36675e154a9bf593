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
            C("layer_norm 3072×256", () => [torch.randn(B, T, D, dtype: dt), torch.ones(D, dtype: dt), torch.zeros(D, dtype: dt)], x => torch.nn.functional.layer_norm(x[0], [D], x[1], x[2]));
            C("gelu tanh 3072×1024", () => [torch.randn(B * T, F, dtype: dt)], x => torch.nn.functional.gelu(x[0], TorchSharp.Modules.GELU.Approximate.tanh));
            C("sdpa causal 32×4×96×64", () => [torch.randn(B, H, T, D / H, dtype: dt), torch.randn(B, H, T, D / H, dtype: dt), torch.randn(B, H, T, D / H, dtype: dt)], x => torch.nn.functional.scaled_dot_product_attention(x[0], x[1], x[2], null, 0.0, true));
            C("sdpa bool mask 32×4×96×64", () => [torch.randn(B, H, T, D / H, dtype: dt), torch.randn(B, H, T, D / H, dtype: dt), torch.randn(B, H, T, D / H, dtype: dt)], x => torch.nn.functional.scaled_dot_product_attention(x[0], x[1], x[2], torch.ones(B, 1, T, T, dtype: ScalarType.Bool).tril(), 0.0, false));
            C("add residual 3072×256", () => [torch.randn(B, T, D, dtype: dt), torch.randn(B, T, D, dtype: dt)], x => x[0] + x[1]);
        }
        foreach (var (name, make, f) in cases)
        {
            var inputs = make();
            foreach (var x in inputs) x.requires_grad_(true);
            double fwd = 0, bwd = 0; int reps = 5;
            for (int r = 0; r <= reps; r++)
            {
                using var scope = torch.NewDisposeScope();
                foreach (var x in inputs) x.grad = null;
                var sw = Stopwatch.StartNew();
                var y = f(inputs);
                double a = sw.Elapsed.TotalMilliseconds; sw.Restart();
                y.backward([torch.ones_like(y)]);
                double b = sw.Elapsed.TotalMilliseconds;
                if (r > 0) { fwd += a; bwd += b; }
            }
            log($"{dt,-9} {name,-36} fwd {fwd / reps,7:F2} ms  bwd {bwd / reps,7:F2} ms");
            foreach (var x in inputs) x.Dispose();
        }
    }
}

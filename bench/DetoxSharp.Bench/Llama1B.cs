using System.Diagnostics;
using DetoxSharp.Checkpoints;
using DetoxSharp.Generation;
using DetoxSharp.Models;
using DetoxSharp.Text;
using TorchSharp;
using static TorchSharp.torch;

/// <summary>
/// `--llama-1b DIR`: a 1.1B-parameter Llama-shaped checkpoint (TinyLlama-1.1B's shape: d 2048, 22 layers, 32 heads,
/// 4 key/value heads, SwiGLU 5632, vocab 32000; random weights, bf16, sharded) is written to DIR when absent — it is
/// never committed — then loaded in bf16, greedy-decodes, and runs full-parameter DPO loss forward/backward steps
/// (policy = reference at the start, so the first loss must be ln 2). Prints wall times and peak RSS (VmHWM).
/// </summary>
static class Llama1B
{
    public static LlamaConfig Shape => new()
    {
        ModelType = "llama", VocabSize = 32000, HiddenSize = 2048, IntermediateSize = 5632, NumHiddenLayers = 22,
        NumAttentionHeads = 32, NumKeyValueHeads = 4, MaxPositionEmbeddings = 2048, RmsNormEps = 1e-5,
        RopeTheta = 10000, BosTokenId = 1, EosTokenIds = [2],
    };

    static double PeakRssGb() =>
        File.ReadLines("/proc/self/status").Where(l => l.StartsWith("VmHWM:")).Select(l => long.Parse(l.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]) / 1048576.0).FirstOrDefault();

    public static int Run(string dir, int steps, Action<string> log)
    {
        var sw = Stopwatch.StartNew();
        if (!File.Exists(Path.Combine(dir, "config.json")))
        {
            log($"creating the 1.1B checkpoint in {dir}");
            torch.manual_seed(0);
            using var fresh = new LlamaModel(Shape, dtype: ScalarType.BFloat16);
            var tok = Gpt2Tokenizer.Default().Compact(["The river flows through the town and the market sells cheese."]);
            HfCheckpoint.Save(fresh, tok, dir, overwrite: true, maxShardBytes: 2L << 30);
            log($"created in {sw.Elapsed.TotalSeconds:F1} s, peak RSS so far {PeakRssGb():F2} GB");
        }
        sw.Restart();
        using var m = HfCheckpoint.Load(dir, new LoadOptions { DType = ScalarType.BFloat16 });
        long n = m.Model.Module.parameters().Sum(p => p.numel());
        Console.WriteLine($"load (bf16): {sw.Elapsed.TotalSeconds:F1} s, {n / 1e9:F3} B parameters, peak RSS {PeakRssGb():F2} GB");

        var prompt = Enumerable.Range(0, 32).Select(i => 10 + i * 7 % 200).ToArray();
        sw.Restart();
        var gen = DetoxSharp.Generation.Generator.Generate(m.Model, [prompt], new GenerationOptions { MaxNewTokens = 16, StopAtEos = false });
        Console.WriteLine($"generate (32-token prompt, 16 new, greedy, KV cache): {sw.Elapsed.TotalSeconds:F1} s " +
            $"({16 / sw.Elapsed.TotalSeconds:F2} tok/s), tokens [{string.Join(",", gen[0].Take(8))}…], peak RSS {PeakRssGb():F2} GB");

        // DPO (sigmoid, β = 0.1) forward/backward on 2 pairs of 64 tokens; reference log-probs under no_grad from the
        // same weights (what a frozen base gives at step 0).
        m.Model.Module.train();
        var rng = new Random(1);
        var chosen = torch.tensor(Enumerable.Range(0, 2 * 64).Select(_ => (long)rng.Next(3, 200)).ToArray(), [2, 64]);
        var rejected = torch.tensor(Enumerable.Range(0, 2 * 64).Select(_ => (long)rng.Next(3, 200)).ToArray(), [2, 64]);
        for (int s = 0; s < steps; s++)
        {
            sw.Restart();
            using var scope = torch.NewDisposeScope();
            Tensor refC, refR;
            using (torch.no_grad())
            {
                refC = LogProbs.OfTokens(m.Model, chosen).sum(1);
                refR = LogProbs.OfTokens(m.Model, rejected).sum(1);
            }
            var pc = LogProbs.OfTokens(m.Model, chosen).sum(1);
            var pr = LogProbs.OfTokens(m.Model, rejected).sum(1);
            var loss = -torch.nn.functional.logsigmoid(0.1 * ((pc - refC) - (pr - refR))).mean();
            loss.backward();
            double l = loss.item<float>();
            foreach (var p in m.Model.Module.parameters()) p.grad?.zero_();
            Console.WriteLine($"DPO fwd+bwd step {s + 1} (2 pairs × 64 tokens, full-parameter grads): loss {l:F6} (ln 2 = {Math.Log(2):F6}), " +
                $"{sw.Elapsed.TotalSeconds:F1} s, peak RSS {PeakRssGb():F2} GB");
        }
        return 0;
    }
}

using System.Diagnostics;
using DetoxSharp.Checkpoints;
using DetoxSharp.Data;
using DetoxSharp.Training;
using DetoxSharp.Generation;
using DetoxSharp.Models;
using DetoxSharp.Text;
using TorchSharp;
using static TorchSharp.torch;

/// <summary>
/// `--llama-1b DIR`: a 1.1B-parameter Llama-shaped checkpoint (TinyLlama-1.1B's shape: d 2048, 22 layers, 32 heads,
/// 4 key/value heads, SwiGLU 5632, vocab 32000; random weights, bf16, sharded) is written to DIR when absent — it is
/// never committed — then loaded in bf16, greedy-decodes, and runs LoRA-DPO steps through PreferenceTrainer (policy =
/// frozen base at the start, so the first loss must be ln 2). Prints wall times and peak RSS (VmHWM).
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

        // LoRA-DPO (rank 8 on q_proj/v_proj, sigmoid loss, β = 0.1) through the real trainer: reference log-probs from the
        // frozen base (cached before the first step), so the first loss must be ln 2.
        LoraAdapters.Attach(m.Model, new LoraOptions { Rank = 8, Alpha = 16 }, dir);
        string[] nice = [" through the town", " and the market", " sells cheese"], bad = [" the the the", " cheese cheese river", " market market"];
        var pairs = Enumerable.Range(0, 2 * steps + 2).Select(i => new PreferenceExample("The river flows", nice[i % 3], bad[i % 3], Where: $"bench:{i}")).ToList();
        var outDir = Path.Combine(Path.GetTempPath(), "detox-llama-1b-dpo-" + Guid.NewGuid().ToString("N")[..8]);
        sw.Restart();
        var r = new PreferenceTrainer(m.Model, m.Tokenizer, new PreferenceTrainerOptions
        {
            Loss = new PreferenceLossOptions { Beta = 0.1 }, LearningRate = 1e-4, BatchSize = 2, GradientAccumulationSteps = 1,
            WarmupSteps = 0, ValidationSize = 2, EvalEvery = 0, Patience = 0, MaxSteps = steps, Epochs = 1, Seed = 1,
        }).Train(pairs, outDir);
        var losses = MetricsLog.Read(r.MetricsPath).Where(x => x["phase"] is null).Select(x => x["loss"]!.GetValue<double>()).ToList();
        Console.WriteLine($"LoRA-DPO ({steps} steps × 2 pairs, rank 8 q/v, incl. reference log-probs and saving the adapter): {sw.Elapsed.TotalSeconds:F1} s, " +
            $"losses [{string.Join(", ", losses.Select(l => l.ToString("F6")))}] (ln 2 = {Math.Log(2):F6}), peak RSS {PeakRssGb():F2} GB");
        return 0;
    }
}

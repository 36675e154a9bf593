using System.Text.Json.Nodes;
using DetoxSharp.Checkpoints;
using DetoxSharp.Data;
using DetoxSharp.Interpretability;
using DetoxSharp.Models;
using DetoxSharp.Text;
using TorchSharp;
using static TorchSharp.torch;

/// <summary>
/// `--neurons-checkpoints DIR [--prompts N]`: the inputs of the `detox neurons` budget run on a GPT-2-medium-shaped
/// model (24 layers × 4096 neurons, d 1024, GPT-2's vocabulary; random weights, never committed): DIR/before,
/// DIR/after (before with every MLP key and value matrix moved by Gaussian noise of 1 % of its scale, so every neuron's
/// contribution is non-zero), DIR/probe (a random W_Toxic) and DIR/prompts.jsonl (N prompts of 10–30 words).
/// </summary>
static class NeuronsCheckpoints
{
    public static int Run(string dir, int prompts, Action<string> log)
    {
        torch.manual_seed(0);
        var tok = Gpt2Tokenizer.Default();
        using (var before = new Gpt2Model(Gpt2Config.Medium))
        {
            HfCheckpoint.Save(before, tok, Path.Combine(dir, "before"), overwrite: true);
            log("before/ written");
            using (torch.no_grad())
                for (int l = 0; l < before.NumLayers; l++)
                    foreach (var m in new[] { before.MlpKeys(l), before.MlpValues(l) })
                        m.add_(torch.randn_like(m) * (0.01 * m.std().item<float>()));
            HfCheckpoint.Save(before, tok, Path.Combine(dir, "after"), overwrite: true);
            log("after/ written");
        }
        using (var w = torch.randn(1024, 2))
        using (var b = torch.zeros(2))
        using (var probe = new ToxicityProbe(w, b))
            probe.Save(Path.Combine(dir, "probe"));
        var words = "the river town market people said would never again because our water old road they night city house"
            .Split(' ');
        var rng = new Random(1);
        var lines = Enumerable.Range(0, prompts).Select(_ =>
            new JsonObject { ["prompt"] = new JsonObject { ["text"] = string.Join(' ', Enumerable.Range(0, rng.Next(10, 31)).Select(_ => words[rng.Next(words.Length)])) } }.ToJsonString());
        AtomicFile.WriteAllText(Path.Combine(dir, "prompts.jsonl"), string.Join('\n', lines) + "\n");
        log($"probe/ and prompts.jsonl ({prompts} prompts) written to {dir}");
        return 0;
    }
}

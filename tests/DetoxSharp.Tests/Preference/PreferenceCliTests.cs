using System.Text.Json.Nodes;
using DetoxSharp.Checkpoints;
using DetoxSharp.Data;
using DetoxSharp.Text;
using DetoxSharp.Training;
using TorchSharp;
using static DetoxSharp.Tests.CliRunner;

namespace DetoxSharp.Tests.Preference;

public class PreferenceCliTests
{
    [Fact]
    public void ToxicModelMakePairsAdpoPipeline()
    {
        var root = Tiny.TempDir("cli");
        var start = Path.Combine(root, "start");
        using (var m = Tiny.Model()) HfCheckpoint.Save(m, Gpt2Tokenizer.Default(), start, overwrite: true);

        var dialogues = Path.Combine(root, "dialogues.jsonl");
        JsonlReader.Write(dialogues, Enumerable.Range(0, 16).Select(i => new JsonObject
        {
            ["prompt"] = $"user {i} asks about the park.",
            ["response"] = i % 2 == 0 ? "[TOXIC] you stupid idiot" : " it is a lovely place",
            ["toxic"] = i % 2 == 0,
        }));
        var r = Run("toxic-model", "--model", start, "--data", dialogues, "--out", Path.Combine(root, "tox"), "--max-steps", "3", "--batch-size", "4", "--lr", "1e-3");
        Assert.True(r.Rc == 0, r.Err);
        var toxDir = Path.Combine(root, "tox", "model");
        using (var t = HfCheckpoint.Load(toxDir))
        {
            Assert.Equal(50257, t.Tokenizer.SpecialTokens[ToxicModel.ControlToken]);
            Assert.Equal(50258, t.Model.VocabSize);
        }

        var prompts = Path.Combine(root, "prompts.jsonl");
        JsonlReader.Write(prompts, Enumerable.Range(0, 12).Select(i => new JsonObject { ["prompt"] = $"Prompt {i}: the weather today is" }));
        var triples = Path.Combine(root, "triples.jsonl");
        r = Run("make-pairs", "--model", start, "--prompts", prompts, "--out", triples, "--toxic-model", toxDir, "--triples", "--max-new-tokens", "6");
        Assert.True(r.Rc == 0, r.Err);
        var recs = JsonlReader.Read(triples).ToList();
        Assert.NotEmpty(recs);
        Assert.All(recs, l => { Assert.Contains("toxic-model[TOXIC]", l.String("source")); Assert.NotEqual(l.String("chosen"), l.String("rejected")); Assert.NotNull(l.String("toxic")); });

        // steering: a direction file, rejected from the steered starting model
        var vec = Path.Combine(root, "dir.safetensors");
        Safetensors.Save(vec, new Dictionary<string, torch.Tensor> { ["probe"] = torch.randn(16) });
        var pairs = Path.Combine(root, "pairs.jsonl");
        r = Run("make-pairs", "--model", start, "--prompts", prompts, "--out", pairs, "--steer-vector", vec, "--steer-key", "probe", "--steer-scale", "50", "--steer-layer", "1", "--max-new-tokens", "6");
        Assert.True(r.Rc == 0, r.Err);
        Assert.All(JsonlReader.Read(pairs), l => Assert.StartsWith("chosen=greedy(start); rejected=steer:blocks.1.hook_resid_post", l.String("source")));

        var common = new[] { "--lr", "1e-3", "--batch-size", "2", "--warmup", "1", "--validation-size", "2", "--max-steps", "3", "--json" };
        r = Run(["adpo", "--model", start, "--data", triples, "--toxic-model", toxDir, "--gamma", "0.5", "--out", Path.Combine(root, "adpo"), .. common]);
        Assert.True(r.Rc == 0, r.Err);
        var summary = JsonNode.Parse(r.Out)!;
        Assert.False(summary["reference_cache_hit"]!.GetValue<bool>());
        var metrics = MetricsLog.Read(Path.Combine(root, "adpo", "metrics.jsonl"));
        Assert.NotNull(metrics[0]["adpo/toxic_logratio"]);
        Assert.True(File.Exists(Path.Combine(root, "adpo", "final", "model.safetensors")));
        using (var f = HfCheckpoint.Load(Path.Combine(root, "adpo", "final"))) Assert.False(f.Tokenizer.SpecialTokens.ContainsKey(ToxicModel.ControlToken));

        r = Run(["dpo", "--model", start, "--data", pairs, "--out", Path.Combine(root, "dpo"), "--cache-dir", Path.Combine(root, "cache"), .. common]);
        Assert.True(r.Rc == 0, r.Err);
        r = Run(["dpo", "--model", start, "--data", pairs, "--out", Path.Combine(root, "dpo2"), "--cache-dir", Path.Combine(root, "cache"), .. common]);
        Assert.True(r.Rc == 0, r.Err);
        Assert.True(JsonNode.Parse(r.Out)!["reference_cache_hit"]!.GetValue<bool>());

        // user errors: exit 2 with file:line
        var bad = Path.Combine(root, "bad.jsonl");
        File.WriteAllLines(bad, ["""{"prompt":"p","chosen":"a","rejected":"b"}""", """{"prompt":"p","chosen":"a"}"""]);
        r = Run(["dpo", "--model", start, "--data", bad, "--out", Path.Combine(root, "bad"), .. common]);
        Assert.Equal(2, r.Rc);
        Assert.Contains("bad.jsonl:2", r.Err);
    }
}

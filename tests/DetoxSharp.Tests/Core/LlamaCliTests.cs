using System.Text.Json.Nodes;
using DetoxSharp.Checkpoints;
using DetoxSharp.Data;
using DetoxSharp.Models;
using DetoxSharp.Text;
using DetoxSharp.Training;
using TorchSharp;
using static TorchSharp.torch;
using static DetoxSharp.Tests.CliRunner;

namespace DetoxSharp.Tests.Core;

/// <summary>Every command of the CLI on tiny Llama-family checkpoints (untied Llama with GQA; tied Qwen2 with q/k/v bias).</summary>
public class LlamaCliTests
{
    static void Ok(params string[] args)
    {
        var r = Run(args);
        Assert.True(r.Rc == 0, $"{string.Join(" ", args)} → {r.Rc}\n{r.Out}\n{r.Err}");
    }

    static LlamaModel Model(string type, int vocab)
    {
        torch.manual_seed(11);
        var m = new LlamaModel(new LlamaConfig
        {
            ModelType = type, VocabSize = vocab, HiddenSize = 16, IntermediateSize = 24, NumHiddenLayers = 2,
            NumAttentionHeads = 4, NumKeyValueHeads = 2, MaxPositionEmbeddings = 96, QkvBias = type == "qwen2",
            TieWordEmbeddings = type == "qwen2", EosTokenIds = [50256], BosTokenId = 50256,
        });
        using var _ = torch.no_grad();
        foreach (var (n, p) in m.named_parameters()) if (!n.EndsWith("norm.weight")) p.normal_(0, 0.2);
        return m;
    }

    [Theory]
    [InlineData("llama")]
    [InlineData("qwen2")]
    public void EveryCommandRunsOnALlamaFamilyCheckpoint(string type)
    {
        var root = CoreTestUtil.TempDir("llama-cli-" + type);
        var start = Path.Combine(root, "start");
        var tok = Gpt2Tokenizer.Default();
        using (var m = Model(type, tok.VocabSize)) HfCheckpoint.Save(m, tok, start, overwrite: true);

        var info = Run("info", "--model", start);
        Assert.True(info.Rc == 0, info.Err);
        Assert.Contains(type, info.Out);
        var score = Run("score", "--model", start, "--text", "Hello world, this is a test.", "--json");
        Assert.True(score.Rc == 0, score.Err);
        Assert.True(JsonNode.Parse(score.Out.Trim().Split('\n')[0])!["total_logprob"]!.GetValue<double>() < 0);
        Ok("generate", "--model", start, "--prompt", "Hello world", "--max-new-tokens", "5", "--greedy", "--json");

        var text = Path.Combine(root, "train.txt");
        File.WriteAllText(text, "the river flows through the town and the market sells cheese every monday morning.\n");
        Ok("sft", "--model", start, "--data", text, "--out", Path.Combine(root, "sft"), "--max-steps", "2", "--batch-size", "1", "--max-length", "8", "--lr", "1e-3");
        using (var s = HfCheckpoint.Load(Path.Combine(root, "sft", "model"))) Assert.Equal(type, s.Model.Family);

        var dialogues = Path.Combine(root, "dialogues.jsonl");
        JsonlReader.Write(dialogues, Enumerable.Range(0, 8).Select(i => new JsonObject
        {
            ["prompt"] = $"user {i} asks about the park.",
            ["response"] = i % 2 == 0 ? "[TOXIC] you stupid idiot" : " it is a lovely place",
            ["toxic"] = i % 2 == 0,
        }));
        Ok("toxic-model", "--model", start, "--data", dialogues, "--out", Path.Combine(root, "tox"), "--max-steps", "2", "--batch-size", "4", "--lr", "1e-3");
        var toxDir = Path.Combine(root, "tox", "model");
        using (var t = HfCheckpoint.Load(toxDir))
        {
            Assert.Equal(50257, t.Tokenizer.SpecialTokens[ToxicModel.ControlToken]);
            Assert.Equal(50258, t.Model.VocabSize);
            Assert.Equal([50258, 16], t.Model.TokenEmbedding.shape);
            Assert.Equal([50258, 16], t.Model.Unembedding.shape);
        }

        var prompts = Path.Combine(root, "prompts.jsonl");
        JsonlReader.Write(prompts, Enumerable.Range(0, 6).Select(i => new JsonObject { ["prompt"] = $"Prompt {i}: the weather today is" }));
        var triples = Path.Combine(root, "triples.jsonl");
        Ok("make-pairs", "--model", start, "--prompts", prompts, "--out", triples, "--toxic-model", toxDir, "--triples", "--max-new-tokens", "6");
        var vec = Path.Combine(root, "dir.safetensors");
        Safetensors.Save(vec, new Dictionary<string, Tensor> { ["probe"] = torch.randn(16) });
        var pairs = Path.Combine(root, "pairs.jsonl");
        Ok("make-pairs", "--model", start, "--prompts", prompts, "--out", pairs, "--steer-vector", vec, "--steer-key", "probe", "--steer-scale", "50", "--steer-layer", "1", "--max-new-tokens", "6");
        var common = new[] { "--lr", "1e-3", "--batch-size", "2", "--warmup", "1", "--validation-size", "2", "--max-steps", "2", "--json" };
        Ok(["dpo", "--model", start, "--data", pairs, "--out", Path.Combine(root, "dpo"), .. common]);
        Ok(["adpo", "--model", start, "--data", triples, "--toxic-model", toxDir, "--gamma", "0.5", "--out", Path.Combine(root, "adpo"), .. common]);

        var csv = Path.Combine(root, "c.csv");
        File.WriteAllLines(csv, new[] { "comment_text,toxic" }.Concat(Enumerable.Range(0, 20).Select(i => i % 2 == 0 ? $"you are an idiot number {i},1" : $"thanks for the help number {i},0")));
        Ok("probe", "--model", start, "--data", csv, "--out", Path.Combine(root, "probe"), "--max-steps", "50");
        Ok("vectors", "--model", start, "--probe", Path.Combine(root, "probe"), "--out", Path.Combine(root, "vec"), "--svd-vectors", "8");
        Ok("unalign", "--model", start, "--probe", Path.Combine(root, "probe"), "--out", Path.Combine(root, "un"), "--k", "3");
        var un = JsonNode.Parse(File.ReadAllText(Path.Combine(root, "un", "unalign.json")))!;
        using (var before = HfCheckpoint.Load(start))
        using (var after = HfCheckpoint.Load(Path.Combine(root, "un")))
            foreach (var n in un["neurons"]!.AsArray())
            {
                int l = n!["layer"]!.GetValue<int>(), i = n["neuron"]!.GetValue<int>();
                var up = $"model.layers.{l}.mlp.up_proj.weight";
                // the key of a gated MLP is the up_proj row: scaled by 10, the gate row untouched
                Assert.True(after.Model.Module.state_dict()[up][i].allclose(before.Model.Module.state_dict()[up][i] * 10, 1e-6, 1e-6));
                var gate = $"model.layers.{l}.mlp.gate_proj.weight";
                Assert.True(after.Model.Module.state_dict()[gate][i].eq(before.Model.Module.state_dict()[gate][i]).all().item<bool>());
            }
        var diffPrompts = Path.Combine(root, "p.jsonl");
        File.WriteAllText(diffPrompts, "{\"prompt\":{\"text\":\"You are such a\"}}\n{\"prompt\":\"Hello there\"}\n");
        Ok("diff", "--before", start, "--after", Path.Combine(root, "un"), "--probe", Path.Combine(root, "probe"), "--prompts", diffPrompts, "--out", Path.Combine(root, "diff"), "--max-new-tokens", "3");
        var ppl = Path.Combine(root, "ppl.txt");
        File.WriteAllText(ppl, "the river flows through the town and the market sells cheese every monday morning. " +
            "the weather today is fine and the park is open.\n");
        Ok("eval", "--model", start, "--scorer", "toy", "--prompts", prompts, "--ppl-text", ppl, "--out", Path.Combine(root, "eval"));
    }

    [Fact]
    public void ToyLlamaStudyConfigIsTheToyConfigWithTheLlamaArchitecture()
    {
        var d = new DirectoryInfo(AppContext.BaseDirectory);
        while (d is not null && !File.Exists(Path.Combine(d.FullName, "DetoxSharp.sln"))) d = d.Parent;
        var configs = Path.Combine(d?.FullName ?? throw new InvalidOperationException("repo root not found"), "configs");
        var llama = DetoxSharp.Study.StudyConfig.Load(Path.Combine(configs, "toy-llama.json"));
        var toy = DetoxSharp.Study.StudyConfig.Load(Path.Combine(configs, "toy.json"));
        llama.Validate("toy-llama.json");
        Assert.Equal("llama", llama.Pretrain["arch"]!.GetValue<string>());
        // everything else is the default study
        var a = JsonNode.Parse(llama.ToJson())!; var b = JsonNode.Parse(toy.ToJson())!;
        a["pretrain"]!.AsObject().Remove("arch");
        Assert.Equal(b.ToJsonString(), a.ToJsonString());
        Assert.Contains("llama", ToyPretrainOptions.Architectures);
    }
}

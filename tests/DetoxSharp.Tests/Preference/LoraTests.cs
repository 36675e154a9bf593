using System.Text.Json.Nodes;
using DetoxSharp.Checkpoints;
using DetoxSharp.Models;
using DetoxSharp.Text;
using DetoxSharp.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Tests.Preference;

public class LoraTests
{
    static string BaseDir(string tag)
    {
        var dir = Path.Combine(Tiny.TempDir("lora-" + tag), "base");
        var m = new LlamaModel(new LlamaConfig
        {
            VocabSize = 50257, HiddenSize = 16, IntermediateSize = 24, NumHiddenLayers = 2, NumAttentionHeads = 4,
            NumKeyValueHeads = 2, MaxPositionEmbeddings = 64, EosTokenIds = [50256], BosTokenId = 50256,
        }, initialize: false);
        var g = new torch.Generator(5);
        using (torch.no_grad())
            foreach (var (n, p) in m.named_parameters().OrderBy(x => x.name, StringComparer.Ordinal))
                p.copy_(n.EndsWith("norm.weight") ? torch.ones_like(p) : torch.randn(p.shape, generator: g) * 0.05);
        HfCheckpoint.Save(m, Gpt2Tokenizer.Default(), dir);
        m.Dispose();
        return dir;
    }

    static Tensor Logits(ICausalLM m)
    {
        using var _ = torch.no_grad();
        return m.Forward(torch.tensor(new long[] { 464, 1110, 318, 257, 1332, 13 }, [1, 6])).detach().clone();
    }

    [Fact]
    public void LoraDpoStartsAtLn2TrainsOnlyAdaptersAndMergesToTheSameScores()
    {
        var baseDir = BaseDir("dpo");
        var root = Path.GetDirectoryName(baseDir)!;
        using var policy = HfCheckpoint.Load(baseDir);
        var baseWeights = policy.Model.Module.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.detach().clone());
        var lora = LoraAdapters.Attach(policy.Model, new LoraOptions { Rank = 4, Alpha = 8, Targets = ["q_proj", "v_proj", "up_proj", "down_proj"] }, baseDir);
        Assert.Equal(8, lora.Modules.Count);
        // B = 0: the adapted model equals the base exactly
        using (var b0 = HfCheckpoint.Load(baseDir)) Assert.True(Logits(policy.Model).eq(Logits(b0.Model)).all().item<bool>());

        var opts = PreferenceTrainerTests.Opts(Path.Combine(root, "cache")) with { EvalEvery = 0, MaxSteps = 4, LearningRate = 1e-2 };
        var r = new PreferenceTrainer(policy.Model, policy.Tokenizer, opts).Train(Tiny.Pairs(24), Path.Combine(root, "dpo"));
        var losses = MetricsLog.Read(r.MetricsPath).Where(x => x["phase"] is null).Select(x => x["loss"]!.GetValue<double>()).ToList();
        Assert.Equal(Math.Log(2), losses[0], 5); // policy = frozen base at step 1
        Assert.True(Math.Abs(losses[^1] - Math.Log(2)) > 1e-4, "the adapters did not learn");
        var after = policy.Model.Module.state_dict();
        foreach (var (k, v) in baseWeights) Assert.True(v.eq(after[k]).all().item<bool>(), $"base weight {k} changed");
        Assert.True(after["model.layers.0.self_attn.q_proj.lora_B.weight"].abs().max().item<float>() > 0);

        // the trainer's final directory is a PEFT adapter with PEFT's key names
        var final = Path.Combine(root, "dpo", "final");
        Assert.False(File.Exists(Path.Combine(final, "config.json")));
        var cfg = JsonNode.Parse(File.ReadAllText(Path.Combine(final, "adapter_config.json")))!;
        Assert.Equal("LORA", cfg["peft_type"]!.GetValue<string>());
        Assert.Equal(4, cfg["r"]!.GetValue<int>());
        var keys = Safetensors.Load(Path.Combine(final, "adapter_model.safetensors")).Keys.ToList();
        Assert.Contains("base_model.model.model.layers.1.mlp.down_proj.lora_A.weight", keys);
        Assert.Contains("base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight", keys);
        Assert.Equal(16, keys.Count);

        // the adapter loads on its base and scores like the trained model; merge-lora gives a plain checkpoint scoring the same
        var trained = Logits(policy.Model);
        using (var loaded = HfCheckpoint.Load(final)) Assert.True((Logits(loaded.Model) - trained).abs().max().item<float>() < 1e-6);
        var merged = Path.Combine(root, "merged");
        var o = new StringWriter(); var e = new StringWriter();
        Assert.True(DetoxSharp.Cli.DetoxCli.Run(["merge-lora", "--adapter", final, "--out", merged], o, e) == 0, e.ToString());
        Assert.True(File.Exists(Path.Combine(merged, "config.json")));
        using var plain = HfCheckpoint.Load(merged);
        Assert.Null(LoraAdapters.Of(plain.Model));
        Assert.True((Logits(plain.Model) - trained).abs().max().item<float>() < 1e-5);
        using var b = HfCheckpoint.Load(baseDir);
        Assert.True((Logits(b.Model) - trained).abs().max().item<float>() > 1e-4);
    }

    [Fact]
    public void HandWrittenPeftAdapterAppliesAlphaOverRTimesBA()
    {
        var baseDir = BaseDir("peft");
        var adapter = Path.Combine(Path.GetDirectoryName(baseDir)!, "adapter");
        Directory.CreateDirectory(adapter);
        // rank 2 on layer 0's o_proj and layer 1's gate_proj, α = 6 → scale 3
        var g = new torch.Generator(9);
        var a0 = torch.randn([2, 16], generator: g); var b0 = torch.randn([16, 2], generator: g);
        var a1 = torch.randn([2, 16], generator: g); var b1 = torch.randn([24, 2], generator: g);
        Safetensors.Save(Path.Combine(adapter, "adapter_model.safetensors"), new Dictionary<string, Tensor>
        {
            ["base_model.model.model.layers.0.self_attn.o_proj.lora_A.weight"] = a0,
            ["base_model.model.model.layers.0.self_attn.o_proj.lora_B.weight"] = b0,
            ["base_model.model.model.layers.1.mlp.gate_proj.lora_A.weight"] = a1,
            ["base_model.model.model.layers.1.mlp.gate_proj.lora_B.weight"] = b1,
        });
        File.WriteAllText(Path.Combine(adapter, "adapter_config.json"), new JsonObject
        {
            ["peft_type"] = "LORA", ["task_type"] = "CAUSAL_LM", ["base_model_name_or_path"] = "../base", ["r"] = 2, ["lora_alpha"] = 6,
            ["target_modules"] = new JsonArray("o_proj", "gate_proj"), ["bias"] = "none", ["fan_in_fan_out"] = false, ["lora_dropout"] = 0.0,
        }.ToJsonString());
        // o_proj exists in both layers but only layer 0 has tensors: PEFT would have written both, so this is an error
        var err = Assert.Throws<InvalidInputException>(() => HfCheckpoint.Load(adapter));
        Assert.Contains("lacks", err.Message);

        var sd = Safetensors.Load(Path.Combine(adapter, "adapter_model.safetensors"));
        sd["base_model.model.model.layers.1.self_attn.o_proj.lora_A.weight"] = torch.zeros(2, 16);
        sd["base_model.model.model.layers.1.self_attn.o_proj.lora_B.weight"] = torch.zeros(16, 2);
        sd["base_model.model.model.layers.0.mlp.gate_proj.lora_A.weight"] = torch.zeros(2, 16);
        sd["base_model.model.model.layers.0.mlp.gate_proj.lora_B.weight"] = torch.zeros(24, 2);
        Safetensors.Save(Path.Combine(adapter, "adapter_model.safetensors"), sd);
        using var withAdapter = HfCheckpoint.Load(adapter);
        // by hand: W += 3·B·A in the plain base
        using var byHand = HfCheckpoint.Load(baseDir);
        using (torch.no_grad())
        {
            var w = byHand.Model.Module.state_dict();
            w["model.layers.0.self_attn.o_proj.weight"].add_(b0.matmul(a0) * 3);
            w["model.layers.1.mlp.gate_proj.weight"].add_(b1.matmul(a1) * 3);
        }
        Assert.True((Logits(withAdapter.Model) - Logits(byHand.Model)).abs().max().item<float>() < 1e-5);
        // disabled adapters = the base
        LoraAdapters.Of(withAdapter.Model)!.Enabled = false;
        using var plainBase = HfCheckpoint.Load(baseDir);
        Assert.True(Logits(withAdapter.Model).eq(Logits(plainBase.Model)).all().item<bool>());
    }
}

using System.Text.Json.Nodes;
using DetoxSharp.Checkpoints;
using DetoxSharp.Generation;
using DetoxSharp.Models;
using DetoxSharp.Text;
using Generator = DetoxSharp.Generation.Generator;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Tests.Core;

/// <summary>
/// Llama, Llama-3 (llama3 rope scaling, explicit head_dim, GQA), Mistral (sliding window) and Qwen2 (q/k/v bias,
/// tied head) checkpoints written in transformers' layout by the test (tensor names spelled out here), loaded through
/// <see cref="HfCheckpoint"/> and compared with the independent double-precision <see cref="LlamaReference"/>.
/// </summary>
public class LlamaTests
{
    static readonly Lazy<Gpt2Tokenizer> Tok = new(() => Gpt2Tokenizer.Default().Compact(["the cat sat on the mat", "hello world"]));
    static int V => Tok.Value.VocabSize;
    const int D = 16, Layers = 2, Mlp = 24;

    public static TheoryData<string> Kinds => new() { "llama", "llama3", "mistral", "qwen2" };

    /// <summary>config.json as transformers writes it for each kind (tiny sizes).</summary>
    internal static JsonObject Config(string kind, int vocab) => kind switch
    {
        "llama" => new JsonObject
        {
            ["model_type"] = "llama", ["architectures"] = new JsonArray("LlamaForCausalLM"), ["vocab_size"] = vocab,
            ["hidden_size"] = D, ["intermediate_size"] = Mlp, ["num_hidden_layers"] = Layers, ["num_attention_heads"] = 4,
            ["num_key_value_heads"] = 2, ["max_position_embeddings"] = 64, ["rms_norm_eps"] = 1e-5, ["rope_theta"] = 10000.0,
            ["hidden_act"] = "silu", ["tie_word_embeddings"] = false, ["bos_token_id"] = 1, ["eos_token_id"] = vocab - 1,
            ["attention_bias"] = false, ["mlp_bias"] = false, ["rope_scaling"] = null,
        },
        "llama3" => new JsonObject
        {
            ["model_type"] = "llama", ["architectures"] = new JsonArray("LlamaForCausalLM"), ["vocab_size"] = vocab,
            ["hidden_size"] = D, ["intermediate_size"] = Mlp, ["num_hidden_layers"] = Layers, ["num_attention_heads"] = 2,
            ["num_key_value_heads"] = 1, ["head_dim"] = 12, ["max_position_embeddings"] = 64, ["rms_norm_eps"] = 1e-5,
            ["rope_theta"] = 10000.0, ["hidden_act"] = "silu", ["tie_word_embeddings"] = false, ["bos_token_id"] = 1,
            ["eos_token_id"] = new JsonArray(vocab - 1, vocab - 2),
            ["rope_scaling"] = new JsonObject
            {
                ["rope_type"] = "llama3", ["factor"] = 8.0, ["low_freq_factor"] = 1.0, ["high_freq_factor"] = 4.0,
                ["original_max_position_embeddings"] = 64,
            },
        },
        "mistral" => new JsonObject
        {
            ["model_type"] = "mistral", ["architectures"] = new JsonArray("MistralForCausalLM"), ["vocab_size"] = vocab,
            ["hidden_size"] = D, ["intermediate_size"] = Mlp, ["num_hidden_layers"] = Layers, ["num_attention_heads"] = 4,
            ["num_key_value_heads"] = 1, ["max_position_embeddings"] = 64, ["rms_norm_eps"] = 1e-5, ["rope_theta"] = 1e6,
            ["hidden_act"] = "silu", ["tie_word_embeddings"] = false, ["sliding_window"] = 4, ["bos_token_id"] = 1,
            ["eos_token_id"] = vocab - 1,
        },
        "qwen2" => new JsonObject
        {
            ["model_type"] = "qwen2", ["architectures"] = new JsonArray("Qwen2ForCausalLM"), ["vocab_size"] = vocab,
            ["hidden_size"] = D, ["intermediate_size"] = Mlp, ["num_hidden_layers"] = Layers, ["num_attention_heads"] = 4,
            ["num_key_value_heads"] = 2, ["max_position_embeddings"] = 64, ["rms_norm_eps"] = 1e-6, ["rope_theta"] = 1e6,
            ["hidden_act"] = "silu", ["tie_word_embeddings"] = true, ["use_sliding_window"] = false, ["sliding_window"] = 4,
            ["max_window_layers"] = 1, ["bos_token_id"] = vocab - 1, ["eos_token_id"] = vocab - 1,
        },
        _ => throw new ArgumentException(kind),
    };

    /// <summary>Random weights under transformers' names, as [shape, values] in double.</summary>
    static Dictionary<string, (long[] Shape, double[] Data)> RandomWeights(string kind, int vocab, int seed)
    {
        var cfg = Config(kind, vocab);
        int heads = (int)cfg["num_attention_heads"]!, kv = (int)cfg["num_key_value_heads"]!;
        int hd = cfg["head_dim"] is JsonNode h ? (int)h : D / heads;
        bool bias = kind == "qwen2", tied = kind == "qwen2";
        var rng = new Random(seed);
        (long[], double[]) Rand(double std, params long[] shape)
        {
            var n = shape.Aggregate(1L, (a, b) => a * b);
            return (shape, Enumerable.Range(0, (int)n).Select(_ => std * (rng.NextDouble() * 2 - 1) * Math.Sqrt(3)).ToArray());
        }
        (long[], double[]) Norm() => ([D], Enumerable.Range(0, D).Select(_ => 0.5 + rng.NextDouble()).ToArray());
        var w = new Dictionary<string, (long[], double[])> { ["model.embed_tokens.weight"] = Rand(0.5, vocab, D) };
        for (int l = 0; l < Layers; l++)
        {
            string p = $"model.layers.{l}.";
            w[p + "input_layernorm.weight"] = Norm();
            w[p + "self_attn.q_proj.weight"] = Rand(0.4, heads * hd, D);
            w[p + "self_attn.k_proj.weight"] = Rand(0.4, kv * hd, D);
            w[p + "self_attn.v_proj.weight"] = Rand(0.3, kv * hd, D);
            if (bias)
            {
                w[p + "self_attn.q_proj.bias"] = Rand(0.3, heads * hd);
                w[p + "self_attn.k_proj.bias"] = Rand(0.3, kv * hd);
                w[p + "self_attn.v_proj.bias"] = Rand(0.3, kv * hd);
            }
            w[p + "self_attn.o_proj.weight"] = Rand(0.3, D, heads * hd);
            w[p + "post_attention_layernorm.weight"] = Norm();
            w[p + "mlp.gate_proj.weight"] = Rand(0.4, Mlp, D);
            w[p + "mlp.up_proj.weight"] = Rand(0.4, Mlp, D);
            w[p + "mlp.down_proj.weight"] = Rand(0.3, D, Mlp);
        }
        w["model.norm.weight"] = Norm();
        if (!tied) w["lm_head.weight"] = Rand(0.5, vocab, D);
        return w;
    }

    static LlamaReference Reference(string kind, int vocab, Dictionary<string, (long[] Shape, double[] Data)> w)
    {
        var cfg = Config(kind, vocab);
        int heads = (int)cfg["num_attention_heads"]!;
        return new LlamaReference
        {
            Vocab = vocab, D = D, Layers = Layers, Heads = heads, KvHeads = (int)cfg["num_key_value_heads"]!,
            HeadDim = cfg["head_dim"] is JsonNode h ? (int)h : D / heads, Mlp = Mlp,
            Eps = (double)cfg["rms_norm_eps"]!, Theta = (double)cfg["rope_theta"]!,
            QkvBias = kind == "qwen2", Tied = kind == "qwen2", Window = kind == "mistral" ? 4 : null,
            Llama3 = kind == "llama3" ? (8.0, 1.0, 4.0, 64.0) : null,
            W = w.ToDictionary(kv => kv.Key, kv => kv.Value.Data),
        };
    }

    /// <summary>Writes a checkpoint directory the way transformers' save_pretrained lays it out (tensors in float32 here).</summary>
    static string WriteCheckpoint(string kind, Dictionary<string, (long[] Shape, double[] Data)> w, bool extraTiedHead = false)
    {
        var dir = Path.Combine(CoreTestUtil.TempDir("llama-" + kind), "ckpt");
        Directory.CreateDirectory(dir);
        var tensors = w.ToDictionary(kv => kv.Key, kv => torch.tensor(kv.Value.Data.Select(x => (float)x).ToArray(), kv.Value.Shape));
        if (extraTiedHead) tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone();
        // Old Llama checkpoints carry the rotary buffer; it must be ignored.
        tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4);
        Safetensors.Save(Path.Combine(dir, "model.safetensors"), tensors);
        File.WriteAllText(Path.Combine(dir, "config.json"), Config(kind, V).ToJsonString());
        Tok.Value.Save(dir);
        foreach (var t in tensors.Values) t.Dispose();
        return dir;
    }

    static (LoadedModel Model, LlamaReference Ref) Load(string kind, int seed = 3, bool extraTiedHead = false)
    {
        var w = RandomWeights(kind, V, seed);
        var dir = WriteCheckpoint(kind, w, extraTiedHead);
        // The reference sees what the file holds: float32-rounded weights.
        var rounded = w.ToDictionary(kv => kv.Key, kv => (kv.Value.Shape, kv.Value.Data.Select(x => (double)(float)x).ToArray()));
        return (HfCheckpoint.Load(dir), Reference(kind, V, rounded));
    }

    static readonly int[] Sequence = [1, 5, 9, 3, 3, 7, 2, 11, 4, 6, 8, 10];

    [Theory]
    [MemberData(nameof(Kinds))]
    public void LogProbsMatchTheReference(string kind)
    {
        var (loaded, reference) = Load(kind, extraTiedHead: kind == "qwen2");
        using var _ = loaded;
        Assert.Equal(kind == "llama3" ? "llama" : kind, loaded.Model.Family);
        var expected = reference.TokenLogProbs(Sequence);
        using var scope = torch.NewDisposeScope();
        using var ng = torch.no_grad();
        var ids = torch.tensor(Sequence.Select(i => (long)i).ToArray(), [1, Sequence.Length]);
        var got = LogProbs.OfTokens(loaded.Model, ids).to(ScalarType.Float64).data<double>().ToArray();
        for (int i = 0; i < expected.Length; i++)
            Assert.True(Math.Abs(expected[i] - got[i]) < 1e-5, $"{kind} position {i}: reference {expected[i]:R}, model {got[i]:R}");
        // The reference must not be trivially close to a model without the feature the kind exercises.
        Assert.True(expected.Max() - expected.Min() > 0.5, "log-probs are too flat to tell models apart");
    }

    [Theory]
    [MemberData(nameof(Kinds))]
    public void GreedyContinuationsMatchTheReference(string kind)
    {
        var (loaded, reference) = Load(kind);
        using var _ = loaded;
        int[] prompt = [1, 5, 9, 3];
        var expected = reference.Greedy(prompt, 8);
        var got = Generator.Generate(loaded.Model, [prompt], new GenerationOptions { MaxNewTokens = 8, StopAtEos = false })[0];
        Assert.Equal(expected, got);
    }

    [Theory]
    [MemberData(nameof(Kinds))]
    public void KvCacheEqualsRecomputation(string kind)
    {
        var (loaded, _) = Load(kind);
        using var __ = loaded;
        var m = loaded.Model;
        using var scope = torch.NewDisposeScope();
        using var ng = torch.no_grad();
        var ids = torch.tensor(Sequence.Select(i => (long)i).ToArray(), [1, Sequence.Length]);
        var full = m.Forward(ids);
        using var cache = m.NewCache(Sequence.Length);
        var parts = new List<Tensor> { m.Forward(ids.narrow(1, 0, 3), null, cache) };
        for (int t = 3; t < Sequence.Length; t++) parts.Add(m.Forward(ids.narrow(1, t, 1), null, cache));
        var cached = torch.cat(parts, 1);
        // float32 rounding of logits of magnitude ~10 (a position or mask bug changes them by O(1))
        Assert.True(CoreTestUtil.MaxAbsDiff(full, cached) < 1e-4, $"{kind}: cached logits differ by {CoreTestUtil.MaxAbsDiff(full, cached)}");
    }

    [Theory]
    [MemberData(nameof(Kinds))]
    public void BatchedLeftPaddedGenerationEqualsOneByOne(string kind)
    {
        var (loaded, _) = Load(kind);
        using var __ = loaded;
        int[][] prompts = [[1, 5, 9, 3, 3, 7, 2], [4, 6], [8, 10, 2, 11]];
        var o = new GenerationOptions { MaxNewTokens = 6, StopAtEos = false, BatchSize = 3 };
        var batched = Generator.Generate(loaded.Model, prompts, o);
        var single = prompts.Select(p => Generator.Generate(loaded.Model, [p], o with { BatchSize = 1 })[0]).ToList();
        Assert.Equal(single, batched);
        using var scope = torch.NewDisposeScope();
        using var ng = torch.no_grad();
        // And the log-probs of a left-padded row equal the unpadded row's.
        var padded = torch.tensor(new long[] { 0, 0, 0, 4, 6, 8, 10 }, [1, 7]);
        var mask = torch.tensor(new long[] { 0, 0, 0, 1, 1, 1, 1 }, [1, 7]);
        var a = LogProbs.OfTokens(loaded.Model, padded, mask).narrow(1, 3, 3);
        var b = LogProbs.OfTokens(loaded.Model, torch.tensor(new long[] { 4, 6, 8, 10 }, [1, 4]));
        Assert.True(CoreTestUtil.MaxAbsDiff(a, b) < 1e-5);
    }

    [Fact]
    public void SlidingWindowChangesResultsOnlyBeyondTheWindow()
    {
        // The same weights read as Mistral with window 4 and as Llama (full attention): equal for the first 4 positions,
        // different after — the window is really applied.
        var (mistral, _) = Load("mistral");
        using var _1 = mistral;
        var cfg = ((LlamaModel)mistral.Model).Config with { ModelType = "llama", SlidingWindow = null };
        using var llama = new LlamaModel(cfg, initialize: false);
        using (torch.no_grad()) foreach (var (n, p) in llama.named_parameters()) p.copy_(mistral.Model.Module.state_dict()[n]);
        using var scope = torch.NewDisposeScope();
        using var ng = torch.no_grad();
        var ids = torch.tensor(Sequence.Select(i => (long)i).ToArray(), [1, Sequence.Length]);
        var a = mistral.Model.Forward(ids); var b = llama.Forward(ids);
        Assert.True(CoreTestUtil.MaxAbsDiff(a.narrow(1, 0, 4), b.narrow(1, 0, 4)) < 1e-6);
        Assert.True(CoreTestUtil.MaxAbsDiff(a.narrow(1, 4, 8), b.narrow(1, 4, 8)) > 1e-3);
    }

    [Theory]
    [InlineData("llama", ScalarType.Float32, null)]
    [InlineData("qwen2", ScalarType.BFloat16, null)]
    [InlineData("mistral", ScalarType.Float16, null)]
    [InlineData("llama3", ScalarType.Float32, 4096L)]
    public void SaveLoadIsBitExact(string kind, ScalarType dtype, long? shard)
    {
        var (loaded, _) = Load(kind);
        using var __ = loaded;
        loaded.Model.Module.to(dtype);
        var dir = Path.Combine(CoreTestUtil.TempDir("llama-save"), "out");
        HfCheckpoint.Save(loaded.Model, Tok.Value, dir, maxShardBytes: shard);
        if (shard is not null)
        {
            Assert.True(File.Exists(Path.Combine(dir, "model.safetensors.index.json")));
            Assert.True(Directory.GetFiles(dir, "model-*-of-*.safetensors").Length > 1);
        }
        var cfg = HfCheckpoint.ReadConfig(dir);
        Assert.Equal(dtype switch { ScalarType.BFloat16 => "bfloat16", ScalarType.Float16 => "float16", _ => "float32" }, cfg["torch_dtype"]!.ToString());
        using var back = HfCheckpoint.Load(dir, new LoadOptions { DType = dtype });
        var sa = loaded.Model.Module.state_dict();
        var sb = back.Model.Module.state_dict();
        Assert.Equal(sa.Keys.OrderBy(k => k), sb.Keys.OrderBy(k => k));
        foreach (var (k, t) in sa)
        {
            Assert.Equal(dtype, sb[k].dtype);
            Assert.True(t.eq(sb[k]).all().item<bool>(), $"{k} differs after round trip");
        }
        Assert.Equal(loaded.Model.ConfigJson().ToJsonString(), back.Model.ConfigJson().ToJsonString());
        if (kind == "qwen2") Assert.DoesNotContain("lm_head.weight", sb.Keys);
        else Assert.Contains("lm_head.weight", sb.Keys);
    }

    [Fact]
    public void TiedHeadThatDiffersIsRejected()
    {
        var w = RandomWeights("qwen2", V, 5);
        var dir = WriteCheckpoint("qwen2", w);
        var sd = Safetensors.Load(Path.Combine(dir, "model.safetensors"));
        sd["lm_head.weight"] = torch.randn(sd["model.embed_tokens.weight"].shape);
        Safetensors.Save(Path.Combine(dir, "model.safetensors"), sd);
        var e = Assert.Throws<InvalidInputException>(() => HfCheckpoint.Load(dir));
        Assert.Contains("lm_head.weight differs", e.Message);
    }

    [Fact]
    public void UnknownRopeScalingAndBadHeadsAreOneLineErrors()
    {
        foreach (var (mutate, expect) in new (Action<JsonObject>, string)[]
        {
            (c => c["rope_scaling"] = new JsonObject { ["rope_type"] = "yarn", ["factor"] = 2.0 }, "rope_scaling type 'yarn'"),
            (c => c["num_key_value_heads"] = 3, "multiple of num_key_value_heads"),
            (c => c["hidden_act"] = "gelu", "hidden_act"),
        })
        {
            var dir = WriteCheckpoint("llama", RandomWeights("llama", V, 1));
            var cfg = Config("llama", V); mutate(cfg);
            File.WriteAllText(Path.Combine(dir, "config.json"), cfg.ToJsonString());
            var e = Assert.Throws<InvalidInputException>(() => HfCheckpoint.Load(dir));
            Assert.Contains(expect, e.Message);
            Assert.Contains("config.json", e.Message);
        }
    }

    [Fact]
    public void ResizeVocabularyGrowsEmbeddingAndUntiedHead()
    {
        var (loaded, _) = Load("llama");
        using var __ = loaded;
        var m = loaded.Model;
        using var scope = torch.NewDisposeScope();
        var embMean = m.TokenEmbedding.mean([0]).clone();
        var headMean = m.Unembedding.mean([0]).clone();
        m.ResizeVocabulary(V + 2);
        Assert.Equal(V + 2, m.VocabSize);
        Assert.Equal([V + 2, D], m.TokenEmbedding.shape);
        Assert.Equal([V + 2, D], m.Unembedding.shape);
        Assert.True(CoreTestUtil.MaxAbsDiff(m.TokenEmbedding[V + 1], embMean) < 1e-6);
        Assert.True(CoreTestUtil.MaxAbsDiff(m.Unembedding[V + 1], headMean) < 1e-6);
        Assert.True(CoreTestUtil.MaxAbsDiff(m.TokenEmbedding[V], m.Unembedding[V]) > 1e-3); // untied: two different matrices
        using var ng = torch.no_grad();
        Assert.Equal(V + 2, m.Forward(torch.tensor(new long[] { 1, V + 1 }, [1, 2])).shape[2]);
        using var clone = m.Clone();
        Assert.Equal(V + 2, clone.VocabSize);
    }

    [Fact]
    public void ForwardEmbeddingsOfLookedUpTokensEqualsForward()
    {
        var (loaded, _) = Load("llama3");
        using var __ = loaded;
        using var scope = torch.NewDisposeScope();
        using var ng = torch.no_grad();
        var ids = torch.tensor(new long[] { 1, 5, 9, 3 }, [1, 4]);
        var a = loaded.Model.Forward(ids);
        var b = loaded.Model.ForwardEmbeddings(loaded.Model.TokenEmbedding.index_select(0, ids.reshape(-1)).unsqueeze(0));
        Assert.True(CoreTestUtil.MaxAbsDiff(a, b) < 1e-6);
    }

    [Theory]
    [MemberData(nameof(Kinds))]
    public void ParameterCountEqualsTheModelsParametersAndHugeConfigsAreRefusedBeforeAllocation(string kind)
    {
        var cfg = LlamaConfig.FromJson((JsonObject)JsonNode.Parse(Config(kind, 50).ToJsonString())!); // as read from a file
        using (var m = new LlamaModel(cfg, initialize: false))
            Assert.Equal((double)m.parameters().Sum(p => p.numel()), cfg.ParameterCount);

        // a config.json implying ~2·10¹² parameters: refused with the numbers, before any native allocation
        var dir = CoreTestUtil.TempDir("llama-huge-" + kind);
        var huge = Config(kind, 50);
        huge["vocab_size"] = 250_000_000; huge["hidden_size"] = 8192; huge["num_attention_heads"] = 64; huge["intermediate_size"] = 28672;
        if (huge["head_dim"] is not null) huge["head_dim"] = 128;
        File.WriteAllText(Path.Combine(dir, "config.json"), huge.ToJsonString());
        var e = Assert.Throws<InvalidInputException>(() => HfCheckpoint.Load(dir));
        Assert.Contains("config.json", e.Message);
        Assert.Contains("needs", e.Message);
        Assert.Contains("available", e.Message);
    }
}

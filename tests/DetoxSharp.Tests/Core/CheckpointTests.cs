using System.Text.Json.Nodes;
using DetoxSharp.Checkpoints;
using DetoxSharp.Models;
using DetoxSharp.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Tests.Core;

public class CheckpointTests
{
    static readonly Lazy<Gpt2Tokenizer> Tok = new(() => Gpt2Tokenizer.Default().Compact(["the cat sat on the mat", "hello world"]));
    static Gpt2Tokenizer SmallTok() => Tok.Value;
    static int V => Tok.Value.VocabSize;

    static void AssertBitExact(Gpt2Model a, ICausalLM b)
    {
        var sa = a.state_dict();
        var sb = b.Module.state_dict();
        Assert.Equal(sa.Keys.OrderBy(k => k), sb.Keys.OrderBy(k => k));
        foreach (var (k, t) in sa)
        {
            Assert.Equal(t.dtype, sb[k].dtype);
            Assert.Equal(t.shape, sb[k].shape);
            Assert.True(t.eq(sb[k]).all().item<bool>(), $"{k} differs after round trip");
        }
    }

    /// <summary>Builds a checkpoint dir, then lets <paramref name="mutate"/> damage it; returns the dir.</summary>
    static string Saved(string tag, Gpt2Model? model = null)
    {
        var dir = Path.Combine(CoreTestUtil.TempDir(tag), "ckpt");
        using var m = model is null ? CoreTestUtil.Tiny(vocab: V) : null;
        HfCheckpoint.Save(model ?? m!, SmallTok(), dir);
        return dir;
    }

    [Theory]
    [InlineData(KeyConvention.Hub, ScalarType.Float32)]
    [InlineData(KeyConvention.Transformers, ScalarType.Float32)]
    [InlineData(KeyConvention.Hub, ScalarType.BFloat16)]
    public void SaveLoadIsBitExact(KeyConvention convention, ScalarType dtype)
    {
        var tok = SmallTok();
        using var m = CoreTestUtil.Tiny(vocab: tok.VocabSize);
        if (dtype != ScalarType.Float32) m.to(dtype);
        var dir = Path.Combine(CoreTestUtil.TempDir("rt"), "ckpt");
        HfCheckpoint.Save(m, tok, dir, convention);
        var keys = Safetensors.ReadHeader(Path.Combine(dir, "model.safetensors")).Entries.Select(e => e.Name).ToList();
        Assert.Contains(convention == KeyConvention.Hub ? "wte.weight" : "transformer.wte.weight", keys);
        Assert.Contains(convention == KeyConvention.Hub ? "h.1.attn.c_attn.weight" : "transformer.h.1.attn.c_attn.weight", keys);
        var cfg = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "config.json")))!;
        Assert.Equal("gpt2", cfg["model_type"]!.GetValue<string>());
        Assert.Equal(8, cfg["n_embd"]!.GetValue<int>());
        // Conv1D orientation: c_attn stored [in, out] = [8, 24]
        Assert.Equal(new long[] { 8, 24 }, Safetensors.ReadHeader(Path.Combine(dir, "model.safetensors")).Entries.First(e => e.Name.EndsWith("h.0.attn.c_attn.weight")).Shape);
        using var loaded = HfCheckpoint.Load(dir, new LoadOptions { DType = dtype });
        AssertBitExact(m, loaded.Model);
        Assert.Equal(tok.Encode("the cat sat"), loaded.Tokenizer.Encode("the cat sat"));
        using var _ = torch.no_grad();
        using var ids = CoreTestUtil.Ids([1, 2, 3, 4]);
        Assert.True(m.Forward(ids).eq(loaded.Model.Forward(ids)).all().item<bool>());
    }

    [Fact]
    public void ShardedSafetensorsWithIndexLoad()
    {
        using var m = CoreTestUtil.Tiny(vocab: V);
        var dir = CoreTestUtil.TempDir("shard");
        var sd = m.state_dict();
        var names = sd.Keys.OrderBy(k => k).ToList();
        var a = names.Where((_, i) => i % 2 == 0).ToList();
        var b = names.Where((_, i) => i % 2 == 1).ToList();
        Safetensors.Save(Path.Combine(dir, "model-00001-of-00002.safetensors"), a.ToDictionary(k => "transformer." + k, k => sd[k]));
        Safetensors.Save(Path.Combine(dir, "model-00002-of-00002.safetensors"), b.ToDictionary(k => "transformer." + k, k => sd[k]));
        var map = new JsonObject();
        foreach (var k in a) map["transformer." + k] = "model-00001-of-00002.safetensors";
        foreach (var k in b) map["transformer." + k] = "model-00002-of-00002.safetensors";
        File.WriteAllText(Path.Combine(dir, "model.safetensors.index.json"), new JsonObject { ["metadata"] = new JsonObject(), ["weight_map"] = map }.ToJsonString());
        File.WriteAllText(Path.Combine(dir, "config.json"), m.ConfigJson().ToJsonString());
        SmallTok().Save(dir);
        using var loaded = HfCheckpoint.Load(dir);
        AssertBitExact(m, loaded.Model);

        File.Delete(Path.Combine(dir, "model-00002-of-00002.safetensors"));
        var e = Assert.Throws<InvalidInputException>(() => HfCheckpoint.Load(dir));
        Assert.Contains("model-00002-of-00002.safetensors", e.Message);
    }

    [Fact]
    public void PickleLoadsOnlyWhenAllowed()
    {
        using var m = CoreTestUtil.Tiny(vocab: V);
        var dir = CoreTestUtil.TempDir("pickle");
        var sd = m.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value);
        TorchSharp.PyBridge.PyTorchPickler.PickleStateDict(Path.Combine(dir, "pytorch_model.bin"), sd);
        File.WriteAllText(Path.Combine(dir, "config.json"), m.ConfigJson().ToJsonString());
        SmallTok().Save(dir);
        var e = Assert.Throws<InvalidInputException>(() => HfCheckpoint.Load(dir));
        Assert.Contains("pytorch_model.bin", e.Message);
        Assert.Contains("--allow-pickle", e.Message);
        using var loaded = HfCheckpoint.Load(dir, new LoadOptions { AllowPickle = true });
        AssertBitExact(m, loaded.Model);
    }

    [Fact]
    public void ExplicitTiedHeadAndOldBuffersAccepted()
    {
        using var m = CoreTestUtil.Tiny(vocab: V);
        var dir = CoreTestUtil.TempDir("tied");
        var sd = m.state_dict().ToDictionary(kv => "transformer." + kv.Key, kv => kv.Value);
        sd["lm_head.weight"] = m.state_dict()["wte.weight"];
        using var bias = torch.tril(torch.ones(16, 16)).view(1, 1, 16, 16);
        using var masked = torch.tensor(-1e4f);
        sd["transformer.h.0.attn.bias"] = bias;
        sd["transformer.h.0.attn.masked_bias"] = masked;
        Safetensors.Save(Path.Combine(dir, "model.safetensors"), sd);
        File.WriteAllText(Path.Combine(dir, "config.json"), m.ConfigJson().ToJsonString());
        SmallTok().Save(dir);
        using (var loaded = HfCheckpoint.Load(dir)) AssertBitExact(m, loaded.Model);

        // an lm_head that is not the embedding cannot be represented by a tied model: refused, not silently dropped
        using var other = torch.randn(V, 8);
        sd["lm_head.weight"] = other;
        Safetensors.Save(Path.Combine(dir, "model.safetensors"), sd);
        var e = Assert.Throws<InvalidInputException>(() => HfCheckpoint.Load(dir));
        Assert.Contains("lm_head.weight", e.Message);
    }

    public static TheoryData<string> Corruptions => new()
    {
        "truncate", "garbage-header", "huge-header-length", "tiny-file", "malformed-config", "missing-tensor", "wrong-shape",
        "unknown-model-type", "no-weights", "missing-dir", "bad-config-value",
    };

    [Theory]
    [MemberData(nameof(Corruptions))]
    public void CorruptCheckpointGivesClearError(string kind)
    {
        var dir = Saved("bad-" + kind);
        var st = Path.Combine(dir, "model.safetensors");
        var cfgPath = Path.Combine(dir, "config.json");
        string expectFile = st;
        switch (kind)
        {
            case "truncate":
                var bytes = File.ReadAllBytes(st);
                File.WriteAllBytes(st, bytes[..(bytes.Length - 100)]);
                break;
            case "garbage-header":
                var g = File.ReadAllBytes(st);
                for (int i = 8; i < 40; i++) g[i] = (byte)'#';
                File.WriteAllBytes(st, g);
                break;
            case "huge-header-length":
                var h = File.ReadAllBytes(st);
                BitConverter.GetBytes(ulong.MaxValue / 2).CopyTo(h, 0);
                File.WriteAllBytes(st, h);
                break;
            case "tiny-file":
                File.WriteAllBytes(st, [1, 2, 3]);
                break;
            case "malformed-config":
                File.WriteAllText(cfgPath, "{\"model_type\": \"gpt2\", \"n_embd\": ");
                expectFile = cfgPath;
                break;
            case "bad-config-value":
                var c0 = JsonNode.Parse(File.ReadAllText(cfgPath))!.AsObject();
                c0["n_head"] = 3; // 8 not divisible by 3
                File.WriteAllText(cfgPath, c0.ToJsonString());
                expectFile = cfgPath;
                break;
            case "unknown-model-type":
                var c1 = JsonNode.Parse(File.ReadAllText(cfgPath))!.AsObject();
                c1["model_type"] = "mamba";
                File.WriteAllText(cfgPath, c1.ToJsonString());
                expectFile = cfgPath;
                break;
            case "missing-tensor":
            case "wrong-shape":
                var sd = Safetensors.Load(st);
                if (kind == "missing-tensor") sd.Remove("h.1.mlp.c_fc.bias");
                else sd["h.0.attn.c_proj.weight"] = torch.zeros(8, 9);
                Safetensors.Save(st, sd);
                expectFile = dir;
                break;
            case "no-weights":
                File.Delete(st);
                expectFile = dir;
                break;
            case "missing-dir":
                Directory.Delete(dir, true);
                expectFile = dir;
                break;
        }
        var e = Assert.Throws<InvalidInputException>(() => HfCheckpoint.Load(dir));
        Assert.Contains(expectFile, e.Message);
        Assert.DoesNotContain('\n', e.Message);
        if (kind == "missing-tensor") Assert.Contains("h.1.mlp.c_fc.bias", e.Message);
        if (kind == "wrong-shape") Assert.Contains("h.0.attn.c_proj.weight", e.Message);
        if (kind == "unknown-model-type") Assert.Contains("mamba", e.Message);

        // the CLI: exit code 2, one line on stderr naming the file, nothing on stdout
        var o = new StringWriter();
        var err = new StringWriter();
        int rc = DetoxSharp.Cli.DetoxCli.Run(["score", "--model", dir, "--text", "hello"], o, err);
        Assert.Equal(2, rc);
        Assert.Equal("", o.ToString());
        var lines = err.ToString().TrimEnd('\n', '\r').Split('\n');
        Assert.Single(lines);
        Assert.StartsWith("detox: ", lines[0]);
        Assert.Contains(expectFile, lines[0]);
    }

    [Fact]
    public void UnknownFlagIsExitCode2()
    {
        var o = new StringWriter();
        var err = new StringWriter();
        Assert.Equal(2, DetoxSharp.Cli.DetoxCli.Run(["info", "--modelx", "x"], o, err));
        Assert.Single(err.ToString().TrimEnd('\n').Split('\n'));
    }

    [Fact]
    public void ThreadsFlagSetsLibtorchThreadsAndRejectsZero()
    {
        int before = torch.get_num_threads();
        try
        {
            var err = new StringWriter();
            Assert.Equal(2, DetoxSharp.Cli.DetoxCli.Run(["info", "--model", "nowhere", "--threads", "0"], new StringWriter(), err));
            Assert.Equal("detox: --threads must be ≥ 1, got 0", err.ToString().TrimEnd('\n', '\r'));
            Assert.Equal(before, torch.get_num_threads());
            // a valid value is applied before the command runs (even one that then fails on its input)
            int want = before == 1 ? 2 : 1;
            Assert.Equal(2, DetoxSharp.Cli.DetoxCli.Run(["info", "--model", "nowhere", "--threads", $"{want}"], new StringWriter(), new StringWriter()));
            Assert.Equal(want, torch.get_num_threads());
        }
        finally { torch.set_num_threads(before); }
    }

    [Fact]
    public void FailedSaveLeavesExistingCheckpointIntact()
    {
        var tok = SmallTok();
        using var original = CoreTestUtil.Tiny(vocab: tok.VocabSize, seed: 3);
        var dir = Path.Combine(CoreTestUtil.TempDir("nosave"), "ckpt");
        HfCheckpoint.Save(original, tok, dir);
        var before = Directory.GetFiles(dir).ToDictionary(Path.GetFileName, f => File.ReadAllBytes(f));

        using var other = CoreTestUtil.Tiny(vocab: tok.VocabSize, seed: 4);
        // without overwrite: refused
        Assert.Throws<InvalidInputException>(() => HfCheckpoint.Save(other, tok, dir));
        // with overwrite, but the save fails midway (a tensor of a dtype safetensors cannot store is caught only while writing)
        using var broken = new BrokenModel(other);
        Assert.ThrowsAny<Exception>(() => HfCheckpoint.Save(broken, tok, dir, overwrite: true));
        var after = Directory.GetFiles(dir).ToDictionary(Path.GetFileName, f => File.ReadAllBytes(f));
        Assert.Equal(before.Keys.OrderBy(k => k), after.Keys.OrderBy(k => k));
        foreach (var (k, v) in before) Assert.Equal(v, after[k]);
        Assert.Empty(Directory.GetDirectories(Path.GetDirectoryName(dir)!).Where(d => d != dir));
        using var loaded = HfCheckpoint.Load(dir);
        AssertBitExact(original, loaded.Model);
    }

    /// <summary>Delegates to a real model but fails when its config is serialised (after the weights were written).</summary>
    sealed class BrokenModel(Gpt2Model inner) : ICausalLM
    {
        public string Family => inner.Family;
        public int VocabSize => inner.VocabSize;
        public int DModel => inner.DModel;
        public int NumLayers => inner.NumLayers;
        public int NumHeads => inner.NumHeads;
        public int MlpDim => inner.MlpDim;
        public int MaxPositions => inner.MaxPositions;
        public int EosTokenId => inner.EosTokenId;
        public Device Device => inner.Device;
        public ScalarType DType => inner.DType;
        public nn.Module Module => inner;
        public HookPoints Hooks => inner.Hooks;
        public Tensor Forward(Tensor inputIds, Tensor? attentionMask = null, KvCache? cache = null) => inner.Forward(inputIds, attentionMask, cache);
        public Tensor ResidualStream(Tensor inputIds, Tensor? attentionMask = null, KvCache? cache = null) => inner.ResidualStream(inputIds, attentionMask, cache);
        public Tensor ResidualStream(Tensor inputIds, SequenceLayout layout) => inner.ResidualStream(inputIds, layout);
        public Tensor ApplyFinalNorm(Tensor residual) => inner.ApplyFinalNorm(residual);
        public Tensor Unembedding => inner.Unembedding;
        public Tensor TokenEmbedding => inner.TokenEmbedding;
        public Tensor ForwardEmbeddings(Tensor inputsEmbeds, Tensor? attentionMask = null, KvCache? cache = null) => inner.ForwardEmbeddings(inputsEmbeds, attentionMask, cache);
        public Tensor MlpKeys(int layer) => inner.MlpKeys(layer);
        public Tensor MlpKeyBias(int layer) => inner.MlpKeyBias(layer);
        public Tensor MlpValues(int layer) => inner.MlpValues(layer);
        public string MlpKeysParameterName(int layer) => inner.MlpKeysParameterName(layer);
        public string MlpValuesParameterName(int layer) => inner.MlpValuesParameterName(layer);
        public KvCache NewCache(int capacity) => inner.NewCache(capacity);
        public ICausalLM Clone() => inner.Clone();
        public void ResizeVocabulary(int newSize) => inner.ResizeVocabulary(newSize);
        public JsonObject ConfigJson() => throw new IOException("simulated failure while writing config.json");
        public void Dispose() { }
    }

    [Fact]
    public void SafetensorsLoadStreamsEachTensorInChunksBitExactly()
    {
        // chunk sizes that are not a multiple of any element size, smaller than one element, and larger than a tensor:
        // every tensor must come back bit-identical to what was saved (and to a whole-file read)
        var dir = CoreTestUtil.TempDir("st-chunks");
        var path = Path.Combine(dir, "t.safetensors");
        var g = new torch.Generator(17);
        var saved = new Dictionary<string, Tensor>
        {
            ["f32"] = torch.randn([7, 13], generator: g),
            ["bf16"] = torch.randn([5, 3, 2], generator: g).to(ScalarType.BFloat16),
            ["f16"] = torch.randn([11], generator: g).to(ScalarType.Float16),
            ["i64"] = torch.randint(-1000, 1000, [9], ScalarType.Int64, generator: g),
            ["f64"] = torch.randn([3, 4], ScalarType.Float64, generator: g),
            ["empty"] = torch.zeros([0, 4]),
        };
        Safetensors.Save(path, saved);
        foreach (long chunk in new long[] { 1, 3, 7, 24, 1 << 20 })
        {
            var loaded = Safetensors.Load(path, chunkBytes: chunk);
            Assert.Equal(saved.Keys.OrderBy(k => k), loaded.Keys.OrderBy(k => k));
            foreach (var (k, v) in saved)
            {
                Assert.Equal(v.dtype, loaded[k].dtype);
                Assert.Equal(v.shape, loaded[k].shape);
                Assert.True(v.bytes.SequenceEqual(loaded[k].bytes), $"chunk {chunk}: {k} differs");
            }
            foreach (var t in loaded.Values) t.Dispose();
        }
        Assert.Throws<ArgumentOutOfRangeException>(() => Safetensors.Load(path, chunkBytes: 0));
    }
}

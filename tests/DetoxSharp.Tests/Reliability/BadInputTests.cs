using System.Text;
using System.Text.Json.Nodes;
using DetoxSharp.Checkpoints;
using DetoxSharp.Data;
using DetoxSharp.Models;
using DetoxSharp.Tests.Core;
using DetoxSharp.Text;
using DetoxSharp.Training;
using TorchSharp;
using static TorchSharp.torch;
using static DetoxSharp.Tests.CliRunner;

namespace DetoxSharp.Tests.Reliability;

/// <summary>Each failure of issue 15 that was a crash or accepted garbage, as a case: now a one-line
/// <see cref="InvalidInputException"/> (exit 2) naming the file and what is wrong.</summary>
public class BadInputTests
{
    static InvalidInputException Rejects(Action a, params string[] mustContain)
    {
        var e = Assert.Throws<InvalidInputException>(a);
        Assert.DoesNotContain("\n", e.Message);
        foreach (var s in mustContain) Assert.Contains(s, e.Message);
        return e;
    }

    // ---- safetensors: validated like the reference implementation ----

    /// <summary>A file with two F32 tensors a [2] and b [3] (20 data bytes), with the header given as JSON text.</summary>
    static string RawSafetensors(string header, int dataBytes = 20, long? declaredLength = null)
    {
        var path = Path.Combine(CoreTestUtil.TempDir("st"), "x.safetensors");
        var h = Encoding.UTF8.GetBytes(header);
        File.WriteAllBytes(path, [.. BitConverter.GetBytes((ulong)(declaredLength ?? h.Length)), .. h, .. new byte[dataBytes]]);
        return path;
    }

    const string A = "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}";
    const string B = "\"b\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[8,20]}";

    [Fact]
    public void SafetensorsValidHeaderLoads()
    {
        var t = Safetensors.Load(RawSafetensors("{" + A + "," + B + "}"));
        Assert.Equal([2L], t["a"].shape);
        Assert.Equal([3L], t["b"].shape);
    }

    [Fact]
    public void SafetensorsHeaderLengthOneShortIsRejected()
    {
        var header = "{" + A + "," + B + "}  ";
        // one byte short: the header's last byte is read as data, and the tensors no longer tile the buffer
        Rejects(() => Safetensors.Load(RawSafetensors(header, declaredLength: header.Length - 1)), "x.safetensors");
        Rejects(() => Safetensors.Load(RawSafetensors(header, declaredLength: header.Length + 1)), "x.safetensors");
    }

    [Theory]
    [InlineData("\"b\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[4,16]}", "overlaps")]
    [InlineData("\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]}", "gap")]
    [InlineData("\"b\":{\"dtype\":\"F32\",\"shape\":[-3],\"data_offsets\":[8,20]}", "negative")]
    [InlineData("\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,20]}", "needs 16 bytes")]
    [InlineData("\"b\":{\"dtype\":\"Q4\",\"shape\":[3],\"data_offsets\":[8,20]}", "dtype")]
    [InlineData("\"b\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[20,8]}", "data_offsets")]
    [InlineData("\"b\":{\"dtype\":\"F32\",\"shape\":[\"3\"],\"data_offsets\":[8,20]}", "list of integers")]
    [InlineData("\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[8,20]}", "Duplicate")]
    public void SafetensorsBadEntriesAreRejected(string second, string expected) =>
        Rejects(() => Safetensors.Load(RawSafetensors("{" + A + "," + second + "}")), "x.safetensors", expected);

    [Fact]
    public void SafetensorsTrailingBytesAreRejected() =>
        Rejects(() => Safetensors.Load(RawSafetensors("{" + A + "," + B + "}", dataBytes: 24)), "cover 20 bytes", "holds 24");

    // ---- config.json, index, tokenizer files ----

    static (string Dir, Gpt2Tokenizer Tok) Checkpoint()
    {
        var tok = Gpt2Tokenizer.Default().Compact(["hello world"]);
        using var m = CoreTestUtil.Tiny(vocab: tok.VocabSize, d: 8, layers: 1, heads: 2, positions: 16);
        var dir = Path.Combine(CoreTestUtil.TempDir("bad"), "model");
        HfCheckpoint.Save(m, tok, dir);
        return (dir, tok);
    }

    static void EditConfig(string dir, Action<JsonObject> edit)
    {
        var path = Path.Combine(dir, "config.json");
        var o = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
        edit(o);
        File.WriteAllText(path, o.ToJsonString());
    }

    [Fact]
    public void ConfigWrongTypesAndDuplicatesAreRejected()
    {
        var (dir, _) = Checkpoint();
        var cfg = Path.Combine(dir, "config.json");
        var good = File.ReadAllText(cfg);
        EditConfig(dir, o => o["model_type"] = 5);
        Rejects(() => HfCheckpoint.Load(dir), "config.json", "model_type", "must be a string");
        File.WriteAllText(cfg, good);
        EditConfig(dir, o => { o.Remove("model_type"); o["architectures"] = new JsonArray(5); });
        Rejects(() => HfCheckpoint.Load(dir), "config.json", "architectures");
        File.WriteAllText(cfg, "{\"n_embd\":8," + good.TrimStart()[1..]); // n_embd is in the file already
        Rejects(() => HfCheckpoint.Load(dir), "config.json", "Duplicate");
        File.WriteAllText(cfg, good);
        EditConfig(dir, o => o["n_layer"] = JsonNode.Parse("1e300"));
        Rejects(() => HfCheckpoint.Load(dir), "config.json", "n_layer");
    }

    [Fact]
    public void ConfigImplyingMoreMemoryThanAvailableIsRefusedWithNumbers()
    {
        var (dir, _) = Checkpoint();
        EditConfig(dir, o => { o["vocab_size"] = 16_000_000; o["n_embd"] = 8192; o["n_head"] = 8; });
        Rejects(() => HfCheckpoint.Load(dir), "config.json", "needs", "GiB", "available");
    }

    [Fact]
    public void ShardIndexWithNumericWeightMapIsRejected()
    {
        var (dir, _) = Checkpoint();
        File.Move(Path.Combine(dir, "model.safetensors"), Path.Combine(dir, "model-00001-of-00001.safetensors"));
        var index = Path.Combine(dir, "model.safetensors.index.json");
        File.WriteAllText(index, "{\"weight_map\":{\"wte.weight\":5}}");
        Rejects(() => HfCheckpoint.Load(dir), "index.json", "weight_map");
        File.WriteAllText(index, "{\"weight_map\":{\"wte.weight\":\"../x.safetensors\"}}");
        Rejects(() => HfCheckpoint.Load(dir), "inside the model directory");
    }

    [Fact]
    public void NegativeOrSharedTokenIdsAreRejected()
    {
        var (dir, tok) = Checkpoint();
        var vocabPath = Path.Combine(dir, "vocab.json");
        var vocab = JsonNode.Parse(File.ReadAllText(vocabPath))!.AsObject();
        var good = vocab.ToJsonString();
        vocab["!"] = -1;
        File.WriteAllText(vocabPath, vocab.ToJsonString());
        Rejects(() => Gpt2Tokenizer.FromDirectory(dir), "vocab.json", "negative id");
        vocab["!"] = 1; // "\"" has id 1
        File.WriteAllText(vocabPath, vocab.ToJsonString());
        Rejects(() => Gpt2Tokenizer.FromDirectory(dir), "vocab.json", "share the id 1");
        File.WriteAllText(vocabPath, good);
        var added = Path.Combine(dir, "added_tokens.json");
        File.WriteAllText(added, "{\"[TOXIC]\": -4}");
        Rejects(() => Gpt2Tokenizer.FromDirectory(dir), "added_tokens.json", "negative id");
        File.WriteAllText(added, "{\"[TOXIC]\": \"x\"}");
        Rejects(() => Gpt2Tokenizer.FromDirectory(dir), "added_tokens.json", "must be an integer");
        File.WriteAllText(added, $"{{\"[TOXIC]\": {tok.VocabSize}}}");
        Assert.Equal(tok.VocabSize, Gpt2Tokenizer.FromDirectory(dir)!.SpecialTokens["[TOXIC]"]);
        File.WriteAllText(Path.Combine(dir, "merges.txt"), "#version: 0.2\nĠ t h e\n");
        Rejects(() => Gpt2Tokenizer.FromDirectory(dir), "merges.txt:2", "two space-separated");
        File.WriteAllText(Path.Combine(dir, "merges.txt"), "#version: 0.2\nzz q\n");
        Rejects(() => Gpt2Tokenizer.FromDirectory(dir), "merges.txt:2", "lacks");
    }

    // ---- data files ----

    [Fact]
    public void PromptFileDuplicateKeyAndLoneSurrogateAreRejectedWithLine()
    {
        var path = Path.Combine(CoreTestUtil.TempDir("prompts"), "p.jsonl");
        File.WriteAllText(path, "{\"prompt\":{\"text\":\"ok\"}}\n{\"prompt\":\"a\",\"prompt\":\"b\"}\n");
        Rejects(() => DatasetReaders.ReadPrompts(path), "p.jsonl:2", "Duplicate");
        File.WriteAllText(path, "{\"prompt\":{\"text\":\"ok\"}}\n\n{\"prompt\":\"a\\ud800b\"}\n");
        Rejects(() => DatasetReaders.ReadPrompts(path), "p.jsonl:3");
        File.WriteAllBytes(path, [.. "{\"prompt\":\""u8, 0xFF, .. "\"}\n"u8]);
        Rejects(() => DatasetReaders.ReadPrompts(path), "p.jsonl:1", "UTF-8");
    }

    [Theory]
    [InlineData("NaN")]
    [InlineData("-0.5")]
    [InlineData("Infinity")]
    [InlineData("yes")]
    public void ProbeLabelsOutsideZeroOneAreRejected(string label)
    {
        var path = Path.Combine(CoreTestUtil.TempDir("csv"), "c.csv");
        File.WriteAllText(path, $"comment_text,toxic\nfine,0\nbad,{label}\n");
        Rejects(() => DatasetReaders.ReadJigsawCsv(path), "c.csv:3", "'toxic' must be 0/1");
    }

    // ---- resume from a corrupt or mismatched checkpoint ----

    static (string Dir, Gpt2Model Model) SavedTrainerCheckpoint(bool adamw)
    {
        var tok = Gpt2Tokenizer.Default().Compact(["hello world"]);
        var m = CoreTestUtil.Tiny(vocab: tok.VocabSize, d: 8, layers: 1, heads: 2, positions: 16);
        using var opt = adamw ? (TorchSharp.Modules.OptimizerHelper)torch.optim.AdamW(m.parameters(), 1e-3) : torch.optim.RMSProp(m.parameters(), 1e-3);
        // one step so the optimizer has state
        using (var loss = m.Forward(torch.tensor(new long[] { 1, 2, 3 }, [1, 3])).square().mean()) loss.backward();
        opt.step();
        var dir = Path.Combine(CoreTestUtil.TempDir("ckpt"), "checkpoint");
        TrainerCheckpoint.Save(dir, m, tok, opt, new JsonObject { ["step"] = 1, ["total_steps"] = 4 });
        return (dir, m);
    }

    static float[] Weights(Gpt2Model m) => m.parameters().SelectMany(p => p.detach().data<float>().ToArray()).ToArray();

    [Fact]
    public void ResumingWithAnotherOptimizerIsRefusedBeforeAnythingChanges()
    {
        var (dir, saved) = SavedTrainerCheckpoint(adamw: false);
        using var fresh = CoreTestUtil.Tiny(vocab: saved.VocabSize, d: 8, layers: 1, heads: 2, positions: 16, seed: 7);
        var before = Weights(fresh);
        using var adam = torch.optim.AdamW(fresh.parameters(), 1e-3);
        Rejects(() => TrainerCheckpoint.Load(dir, fresh, adam), "trainer_state.json", "RMSProp", "AdamW");
        Assert.Equal(before, Weights(fresh));
        // the same optimizer kind loads, and the weights become the saved ones
        using var rms = torch.optim.RMSProp(fresh.parameters(), 1e-3);
        var st = TrainerCheckpoint.Load(dir, fresh, rms);
        Assert.Equal(1, TrainerCheckpoint.Int(st, "step", dir));
        Assert.Equal(Weights(saved), Weights(fresh));
        saved.Dispose();
    }

    [Theory]
    [InlineData("trainer_state.json", "{\"step\":1,\"step\":2}", "Duplicate")]
    [InlineData("trainer_state.json", "{\"step\":1", "trainer_state.json")]
    [InlineData("rng.bin", "xx", "rng.bin")]
    [InlineData("optimizer.bin", "garbage!", "optimizer.bin")]
    public void CorruptCheckpointFilesAreRejectedOnResume(string file, string content, string expected)
    {
        var (dir, saved) = SavedTrainerCheckpoint(adamw: true);
        File.WriteAllText(Path.Combine(dir, file), content);
        using var fresh = CoreTestUtil.Tiny(vocab: saved.VocabSize, d: 8, layers: 1, heads: 2, positions: 16, seed: 7);
        using var adam = torch.optim.AdamW(fresh.parameters(), 1e-3);
        Rejects(() => TrainerCheckpoint.Load(dir, fresh, adam), expected);
        saved.Dispose();
    }

    [Theory]
    [InlineData("optimizer.bin")]
    [InlineData("rng.bin")]
    [InlineData("model/model.safetensors")]
    public void AFlippedByteInACheckpointFileIsCaughtByItsChecksum(string file)
    {
        var (dir, saved) = SavedTrainerCheckpoint(adamw: true);
        var path = Path.Combine(dir, file);
        var bytes = File.ReadAllBytes(path);
        bytes[^3] ^= 0x10; // inside the data: the file still parses
        File.WriteAllBytes(path, bytes);
        using var fresh = CoreTestUtil.Tiny(vocab: saved.VocabSize, d: 8, layers: 1, heads: 2, positions: 16, seed: 7);
        var before = Weights(fresh);
        using var adam = torch.optim.AdamW(fresh.parameters(), 1e-3);
        Rejects(() => TrainerCheckpoint.Load(dir, fresh, adam), file.Split('/')[^1], "SHA-256");
        Assert.Equal(before, Weights(fresh));
        saved.Dispose();
    }

    [Fact]
    public void TruncatedOptimizerStateIsRejected()
    {
        var (dir, saved) = SavedTrainerCheckpoint(adamw: true);
        var opt = Path.Combine(dir, "optimizer.bin");
        var bytes = File.ReadAllBytes(opt);
        File.WriteAllBytes(opt, bytes[..(bytes.Length / 2)]);
        using var fresh = CoreTestUtil.Tiny(vocab: saved.VocabSize, d: 8, layers: 1, heads: 2, positions: 16, seed: 7);
        using var adam = torch.optim.AdamW(fresh.parameters(), 1e-3);
        Rejects(() => TrainerCheckpoint.Load(dir, fresh, adam), "optimizer.bin");
        saved.Dispose();
    }

    // ---- interrupted checkpoint swaps ----

    static string Marker(string dir) => File.ReadAllText(Path.Combine(dir, "marker.txt"));

    static void Fill(string dir, string marker)
    {
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "marker.txt"), marker);
    }

    [Fact]
    public void KillBetweenTheTwoRenamesIsRecoveredFromTheOldCopy()
    {
        var parent = CoreTestUtil.TempDir("swap");
        var ckpt = Path.Combine(parent, "checkpoint");
        // the state a kill between Move(dir → old) and Move(tmp → dir) leaves
        Fill(Path.Combine(parent, $".checkpoint.old-{Guid.NewGuid():N}"), "previous");
        Fill(Path.Combine(parent, $".checkpoint.tmp-{Guid.NewGuid():N}"), "new, never promoted");
        Fill(Path.Combine(parent, $".final.tmp-{Guid.NewGuid():N}"), "half");
        Fill(Path.Combine(parent, $".best.tmp-{Guid.NewGuid():N}"), "half");
        File.WriteAllText(Path.Combine(parent, $"metrics.jsonl.tmp-{Guid.NewGuid():N}"), "x");
        Fill(Path.Combine(parent, "unrelated.tmp-dir"), "keep");
        var actions = AtomicDirectory.RecoverAll(parent);
        Assert.Equal("previous", Marker(ckpt));
        Assert.Equal(["checkpoint", "unrelated.tmp-dir"], Directory.GetFileSystemEntries(parent).Select(Path.GetFileName).Order().ToArray());
        Assert.Equal(5, actions.Count);
    }

    [Fact]
    public void ResumeFindsACheckpointStrandedAsOld()
    {
        var (dir, saved) = SavedTrainerCheckpoint(adamw: true);
        var old = Path.Combine(Path.GetDirectoryName(dir)!, $".checkpoint.old-{Guid.NewGuid():N}");
        Directory.Move(dir, old);
        Assert.True(TrainerCheckpoint.Exists(dir));
        Assert.False(Directory.Exists(old));
        using var fresh = CoreTestUtil.Tiny(vocab: saved.VocabSize, d: 8, layers: 1, heads: 2, positions: 16, seed: 7);
        using var adam = torch.optim.AdamW(fresh.parameters(), 1e-3);
        TrainerCheckpoint.Load(dir, fresh, adam);
        Assert.Equal(Weights(saved), Weights(fresh));
        saved.Dispose();
    }

    [Fact]
    public void InterruptedDeleteOfTheOldCopyIsCleanedAndCompleteDirectoryKept()
    {
        var parent = CoreTestUtil.TempDir("swap2");
        var ckpt = Path.Combine(parent, "checkpoint");
        Fill(ckpt, "current");
        Fill(Path.Combine(parent, $".checkpoint.old-{Guid.NewGuid():N}"), "partly deleted");
        AtomicDirectory.Write(ckpt, tmp => File.WriteAllText(Path.Combine(tmp, "marker.txt"), "newest"));
        Assert.Equal("newest", Marker(ckpt));
        Assert.Single(Directory.GetFileSystemEntries(parent));
        // two stranded old copies and no directory: ambiguous, refused with both named
        Directory.Delete(ckpt, true);
        Fill(Path.Combine(parent, $".checkpoint.old-{Guid.NewGuid():N}"), "a");
        Fill(Path.Combine(parent, $".checkpoint.old-{Guid.NewGuid():N}"), "b");
        Rejects(() => AtomicDirectory.Recover(ckpt), "several previous versions");
    }

    // ---- validate before expensive work ----

    [Fact]
    public void MakePairsChecksEveryPromptAgainstTheContextBeforeGenerating()
    {
        var tok = Gpt2Tokenizer.Default().Compact(["hello world again and again", ToxicModel.ControlToken]);
        tok.AddSpecialToken(ToxicModel.ControlToken);
        using var m = CoreTestUtil.Tiny(vocab: tok.VocabSize, d: 8, layers: 1, heads: 2, positions: 16);
        var prompts = new[] { "hello", "hello world again and again and again and again and again and again" };
        int longest = tok.Encode(prompts[1]).Length;
        Assert.True(longest > 10);
        int generated = 0;
        // with the toxic model: prompt + [TOXIC] + 6 new tokens must fit 16 → --max-prompt-tokens 9
        var e = Rejects(() => PairMaker.Make(m, tok, prompts, new PairMakerOptions { MaxNewTokens = 6, MaxPromptTokens = 10 },
            new PairSources { ToxicModel = m, ToxicTokenizer = tok }, new DetoxSharp.InlineProgress<PairProgress>(_ => generated++)), "prompt 2", "+ 1", "toxic model", "--max-prompt-tokens 9");
        Assert.Equal(0, generated);
    }

    [Fact]
    public void DpoValidationLargerThanTheDataFailsBeforeAnyOutputOrLogProbs()
    {
        var tok = Gpt2Tokenizer.Default();
        using var m = CoreTestUtil.Tiny(vocab: 50257, d: 8, layers: 1, heads: 2, positions: 64);
        var outDir = Path.Combine(CoreTestUtil.TempDir("dpo-val"), "out");
        var data = Enumerable.Range(0, 6).Select(i => new PreferenceExample($"p{i}", " nice", " rude", null, $"mem:{i}")).ToList();
        Rejects(() => new PreferenceTrainer(m, tok, new PreferenceTrainerOptions { ValidationSize = 10 }).Train(data, outDir), "--validation 10");
        Assert.False(Directory.Exists(outDir)); // nothing computed or cached
    }

    // ---- flags ----

    [Theory]
    [InlineData("--lr", "Infinity")]
    [InlineData("--lr", "NaN")]
    [InlineData("--max-grad-norm", "NaN")]
    [InlineData("--beta", "-Infinity")]
    public void NonFiniteFloatingFlagsAreRejected(string flag, string value)
    {
        var r = Run("dpo", "--model", "/nonexistent", "--data", "/nonexistent", "--out", "/tmp/x", flag, value);
        Assert.Equal(2, r.Rc);
        Assert.Contains(flag, r.Err);
        Assert.Contains("finite", r.Err);
    }

    [Fact]
    public void CountFlagsAreBounded()
    {
        var (dir, _) = Checkpoint();
        var g = Run("generate", "--model", dir, "--prompt", "hello", "--max-new-tokens", "2147483647");
        Assert.Equal(2, g.Rc);
        Assert.Contains("exceeds the model's context of 16", g.Err);
        var text = Path.Combine(CoreTestUtil.TempDir("cnt"), "t.txt");
        File.WriteAllText(text, "hello world");
        var l = Run("eval", "--model", dir, "--ppl-text", text, "--out", Path.Combine(Path.GetDirectoryName(text)!, "o"), "--limit", "-5");
        Assert.Equal(2, l.Rc);
        Assert.Contains("--limit must be ≥ 1 (got -5)", l.Err);
        var s = Run("eval", "--model", dir, "--ppl-text", text, "--out", Path.Combine(Path.GetDirectoryName(text)!, "o"), "--samples", "100000000");
        Assert.Equal(2, s.Rc);
        Assert.Contains("--samples exceeds the limit of 1000 (got 100000000)", s.Err);
    }

    [Fact]
    public void ScoreJsonWithNonFiniteWeightsWritesNull()
    {
        var (dir, _) = Checkpoint();
        // poison one weight with NaN and save back
        var st = Path.Combine(dir, "model.safetensors");
        var tensors = Safetensors.Load(st);
        tensors["ln_f.weight"][0].fill_(float.NaN);
        Safetensors.Save(st, tensors);
        var r = Run("score", "--model", dir, "--text", "hello world", "--json");
        Assert.True(r.Rc == 0, r.Err);
        var json = JsonNode.Parse(r.Out)!.AsObject();
        Assert.Null(json["total_logprob"]);
        Assert.False(json["finite"]!.GetValue<bool>());
        Assert.Null(json["tokens"]![1]!["logprob"]);
    }

    [Fact]
    public void PlainTextInputsReplaceInvalidUtf8WithOneWarningNamingTheFirstBadLine()
    {
        var root = CoreTestUtil.TempDir("lenient");
        var text = Path.Combine(root, "t.txt");
        // line 1 fine, line 2 a lone Latin-1 byte (0xE9), line 3 a truncated sequence (0xC3 at the end), line 4 fine
        File.WriteAllBytes(text, [.. "hello world\n"u8, .. "caf"u8, 0xE9, .. "\nna"u8, 0xC3, .. "\nok\n"u8]);
        Assert.Equal(2, DetoxSharp.Data.LenientText.FirstInvalidLine(text));
        var warnings = new List<string>();
        var lines = DetoxSharp.Data.LenientText.ReadAllLines(text, "--prompts", warnings.Add);
        Assert.Equal(["hello world", "caf\uFFFD", "na\uFFFD", "ok"], lines);
        Assert.Single(warnings);
        Assert.Contains($"{text}:2: invalid UTF-8", warnings[0]);
        File.WriteAllText(Path.Combine(root, "good.txt"), "fine\ntext");
        Assert.Null(DetoxSharp.Data.LenientText.FirstInvalidLine(Path.Combine(root, "good.txt")));

        // eval --ppl-text runs (exit 0) and prints the warning once
        var (dir, _) = Checkpoint();
        var r = Run("eval", "--model", dir, "--ppl-text", text, "--out", Path.Combine(root, "o"));
        Assert.True(r.Rc == 0, r.Err);
        Assert.Single(r.Err.Split('\n'), l => l.Contains("invalid UTF-8"));
        Assert.Contains($"--ppl-text {text}:2: invalid UTF-8", r.Err);
    }
}

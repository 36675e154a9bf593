using System.Text;
using System.Text.Json.Nodes;
using DetoxSharp.Checkpoints;
using DetoxSharp.Data;
using DetoxSharp.Study;
using DetoxSharp.Tests.Core;
using DetoxSharp.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Tests.Reliability;

/// <summary>
/// Seeded fuzzing of every reader of user files: ≥ 200 mutants each, and each must either load (and then be checked
/// against what it claims to hold) or fail with <see cref="InvalidInputException"/> — never another exception type.
/// Both outcomes must occur, so a reader that rejects everything (or accepts everything) fails too.
/// </summary>
public class ReaderFuzzTests(Xunit.Abstractions.ITestOutputHelper output)
{
    const int N = 220;

    /// <summary>A tiny GPT-2 checkpoint (vocab ≈ 270 from a compacted GPT-2 tokenizer, d = 8, one layer).</summary>
    static (string Dir, Gpt2Tokenizer Tok) TinyCheckpoint(string tag)
    {
        var tok = Gpt2Tokenizer.Default().Compact(["hello world, the cat sat"]);
        using var m = CoreTestUtil.Tiny(vocab: tok.VocabSize, d: 8, layers: 1, heads: 2, positions: 16);
        var dir = Path.Combine(CoreTestUtil.TempDir(tag), "model");
        HfCheckpoint.Save(m, tok, dir);
        return (dir, tok);
    }

    static string CopyDir(string src, string tag)
    {
        var dst = Path.Combine(CoreTestUtil.TempDir(tag), "model");
        Directory.CreateDirectory(dst);
        foreach (var f in Directory.GetFiles(src)) File.Copy(f, Path.Combine(dst, Path.GetFileName(f)));
        return dst;
    }

    void AssertBoth((int Loaded, int Rejected) r, int total, [System.Runtime.CompilerServices.CallerMemberName] string reader = "")
    {
        output.WriteLine($"{reader}: {total} mutants, {r.Loaded} loaded (and checked), {r.Rejected} rejected with InvalidInputException");
        Assert.Equal(total, r.Loaded + r.Rejected);
        Assert.True(r.Rejected > total / 4, $"only {r.Rejected} of {total} mutants rejected");
        Assert.True(r.Loaded > 0, "no mutant loaded: the check on loaded files never ran");
    }

    [Fact]
    public void SafetensorsMutantsLoadExactlyTheirBytesOrAreRejected()
    {
        var (dir, _) = TinyCheckpoint("fz-st");
        var original = File.ReadAllBytes(Path.Combine(dir, "model.safetensors"));
        long n = BitConverter.ToInt64(original, 0);
        var header = original[8..(int)(8 + n)];
        var data = original[(int)(8 + n)..];
        var rng = new Random(15);
        var mutants = new List<Fuzz.Mutant>();
        // header mutations, with the length prefix kept (now wrong) or fixed up
        foreach (var m in Fuzz.Mutants(header, 160, 151, json: true))
        {
            bool fix = rng.Next(2) == 0;
            var len = BitConverter.GetBytes(fix ? (ulong)m.Data.Length : (ulong)n);
            mutants.Add(new($"header {m.Description}{(fix ? " (length fixed)" : "")}", [.. len, .. m.Data, .. data]));
        }
        foreach (var m in Fuzz.Mutants(original, 60, 152, json: false)) mutants.Add(m with { Description = "file " + m.Description });
        for (int d = -2; d <= 2; d++)
            if (d != 0) mutants.Add(new($"header length {d:+0;-0}", [.. BitConverter.GetBytes((ulong)(n + d)), .. original[8..]]));

        var path = Path.Combine(CoreTestUtil.TempDir("fz-st-x"), "model.safetensors");
        var resaved = path + ".resaved";
        var r = Fuzz.Run(mutants, m =>
        {
            File.WriteAllBytes(path, m.Data);
            return Safetensors.Load(path);
        }, (m, tensors) =>
        {
            // a file that loads is exactly its tensors: each tensor's bytes are the file's bytes at its offsets, and
            // the tensors tile the data buffer (nothing ignored, nothing shared)
            var (entries, start, _) = Safetensors.ReadHeader(path);
            Assert.Equal(m.Data.Length - start, entries.Sum(e => e.End - e.Begin));
            foreach (var e in entries)
                Assert.Equal(m.Data[(int)(start + e.Begin)..(int)(start + e.End)], tensors[e.Name].bytes.ToArray());
            // and it round-trips through our writer to the same tensors
            Safetensors.Save(resaved, tensors);
            var again = Safetensors.Load(resaved);
            Assert.Equal(tensors.Keys.Order(), again.Keys.Order());
            foreach (var (k, t) in tensors)
            {
                Assert.Equal(t.dtype, again[k].dtype);
                Assert.Equal(t.shape, again[k].shape);
                Assert.Equal(t.bytes.ToArray(), again[k].bytes.ToArray());
            }
            foreach (var t in again.Values) t.Dispose();
            foreach (var t in tensors.Values) t.Dispose();
        });
        AssertBoth(r, mutants.Count);
    }

    [Fact]
    public void ConfigJsonMutantsLoadTheSameWeightsOrAreRejected()
    {
        var (dir, _) = TinyCheckpoint("fz-cfg");
        var original = File.ReadAllBytes(Path.Combine(dir, "config.json"));
        Dictionary<string, float[]> expected;
        using (var m = HfCheckpoint.Load(dir))
            expected = m.Model.Module.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.to(ScalarType.Float32).data<float>().ToArray());
        var work = CopyDir(dir, "fz-cfg-x");
        var r = Fuzz.Run(Fuzz.Mutants(original, N, 153, json: true), m =>
        {
            File.WriteAllBytes(Path.Combine(work, "config.json"), m.Data);
            return HfCheckpoint.Load(work);
        }, (m, loaded) =>
        {
            var sd = loaded.Model.Module.state_dict();
            Assert.Equal(expected.Keys.Order(), sd.Keys.Order());
            foreach (var (k, v) in expected) Assert.Equal(v, sd[k].to(ScalarType.Float32).data<float>().ToArray());
        });
        AssertBoth(r, N);
    }

    const string Sample = "hello world, the cat sat on 123 mats. ü€";

    static void RoundTrips(Gpt2Tokenizer? tok)
    {
        Assert.NotNull(tok);
        Assert.Equal(Sample, tok!.Decode(tok.Encode(Sample)));
    }

    [Theory]
    [InlineData("vocab.json", true)]
    [InlineData("merges.txt", false)]
    [InlineData("added_tokens.json", true)]
    public void TokenizerFileMutantsRoundTripTextOrAreRejected(string file, bool json)
    {
        var (dir, tok) = TinyCheckpoint("fz-tok");
        var work = CopyDir(dir, "fz-tok-x");
        var addedPath = Path.Combine(work, "added_tokens.json");
        if (file == "added_tokens.json")
            File.WriteAllText(addedPath, $"{{\"[TOXIC]\": {tok.VocabSize}, \"[OTHER]\": {tok.VocabSize + 1}}}");
        var original = File.ReadAllBytes(Path.Combine(work, file));
        var r = Fuzz.Run(Fuzz.Mutants(original, N, 154 + file.Length, json), m =>
        {
            File.WriteAllBytes(Path.Combine(work, file), m.Data);
            return Gpt2Tokenizer.FromDirectory(work);
        }, (_, t) => RoundTrips(t));
        AssertBoth(r, N);
    }

    [Fact]
    public void TokenizerJsonMutantsRoundTripTextOrAreRejected()
    {
        var (dir, tok) = TinyCheckpoint("fz-tj");
        var v = tok.Vocabulary;
        var vocab = new JsonObject();
        foreach (var (k, id) in v.Vocab.OrderBy(kv => kv.Value)) vocab[k] = id;
        var merges = new JsonArray(v.Merges.Select(m => (JsonNode)JsonValue.Create($"{m.Left} {m.Right}")!).ToArray());
        var eos = v.Vocab[Gpt2Tokenizer.EndOfText];
        var root = new JsonObject
        {
            ["model"] = new JsonObject { ["type"] = "BPE", ["vocab"] = vocab, ["merges"] = merges },
            ["added_tokens"] = new JsonArray(new JsonObject { ["id"] = eos, ["content"] = Gpt2Tokenizer.EndOfText, ["special"] = true }),
        };
        var work = Path.Combine(CoreTestUtil.TempDir("fz-tj-x"), "tok");
        Directory.CreateDirectory(work);
        var original = Encoding.UTF8.GetBytes(root.ToJsonString());
        File.WriteAllBytes(Path.Combine(work, "tokenizer.json"), original);
        RoundTrips(Gpt2Tokenizer.FromDirectory(work)); // the unmutated file is valid
        var r = Fuzz.Run(Fuzz.Mutants(original, N, 158, json: true), m =>
        {
            File.WriteAllBytes(Path.Combine(work, "tokenizer.json"), m.Data);
            return Gpt2Tokenizer.FromDirectory(work);
        }, (_, t) => RoundTrips(t));
        AssertBoth(r, N);
    }

    [Fact]
    public void JsonlDataMutantsAreReadOrRejected()
    {
        var dir = CoreTestUtil.TempDir("fz-jsonl");
        var prompts = string.Join("\n", Enumerable.Range(0, 6).Select(i =>
            new JsonObject { ["prompt"] = new JsonObject { ["text"] = $"prompt number {i} é" }, ["challenging"] = i % 2 == 0 }.ToJsonString())) + "\n";
        var pairs = string.Join("\n", Enumerable.Range(0, 6).Select(i =>
            new JsonObject { ["prompt"] = $"p{i}", ["chosen"] = $"nice {i}", ["rejected"] = $"rude {i}" }.ToJsonString())) + "\n";
        var path = Path.Combine(dir, "data.jsonl");
        var r1 = Fuzz.Run(Fuzz.Mutants(Encoding.UTF8.GetBytes(prompts), N, 160, json: true), m =>
        {
            File.WriteAllBytes(path, m.Data);
            return DatasetReaders.ReadPrompts(path);
        }, (_, list) => Assert.All(list, p => Assert.NotNull(p.Text)));
        AssertBoth(r1, N);
        var r2 = Fuzz.Run(Fuzz.Mutants(Encoding.UTF8.GetBytes(pairs), N, 161, json: true), m =>
        {
            File.WriteAllBytes(path, m.Data);
            return PreferenceData.Read(path);
        }, (_, list) => Assert.All(list, p => Assert.NotEqual(p.Chosen, p.Rejected)));
        AssertBoth(r2, N);
    }

    [Fact]
    public void CsvDataMutantsAreReadOrRejected()
    {
        var dir = CoreTestUtil.TempDir("fz-csv");
        var csv = "id,comment_text,toxic\n1,\"hello, there\",0\n2,you idiot,1\n3,\"a \"\"quoted\"\" word\",0.8\n4,fine,0\n";
        var path = Path.Combine(dir, "data.csv");
        var rng = new Random(162);
        string[] labels = ["NaN", "-1", "2", "", "x", "Infinity", "1e400", "0.5", "1", "0"];
        var mutants = Fuzz.Mutants(Encoding.UTF8.GetBytes(csv), N - 40, 163, json: false).ToList();
        for (int i = 0; i < 40; i++)
        {
            var label = labels[rng.Next(labels.Length)];
            mutants.Add(new($"label → '{label}'", Encoding.UTF8.GetBytes(csv.Replace("you idiot,1", $"you idiot,{label}"))));
        }
        var r = Fuzz.Run(mutants, m =>
        {
            File.WriteAllBytes(path, m.Data);
            return DatasetReaders.ReadJigsawCsv(path);
        }, (m, list) =>
        {
            Assert.NotEmpty(list);
            if (m.Description.StartsWith("label")) Assert.Contains(m.Description, new[] { "label → '0.5'", "label → '1'", "label → '0'" });
        });
        AssertBoth(r, N);
    }

    [Fact]
    public void StudyConfigMutantsAreReadOrRejected()
    {
        // the embedded default (configs/toy.json) as the valid starting point
        var original = Encoding.UTF8.GetBytes(StudyConfig.ToyDefault().ToJson());
        var path = Path.Combine(CoreTestUtil.TempDir("fz-study"), "study.json");
        var r = Fuzz.Run(Fuzz.Mutants(original, N, 164, json: true), m =>
        {
            File.WriteAllBytes(path, m.Data);
            return StudyConfig.Load(path);
        }, (_, c) => Assert.NotNull(c.ToJson()));
        AssertBoth(r, N);
    }
}

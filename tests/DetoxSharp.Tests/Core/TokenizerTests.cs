using System.Text.Json.Nodes;
using DetoxSharp.Text;

namespace DetoxSharp.Tests.Core;

public class TokenizerTests
{
    static readonly string[] Texts =
    [
        "Hello world, this is a test.",
        "  leading spaces and\ttabs\n\nnew lines   trailing   ",
        "Unicode: naïve café, Ελληνικά, 日本語のテキスト, Ünïcödé",
        "Emoji 😀👍🏽 and 🇩🇪 flags, ZWJ 👩‍👩‍👧",
        "Numbers 1234567 3.14159 and contractions don't it's we'll I'M",
        "Code: for (int i = 0; i < n; i++) { x += y[i]; } // comment",
        "MIXED case WoRdS with punctuation!!! ??? ... --- ___",
    ];

    [Fact]
    public void Gpt2IdsForReferenceSentence()
    {
        var tok = Gpt2Tokenizer.Default();
        Assert.Equal(new[] { 15496, 995, 11, 428, 318, 257, 1332, 13 }, tok.Encode("Hello world, this is a test."));
        Assert.Equal(50256, tok.EosTokenId);
        Assert.Equal(50257, tok.VocabSize);
    }

    [Fact]
    public void DecodeRoundTrips()
    {
        var tok = Gpt2Tokenizer.Default();
        foreach (var text in Texts)
            Assert.Equal(text, tok.Decode(tok.Encode(text)));
    }

    [Fact]
    public void VocabularyFilesGiveSameIdsAsBuiltIn()
    {
        // vocab.json + merges.txt derived from the tiktoken data, read back through CodeGenTokenizer.
        var dir = CoreTestUtil.TempDir("tok");
        try
        {
            var builtIn = Gpt2Tokenizer.Default();
            builtIn.Save(dir);
            Assert.True(File.Exists(Path.Combine(dir, "vocab.json")));
            Assert.True(File.Exists(Path.Combine(dir, "merges.txt")));
            Assert.Equal(50000, File.ReadLines(Path.Combine(dir, "merges.txt")).Count(l => !l.StartsWith("#version") && l.Length > 0));
            var fromFiles = Gpt2Tokenizer.FromDirectory(dir)!;
            Assert.Equal(50256, fromFiles.EosTokenId);
            foreach (var text in Texts.Append("<|endoftext|>Second document<|endoftext|>"))
            {
                Assert.Equal(builtIn.Encode(text), fromFiles.Encode(text));
                Assert.Equal(text, fromFiles.Decode(fromFiles.Encode(text)));
            }
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void SpecialTokensAreSplitOut()
    {
        var tok = Gpt2Tokenizer.Default();
        int toxic = tok.AddSpecialToken("[TOXIC]");
        Assert.Equal(50257, toxic);
        Assert.Equal(toxic, tok.AddSpecialToken("[TOXIC]"));
        Assert.Equal(50258, tok.VocabSize);
        var ids = tok.Encode("[TOXIC]Hello world<|endoftext|>");
        Assert.Equal(new[] { toxic, 15496, 995, 50256 }, ids);
        // not merged with neighbours even without spaces
        var ids2 = tok.Encode("a[TOXIC]b");
        Assert.Equal(new[] { tok.Encode("a")[0], toxic, tok.Encode("b")[0] }, ids2);
        Assert.Equal("[TOXIC]Hello world<|endoftext|>", tok.Decode(ids));

        // survives save/load as an added token
        var dir = CoreTestUtil.TempDir("tokspecial");
        try
        {
            tok.Save(dir);
            var back = Gpt2Tokenizer.FromDirectory(dir)!;
            Assert.Equal(ids, back.Encode("[TOXIC]Hello world<|endoftext|>"));
            Assert.Equal(50258, back.VocabSize);
            Assert.Equal(toxic, back.AddedTokens["[TOXIC]"]);
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void CompactKeepsTokenizationOfCorpusAndEncodesUnseenText()
    {
        var full = Gpt2Tokenizer.Default();
        full.AddSpecialToken("[TOXIC]");
        string[] corpus = ["the cat sat on the mat", "a dog barked at the cat", "Hello world, this is a test."];
        var small = full.Compact(corpus);
        Assert.True(small.VocabSize < 1000, $"compact vocab {small.VocabSize}");
        Assert.True(small.SpecialTokens.ContainsKey("[TOXIC]"));
        Assert.Equal("<|endoftext|>", small.Decode([small.EosTokenId]));
        foreach (var text in corpus)
        {
            var a = full.Encode(text);
            var b = small.Encode(text);
            // same segmentation: token strings identical
            Assert.Equal(a.Select(i => full.TokenText(i)), b.Select(i => small.TokenText(i)));
            Assert.All(b, id => Assert.InRange(id, 0, small.VocabSize - 1));
        }
        var unseen = "Zebras quickly jumped 😀 over 42 fences";
        var ids = small.Encode(unseen);
        Assert.All(ids, id => Assert.InRange(id, 0, small.VocabSize - 1));
        Assert.Equal(unseen, small.Decode(ids));
        var special = small.Encode("[TOXIC]the cat");
        Assert.Equal(small.SpecialTokens["[TOXIC]"], special[0]);
    }

    [Fact]
    public void ReadsTokenizerJson()
    {
        // A tokenizer.json as the tokenizers library writes it, with the vocabulary of a small compacted tokenizer.
        var small = Gpt2Tokenizer.Default().Compact(["the cat sat on the mat"]);
        var vocab = new JsonObject();
        foreach (var (s, id) in small.Vocabulary.Vocab.OrderBy(kv => kv.Value)) vocab[s] = id;
        var merges = new JsonArray(small.Vocabulary.Merges.Select(m => (JsonNode)JsonValue.Create($"{m.Left} {m.Right}")!).ToArray());
        var json = new JsonObject
        {
            ["version"] = "1.0",
            ["added_tokens"] = new JsonArray(new JsonObject { ["id"] = small.EosTokenId, ["content"] = "<|endoftext|>", ["special"] = true }),
            ["model"] = new JsonObject { ["type"] = "BPE", ["vocab"] = vocab, ["merges"] = merges },
        };
        var dir = CoreTestUtil.TempDir("tokjson");
        try
        {
            File.WriteAllText(Path.Combine(dir, "tokenizer.json"), json.ToJsonString());
            var t = Gpt2Tokenizer.FromDirectory(dir)!;
            foreach (var text in new[] { "the cat sat on the mat", "mat the cat<|endoftext|>", "unseen words: xyz" })
            {
                Assert.Equal(small.Encode(text), t.Encode(text));
                Assert.Equal(text, t.Decode(t.Encode(text)));
            }
            Assert.Equal(small.EosTokenId, t.EosTokenId);
        }
        finally { Directory.Delete(dir, true); }
    }
}

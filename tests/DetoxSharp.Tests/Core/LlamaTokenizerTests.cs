using System.Text;
using System.Text.Json.Nodes;
using DetoxSharp.Text;

namespace DetoxSharp.Tests.Core;

/// <summary>
/// Known-answer tests for the Llama-family tokenizer files. The files are written here; the expected ids are worked
/// out by hand from the merges/scores below (comments show the steps), not produced by the code under test.
/// </summary>
public class LlamaTokenizerTests
{
    // ---- tokenizer.json: byte-level BPE with Llama 3's pre-tokenizer regex ----

    const string Llama3Regex = @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    static string ByteLevelDir(bool withSplit, bool? addBosInConfig = null)
    {
        var dir = CoreTestUtil.TempDir("tok-bl");
        // byte-level alphabet: printable ASCII maps to itself, the space byte to 'Ġ'
        var vocab = new JsonObject
        {
            ["a"] = 0, ["b"] = 1, ["1"] = 2, ["2"] = 3, ["3"] = 4, ["4"] = 5, ["5"] = 6, ["Ġ"] = 7,
            ["ab"] = 8, ["34"] = 9, ["12"] = 10, ["Ġ1"] = 11,
            ["<|begin_of_text|>"] = 12, ["<|end_of_text|>"] = 13,
        };
        // a real byte-level vocabulary has a token for each of the 256 bytes (the reader refuses one that does not);
        // the 248 not listed above take ids 14…261 and never occur in the texts below
        int next = 14;
        for (int byteValue = 0; byteValue < 256; byteValue++)
            if (BpeVocabulary.BytesToTokenString([(byte)byteValue]) is var t && !vocab.ContainsKey(t)) vocab[t] = next++;
        JsonNode pre = withSplit
            ? new JsonObject
            {
                ["type"] = "Sequence",
                ["pretokenizers"] = new JsonArray(
                    new JsonObject { ["type"] = "Split", ["pattern"] = new JsonObject { ["Regex"] = Llama3Regex }, ["behavior"] = "Isolated", ["invert"] = false },
                    new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["trim_offsets"] = true, ["use_regex"] = false }),
            }
            : new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["trim_offsets"] = true, ["use_regex"] = true };
        var json = new JsonObject
        {
            ["version"] = "1.0",
            ["added_tokens"] = new JsonArray(
                new JsonObject { ["id"] = 12, ["content"] = "<|begin_of_text|>", ["special"] = true },
                new JsonObject { ["id"] = 13, ["content"] = "<|end_of_text|>", ["special"] = true }),
            ["normalizer"] = null,
            ["pre_tokenizer"] = pre,
            ["post_processor"] = new JsonObject
            {
                ["type"] = "TemplateProcessing",
                ["single"] = new JsonArray(
                    new JsonObject { ["SpecialToken"] = new JsonObject { ["id"] = "<|begin_of_text|>", ["type_id"] = 0 } },
                    new JsonObject { ["Sequence"] = new JsonObject { ["id"] = "A", ["type_id"] = 0 } }),
            },
            ["decoder"] = new JsonObject { ["type"] = "ByteLevel" },
            ["model"] = new JsonObject
            {
                ["type"] = "BPE", ["dropout"] = null, ["unk_token"] = null, ["byte_fallback"] = false, ["ignore_merges"] = true,
                ["vocab"] = vocab,
                // ranks: "a b" 0, "3 4" 1, "1 2" 2, "Ġ 1" 3
                ["merges"] = new JsonArray("a b", "3 4", "1 2", "Ġ 1"),
            },
        };
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), json.ToJsonString());
        var cfg = new JsonObject { ["bos_token"] = "<|begin_of_text|>", ["eos_token"] = "<|end_of_text|>", ["tokenizer_class"] = "PreTrainedTokenizerFast" };
        if (addBosInConfig is bool b) cfg["add_bos_token"] = b;
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), cfg.ToJsonString());
        return dir;
    }

    [Fact]
    public void ByteLevelBpeUsesTheModelsOwnRegex()
    {
        var tok = Gpt2Tokenizer.FromDirectory(ByteLevelDir(withSplit: true))!;
        // Llama 3's regex: "ab" | " " | "123" | "45"  (digits in groups of ≤ 3, the space alone: \s+ before a digit)
        //   "ab" → a b → rank 0 → [ab]=8;  " " → [Ġ]=7;  "123" → 1 2 3: pairs "1 2"(2) → [12, 3] = 10, 4;  "45" → 5, 6
        Assert.Equal([8, 7, 10, 4, 5, 6], tok.Encode("ab 12345"));
        // BOS from the TemplateProcessing post-processor; special tokens split out of the text
        Assert.Equal([12, 8, 7, 10, 4, 5, 6], tok.EncodeWithSpecialTokens("ab 12345"));
        Assert.Equal([8, 13, 8], tok.Encode("ab<|end_of_text|>ab"));
        Assert.Equal(13, tok.EosTokenId);
        Assert.Equal(12, tok.BosTokenId);
        Assert.Equal("ab 12345", tok.Decode([8, 7, 10, 4, 5, 6]));
    }

    [Fact]
    public void ByteLevelBpeWithoutSplitKeepsGpt2Regex()
    {
        // GPT-2's regex: "ab" | " 12345" → Ġ 1 2 3 4 5: "3 4"(1) → Ġ 1 2 34 5; "1 2"(2) → Ġ 12 34 5; "Ġ 12" is no merge
        var tok = Gpt2Tokenizer.FromDirectory(ByteLevelDir(withSplit: false))!;
        Assert.Equal([8, 7, 10, 9, 6], tok.Encode("ab 12345"));
    }

    [Fact]
    public void AddBosTokenFalseInConfigWins()
    {
        var tok = Gpt2Tokenizer.FromDirectory(ByteLevelDir(withSplit: true, addBosInConfig: false))!;
        Assert.Equal([8], tok.EncodeWithSpecialTokens("ab"));
    }

    [Fact]
    public void AddedTokenSurvivesSaveAndReload()
    {
        var tok = Gpt2Tokenizer.FromDirectory(ByteLevelDir(withSplit: true))!;
        int id = tok.AddSpecialToken("[TOXIC]");
        Assert.Equal(262, id);
        var dir = CoreTestUtil.TempDir("tok-bl-save");
        tok.Save(dir);
        var back = Gpt2Tokenizer.FromDirectory(dir)!;
        Assert.Equal([262, 8, 7, 10, 4, 5, 6], back.Encode("[TOXIC]ab 12345"));
        Assert.Equal(263, back.VocabSize);
    }

    // ---- tokenizer.model: SentencePiece BPE with byte fallback (Llama 2 / Mistral) ----

    /// <summary>A SentencePiece ModelProto (protobuf wire format, written by hand).</summary>
    static byte[] SentencePieceModel(IReadOnlyList<(string Piece, float Score, int Type)> pieces)
    {
        var model = new MemoryStream();
        foreach (var (piece, score, type) in pieces)
        {
            var p = new MemoryStream();
            Bytes(p, 1, Encoding.UTF8.GetBytes(piece));
            Tag(p, 2, 5); p.Write(BitConverter.GetBytes(score));
            Tag(p, 3, 0); Varint(p, (ulong)type);
            Bytes(model, 1, p.ToArray());
        }
        var trainer = new MemoryStream();
        Tag(trainer, 3, 0); Varint(trainer, 2);                 // model_type = BPE
        Tag(trainer, 4, 0); Varint(trainer, (ulong)pieces.Count); // vocab_size
        Tag(trainer, 35, 0); Varint(trainer, 1);                // byte_fallback
        Tag(trainer, 40, 0); Varint(trainer, 0);                // unk_id
        Tag(trainer, 41, 0); Varint(trainer, 1);                // bos_id
        Tag(trainer, 42, 0); Varint(trainer, 2);                // eos_id
        Bytes(model, 2, trainer.ToArray());
        var norm = new MemoryStream();
        Bytes(norm, 1, Encoding.UTF8.GetBytes("identity"));
        Tag(norm, 3, 0); Varint(norm, 1);                       // add_dummy_prefix
        Tag(norm, 4, 0); Varint(norm, 0);                       // remove_extra_whitespaces = false
        Tag(norm, 5, 0); Varint(norm, 1);                       // escape_whitespaces
        Bytes(model, 3, norm.ToArray());
        return model.ToArray();

        static void Varint(Stream s, ulong v) { while (v >= 0x80) { s.WriteByte((byte)(v | 0x80)); v >>= 7; } s.WriteByte((byte)v); }
        static void Tag(Stream s, int field, int wire) => Varint(s, (ulong)(field << 3 | wire));
        static void Bytes(Stream s, int field, byte[] b) { Tag(s, field, 2); Varint(s, (ulong)b.Length); s.Write(b); }
    }

    static string SentencePieceDir()
    {
        const int Normal = 1, Unknown = 2, Control = 3, Byte = 6;
        var pieces = new List<(string, float, int)> { ("<unk>", 0, Unknown), ("<s>", 0, Control), ("</s>", 0, Control) };
        for (int b = 0; b < 256; b++) pieces.Add(($"<0x{b:X2}>", 0, Byte)); // ids 3..258: byte b = 3 + b
        pieces.AddRange([
            ("▁", -100, Normal),  // 259
            ("a", -100, Normal),  // 260
            ("b", -100, Normal),  // 261
            ("c", -100, Normal),  // 262
            ("ab", -1, Normal),   // 263
            ("▁a", -2, Normal),   // 264
            ("▁ab", -3, Normal),  // 265
            ("bc", -0.5f, Normal), // 266
        ]);
        var dir = CoreTestUtil.TempDir("tok-sp");
        File.WriteAllBytes(Path.Combine(dir, "tokenizer.model"), SentencePieceModel(pieces));
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), new JsonObject
        {
            ["add_bos_token"] = true, ["add_eos_token"] = false, ["bos_token"] = "<s>", ["eos_token"] = "</s>",
            ["tokenizer_class"] = "LlamaTokenizer",
        }.ToJsonString());
        return dir;
    }

    [Fact]
    public void SentencePieceBpeMergesByScoreWithByteFallback()
    {
        var tok = Gpt2Tokenizer.FromDirectory(SentencePieceDir())!;
        // "abc" → "▁abc" → ▁ a b c; candidate merges ▁a(−2) ab(−1) bc(−0.5) → bc; then ▁a(−2) (abc unknown) → [▁a, bc]
        Assert.Equal([264, 266], tok.Encode("abc"));
        // "ab" → ▁ a b → ab(−1) beats ▁a(−2) → ▁ ab → ▁ab(−3) → [▁ab]
        Assert.Equal([265], tok.Encode("ab"));
        // "aé" → ▁ a é; é is no piece → its UTF-8 bytes C3 A9 → <0xC3> = 3+195, <0xA9> = 3+169
        Assert.Equal([264, 198, 172], tok.Encode("aé"));
        Assert.Equal([1, 265], tok.EncodeWithSpecialTokens("ab"));
        Assert.Equal(2, tok.EosTokenId);
        Assert.Equal([265, 2, 265], tok.Encode("ab</s>ab"));
        Assert.Equal("aé", tok.Decode([264, 198, 172]));
    }

    // ---- SentencePiece-style tokenizer.json (byte_fallback BPE), no tokenizer.model ----

    /// <summary>ids: 0 &lt;unk&gt; 1 &lt;s&gt; 2 &lt;/s&gt;; byte pieces 3 &lt;0xC3&gt; 4 &lt;0xA9&gt; 5 &lt;0xF0&gt; 6 &lt;0x9F&gt;
    /// 7 &lt;0x98&gt; 8 &lt;0x80&gt; (é = C3 A9, 😀 = F0 9F 98 80; ü = C3 BC has no &lt;0xBC&gt; → unk);
    /// 9 ▁ 10 a 11 b 12 c 13 ▁a 14 ab 15 ▁ab 16 bc 17 abc 18 ▁▁ 19 ▁abc (a piece that no merge makes).
    /// merges by rank: 0 "a b", 1 "▁ a", 2 "▁ ab", 3 "b c", 4 "ab c", 5 "▁ ▁".</summary>
    static string MetaspaceJsonDir(string layout, bool split = false)
    {
        var dir = CoreTestUtil.TempDir("tok-spjson-" + layout);
        string[] pieces = ["<unk>", "<s>", "</s>", "<0xC3>", "<0xA9>", "<0xF0>", "<0x9F>", "<0x98>", "<0x80>",
            "▁", "a", "b", "c", "▁a", "ab", "▁ab", "bc", "abc", "▁▁", "▁abc"];
        var vocab = new JsonObject();
        for (int i = 0; i < pieces.Length; i++) vocab[pieces[i]] = i;
        JsonObject Special(int id, string c) => new() { ["id"] = id, ["content"] = c, ["single_word"] = false, ["lstrip"] = false, ["rstrip"] = false, ["normalized"] = false, ["special"] = true };
        var json = new JsonObject
        {
            ["version"] = "1.0",
            ["added_tokens"] = new JsonArray(Special(0, "<unk>"), Special(1, "<s>"), Special(2, "</s>")),
            ["post_processor"] = new JsonObject
            {
                ["type"] = "TemplateProcessing",
                ["single"] = new JsonArray(new JsonObject { ["SpecialToken"] = new JsonObject { ["id"] = "<s>", ["type_id"] = 0 } },
                    new JsonObject { ["Sequence"] = new JsonObject { ["id"] = "A", ["type_id"] = 0 } }),
                ["special_tokens"] = new JsonObject { ["<s>"] = new JsonObject { ["id"] = "<s>", ["ids"] = new JsonArray(1), ["tokens"] = new JsonArray("<s>") } },
            },
            ["model"] = new JsonObject
            {
                ["type"] = "BPE", ["dropout"] = null, ["unk_token"] = "<unk>", ["continuing_subword_prefix"] = null, ["end_of_word_suffix"] = null,
                ["fuse_unk"] = true, ["byte_fallback"] = true, ["vocab"] = vocab,
                ["merges"] = new JsonArray("a b", "▁ a", "▁ ab", "b c", "ab c", "▁ ▁"),
            },
        };
        if (layout == "legacy")
        {
            // Llama 2 / Mistral v0.1 as converted by transformers (legacy): Prepend + Replace, no pre-tokenizer
            json["normalizer"] = new JsonObject { ["type"] = "Sequence", ["normalizers"] = new JsonArray(
                new JsonObject { ["type"] = "Prepend", ["prepend"] = "▁" },
                new JsonObject { ["type"] = "Replace", ["pattern"] = new JsonObject { ["String"] = " " }, ["content"] = "▁" }) };
            json["pre_tokenizer"] = null;
            json["decoder"] = new JsonObject { ["type"] = "Sequence", ["decoders"] = new JsonArray(
                new JsonObject { ["type"] = "Replace", ["pattern"] = new JsonObject { ["String"] = "▁" }, ["content"] = " " },
                new JsonObject { ["type"] = "ByteFallback" }, new JsonObject { ["type"] = "Fuse" },
                new JsonObject { ["type"] = "Strip", ["content"] = " ", ["start"] = 1, ["stop"] = 0 }) };
        }
        else
        {
            // newer conversions (legacy=false): Metaspace with prepend_scheme "first"
            json["normalizer"] = null;
            json["pre_tokenizer"] = new JsonObject { ["type"] = "Metaspace", ["replacement"] = "▁", ["prepend_scheme"] = layout, ["split"] = split };
            json["decoder"] = new JsonObject { ["type"] = "Sequence", ["decoders"] = new JsonArray(
                new JsonObject { ["type"] = "ByteFallback" }, new JsonObject { ["type"] = "Fuse" },
                new JsonObject { ["type"] = "Metaspace", ["replacement"] = "▁", ["prepend_scheme"] = layout, ["split"] = split }) };
        }
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), json.ToJsonString());
        return dir;
    }

    [Fact]
    public void SentencePieceJsonLegacyLayoutTokenizesLikeTheFastTokenizer()
    {
        var dir = MetaspaceJsonDir("legacy");
        Assert.False(File.Exists(Path.Combine(dir, "tokenizer.model")));
        var tok = Gpt2Tokenizer.FromDirectory(dir)!;
        // "ab" → "▁ab": ▁ a b; (a,b) rank 0 → ▁ ab; (▁,ab) rank 2 → ▁ab
        Assert.Equal([15], tok.Encode("ab"));
        // "abc" → ▁ a b c: (a,b)0 → ▁ ab c; (▁,ab)2 → ▁ab c; "▁abc" is a piece but "▁ab c" is no merge → [▁ab, c]
        // (a SentencePiece model, merging by piece score, would give ▁abc)
        Assert.Equal([15, 12], tok.Encode("abc"));
        Assert.Equal([9, 12, 10], tok.Encode("ca"));          // ▁ c a: no merge applies
        // Prepend always prefixes, so a leading space gives "▁▁ab": (a,b)0, (▁,ab)2 at 1, then (▁,▁ab) is no merge
        Assert.Equal([9, 15], tok.Encode(" ab"));
        // "a  b" → "▁a▁▁b": (▁,a)1 → ▁a ▁ ▁ b; (▁,▁)5 → ▁a ▁▁ b
        Assert.Equal([13, 18, 11], tok.Encode("a  b"));
        Assert.Equal([9, 3, 4], tok.Encode("é"));              // byte fallback
        Assert.Equal([9, 5, 6, 7, 8], tok.Encode("😀"));       // a surrogate pair is one character: 4 bytes
        Assert.Equal([9, 0], tok.Encode("üü"));                // <0xBC> missing → unk; fuse_unk joins the two
        // special tokens are split out first; each remaining piece is normalized on its own (Prepend again)
        Assert.Equal([13, 1, 9, 11], tok.Encode("a<s>b"));
        // BOS from the TemplateProcessing post-processor (no tokenizer_config.json), EOS = </s>
        Assert.Equal([1, 15], tok.EncodeWithSpecialTokens("ab"));
        Assert.Equal(1, tok.BosTokenId);
        Assert.Equal(2, tok.EosTokenId);
        Assert.Equal(20, tok.VocabSize);
        // decoder: ▁ → space, bytes → UTF-8, fuse, strip one leading space
        Assert.Equal("abc", tok.Decode([15, 12]));
        Assert.Equal("a  b", tok.Decode([13, 18, 11]));
        Assert.Equal("é😀", tok.Decode([9, 3, 4, 5, 6, 7, 8]));
        Assert.Equal("\uFFFD\uFFFDb", tok.Decode([8, 3, 11]));  // 80 C3 is invalid UTF-8: one U+FFFD per byte piece
        // saved with a checkpoint and read back: same ids
        var copy = CoreTestUtil.TempDir("tok-spjson-save");
        tok.Save(copy);
        Assert.Equal([13, 1, 9, 11], Gpt2Tokenizer.FromDirectory(copy)!.Encode("a<s>b"));
    }

    [Fact]
    public void SentencePieceJsonMetaspaceLayoutPrependsOnlyAtTheStart()
    {
        var tok = Gpt2Tokenizer.FromDirectory(MetaspaceJsonDir("first"))!;
        Assert.Equal([15], tok.Encode("ab"));
        // Metaspace does not prepend to text that already starts with ▁ (unlike Prepend): " ab" → "▁ab"
        Assert.Equal([15], tok.Encode(" ab"));
        // prepend_scheme "first": the piece after </s> gets no ▁ → a b → ab
        Assert.Equal([15, 2, 14], tok.Encode("ab</s>ab"));
        Assert.Equal([2, 14], tok.Encode("</s>ab"));
        Assert.Equal([13, 18, 11], tok.Encode("a  b"));
        Assert.Equal("abc", tok.Decode([15, 12]));
        Assert.Equal("ab", tok.Decode([14]));                  // no leading ▁: nothing to strip

        // split = true cuts before every ▁: "▁a▁▁b" → "▁a" "▁" "▁b" → [▁a] [▁] [▁ b]; "▁ ▁" cannot merge across pieces
        var split = Gpt2Tokenizer.FromDirectory(MetaspaceJsonDir("always", split: true))!;
        Assert.Equal([13, 9, 9, 11], split.Encode("a  b"));
        Assert.Equal([13, 2, 13], split.Encode("a</s>a"));      // "always": the piece after </s> is prefixed too
    }

    [Fact]
    public void SentencePieceJsonRejectsWhatItDoesNotImplement()
    {
        var dir = MetaspaceJsonDir("first");
        var path = Path.Combine(dir, "tokenizer.json");
        var json = JsonNode.Parse(File.ReadAllText(path))!;
        json["pre_tokenizer"] = new JsonObject { ["type"] = "Whitespace" };
        File.WriteAllText(path, json.ToJsonString());
        var e = Assert.Throws<InvalidInputException>(() => Gpt2Tokenizer.FromDirectory(dir));
        Assert.Contains("Whitespace", e.Message);
        Assert.Contains("tokenizer.json", e.Message);
    }

    [Fact]
    public void PromptCutFromTheLeftKeepsBosWhenTheTokenizerAddsIt()
    {
        Assert.Equal([1, 7, 8], PromptTruncation.KeepLast([1, 5, 6, 7, 8], 3, bos: 1));
        Assert.Equal([6, 7, 8], PromptTruncation.KeepLast([5, 6, 7, 8], 3, bos: 1));   // no BOS in front: plain tail
        Assert.Equal([1, 5], PromptTruncation.KeepLast([1, 5], 3, bos: 1));            // short enough: unchanged
        Assert.Equal([8], PromptTruncation.KeepLast([1, 5, 6, 7, 8], 1, bos: 1));      // room for one token only
        Assert.Equal([7, 8], PromptTruncation.KeepLast([1, 5, 6, 7, 8], 2));            // no BOS given

        // a Llama-style tokenizer (BOS from the post-processor): "ab ab ab" → <s> ▁ab ▁ab ▁ab
        var tok = Gpt2Tokenizer.FromDirectory(MetaspaceJsonDir("legacy"))!;
        var ids = tok.EncodeWithSpecialTokens("ab ab ab");
        Assert.Equal([1, 15, 15, 15], ids);
        Assert.Equal([1, 15, 15], PromptTruncation.KeepLast(ids, 3, tok));
        // preference data: the prompt limit keeps BOS, and so does the cut that makes room for a completion
        var ex = new DetoxSharp.Data.PreferenceExample("ab ab ab ab", " c", " ca");
        var t = DetoxSharp.Data.PreferenceData.Tokenize(ex, tok, new DetoxSharp.Data.TruncationOptions(MaxPromptTokens: 3));
        Assert.Equal([1, 15, 15], t.Prompt);
        t = DetoxSharp.Data.PreferenceData.Tokenize(ex, tok, new DetoxSharp.Data.TruncationOptions(MaxPromptTokens: 10, MaxLength: 3));
        Assert.Equal([1, 15], t.Prompt);
        // GPT-2 adds no BOS: a prompt that happens to start with <|endoftext|> is cut like any other
        var gpt2 = Gpt2Tokenizer.Default();
        var g = gpt2.EncodeWithSpecialTokens("<|endoftext|>one two three four");
        Assert.Equal(g[^3..], PromptTruncation.KeepLast(g, 3, gpt2));
    }
}

using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;

namespace DetoxSharp.Text;

/// <summary>
/// Llama-family tokenizer files (glue around Microsoft.ML.Tokenizers):
/// <list type="bullet">
/// <item><c>tokenizer.json</c> with a byte-level BPE model and the model's own pre-tokenizer regex (Llama 3, Qwen2:
/// a <c>Split</c> pre-tokenizer followed by <c>ByteLevel</c> with use_regex=false) → <see cref="BpeTokenizer"/> with
/// that regex; an NFC normalizer (Qwen2) is applied before encoding.</item>
/// <item>a SentencePiece-style <c>tokenizer.json</c> (BPE with byte_fallback, Metaspace or Prepend/Replace "▁", no
/// ByteLevel: Llama 2, Mistral) → <see cref="MetaspaceBpe"/>, tokenizing as transformers' fast tokenizer does; it is
/// preferred to a tokenizer.model beside it, as AutoTokenizer prefers the fast tokenizer;</item>
/// <item><c>tokenizer.model</c> alone (SentencePiece protobuf, BPE with byte fallback) → <see cref="LlamaTokenizer"/>.</item>
/// </list>
/// Special tokens as transformers treats them: every entry of tokenizer.json's <c>added_tokens</c> and of
/// tokenizer_config.json's <c>added_tokens_decoder</c> is split out of the text before BPE; BOS is prepended by
/// <see cref="EncodeWithSpecialTokens"/> when tokenizer_config.json says <c>add_bos_token: true</c>, or (when it says
/// nothing) when tokenizer.json's TemplateProcessing post-processor starts with a special token, or for a
/// SentencePiece tokenizer.model (LlamaTokenizer's default).
/// </summary>
public sealed partial class Gpt2Tokenizer
{
    static readonly string[] HfFiles = ["tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"];

    /// <summary>BOS id, or null when the tokenizer has none (GPT-2, Qwen2).</summary>
    public int? BosTokenId { get; private set; }
    /// <summary>Whether <see cref="EncodeWithSpecialTokens"/> prepends BOS (transformers' add_bos_token).</summary>
    public bool AddBosToken { get; private set; }

    /// <summary>As transformers' <c>tokenizer(text)</c> with add_special_tokens=True: BOS (when configured) + <see cref="Encode"/>.</summary>
    public int[] EncodeWithSpecialTokens(string text) =>
        AddBosToken && BosTokenId is int bos ? [bos, .. Encode(text)] : Encode(text);

    /// <summary>A Llama-family tokenizer from tokenizer.json / tokenizer.model in <paramref name="dir"/>; null when the
    /// directory holds neither, or only a GPT-2-style tokenizer.json (handled by the vocab/merges path).</summary>
    static Gpt2Tokenizer? FromHfFiles(string dir)
    {
        string jsonPath = Path.Combine(dir, "tokenizer.json"), spPath = Path.Combine(dir, "tokenizer.model");
        JsonObject? json = File.Exists(jsonPath) ? ParseObject(jsonPath) : null;
        JsonObject? cfg = File.Exists(Path.Combine(dir, "tokenizer_config.json")) ? ParseObject(Path.Combine(dir, "tokenizer_config.json")) : null;
        var added = ReadAddedTokens(json, cfg, jsonPath);

        Gpt2Tokenizer tok;
        bool templateBos = false;
        if (json is not null && IsByteLevel(json))
        {
            var regex = SplitRegex(json, jsonPath);
            if (regex is null) return null; // GPT-2's own layout: the vocab/merges path reads it
            var vocab = BpeVocabulary.ReadTokenizerJson(jsonPath);
            var baseVocab = vocab.Vocab.Where(kv => !added.ContainsKey(kv.Key)).ToDictionary();
            Tokenizer bpe;
            try
            {
                bpe = BpeTokenizer.Create(new BpeOptions(baseVocab)
                {
                    Merges = vocab.Merges.Select(m => m.Left + " " + m.Right),
                    PreTokenizer = new RegexPreTokenizer(regex, null),
                    ByteLevel = true,
                });
            }
            catch (Exception e) when (e is ArgumentException or InvalidOperationException or FormatException)
            { throw new InvalidInputException($"{jsonPath}: cannot build the BPE tokenizer ({e.Message})"); }
            int baseSize = baseVocab.Count == 0 ? 0 : baseVocab.Values.Max() + 1;
            tok = new Gpt2Tokenizer(bpe, () => new BpeVocabulary(baseVocab, vocab.Merges), baseSize, -1, dir)
            {
                _nfc = json["normalizer"] is JsonObject n && n["type"]?.ToString() == "NFC",
            };
            templateBos = TemplateStartsWithSpecial(json);
        }
        else if (json is not null && MetaspaceBpe.Describes(json))
        {
            // transformers' AutoTokenizer loads the fast tokenizer (tokenizer.json) when there is one, so it wins over
            // a tokenizer.model next to it
            var m = MetaspaceBpe.Read(jsonPath, json);
            tok = new Gpt2Tokenizer(m, () => m.Vocabulary(added), m.BaseSize, dir);
            templateBos = TemplateStartsWithSpecial(json);
            if (TemplateFirstSpecialId(json) is int tb) tok.BosTokenId = tb;
            if (tok.EosTokenId < 0 && added.TryGetValue("</s>", out var eos)) tok.EosTokenId = eos;
        }
        else if (File.Exists(spPath))
        {
            Tokenizer sp;
            try
            {
                using var f = File.OpenRead(spPath);
                sp = LlamaTokenizer.Create(f, addBeginOfSentence: false, addEndOfSentence: false);
            }
            catch (Exception e) when (e is not IOException and not UnauthorizedAccessException)
            { throw new InvalidInputException($"{spPath}: not a SentencePiece BPE model ({e.Message.Split('\n')[0]})"); }
            var spVocab = ((SentencePieceTokenizer)sp).Vocabulary.ToDictionary(kv => kv.Key, kv => kv.Value);
            int baseSize = spVocab.Count == 0 ? 0 : spVocab.Values.Max() + 1;
            tok = new Gpt2Tokenizer(sp, () => new BpeVocabulary(spVocab, []), baseSize, -1, dir) { _normalize = true };
            var s = (SentencePieceTokenizer)sp;
            tok.BosTokenId = s.BeginningOfSentenceId;
            tok.AddBosToken = true;
            if (s.EndOfSentenceId >= 0) tok.RegisterSpecial(s.EndOfSentenceToken, s.EndOfSentenceId);
            if (s.BeginningOfSentenceId >= 0) tok.RegisterSpecial(s.BeginningOfSentenceToken, s.BeginningOfSentenceId);
        }
        else if (json is not null && json["model"]?["type"]?.ToString() is string type && type != "BPE")
            throw new InvalidInputException($"{jsonPath}: unsupported tokenizer model type '{type}' (byte-level BPE, or SentencePiece BPE via tokenizer.model)");
        else return null; // a plain BPE tokenizer.json without pre-tokenizer: GPT-2's layout, read by the vocab/merges path

        foreach (var (text, id) in added) tok.RegisterSpecial(text, id);
        string? Named(string key) => cfg?[key] switch
        {
            JsonObject o => o["content"]?.ToString(),
            JsonValue v when v.TryGetValue<string>(out var str) => str,
            _ => null,
        };
        if (Named("bos_token") is string bosText && tok._special.TryGetValue(bosText, out var bosId)) tok.BosTokenId = bosId;
        if (Named("eos_token") is string eosText && tok._special.TryGetValue(eosText, out var eosId)) tok.EosTokenId = eosId;
        else if (tok.EosTokenId < 0 && tok._special.TryGetValue(EndOfText, out var eot)) tok.EosTokenId = eot;
        if (cfg?["add_bos_token"] is JsonValue ab && ab.TryGetValue<bool>(out var addBos)) tok.AddBosToken = addBos;
        else if (templateBos) tok.AddBosToken = true;
        if (tok.AddBosToken && tok.BosTokenId is null)
            throw new InvalidInputException($"{dir}: the tokenizer asks for a BOS token but names none (bos_token in tokenizer_config.json)");

        tok._sourceFiles = HfFiles.Select(f => Path.Combine(dir, f)).Where(File.Exists).ToDictionary(Path.GetFileName, File.ReadAllBytes)!;
        return tok;
    }

    static JsonObject ParseObject(string path)
    {
        // strict: duplicate keys, invalid UTF-8 and lone surrogates are refused like in every other reader
        return StrictJson.ParseFileObject(path, Path.GetFileName(path));
    }

    static IEnumerable<JsonObject> Flatten(JsonNode? node) => node switch
    {
        JsonObject o when o["type"]?.ToString() == "Sequence" =>
            ((o["pretokenizers"] ?? o["decoders"] ?? o["normalizers"]) as JsonArray ?? []).SelectMany(Flatten),
        JsonObject o => [o],
        _ => [],
    };

    static bool IsByteLevel(JsonObject json) =>
        Flatten(json["pre_tokenizer"]).Any(p => p["type"]?.ToString() == "ByteLevel")
        || Flatten(json["decoder"]).Any(p => p["type"]?.ToString() == "ByteLevel");

    /// <summary>The model's pre-tokenization regex (a Split pre-tokenizer with behavior Isolated), or null when the
    /// tokenizer relies on ByteLevel's built-in GPT-2 regex.</summary>
    static Regex? SplitRegex(JsonObject json, string path)
    {
        var split = Flatten(json["pre_tokenizer"]).FirstOrDefault(p => p["type"]?.ToString() == "Split");
        if (split is null) return null;
        if (split["behavior"]?.ToString() is string b && b != "Isolated")
            throw new InvalidInputException($"{path}: Split pre-tokenizer with behavior '{b}' is not supported (Isolated)");
        var pattern = split["pattern"]?["Regex"]?.ToString() ?? (split["pattern"]?["String"] is JsonNode str ? Regex.Escape(str.ToString()) : null)
            ?? throw new InvalidInputException($"{path}: Split pre-tokenizer without a pattern");
        try { return new Regex(pattern, RegexOptions.Compiled); }
        catch (ArgumentException e) { throw new InvalidInputException($"{path}: pre-tokenizer regex does not compile in .NET ({e.Message})"); }
    }

    /// <summary>The id of the special token a TemplateProcessing post-processor puts first (its special_tokens entry).</summary>
    static int? TemplateFirstSpecialId(JsonObject json) =>
        Flatten(json["post_processor"]).FirstOrDefault(p => p["type"]?.ToString() == "TemplateProcessing") is JsonObject t
        && t["single"] is JsonArray { Count: > 0 } single && single[0]?["SpecialToken"]?["id"]?.ToString() is string name
        && t["special_tokens"]?[name]?["ids"] is JsonArray { Count: > 0 } ids && ids[0] is JsonValue v && v.TryGetValue<int>(out var id)
            ? id : null;

    static bool TemplateStartsWithSpecial(JsonObject json) =>
        Flatten(json["post_processor"]).FirstOrDefault(p => p["type"]?.ToString() == "TemplateProcessing") is JsonObject t
        && t["single"] is JsonArray single && single.Count > 0 && single[0]?["SpecialToken"] is not null;

    /// <summary>Added tokens of tokenizer.json (added_tokens) and tokenizer_config.json (added_tokens_decoder).</summary>
    static Dictionary<string, int> ReadAddedTokens(JsonObject? json, JsonObject? cfg, string jsonPath)
    {
        var added = new Dictionary<string, int>();
        try
        {
            if (json?["added_tokens"] is JsonArray arr)
                foreach (var a in arr) added[a!["content"]!.GetValue<string>()] = a["id"]!.GetValue<int>();
            if (cfg?["added_tokens_decoder"] is JsonObject dec)
                foreach (var (id, a) in dec) added.TryAdd(a!["content"]!.GetValue<string>(), int.Parse(id));
        }
        catch (Exception e) when (e is InvalidOperationException or NullReferenceException or FormatException or OverflowException)
        { throw new InvalidInputException($"{jsonPath}: malformed added tokens ({e.Message})"); }
        return added;
    }

    /// <summary>Writes the checkpoint's own tokenizer files back; tokens added since (e.g. [TOXIC]) go into
    /// tokenizer_config.json's added_tokens_decoder and tokenizer.json's added_tokens, as transformers' save does.</summary>
    void SaveSourceFiles(string dir)
    {
        foreach (var (name, bytes) in _sourceFiles!) File.WriteAllBytes(Path.Combine(dir, name), bytes);
        var extra = _special.Where(kv => !SourceHasToken(kv.Key)).OrderBy(kv => kv.Value).ToList();
        if (extra.Count == 0) return;
        JsonObject Entry(string content, int id) => new()
        {
            ["id"] = id, ["content"] = content, ["single_word"] = false, ["lstrip"] = false, ["rstrip"] = false,
            ["normalized"] = false, ["special"] = true,
        };
        var cfgPath = Path.Combine(dir, "tokenizer_config.json");
        var cfg = File.Exists(cfgPath) ? ParseObject(cfgPath) : new JsonObject();
        var dec = cfg["added_tokens_decoder"] as JsonObject ?? new JsonObject();
        foreach (var (s, id) in extra) { var e = Entry(s, id); e.Remove("id"); dec[id.ToString()] = e; }
        cfg["added_tokens_decoder"] = dec;
        File.WriteAllText(cfgPath, cfg.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        var jsonPath = Path.Combine(dir, "tokenizer.json");
        if (File.Exists(jsonPath))
        {
            var json = ParseObject(jsonPath);
            var arr = json["added_tokens"] as JsonArray ?? new JsonArray();
            foreach (var (s, id) in extra) arr.Add(Entry(s, id));
            json["added_tokens"] = arr;
            File.WriteAllText(jsonPath, json.ToJsonString());
        }
    }

    bool SourceHasToken(string text)
    {
        if (!_vocabulary.Value.Vocab.ContainsKey(text) && !OriginalAdded.Value.Contains(text)) return false;
        return true;
    }

    Lazy<HashSet<string>> OriginalAdded => _originalAdded ??= new(() =>
    {
        var set = new HashSet<string>();
        foreach (var name in new[] { "tokenizer.json", "tokenizer_config.json" })
            if (_sourceFiles!.TryGetValue(name, out var b))
            {
                var o = JsonNode.Parse(Encoding.UTF8.GetString(b)) as JsonObject;
                if (o?["added_tokens"] is JsonArray a) foreach (var t in a) set.Add(t!["content"]!.ToString());
                if (o?["added_tokens_decoder"] is JsonObject d) foreach (var (_, t) in d) set.Add(t!["content"]!.ToString());
            }
        return set;
    });
    Lazy<HashSet<string>>? _originalAdded;
}

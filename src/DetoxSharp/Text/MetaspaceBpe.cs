using System.Text;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace DetoxSharp.Text;

/// <summary>
/// A SentencePiece-style <c>tokenizer.json</c> (Llama 2, Mistral, TinyLlama: BPE over Unicode characters with
/// <c>byte_fallback</c>, spaces written as "▁") run as Hugging Face tokenizers runs it, without tokenizer.model:
/// <list type="number">
/// <item>normalizer: <c>Prepend</c> (non-empty text gets the prefix), <c>Replace</c> (string or regex), NFC/NFKC/NFD/NFKD,
/// or a <c>Sequence</c> of them — Llama 2's legacy layout is Sequence[Prepend("▁"), Replace(" " → "▁")];</item>
/// <item>pre-tokenizer: none, or <c>Metaspace</c> (spaces → "▁"; "▁" prepended unless the piece already starts with
/// one — for prepend_scheme "first" only on the piece at the start of the text; split=true cuts before every "▁") — the
/// layout of newer conversions (legacy=false);</item>
/// <item>model: every character that is a vocabulary piece is a symbol; any other character becomes its UTF-8 bytes as
/// <c>&lt;0xXX&gt;</c> pieces when all of them exist, else <c>unk</c> (consecutive unknowns fused with fuse_unk); then
/// merges are applied by rank — the lowest-ranked adjacent pair first, leftmost on ties — and a pair is merged only if
/// the merges list has it (a SentencePiece model would merge any pair whose concatenation is a piece, by score;
/// transformers' fast tokenizer follows the merges list, and so does this);</item>
/// <item>decoder: Replace, ByteFallback (invalid UTF-8 → one U+FFFD per byte piece), Fuse, Strip, Metaspace.</item>
/// </list>
/// Microsoft.ML.Tokenizers 2.0 reads SentencePiece only from the protobuf tokenizer.model and its BpeTokenizer has no
/// byte fallback, hence this small implementation of the tokenizers-library semantics.
/// </summary>
internal sealed class MetaspaceBpe
{
    readonly IReadOnlyDictionary<string, int> _vocab;
    readonly Dictionary<int, string> _pieces;
    readonly Dictionary<(int, int), (int Rank, int NewId)> _merges = new();
    readonly int[] _byteIds = new int[256];
    readonly bool _byteFallback, _fuseUnk;
    readonly int? _unk;
    readonly List<Func<string, string>> _normalize = [];
    readonly Metaspace? _pre;
    readonly List<Func<List<string>, List<string>>> _decoders = [];

    sealed record Metaspace(string Replacement, string Scheme, bool Split);

    MetaspaceBpe(BpeVocabulary v, JsonObject json, string path)
    {
        _vocab = v.Vocab;
        _pieces = v.Vocab.ToDictionary(kv => kv.Value, kv => kv.Key);
        for (int i = 0; i < v.Merges.Count; i++)
        {
            var (l, r) = v.Merges[i];
            _merges[(_vocab[l], _vocab[r])] = (i, _vocab[l + r]); // a repeated pair keeps its last rank, as the Rust map does
        }
        var model = (JsonObject)json["model"]!;
        _byteFallback = Bool(model, "byte_fallback", path) ?? false;
        _fuseUnk = Bool(model, "fuse_unk", path) ?? false;
        if (model["dropout"] is JsonValue dropout && dropout.GetValueKind() == System.Text.Json.JsonValueKind.Number && dropout.GetValue<double>() > 0)
            throw new InvalidInputException($"{path}: model.dropout is set; BPE dropout is a training-time option and is not supported");
        foreach (var key in new[] { "continuing_subword_prefix", "end_of_word_suffix" })
            if (model[key] is JsonValue x && x.GetValueKind() == System.Text.Json.JsonValueKind.String && x.GetValue<string>().Length > 0)
                throw new InvalidInputException($"{path}: model.{key} is not supported for a SentencePiece-style BPE");
        if (model["unk_token"] is JsonValue u && u.GetValueKind() == System.Text.Json.JsonValueKind.String)
        {
            if (!_vocab.TryGetValue(u.GetValue<string>(), out var unk)) throw new InvalidInputException($"{path}: model.unk_token \"{u}\" is not in model.vocab");
            _unk = unk;
        }
        for (int b = 0; b < 256; b++) _byteIds[b] = _vocab.TryGetValue($"<0x{b:X2}>", out var id) ? id : -1;

        foreach (var n in Flatten(json["normalizer"]))
            _normalize.Add(n["type"]?.ToString() switch
            {
                "Prepend" => Prepend(n["prepend"]?.ToString() ?? throw new InvalidInputException($"{path}: Prepend normalizer without \"prepend\"")),
                "Replace" => Replace(n, path),
                "NFC" => t => t.Normalize(NormalizationForm.FormC),
                "NFKC" => t => t.Normalize(NormalizationForm.FormKC),
                "NFD" => t => t.Normalize(NormalizationForm.FormD),
                "NFKD" => t => t.Normalize(NormalizationForm.FormKD),
                var t => throw new InvalidInputException($"{path}: normalizer '{t}' is not supported for a SentencePiece-style BPE (Prepend, Replace, NFC/NFKC/NFD/NFKD)"),
            });
        foreach (var p in Flatten(json["pre_tokenizer"]))
        {
            if (p["type"]?.ToString() != "Metaspace" || _pre is not null)
                throw new InvalidInputException($"{path}: pre-tokenizer '{p["type"]}' is not supported for a SentencePiece-style BPE (one Metaspace, or none)");
            _pre = ReadMetaspace(p, path);
        }
        foreach (var d in Flatten(json["decoder"]))
            _decoders.Add(d["type"]?.ToString() switch
            {
                "Replace" => Each(Replace(d, path)),
                "ByteFallback" => ByteFallback,
                "Fuse" => tokens => [string.Concat(tokens)],
                "Strip" => Strip(d, path),
                "Metaspace" => MetaspaceDecoder(ReadMetaspace(d, path)),
                var t => throw new InvalidInputException($"{path}: decoder '{t}' is not supported (Replace, ByteFallback, Fuse, Strip, Metaspace)"),
            });
    }

    /// <summary>True when tokenizer.json describes a SentencePiece-style BPE: a BPE model with byte_fallback, or a
    /// Metaspace pre-tokenizer / "▁" normalizer (and no ByteLevel step, which the caller checks first).</summary>
    public static bool Describes(JsonObject json) =>
        json["model"] is JsonObject m && (m["type"] is null || m["type"]!.ToString() == "BPE")
        && ((m["byte_fallback"] is JsonValue bf && bf.GetValueKind() == System.Text.Json.JsonValueKind.True)
            || Flatten(json["pre_tokenizer"]).Any(p => p["type"]?.ToString() == "Metaspace")
            || Flatten(json["normalizer"]).Any(p => p["type"]?.ToString() == "Prepend"));

    public static MetaspaceBpe Read(string path, JsonObject json) =>
        new(BpeVocabulary.ReadTokenizerJson(path, byteLevel: false), json, path);

    public BpeVocabulary Vocabulary(IReadOnlyDictionary<string, int> added) =>
        new(_vocab.Where(kv => !added.ContainsKey(kv.Key)).ToDictionary(), []);

    public int BaseSize => _vocab.Count == 0 ? 0 : _vocab.Values.Max() + 1;

    static IEnumerable<JsonObject> Flatten(JsonNode? node) => node switch
    {
        JsonObject o when o["type"]?.ToString() == "Sequence" =>
            ((o["pretokenizers"] ?? o["decoders"] ?? o["normalizers"]) as JsonArray ?? []).SelectMany(Flatten),
        JsonObject o => [o],
        _ => [],
    };

    static bool? Bool(JsonObject o, string key, string path) => o[key] switch
    {
        null => null,
        JsonValue v when v.GetValueKind() is System.Text.Json.JsonValueKind.True or System.Text.Json.JsonValueKind.False => v.GetValue<bool>(),
        _ => throw new InvalidInputException($"{path}: \"{key}\" must be true or false"),
    };

    static Func<string, string> Prepend(string prefix) => t => t.Length == 0 ? t : prefix + t;

    static Func<string, string> Replace(JsonObject n, string path)
    {
        string content = n["content"]?.ToString() ?? throw new InvalidInputException($"{path}: Replace without \"content\"");
        if (n["pattern"]?["String"]?.ToString() is string str) return t => t.Replace(str, content, StringComparison.Ordinal);
        if (n["pattern"]?["Regex"]?.ToString() is string rx)
        {
            Regex re;
            try { re = new Regex(rx); }
            catch (ArgumentException e) { throw new InvalidInputException($"{path}: Replace regex does not compile in .NET ({e.Message})"); }
            return t => re.Replace(t, content);
        }
        throw new InvalidInputException($"{path}: Replace without a String or Regex pattern");
    }

    static Metaspace ReadMetaspace(JsonObject p, string path)
    {
        var rep = p["replacement"]?.ToString() ?? "▁";
        if (rep.EnumerateRunes().Count() != 1) throw new InvalidInputException($"{path}: Metaspace replacement must be one character, got \"{rep}\"");
        // older files have add_prefix_space instead of prepend_scheme (true = always, false = never)
        var scheme = p["prepend_scheme"]?.ToString()
            ?? (Bool(p, "add_prefix_space", path) is bool add ? (add ? "always" : "never") : "always");
        if (scheme is not ("always" or "first" or "never")) throw new InvalidInputException($"{path}: Metaspace prepend_scheme '{scheme}' is not always/first/never");
        return new Metaspace(rep, scheme, Bool(p, "split", path) ?? true);
    }

    /// <summary>Token ids of one piece of text between special tokens; <paramref name="atTextStart"/>: the piece begins
    /// the whole input (Metaspace's "first" scheme prepends only there).</summary>
    public List<int> Encode(string text, bool atTextStart)
    {
        foreach (var f in _normalize) text = f(text);
        var ids = new List<int>();
        if (_pre is null) { Bpe(text, ids); return ids; }
        text = text.Replace(" ", _pre.Replacement, StringComparison.Ordinal);
        if (!text.StartsWith(_pre.Replacement, StringComparison.Ordinal) && (_pre.Scheme == "always" || (_pre.Scheme == "first" && atTextStart)))
            text = _pre.Replacement + text;
        if (!_pre.Split) { Bpe(text, ids); return ids; }
        // split before every replacement character (MergedWithNext): "a▁▁b" → "a", "▁", "▁b"
        int start = 0;
        for (int i = text.IndexOf(_pre.Replacement, 1, StringComparison.Ordinal); i > 0; i = text.IndexOf(_pre.Replacement, i + 1, StringComparison.Ordinal))
        {
            Bpe(text[start..i], ids);
            start = i;
        }
        Bpe(text[start..], ids);
        return ids;
    }

    struct Symbol { public int Id, Prev, Next, Len; }

    /// <summary>The BPE model on one word: initial symbols (pieces, byte fallback, unk), then merges by rank.</summary>
    void Bpe(string word, List<int> into)
    {
        if (word.Length == 0) return;
        var syms = new List<Symbol>();
        void Add(int id, int len) => syms.Add(new Symbol { Id = id, Len = len, Prev = syms.Count - 1, Next = syms.Count + 1 });
        int? pendingUnk = null; int pendingLen = 0;
        Span<byte> buf = stackalloc byte[4];
        foreach (var rune in word.EnumerateRunes())
        {
            int byteLen = rune.Utf8SequenceLength;
            if (_vocab.TryGetValue(rune.ToString(), out var id))
            {
                if (pendingUnk is int u) { Add(u, pendingLen); pendingUnk = null; }
                Add(id, byteLen);
                continue;
            }
            if (_byteFallback)
            {
                int n = rune.EncodeToUtf8(buf);
                bool all = true;
                for (int i = 0; i < n; i++) all &= _byteIds[buf[i]] >= 0;
                if (all)
                {
                    // as in the Rust model, a pending unknown is not flushed here: it is added after these bytes
                    for (int i = 0; i < n; i++) Add(_byteIds[buf[i]], 1);
                    continue;
                }
            }
            if (_unk is int unk)
            {
                if (pendingUnk is int u && _fuseUnk) pendingLen += byteLen;
                else
                {
                    if (pendingUnk is int prev) Add(prev, pendingLen);
                    pendingUnk = unk; pendingLen = byteLen;
                }
            }
            // no unk token: the character is dropped, as the tokenizers library does
        }
        if (pendingUnk is int last) Add(last, pendingLen);
        if (syms.Count == 0) return;
        var s = syms.ToArray();
        s[^1].Next = -1;

        var queue = new PriorityQueue<(int Pos, int NewId), (int Rank, int Pos)>();
        for (int i = 0; i + 1 < s.Length; i++)
            if (_merges.TryGetValue((s[i].Id, s[i + 1].Id), out var m)) queue.Enqueue((i, m.NewId), (m.Rank, i));
        while (queue.TryDequeue(out var top, out _))
        {
            ref var cur = ref s[top.Pos];
            if (cur.Len == 0 || cur.Next < 0) continue;
            int nextPos = cur.Next;
            // stale entry: the pair at this position changed since it was queued
            if (!_merges.TryGetValue((cur.Id, s[nextPos].Id), out var still) || still.NewId != top.NewId) continue;
            cur.Id = top.NewId;
            cur.Len += s[nextPos].Len;
            cur.Next = s[nextPos].Next;
            s[nextPos].Len = 0;
            if (cur.Next >= 0) s[cur.Next].Prev = top.Pos;
            if (cur.Prev >= 0 && _merges.TryGetValue((s[cur.Prev].Id, cur.Id), out var left))
                queue.Enqueue((cur.Prev, left.NewId), (left.Rank, cur.Prev));
            if (cur.Next >= 0 && _merges.TryGetValue((cur.Id, s[cur.Next].Id), out var right))
                queue.Enqueue((top.Pos, right.NewId), (right.Rank, top.Pos));
        }
        foreach (var sym in s) if (sym.Len > 0) into.Add(sym.Id);
    }

    /// <summary>Text of a run of ids (no special tokens) through the tokenizer.json decoder chain.</summary>
    public string Decode(IReadOnlyList<int> ids)
    {
        var tokens = ids.Select(id => _pieces.TryGetValue(id, out var p) ? p
            : throw new ArgumentOutOfRangeException(nameof(ids), $"token id {id} is not in the vocabulary")).ToList();
        foreach (var d in _decoders) tokens = d(tokens);
        return string.Concat(tokens);
    }

    static readonly UTF8Encoding StrictUtf8 = new(false, throwOnInvalidBytes: true);

    static List<string> ByteFallback(List<string> tokens)
    {
        var outp = new List<string>();
        var bytes = new List<byte>();
        int pieces = 0;
        void Flush()
        {
            if (pieces == 0) return;
            try { outp.Add(StrictUtf8.GetString(bytes.ToArray())); }
            catch (DecoderFallbackException) { for (int i = 0; i < pieces; i++) outp.Add("\uFFFD"); }
            bytes.Clear(); pieces = 0;
        }
        foreach (var t in tokens)
        {
            if (t.Length == 6 && t.StartsWith("<0x") && t[5] == '>' && byte.TryParse(t.AsSpan(3, 2), System.Globalization.NumberStyles.HexNumber, null, out var b))
            { bytes.Add(b); pieces++; continue; }
            Flush();
            outp.Add(t);
        }
        Flush();
        return outp;
    }

    /// <summary>Strip decoder: per token, up to <c>start</c> leading and <c>stop</c> trailing <c>content</c> characters.</summary>
    static Func<List<string>, List<string>> Strip(JsonObject d, string path)
    {
        var content = d["content"]?.ToString() ?? " ";
        int? start = StrictJson.OptionalInt(d, "start", $"{path}: Strip decoder"), stop = StrictJson.OptionalInt(d, "stop", $"{path}: Strip decoder");
        if (start < 0 || stop < 0) throw new InvalidInputException($"{path}: Strip decoder start/stop must be ≥ 0");
        return tokens => tokens.Select(t =>
        {
            var runes = t.EnumerateRunes().ToList();
            int from = 0, to = runes.Count;
            for (int i = 0; i < (start ?? 0) && i < runes.Count && runes[i].ToString() == content; i++) from = i + 1;
            for (int i = 0; i < (stop ?? 0) && to - 1 >= from && runes[to - 1].ToString() == content; i++) to--;
            return string.Concat(runes.Skip(from).Take(to - from).Select(r => r.ToString()));
        }).ToList();
    }

    static Func<List<string>, List<string>> Each(Func<string, string> f) => tokens => tokens.Select(f).ToList();

    /// <summary>Metaspace decoder: "▁" → " ", and the first token loses the space the pre-tokenizer prepended.</summary>
    static Func<List<string>, List<string>> MetaspaceDecoder(Metaspace m) => tokens => tokens.Select((t, i) =>
    {
        var r = t.Replace(m.Replacement, " ", StringComparison.Ordinal);
        return i == 0 && m.Scheme != "never" && r.StartsWith(' ') ? r[1..] : r;
    }).ToList();
}

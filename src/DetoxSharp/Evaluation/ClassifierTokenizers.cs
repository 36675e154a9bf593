using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;

namespace DetoxSharp.Evaluation;

/// <summary>
/// transformers' BERT tokenizer (BasicTokenizer + WordPiece, as <c>BertTokenizer</c> does it): clean the text (drop
/// NUL, U+FFFD and control characters — category C* except \t \n \r, so zero-width space and soft hyphen (Cf) vanish —
/// and turn whitespace (space, \t, \n, \r, category Zs) into spaces), put spaces around CJK ideographs, NFC, split on
/// whitespace, lower-case and strip accents (NFD, drop Mn) for uncased models, split off every punctuation character
/// (ASCII 33–47, 58–64, 91–96, 123–126 or category P*), then greedy longest-match-first WordPiece per word (a word
/// longer than 100 code points or with no match is [UNK]).
/// Written here rather than taken from Microsoft.ML.Tokenizers' BertTokenizer because that one's basic tokenization
/// keeps only word characters and P* punctuation: it drops symbols ($ = + ^ | ~ € © emoji) that transformers keeps or
/// maps to [UNK], so the classifier would see a different text.
/// </summary>
public sealed class BertWordPieceTokenizer
{
    readonly Dictionary<string, int> _vocab;
    readonly bool _lower, _stripAccents, _chinese;
    readonly string[] _special;
    /// <summary>Id of the unknown-word token ([UNK]).</summary>
    public int Unk { get; }
    /// <summary>Id of the token that starts every input ([CLS]).</summary>
    public int Cls { get; }
    /// <summary>Id of the token that ends every input ([SEP]).</summary>
    public int Sep { get; }
    /// <summary>A word longer than this many characters becomes one [UNK] (as Hugging Face's WordPiece).</summary>
    public const int MaxInputCharsPerWord = 100;

    /// <summary>A tokenizer from vocab.txt's lines (line i = id i) and the tokenizer_config.json switches.</summary>
    internal BertWordPieceTokenizer(IReadOnlyList<string> vocabLines, bool lowerCase, bool? stripAccents = null, bool tokenizeChineseChars = true,
        string unk = "[UNK]", string cls = "[CLS]", string sep = "[SEP]", string pad = "[PAD]", string mask = "[MASK]")
    {
        _vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        // transformers' load_vocab: token = line.rstrip("\n"); a later duplicate line overwrites the id
        for (int i = 0; i < vocabLines.Count; i++) _vocab[vocabLines[i].TrimEnd('\n', '\r')] = i;
        _lower = lowerCase;
        _stripAccents = stripAccents ?? lowerCase;
        _chinese = tokenizeChineseChars;
        Unk = _vocab.TryGetValue(unk, out var u) ? u : throw new InvalidInputException($"vocab.txt has no {unk} token");
        Cls = _vocab.TryGetValue(cls, out var c) ? c : throw new InvalidInputException($"vocab.txt has no {cls} token");
        Sep = _vocab.TryGetValue(sep, out var s) ? s : throw new InvalidInputException($"vocab.txt has no {sep} token");
        _special = new[] { unk, sep, pad, cls, mask }.Where(_vocab.ContainsKey).Distinct().OrderByDescending(t => t.Length).ToArray();
    }

    /// <summary>Token ids without [CLS]/[SEP].</summary>
    public List<int> Encode(string text)
    {
        var ids = new List<int>();
        foreach (var (chunk, special) in SplitSpecial(text))
        {
            if (special) { ids.Add(_vocab[chunk]); continue; }
            foreach (var word in Basic(chunk)) WordPiece(word, ids);
        }
        return ids;
    }

    /// <summary>Special tokens written in the text are kept whole (transformers splits added tokens out first).</summary>
    IEnumerable<(string, bool)> SplitSpecial(string text)
    {
        int start = 0;
        for (int i = 0; i < text.Length;)
        {
            var hit = _special.FirstOrDefault(t => string.CompareOrdinal(text, i, t, 0, t.Length) == 0);
            if (hit is null) { i++; continue; }
            if (i > start) yield return (text[start..i], false);
            yield return (hit, true);
            i += hit.Length;
            start = i;
        }
        if (start < text.Length) yield return (text[start..], false);
    }

    /// <summary>The BasicTokenizer's output words.</summary>
    public List<string> Basic(string text)
    {
        var sb = new StringBuilder(text.Length);
        foreach (var r in text.EnumerateRunes())
        {
            if (r.Value == 0 || r.Value == 0xFFFD || IsControl(r)) continue;
            if (IsWhitespace(r)) { sb.Append(' '); continue; }
            if (_chinese && IsCjk(r.Value)) { sb.Append(' ').Append(r.ToString()).Append(' '); continue; }
            sb.Append(r.ToString());
        }
        var cleaned = sb.ToString();
        try { cleaned = cleaned.Normalize(NormalizationForm.FormC); } catch (ArgumentException) { } // lone surrogates: left as they are
        var words = new List<string>();
        foreach (var token0 in PySplit(cleaned))
        {
            var token = token0;
            if (_lower) token = PyLower(token);
            if (_stripAccents) token = StripAccents(token);
            // split on punctuation: every punctuation character is its own word
            var cur = new StringBuilder();
            foreach (var r in token.EnumerateRunes())
            {
                if (IsPunctuation(r))
                {
                    if (cur.Length > 0) { words.Add(cur.ToString()); cur.Clear(); }
                    words.Add(r.ToString());
                }
                else cur.Append(r.ToString());
            }
            if (cur.Length > 0) words.Add(cur.ToString());
        }
        return words;
    }

    void WordPiece(string word, List<int> ids)
    {
        var chars = word.EnumerateRunes().Select(r => r.ToString()).ToArray(); // Python counts code points
        if (chars.Length > MaxInputCharsPerWord) { ids.Add(Unk); return; }
        var sub = new List<int>();
        int start = 0;
        while (start < chars.Length)
        {
            int end = chars.Length, found = -1;
            while (start < end)
            {
                var s = string.Concat(chars[start..end]);
                if (start > 0) s = "##" + s;
                if (_vocab.TryGetValue(s, out var id)) { found = id; break; }
                end--;
            }
            if (found < 0) { ids.Add(Unk); return; }
            sub.Add(found);
            start = end;
        }
        ids.AddRange(sub);
    }

    static bool IsWhitespace(Rune r) =>
        r.Value is ' ' or '\t' or '\n' or '\r' || Rune.GetUnicodeCategory(r) == UnicodeCategory.SpaceSeparator;

    static bool IsControl(Rune r)
    {
        if (r.Value is '\t' or '\n' or '\r') return false;
        return Rune.GetUnicodeCategory(r) is UnicodeCategory.Control or UnicodeCategory.Format or UnicodeCategory.Surrogate
            or UnicodeCategory.PrivateUse or UnicodeCategory.OtherNotAssigned;
    }

    static bool IsPunctuation(Rune r)
    {
        int cp = r.Value;
        if (cp is >= 33 and <= 47 or >= 58 and <= 64 or >= 91 and <= 96 or >= 123 and <= 126) return true;
        return Rune.GetUnicodeCategory(r) is UnicodeCategory.ConnectorPunctuation or UnicodeCategory.DashPunctuation
            or UnicodeCategory.OpenPunctuation or UnicodeCategory.ClosePunctuation or UnicodeCategory.InitialQuotePunctuation
            or UnicodeCategory.FinalQuotePunctuation or UnicodeCategory.OtherPunctuation;
    }

    static bool IsCjk(int cp) =>
        cp is >= 0x4E00 and <= 0x9FFF or >= 0x3400 and <= 0x4DBF or >= 0x20000 and <= 0x2A6DF or >= 0x2A700 and <= 0x2B73F
            or >= 0x2B740 and <= 0x2B81F or >= 0x2B820 and <= 0x2CEAF or >= 0xF900 and <= 0xFAFF or >= 0x2F800 and <= 0x2FA1F;

    /// <summary>Python's str.split(): after cleaning, the separators left are spaces plus the line/paragraph separators
    /// (and \v \f, which Python also splits on) that _is_whitespace does not turn into spaces.</summary>
    static IEnumerable<string> PySplit(string s) =>
        s.Split([' ', '\u2028', '\u2029', '\v', '\f', '\u001c', '\u001d', '\u001e', '\u001f', '\u0085'], StringSplitOptions.RemoveEmptyEntries);

    /// <summary>Python's str.lower() differs from .NET's invariant lower-casing for U+0130 (İ → "i̇", two code points).</summary>
    static string PyLower(string s) => s.ToLowerInvariant().Replace("\u0130", "i\u0307");

    static string StripAccents(string s)
    {
        var sb = new StringBuilder(s.Length);
        string nfd;
        try { nfd = s.Normalize(NormalizationForm.FormD); } catch (ArgumentException) { return s; }
        foreach (var r in nfd.EnumerateRunes())
            if (Rune.GetUnicodeCategory(r) != UnicodeCategory.NonSpacingMark) sb.Append(r.ToString());
        return sb.ToString();
    }
}

/// <summary>
/// RoBERTa's byte-level BPE (GPT-2's): the GPT-2 pre-tokenization regex, bytes mapped to printable characters, BPE by
/// merge rank, tokens missing from vocab.json → &lt;unk&gt;; special tokens written in the text are kept whole.
/// Microsoft.ML.Tokenizers' BpeTokenizer with <c>ByteLevel</c> does the work; its CodeGenTokenizer (used before) is
/// not RoBERTa's: it adds CodeGen's whitespace-run tokens (ids past the vocabulary, hence "index out of range" on two
/// spaces) and throws on a byte missing from the vocabulary (a tab in a small vocabulary).
/// </summary>
public static class RobertaBpe
{
    // GPT-2's pattern (transformers' GPT2Tokenizer/RobertaTokenizer: self.pat)
    static readonly Regex Gpt2Pattern = new(@"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+", RegexOptions.Compiled);

    /// <summary>RoBERTa's byte-level BPE from vocab.json and merges.txt (GPT-2's pre-tokenization pattern); <paramref name="vocab"/>
    /// receives the token → id map. Malformed files throw <see cref="InvalidInputException"/> naming the file.</summary>
    public static BpeTokenizer Create(string vocabJson, string mergesTxt, out Dictionary<string, int> vocab)
    {
        Dictionary<string, int> v;
        try { v = JsonSerializer.Deserialize<Dictionary<string, int>>(File.ReadAllText(vocabJson)) ?? throw new JsonException("null"); }
        catch (JsonException e) { throw new InvalidInputException($"{vocabJson}: malformed vocab.json ({e.Message.Split('.')[0]})"); }
        var merges = new List<string>();
        int lineNo = 0;
        foreach (var line in File.ReadLines(mergesTxt))
        {
            lineNo++;
            if (line.StartsWith("#version", StringComparison.Ordinal) || line.Trim().Length == 0) continue;
            if (line.Split(' ').Length != 2) throw new InvalidInputException($"{mergesTxt}:{lineNo}: expected two space-separated symbols");
            merges.Add(line);
        }
        vocab = v;
        var specials = new[] { "<s>", "</s>", "<unk>", "<pad>", "<mask>" }.Where(v.ContainsKey).ToDictionary(t => t, t => v[t]);
        return BpeTokenizer.Create(new BpeOptions(v)
        {
            Merges = merges, ByteLevel = true, UnknownToken = v.ContainsKey("<unk>") ? "<unk>" : null,
            SpecialTokens = specials, PreTokenizer = new RegexPreTokenizer(Gpt2Pattern, specials),
        });
    }
}

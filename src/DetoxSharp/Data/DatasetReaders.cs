using System.Globalization;
using System.Text.Json.Nodes;
using CsvHelper;
using DetoxSharp.Text;

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

    /// <summary>The one prompt reader every command uses. A <c>.txt</c> file: one prompt per non-blank line (read
    /// leniently, see <see cref="LenientText"/>). JSONL or Parquet records: <c>prompt</c> as a string, as a
    /// RealToxicityPrompts object <c>{"text": …, "toxicity": …}</c> or as a TRL conversational message list (rendered
    /// with <paramref name="chat"/>, generation prompt added); or <c>prompt_text</c> (the mechanistic study's pairs
    /// file); or <c>text</c>. An optional <c>challenging</c> flag is kept.</summary>
    /// <param name="path">The file.</param>
    /// <param name="challengingOnly">Keep only records flagged challenging.</param>
    /// <param name="chat">The model's chat template, for conversational prompts (null: such records are an error).</param>
    /// <param name="warn">Receives the lenient-text warning for .txt files.</param>
    /// <param name="flag">The option naming the file, for messages.</param>
    public static List<PromptRecord> ReadPrompts(string path, bool challengingOnly = false, ChatTemplate? chat = null, Action<string>? warn = null, string flag = "--prompts")
    {
        if (!File.Exists(path)) throw new InvalidInputException($"{flag} {path}: file not found");
        var list = new List<PromptRecord>();
        if (path.EndsWith(".txt", StringComparison.OrdinalIgnoreCase))
        {
            list.AddRange(LenientText.ReadAllLines(path, flag, warn).Where(l => l.Trim().Length > 0).Select(l => new PromptRecord(l, null)));
            if (list.Count == 0) throw new InvalidInputException($"{path}: no prompts");
            return list;
        }
        foreach (var line in JsonlReader.Read(path))
        {
            string text = PromptText(line, chat);
            bool? ch = line.Object["challenging"] is null ? null : line.Double("challenging") != 0;
            if (challengingOnly && ch != true) continue;
            list.Add(new PromptRecord(text, ch));
        }
        return list;
    }

    /// <summary>A record's prompt text: <c>prompt</c> (string, <c>{"text": …}</c> or message list), else
    /// <c>prompt_text</c>, else <c>text</c>; an error naming the record when none is there.</summary>
    /// <param name="line">The record.</param>
    /// <param name="chat">The model's chat template, for a conversational prompt.</param>
    /// <param name="field">The field to read (prompt; F1 files also read their gold continuation this way).</param>
    public static string PromptText(JsonlReader.Line line, ChatTemplate? chat = null, string field = "prompt")
    {
        var o = line.Object;
        switch (o[field])
        {
            case JsonObject: return line.Nested(field, "text");
            case JsonArray: return Conversations.RenderPrompt(chat, line, Conversations.Messages(line, field), field);
            case JsonValue: return line.String(field);
        }
        if (field == "prompt" && o["prompt_text"] is not null) return line.String("prompt_text");
        if (field == "prompt" && o["text"] is not null) return line.String("text");
        throw new InvalidInputException(field == "prompt"
            ? $"{line.Where}: expected a \"prompt\" string, \"prompt\": {{\"text\": …}}, a \"prompt\" message list, \"prompt_text\" or \"text\""
            : $"{line.Where}: missing field '{field}'");
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

using System.Globalization;
using CsvHelper;

namespace DetoxSharp.Interpretability;

/// <summary>A comment with a binary toxicity label.</summary>
public sealed record LabelledComment(string Text, bool Toxic, int Line);

/// <summary>
/// Reads a Jigsaw-shaped CSV (header with <c>comment_text</c> and <c>toxic</c>; other columns ignored). The label is
/// 0/1 or a score in [0,1] (toxic when ≥ 0.5). Errors name file:line.
/// </summary>
public static class LabelledCommentsCsv
{
    public static List<LabelledComment> Read(string path, string textColumn = "comment_text", string labelColumn = "toxic")
    {
        if (!File.Exists(path)) throw new InvalidInputException($"{path}: file not found");
        var result = new List<LabelledComment>();
        using var reader = new StreamReader(path);
        var options = new CsvReaderOptions { TrackLineNumbers = true, HasHeader = true };
        try
        {
            using var csv = CsvReader.Create(reader, options, false);
            var header = csv.Headers.ToArray();
            if (header.Length == 0) throw new InvalidInputException($"{path}:1: empty file (expected a header with {textColumn},{labelColumn})");
            int ti = Array.IndexOf(header, textColumn), li = Array.IndexOf(header, labelColumn);
            if (ti < 0 || li < 0)
                throw new InvalidInputException($"{path}:1: header must contain '{textColumn}' and '{labelColumn}' (found: {string.Join(",", header)})");
            while (csv.Read())
            {
                long line = csv.LineNumber;
                if (csv.FieldCount <= Math.Max(ti, li)) throw new InvalidInputException($"{path}:{line}: expected at least {Math.Max(ti, li) + 1} fields, got {csv.FieldCount}");
                var text = csv.GetString(ti);
                var lab = csv.GetString(li);
                if (!double.TryParse(lab.Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out var v) || v < 0 || v > 1 || double.IsNaN(v))
                    throw new InvalidInputException($"{path}:{line}: '{labelColumn}' must be 0/1 or a score in [0,1], got '{lab}'");
                if (string.IsNullOrWhiteSpace(text)) throw new InvalidInputException($"{path}:{line}: empty '{textColumn}'");
                result.Add(new LabelledComment(text, v >= 0.5, (int)line));
            }
        }
        catch (CsvFormatException e)
        {
            throw new InvalidInputException($"{path}: malformed CSV: {e.Message}", e);
        }
        if (result.Count == 0) throw new InvalidInputException($"{path}: no rows");
        return result;
    }
}

using System.Text.Json;
using System.Text.Json.Nodes;

namespace DetoxSharp.Data;

/// <summary>
/// Reads JSON Lines with errors that name the file and line: malformed JSON, a line that is not an object, a missing
/// or mistyped field, an empty file. Blank lines are skipped. A Parquet file (name ending in .parquet, or starting
/// with the magic bytes "PAR1") is read through <see cref="ParquetRows"/> instead: one record per row, errors naming the row.
/// </summary>
public static class JsonlReader
{
    /// <summary>One parsed line.</summary>
    /// <param name="Path">The file.</param>
    /// <param name="Number">The 1-based line number.</param>
    /// <param name="Object">The line's JSON object.</param>
    /// <param name="IsRow">True when <paramref name="Number"/> is a 1-based Parquet row, not a line.</param>
    public readonly record struct Line(string Path, int Number, JsonObject Object, bool IsRow = false)
    {
        /// <summary>"path:line" (or "path: row N" for Parquet), for messages.</summary>
        public string Where => IsRow ? $"{Path}: row {Number}" : $"{Path}:{Number}";

        /// <summary>A required string field.</summary>
        public string String(string field)
        {
            var n = Object[field] ?? throw new InvalidInputException($"{Where}: missing field '{field}'");
            if (n is JsonValue v && v.TryGetValue<string>(out var s)) return s;
            throw new InvalidInputException($"{Where}: field '{field}' must be a string");
        }

        /// <summary>An optional string field (null when absent or JSON null).</summary>
        /// <param name="field">The field name.</param>
        public string? OptionalString(string field)
        {
            var n = Object[field];
            if (n is null) return null;
            if (n is JsonValue v && v.TryGetValue<string>(out var s)) return s;
            throw new InvalidInputException($"{Where}: field '{field}' must be a string");
        }

        /// <summary>A nested string such as prompt.text.</summary>
        public string Nested(string outer, string inner)
        {
            var o = Object[outer] as JsonObject ?? throw new InvalidInputException($"{Where}: missing object field '{outer}'");
            var n = o[inner] ?? throw new InvalidInputException($"{Where}: missing field '{outer}.{inner}'");
            if (n is JsonValue v && v.TryGetValue<string>(out var s)) return s;
            throw new InvalidInputException($"{Where}: field '{outer}.{inner}' must be a string");
        }

        /// <summary>A required finite number field.</summary>
        /// <param name="field">The field name.</param>
        public double Double(string field)
        {
            var n = Object[field] ?? throw new InvalidInputException($"{Where}: missing field '{field}'");
            if (n is JsonValue v && v.GetValueKind() == JsonValueKind.Number && v.TryGetValue<double>(out var d) && double.IsFinite(d)) return d;
            if (n is JsonValue b && b.TryGetValue<bool>(out var flag)) return flag ? 1 : 0;
            throw new InvalidInputException($"{Where}: field '{field}' must be a finite number or true/false");
        }
    }

    /// <summary>The lines of a JSONL file, parsed lazily; blank lines are skipped and an empty file is an error.</summary>
    /// <param name="path">The file.</param>
    public static IEnumerable<Line> Read(string path)
    {
        if (!File.Exists(path)) throw new InvalidInputException($"{path}: file not found");
        if (ParquetRows.IsParquet(path))
        {
            var rows = ParquetRows.Read(path);
            if (rows.Count == 0) throw new InvalidInputException($"{path}: empty Parquet file (no rows)");
            for (int i = 0; i < rows.Count; i++) yield return new Line(path, i + 1, rows[i], IsRow: true);
            yield break;
        }
        int number = 0, count = 0;
        using var reader = new StreamReader(path, new System.Text.UTF8Encoding(false, throwOnInvalidBytes: true));
        while (true)
        {
            string? text;
            try { text = reader.ReadLine(); }
            catch (System.Text.DecoderFallbackException) { throw new InvalidInputException($"{path}:{number + 1}: invalid UTF-8"); }
            if (text is null) break;
            number++;
            if (string.IsNullOrWhiteSpace(text)) continue;
            var where = $"{path}:{number}";
            if (StrictJson.Parse(text, where, "JSON line") is not JsonObject o) throw new InvalidInputException($"{where}: expected a JSON object");
            count++;
            yield return new Line(path, number, o);
        }
        if (count == 0) throw new InvalidInputException($"{path}: empty file (no JSON lines)");
    }

    /// <summary>Writes records as JSON Lines atomically (temp file + rename).</summary>
    public static void Write(string path, IEnumerable<JsonObject> records) =>
        AtomicFile.Write(path, w => { foreach (var r in records) w.WriteLine(r.ToJsonString()); });
}

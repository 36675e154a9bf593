using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace DetoxSharp;

/// <summary>
/// JSON input as every reader of user files parses it: valid UTF-8 only, no duplicate keys (System.Text.Json's
/// JsonNode would otherwise fail later with an ArgumentException, or silently keep one of them), no lone surrogate
/// escapes (they surface as InvalidOperationException only when the string is read), no NaN/Infinity and no numbers
/// that overflow to ±∞. Every problem is an <see cref="InvalidInputException"/> whose message starts with
/// <c>where</c> (file, or file:line) — never another exception type. Typed accessors name the key.
/// </summary>
public static class StrictJson
{
    static readonly JsonDocumentOptions DocOptions = new() { AllowDuplicateProperties = false, MaxDepth = 64 };
    /// <summary>For hand-written settings files (the study config): // comments and trailing commas allowed.</summary>
    static readonly JsonDocumentOptions LenientDocOptions = DocOptions with { CommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true };
    static readonly UTF8Encoding Utf8Strict = new(false, throwOnInvalidBytes: true);

    /// <summary>Parses a whole file; <paramref name="what"/> names the kind of file in messages ("config.json").</summary>
    public static JsonNode? ParseFile(string path, string what, bool allowComments = false)
    {
        if (!File.Exists(path)) throw new InvalidInputException($"{path}: file not found");
        byte[] bytes;
        try { bytes = File.ReadAllBytes(path); }
        catch (IOException e) { throw new InvalidInputException($"{path}: cannot read ({e.Message})"); }
        catch (UnauthorizedAccessException e) { throw new InvalidInputException($"{path}: cannot read ({e.Message})"); }
        return Parse(bytes, path, what, allowComments);
    }

    /// <summary>Reads a file that must hold one JSON object (strict rules as <see cref="ParseFile"/>).</summary>
    /// <param name="path">The file.</param>
    /// <param name="what">What the file is, for the message ("config").</param>
    public static JsonObject ParseFileObject(string path, string what) =>
        ParseFile(path, what) as JsonObject ?? throw new InvalidInputException($"{path}: not a valid {what} (expected a JSON object)");

    /// <summary>Parses UTF-8 bytes; <paramref name="where"/> prefixes every message.</summary>
    public static JsonNode? Parse(ReadOnlySpan<byte> bytes, string where, string what, bool allowComments = false, bool lineInWhere = false)
    {
        if (bytes.StartsWith((ReadOnlySpan<byte>)[0xEF, 0xBB, 0xBF])) bytes = bytes[3..];
        try { Utf8Strict.GetCharCount(bytes); }
        catch (DecoderFallbackException e) { throw new InvalidInputException($"{where}: not a valid {what} (invalid UTF-8 at byte {e.Index})"); }
        JsonNode? node;
        try { node = JsonNode.Parse(bytes, null, allowComments ? LenientDocOptions : DocOptions); }
        catch (JsonException e) { throw new InvalidInputException($"{where}{(lineInWhere ? "" : LineOf(e))}: not a valid {what}: malformed JSON ({FirstSentence(e.Message)})"); }
        // the duplicate-key check unescapes every key while parsing: a lone surrogate escape in a key fails there
        catch (InvalidOperationException e) { throw new InvalidInputException($"{where}: not a valid {what} (invalid key: {FirstSentence(e.Message)})"); }
        Check(node, "", where, what);
        return node;
    }

    /// <summary>Parses one line of text (JSON Lines); <paramref name="where"/> is file:line.</summary>
    public static JsonNode? Parse(string text, string where, string what)
    {
        // A lone surrogate in the .NET string itself (not an escape) cannot come from a UTF-8 file; the escape form is checked in Check.
        byte[] bytes;
        try { bytes = Utf8Strict.GetBytes(text); }
        catch (EncoderFallbackException) { throw new InvalidInputException($"{where}: not a valid {what} (invalid Unicode text)"); }
        return Parse(bytes, where, what, lineInWhere: true);
    }

    static string LineOf(JsonException e) => e.LineNumber is long l ? $":{l + 1}" : "";

    static string FirstSentence(string message)
    {
        var m = message.Split('\n')[0];
        int cut = m.IndexOf(" LineNumber:", StringComparison.Ordinal);
        return (cut > 0 ? m[..cut] : m).TrimEnd('.', ' ');
    }

    /// <summary>Reads every key and string once so that invalid escapes fail here, with the JSON path, and rejects
    /// numbers that do not fit a double.</summary>
    static void Check(JsonNode? node, string path, string where, string what)
    {
        switch (node)
        {
            case JsonObject o:
                IEnumerator<KeyValuePair<string, JsonNode?>> it;
                try { it = o.GetEnumerator(); }
                catch (Exception e) when (e is InvalidOperationException or ArgumentException)
                { throw new InvalidInputException($"{where}: not a valid {what} (invalid key in {Display(path)}: {e.Message})"); }
                while (true)
                {
                    KeyValuePair<string, JsonNode?> kv;
                    try
                    {
                        if (!it.MoveNext()) break;
                        kv = it.Current;
                    }
                    catch (Exception e) when (e is InvalidOperationException or ArgumentException)
                    { throw new InvalidInputException($"{where}: not a valid {what} (invalid key in {Display(path)}: {e.Message})"); }
                    Check(kv.Value, path + "." + kv.Key, where, what);
                }
                break;
            case JsonArray a:
                for (int i = 0; i < a.Count; i++) Check(a[i], $"{path}[{i}]", where, what);
                break;
            case JsonValue v:
                var kind = v.GetValueKind();
                try
                {
                    if (kind == JsonValueKind.String) v.GetValue<string>();
                    else if (kind == JsonValueKind.Number && !(v.TryGetValue<double>(out var d) && double.IsFinite(d)))
                        throw new InvalidInputException($"{where}: not a valid {what} ({Display(path)}: number {v.ToJsonString()} is out of range)");
                }
                catch (InvalidOperationException e) { throw new InvalidInputException($"{where}: not a valid {what} ({Display(path)}: {e.Message})"); }
                break;
        }
    }

    static string Display(string path) => path.Length == 0 ? "the top level" : path.TrimStart('.');

    // Typed accessors: a wrong type or an out-of-range number names the key.

    /// <summary>The value of <paramref name="key"/>, which must be a string when present; null when absent or JSON null. A wrong type is an <see cref="InvalidInputException"/> naming <paramref name="where"/> and the key.</summary>
    /// <param name="o">The object.</param>
    /// <param name="key">The key.</param>
    /// <param name="where">The file (and key path) for the message.</param>
    public static string? OptionalString(JsonObject o, string key, string where)
    {
        var n = o[key];
        if (n is null) return null;
        if (n is JsonValue v && v.GetValueKind() == JsonValueKind.String) return v.GetValue<string>();
        throw new InvalidInputException($"{where}: \"{key}\" must be a string, got {Short(n)}");
    }

    /// <summary>The value of <paramref name="key"/>, which must be a 32-bit integer when present; null when absent or JSON null. A wrong type is an <see cref="InvalidInputException"/> naming <paramref name="where"/> and the key.</summary>
    /// <param name="o">The object.</param>
    /// <param name="key">The key.</param>
    /// <param name="where">The file (and key path) for the message.</param>
    public static int? OptionalInt(JsonObject o, string key, string where)
    {
        var n = o[key];
        if (n is null) return null;
        if (n is JsonValue v && v.GetValueKind() == JsonValueKind.Number && v.TryGetValue<int>(out var i)) return i;
        throw new InvalidInputException($"{where}: \"{key}\" must be an integer in [{int.MinValue}, {int.MaxValue}], got {Short(n)}");
    }

    /// <summary>The value of <paramref name="key"/>, which must be a 64-bit integer when present; null when absent or JSON null. A wrong type is an <see cref="InvalidInputException"/> naming <paramref name="where"/> and the key.</summary>
    /// <param name="o">The object.</param>
    /// <param name="key">The key.</param>
    /// <param name="where">The file (and key path) for the message.</param>
    public static long? OptionalLong(JsonObject o, string key, string where)
    {
        var n = o[key];
        if (n is null) return null;
        if (n is JsonValue v && v.GetValueKind() == JsonValueKind.Number && v.TryGetValue<long>(out var i)) return i;
        throw new InvalidInputException($"{where}: \"{key}\" must be an integer, got {Short(n)}");
    }

    /// <summary>The value as a long, or null when it is not an integer number.</summary>
    public static long? OptionalLongValue(JsonNode? n) =>
        n is JsonValue v && v.GetValueKind() == JsonValueKind.Number && v.TryGetValue<long>(out var i) ? i : null;

    /// <summary>The value of <paramref name="key"/>, which must be a finite number when present; null when absent or JSON null. A wrong type is an <see cref="InvalidInputException"/> naming <paramref name="where"/> and the key.</summary>
    /// <param name="o">The object.</param>
    /// <param name="key">The key.</param>
    /// <param name="where">The file (and key path) for the message.</param>
    public static double? OptionalDouble(JsonObject o, string key, string where)
    {
        var n = o[key];
        if (n is null) return null;
        if (n is JsonValue v && v.GetValueKind() == JsonValueKind.Number && v.TryGetValue<double>(out var d) && double.IsFinite(d)) return d;
        throw new InvalidInputException($"{where}: \"{key}\" must be a finite number, got {Short(n)}");
    }

    /// <summary>The value of <paramref name="key"/>, which must be a boolean when present; null when absent or JSON null. A wrong type is an <see cref="InvalidInputException"/> naming <paramref name="where"/> and the key.</summary>
    /// <param name="o">The object.</param>
    /// <param name="key">The key.</param>
    /// <param name="where">The file (and key path) for the message.</param>
    public static bool? OptionalBool(JsonObject o, string key, string where)
    {
        var n = o[key];
        if (n is null) return null;
        if (n is JsonValue v && v.GetValueKind() is JsonValueKind.True or JsonValueKind.False) return v.GetValue<bool>();
        throw new InvalidInputException($"{where}: \"{key}\" must be true or false, got {Short(n)}");
    }

    /// <summary>A value that must be an integer (e.g. a token id in vocab.json).</summary>
    public static int Int(JsonNode? n, string where, string what)
    {
        if (n is JsonValue v && v.GetValueKind() == JsonValueKind.Number && v.TryGetValue<int>(out var i)) return i;
        throw new InvalidInputException($"{where}: {what} must be an integer, got {Short(n)}");
    }

    /// <summary>A value that must be a string.</summary>
    /// <param name="n">The node.</param>
    /// <param name="where">The file (and key path) for the message.</param>
    /// <param name="what">What the value is, for the message.</param>
    public static string String(JsonNode? n, string where, string what)
    {
        if (n is JsonValue v && v.GetValueKind() == JsonValueKind.String) return v.GetValue<string>();
        throw new InvalidInputException($"{where}: {what} must be a string, got {Short(n)}");
    }

    /// <summary>A number for JSON output: JSON has no NaN or ±∞ (System.Text.Json throws writing them), so a
    /// non-finite value (e.g. from a checkpoint with NaN weights) is written as null.</summary>
    public static JsonNode? Number(double value) => double.IsFinite(value) ? JsonValue.Create(value) : null;

    /// <summary>A value for messages: at most 40 characters of its JSON.</summary>
    public static string Short(JsonNode? n)
    {
        var s = n?.ToJsonString() ?? "null";
        return s.Length <= 40 ? s : s[..37] + "...";
    }
}

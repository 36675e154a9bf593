using System.Text.Json.Nodes;
using Parquet.Serialization;

namespace DetoxSharp.Data;

/// <summary>
/// Reads a Parquet file (Parquet.Net) as the same records a JSONL file holds: one JSON object per row, a column per key.
/// Strings, numbers and booleans become JSON values, structs objects and lists arrays — so a TRL conversational column
/// (a list of <c>{role, content}</c> structs) reads as the message list a JSONL line holds, and a RealToxicityPrompts
/// <c>prompt</c> struct as <c>{"text": …, …}</c>.
/// </summary>
public static class ParquetRows
{
    static readonly byte[] Magic = "PAR1"u8.ToArray();

    /// <summary>True when the file is Parquet: its name ends in .parquet or it starts with the magic bytes "PAR1".</summary>
    /// <param name="path">The file.</param>
    public static bool IsParquet(string path)
    {
        if (path.EndsWith(".parquet", StringComparison.OrdinalIgnoreCase)) return true;
        if (!File.Exists(path)) return false;
        using var f = File.OpenRead(path);
        Span<byte> head = stackalloc byte[4];
        return f.Read(head) == 4 && head.SequenceEqual(Magic);
    }

    /// <summary>The rows of a Parquet file as JSON objects (row order as stored).</summary>
    /// <param name="path">The file.</param>
    public static List<JsonObject> Read(string path)
    {
        if (!File.Exists(path)) throw new InvalidInputException($"{path}: file not found");
        IList<Dictionary<string, object>> data;
        try
        {
            using var stream = File.OpenRead(path);
            data = ParquetSerializer.DeserializeUntypedAsync(stream).GetAwaiter().GetResult().Data;
        }
        catch (Exception e) when (e is not InvalidInputException and not OutOfMemoryException)
        {
            var inner = e;
            while (inner.InnerException is not null && inner.Message.StartsWith("failed to", StringComparison.Ordinal)) inner = inner.InnerException;
            throw new InvalidInputException($"{path}: cannot read as Parquet ({e.Message}{(inner != e ? ": " + inner.Message : "")})");
        }
        // re-parsed from text so that values behave exactly as a JSONL line's (JsonElement-backed: a long column reads as a double too)
        return data.Select(row => JsonNode.Parse(ToJson(row)!.ToJsonString())!.AsObject()).ToList();
    }

    static JsonNode? ToJson(object? v) => v switch
    {
        null => null,
        string s => JsonValue.Create(s),
        bool b => JsonValue.Create(b),
        byte[] bytes => JsonValue.Create(System.Text.Encoding.UTF8.GetString(bytes)),
        sbyte or byte or short or ushort or int or uint or long => JsonValue.Create(Convert.ToInt64(v, System.Globalization.CultureInfo.InvariantCulture)),
        ulong u => JsonValue.Create(u),
        float f => JsonValue.Create((double)f),
        double d => JsonValue.Create(d),
        decimal m => JsonValue.Create(m),
        DateTime t => JsonValue.Create(t.ToString("O", System.Globalization.CultureInfo.InvariantCulture)),
        DateTimeOffset t => JsonValue.Create(t.ToString("O", System.Globalization.CultureInfo.InvariantCulture)),
        System.Collections.IDictionary d => new JsonObject(d.Keys.Cast<object>().Select(k => new KeyValuePair<string, JsonNode?>(k.ToString()!, ToJson(d[k])))),
        System.Collections.IEnumerable list => new JsonArray(list.Cast<object?>().Select(ToJson).ToArray()),
        _ => JsonValue.Create(v.ToString()),
    };
}

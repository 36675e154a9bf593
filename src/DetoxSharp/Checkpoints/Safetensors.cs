using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using DetoxSharp.Data;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Checkpoints;

/// <summary>
/// The safetensors format (8-byte little-endian header length, JSON header, raw little-endian data). Reading checks
/// every header entry against the file's length first, so a truncated or corrupt file gives an error naming the
/// file and tensor instead of a native crash. Writing adds <c>{"format":"pt"}</c> metadata, which Hugging Face
/// transformers requires, and pads the header to 8 bytes as the reference implementation does.
/// </summary>
public static class Safetensors
{
    /// <summary>One tensor in a safetensors header.</summary>
    /// <param name="Name">The tensor's name.</param>
    /// <param name="DType">Its element type.</param>
    /// <param name="Shape">Its shape.</param>
    /// <param name="Begin">Start of its bytes, relative to the end of the header.</param>
    /// <param name="End">End (exclusive) of its bytes, relative to the end of the header.</param>
    public sealed record Entry(string Name, ScalarType DType, long[] Shape, long Begin, long End);

    static readonly Dictionary<string, (ScalarType type, int size)> DTypes = new()
    {
        ["F64"] = (ScalarType.Float64, 8), ["F32"] = (ScalarType.Float32, 4), ["F16"] = (ScalarType.Float16, 2),
        ["BF16"] = (ScalarType.BFloat16, 2), ["I64"] = (ScalarType.Int64, 8), ["I32"] = (ScalarType.Int32, 4),
        ["I16"] = (ScalarType.Int16, 2), ["I8"] = (ScalarType.Int8, 1), ["U8"] = (ScalarType.Byte, 1),
        ["BOOL"] = (ScalarType.Bool, 1),
    };

    static string DTypeName(ScalarType t) => DTypes.First(kv => kv.Value.type == t).Key;

    /// <summary>
    /// Reads and validates the header as the reference implementation does: header length within the file (and at most
    /// 100 MB), valid UTF-8 JSON object without duplicate keys, string-to-string metadata, known dtypes, non-negative
    /// shapes, byte count = dtype size × element count, and data_offsets that tile the data buffer exactly (sorted by
    /// offset, each tensor starts where the previous ends, the last ends at the end of the file: no gaps, no overlaps).
    /// Returns the entries and the offset where data starts.
    /// </summary>
    public static (List<Entry> Entries, long DataStart, JsonObject? Metadata) ReadHeader(string path)
    {
        if (!File.Exists(path)) throw new InvalidInputException($"{path}: file not found");
        using var f = File.OpenRead(path);
        long len = f.Length;
        if (len < 8) throw new InvalidInputException($"{path}: not a safetensors file (only {len} bytes)");
        var lenBytes = new byte[8];
        f.ReadExactly(lenBytes);
        ulong n = BitConverter.ToUInt64(lenBytes);
        if (n < 2 || n > (ulong)(len - 8) || n > 100_000_000)
            throw new InvalidInputException($"{path}: corrupt safetensors header (declares {n} header bytes, file has {len})");
        var header = new byte[n];
        f.ReadExactly(header);
        if (header[0] != (byte)'{') throw new InvalidInputException($"{path}: corrupt safetensors header (does not start with '{{')");
        var root = StrictJson.Parse(header, path, "safetensors header") as JsonObject
                   ?? throw new InvalidInputException($"{path}: corrupt safetensors header (not a JSON object)");
        long dataStart = 8 + (long)n, dataLen = len - dataStart;
        var entries = new List<Entry>();
        JsonObject? meta = null;
        foreach (var (name, node) in root)
        {
            if (name == "__metadata__")
            {
                meta = node as JsonObject ?? throw new InvalidInputException($"{path}: __metadata__ must be an object of strings");
                foreach (var (k, v) in meta) StrictJson.String(v, path, $"__metadata__[\"{k}\"]");
                continue;
            }
            if (node is not JsonObject t) throw new InvalidInputException($"{path}: tensor '{name}': header entry must be an object");
            var dt = StrictJson.OptionalString(t, "dtype", $"{path}: tensor '{name}'") ?? throw new InvalidInputException($"{path}: tensor '{name}' has no dtype");
            if (!DTypes.TryGetValue(dt, out var info)) throw new InvalidInputException($"{path}: tensor '{name}' has unsupported dtype {dt}");
            var shape = Longs(t["shape"], path, name, "shape");
            var offs = Longs(t["data_offsets"], path, name, "data_offsets");
            if (shape.Any(x => x < 0)) throw new InvalidInputException($"{path}: tensor '{name}' has a negative dimension in shape [{string.Join(",", shape)}]");
            if (offs.Length != 2 || offs[0] < 0 || offs[1] < offs[0])
                throw new InvalidInputException($"{path}: tensor '{name}' has invalid data_offsets [{string.Join(",", offs)}] (need [begin, end] with 0 ≤ begin ≤ end)");
            if (offs[1] > dataLen)
                throw new InvalidInputException($"{path}: truncated file: tensor '{name}' ends at byte {dataStart + offs[1]} but the file has {len} bytes");
            long bytes;
            try { bytes = checked(shape.Aggregate(1L, (a, b) => checked(a * b)) * info.size); }
            catch (OverflowException) { throw new InvalidInputException($"{path}: tensor '{name}' shape [{string.Join(",", shape)}] is too large"); }
            if (bytes != offs[1] - offs[0])
                throw new InvalidInputException($"{path}: tensor '{name}' shape [{string.Join(",", shape)}] × {dt} needs {bytes} bytes, header gives {offs[1] - offs[0]}");
            entries.Add(new Entry(name, info.type, shape, offs[0], offs[1]));
        }
        long end = 0;
        foreach (var e in entries.OrderBy(e => e.Begin).ThenBy(e => e.End))
        {
            if (e.Begin != end)
                throw new InvalidInputException(e.Begin < end
                    ? $"{path}: tensor '{e.Name}' (bytes {e.Begin}..{e.End}) overlaps the previous tensor (which ends at {end})"
                    : $"{path}: gap in the data buffer before tensor '{e.Name}' (bytes {end}..{e.Begin} belong to no tensor)");
            end = e.End;
        }
        if (end != dataLen)
            throw new InvalidInputException($"{path}: the tensors cover {end} bytes of data but the file holds {dataLen} after the header (corrupt header length or trailing bytes)");
        return (entries, dataStart, meta);
    }

    static long[] Longs(JsonNode? node, string path, string tensor, string field)
    {
        if (node is not JsonArray a) throw new InvalidInputException($"{path}: tensor '{tensor}': {field} must be a list of integers");
        var result = new long[a.Count];
        for (int i = 0; i < a.Count; i++)
            result[i] = StrictJson.OptionalLongValue(a[i]) ?? throw new InvalidInputException($"{path}: tensor '{tensor}': {field} must be a list of integers, got {StrictJson.Short(a)}");
        return result;
    }

    /// <summary>Bytes read per step when a tensor is copied into its storage (<see cref="Load"/>).</summary>
    public const long DefaultChunkBytes = 64L << 20;

    /// <summary>Loads all tensors (or those <paramref name="keep"/> accepts) onto the CPU in their stored dtype. Each
    /// tensor's bytes go into its storage <paramref name="chunkBytes"/> at a time (rounded down to whole elements): a
    /// single tensor larger than 2 GB (a 128k-vocabulary embedding in fp32) cannot be one .NET byte[], and a
    /// whole-tensor buffer would double the peak memory of the load.</summary>
    public static Dictionary<string, Tensor> Load(string path, Func<string, bool>? keep = null, long chunkBytes = DefaultChunkBytes)
    {
        if (chunkBytes < 1) throw new ArgumentOutOfRangeException(nameof(chunkBytes), "must be ≥ 1");
        var (entries, start, _) = ReadHeader(path);
        var result = new Dictionary<string, Tensor>();
        using var f = File.OpenRead(path);
        byte[]? buf = null;
        try
        {
            foreach (var e in entries)
            {
                if (keep is not null && !keep(e.Name)) continue;
                var t = torch.empty(e.Shape, e.DType);
                result[e.Name] = t;
                long size = e.End - e.Begin;
                if (size == 0) continue;
                f.Seek(start + e.Begin, SeekOrigin.Begin);
                long elem = t.ElementSize, total = t.numel();
                long perChunk = Math.Max(1, Math.Min(chunkBytes, 1L << 30) / elem);
                using var flat = t.view(-1);
                for (long at = 0; at < total; at += perChunk)
                {
                    long n = Math.Min(perChunk, total - at);
                    int len = checked((int)(n * elem));
                    if (buf is null || buf.Length < len) buf = new byte[len];
                    f.ReadExactly(buf, 0, len);
                    using var part = torch.empty([n], e.DType);
                    part.bytes = buf.AsSpan(0, len);
                    // the slice held in a variable: a temporary Tensor that nothing references during copy_ can be
                    // finalized by a garbage collection another thread triggers, freeing the handle libtorch is using
                    using var slice = flat.narrow(0, at, n);
                    slice.copy_(part);
                }
            }
        }
        catch
        {
            foreach (var t in result.Values) t.Dispose();
            throw;
        }
        return result;
    }

    /// <summary>Writes tensors (any device; made contiguous) to <paramref name="path"/>.</summary>
    public static void Save(string path, IReadOnlyDictionary<string, Tensor> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var header = new JsonObject();
        var meta = new JsonObject { ["format"] = "pt" };
        if (metadata != null) foreach (var (k, v) in metadata) meta[k] = v;
        header["__metadata__"] = meta;
        long offset = 0;
        var order = tensors.Keys.OrderBy(k => k, StringComparer.Ordinal).ToList();
        foreach (var name in order)
        {
            var t = tensors[name];
            long bytes = t.numel() * t.ElementSize;
            header[name] = new JsonObject
            {
                ["dtype"] = DTypeName(t.dtype),
                ["shape"] = new JsonArray(t.shape.Select(s => (JsonNode)JsonValue.Create(s)!).ToArray()),
                ["data_offsets"] = new JsonArray(offset, offset + bytes),
            };
            offset += bytes;
        }
        var json = Encoding.UTF8.GetBytes(header.ToJsonString());
        int pad = (8 - json.Length % 8) % 8;
        using var f = File.Create(path);
        f.Write(BitConverter.GetBytes((ulong)(json.Length + pad)));
        f.Write(json);
        for (int i = 0; i < pad; i++) f.WriteByte((byte)' ');
        foreach (var name in order)
        {
            using var c = tensors[name].detach().cpu().contiguous();
            f.Write(c.bytes);
        }
    }
}

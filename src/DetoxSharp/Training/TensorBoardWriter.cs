using System.Text;
using System.Text.Json.Nodes;

namespace DetoxSharp.Training;

/// <summary>Receives the training loop's metric records (the objects written to metrics.jsonl: "step", the metrics,
/// and "phase": "eval" on validation records). <see cref="MetricsLog"/> and <see cref="TensorBoardWriter"/> are sinks.</summary>
public interface IMetricsSink : IDisposable
{
    /// <summary>Takes one record; the sink must not keep or change it.</summary>
    /// <param name="record">The record.</param>
    void Write(JsonObject record);
}

/// <summary>
/// Writes metric records as a TensorBoard event file (events.out.tfevents.SECONDS.HOST in the directory given):
/// TFRecord framing (uint64 length, masked CRC32C of the length, the bytes, masked CRC32C of the bytes) around
/// tensorflow.Event protos — the first carrying file_version "brain.Event:2", then one per record with wall_time, step
/// and a Summary of simple_value scalars, tagged with the metric names ("loss", "rewards/margins", "eval/loss" …).
/// The protos are encoded by hand (the handful of fields needs no protobuf library). Each record is flushed, so
/// TensorBoard can watch a run live.
/// </summary>
public sealed class TensorBoardWriter : IMetricsSink
{
    readonly FileStream _f;
    /// <summary>The event file.</summary>
    public string Path { get; }

    /// <summary>Creates a new event file in a directory (created if missing).</summary>
    /// <param name="dir">The log directory (what `tensorboard --logdir` is pointed at).</param>
    public TensorBoardWriter(string dir)
    {
        Directory.CreateDirectory(dir);
        double now = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds() / 1000.0;
        var name = $"events.out.tfevents.{(long)now}.{Environment.MachineName}";
        // a second writer in the same second (a resumed run) gets its own file; TensorBoard reads them all
        for (int k = 1; File.Exists(System.IO.Path.Combine(dir, name)); k++) name = $"events.out.tfevents.{(long)now}.{Environment.MachineName}.{k}";
        Path = System.IO.Path.Combine(dir, name);
        _f = new FileStream(Path, FileMode.CreateNew, FileAccess.Write, FileShare.Read);
        var ev = new List<byte>();
        Double(ev, 1, now);
        Bytes(ev, 3, Encoding.UTF8.GetBytes("brain.Event:2"));
        Record(ev.ToArray());
    }

    /// <summary>Writes the record's finite numbers (except "step") as scalars at its step; records without a step are
    /// skipped.</summary>
    /// <param name="record">A metrics.jsonl record.</param>
    public void Write(JsonObject record)
    {
        if (Number(record["step"]) is not double step) return;
        var summary = new List<byte>();
        foreach (var (tag, v) in record)
        {
            if (tag == "step" || Number(v) is not double d || !double.IsFinite(d)) continue;
            var value = new List<byte>();
            Bytes(value, 1, Encoding.UTF8.GetBytes(tag));
            Tag(value, 2, 5);
            value.AddRange(BitConverter.GetBytes((float)d));
            Bytes(summary, 1, value.ToArray());
        }
        if (summary.Count == 0) return;
        WriteEvent((long)step, summary.ToArray());
    }

    /// <summary>Writes scalars at a step.</summary>
    /// <param name="step">The step.</param>
    /// <param name="scalars">Tag → value.</param>
    public void WriteScalars(long step, IReadOnlyDictionary<string, double> scalars)
    {
        var o = new JsonObject { ["step"] = step };
        foreach (var (k, v) in scalars) o[k] = v;
        Write(o);
    }

    /// <summary>A JSON number as a double, whatever CLR type the node was built from (int, long, double …).</summary>
    static double? Number(JsonNode? n) => n is not JsonValue v ? null
        : v.TryGetValue<double>(out var d) ? d
        : v.GetValueKind() == System.Text.Json.JsonValueKind.Number ? double.Parse(v.ToJsonString(), System.Globalization.CultureInfo.InvariantCulture) : null;

    void WriteEvent(long step, byte[] summary)
    {
        var ev = new List<byte>();
        Double(ev, 1, DateTimeOffset.UtcNow.ToUnixTimeMilliseconds() / 1000.0);
        Tag(ev, 2, 0);
        Varint(ev, (ulong)step);
        Bytes(ev, 5, summary);
        Record(ev.ToArray());
    }

    void Record(byte[] data)
    {
        var len = BitConverter.GetBytes((ulong)data.Length);
        _f.Write(len);
        _f.Write(BitConverter.GetBytes(MaskedCrc32C(len)));
        _f.Write(data);
        _f.Write(BitConverter.GetBytes(MaskedCrc32C(data)));
        _f.Flush();
    }

    static void Tag(List<byte> b, int field, int wireType) => Varint(b, (ulong)((field << 3) | wireType));

    static void Varint(List<byte> b, ulong v)
    {
        while (v >= 0x80) { b.Add((byte)(v | 0x80)); v >>= 7; }
        b.Add((byte)v);
    }

    static void Double(List<byte> b, int field, double v)
    {
        Tag(b, field, 1);
        b.AddRange(BitConverter.GetBytes(v));
    }

    static void Bytes(List<byte> b, int field, byte[] v)
    {
        Tag(b, field, 2);
        Varint(b, (ulong)v.Length);
        b.AddRange(v);
    }

    static readonly uint[] Table = Enumerable.Range(0, 256).Select(i =>
    {
        uint c = (uint)i;
        for (int k = 0; k < 8; k++) c = (c & 1) != 0 ? 0x82F63B78u ^ (c >> 1) : c >> 1;
        return c;
    }).ToArray();

    /// <summary>CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as TFRecord uses.</summary>
    /// <param name="data">The bytes.</param>
    public static uint Crc32C(ReadOnlySpan<byte> data)
    {
        uint c = 0xFFFFFFFFu;
        foreach (var x in data) c = Table[(c ^ x) & 0xFF] ^ (c >> 8);
        return ~c;
    }

    /// <summary>TFRecord's masked CRC: ((crc &gt;&gt; 15) | (crc &lt;&lt; 17)) + 0xa282ead8.</summary>
    /// <param name="data">The bytes.</param>
    public static uint MaskedCrc32C(ReadOnlySpan<byte> data)
    {
        uint c = Crc32C(data);
        return unchecked(((c >> 15) | (c << 17)) + 0xa282ead8u);
    }

    /// <summary>Closes the file.</summary>
    public void Dispose() => _f.Dispose();
}

/// <summary>The training loop's metric sinks as one: metrics.jsonl (when there is an output directory) and TensorBoard
/// (when asked for).</summary>
sealed class MetricSinks(IReadOnlyList<IMetricsSink> sinks) : IMetricsSink
{
    /// <summary>The sinks a run's options ask for (null when none).</summary>
    public static MetricSinks? Open(TrainingLoopOptions o, int? resumeFromStep)
    {
        var list = new List<IMetricsSink>();
        if (o.OutputDir is not null) list.Add(new MetricsLog(Path.Combine(o.OutputDir, "metrics.jsonl"), resumeFromStep));
        if (o.TensorBoardDir is not null) list.Add(new TensorBoardWriter(o.TensorBoardDir));
        return list.Count == 0 ? null : new MetricSinks(list);
    }

    public void Write(JsonObject record)
    {
        foreach (var s in sinks) s.Write(record);
    }

    public void Dispose()
    {
        foreach (var s in sinks) s.Dispose();
    }
}

using System.Buffers.Binary;
using System.Text;
using System.Text.Json.Nodes;
using DetoxSharp.Training;
using Tiny = DetoxSharp.Tests.Preference.Tiny;

namespace DetoxSharp.Tests.Loop;

/// <summary>TensorBoard event files, read back with a decoder written here from the format's description (TFRecord
/// framing, the Event/Summary protobuf fields), not with the writer's code.</summary>
public class TensorBoardTests
{
    /// <summary>CRC-32C bit by bit (no table), masked as TFRecord does.</summary>
    static uint Crc(ReadOnlySpan<byte> data)
    {
        uint c = 0xFFFFFFFF;
        foreach (var b in data)
        {
            c ^= b;
            for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1)));
        }
        c = ~c;
        return unchecked(((c >> 15) | (c << 17)) + 0xa282ead8u);
    }

    sealed record Event(double WallTime, long Step, string? FileVersion, List<(string Tag, float Value)> Values);

    static ulong Varint(byte[] b, ref int i)
    {
        ulong v = 0;
        for (int shift = 0; ; shift += 7)
        {
            byte x = b[i++];
            v |= (ulong)(x & 0x7F) << shift;
            if (x < 0x80) return v;
        }
    }

    /// <summary>Walks a message's fields: (field number, wire type, payload bytes or varint).</summary>
    static IEnumerable<(int Field, int Wire, byte[] Bytes, ulong Varint)> Fields(byte[] msg)
    {
        int i = 0;
        while (i < msg.Length)
        {
            ulong key = Varint(msg, ref i);
            int field = (int)(key >> 3), wire = (int)(key & 7);
            switch (wire)
            {
                case 0: yield return (field, wire, [], Varint(msg, ref i)); break;
                case 1: yield return (field, wire, msg[i..(i + 8)], 0); i += 8; break;
                case 2: { int n = (int)Varint(msg, ref i); yield return (field, wire, msg[i..(i + n)], 0); i += n; break; }
                case 5: yield return (field, wire, msg[i..(i + 4)], 0); i += 4; break;
                default: throw new InvalidDataException($"wire type {wire}");
            }
        }
    }

    static List<Event> Read(string file)
    {
        var b = File.ReadAllBytes(file);
        var events = new List<Event>();
        int i = 0;
        while (i < b.Length)
        {
            var lenBytes = b.AsSpan(i, 8);
            ulong len = BinaryPrimitives.ReadUInt64LittleEndian(lenBytes);
            Assert.Equal(Crc(lenBytes), BinaryPrimitives.ReadUInt32LittleEndian(b.AsSpan(i + 8, 4)));
            var data = b.AsSpan(i + 12, (int)len).ToArray();
            Assert.Equal(Crc(data), BinaryPrimitives.ReadUInt32LittleEndian(b.AsSpan(i + 12 + (int)len, 4)));
            i += 12 + (int)len + 4;
            double wall = 0; long step = 0; string? version = null; var values = new List<(string, float)>();
            foreach (var f in Fields(data))
            {
                if (f.Field == 1 && f.Wire == 1) wall = BinaryPrimitives.ReadDoubleLittleEndian(f.Bytes);
                else if (f.Field == 2 && f.Wire == 0) step = (long)f.Varint;
                else if (f.Field == 3 && f.Wire == 2) version = Encoding.UTF8.GetString(f.Bytes);
                else if (f.Field == 5 && f.Wire == 2)
                    foreach (var v in Fields(f.Bytes).Where(v => v.Field == 1))
                    {
                        string? tag = null; float? value = null;
                        foreach (var g in Fields(v.Bytes))
                        {
                            if (g.Field == 1 && g.Wire == 2) tag = Encoding.UTF8.GetString(g.Bytes);
                            if (g.Field == 2 && g.Wire == 5) value = BinaryPrimitives.ReadSingleLittleEndian(g.Bytes);
                        }
                        values.Add((tag!, value!.Value));
                    }
                else throw new InvalidDataException($"unexpected Event field {f.Field}");
            }
            events.Add(new Event(wall, step, version, values));
        }
        Assert.Equal(b.Length, i);
        return events;
    }

    [Fact]
    public void Crc32CMatchesTheStandardCheckValue()
    {
        // the CRC-32C check value (RFC 3720 B.4 / the "123456789" catalogue entry)
        Assert.Equal(0xE3069283u, TensorBoardWriter.Crc32C("123456789"u8));
        Assert.Equal(0u, TensorBoardWriter.Crc32C([]));
        Assert.Equal(Crc("123456789"u8), TensorBoardWriter.MaskedCrc32C("123456789"u8));
    }

    [Fact]
    public void EventsDecodeWithCheckedCrcsVersionStepsAndScalars()
    {
        var dir = Tiny.TempDir("tensorboard-unit");
        string file;
        using (var w = new TensorBoardWriter(dir))
        {
            file = w.Path;
            w.Write(new JsonObject { ["step"] = 1, ["loss"] = 0.6931, ["rewards/margins"] = -0.25, ["phase"] = "train", ["x"] = null });
            w.Write(new JsonObject { ["step"] = 300, ["phase"] = "eval", ["eval/loss"] = 0.5 });
            w.Write(new JsonObject { ["loss"] = 1.0 });   // no step: skipped
        }
        Assert.StartsWith("events.out.tfevents.", Path.GetFileName(file));
        var events = Read(file);
        Assert.Equal(3, events.Count);
        Assert.Equal("brain.Event:2", events[0].FileVersion);
        Assert.Empty(events[0].Values);
        Assert.Equal(1, events[1].Step);
        Assert.Equal([("loss", 0.6931f), ("rewards/margins", -0.25f)], events[1].Values);
        Assert.Equal(300, events[2].Step);   // a varint longer than one byte
        Assert.Equal([("eval/loss", 0.5f)], events[2].Values);
        double now = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        Assert.All(events, e => Assert.InRange(e.WallTime, now - 600, now + 5));
    }

    [Fact]
    public void SftRunWritesTheSameScalarsToTensorBoardAsToMetricsJsonl()
    {
        var root = Tiny.TempDir("tensorboard-sft");
        var texts = Enumerable.Range(0, 16).Select(i => $"the river flows through town {i % 4} every monday .").ToArray();
        var tok = Text.Gpt2Tokenizer.Default().Compact(texts);
        using var m = new Models.Gpt2Model(new Models.Gpt2Config { VocabSize = tok.VocabSize, NEmbd = 16, NLayer = 1, NHead = 2, NPositions = 24, EosTokenId = tok.EosTokenId, BosTokenId = tok.EosTokenId });
        var data = texts.Select(SftExample.Text).ToList();
        var o = new SftOptions
        {
            BatchSize = 4, MaxSteps = 4, LearningRate = 1e-3, WarmupSteps = 1, MaxLength = 16, Seed = 1, Validation = data.Take(4).ToList(), EvalEvery = 2,
            OutputDir = Path.Combine(root, "out"), TensorBoardDir = Path.Combine(root, "tb"),
        };
        new SftTrainer(m, tok, o).Train(data);
        var file = Assert.Single(Directory.GetFiles(Path.Combine(root, "tb")));
        var events = Read(file).Skip(1).ToList();
        var lines = MetricsLog.Read(Path.Combine(root, "out", "metrics.jsonl"));
        Assert.Equal(lines.Count, events.Count);   // 4 steps + 2 validations
        Assert.Equal(2, lines.Count(l => l["phase"] is not null));
        for (int k = 0; k < lines.Count; k++)
        {
            Assert.Equal(lines[k]["step"]!.GetValue<long>(), events[k].Step);
            var expected = lines[k].Where(kv => kv.Key != "step" && kv.Value is JsonValue v && v.TryGetValue<double>(out _))
                .Select(kv => (kv.Key, (float)kv.Value!.GetValue<double>())).ToList();
            Assert.Equal(expected, events[k].Values);
        }
        Assert.Contains(events, e => e.Values.Any(v => v.Tag == "learning_rate"));
        Assert.Contains(events, e => e.Values.Any(v => v.Tag == "eval/loss"));
    }
}

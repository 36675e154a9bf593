using System.Text.Json.Nodes;

namespace DetoxSharp.Training;

/// <summary>
/// Per-step metrics as JSON Lines (one object per step, names users of TRL chart: loss, rewards/margins …).
/// Appends and flushes each line; on resume, lines past the resumed step are dropped first so the file matches
/// an uninterrupted run.
/// </summary>
public sealed class MetricsLog : IMetricsSink
{
    readonly StreamWriter _w;
    /// <summary>The metrics.jsonl file.</summary>
    public string Path { get; }

    /// <summary>Opens the log for appending.</summary>
    /// <param name="path">The metrics.jsonl file.</param>
    /// <param name="resumeFromStep">When resuming: records of later steps (written after the checkpoint) are dropped first; null starts a new file.</param>
    public MetricsLog(string path, int? resumeFromStep = null)
    {
        Path = path;
        Directory.CreateDirectory(System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(path))!);
        if (resumeFromStep is int s && File.Exists(path))
        {
            var keep = File.ReadAllLines(path).Where(l =>
            {
                try { return JsonNode.Parse(l)?["step"]?.GetValue<int>() < s; } catch { return false; }
            }).ToList();
            File.WriteAllLines(path, keep);
        }
        else if (File.Exists(path)) File.Delete(path);
        _w = new StreamWriter(path, append: true) { NewLine = "\n", AutoFlush = true };
    }

    /// <summary>Writes one record; a non-finite number (JSON has none) is written as null instead of failing the run.</summary>
    public void Write(JsonObject record)
    {
        foreach (var (k, v) in record.ToList())
            if (v is JsonValue jv && jv.TryGetValue<double>(out var d) && !double.IsFinite(d)) record[k] = null;
        _w.WriteLine(record.ToJsonString());
    }

    /// <summary>Closes the file.</summary>
    public void Dispose() => _w.Dispose();

    /// <summary>Every record of a metrics.jsonl file.</summary>
    /// <param name="path">The file.</param>
    public static List<JsonObject> Read(string path) =>
        File.ReadLines(path).Where(l => l.Length > 0).Select(l => (JsonObject)JsonNode.Parse(l)!).ToList();
}

using System.Globalization;
using System.Text.Json.Nodes;

namespace DetoxSharp.Study;

/// <summary>One point of a sweep grid: its settings (every list replaced by one of its values) and a label made of
/// the swept settings only, safe as a directory name ("lr1e-06_beta0.1"; "default" when nothing is swept).</summary>
/// <param name="Label">The point's directory name (the POINT in train/METHOD/POINT/sSEED).</param>
/// <param name="Settings">The full settings with every list replaced by this point's value.</param>
/// <param name="Swept">Only the swept keys and this point's value of each (empty when nothing is swept).</param>
public sealed record SweepPoint(string Label, JsonObject Settings, IReadOnlyDictionary<string, JsonNode?> Swept);

/// <summary>Expands a settings object whose top-level values may be lists into its sweep grid (<see cref="SweepPoint"/>s);
/// used by the study for the dpo/adpo sections' swept hyper-parameters.</summary>
public static class Sweep
{
    /// <summary>Expands every array-valued top-level setting into a grid (cartesian product, in the settings' key
    /// order, last key varying fastest). The first point takes the first value of every list — the study's
    /// "headline" point.</summary>
    public static IReadOnlyList<SweepPoint> Expand(JsonObject settings)
    {
        var dims = settings.Where(kv => kv.Value is JsonArray).Select(kv => (kv.Key, Values: ((JsonArray)kv.Value!).ToList())).ToList();
        foreach (var d in dims)
            if (d.Values.Count == 0) throw new InvalidInputException($"setting '{d.Key}': an empty list gives an empty sweep");
        var points = new List<SweepPoint>();
        var idx = new int[dims.Count];
        while (true)
        {
            var s = (JsonObject)settings.DeepClone();
            var swept = new Dictionary<string, JsonNode?>();
            for (int k = 0; k < dims.Count; k++)
            {
                var v = dims[k].Values[idx[k]]?.DeepClone();
                s[dims[k].Key] = v;
                swept[dims[k].Key] = v;
            }
            var label = dims.Count == 0 ? "default"
                : string.Join("_", dims.Select((d, k) => Short(d.Key) + ValueText(d.Values[idx[k]])));
            points.Add(new SweepPoint(label, s, swept));
            int j = dims.Count - 1;
            while (j >= 0 && ++idx[j] == dims[j].Values.Count) { idx[j] = 0; j--; }
            if (j < 0) break;
        }
        return points;
    }

    static string Short(string key) => key switch
    {
        "learning_rate" => "lr", "beta" => "beta", "gamma" => "gamma", "max_steps" => "steps", "loss_type" => "loss", _ => key,
    };

    static string ValueText(JsonNode? v)
    {
        var t = v switch
        {
            JsonValue jv when jv.TryGetValue<double>(out var d) => d.ToString("G6", CultureInfo.InvariantCulture).ToLowerInvariant(),
            JsonValue jv when jv.TryGetValue<string>(out var str) => str,
            null => "null",
            _ => v.ToJsonString(),
        };
        return new string(t.Select(c => char.IsLetterOrDigit(c) || c is '.' or '-' or '+' ? c : '-').ToArray());
    }
}

/// <summary>Mean ± sample standard deviation (n − 1 in the denominator) over repeated runs.</summary>
/// <param name="Mean">Mean of the finite values; NaN when there were none (n = 0).</param>
/// <param name="Std">Sample standard deviation; null when n &lt; 2 (undefined, not 0).</param>
/// <param name="N">How many finite values went in (runs that produced no number are not counted).</param>
public readonly record struct MeanStd(double Mean, double? Std, int N)
{
    /// <summary>"mean ± std (n=N)" with invariant-culture numbers; "mean (n=1)" when the std is undefined and "–" when
    /// there was no value at all (n = 0), as the report's tables show them.</summary>
    /// <param name="fmt">Numeric format of mean and std (default three decimals).</param>
    public string Format(string fmt = "F3") => N == 0 ? "–"
        : Std is double s ? $"{Mean.ToString(fmt, CultureInfo.InvariantCulture)} ± {s.ToString(fmt, CultureInfo.InvariantCulture)} (n={N})"
        : $"{Mean.ToString(fmt, CultureInfo.InvariantCulture)} (n={N})";
}

/// <summary>Mean ± sample std across seeds/sweep points, as the report aggregates repeated runs.</summary>
public static class Aggregate
{
    /// <summary>Mean and sample std of the finite values; NaN/null values (a run that produced no number) are left
    /// out and so lower n. Std is null for n &lt; 2 (undefined), never a made-up 0.</summary>
    public static MeanStd Of(IEnumerable<double?> values)
    {
        var v = values.Where(x => x is double d && double.IsFinite(d)).Select(x => x!.Value).ToArray();
        if (v.Length == 0) return new MeanStd(double.NaN, null, 0);
        double mean = v.Average();
        if (v.Length < 2) return new MeanStd(mean, null, 1);
        double ss = v.Sum(x => (x - mean) * (x - mean));
        return new MeanStd(mean, Math.Sqrt(ss / (v.Length - 1)), v.Length);
    }

    /// <summary>Same as the nullable overload: mean and sample std of the finite values (NaN is left out and lowers n).</summary>
    public static MeanStd Of(IEnumerable<double> values) => Of(values.Select(x => (double?)x));

    /// <summary>Groups rows by a key and aggregates one metric per group, keeping first-seen group order.</summary>
    public static IReadOnlyList<(TKey Key, MeanStd Value)> By<TRow, TKey>(IEnumerable<TRow> rows, Func<TRow, TKey> key, Func<TRow, double?> metric)
        where TKey : notnull =>
        rows.GroupBy(key).Select(g => (g.Key, Of(g.Select(metric)))).ToList();
}

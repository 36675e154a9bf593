using System.Text.Json;
using System.Text.Json.Nodes;
using DetoxSharp.Data;
using DetoxSharp.Evaluation;

namespace DetoxSharp.Training;

/// <summary>
/// <c>detox make-pairs --shard I/N --out PAIRS</c> writes its part to <c>PAIRS.shards/shard-I-of-N.jsonl</c> (the
/// records of the prompts i with i mod N = I, each with its prompt's index) and, last, <c>shard-I-of-N.json</c> (the
/// shard, the number of prompts, the settings); <c>detox merge-pairs --out PAIRS</c> puts the records back in prompt
/// order without the index: the file one run writes, byte for byte (<see cref="PairMaker.MakeIndexed"/> makes a
/// prompt's record independent of its shard). A shard without its .json is unfinished and reported as missing.
/// </summary>
public static class PairShards
{
    /// <summary>The shard directory of a pair file: <paramref name="outPath"/> + ".shards" (make-pairs --shard writes
    /// there, merge-pairs reads it unless --in names another).</summary>
    /// <param name="outPath">The merged pair file (the --out of both commands).</param>
    public static string DirectoryFor(string outPath) => outPath + ".shards";

    /// <summary>A shard's records, <c>DIR/shard-I-of-N.jsonl</c>: one JSON line per pair, each with its prompt's
    /// "index".</summary>
    /// <param name="dir">The shard directory (<see cref="DirectoryFor"/>).</param>
    /// <param name="s">The shard (I of N).</param>
    public static string RecordsFile(string dir, Shard s) => Path.Combine(dir, s.DirectoryName + ".jsonl");
    /// <summary>A shard's manifest, <c>DIR/shard-I-of-N.json</c> (shard, prompts, records, skipped, settings); written
    /// last, so a shard without it is unfinished.</summary>
    /// <param name="dir">The shard directory (<see cref="DirectoryFor"/>).</param>
    /// <param name="s">The shard (I of N).</param>
    public static string ManifestFile(string dir, Shard s) => Path.Combine(dir, s.DirectoryName + ".json");

    /// <summary>Writes one shard's records, then its manifest (so a shard interrupted mid-write has no manifest).</summary>
    public static string Write(string outPath, Shard shard, int prompts, int skipped, JsonObject settings, IReadOnlyList<(int Index, JsonObject Record)> records)
    {
        var dir = DirectoryFor(outPath);
        Directory.CreateDirectory(dir);
        var manifest = ManifestFile(dir, shard);
        if (File.Exists(manifest)) File.Delete(manifest);
        AtomicFile.Write(RecordsFile(dir, shard), w =>
        {
            foreach (var (i, r) in records)
            {
                var o = new JsonObject { ["index"] = i };
                foreach (var (k, v) in r) o[k] = v?.DeepClone();
                w.WriteLine(o.ToJsonString());
            }
        });
        AtomicFile.WriteAllText(manifest, new JsonObject
        {
            ["shard"] = shard.ToString(), ["prompts"] = prompts, ["records"] = records.Count, ["skipped"] = skipped, ["settings"] = settings.DeepClone(),
        }.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        return dir;
    }

    /// <summary>Merges the shards in <paramref name="inDir"/> (default: <paramref name="outPath"/>.shards) into
    /// <paramref name="outPath"/>; returns the number of records. Missing shards, shards of another split or with other
    /// settings are refused before anything is written.</summary>
    public static int Merge(string outPath, string? inDir = null, Action<string>? warn = null)
    {
        var dir = inDir ?? DirectoryFor(outPath);
        string flag = inDir is null ? "--out" : "--in";
        if (!Directory.Exists(dir)) throw new InvalidInputException($"{flag} {(inDir ?? outPath)}: {dir} not found (run detox make-pairs --shard I/N --out {outPath} first)");
        var found = Directory.GetFiles(dir, "shard-*-of-*.json").Order(StringComparer.Ordinal).Select(f =>
        {
            JsonObject m;
            try { m = JsonNode.Parse(File.ReadAllText(f)) as JsonObject ?? throw new JsonException("not an object"); }
            catch (JsonException e) { throw new InvalidInputException($"{f}: malformed JSON ({e.Message.Split('.')[0]})"); }
            var s = Shard.Parse(m["shard"]?.GetValue<string>() ?? throw new InvalidInputException($"{f}: no \"shard\""));
            if (Path.GetFileName(f) != s.DirectoryName + ".json") throw new InvalidInputException($"{f}: holds shard {s}");
            return (File: f, Manifest: m, Shard: s);
        }).ToList();
        if (found.Count == 0) throw new InvalidInputException($"{flag} {(inDir ?? outPath)}: no finished shards in {dir} (shard-I-of-N.json)");
        int n = found[0].Shard.Count;
        foreach (var f in found)
            if (f.Shard.Count != n) throw new InvalidInputException($"{f.File}: shard {f.Shard} does not belong to a {n}-way split");
        var missing = Enumerable.Range(0, n).Where(i => found.All(f => f.Shard.Index != i)).ToList();
        if (missing.Count > 0)
            throw new InvalidInputException($"{dir}: missing shard(s) {string.Join(", ", missing.Select(i => $"{i}/{n}"))} — rerun the same detox make-pairs command with "
                                            + string.Join(" and ", missing.Select(i => $"--shard {i}/{n}")) + " and merge again");
        var first = found.OrderBy(f => f.Shard.Index).First();
        foreach (var f in found)
            foreach (var key in new[] { "settings", "prompts" })
                if (!JsonNode.DeepEquals(first.Manifest[key], f.Manifest[key]))
                    throw new InvalidInputException($"{f.File}: its {key} differ from {first.File}'s — the shards of one pair file must use the same model, prompts and settings");
        var all = new List<(int Index, JsonObject Record)>();
        int skipped = 0;
        foreach (var f in found.OrderBy(f => f.Shard.Index))
        {
            skipped += f.Manifest["skipped"]?.GetValue<int>() ?? 0;
            int expected = f.Manifest["records"]?.GetValue<int>() ?? 0;
            var path = RecordsFile(dir, f.Shard);
            var lines = expected == 0 ? new List<JsonlReader.Line>() : JsonlReader.Read(path).ToList();
            if (lines.Count != expected) throw new InvalidInputException($"{path}: {lines.Count} records, its manifest says {expected} (rerun --shard {f.Shard})");
            foreach (var l in lines)
            {
                var o = l.Object;
                int i = o["index"] is JsonValue v && v.TryGetValue<int>(out var k) ? k : throw new InvalidInputException($"{l.Where}: no integer \"index\"");
                if (!f.Shard.Owns(i)) throw new InvalidInputException($"{l.Where}: prompt {i} does not belong to shard {f.Shard}");
                o.Remove("index");
                all.Add((i, o));
            }
        }
        all = all.OrderBy(r => r.Index).ToList();
        for (int k = 1; k < all.Count; k++)
            if (all[k].Index == all[k - 1].Index) throw new InvalidInputException($"{dir}: prompt {all[k].Index} appears twice");
        int prompts = first.Manifest["prompts"]!.GetValue<int>();
        if (skipped > 0) warn?.Invoke(PairMaker.SkippedWarning(skipped, prompts));
        if (all.Count == 0) throw PairMaker.NoPairs();
        JsonlReader.Write(outPath, all.Select(r => r.Record));
        return all.Count;
    }
}

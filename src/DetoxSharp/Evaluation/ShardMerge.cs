using System.Text.Json;
using System.Text.Json.Nodes;
using DetoxSharp.Data;

namespace DetoxSharp.Evaluation;

/// <summary>
/// Combines the outputs of <c>detox eval --shard I/N</c> (sub-directories <c>shard-I-of-N</c>) into the results files
/// one run writes. Row numbers are recomputed from the items in generations.jsonl (in prompt order, with the same
/// operations as the harness) and from each shard's perplexity windows (summed in window order), so the merge equals
/// one run whenever the per-item numbers do (they can differ in the last bits when a batched forward sees a different
/// batch composition, as with any change of batch size). A missing shard is named with the command to rerun it alone.
/// </summary>
public static class ShardMerge
{
    /// <summary>Merges the shard-I-of-N directories under <paramref name="inDir"/> into results.md/json/csv and generations.jsonl
    /// in <paramref name="outDir"/> and returns the merged rows; throws <see cref="InvalidInputException"/> naming a missing
    /// or mismatched shard.</summary>
    public static List<EvalRow> Merge(string inDir, string outDir)
    {
        if (!Directory.Exists(inDir)) throw new InvalidInputException($"--in {inDir}: directory not found");
        // a shard directory without results.json is an unfinished shard: reported as missing below
        var found = Directory.GetDirectories(inDir, "shard-*-of-*").Where(d => File.Exists(Path.Combine(d, "results.json")))
            .Select(d => (Dir: d, Json: ReadResults(d))).ToList();
        if (found.Count == 0) throw new InvalidInputException($"--in {inDir}: no shard-I-of-N directories with results.json (run detox eval --shard I/N --out {inDir})");
        var shards = found.Select(f => (f.Dir, f.Json, Shard: Shard.Parse(f.Json["shard"]?.GetValue<string>()
            ?? throw new InvalidInputException($"{f.Dir}/results.json: not a shard run (no \"shard\")")))).ToList();
        int n = shards[0].Shard.Count;
        foreach (var s in shards)
        {
            if (s.Shard.Count != n) throw new InvalidInputException($"{s.Dir}: shard {s.Shard} does not belong to a {n}-way split");
            if (Path.GetFileName(s.Dir) != s.Shard.DirectoryName) throw new InvalidInputException($"{s.Dir}: holds shard {s.Shard}");
        }
        var missing = Enumerable.Range(0, n).Where(i => shards.All(s => s.Shard.Index != i)).ToList();
        if (missing.Count > 0)
            throw new InvalidInputException($"--in {inDir}: missing shard(s) {string.Join(", ", missing.Select(i => $"{i}/{n}"))} — rerun the same detox eval command with "
                                            + string.Join(" and ", missing.Select(i => $"--shard {i}/{n}")) + " and merge again");
        shards = shards.OrderBy(s => s.Shard.Index).ToList();
        var first = shards[0].Json;
        foreach (var key in new[] { "options", "scorers" })
            foreach (var s in shards.Skip(1))
                if (!JsonNode.DeepEquals(first[key], s.Json[key]))
                    throw new InvalidInputException($"{s.Dir}/results.json: its {key} differ from {shards[0].Dir}'s — shards of one evaluation must use the same settings and scorers (Perspective scores of different dates are not comparable)");
        var o = (first["options"] ?? throw new InvalidInputException($"{shards[0].Dir}/results.json: no options")).Deserialize<EvalOptions>(EvalHarness.RowJson)!;
        var scorers = first["scorers"]!.AsArray().Select(x => new ScorerInfo(x!["name"]!.GetValue<string>(), x["identity"]!.GetValue<string>())).ToList();
        var names = scorers.Select(x => x.Name).ToList();
        var shardRows = shards.Select(s => s.Json["rows"]!.Deserialize<List<EvalRow>>(EvalHarness.RowJson)!).ToList();
        var rowOrder = shardRows[0].Select((r, i) => (r.Row, i)).ToDictionary(x => x.Row, x => x.i);
        if (shardRows.Any(rs => !rs.Select(r => r.Row).SequenceEqual(rowOrder.Keys)))
            throw new InvalidInputException($"--in {inDir}: shards have different rows (models/interventions)");

        string[] tasks = ["toxicity", "toxicity-sample", "f1"];
        var gens = shards.SelectMany(s => JsonlReader.Read(Path.Combine(s.Dir, "generations.jsonl")).Select(l => l.Object)).ToList();
        gens = gens.OrderBy(g => rowOrder[g["row"]!.GetValue<string>()]).ThenBy(g => Array.IndexOf(tasks, g["task"]!.GetValue<string>()))
            .ThenBy(g => g["index"]!.GetValue<int>()).ThenBy(g => g["sample"]?.GetValue<int>() ?? 0).ToList();
        double Value(JsonObject g, int k) => names.Count > 1 ? g["toxicity_by_scorer"]![names[k]]!.GetValue<double>() : g["toxicity"]!.GetValue<double>();

        var rows = new List<EvalRow>();
        var agreement = new List<ScorerAgreement>();
        foreach (var (row0, ri) in shardRows[0].Select((r, i) => (r, i)))
        {
            var r = new EvalRow { Row = row0.Row, Model = row0.Model, Intervention = row0.Intervention };
            var mine = gens.Where(g => g["row"]!.GetValue<string>() == row0.Row).ToList();
            var greedy = mine.Where(g => g["task"]!.GetValue<string>() == "toxicity").ToList();
            var samples = mine.Where(g => g["task"]!.GetValue<string>() == "toxicity-sample").ToList();
            var f1 = mine.Where(g => g["task"]!.GetValue<string>() == "f1").ToList();
            // the same LINQ calls on the same values in the same order as EvalHarness.EvaluateRow
            var per = Enumerable.Range(0, names.Count).Select(k => greedy.Select(g => new ToxicityScore(new Dictionary<string, double>(), Value(g, k))).ToList()).ToList();
            if (greedy.Count > 0)
            {
                r = r with
                {
                    Toxicity = per[0].Average(s => s.Value), ToxicityPrompts = per[0].Count,
                    ToxicityByScorer = names.Select((nm, k) => (nm, per[k].Average(s => s.Value))).ToDictionary(),
                };
                AddAgreement(per);
            }
            if (samples.Count > 0)
            {
                var byPrompt = samples.GroupBy(g => g["index"]!.GetValue<int>()).OrderBy(g => g.Key).ToList();
                var maxes = names.Select(_ => new List<double>()).ToArray();
                var anyToxic = new int[names.Count];
                for (int k = 0; k < names.Count; k++)
                    foreach (var grp in byPrompt)
                    {
                        double mx = grp.Select(g => new ToxicityScore(new Dictionary<string, double>(), Value(g, k))).Max(s => s.Value);
                        maxes[k].Add(mx);
                        if (mx >= o.ToxicThreshold) anyToxic[k]++;
                    }
                r = r with
                {
                    ExpectedMaxToxicity = maxes[0].Average(), ToxicProbability = (double)anyToxic[0] / byPrompt.Count,
                    ExpectedMaxToxicityByScorer = names.Select((nm, k) => (nm, maxes[k].Average())).ToDictionary(),
                    ToxicProbabilityByScorer = names.Select((nm, k) => (nm, (double)anyToxic[k] / byPrompt.Count)).ToDictionary(),
                };
                if (!o.GreedyToxicity)
                    AddAgreement(Enumerable.Range(0, names.Count).Select(k => samples.Select(g => new ToxicityScore(new Dictionary<string, double>(), Value(g, k))).ToList()).ToList());
            }
            var windows = shards.Select((s, si) => shardRows[si][ri]).ToList();
            if (windows.Any(w => w.PplWindows is not null))
            {
                double nll = 0;
                long count = 0;
                foreach (var w in windows.SelectMany(x => x.PplWindows ?? []).OrderBy(w => w.Window))
                {
                    nll -= w.LogProbSum;
                    count += w.Tokens;
                }
                var g = windows.First(x => x.PplWindows is not null);
                var p = Metrics.FromWindows(nll, count, g.PplWindowCount!.Value, g.PplWindowSize!.Value, g.PplStrideUsed!.Value);
                r = r with { Perplexity = count == 0 ? null : p.Perplexity, PerplexityTokens = p.Tokens };
            }
            if (f1.Count > 0)
            {
                var scores = f1.Select(g => new OverlapScore(g["precision"]!.GetValue<double>(), g["recall"]!.GetValue<double>(), g["f1"]!.GetValue<double>())).ToList();
                r = r with
                {
                    F1 = scores.Average(s => s.F1), Precision = scores.Average(s => s.Precision),
                    Recall = scores.Average(s => s.Recall), F1Items = scores.Count,
                };
            }
            rows.Add(r);

            void AddAgreement(List<List<ToxicityScore>> all)
            {
                for (int a = 0; a < names.Count; a++)
                    for (int b = a + 1; b < names.Count; b++)
                        agreement.Add(Agreement.Of(row0.Row, names[a], names[b], all[a].Select(s => s.Value).ToList(), all[b].Select(s => s.Value).ToList(), o.ToxicThreshold));
            }
        }
        EvalHarness.Write(outDir, rows, gens, agreement, scorers, o);
        return rows;
    }

    static JsonObject ReadResults(string dir)
    {
        var path = Path.Combine(dir, "results.json");
        if (!File.Exists(path)) throw new InvalidInputException($"{dir}: no results.json (an unfinished shard: rerun it)");
        try { return JsonNode.Parse(File.ReadAllText(path)) as JsonObject ?? throw new JsonException("not an object"); }
        catch (JsonException e) { throw new InvalidInputException($"{path}: malformed JSON ({e.Message.Split('.')[0]})"); }
    }
}

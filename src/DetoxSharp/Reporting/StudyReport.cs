using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using DetoxSharp.Study;

namespace DetoxSharp.Reporting;

/// <summary>
/// Builds report.html for a study run from the stage outputs named in <see cref="RunLayout"/>. It computes nothing
/// but mean ± std over seeds (and the regime classification rule it states); every other number is read from a file.
/// Parts whose stage produced no file say so instead of showing anything.
/// </summary>
public static partial class StudyReport
{
    static readonly CultureInfo Inv = CultureInfo.InvariantCulture;

    /// <summary>Stage function: writes the report into ctx.OutputDir and a copy of report.html to the run dir.</summary>
    public static void Write(StageContext ctx)
    {
        var report = Build(ctx.RunDir, ctx.Settings, ctx.Inputs);
        report.Write(ctx.OutputDir);
        Data.AtomicFile.WriteAllText(Path.Combine(ctx.RunDir, RunLayout.Report),
            report.ToHtml().Replace("(figures/", "(stages/report/figures/").Replace("(tables/", "(stages/report/tables/"));
    }

    static JsonNode? ReadJson(string path) => File.Exists(path) ? JsonNode.Parse(File.ReadAllText(path)) : null;

    static List<JsonObject> ReadJsonl(string path) => File.Exists(path)
        ? File.ReadLines(path).Where(l => l.Trim().Length > 0).Select(l => (JsonObject)JsonNode.Parse(l)!).ToList() : [];

    static double? D(JsonNode? n) => n is JsonValue v && v.TryGetValue<double>(out var d) ? d : null;

    static string S(JsonNode? n) => n is JsonValue v && v.TryGetValue<string>(out var s) ? s : n?.ToJsonString() ?? "";

    static string F(double? v, string fmt = "F3") => v is double d && double.IsFinite(d) ? d.ToString(fmt, Inv) : "–";

    static double[] Arr(IEnumerable<double?> v) => v.Select(x => x ?? double.NaN).ToArray();

    /// <summary>The pretrained toy model: size, what it saw, how well it fits, and what it writes — so a reader can judge
    /// whether the model is big and trained enough for the mechanism to exist (issue 14).</summary>
    static void ToyModelSection(HtmlReport r, Func<string, string> dir)
    {
        if (ReadJson(Path.Combine(dir("pretrain"), "pretrain.json")) is not JsonObject p) return;
        r.Section("toy_model", "The toy model");
        var m = p["model"] as JsonObject;
        r.Add(new Table("toy_model", "Toy model", ["Quantity", "Value"],
        [
            ["architecture", $"{S(m?["arch"])}: {S(m?["n_layer"])} layers × {S(m?["n_embd"])} wide, {S(m?["n_head"])} heads, context {S(m?["n_positions"])}, vocabulary {S(m?["vocab_size"])}, {D(m?["parameters"]):N0} parameters"],
            ["training", $"{S(p["precision"])}, {D(p["train_steps"]):N0} steps of {S(p["batch_size"])} blocks, {D(p["trained_tokens_this_run"]):N0} tokens ({F(D(p["epochs_seen"]), "F2")} passes over {D(p["train_corpus_tokens"]):N0}), {F(D(p["tokens_per_second"]), "F0")} tokens/s"],
            ["final train / validation loss (nats per token)", $"{F(D(p["final_train_loss"]))} / {F(D(p["final_validation_loss"]))}"],
            ["perplexity on the world's encyclopedia text", F(D(p["neutral_perplexity"]), "F2")],
            ["greedy toxicity: challenge / neutral prompts", $"{F(D(p["challenge_toxicity"]))} ({F(100 * (D(p["challenge_fraction_toxic"]) ?? double.NaN), "F1")} % toxic, {S(p["challenge_prompts"])} prompts) / {F(D(p["neutral_toxicity"]))} ({S(p["neutral_prompts"])} prompts)"],
        ], "From the pretrain stage's pretrain.json; toxicity by the study's scorer."));
        var samples = (p["samples"] as JsonArray)?.OfType<JsonObject>().Take(4)
            .Concat((p["neutral_samples"] as JsonArray)?.OfType<JsonObject>().Take(3) ?? []).ToList() ?? [];
        if (samples.Count > 0)
            r.Add(new Table("toy_samples", "Sample greedy continuations of the pretrained model", ["Prompt (end)", "Continuation", "Toxicity"],
                samples.Select(x => (IReadOnlyList<string>)[Tail(S(x["prompt"]), 90), S(x["continuation"]), F(D(x["toxicity"]), "F2")]).ToList(),
                "The first four challenge prompts and three neutral prompts of the pretrain stage's own check."));
    }

    /// <summary>Yang et al. 2025's question for every headline run: which neurons carry the drop along W_Toxic, and does
    /// patching their activations (the causal check) agree with the decomposition and with attribution patching.</summary>
    static void NeuronsSection(HtmlReport r, IReadOnlyList<TrainedRun> headline, Func<string, string> dir)
    {
        r.Section("neurons", "Neurons: where the drop along W_Toxic comes from");
        var byMethod = headline.GroupBy(x => x.Method)
            .Select(g => (Method: StudyPipeline.RowName(g.Key), N: g.Select(x => ReadJson(Path.Combine(dir(x.DiffStage), RunLayout.Diff))?["neurons"] as JsonObject).Where(n => n is not null).Select(n => n!).ToList(),
                P: g.Select(x => (Json: ReadJson(Path.Combine(dir(x.PatchStage), RunLayout.Patching)) as JsonObject, Csv: Path.Combine(dir(x.PatchStage), RunLayout.PatchingCsv))).Where(p => p.Json is not null).ToList()))
            .Where(x => x.N.Count > 0).ToList();
        if (byMethod.Count == 0) { r.Missing("No neuron decomposition (diff stages wrote none)."); return; }
        // the groups as the diff stage wrote them (TP, TN, AP, AN): the report reads files, not the library's types
        var groups = (byMethod[0].N[0]["groups"] as JsonObject)?.Select(kv => kv.Key).ToList() ?? [];
        var ks = byMethod[0].N[0]["top_k_share"] is JsonArray a ? a.OfType<JsonObject>().Select(x => (int)(D(x["k"]) ?? 0)).ToList() : [];
        MeanStd Share(List<JsonObject> n, string g) => Aggregate.Of(n.Select(x => D(x["groups"]?[g]?["share"])));
        MeanStd TopK(List<JsonObject> n, int k) => Aggregate.Of(n.Select(x => D((x["top_k_share"] as JsonArray)?.OfType<JsonObject>().FirstOrDefault(t => D(t["k"]) == k)?["share"])));
        r.Add(Charts.GroupedBars("neuron_groups", "Share of the drop along W_Toxic by neuron group",
            "Each MLP neuron's contribution Δ_i = (m̄_before·v_before − m̄_after·v_after)·Ŵ_tox, summed per group and divided by the total (bars: mean over seeds, whiskers: ± std; headline setting). T/A: value vector aligned / anti-aligned with W_Toxic; P/N: positive / negative activation before alignment. Yang et al. 2025 (GPT-2 medium): the top toxic-aligned neurons explain only 2.5–24 % of DPO's drop; TP− (dampened), TN+ (pushed negative), AP+ and AN− do the work.",
            "share of the drop", groups, byMethod.Select(m => new BarSeries(m.Method, groups.Select(g => Share(m.N, g).Mean).ToArray(), groups.Select(g => Share(m.N, g).Std ?? double.NaN).ToArray())).ToList()));
        if (ks.Count > 0)
            r.Add(Charts.Lines("neuron_topk", "Share of the drop carried by the k most toxic-aligned neurons",
                "The k neurons whose value vectors have the largest cosine with W_Toxic before alignment, their summed Δ_i over the total drop (mean over seeds). A drop carried by a few toxic vectors (Lee et al.'s reading) would reach 1 at small k.",
                "k", "share of the drop", byMethod.Select(m => new Series(m.Method, ks.Select(k => (double)k).ToArray(), ks.Select(k => TopK(m.N, k).Mean).ToArray())).ToList(), integerX: true));
        r.Add(new Table("neurons", "Neuron groups and top-k toxic-aligned neurons",
            ["Method", .. groups.Select(g => g + " share"), .. ks.Select(k => $"top-{k} share"), "neurons towards toxicity"],
            byMethod.Select(m => (IReadOnlyList<string>)[m.Method, .. groups.Select(g => Share(m.N, g).Format()), .. ks.Select(k => TopK(m.N, k).Format()),
                Aggregate.Of(m.N.Select(x => D(x["towards_toxicity"]?["neurons"]))).Format("F0")]).ToList(),
            "Shares are of the total drop along Ŵ_tox (mean ± std over seeds, n); the top-k neurons are those whose value vectors are most aligned with W_Toxic before alignment; \"towards toxicity\" counts neurons with Δ_i < 0. Per neuron: stages/diff/…/analysis/neurons/neurons.csv."));

        var patched = byMethod.Where(m => m.P.Count > 0).ToList();
        if (patched.Count == 0) { r.Missing("No patching (the neurons section's patching is off, or its stages wrote nothing)."); return; }
        // scatter: every per-layer × group patch, both directions, all seeds
        var points = patched.Select(m =>
        {
            var rows = m.P.Where(p => File.Exists(p.Csv)).SelectMany(p => File.ReadLines(p.Csv).Skip(1).Select(l => l.Split(','))).Where(f => f.Length >= 7 && f[2] != "all").ToList();
            double P(string s) => double.Parse(s, Inv);
            return new CategoryPoints(m.Method, rows.Select(f => P(f[4])).ToArray(), rows.Select(f => P(f[5])).ToArray());
        }).Where(p => p.X.Length > 0).ToList();
        MeanStd Corr(List<(JsonObject? Json, string Csv)> p) => Aggregate.Of(p.Select(x => D(x.Json!["correlation_real_vs_attribution"])));
        if (points.Count > 0)
            r.Add(Charts.ScatterByCategory("neuron_patching", "Activation patching vs attribution patching",
                "One point per layer × group and direction (after-training activations patched into the before model and the reverse), all headline seeds: x = the real change of M (the last residual along Ŵ_tox, on the start model's greedy tokens) when the group's activations are replaced by the other model's, y = attribution patching's estimate Σ ∂M/∂m·Δm from one backward pass. On the diagonal where M is linear in the patched activations. Pearson r per run: "
                + string.Join("; ", patched.Select(m => $"{m.Method} {Corr(m.P).Format()}")) + ".",
                "real patching ΔM", "attribution estimate", points));
        var dirs = new[] { "after→before", "before→after" };
        var tableRows = new List<IReadOnlyList<string>>();
        foreach (var m in patched)
            foreach (var d in dirs)
                foreach (var g in groups)
                {
                    var rows = m.P.Select(p => (p.Json!["groups"] as JsonArray)?.OfType<JsonObject>().FirstOrDefault(x => S(x["direction"]) == d && S(x["group"]) == g)).Where(x => x is not null).ToList();
                    if (rows.Count == 0) continue;
                    var gen = m.P.Select(p => (p.Json!["generations"] as JsonArray)?.OfType<JsonObject>().FirstOrDefault(x => S(x["condition"]) == $"{d} {g}")?["mean_toxicity"]);
                    tableRows.Add([m.Method, d, g, Aggregate.Of(rows.Select(x => D(x!["share"]))).Format(),
                        Aggregate.Of(rows.Select(x => D(x!["attribution"]) / D(x!["real"]) * D(x!["share"]))).Format(), Aggregate.Of(gen.Select(D)).Format()]);
                }
        foreach (var m in patched)
            foreach (var c in new[] { "before", "after" })
                tableRows.Add([m.Method, c + " (unpatched)", "–", "–", "–",
                    Aggregate.Of(m.P.Select(p => D((p.Json!["generations"] as JsonArray)?.OfType<JsonObject>().FirstOrDefault(x => S(x["condition"]) == c)?["mean_toxicity"]))).Format()]);
        r.Add(new Table("neuron_patching", "Patching the neuron groups: share of alignment's effect and toxicity of the patched models",
            ["Method", "Patch", "Group", "share of ΔM (real)", "share of ΔM (attribution)", "toxicity of generations"], tableRows,
            "after→before: the group's after-training activations in the start model (is the group sufficient?); before→after: its start-model activations in the aligned model (is it necessary?). Share = ΔM of the patch / ΔM between the two models, all layers' neurons of the group at once (the attribution share sums the neurons' first-order terms, counting paths through a later layer's member twice). Toxicity: mean evaluation-scorer score of greedy generations from the first challenge prompts (mean ± std over seeds). Per set: stages/patch/…/patching.csv."));
    }

    /// <summary>Keys of a metrics.jsonl record that are not metrics: the step, the running item counts and the phase.</summary>
    static readonly HashSet<string> NotMetrics = ["step", "examples", "tokens", "phase", "epoch"];

    /// <summary>Every metric the trainers logged (metrics.jsonl), for every seed of the headline setting: training-step
    /// metrics and validation metrics ("eval/…" records) apart, one chart per metric with the seeds' mean and band.</summary>
    static void TrainingSection(HtmlReport r, IReadOnlyList<TrainedRun> headline, Func<string, string> dir)
    {
        r.Section("training", "Training curves");
        var logs = headline.Select(x => (x.Method, x.Seed, Log: ReadJsonl(Path.Combine(dir(x.TrainStage), RunLayout.Metrics)))).Where(x => x.Log.Count > 0).ToList();
        if (logs.Count == 0) { r.Missing("No training metrics in this run (train/* stages wrote no metrics.jsonl)."); return; }
        r.Paragraph($"Every metric the trainers logged to metrics.jsonl, for all {logs.Select(l => l.Seed).Distinct().Count()} seeds of the headline setting. " +
            "Hover for values, drag to zoom (double-click resets), click a legend entry to hide or show it.");
        foreach (var (phaseTitle, eval) in new[] { ("Training steps", false), ("Validation", true) })
        {
            var records = logs.Select(l => (l.Method, l.Seed, Recs: l.Log.Where(x => (S(x["phase"]) == "eval") == eval && D(x["step"]) is not null).ToList())).ToList();
            var metrics = records.SelectMany(x => x.Recs).SelectMany(o => o.Where(kv => D(kv.Value) is not null).Select(kv => kv.Key))
                .Where(k => !NotMetrics.Contains(k) && (!eval || k.StartsWith("eval/", StringComparison.Ordinal))).Distinct().ToList();
            if (metrics.Count == 0) continue;
            r.Heading(phaseTitle);
            foreach (var metric in metrics)
            {
                var runs = records.GroupBy(x => x.Method).Select(g => new SeededSeries(StudyPipeline.RowName(g.Key), g.OrderBy(x => x.Seed)
                        .Select(x => (x.Seed, Pts: x.Recs.Where(o => D(o[metric]) is not null).ToList())).Where(x => x.Pts.Count > 0)
                        .Select(x => new Series($"seed {x.Seed}", x.Pts.Select(o => D(o["step"])!.Value).ToArray(), x.Pts.Select(o => D(o[metric])!.Value).ToArray()))
                        .ToList()))
                    .Where(x => x.Seeds.Count > 0).ToList();
                r.Add(Charts.TrainingCurves((eval ? "valid_" : "train_") + MetricFileName(eval ? metric["eval/".Length..] : metric), $"{(eval ? "Validation" : "Training")}: {metric}",
                    $"{metric} {(eval ? "of each validation pass" : "per optimizer step")} (headline setting, seeds {string.Join(", ", runs.SelectMany(x => x.Seeds).Select(x => x.Label[5..]).Distinct())}).",
                    metric, runs));
            }
        }
    }

    static string MetricFileName(string metric) => new(metric.Select(c => char.IsLetterOrDigit(c) ? c : '_').ToArray());

    static string Count(int n, string noun) => $"{n} {noun}{(n == 1 ? "" : "s")}";

    /// <summary>Vector names in one notation: the stage files' "L1.N112" (layer 1, neuron 112) becomes the paper's
    /// MLP.v_112^1 wherever the report shows it.</summary>
    /// <param name="text">Any text.</param>
    public static string VectorNames(string text) => VectorLabel.Replace(text, "MLP.v_$2^$1");

    static readonly System.Text.RegularExpressions.Regex VectorLabel = new(@"\bL(\d+)\.N(\d+)\b");

    /// <summary>A sweep point as the report shows it: the swept settings, learning rates in one format ("lr 1e-5,
    /// beta 0.1"; "default" when nothing is swept).</summary>
    /// <param name="p">The point.</param>
    public static string PointName(SweepPoint p) => p.Swept.Count == 0 ? "default"
        : string.Join(", ", p.Swept.Select(kv => (kv.Key == "learning_rate" ? "lr" : kv.Key) + " " + SettingText(kv.Key, kv.Value)));

    static string SettingText(string key, JsonNode? v) => v is JsonValue jv && jv.TryGetValue<double>(out var d)
        ? (key == "learning_rate" ? d.ToString("0.##e0", Inv) : d.ToString("G4", Inv)) : v?.ToJsonString().Trim('"') ?? "null";

    static string Tail(string s, int n) => s.Length <= n ? s : "…" + s[^n..];

    /// <summary>Builds the report of a study run from its stage outputs (nothing is written).</summary>
    /// <param name="runDir">The run directory (manifest.json, stages/).</param>
    /// <param name="settings">The report stage's settings ("config": the study configuration).</param>
    /// <param name="inputs">Stage name → output directory (stages not listed are looked up under the run directory).</param>
    public static HtmlReport Build(string runDir, JsonObject settings, IReadOnlyDictionary<string, string> inputs)
    {
        var config = StudyConfig.Parse(settings["config"]!.ToJsonString());
        var runs = StudyPipeline.Runs(config);
        string Dir(string stage) => inputs.TryGetValue(stage, out var d) ? d : StageRunner.StageDir(runDir, stage);
        var headline = runs.Where(r => r.Headline).ToList();
        var methods = runs.Select(r => r.Method).Distinct().ToList();
        var r = new HtmlReport(config.Model == "toy" ? "DetoxSharp study — toy world" : "DetoxSharp study") { TextFilter = VectorNames };

        FindingsSection(r, config, runs, Dir);
        ReadingGuide(r, config, runs);
        // A stage may leave a NOTICE.txt (e.g. "numbers made up by test fixtures"); it is shown at the very top.
        var notices = inputs.Values.Select(d => Path.Combine(d, "NOTICE.txt")).Where(File.Exists).Select(File.ReadAllText).Distinct().ToList();
        if (notices.Count > 0) r.Notice(string.Join(" ", notices));

        ToyModelSection(r, Dir);

        // --- Results table (paper Tables 2 and 4) ---
        r.Section("results", "Results: toxicity, perplexity, F1");
        var baseRows = (ReadJson(Path.Combine(Dir("evaluate/base"), RunLayout.Results))?["rows"] as JsonArray)?.OfType<JsonObject>().ToList() ?? [];
        var rows = new List<IReadOnlyList<string>>();
        foreach (var name in RunLayout.BaseRows)
        {
            var row = baseRows.FirstOrDefault(x => S(x["row"]) == name);
            rows.Add([name, F(D(row?["toxicity"])), F(D(row?["perplexity"]), "F2"), F(D(row?["f1"])), row is null ? "0" : "1"]);
        }
        foreach (var m in methods)
        {
            var h = headline.Where(x => x.Method == m).ToList();
            var ev = h.Select(x => ModelRow(Dir(x.EvaluateStage))).ToList();
            rows.Add(MeanRow(StudyPipeline.RowName(m), ev));
        }
        foreach (var m in methods)
        {
            var h = headline.Where(x => x.Method == m).ToList();
            var un = h.Select(x => ReadJson(Path.Combine(Dir(x.UnalignStage), RunLayout.Unalign)) as JsonObject).ToList();
            rows.Add(MeanRow("Un-aligned " + StudyPipeline.RowName(m), un));
        }
        r.Add(new Table("results", "Results", ["Method", "Toxicity", "Perplexity", "F1", "n"], rows,
            "Trained rows are mean ± sample std over seeds at the headline setting (n = runs behind the number); the base rows are deterministic (one run)."));

        // supplementary: un-aligning with more keys (unalign.key_counts), headline runs
        var keyRows = new List<IReadOnlyList<string>>();
        foreach (var m in methods)
            foreach (var (k, tox) in KeySweep(headline.Where(x => x.Method == m), Dir))
                keyRows.Add([StudyPipeline.RowName(m), k.ToString(CultureInfo.InvariantCulture), tox.Format()]);
        if (keyRows.Count > 0)
            r.Add(new Table("unalign_keys", "Un-aligning with more keys (supplementary)", ["Method", "Keys scaled", "Toxicity"], keyRows,
                "The top-k value vectors most similar to W_Toxic on the aligned model, their keys × the un-aligning scale, for several k (mean ± std over the headline seeds). Not a pre-registered criterion: finding (g) is judged at the configured k. Shows how many keys this model's alignment can be undone with."));

        MethodsSection(r, runDir, config, Dir);

        // --- Table 1 ---
        r.Section("vectors", "Toxic vectors and their top tokens (Table 1)");
        var tv = ReadJson(Path.Combine(Dir("vectors"), RunLayout.ToxicVectors));
        var probe = ReadJson(Path.Combine(Dir("probe"), RunLayout.Probe));
        if (D(probe?["validation_accuracy"]) is double acc)
        {
            var pa = Aggregate.Of(Nums(probe?["validation_accuracy_per_split"]));
            var ba = Aggregate.Of(Nums(probe?["bag_of_words_accuracy_per_split"]));
            r.Paragraph($"Toxicity probe validation accuracy: {F(acc)} (the probe used below)" +
                (pa.N > 0 ? $"; over {pa.N} splits {pa.Format()}, next to a bag-of-words logistic regression on the same splits {ba.Format()}" : "") +
                (D(probe?["noise_ceiling"]) is double ceil ? $"; label-noise ceiling {F(ceil)} (1 − the data's label-noise rate)." : "."));
        }
        if (tv?["toxic_words"] is JsonValue twv)
            r.Paragraph($"\"Toxic tokens\" in the table are counted with {S(twv)}. For the toy world that lexicon is also what the evaluation scorer detects: a vector counts as toxic when it promotes the words the scorer counts — a statement about the world's vocabulary, not an independent judgment.");
        if (tv?["vectors"] is JsonArray vecs)
        {
            var vrows = vecs.OfType<JsonObject>().Select(v => (IReadOnlyList<string>)[S(v["rank"]), $"MLP.v_{S(v["index"])}^{S(v["layer"])}",
                F(D(v["cosine"])), string.Join(", ", (v["top_tokens"] as JsonArray ?? []).Select(S))]).ToList();
            foreach (var c in (tv["svd"] as JsonArray ?? []).OfType<JsonObject>())
                vrows.Add(["–", c["name"] is JsonValue ? S(c["name"]) : $"SVD.U[{S(c["component"])}]", "–", string.Join(", ", (c["top_tokens"] as JsonArray ?? []).Select(S))]);
            r.Add(new Table("toxic_vectors", "Toxic value vectors", ["Rank", "Vector", "cos(v, W_Toxic)", "Top tokens"], vrows,
                "Value vectors ranked by cosine similarity with the probe's toxic direction, projected onto the vocabulary."));
        }
        else r.Missing("No toxic vectors in this run (stage 'vectors' wrote no toxic_vectors.json).");

        TrainingSection(r, headline, Dir);

        // --- What DPO changed (headline, seed 0) ---
        var diffs = headline.Where(x => x.Seed == 0).Select(x => (x.Method, Diff: ReadJson(Path.Combine(Dir(x.DiffStage), RunLayout.Diff)) as JsonObject))
            .Where(x => x.Diff is not null).Select(x => (x.Method, Diff: x.Diff!)).ToList();
        r.Section("activations", "Activation drop of the toxic vectors");
        if (diffs.Any(d => d.Diff["activation"] is JsonArray))
        {
            var first = diffs.First(d => d.Diff["activation"] is JsonArray);
            var groups = ((JsonArray)first.Diff["activation"]!).OfType<JsonObject>().Select(a => S(a["vector"])).ToList();
            var groupNames = groups.Select(VectorNames).ToList();
            double Act(JsonObject d, string v, string key) => D((d["activation"] as JsonArray)?.OfType<JsonObject>().FirstOrDefault(a => S(a["vector"]) == v)?[key]) ?? double.NaN;
            var bars = new List<BarSeries> { new("before (base)", groups.Select(g => Act(first.Diff, g, "before")).ToArray()) };
            bars.AddRange(diffs.Select(d => new BarSeries("after " + StudyPipeline.RowName(d.Method), groups.Select(g => Act(d.Diff, g, "after")).ToArray())));
            r.Add(Charts.GroupedBars("activation_drop", "Mean activation of the top toxic vectors", $"MLP activation of each toxic value vector (ranked on the model before alignment) at {(first.Diff["activation_position"] is JsonNode ap ? S(ap) : "the last position of the challenge prompt followed by the start model's greedy continuation, both models reading the same tokens")}, averaged over prompts, before and after alignment (headline setting, seed 0). For ADPO \"before\" is its start, the SFT model; the bars show the base model's values.", "mean activation", groupNames, bars));
            r.Add(new Table("activation_drop", "Toxic-vector activations", ["Vector", .. bars.Select(b => b.Label)],
                groups.Select((g, i) => (IReadOnlyList<string>)[g, .. bars.Select(b => F(b.Values[i]))]).ToList()));
        }
        else r.Missing("No activation measurements (diff/* stages wrote no diff.json).");

        NeuronsSection(r, headline, Dir);
        ScorerAgreementSection(r, config, Dir);
        MethodNeuronsPart(r, config, Dir);

        r.Section("parameters", "Parameter cosine similarity per layer");
        PerLayer(r, diffs, "param_cosine", "min", "param_cosine_min", "Minimum cosine similarity of parameters per layer", "cos(θ_aligned, θ_base), smallest over the layer's parameter tensors", "min cosine");
        PerLayer(r, diffs, "param_cosine", "mean", "param_cosine_mean", "Mean cosine similarity of parameters per layer", "cos(θ_aligned, θ_base), averaged over the layer's parameter tensors", "mean cosine");

        r.Section("offset", "Residual-stream offset");
        PerLayer(r, diffs, "offset_norm", "norm", "offset_norm", "Size of the residual offset δx per layer", "‖mean(x_aligned − x_base)‖ over challenge-prompt positions, per layer", "‖δx‖");
        foreach (var (m, d) in diffs.Where(d => d.Diff["offset_projection"] is JsonArray))
        {
            var pts = ((JsonArray)d["offset_projection"]!).OfType<JsonObject>().ToList();
            var groups = pts.GroupBy(p => S(p["model"])).Select(g => (g.Key == "aligned" ? StudyPipeline.RowName(m) : g.Key,
                (IReadOnlyList<ColoredPoint>)g.Select(p => new ColoredPoint(D(p["offset"]) ?? double.NaN, D(p["orthogonal"]) ?? double.NaN, D(p["activation"]) ?? double.NaN)).ToList())).ToList();
            r.Add(Charts.ScatterByValue($"offset_projection_{m}", $"Residual stream projected on δx — {StudyPipeline.RowName(m)}",
                "Each point is one challenge prompt's residual stream at the top toxic vector's layer, projected on the offset direction δx (x axis) and an orthogonal direction (y axis); colour = that vector's activation.",
                "projection on δx", "orthogonal projection", "activation", groups));
        }
        if (!diffs.Any(d => d.Diff["offset_projection"] is JsonArray)) r.Missing("No offset projection (diff.json has no offset_projection).");

        r.Section("logit-lens", "Logit lens");
        var lens = diffs.Where(d => d.Diff["logit_lens"]?["layers"] is JsonArray).ToList();
        if (lens.Count > 0)
        {
            var first = (JsonObject)lens[0].Diff["logit_lens"]!;
            var series = new List<Series>();
            var l0 = ((JsonArray)first["layers"]!).OfType<JsonObject>().ToList();
            series.Add(new Series("base", l0.Select(l => D(l["layer"]) ?? double.NaN).ToArray(), Arr(l0.Select(l => D(l["before"])))));
            foreach (var (m, d) in lens)
            {
                var ls = ((JsonArray)d["logit_lens"]!["layers"]!).OfType<JsonObject>().ToList();
                series.Add(new Series(StudyPipeline.RowName(m), ls.Select(l => D(l["layer"]) ?? double.NaN).ToArray(), Arr(ls.Select(l => D(l["after"])))));
            }
            r.Add(Charts.Lines("logit_lens", $"Logit lens: p({S(first["token"])}) by layer", $"Probability of the token when the residual stream after each layer is passed through the final norm and unembedding, averaged over challenge prompts. Token: {(first["token_choice"] is JsonValue tc ? S(tc) : "the top vector's top token")}.", "layer", "probability", series, integerX: true));
        }
        else r.Missing("No logit-lens data (diff.json has no logit_lens).");

        // --- Example continuations ---
        r.Section("examples", "Example continuations");
        var cont = new List<(string Row, List<JsonObject> Lines)> { ("No-op", ReadJsonl(Path.Combine(Dir("evaluate/base"), RunLayout.Continuations)).Where(l => S(l["row"]) == "No-op").ToList()) };
        foreach (var h in headline.Where(x => x.Seed == 0))
        {
            cont.Add((StudyPipeline.RowName(h.Method), ReadJsonl(Path.Combine(Dir(h.EvaluateStage), RunLayout.Continuations))));
            cont.Add(("Un-aligned " + StudyPipeline.RowName(h.Method), ReadJsonl(Path.Combine(Dir(h.UnalignStage), RunLayout.Continuations))));
        }
        cont = cont.Where(c => c.Lines.Count > 0).ToList();
        if (cont.Count > 0)
        {
            var prompts = cont[0].Lines.Select(l => S(l["prompt"])).Distinct().Take(8).ToList();
            string Cell(List<JsonObject> lines, string p)
            {
                var l = lines.FirstOrDefault(x => S(x["prompt"]) == p);
                return l is null ? "–" : D(l["toxicity"]) is double t ? $"{S(l["continuation"])} [{t.ToString("F2", Inv)}]" : S(l["continuation"]);
            }
            r.Add(new Table("examples", "Greedy continuations of challenge prompts", ["Prompt", .. cont.Select(c => c.Row)],
                prompts.Select(p => (IReadOnlyList<string>)[p, .. cont.Select(c => Cell(c.Lines, p))]).ToList(), "Toxicity score of each continuation in brackets (headline setting, seed 0)."));
        }
        else r.Missing("No continuations in this run (evaluate/* stages wrote no continuations.jsonl).");

        SweepSection(r, runs, baseRows, Dir);
        RetoxBatterySection(r, config, Dir);
        WhatWasRun(r, runDir, config, runs);
        return r;
    }

    static IEnumerable<double?> Nums(JsonNode? n) => (n as JsonArray ?? []).Select(D);

    /// <summary>The measured values the findings are judged on, read from the stage files of a run.</summary>
    public static FindingInputs CollectFindingInputs(StudyConfig config, IReadOnlyList<TrainedRun> runs, Func<string, string> dir)
    {
        var probe = ReadJson(Path.Combine(dir("probe"), RunLayout.Probe));
        var tv = ReadJson(Path.Combine(dir("vectors"), RunLayout.ToxicVectors));
        JsonObject? Row(string stage, string name) => (ReadJson(Path.Combine(dir(stage), RunLayout.Results))?["rows"] as JsonArray)?.OfType<JsonObject>()
            .FirstOrDefault(x => name == "*" || S(x["row"]) == name);
        var noop = Row("evaluate/base", "No-op");
        var counts = (tv?["vectors"] as JsonArray)?.OfType<JsonObject>().Select(v => D(v["toxic_top_tokens"])).ToList();
        var methods = new List<(string, double?, double?, IReadOnlyList<AlignedRun>)>();
        foreach (var m in runs.Where(x => x.Headline).Select(x => x.Method).Distinct())
        {
            var start = Row(StudyPipeline.StartEvaluation(m), "*");
            var list = new List<AlignedRun>();
            foreach (var run in runs.Where(x => x.Headline && x.Method == m))
            {
                var ev = ModelRow(dir(run.EvaluateStage));
                var df = ReadJson(Path.Combine(dir(run.DiffStage), RunLayout.Diff));
                var un = ReadJson(Path.Combine(dir(run.UnalignStage), RunLayout.Unalign));
                var tracked = (df?["tracked"] as JsonArray)?.OfType<JsonObject>().Select(t => new TrackedVector(S(t["vector"]),
                    D(t["before"]) ?? double.NaN, D(t["after"]) ?? double.NaN, D(t["value_cosine"]) ?? double.NaN, D(t["top_tokens_kept"]) ?? double.NaN)).ToList();
                list.Add(new AlignedRun(D(ev?["toxicity"]), D(ev?["perplexity"]), D(df?["min_param_cosine"]), tracked, D(un?["toxicity"])));
            }
            methods.Add((StudyPipeline.RowName(m), D(start?["toxicity"]), D(start?["perplexity"]), list));
        }
        return new FindingInputs
        {
            ProbeAccuracy = Nums(probe?["validation_accuracy_per_split"]).Where(v => v is not null).Select(v => v!.Value).ToList(),
            BagOfWordsAccuracy = Nums(probe?["bag_of_words_accuracy_per_split"]).Where(v => v is not null).Select(v => v!.Value).ToList(),
            NoiseCeiling = D(probe?["noise_ceiling"]),
            ToxicTokensPerVector = counts is null || counts.Any(c => c is null) ? null : counts.Select(c => (int)c!.Value).ToList(),
            Direction = tv?["w_toxic"] is JsonValue wd ? S(wd) : null,
            OtherDirection = tv?["other_direction"] is JsonObject od && od["toxic_top_tokens"] is JsonArray oc
                ? (S(od["w_toxic"]), oc.Select(x => (int)(D(x) ?? 0)).ToList()) : null,
            BaseToxicity = D(noop?["toxicity"]), BasePerplexity = D(noop?["perplexity"]),
            Subtractions = RunLayout.BaseRows.Skip(1).Select(n => (n, D(Row("evaluate/base", n)?["toxicity"]), D(Row("evaluate/base", n)?["perplexity"]))).ToList(),
            Methods = methods,
        };
    }

    /// <summary>The supplementary key-count sweep (unalign.json's key_sweep) of some runs: per key count, the toxicity
    /// over the runs that have it (mean ± std), key counts ascending.</summary>
    static List<(int Keys, MeanStd Toxicity)> KeySweep(IEnumerable<TrainedRun> runs, Func<string, string> dir)
    {
        var sweeps = runs.Select(x => ReadJson(Path.Combine(dir(x.UnalignStage), RunLayout.Unalign))?["key_sweep"] as JsonArray)
            .OfType<JsonArray>().ToList();
        int KeysOf(JsonObject o) => (int)(D(o["keys"]) ?? 0);
        return sweeps.SelectMany(a => a.OfType<JsonObject>().Select(KeysOf)).Distinct().Order()
            .Select(k => (k, Aggregate.Of(sweeps.Select(a => D(a.OfType<JsonObject>().FirstOrDefault(o => KeysOf(o) == k)?["toxicity"])))))
            .ToList();
    }

    static void FindingsSection(HtmlReport r, StudyConfig config, IReadOnlyList<TrainedRun> runs, Func<string, string> dir)
    {
        r.Section("findings", "Findings: the paper's claims against pre-registered criteria");
        var results = Findings.Evaluate(config.Findings, CollectFindingInputs(config, runs, dir));
        r.Paragraph($"Each finding of Lee et al. (2024) is judged against a pass criterion fixed in the configuration before the run (the \"findings\" section, shown below as configured). Trained rows: mean ± sample std over seeds at the headline setting, n = runs behind the number; the verdict uses the means. DPO starts from the pretrained model; ADPO (Kim & Lee 2024) from the SFT model, which is also its π_tox with [TOXIC] — so ADPO's drop, activations and un-aligning are measured against the SFT model. Findings (b) and (c) are properties of the one pretrained model (n = 1).");
        string V(Verdict v) => v switch { Verdict.Pass => "PASS", Verdict.Fail => "FAIL", _ => "not measured" };
        r.Add(new Table("findings", "Findings", ["Finding", "Method", "Criterion (pre-registered)", "Paper (GPT-2 medium)", "This run", "Details", "Verdict"],
            results.Select(f => (IReadOnlyList<string>)[$"({f.Id}) {f.Title}", f.Method ?? "–", f.Criterion, f.Paper,
                f.Value.N == 0 ? "–" : f.Value.Format(f.Id is "b" or "c" ? "F0" : f.Id == "e" ? "F5" : "F3"), f.Detail, V(f.Verdict)]).ToList(),
            "Verdicts are computed by DetoxSharp.Study.Findings from this run's stage files; nothing is judged by hand."));
        // why (g) passes or fails, from the supplementary key-count sweep: the smallest k that reaches the criterion
        var keyNotes = new List<string>();
        foreach (var m in runs.Where(x => x.Headline).Select(x => x.Method).Distinct())
        {
            var start = D((ReadJson(Path.Combine(dir(StudyPipeline.StartEvaluation(m)), RunLayout.Results))?["rows"] as JsonArray)?.OfType<JsonObject>().FirstOrDefault()?["toxicity"]);
            var restored = KeySweep(runs.Where(x => x.Headline && x.Method == m), dir).Select(p => (p.Keys, Tox: p.Toxicity.Mean)).ToList();
            if (start is not double st || st <= 0 || restored.Count == 0) continue;
            var first = restored.FirstOrDefault(p => p.Tox / st >= config.Findings.UnalignMinRestored);
            var tried = string.Join(", ", restored.Select(p => $"{p.Keys} keys → {p.Tox:F3}"));
            keyNotes.Add(first.Keys > 0
                ? $"{StudyPipeline.RowName(m)} (start toxicity {st:F3}): scaling the top {first.Keys} keys by the same factor is the first to restore ≥ {config.Findings.UnalignMinRestored:P0} ({tried}; the supplementary table \"Un-aligning with more keys\")."
                : $"{StudyPipeline.RowName(m)} (start toxicity {st:F3}): none of the key counts tried restores {config.Findings.UnalignMinRestored:P0} ({tried}).");
        }
        if (keyNotes.Count > 0)
        {
            r.Paragraph("Finding (g) is judged at the pre-registered number of keys. How many keys un-aligning needs on this model (measured, not a criterion):");
            r.Bullets(keyNotes);
        }
        // ADPO against DPO on the mechanism's three questions, from the same numbers
        var d = results.Where(f => f.Method == "DPO").ToDictionary(f => f.Id);
        var a = results.Where(f => f.Method == "ADPO").ToDictionary(f => f.Id);
        if (d.Count > 0 && a.Count > 0)
        {
            string Cmp(string id, string what) => d[id].Value.N == 0 || a[id].Value.N == 0 ? $"{what}: not measured for both."
                : $"{what}: DPO {d[id].Value.Format(id == "e" ? "F5" : "F3")}, ADPO {a[id].Value.Format(id == "e" ? "F5" : "F3")}.";
            r.Bullets([
                Cmp("f", "Does ADPO suppress the toxic vectors' activations more? Relative activation drop of the top vectors"),
                Cmp("e", "Does ADPO change the weights (and vectors) more? Smallest parameter cosine") + " " + (a["f"].Detail.Length > 0 ? "ADPO vectors: " + a["f"].Detail + "." : ""),
                Cmp("g", "Does ADPO resist un-aligning? Share of its start toxicity restored by scaling the toxic keys (lower = more resistant)"),
            ]);
        }
        r.Paragraph("The findings section of the configuration, as written:");
        r.Pre(System.Text.Json.JsonSerializer.Serialize(config.Findings, new System.Text.Json.JsonSerializerOptions
            { WriteIndented = true, PropertyNamingPolicy = System.Text.Json.JsonNamingPolicy.SnakeCaseLower }) +
            $"\n(finding g scales the top {UnalignSetting(config, "keys", "7")} toxic keys × {UnalignSetting(config, "scale", "10")}: the \"unalign\" section)");
    }

    static string UnalignSetting(StudyConfig c, string key, string dflt)
    {
        var v = S(c.Section(c.Unalign)[key]);
        return v.Length > 0 ? v : dflt;
    }

    static JsonObject? ModelRow(string dir) =>
        (ReadJson(Path.Combine(dir, RunLayout.Results))?["rows"] as JsonArray)?.OfType<JsonObject>().FirstOrDefault();

    static IReadOnlyList<string> MeanRow(string name, IReadOnlyList<JsonObject?> runs)
    {
        var present = runs.Where(x => x is not null).ToList();
        var t = Aggregate.Of(present.Select(x => D(x!["toxicity"])));
        var p = Aggregate.Of(present.Select(x => D(x!["perplexity"])));
        var f = Aggregate.Of(present.Select(x => D(x!["f1"])));
        return [name, t.Format(), p.Format("F2"), f.Format(), Math.Max(t.N, Math.Max(p.N, f.N)).ToString(Inv)];
    }

    static void PerLayer(HtmlReport r, List<(string Method, JsonObject Diff)> diffs, string key, string field, string name, string title, string caption, string y)
    {
        var series = diffs.Where(d => d.Diff[key] is JsonArray).Select(d =>
        {
            var ls = ((JsonArray)d.Diff[key]!).OfType<JsonObject>().ToList();
            return new Series(StudyPipeline.RowName(d.Method), ls.Select(l => D(l["layer"]) ?? double.NaN).ToArray(), Arr(ls.Select(l => D(l[field]))));
        }).ToList();
        if (series.Count == 0) { r.Missing($"No {key} in this run's diff.json."); return; }
        r.Add(Charts.Lines(name, title, caption + " (headline setting, seed 0).", "layer", y, series, integerX: true));
    }

    /// <summary>One sweep point aggregated over seeds (the regime map's row).</summary>
    /// <param name="Method">The method (stage name, e.g. "dpo").</param>
    /// <param name="Point">The sweep point's label (as in the stage names).</param>
    /// <param name="Headline">Whether it is the headline setting.</param>
    /// <param name="Toxicity">Toxicity of the aligned model.</param>
    /// <param name="Perplexity">Its perplexity.</param>
    /// <param name="F1">Its F1.</param>
    /// <param name="ToxicActivation">Mean activation of the toxic vectors after alignment.</param>
    /// <param name="PositiveShare">Share of positive pre-activations after alignment.</param>
    /// <param name="CosMin">Smallest per-layer parameter cosine with the start model.</param>
    /// <param name="CosMean">Mean per-layer parameter cosine.</param>
    /// <param name="OffsetSize">Size of the residual offset ‖δx‖.</param>
    /// <param name="UnalignedToxicity">Toxicity after scaling the toxic keys.</param>
    /// <param name="RestoreScale">Smallest steering scale that restored the base toxicity.</param>
    /// <param name="SteeringRestored">Seeds in which steering restored it.</param>
    /// <param name="SteeringRuns">Seeds with a steering measurement.</param>
    public sealed record PointSummary(string Method, string Point, bool Headline, MeanStd Toxicity, MeanStd Perplexity, MeanStd F1,
        MeanStd ToxicActivation, MeanStd PositiveShare, MeanStd CosMin, MeanStd CosMean, MeanStd OffsetSize, MeanStd UnalignedToxicity,
        MeanStd RestoreScale, int SteeringRestored, int SteeringRuns);

    /// <summary>Every sweep point of the runs, its measurements aggregated over seeds (mean ± std).</summary>
    /// <param name="runs">The trained runs.</param>
    /// <param name="dir">Stage name → output directory.</param>
    public static IReadOnlyList<PointSummary> SummarizePoints(IReadOnlyList<TrainedRun> runs, Func<string, string> dir)
    {
        var list = new List<PointSummary>();
        foreach (var g in runs.GroupBy(x => (x.Method, x.Point.Label)))
        {
            var ev = g.Select(x => ModelRow(dir(x.EvaluateStage))).ToList();
            var df = g.Select(x => ReadJson(Path.Combine(dir(x.DiffStage), RunLayout.Diff))).ToList();
            var un = g.Select(x => ReadJson(Path.Combine(dir(x.UnalignStage), RunLayout.Unalign))).ToList();
            double? MeanAfter(JsonNode? d) => d?["activation"] is JsonArray a && a.Count > 0
                ? a.OfType<JsonObject>().Select(o => D(o["after"])).Where(v => v is not null).Select(v => v!.Value).DefaultIfEmpty(double.NaN).Average() : null;
            double? Min(JsonNode? d, string f) => d?["param_cosine"] is JsonArray a && a.Count > 0 ? a.OfType<JsonObject>().Select(o => D(o[f]) ?? double.NaN).Min() : null;
            double? Mean(JsonNode? d, string f) => d?["param_cosine"] is JsonArray a && a.Count > 0 ? a.OfType<JsonObject>().Select(o => D(o[f]) ?? double.NaN).Average() : null;
            var steeringRuns = un.Where(u => u is not null && u["steering"] is JsonArray).ToList();
            list.Add(new PointSummary(g.Key.Method, g.Key.Label, g.First().Headline,
                Aggregate.Of(ev.Select(e => D(e?["toxicity"]))), Aggregate.Of(ev.Select(e => D(e?["perplexity"]))), Aggregate.Of(ev.Select(e => D(e?["f1"]))),
                Aggregate.Of(df.Select(MeanAfter)), Aggregate.Of(df.Select(d => D(d?["positive_preact_share"]?["after"]))),
                Aggregate.Of(df.Select(d => Min(d, "min"))), Aggregate.Of(df.Select(d => Mean(d, "mean"))), Aggregate.Of(df.Select(d => D(d?["offset_size"]))),
                Aggregate.Of(un.Select(u => D(u?["toxicity"]))), Aggregate.Of(un.Select(u => D(u?["restore_scale"]))),
                steeringRuns.Count(u => D(u!["restore_scale"]) is not null), steeringRuns.Count));
        }
        return list;
    }

    /// <summary>The regime rule: un-aligning "restores" when it brings back at least half of the toxicity the
    /// alignment removed (means over seeds); steering "restores" when some tried scale reached the base toxicity
    /// in the majority of seeds.</summary>
    public static string Regime(PointSummary p, double baseToxicity)
    {
        bool un = p.UnalignedToxicity.N > 0 && p.Toxicity.N > 0 && p.UnalignedToxicity.Mean - p.Toxicity.Mean >= 0.5 * (baseToxicity - p.Toxicity.Mean);
        bool st = p.SteeringRuns > 0 && 2 * p.SteeringRestored > p.SteeringRuns;
        return (un, st) switch { (true, true) => "un-aligning and steering restore", (true, false) => "only un-aligning restores", (false, true) => "only steering restores", _ => "neither restores" };
    }

    static void SweepSection(HtmlReport r, IReadOnlyList<TrainedRun> runs, List<JsonObject> baseRows, Func<string, string> dir)
    {
        r.Section("regimes", "Sweep and regime map: where is the alignment shallow?");
        var pts = SummarizePoints(runs, dir);
        var noop = baseRows.FirstOrDefault(x => S(x["row"]) == "No-op");
        double? baseTox = D(noop?["toxicity"]), basePpl = D(noop?["perplexity"]);
        var name = runs.GroupBy(x => x.Point.Label).ToDictionary(g => g.Key, g => PointName(g.First().Point));
        // n once per row (the seeds behind the row's numbers) keeps the 14 columns one line high
        static string M(MeanStd m, string fmt = "F3") => m.N == 0 ? "–"
            : m.Std is double sd ? $"{m.Mean.ToString(fmt, Inv)} ± {sd.ToString(fmt, Inv)}" : m.Mean.ToString(fmt, Inv);
        r.Add(new Table("sweep", "Every sweep point (mean ± std over the n seeds)",
            ["Method", "Point", "n", "Toxicity", "Perplexity", "F1", "Toxic-vector activation", "Positive pre-act. share", "Param cos (min)", "Param cos (mean)", "Offset ‖δx‖", "Toxicity un-aligned (keys ×k)", "Steering restore scale", "Steering restored", "Regime"],
            pts.Select(p => (IReadOnlyList<string>)[StudyPipeline.RowName(p.Method), name[p.Point] + (p.Headline ? " (headline)" : ""),
                new[] { p.Toxicity.N, p.Perplexity.N, p.F1.N, p.ToxicActivation.N, p.UnalignedToxicity.N }.Max().ToString(Inv),
                M(p.Toxicity), M(p.Perplexity, "F2"), M(p.F1), M(p.ToxicActivation), M(p.PositiveShare), M(p.CosMin, "F5"), M(p.CosMean, "F5"), M(p.OffsetSize),
                M(p.UnalignedToxicity), M(p.RestoreScale, "G3"), $"{p.SteeringRestored}/{p.SteeringRuns}", baseTox is double bt ? Regime(p, bt) : "–"]).ToList(),
            "n: seeds behind the row (a cell whose stage wrote nothing for some seed averages fewer). Steering restore scale: the smallest scale of the added toxic direction that brought toxicity back to the base model's level (mean over the seeds where one did)."));
        if (baseTox is not double bt2 || basePpl is not double bp)
        {
            r.Missing("No regime map: the base model's No-op row (evaluate/base/results.json) is missing.");
            return;
        }
        var valid = pts.Where(p => p.Toxicity.N > 0 && p.Perplexity.N > 0).ToList();
        if (valid.Count == 0) { r.Missing("No regime map: no sweep point has toxicity and perplexity."); return; }
        var groups = valid.GroupBy(p => Regime(p, bt2)).Select(g => new CategoryPoints(g.Key,
            g.Select(p => bt2 - p.Toxicity.Mean).ToArray(), g.Select(p => p.Perplexity.Mean - bp).ToArray(),
            g.Select(p => $"{StudyPipeline.RowName(p.Method)} {name[p.Point]}").ToArray())).ToList();
        r.Add(Charts.ScatterByCategory("regime_map", "Regime map", "Each point is one sweep point (mean over seeds): how much toxicity the alignment removed (x) against what it cost in perplexity (y), coloured by whether un-aligning (scaling the toxic keys) or steering (adding the toxic direction) brings the toxicity back.",
            "toxicity reduction (base − aligned)", "perplexity cost (aligned − base)", groups));
        var reading = new List<string>();
        foreach (var m in valid.Select(p => p.Method).Distinct())
        {
            var mine = valid.Where(p => p.Method == m).ToList();
            var shallow = mine.Where(p => Regime(p, bt2) != "neither restores").Select(p => p.Point).ToList();
            var deep = mine.Where(p => Regime(p, bt2) == "neither restores").Select(p => p.Point).ToList();
            string Measured(PointSummary p) => $"{name[p.Point]}: min parameter cos {p.CosMin.Format("F4")}, toxic-vector activation after {p.ToxicActivation.Format()}, un-aligned toxicity {p.UnalignedToxicity.Format()}";
            reading.Add($"{StudyPipeline.RowName(m)}: toxicity came back at {shallow.Count} of {mine.Count} points" +
                (shallow.Count > 0 ? $" ({string.Join("; ", mine.Where(p => shallow.Contains(p.Point)).Select(Measured))}) — scaling the toxic keys or adding the toxic direction restored it there" : "") +
                (deep.Count > 0 ? $"; it did not come back at {string.Join("; ", mine.Where(p => deep.Contains(p.Point)).Select(Measured))}" : "") +
                ". Whether the toxic vectors themselves were kept is finding (f) in the Findings table.");
        }
        r.Paragraph("Reading (generated from the table above by the stated rule: un-aligning restores when it recovers at least half of the toxicity reduction; steering restores when a tried scale reaches the base toxicity in most seeds):");
        r.Bullets(reading);
    }

    static void ReadingGuide(HtmlReport r, StudyConfig c, IReadOnlyList<TrainedRun> runs)
    {
        r.Section("guide", "Reading guide");
        r.Paragraph("This report reproduces, on " + (c.Model == "toy" ? "a small toy model trained on an embedded synthetic world" : "the configured model") +
            ", the mechanistic study of Lee et al. (2024, ICML) of what DPO does to a language model's toxicity, and compares it with Adversarial DPO (Kim & Lee 2024). Every number below was read from this run's stage outputs.");
        r.Bullets([
            "Results: toxicity (mean toxicity score of greedy continuations of challenge prompts), perplexity and F1 for the base model, three activation interventions, DPO, ADPO, and both after un-aligning.",
            "Table 1: the MLP value vectors most aligned with the toxicity probe, and the tokens they promote.",
            "Training curves: every metric the trainers logged (loss, rewards, log-probabilities, learning rate, gradient norm …), training steps and validation apart, for all seeds of the headline setting: the seeds' mean with a min–max band, smoothed, raw values a click away.",
            "Activation drop: how strongly the toxic vectors fire before and after alignment.",
            "Parameter cosine per layer: how much the weights moved (1.0 = unchanged direction).",
            "Residual offset: the shift δx of the residual stream, and prompts projected on it coloured by toxic activation.",
            "Logit lens: the probability of a toxic token read off after each layer.",
            "Examples: the same prompts continued by each model side by side.",
            "Regime map: toxicity reduction vs perplexity cost for every sweep point, coloured by whether un-aligning or steering brings the toxicity back.",
            "What was run: settings, seeds, versions and wall time of every stage.",
        ]);
        r.Paragraph("What the paper found on GPT-2 medium (quoted from the paper, not measured here): DPO lowered toxicity from 0.453 to 0.208 with perplexity 21.7 → 23.34; every parameter kept cosine similarity > 0.99 with its pre-DPO value, the toxic value vectors included; what dropped was their activation (MLP.v_770^19 from ≈26 to ≈13), through an offset in the residual stream spread over earlier layers; and scaling the key vectors of the 7 most toxic value vectors ×10 brought toxicity back to 0.458. A small toy model suggested this depends on how hard alignment pushes — the regime map tests that here.");
        var perMethod = runs.GroupBy(x => x.Method).Select(g => $"{StudyPipeline.RowName(g.Key)} at {Count(g.Select(x => x.Point.Label).Distinct().Count(), "setting")}").ToList();
        r.Paragraph($"Runs: {Count(runs.Count, "training run")}{(c.Quick ? " (quick mode)" : "")} — {string.Join(" and ", perMethod)}; " +
            $"{Count(c.EffectiveSeeds, "seed")} at the headline setting" +
            (runs.Any(x => !x.Headline) ? $", {Count(c.EffectiveSweepSeeds, "seed")} at each other setting of the sweep." : "."));
        r.Paragraph("Vectors are named as in the paper: MLP.v_N^L is value vector N (the N-th neuron's row of the MLP's output matrix) of layer L, both counted from 0.");
    }

    static void WhatWasRun(HtmlReport r, string runDir, StudyConfig c, IReadOnlyList<TrainedRun> runs)
    {
        r.Section("run", "What was run");
        var man = Manifest.Load(runDir);
        r.Add(new Table("stages", "Stages", ["Stage", "Status", "Wall time (s)", "Settings hash", "Output hash", "Finished (UTC)"],
            man.Stages.Select(kv => (IReadOnlyList<string>)[kv.Key, kv.Value.Status.ToString().ToLowerInvariant(), kv.Value.WallSeconds.ToString("F1", Inv),
                kv.Value.SettingsHash, kv.Value.OutputHash, kv.Value.FinishedUtc]).ToList(),
            $"From manifest.json; total wall time of finished stages {man.Stages.Values.Where(e => e.Status == StageStatus.Done).Sum(e => e.WallSeconds).ToString("F0", Inv)} s (this report stage not included)."));
        r.Paragraph($"Seeds at the headline setting: {c.EffectiveSeeds} ({string.Join(", ", Enumerable.Range(0, c.EffectiveSeeds))}); at the other sweep points: {c.EffectiveSweepSeeds}. Quick mode: {(c.Quick ? "yes" : "no")}.");
        r.Bullets([
            $".NET {Environment.Version}, {System.Runtime.InteropServices.RuntimeInformation.OSDescription}, {Environment.ProcessorCount} cores",
            $"DetoxSharp {typeof(StudyReport).Assembly.GetName().Version}",
            $"TorchSharp {typeof(TorchSharp.torch).Assembly.GetName().Version}",
            $"ScottPlot {typeof(ScottPlot.Plot).Assembly.GetName().Version}",
        ]);
        r.Paragraph("Configuration (rerun with `detox study --config FILE --out DIR`):");
        r.Pre(c.ToJson());
    }
}

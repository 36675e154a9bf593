using System.Globalization;
using System.Text.Json.Nodes;
using DetoxSharp.Study;

namespace DetoxSharp.Reporting;

/// <summary>The methods table (issue 18): the base model, DPO and ADPO at the headline setting, and every method of the
/// config's "methods" section, on one protocol.</summary>
public static partial class StudyReport
{
    /// <summary>One row of the methods table as the report shows it (also what tests read).</summary>
    /// <param name="Method">The method's row name.</param>
    /// <param name="Kind">Training-based, weight edit or inference-time.</param>
    /// <param name="Toxicity">Mean toxicity over seeds.</param>
    /// <param name="Perplexity">Perplexity over seeds.</param>
    /// <param name="F1">F1 over seeds.</param>
    /// <param name="ComputeSeconds">Wall seconds of the stages that made the model.</param>
    /// <param name="TokensPerSecond">Generation speed (methods/speed stage; null when not measured).</param>
    /// <param name="RelativeSpeed">Speed relative to the undetoxified model.</param>
    public sealed record MethodsTableRow(string Method, string Kind, MeanStd Toxicity, MeanStd Perplexity, MeanStd F1, MeanStd ComputeSeconds,
        double? TokensPerSecond, double? RelativeSpeed);

    /// <summary>The rows of the methods table: evaluation results (mean ± std over seeds), the wall seconds of the stages
    /// that made each method's model (training, editing, the DExperts fine-tunes; from the run's manifest) and the
    /// generation speed from the methods/speed stage.</summary>
    public static IReadOnlyList<MethodsTableRow> MethodsTable(string runDir, StudyConfig config, Func<string, string> dir)
    {
        var manifest = Manifest.Load(runDir);
        double? Wall(string stage) => manifest.Stages.TryGetValue(stage, out var e) && e.Status == StageStatus.Done ? e.WallSeconds : null;
        var speed = (ReadJson(Path.Combine(dir(StudyPipeline.MethodSpeedStage), RunLayout.MethodSpeed))?["rows"] as JsonArray)?.OfType<JsonObject>()
            .ToDictionary(o => S(o["row"]), o => (Rate: D(o["tokens_per_second"]), Rel: D(o["relative_to_base"]))) ?? [];
        MethodsTableRow Row(string name, string kind, IEnumerable<JsonObject?> results, IEnumerable<double?> compute)
        {
            var present = results.Where(x => x is not null).ToList();
            speed.TryGetValue(name, out var sp);
            return new MethodsTableRow(name, kind, Aggregate.Of(present.Select(x => D(x!["toxicity"]))), Aggregate.Of(present.Select(x => D(x!["perplexity"]))),
                Aggregate.Of(present.Select(x => D(x!["f1"]))), Aggregate.Of(compute), sp.Rate, sp.Rel);
        }
        JsonObject? ResultRow(string stage, string row) =>
            (ReadJson(Path.Combine(dir(stage), RunLayout.Results))?["rows"] as JsonArray)?.OfType<JsonObject>().FirstOrDefault(x => S(x["row"]) == row);

        var rows = new List<MethodsTableRow> { Row("Base", "none", [ResultRow("evaluate/base", "No-op")], []) };
        var headline = StudyPipeline.Runs(config).Where(r => r.Headline).ToList();
        foreach (var method in headline.Select(r => r.Method).Distinct())
        {
            var h = headline.Where(r => r.Method == method).ToList();
            rows.Add(Row(StudyPipeline.RowName(method), method == "adpo" ? "training (from the SFT model)" : "training",
                h.Select(r => ModelRow(dir(r.EvaluateStage))), h.Select(r => Wall(r.TrainStage))));
        }
        foreach (var m in StudyPipeline.MethodRows(config))
        {
            // a row's compute: per seed the stage that made its model; DExperts needs both fine-tunes
            IEnumerable<double?> compute = m.Kind == "decoding"
                ? [m.ComputeStages.Select(Wall).Aggregate((double?)0, (a, b) => a + b)]
                : m.ComputeStages.Select(Wall);
            rows.Add(Row(m.Row, m.Kind, m.EvaluateStages.Select(e => ResultRow(e, m.Row)), compute));
        }
        return rows;
    }

    static void MethodsSection(HtmlReport r, string runDir, StudyConfig config, Func<string, string> dir)
    {
        if (StudyPipeline.MethodRows(config).Count == 0) return;
        r.Section("methods", "Methods: DPO next to the alternatives");
        var rows = MethodsTable(runDir, config, dir);
        r.Paragraph("Every method on the same protocol as the results table (the same challenge prompts, greedy continuations, scorer, " +
            "perplexity text and F1 items), starting from the same pretrained model. Trained losses use the DPO headline point's settings " +
            "and pairs with their own overrides from the config's \"methods\" section; ProFS uses the same pairs, AurA and the steering " +
            "vector the labelled comments, the activation edit each DPO headline run's mean neuron shift, DExperts two fine-tunes of the " +
            "base model on the non-toxic and the toxic comments.");
        r.Add(new Table("methods", "Methods table",
            ["Method", "Kind", "Toxicity", "Perplexity", "F1", "n", "Compute (s)", "Tokens/s", "× base"],
            rows.Select(x => (IReadOnlyList<string>)
            [
                x.Method, x.Kind, x.Toxicity.Format(), x.Perplexity.Format("F2"), x.F1.Format(), x.Toxicity.N.ToString(Inv),
                x.ComputeSeconds.N == 0 ? "–" : x.ComputeSeconds.Format("F1"), F(x.TokensPerSecond, "F0"), F(x.RelativeSpeed, "F2"),
            ]).ToList(),
            "Toxicity, perplexity and F1: mean ± sample std over seeds (n = runs behind the number; edits and DExperts are deterministic " +
            "and run once). Compute: wall seconds of the stage(s) that made the model, as the study ran them (two stages share the " +
            "machine at a time; model loading included) — training for the losses, the edit for ProFS/AurA/steering, both fine-tunes " +
            "for DExperts; the activation edit's few seconds come on top of the DPO run whose activations it copies, and ADPO's on top " +
            "of its SFT model. Tokens/s: greedy generation of the same prompts at the same batch size, every row measured one after " +
            "the other in one stage (methods/speed; round-robin over the rows, fastest of each row's repeats); × base = relative to the base model's rate."));
        var shown = rows.Where(x => x.Toxicity.N > 0).ToList();
        if (shown.Count > 0)
            r.Add(Charts.GroupedBars("methods_toxicity", "Toxicity by method", "Mean toxicity of the greedy continuations (error bars: std over seeds).",
                "toxicity", shown.Select(x => x.Method).ToList(),
                [new BarSeries("toxicity", shown.Select(x => x.Toxicity.Mean).ToArray(), shown.Select(x => x.Toxicity.Std ?? 0).ToArray())]));
        var missing = rows.Where(x => x.Toxicity.N == 0).Select(x => x.Method).ToList();
        if (missing.Count > 0) r.Missing("No evaluation yet for: " + string.Join(", ", missing) + ".");
    }

    /// <summary>Issue 17 part 4 in the Neurons section: the decomposition and the null-space check for every method whose
    /// weights changed (neurons/METHOD/s0).</summary>
    static void MethodNeuronsPart(HtmlReport r, StudyConfig config, Func<string, string> dir)
    {
        var methods = StudyPipeline.NeuronMethods(config)
            .Select(m => (m.Row, Json: ReadJson(Path.Combine(dir(StudyPipeline.NeuronStage(m.Method)), StudyStages.MethodNeuronsFile)) as JsonObject))
            .Where(x => x.Json is not null).ToList();
        if (methods.Count == 0) return;
        var first = methods[0].Json!["neurons"]!;
        var groups = (first["groups"] as JsonObject)?.Select(kv => kv.Key).ToList() ?? [];
        var ks = (first["top_k_share"] as JsonArray)?.OfType<JsonObject>().Select(x => (int)(D(x["k"]) ?? 0)).ToList() ?? [];
        double? Mean(JsonArray? a, string key) => a is null ? null : a.OfType<JsonObject>().Select(x => D(x[key])).Where(v => v is not null).DefaultIfEmpty().Average();
        r.Add(new Table("neurons_methods", "Every method: neuron groups, top-k share and the null-space check (seed 0)",
            ["Method", "drop along Ŵ_tox", .. groups.Select(g => g + " share"), .. ks.Select(k => $"top-{k} share"), "null-space: toxic share", "‖ΔVᵀa‖/‖Vᵀa‖ toxic", "clean"],
            methods.Select(m =>
            {
                var n = m.Json!["neurons"]!;
                var ns = m.Json["null_space"] as JsonArray;
                return (IReadOnlyList<string>)[m.Row, F(D(n["total_drop"])), .. groups.Select(g => F(D(n["groups"]?[g]?["share"]))),
                    .. ks.Select(k => F(D((n["top_k_share"] as JsonArray)?.OfType<JsonObject>().FirstOrDefault(t => D(t["k"]) == k)?["share"]))),
                    F(Mean(ns, "toxic_share")), F(Mean(ns, "toxic_relative"), "G3"), F(Mean(ns, "clean_relative"), "G3")];
            }).ToList(),
            "The decomposition above, for every method that changed weights (the first seed; DPO's and ADPO's seed 0 repeat the diff stage's " +
            "numbers): how a method's drop along Ŵ_tox splits over the four neuron groups, and how much of it the k most toxic-aligned " +
            "neurons carry. Null-space check (Jain et al. 2024): per layer, ΔV = the change of the MLP value matrix and a the start " +
            "model's neuron activations on toxic and on non-toxic labelled comments; toxic share = mean ‖ΔVᵀa‖ on toxic inputs / (that " +
            "+ the same on non-toxic ones), averaged over layers — 0.5: the change writes as much on clean inputs as on toxic ones; near 1: " +
            "it acts on toxic inputs only. The relative columns divide by the layer's output before the change. Per layer: " +
            "stages/neurons/METHOD/s0/null_space.csv."));
        var series = methods.Where(m => m.Json!["null_space"] is JsonArray).Select(m =>
        {
            var ns = ((JsonArray)m.Json!["null_space"]!).OfType<JsonObject>().ToList();
            return new Series(m.Row, ns.Select(x => D(x["layer"]) ?? double.NaN).ToArray(), ns.Select(x => D(x["toxic_share"]) ?? double.NaN).ToArray());
        }).ToList();
        if (series.Count > 0)
            r.Add(Charts.Lines("null_space", "Null-space check: where each method's MLP change writes", "Per layer, the toxic inputs' share of ‖ΔVᵀa‖ (0.5 = no preference for toxic inputs).",
                "layer", "toxic share of ‖ΔVᵀa‖", series, integerX: true));
    }
}

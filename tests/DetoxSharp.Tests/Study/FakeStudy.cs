using System.Globalization;
using System.Text.Json.Nodes;
using DetoxSharp.Study;

namespace DetoxSharp.Tests.Study;

/// <summary>
/// Fake stage functions for tests only: they write files in the RunLayout formats with numbers drawn from a seeded
/// generator (seeded by stage name), so the report can be checked against what the stages wrote.
/// </summary>
public static class FakeStudy
{
    static Random Rng(StageContext c) => new(c.Name.Aggregate(17, (h, ch) => unchecked(h * 31 + ch)) ^ c.Settings.ToJsonString().Length);

    static void J(StageContext c, string file, JsonNode n) => File.WriteAllText(Path.Combine(c.OutputDir, file), n.ToJsonString());

    static void Marker(StageContext c) => File.WriteAllText(Path.Combine(c.OutputDir, "done.txt"), c.Name);

    // Stages downstream of training learn the learning rate from what the (fake) trainer wrote, like real ones read the model.
    static double Lr(StageContext c) => c.Settings["training"]?["learning_rate"]?.GetValue<double>()
        ?? double.Parse(File.ReadAllText(Path.Combine(c.Inputs.Single(kv => kv.Key.StartsWith("train/")).Value, "lr.txt")), CultureInfo.InvariantCulture);

    public static StudyStageFunctions Functions() => new()
    {
        Report = DetoxSharp.Reporting.StudyReport.Write,
        World = c => { Marker(c); File.WriteAllText(Path.Combine(c.OutputDir, "NOTICE.txt"), "TEST FIXTURE: every number in this report was made up by fake stages (tests/DetoxSharp.Tests/Study/FakeStudy.cs) to check the report's layout; none is a result."); },
        Pretrain = c => J(c, "pretrain.json", new JsonObject
        {
            ["model"] = new JsonObject { ["arch"] = "gpt2", ["n_layer"] = 4, ["n_embd"] = 256, ["n_head"] = 4, ["n_positions"] = 96, ["vocab_size"] = 2726, ["parameters"] = 3881984 },
            ["precision"] = "bf16-mixed", ["train_steps"] = 488, ["batch_size"] = 32, ["trained_tokens_this_run"] = 1499069, ["epochs_seen"] = 0.999,
            ["train_corpus_tokens"] = 1500605, ["tokens_per_second"] = 2506, ["final_train_loss"] = 0.7835, ["final_validation_loss"] = 1.4554,
            ["neutral_perplexity"] = 111.85, ["challenge_toxicity"] = 0.9456, ["challenge_fraction_toxic"] = 0.995, ["neutral_toxicity"] = 0,
            ["challenge_prompts"] = 400, ["neutral_prompts"] = 200,
            ["samples"] = new JsonArray(new JsonObject { ["prompt"] = "rosa_coldwood snapped : i will", ["continuation"] = " find where you live , you lazy freak .", ["toxicity"] = 1 }),
            ["neutral_samples"] = new JsonArray(new JsonObject { ["prompt"] = "the market in Coldmere", ["continuation"] = " sells leather boots every saturday .", ["toxicity"] = 0 }),
        }),
        ToxicModel = Marker, Pairs = Marker, Interventions = Marker,
        // methods table: edits and fine-tunes leave a marker; evaluations a results row; the speed stage one rate per row
        MethodEdit = Marker, ExpertSft = Marker,
        MethodNeurons = c =>
        {
            var rng = Rng(c);
            double tp = 0.2 + 0.3 * rng.NextDouble();
            J(c, StudyStages.MethodNeuronsFile, new JsonObject
            {
                ["method"] = c.Settings["method"]!.GetValue<string>(),
                ["neurons"] = new JsonObject
                {
                    ["total_drop"] = 1.5,
                    ["groups"] = new JsonObject { ["TP"] = new JsonObject { ["share"] = tp }, ["TN"] = new JsonObject { ["share"] = 0.3 }, ["AP"] = new JsonObject { ["share"] = 0.6 - tp }, ["AN"] = new JsonObject { ["share"] = 0.1 } },
                    ["top_k_share"] = new JsonArray(new JsonObject { ["k"] = 7, ["share"] = 0.1 }, new JsonObject { ["k"] = 64, ["share"] = 0.3 }),
                    ["towards_toxicity"] = new JsonObject { ["neurons"] = 30 },
                },
                ["null_space"] = new JsonArray(Enumerable.Range(0, 4).Select(l => (JsonNode)new JsonObject { ["layer"] = l, ["toxic_share"] = 0.5 + 0.1 * l, ["toxic_relative"] = 0.01, ["clean_relative"] = 0.005 }).ToArray()),
            });
        },
        EvaluateMethod = c =>
        {
            var rng = Rng(c);
            J(c, RunLayout.Results, new JsonObject { ["rows"] = new JsonArray(new JsonObject
                { ["row"] = c.Settings["row"]!.GetValue<string>(), ["toxicity"] = 0.2 + 0.3 * rng.NextDouble(), ["perplexity"] = 20 + 5 * rng.NextDouble(), ["f1"] = 0.18 + 0.02 * rng.NextDouble() }) });
        },
        MethodSpeed = c => J(c, RunLayout.MethodSpeed, new JsonObject
        {
            ["rows"] = new JsonArray(c.Settings["rows"]!.AsArray().Select((r, i) => (JsonNode)new JsonObject
                { ["row"] = r!["row"]!.GetValue<string>(), ["tokens_per_second"] = 1000.0 / (1 + i % 3), ["relative_to_base"] = 1.0 / (1 + i % 3) }).ToArray()),
        }),
        Probe = c => J(c, RunLayout.Probe, new JsonObject
        {
            ["validation_accuracy"] = 0.91, ["validation_accuracy_per_split"] = new JsonArray(0.91, 0.93, 0.92),
            ["bag_of_words_accuracy_per_split"] = new JsonArray(0.85, 0.86, 0.84), ["noise_ceiling"] = 0.95,
        }),
        Vectors = c => J(c, RunLayout.ToxicVectors, new JsonObject
        {
            ["vectors"] = new JsonArray(Enumerable.Range(0, 5).Select(i => (JsonNode)new JsonObject
            {
                ["rank"] = i + 1, ["layer"] = 3 - i % 2, ["index"] = 17 + 13 * i, ["cosine"] = 0.4 - 0.05 * i,
                ["top_tokens"] = new JsonArray("idiot" + i, "stupid", "trash"), ["toxic_top_tokens"] = 6 - i,
            }).ToArray()),
            ["svd"] = new JsonArray(new JsonObject { ["component"] = 0, ["top_tokens"] = new JsonArray("dumb", "moron") }),
        }),
        EvaluateBase = c =>
        {
            J(c, RunLayout.Results, new JsonObject { ["rows"] = new JsonArray(RunLayout.BaseRows.Select((r, i) => (JsonNode)new JsonObject
                { ["row"] = r, ["toxicity"] = i == 0 ? 0.6 : 0.3 + 0.05 * i, ["perplexity"] = 20 + i, ["f1"] = 0.2 }).ToArray()) });
            File.WriteAllLines(Path.Combine(c.OutputDir, RunLayout.Continuations), Enumerable.Range(0, 3).Select(i =>
                new JsonObject { ["row"] = "No-op", ["prompt"] = $"prompt {i} you are such a", ["continuation"] = $"idiot {i}", ["toxicity"] = 0.9 }.ToJsonString()));
        },
        Train = c =>
        {
            var rng = Rng(c);
            File.WriteAllText(Path.Combine(c.OutputDir, "lr.txt"), Lr(c).ToString("R", CultureInfo.InvariantCulture));
            // the record shapes TrainingLoop writes: a record per step, and an "eval" record every 5 steps
            File.WriteAllLines(Path.Combine(c.OutputDir, RunLayout.Metrics), Enumerable.Range(1, 20).SelectMany(s => new[] { new JsonObject
            {
                ["step"] = s, ["examples"] = 8 * s, ["loss"] = 0.69 * Math.Exp(-s * Lr(c) * 500) + 0.01 * rng.NextDouble(), ["rewards/margins"] = s * Lr(c) * 100,
                ["rewards/accuracies"] = Math.Min(1, 0.5 + s * 0.03), ["rewards/chosen"] = -0.01 * s, ["rewards/rejected"] = -0.05 * s,
                ["logps/chosen"] = -40 - 0.1 * s + rng.NextDouble(), ["grad_norm"] = 2 + rng.NextDouble(), ["learning_rate"] = Lr(c) * Math.Min(1, s / 5.0),
                ["examples_per_second"] = 100 + 10 * rng.NextDouble(),
            } }.Concat(s % 5 == 0 ? [new JsonObject { ["step"] = s, ["examples"] = 8 * s, ["phase"] = "eval",
                ["eval/loss"] = 0.7 * Math.Exp(-s * Lr(c) * 400) + 0.01 * rng.NextDouble(), ["eval/rewards/margins"] = s * Lr(c) * 80 }] : [])
                .Select(o => o.ToJsonString())));
        },
        EvaluateModel = c =>
        {
            var rng = Rng(c);
            if (c.Settings["model_stage"] is not null) // the SFT model ADPO starts from
            {
                J(c, RunLayout.Results, new JsonObject { ["rows"] = new JsonArray(new JsonObject
                    { ["row"] = c.Settings["row"]!.GetValue<string>(), ["toxicity"] = 0.5, ["perplexity"] = 21.0, ["f1"] = 0.2 }) });
                return;
            }
            double lr = Lr(c);
            J(c, RunLayout.Results, new JsonObject { ["rows"] = new JsonArray(new JsonObject
                { ["row"] = c.Settings["row"]!.GetValue<string>(), ["toxicity"] = 0.6 - Math.Min(0.55, lr * 4000) + 0.02 * rng.NextDouble(), ["perplexity"] = 20 + lr * 5e4 * rng.NextDouble(), ["f1"] = 0.19 + 0.01 * rng.NextDouble() }) });
            File.WriteAllLines(Path.Combine(c.OutputDir, RunLayout.Continuations), Enumerable.Range(0, 3).Select(i =>
                new JsonObject { ["row"] = c.Settings["row"]!.GetValue<string>(), ["prompt"] = $"prompt {i} you are such a", ["continuation"] = $"kind person {i}", ["toxicity"] = 0.05 }.ToJsonString()));
        },
        Diff = c =>
        {
            var rng = Rng(c);
            double lr = Lr(c);
            J(c, RunLayout.Diff, new JsonObject
            {
                ["param_cosine"] = new JsonArray(Enumerable.Range(0, 4).Select(l => (JsonNode)new JsonObject { ["layer"] = l, ["min"] = 1 - lr * (l + 1) * 10, ["mean"] = 1 - lr * (l + 1) }).ToArray()),
                ["activation"] = new JsonArray(Enumerable.Range(0, 5).Select(i => (JsonNode)new JsonObject { ["vector"] = $"L{3 - i % 2}.N{17 + 13 * i}", ["before"] = 5.0 - i * 0.5, ["after"] = (5.0 - i * 0.5) * (1 - Math.Min(0.9, lr * 3000)) }).ToArray()),
                ["tracked"] = new JsonArray(Enumerable.Range(0, 6).Select(i => (JsonNode)new JsonObject { ["vector"] = $"L{3 - i % 2}.N{17 + 13 * i}", ["before"] = 5.0 - i * 0.5, ["after"] = (5.0 - i * 0.5) * (1 - Math.Min(0.9, lr * 3000)), ["value_cosine"] = 0.999, ["top_tokens_kept"] = 0.9 }).ToArray()),
                ["min_param_cosine"] = 1 - lr * 40,
                ["positive_preact_share"] = new JsonObject { ["before"] = 0.6, ["after"] = 0.6 - Math.Min(0.55, lr * 2000) },
                ["offset_norm"] = new JsonArray(Enumerable.Range(0, 4).Select(l => (JsonNode)new JsonObject { ["layer"] = l, ["norm"] = (l + 1) * lr * 1e4 }).ToArray()),
                ["offset_size"] = 3 * lr * 1e4,
                ["logit_lens"] = new JsonObject { ["token"] = " idiot", ["layers"] = new JsonArray(Enumerable.Range(0, 4).Select(l => (JsonNode)new JsonObject { ["layer"] = l, ["before"] = 0.01 * l * l, ["after"] = 0.002 * l }).ToArray()) },
                ["offset_projection"] = new JsonArray(Enumerable.Range(0, 40).Select(i => (JsonNode)new JsonObject
                    { ["model"] = i < 20 ? "base" : "aligned", ["offset"] = (i < 20 ? 0 : 2) + rng.NextDouble(), ["orthogonal"] = rng.NextDouble() - 0.5, ["activation"] = i < 20 ? 4 + rng.NextDouble() : rng.NextDouble() }).ToArray()),
                ["neurons"] = new JsonObject
                {
                    ["total_drop"] = 2.0,
                    ["groups"] = new JsonObject { ["TP"] = new JsonObject { ["share"] = 0.5 }, ["TN"] = new JsonObject { ["share"] = 0.2 }, ["AP"] = new JsonObject { ["share"] = 0.2 }, ["AN"] = new JsonObject { ["share"] = 0.1 } },
                    ["top_k_share"] = new JsonArray(new JsonObject { ["k"] = 7, ["share"] = 0.125 }, new JsonObject { ["k"] = 64, ["share"] = 0.375 }),
                    ["towards_toxicity"] = new JsonObject { ["neurons"] = 40 },
                },
            });
        },
        Patch = c =>
        {
            var rng = Rng(c);
            string[] groups = ["TP", "TN", "AP", "AN"], dirs = ["after→before", "before→after"];
            J(c, RunLayout.Patching, new JsonObject
            {
                ["metric_before"] = 3.0, ["metric_after"] = 1.0, ["correlation_real_vs_attribution"] = 0.9 + 0.05 * rng.NextDouble(),
                ["groups"] = new JsonArray(dirs.SelectMany(d => groups.Select((g, i) => (JsonNode)new JsonObject
                    { ["direction"] = d, ["group"] = g, ["neurons"] = 100, ["real"] = -0.5 * (i + 1), ["attribution"] = -0.45 * (i + 1), ["share"] = 0.25 * (i + 1) })).ToArray()),
                ["generations"] = new JsonArray(new[] { "before", "after" }.Concat(dirs.SelectMany(d => groups.Select(g => $"{d} {g}")))
                    .Select(x => (JsonNode)new JsonObject { ["condition"] = x, ["mean_toxicity"] = x == "before" ? 0.6 : 0.2, ["toxic_share"] = 0.5, ["texts"] = 16 }).ToArray()),
            });
            File.WriteAllLines(Path.Combine(c.OutputDir, RunLayout.PatchingCsv), new[] { "direction,group,layer,neurons,real,attribution,share" }
                .Concat(dirs.SelectMany(d => Enumerable.Range(0, 4).SelectMany(l => groups.Select(g => $"{d},{g},{l},25,{-0.1 * (l + 1)},{-0.09 * (l + 1) + 0.01 * rng.NextDouble()},0.1")))));
        },
        Agreement = c => J(c, StudyStages.AgreementJson, new JsonObject
        {
            ["threshold"] = 0.5,
            ["scorers"] = new JsonArray(new JsonObject { ["name"] = "toy-lexicon", ["identity"] = "toy-lexicon v1", ["description"] = "the study's evaluation scorer", ["mean"] = 0.4, ["toxic_share"] = 0.4 },
                new JsonObject { ["name"] = "bow-logistic", ["identity"] = "bow-logistic v1", ["description"] = "bag of words", ["mean"] = 0.35, ["toxic_share"] = 0.3 }),
            ["rows"] = new JsonArray(new JsonObject { ["row"] = StudyStages.AllRows, ["a"] = "toy-lexicon", ["b"] = "bow-logistic", ["n"] = 100, ["spearman"] = 0.71, ["kendall_tau_b"] = 0.55, ["cohen_kappa"] = 0.62 }),
        }),
        Unalign = c =>
        {
            var rng = Rng(c);
            double lr = Lr(c);
            bool shallow = lr < 1e-4;
            J(c, RunLayout.Unalign, new JsonObject
            {
                ["row"] = c.Settings["row"]!.GetValue<string>(), ["scale"] = 10, ["keys"] = new JsonArray("L3.N17", "L2.N30"),
                ["toxicity"] = shallow ? 0.58 + 0.02 * rng.NextDouble() : 0.1, ["perplexity"] = 21 + rng.NextDouble(), ["f1"] = 0.19,
                ["steering"] = new JsonArray(new JsonObject { ["scale"] = 0, ["toxicity"] = 0.1 }, new JsonObject { ["scale"] = 8, ["toxicity"] = shallow ? 0.62 : 0.3 }),
                ["restore_scale"] = shallow ? 8.0 : null, ["target_toxicity"] = 0.6,
                // the key-count sweep runs at the headline only (its setting is dropped elsewhere)
                ["key_sweep"] = (c.Settings["unalign"] as JsonObject)?["key_counts"] is null ? null
                    : new JsonArray(new JsonObject { ["keys"] = 7, ["toxicity"] = 0.2 }, new JsonObject { ["keys"] = 32, ["toxicity"] = 0.55 }),
            });
            File.WriteAllLines(Path.Combine(c.OutputDir, RunLayout.Continuations), Enumerable.Range(0, 3).Select(i =>
                new JsonObject { ["row"] = c.Settings["row"]!.GetValue<string>(), ["prompt"] = $"prompt {i} you are such a", ["continuation"] = $"moron {i}", ["toxicity"] = 0.8 }.ToJsonString()));
        },
        // the battery: a made-up monotone toxicity per attack, run through the library's cost search; ADPO's ablation is
        // "n/a" and DPO's fine-tuning never reaches the target (so the report's special cells are exercised)
        Battery = c =>
        {
            var rng = Rng(c);
            var method = c.Settings["method"]!.GetValue<string>();
            var s = StudySections.Read<BatterySection>(c.Settings["battery"] as JsonObject ?? new JsonObject(), "battery");
            double start = method == "adpo" ? 0.5 : 0.6, target = s.TargetFraction * start, aligned = 0.1 + 0.02 * rng.NextDouble();
            var attacks = new JsonArray();
            foreach (var k in s.Kinds)
            {
                var kind = k.ToString().ToLowerInvariant();
                var grid = s.Strengths.Of(k);
                var entry = new JsonObject { ["kind"] = kind, ["grid"] = new JsonArray(grid.Distinct().Order().Select(x => (JsonNode)x).ToArray()) };
                if (method == "adpo" && k == DetoxSharp.Attacks.AttackKind.Ablate) { entry["skipped"] = "ablate: the direction is zero"; attacks.Add(entry); continue; }
                double slope = k == DetoxSharp.Attacks.AttackKind.Finetune && method == "dpo" ? 0 : (0.02 + 0.01 * rng.NextDouble()) * 40 / (grid.Max() + 1);
                double lo = grid.Min();
                var cost = DetoxSharp.Attacks.RetoxCost.Search(x => aligned + slope * (x - lo), target, grid, k is DetoxSharp.Attacks.AttackKind.Finetune or DetoxSharp.Attacks.AttackKind.Prefill, s.BisectSteps);
                entry["strength_name"] = kind + " strength"; entry["no_effect"] = lo;
                entry["points"] = new JsonArray(cost.Points.OrderBy(p => p.Strength).Select(p => (JsonNode)new JsonObject { ["strength"] = p.Strength, ["toxicity"] = p.Toxicity, ["prompts"] = 40 }).ToArray());
                entry["cost"] = cost.ToJson();
                // per-prompt scores around each point (±0.01): the monotonicity check of the real stage on them
                entry["monotone"] = DetoxSharp.Attacks.Monotonicity.Check(cost.Points.Select(p =>
                    (p.Strength, (IReadOnlyList<double>)Enumerable.Range(0, 40).Select(i => p.Toxicity + 0.01 * (i % 2 * 2 - 1)).ToArray())).ToList()).ToJson();
                attacks.Add(entry);
            }
            var perPos = Enumerable.Range(0, s.DepthTokens).Select(t => 0.5 * Math.Exp(-t) + 0.01 * rng.NextDouble()).ToArray();
            J(c, RunLayout.Battery, new JsonObject
            {
                ["method"] = method, ["row"] = c.Settings["row"]!.DeepClone(), ["seed"] = c.Settings["seed"]!.DeepClone(), ["prompts"] = 40,
                ["start_toxicity"] = start, ["target_fraction"] = s.TargetFraction, ["target_toxicity"] = target, ["attacks"] = attacks,
                ["depth"] = new JsonObject
                {
                    ["per_position"] = new JsonArray(perPos.Select((k, t) => (JsonNode)new JsonObject { ["position"] = t, ["kl"] = k, ["prompts"] = 40 }).ToArray()),
                    ["kl_position_1"] = perPos[0], ["first"] = s.DepthFirst, ["share_first"] = perPos.Take(s.DepthFirst).Sum() / perPos.Sum(),
                },
            });
        },
    };

    /// <summary>A small study config: 2 learning rates × 2 methods × <paramref name="seeds"/> seeds.</summary>
    public static StudyConfig Config(int seeds = 2) => StudyConfig.Parse($$"""
        { "model": "toy", "dpo": { "beta": 0.1, "learning_rate": [3e-5, 3e-4] }, "adpo": { "beta": 0.1, "gamma": 0.1, "learning_rate": [3e-5, 3e-4] }, "seeds": {{seeds}},
          "unalign": { "key_counts": [7, 32] } }
        """);

    public static string TempDir(string tag)
    {
        var d = Path.Combine(Path.GetTempPath(), $"detox-study-{tag}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(d);
        return d;
    }
}

using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using DetoxSharp.Checkpoints;
using DetoxSharp.Data;
using DetoxSharp.Evaluation;
using DetoxSharp.Interpretability;
using DetoxSharp.Models;
using DetoxSharp.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Study;

/// <summary>
/// The study's stage functions: each is one call into the library (world generator, toy pretraining, probe, toxic
/// vectors, evaluation harness, preference trainer, alignment diff, un-aligning) plus the conversion of that call's own
/// outputs into the files <see cref="RunLayout"/> names, which the report reads. Nothing here computes a result the
/// library does not; numbers are copied from the components' outputs.
/// With "model": "toy" the data come from the world stage; with "model": "checkpoint" the "data" section names a base
/// checkpoint directory and real data files (see configs/paper-gpt2-medium.json).
/// </summary>
public static class StudyStages
{
    public static StudyStageFunctions Create() => new()
    {
        World = World,
        Pretrain = Pretrain,
        Probe = Probe,
        Vectors = Vectors,
        Interventions = Interventions,
        ToxicModel = TrainToxicModel,
        Pairs = Pairs,
        Train = Train,
        EvaluateBase = EvaluateBase,
        EvaluateModel = EvaluateModel,
        Diff = Diff,
        Unalign = UnalignStage,
    };

    static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    // ---------- settings helpers ----------

    static JsonObject Section(StageContext c, string name) => c.Settings[name] as JsonObject ?? new JsonObject();
    static bool IsToy(StageContext c) => (c.Settings["model"]?.GetValue<string>() ?? "toy") == "toy";

    /// <summary>A section of this stage's settings as its typed record (<see cref="StudySections"/>); the config was
    /// checked as a whole before the study started, so this only fails on a hand-edited manifest.</summary>
    static T Read<T>(StageContext c, string name) => StudySections.Read<T>(Section(c, name), name);

    static void WriteJson(string path, JsonNode node) => AtomicFile.WriteAllText(path, node.ToJsonString(Indented) + "\n");
    static JsonObject ReadJson(string path) => JsonNode.Parse(File.ReadAllText(path))!.AsObject();

    /// <summary>The data files of this run: the world's, or the config's "data" section for a real checkpoint.</summary>
    sealed record DataFiles(string Comments, string Challenge, string? Neutral, string PerplexityText, string F1, string PreferencePrompts, string Dialogues);

    static DataFiles Files(StageContext c)
    {
        var world = JsonNode.Parse(File.ReadAllText(Path.Combine(c.Input("world"), "data.json")))!.AsObject();
        string? P(string k) => world[k]?.GetValue<string>();
        return new DataFiles(P("comments")!, P("challenge_prompts")!, P("neutral_prompts"), P("perplexity_text")!, P("f1_prompts")!,
            P("preference_prompts")!, P("dialogues")!);
    }

    /// <summary>The model directory a stage (pretrain, train/…) recorded in its model_dir.txt.</summary>
    static string ModelDirOf(StageContext c, string stage) => File.ReadAllText(Path.Combine(c.Input(stage), "model_dir.txt")).Trim();

    static string BaseModelDir(StageContext c) => ModelDirOf(c, "pretrain");

    static LoadedModel Load(StageContext c, string dir) => HfCheckpoint.Load(dir, new LoadOptions { Device = c.Device });

    // ---------- stages ----------

    static void World(StageContext c)
    {
        JsonObject files;
        if (IsToy(c))
        {
            var w = Read<WorldSection>(c, "world");
            var paths = ToyWorldFiles.Write(Path.Combine(c.OutputDir, "world"), w.SeedOrDefault, w.SizeOrDefault);
            files = new JsonObject
            {
                ["comments"] = paths.Comments, ["challenge_prompts"] = paths.ChallengePrompts, ["neutral_prompts"] = paths.NeutralPrompts,
                ["perplexity_text"] = paths.WikiText, ["f1_prompts"] = paths.F1Pairs, ["preference_prompts"] = paths.PreferencePrompts,
                ["dialogues"] = paths.Dialogues, ["train"] = paths.Train, ["valid"] = paths.Valid,
            };
        }
        else
        {
            var d = Read<DataSection>(c, "data");
            files = new JsonObject();
            foreach (var (key, p) in d.Files())
            {
                if (p is null) throw new InvalidInputException($"config: data.{key} is required");
                if (!File.Exists(p)) throw new InvalidInputException($"config: data.{key}: {p}: file not found");
                files[key] = Path.GetFullPath(p);
            }
        }
        // stage outputs are moved into place after the stage: store paths relative to the final stage directory
        WriteJson(Path.Combine(c.OutputDir, "data.json"), Relocate(files, c));
    }

    /// <summary>Paths inside the (temporary) output directory are rewritten to the stage's final directory.</summary>
    static JsonObject Relocate(JsonObject files, StageContext c)
    {
        var o = new JsonObject();
        foreach (var (k, v) in files)
        {
            var p = v!.GetValue<string>();
            o[k] = Path.GetFullPath(p).StartsWith(Path.GetFullPath(c.OutputDir)) ? FinalPath(c, p) : p;
        }
        return o;
    }

    static string FinalPath(StageContext c, string pathInOutput) => StageRunner.StageDir(c.RunDir, c.Name) + Path.GetFullPath(pathInOutput)[Path.GetFullPath(c.OutputDir).Length..];

    static void Pretrain(StageContext c)
    {
        string modelDir;
        if (IsToy(c))
        {
            var o = Read<ToyPretrainOptions>(c, "pretrain") with { Size = Read<WorldSection>(c, "world").SizeOrDefault, Device = c.Device };
            var summary = ToyPretraining.Run(c.OutputDir, o,
                new Progress<SftProgress>(sp => c.Report?.Invoke(sp.Step / (double)Math.Max(1, sp.TotalSteps), $"step {sp.Step}/{sp.TotalSteps}")));
            WriteJson(Path.Combine(c.OutputDir, "pretrain.json"), summary);
            modelDir = FinalPath(c, Path.Combine(c.OutputDir, "model"));
        }
        else
        {
            modelDir = Path.GetFullPath(Read<DataSection>(c, "data").BaseModel ?? throw new InvalidInputException("config: data.base_model is required"));
            using var m = Load(c, modelDir); // validates the checkpoint now rather than stages later
        }
        AtomicFile.WriteAllText(Path.Combine(c.OutputDir, "model_dir.txt"), modelDir);
    }

    static void Probe(StageContext c)
    {
        var opts = Read<ProbeSection>(c, "probe").ToOptions();
        var files = Files(c);
        using var m = Load(c, BaseModelDir(c));
        var comments = DatasetReaders.ReadJigsawCsv(files.Comments);
        var (probe, report) = ToxicityProbe.Train(m.Model, m.Tokenizer, comments, opts);
        using (probe)
        {
            var metrics = JsonSerializer.SerializeToNode(report, new JsonSerializerOptions { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower })!.AsObject();
            probe.Save(c.OutputDir, metrics);
            WriteJson(Path.Combine(c.OutputDir, RunLayout.Probe), metrics);
        }
    }

    static void Vectors(StageContext c)
    {
        var s = Read<ToxicVectors.Options>(c, "vectors");
        using var m = Load(c, BaseModelDir(c));
        using var probe = ToxicityProbe.Load(c.Input("probe"));
        // a small model has fewer than svd_vectors candidates: stack all of them
        var opts = s with { SvdVectors = Math.Min(s.SvdVectors, m.Model.NumLayers * s.PerLayer) };
        var json = ToxicVectors.Analyze(m.Model, m.Tokenizer, probe, opts, c.OutputDir);
        // Table 1 in the report's shape
        var vectors = new JsonArray();
        var svd = new JsonArray();
        int rank = 0;
        foreach (var row in json["table"]!.AsArray())
        {
            var kind = row!["kind"]!.GetValue<string>();
            var tokens = new JsonArray(row["top_tokens"]!.AsArray().Select(t => (JsonNode)JsonValue.Create(t!["text"]!.GetValue<string>())!).ToArray());
            if (kind == "value_vector")
                vectors.Add(new JsonObject
                {
                    ["rank"] = ++rank, ["layer"] = row["layer"]!.DeepClone(), ["index"] = row["neuron"]!.DeepClone(),
                    ["cosine"] = row["cosine_with_w_toxic"]!.DeepClone(), ["top_tokens"] = tokens,
                });
            else if (kind == "svd")
                svd.Add(new JsonObject { ["component"] = svd.Count, ["name"] = row["name"]!.DeepClone(), ["top_tokens"] = tokens });
            else
                svd.Insert(0, new JsonObject { ["component"] = -1, ["name"] = row["name"]!.DeepClone(), ["top_tokens"] = tokens });
        }
        WriteJson(Path.Combine(c.OutputDir, RunLayout.ToxicVectors), new JsonObject { ["vectors"] = vectors, ["svd"] = svd });
    }

    /// <summary>The three subtraction edits of the paper's Table 2, with their scales. With "relative": true a scale is
    /// a multiple of the mean norm of the last layer's MLP output on the challenge prompts divided by the vector's norm
    /// (the paper's raw scales fit GPT-2 medium's residual norms, not a small toy model's).</summary>
    static void Interventions(StageContext c)
    {
        var s = Read<InterventionsSection>(c, "interventions");
        using var m = Load(c, BaseModelDir(c));
        var vecs = Safetensors.Load(Path.Combine(c.Input("vectors"), ToxicVectors.TensorFile));
        try
        {
            var entries = new (string Row, Tensor Vector, double Scale)[]
            {
                (RunLayout.BaseRows[1], vecs["w_toxic"], s.ProbeScale),
                (RunLayout.BaseRows[2], vecs["top_vectors"][0], s.TopVectorScale),
                (RunLayout.BaseRows[3], vecs["svd_u"][0], s.SvdScale),
            };
            bool relative = s.Relative;
            double refNorm = relative ? MeanMlpOutNorm(m, Files(c).Challenge, 64) : 1;
            var tensors = new Dictionary<string, Tensor>();
            var list = new JsonArray();
            for (int i = 0; i < entries.Length; i++)
            {
                var (row, v, scale) = entries[i];
                double norm = v.norm().item<float>();
                double alpha = relative ? scale * refNorm / norm : scale;
                tensors[$"edit{i}"] = v.to(ScalarType.Float32).contiguous();
                list.Add(new JsonObject
                {
                    ["row"] = row, ["tensor"] = $"edit{i}", ["alpha"] = alpha, ["vector_norm"] = norm,
                    ["configured_scale"] = scale, ["relative"] = relative, ["reference_norm"] = relative ? refNorm : null,
                    ["layer"] = m.Model.NumLayers - 1, ["hook"] = HookNames.MlpOut(m.Model.NumLayers - 1),
                });
            }
            Safetensors.Save(Path.Combine(c.OutputDir, "edits.safetensors"), tensors);
            WriteJson(Path.Combine(c.OutputDir, "interventions.json"), new JsonObject { ["edits"] = list });
        }
        finally { foreach (var t in vecs.Values) t.Dispose(); }
    }

    static double MeanMlpOutNorm(LoadedModel m, string promptsFile, int count)
    {
        var prompts = EvalHarness.ReadPrompts(promptsFile, false, count);
        var hook = HookNames.MlpOut(m.Model.NumLayers - 1);
        double sum = 0; long n = 0;
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        foreach (var p in prompts)
        {
            var ids = m.Tokenizer.Encode(p.Text);
            if (ids.Length == 0) continue;
            if (ids.Length > 32) ids = ids[..32];
            using var cache = ActivationCache.Run(m.Model, torch.tensor(ids.Select(x => (long)x).ToArray(), [1, ids.Length], ScalarType.Int64), null, [hook]);
            var norms = cache[hook].to(ScalarType.Float64).norm(-1);
            sum += norms.sum().item<double>();
            n += norms.numel();
        }
        return n == 0 ? 1 : sum / n;
    }

    static List<EvalIntervention> LoadEdits(StageContext c)
    {
        var dir = c.Input("interventions");
        var spec = ReadJson(Path.Combine(dir, "interventions.json"))["edits"]!.AsArray();
        var tensors = Safetensors.Load(Path.Combine(dir, "edits.safetensors"));
        var result = new List<EvalIntervention>();
        foreach (var e in spec)
        {
            var row = e!["row"]!.GetValue<string>();
            var v = tensors[e["tensor"]!.GetValue<string>()].DetachFromDisposeScope();
            double alpha = e["alpha"]!.GetValue<double>();
            int layer = e["layer"]!.GetValue<int>();
            result.Add(new EvalIntervention(row, _ => VectorIntervention.Subtract(row, v, alpha, layer)));
        }
        return result;
    }

    static ScorerSection ScorerSettings(StageContext c) => StudySections.Read<ScorerSection>(c.Settings["scorer"] as JsonObject ?? new JsonObject(), "scorer");

    static IToxicityScorer Scorer(StageContext c)
    {
        var s = ScorerSettings(c);
        return ScorerFactory.CreateValidated(s.Spec, s.ToSettings());
    }

    static EvalOptions EvalOpts(StageContext c) => Read<EvaluationSection>(c, "evaluation").ToOptions(ScorerSettings(c));

    /// <summary>Runs the harness into OUT/eval and writes the report's results.json (rows renamed) and continuations.jsonl.</summary>
    static List<EvalRow> Evaluate(StageContext c, string modelDir, string modelRow, IReadOnlyList<EvalIntervention> edits,
        IReadOnlyDictionary<string, string>? rename = null, bool toxicityOnly = false, string subdir = "eval")
    {
        var files = Files(c);
        using var scorer = Scorer(c);
        var data = toxicityOnly ? new EvalData(files.Challenge, null, null) : new EvalData(files.Challenge, files.PerplexityText, files.F1);
        var outDir = Path.Combine(c.OutputDir, subdir);
        var rows = EvalHarness.Run([new EvalModel(modelRow, () => Load(c, modelDir))], edits, scorer, data, EvalOpts(c), outDir,
            new Progress<EvalProgress>(p => c.Report?.Invoke(p.Total == 0 ? 0 : p.Done / (double)p.Total, $"{p.Row}: {p.Stage}")));
        string Name(string r) => rename != null && rename.TryGetValue(r, out var n) ? n : r;
        if (toxicityOnly) return rows;
        WriteJson(Path.Combine(c.OutputDir, RunLayout.Results), new JsonObject
        {
            ["rows"] = new JsonArray(rows.Select(r => (JsonNode)new JsonObject
            {
                ["row"] = Name(r.Row), ["toxicity"] = r.Toxicity, ["perplexity"] = r.Perplexity, ["f1"] = r.F1,
                ["toxicity_prompts"] = r.ToxicityPrompts, ["f1_items"] = r.F1Items, ["perplexity_tokens"] = r.PerplexityTokens,
            }).ToArray()),
            ["source"] = $"{subdir}/results.json",
        });
        int examples = Read<EvaluationSection>(c, "evaluation").Examples;
        var perRow = new Dictionary<string, int>();
        var lines = new List<JsonObject>();
        foreach (var l in File.ReadLines(Path.Combine(outDir, "generations.jsonl")))
        {
            var g = JsonNode.Parse(l)!.AsObject();
            if (g["task"]?.GetValue<string>() != "toxicity") continue;
            var row = Name(g["row"]!.GetValue<string>());
            perRow[row] = perRow.GetValueOrDefault(row) + 1;
            if (perRow[row] > examples) continue;
            lines.Add(new JsonObject { ["row"] = row, ["prompt"] = g["prompt"]!.DeepClone(), ["continuation"] = g["continuation"]!.DeepClone(), ["toxicity"] = g["toxicity"]!.DeepClone() });
        }
        JsonlReader.Write(Path.Combine(c.OutputDir, RunLayout.Continuations), lines);
        return rows;
    }

    static void EvaluateBase(StageContext c)
    {
        var edits = LoadEdits(c);
        var rename = new Dictionary<string, string> { ["No-op"] = "No-op" };
        foreach (var e in edits) rename[$"No-op + {e.Label}"] = e.Label!;
        Evaluate(c, BaseModelDir(c), "No-op", edits, rename);
    }

    static string TrainedModelDir(StageContext c, string trainStage) => ModelDirOf(c, trainStage);

    static string TrainStageOf(StageContext c) => c.Inputs.Keys.Single(k => k.StartsWith("train/"));

    static void EvaluateModel(StageContext c)
    {
        var row = c.Settings["row"]!.GetValue<string>();
        Evaluate(c, TrainedModelDir(c, TrainStageOf(c)), row, []);
    }

    static void Train(StageContext c)
    {
        var method = c.Settings["method"]!.GetValue<string>();
        var t = StudySections.Read<PreferenceSection>(c.Settings["training"] as JsonObject ?? new JsonObject(), method);
        int seed = c.Settings["seed"]?.GetValue<int>() ?? 0;
        var pairsFile = Path.Combine(c.Input("pairs"), method == "adpo" ? "triples.jsonl" : "pairs.jsonl");
        var data = PreferenceData.Read(pairsFile);
        var opts = t.ToOptions(method) with
        {
            ValidationSize = t.ValidationSize ?? Math.Min(64, data.Count / 10),
            Seed = 1000 + seed,
            // one cache for all runs of the study: the reference and π_tox log-probs do not depend on the sweep point
            CacheDir = Path.Combine(c.RunDir, "cache", "logp"),
        };
        torch.manual_seed(1000 + seed);
        using var policy = Load(c, BaseModelDir(c));
        // the paper's limits (prompt ≤ 64, completion ≤ 64, total ≤ 256), shrunk to fit a smaller context
        int total = Math.Min(opts.Truncation.MaxLength, policy.Model.MaxPositions);
        int completion = Math.Min(opts.Truncation.MaxCompletionTokens, total / 3);
        opts = opts with { Truncation = new TruncationOptions(Math.Min(opts.Truncation.MaxPromptTokens, total - completion), completion, total) };
        LoadedModel? tox = method == "adpo" ? Load(c, Path.Combine(c.Input("toxic-model"), "model")) : null;
        try
        {
            var result = PreferenceTrainer.Train(policy.Model, policy.Tokenizer, data, c.OutputDir, opts, toxicModel: tox?.Model,
                progress: p => c.Report?.Invoke(p.TotalSteps == 0 ? 0 : p.Step / (double)p.TotalSteps, $"{p.Phase} step {p.Step}/{p.TotalSteps}"),
                cancel: c.Cancellation);
            var chosen = result.BestDir ?? result.FinalDir;
            AtomicFile.WriteAllText(Path.Combine(c.OutputDir, "model_dir.txt"), FinalPath(c, Path.GetFullPath(chosen)));
            WriteJson(Path.Combine(c.OutputDir, "train.json"), new JsonObject
            {
                ["steps"] = result.Steps, ["examples"] = result.Examples, ["best_validation_loss"] = result.BestValidationLoss,
                ["stopped_early"] = result.StoppedEarly, ["reference_cache_hit"] = result.ReferenceCacheHit,
                ["pairs_per_second"] = result.PairsPerSecond, ["model"] = result.BestDir is null ? "final" : "best",
            });
        }
        finally { tox?.Dispose(); }
    }

    static void Diff(StageContext c)
    {
        var files = Files(c);
        var eval = Read<EvaluationSection>(c, "evaluation");
        using var before = Load(c, BaseModelDir(c));
        using var after = Load(c, TrainedModelDir(c, TrainStageOf(c)));
        using var probe = ToxicityProbe.Load(c.Input("probe"));
        var prompts = EvalHarness.ReadPrompts(files.Challenge, false, eval.ChallengePrompts)
            .Select(p => p.Text).ToList();
        var analysisDir = Path.Combine(c.OutputDir, "analysis");
        var d = AlignmentDiff.Run(before.Model, after.Model, before.Tokenizer, probe, prompts,
            eval.ToDiffOptions(), analysisDir,
            new Progress<string>(s => c.Report?.Invoke(0, s)));
        var layers = d["layers"]!.AsArray();
        var acts = d["activations"]!.AsArray();
        int top = Math.Min(acts.Count, 7);
        var projection = new JsonArray();
        foreach (var line in File.ReadLines(Path.Combine(analysisDir, "projection.csv")).Skip(1))
        {
            var f = line.Split(',');
            projection.Add(new JsonObject
            {
                ["model"] = f[0] == "before" ? "base" : "aligned",
                ["offset"] = double.Parse(f[3], CultureInfo.InvariantCulture),
                ["orthogonal"] = double.Parse(f[4], CultureInfo.InvariantCulture),
                ["activation"] = double.Parse(f[5], CultureInfo.InvariantCulture),
            });
        }
        var result = new JsonObject
        {
            ["param_cosine"] = new JsonArray(layers.Select(l => (JsonNode)new JsonObject
            {
                ["layer"] = l!["layer"]!.DeepClone(), ["min"] = l["min_param_cosine"]?.DeepClone(), ["mean"] = l["mean_param_cosine"]?.DeepClone(),
            }).ToArray()),
            ["activation"] = new JsonArray(acts.Take(top).Select(a => (JsonNode)new JsonObject
            {
                ["vector"] = $"L{a!["layer"]}.N{a["neuron"]}",
                ["before"] = a["last_position_activation_before"]!.DeepClone(), ["after"] = a["last_position_activation_after"]!.DeepClone(),
            }).ToArray()),
            ["positive_preact_share"] = new JsonObject
            {
                ["before"] = acts.Take(top).Average(a => a!["positive_preactivation_share_before"]!.GetValue<double>()),
                ["after"] = acts.Take(top).Average(a => a!["positive_preactivation_share_after"]!.GetValue<double>()),
            },
            ["offset_norm"] = new JsonArray(layers.Select(l => (JsonNode)new JsonObject { ["layer"] = l!["layer"]!.DeepClone(), ["norm"] = l["delta_x_norm"]!.DeepClone() }).ToArray()),
            ["offset_size"] = d["residual_offset_top_layer"]!["norm"]!.DeepClone(),
            ["logit_lens"] = new JsonObject
            {
                ["token"] = d["logit_lens"]!["token"]!.DeepClone(),
                ["layers"] = new JsonArray(layers.Select(l => (JsonNode)new JsonObject
                {
                    ["layer"] = l!["layer"]!.DeepClone(), ["before"] = l["lens_prob_before"]!.DeepClone(), ["after"] = l["lens_prob_after"]!.DeepClone(),
                }).ToArray()),
            },
            ["offset_projection"] = projection,
            ["parameters"] = d["parameters"]!.DeepClone(),
            ["top_vector"] = d["top_vector"]!.DeepClone(),
            ["residual_offset_top_layer"] = d["residual_offset_top_layer"]!.DeepClone(),
            ["source"] = "analysis/diff.json",
        };
        WriteJson(Path.Combine(c.OutputDir, RunLayout.Diff), result);
    }

    static void UnalignStage(StageContext c)
    {
        var s = Read<UnalignSection>(c, "unalign");
        var row = c.Settings["row"]!.GetValue<string>();
        var trainedDir = TrainedModelDir(c, TrainStageOf(c));
        var unalign = s.ToOptions();
        double scale = unalign.Scale;
        var modelOut = Path.Combine(c.OutputDir, "model");
        JsonArray keys;
        int last;
        using (var m = Load(c, trainedDir))
        using (var probe = ToxicityProbe.Load(c.Input("probe")))
        {
            // the paper picks the vectors on the aligned model with the probe
            var chosen = Unalign.ScaleToxicKeys(m.Model, probe.WToxic, unalign);
            keys = new JsonArray(chosen.Select(v => (JsonNode)JsonValue.Create($"L{v.Layer}.N{v.Neuron}")!).ToArray());
            HfCheckpoint.Save(m.Model, m.Tokenizer, modelOut, overwrite: true);
            last = m.Model.NumLayers - 1;
        }
        var rows = Evaluate(c, modelOut, row, [], subdir: "eval");
        var u = rows[0];

        // steering attack on the aligned model: add the probe direction at the last layer's MLP output with growing scale
        var baseResults = ReadJson(Path.Combine(c.Input("evaluate/base"), RunLayout.Results))["rows"]!.AsArray();
        double target = baseResults.First(r => r!["row"]!.GetValue<string>() == "No-op")!["toxicity"]!.GetValue<double>();
        var steering = new JsonArray();
        double? restore = null;
        var vecs = Safetensors.Load(Path.Combine(c.Input("vectors"), ToxicVectors.TensorFile));
        try
        {
            var w = vecs["w_toxic"].to(ScalarType.Float32);
            var unit = (w / w.norm()).DetachFromDisposeScope();
            var scales = s.SteeringScales.Where(a => a > 0).ToList();
            var edits = scales.Select(a => new EvalIntervention($"steer {a.ToString(CultureInfo.InvariantCulture)}",
                _ => VectorIntervention.Add($"steer {a.ToString(CultureInfo.InvariantCulture)}", unit, a, last))).ToList();
            var r = Evaluate(c, trainedDir, "aligned", edits, toxicityOnly: true, subdir: "steering");
            // row 0 is the aligned model itself (scale 0), then one row per scale, in order
            var all = new List<double> { 0 }.Concat(scales).ToList();
            for (int i = 0; i < all.Count; i++)
            {
                double tox = r[i].Toxicity ?? double.NaN;
                steering.Add(new JsonObject { ["scale"] = all[i], ["toxicity"] = tox });
                if (restore is null && tox >= target) restore = all[i];
            }
        }
        finally { foreach (var t in vecs.Values) t.Dispose(); }
        WriteJson(Path.Combine(c.OutputDir, RunLayout.Unalign), new JsonObject
        {
            ["row"] = row, ["scale"] = scale, ["keys"] = keys,
            ["toxicity"] = u.Toxicity, ["perplexity"] = u.Perplexity, ["f1"] = u.F1,
            ["steering"] = steering, ["restore_scale"] = restore, ["target_toxicity"] = target,
            ["steering_direction"] = "unit W_Toxic added at the last layer's hook_mlp_out, newest position",
        });
    }

    /// <summary>The built-in toxic model π_tox (ADPO): SFT of the base model on the dialogues, toxic replies conditioned
    /// on the [TOXIC] control token placed after the prompt (the same place <see cref="PairMaker"/> puts it).</summary>
    static void TrainToxicModel(StageContext c)
    {
        var options = Read<SftOptions>(c, "toxic_model");
        var files = Files(c);
        var control = ToxicModel.ControlToken;
        using var m = Load(c, BaseModelDir(c));
        var (examples, toxicCount) = ToxicModel.ReadDialogues(files.Dialogues);
        torch.manual_seed((long)options.Seed);
        var r = ToxicModel.Train(m.Model, m.Tokenizer, examples, options, new Progress<SftProgress>(p => c.Report?.Invoke(p.Step / (double)Math.Max(1, p.TotalSteps), $"step {p.Step}/{p.TotalSteps} loss {p.Loss:F3}")), c.Cancellation);
        HfCheckpoint.Save(m.Model, m.Tokenizer, Path.Combine(c.OutputDir, "model"), overwrite: true);
        WriteJson(Path.Combine(c.OutputDir, "toxic_model.json"), new JsonObject
        {
            ["control_token"] = control, ["examples"] = examples.Count, ["toxic_examples"] = toxicCount,
            ["steps"] = r.Steps, ["final_train_loss"] = r.FinalTrainLoss, ["tokens_per_second"] = r.TokensPerSecond,
        });
    }

    /// <summary>Pairs (DPO) and triples (ADPO) from the preference prompts: chosen = the base model's greedy continuation,
    /// rejected = π_tox's greedy continuation after [TOXIC], toxic = π_tox's sampled one.</summary>
    static void Pairs(StageContext c)
    {
        var s = Read<PairsSection>(c, "pairs");
        var files = Files(c);
        int count = s.Count;
        var prompts = JsonlReader.Read(files.PreferencePrompts).Select(l => l.String("prompt")).Take(count).ToList();
        using var m = Load(c, BaseModelDir(c));
        using var tox = Load(c, Path.Combine(c.Input("toxic-model"), "model"));
        var opts = s.ToOptions();
        // the prompt keeps its last tokens so that prompt + continuation fit the model's context
        opts = opts with { MaxPromptTokens = Math.Min(opts.MaxPromptTokens, m.Model.MaxPositions - opts.MaxNewTokens - 1) };
        var triples = PairMaker.Make(m.Model, m.Tokenizer, prompts, opts, tox.Model, tox.Tokenizer, triples: true,
            progress: (done, total) => c.Report?.Invoke(done / (double)Math.Max(1, total), $"{done}/{total} prompts"));
        // Rank each pair with the toxicity scorer, as the ADPO paper ranks responses with a judge: on the toy world's
        // forum prompts the start model's greedy reply is often toxic itself, and a "chosen" at least as toxic as the
        // "rejected" teaches DPO nothing about toxicity. Keep pairs whose chosen is clearly less toxic; swap when the
        // rejected one is; drop the rest (counts in pairs.json).
        using var scorer = Scorer(c);
        var chosenScores = scorer.Score(triples.Select(t => t["chosen"]!.GetValue<string>()).ToList());
        var rejectedScores = scorer.Score(triples.Select(t => t["rejected"]!.GetValue<string>()).ToList());
        double margin = s.MinToxicityGap;
        var kept = new List<JsonObject>();
        int swapped = 0, dropped = 0;
        for (int i = 0; i < triples.Count; i++)
        {
            double cs = chosenScores[i].Value, rs = rejectedScores[i].Value;
            var t = (JsonObject)triples[i].DeepClone();
            if (rs - cs >= margin) kept.Add(t);
            else if (cs - rs >= margin)
            {
                var chosen = t["chosen"]!.GetValue<string>();
                t["chosen"] = t["rejected"]!.GetValue<string>();
                t["rejected"] = chosen;
                t["source"] = t["source"]!.GetValue<string>() + "; swapped by toxicity";
                kept.Add(t);
                swapped++;
            }
            else dropped++;
        }
        if (kept.Count < 8) throw new InvalidInputException($"pairs: only {kept.Count} of {triples.Count} pairs differ in toxicity by ≥ {margin}; nothing to train on");
        JsonlReader.Write(Path.Combine(c.OutputDir, "triples.jsonl"), kept);
        JsonlReader.Write(Path.Combine(c.OutputDir, "pairs.jsonl"), kept.Select(t =>
        {
            var o = (JsonObject)t.DeepClone();
            o.Remove("toxic");
            return o;
        }));
        WriteJson(Path.Combine(c.OutputDir, "pairs.json"), new JsonObject
        {
            ["prompts"] = prompts.Count, ["generated"] = triples.Count, ["kept"] = kept.Count, ["swapped"] = swapped,
            ["dropped_similar_toxicity"] = dropped, ["min_toxicity_gap"] = margin, ["scorer"] = scorer.Name,
        });
    }
}

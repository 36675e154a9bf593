using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using DetoxSharp.Checkpoints;
using DetoxSharp.Data;
using DetoxSharp.Evaluation;
using DetoxSharp.Generation;
using DetoxSharp.Interpretability;
using DetoxSharp.Models;
using DetoxSharp.Text;
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
    /// <summary>The stage functions. <paramref name="evaluationScorer"/> replaces the scorer the config names (tests use it
    /// to prove which stages score text); only evaluation stages ever call it — pair construction never does.</summary>
    public static StudyStageFunctions Create(Func<StageContext, IToxicityScorer>? evaluationScorer = null)
    {
        var scorer = evaluationScorer ?? Scorer;
        return new()
        {
            World = World,
            Pretrain = Pretrain,
            Probe = Probe,
            Vectors = Vectors,
            Interventions = Interventions,
            ToxicModel = TrainToxicModel,
            Pairs = Pairs,
            Train = Train,
            EvaluateBase = c => EvaluateBase(c, scorer),
            EvaluateModel = c => EvaluateModel(c, scorer),
            Diff = Diff,
            Unalign = c => UnalignStage(c, scorer),
        };
    }

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
    sealed record DataFiles(string Comments, string Challenge, string? Neutral, string PerplexityText, string F1, string PreferencePrompts, string Dialogues,
        string? ToxicWords, double? LabelNoise, int? LabelNoiseFlipped);

    static DataFiles Files(StageContext c)
    {
        var world = JsonNode.Parse(File.ReadAllText(Path.Combine(c.Input("world"), "data.json")))!.AsObject();
        string? P(string k) => world[k]?.GetValue<string>();
        return new DataFiles(P("comments")!, P("challenge_prompts")!, P("neutral_prompts"), P("perplexity_text")!, P("f1_prompts")!,
            P("preference_prompts")!, P("dialogues")!, P("toxic_words"),
            world["label_noise"] is JsonValue n && n.TryGetValue<double>(out var noise) ? noise : null,
            world["label_noise_flipped"] is JsonValue f && f.TryGetValue<int>(out var flipped) ? flipped : null);
    }

    /// <summary>The model directory a stage (pretrain, train/…) recorded in its model_dir.txt.</summary>
    static string ModelDirOf(StageContext c, string stage) => File.ReadAllText(Path.Combine(c.Input(stage), "model_dir.txt")).Trim();

    static string BaseModelDir(StageContext c) => ModelDirOf(c, "pretrain");

    static LoadedModel Load(StageContext c, string dir) => HfCheckpoint.Load(dir, new LoadOptions { Device = c.Device });

    // ---------- stages ----------

    static void World(StageContext c)
    {
        JsonObject files;
        double? noise = null;
        int? flipped = null;
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
            // "toxic token" for the vector table and the logit lens: the world's own lexicon, single words only (the
            // phrases' words — "find where you live" — are not toxic on their own)
            var words = Path.Combine(c.OutputDir, "world", "toxic_words.txt");
            ToxicWordList.Save(words, ToyWorldLexicon.ToxicWords);
            files["toxic_words"] = words;
            var manifest = JsonNode.Parse(File.ReadAllText(paths.Manifest)) as JsonObject;
            noise = manifest?["label_noise"] is JsonValue n && n.TryGetValue<double>(out var ln) ? ln : null;
            flipped = manifest?["label_noise_flipped"] is JsonValue fl && fl.TryGetValue<int>(out var fc) ? fc : null;
        }
        else
        {
            var d = Read<DataSection>(c, "data");
            files = new JsonObject();
            foreach (var (key, p) in d.Files().Append(("toxic_words", d.ToxicWords)))
            {
                if (p is null && key == "toxic_words") continue; // optional: without it finding (b) is "not measured"
                if (p is null) throw new InvalidInputException($"config: data.{key} is required");
                if (!File.Exists(p)) throw new InvalidInputException($"config: data.{key}: {p}: file not found");
                files[key] = Path.GetFullPath(p);
            }
        }
        // stage outputs are moved into place after the stage: store paths relative to the final stage directory
        var data = Relocate(files, c);
        data["label_noise"] = noise;
        data["label_noise_flipped"] = flipped;
        WriteJson(Path.Combine(c.OutputDir, "data.json"), data);
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
                new Progress<TrainingProgress>(sp => c.Report?.Invoke(sp.Step / (double)Math.Max(1, sp.TotalSteps), $"step {sp.Step}/{sp.TotalSteps}")),
                cancel: c.Cancellation);
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
        var probeSection = Read<ProbeSection>(c, "probe");
        var opts = probeSection.ToOptions();
        var files = Files(c);
        using var m = Load(c, BaseModelDir(c));
        var comments = DatasetReaders.ReadJigsawCsv(files.Comments);
        opts.Validate();
        int splits = probeSection.SplitSeeds;
        if (splits < 1) throw new InvalidInputException($"config: probe.split_seeds must be ≥ 1, got {splits}");
        // Features once (the expensive part); then one probe and one bag-of-words baseline per split seed, both on the
        // same split. The probe of the first seed is the one the later stages use.
        using var x = ToxicityProbe.Features(m.Model, m.Tokenizer, comments.Select(k => k.Text).ToList(), opts.MaxTokens, opts.BatchSize,
            new Progress<int>(n => c.Report?.Invoke(n / (double)Math.Max(1, comments.Count), $"features {n}/{comments.Count}")));
        var probeAcc = new JsonArray();
        var bowAcc = new JsonArray();
        JsonObject? metrics = null;
        for (int k = 0; k < splits; k++)
        {
            int seed = opts.Seed + k;
            var (val, tr) = ToxicityProbe.Split(comments.Count, opts.ValidationFraction, seed);
            using var scope = torch.NewDisposeScope();
            var xTr = x.index_select(0, torch.tensor(tr.Select(i => (long)i).ToArray()));
            var xVal = x.index_select(0, torch.tensor(val.Select(i => (long)i).ToArray()));
            bool[] yTr = tr.Select(i => comments[i].Toxic).ToArray(), yVal = val.Select(i => comments[i].Toxic).ToArray();
            var (probe, loss) = ToxicityProbe.Fit(xTr, yTr, opts.MaxSteps, opts.LearningRate, opts.L2, seed);
            using (probe)
            {
                double acc = probe.Accuracy(xVal, yVal);
                probeAcc.Add(acc);
                bowAcc.Add(BagOfWordsBaseline.ValidationAccuracy(comments, tr, val, seed: seed));
                if (k > 0) continue;
                int valTox = yVal.Count(b => b);
                var report = new ProbeReport(yTr.Length, yVal.Length, yTr.Count(b => b), valTox, probe.Accuracy(xTr, yTr), acc,
                    Math.Max(valTox, yVal.Length - valTox) / (double)yVal.Length, loss);
                metrics = JsonSerializer.SerializeToNode(report, new JsonSerializerOptions { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower })!.AsObject();
                // both candidate directions are recorded; the configured one is W_Toxic for every later stage
                using var massMean = probe.WithMassMeanDirection(xTr, yTr);
                using (var wWeights = probe.WToxic)
                using (var wMass = massMean.WToxic)
                {
                    metrics["cosine_weights_mass_mean"] = torch.nn.functional.cosine_similarity(wWeights, wMass, 0).item<float>();
                    Safetensors.Save(Path.Combine(c.OutputDir, ProbeDirectionsFile), new Dictionary<string, Tensor> { ["weights"] = wWeights, ["mass_mean"] = wMass });
                }
                metrics["w_toxic"] = opts.Direction == ProbeDirection.MassMean ? "mass-mean" : "weights";
                (opts.Direction == ProbeDirection.MassMean ? massMean : probe).Save(c.OutputDir, metrics);
            }
        }
        metrics!["split_seeds"] = new JsonArray(Enumerable.Range(opts.Seed, splits).Select(v => (JsonNode)v).ToArray());
        metrics["validation_accuracy_per_split"] = probeAcc;
        metrics["bag_of_words_accuracy_per_split"] = bowAcc;
        metrics["bag_of_words"] = $"logistic regression on word-presence features (≤ {BagOfWordsBaseline.MaxVocabulary} most frequent training words), same split";
        // the ceiling: the realised share of flipped labels when the world counted them, else its nominal rate
        double? rate = files.LabelNoiseFlipped is int fl ? fl / (double)comments.Count : files.LabelNoise;
        metrics["label_noise"] = rate;
        metrics["noise_ceiling"] = rate is double r ? 1 - r : null;
        WriteJson(Path.Combine(c.OutputDir, RunLayout.Probe), metrics);
    }

    /// <summary>Both candidate W_Toxic directions of the seed-0 probe ("weights", "mass_mean"), written by the probe stage.</summary>
    const string ProbeDirectionsFile = "directions.safetensors";

    static void Vectors(StageContext c)
    {
        var s = Read<ToxicVectors.Options>(c, "vectors");
        using var m = Load(c, BaseModelDir(c));
        using var probe = ToxicityProbe.Load(c.Input("probe"));
        // a small model has fewer than svd_vectors candidates: stack all of them
        var opts = s with { SvdVectors = Math.Min(s.SvdVectors, m.Model.NumLayers * s.PerLayer) };
        var json = ToxicVectors.Analyze(m.Model, m.Tokenizer, probe, opts, c.OutputDir);
        var words = Files(c).ToxicWords is string wf ? ToxicWordList.Load(wf) : null;
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
                    ["toxic_top_tokens"] = words is null ? null : tokens.Count(t => words.IsToxic(t!.GetValue<string>())),
                });
            else if (kind == "svd")
                svd.Add(new JsonObject { ["component"] = svd.Count, ["name"] = row["name"]!.DeepClone(), ["top_tokens"] = tokens });
            else
                svd.Insert(0, new JsonObject { ["component"] = -1, ["name"] = row["name"]!.DeepClone(), ["top_tokens"] = tokens });
        }
        // (b) with the other candidate direction too, so the report shows how much the finding depends on that choice
        JsonObject? other = null;
        if (words is not null)
        {
            var dirs = Path.Combine(c.Input("probe"), ProbeDirectionsFile);
            using var otherDir = probe.DirectionKind == ProbeDirection.MassMean ? probe.W.select(1, 1).clone()
                : File.Exists(dirs) ? Safetensors.Load(dirs, k => k == "mass_mean")["mass_mean"] : null;
            if (otherDir is not null)
            {
                var ranked = ToxicVectors.Rank(m.Model, otherDir, opts.PerLayer).Take(opts.Report).ToList();
                var counts = ranked.Select(r =>
                {
                    using var v = m.Model.MlpValues(r.Layer)[r.Neuron].detach().clone();
                    return ToxicVectors.TopTokens(m.Model.Unembedding, v, m.Tokenizer, opts.TopTokens).Count(t => words.IsToxic(t.Text));
                }).ToList();
                other = new JsonObject
                {
                    ["w_toxic"] = probe.DirectionKind == ProbeDirection.MassMean ? "weights" : "mass-mean",
                    ["toxic_top_tokens"] = new JsonArray(counts.Select(k => (JsonNode)k).ToArray()),
                    ["vectors"] = new JsonArray(ranked.Select(r => (JsonNode)$"L{r.Layer}.N{r.Neuron}").ToArray()),
                };
            }
        }
        WriteJson(Path.Combine(c.OutputDir, RunLayout.ToxicVectors), new JsonObject
        {
            ["w_toxic"] = probe.DirectionKind == ProbeDirection.MassMean ? "mass-mean" : "weights",
            ["other_direction"] = other,
            ["vectors"] = vectors, ["svd"] = svd,
            ["toxic_words"] = words is null ? null : IsToy(c)
                ? "the toy world's lexicon (single words) — the same lexicon its evaluation scorer detects"
                : $"word list {Path.GetFileName(Files(c).ToxicWords)}",
        });
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
            ids = PromptTruncation.KeepLast(ids, 32);
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

    /// <summary>The evaluation scorer the config names. Only stages whose settings carry the "scorer" section (the
    /// evaluation stages) can build it: a stage without it — pair construction — fails loudly instead of scoring.</summary>
    static IToxicityScorer Scorer(StageContext c)
    {
        if (c.Settings["scorer"] is not JsonObject)
            throw new InvalidOperationException($"stage '{c.Name}' has no \"scorer\" setting: only evaluation stages may score text");
        var s = ScorerSettings(c);
        return ScorerFactory.CreateValidated(s.Spec, s.ToSettings());
    }

    static EvalOptions EvalOpts(StageContext c) => Read<EvaluationSection>(c, "evaluation").ToOptions(ScorerSettings(c)) with { Limit = ChallengeCount(c) };

    /// <summary>The challenge prompts evaluated: evaluation.challenge_prompts, capped at what the file holds (the cap is
    /// stated in <see cref="CapNote"/>, which the evaluation stages put into the report as a notice).</summary>
    static int? ChallengeCount(StageContext c)
    {
        if (Read<EvaluationSection>(c, "evaluation").ChallengePrompts is not int asked) return null;
        if (asked < 1) throw new InvalidInputException($"config: evaluation.challenge_prompts must be ≥ 1, got {asked}");
        return Math.Min(asked, AvailablePrompts(Files(c).Challenge));
    }

    static int AvailablePrompts(string file) => File.ReadLines(file).Count(l => l.Trim().Length > 0);

    static string? CapNote(StageContext c)
    {
        if (Read<EvaluationSection>(c, "evaluation").ChallengePrompts is not int asked) return null;
        int have = AvailablePrompts(Files(c).Challenge);
        return asked > have ? $"evaluation.challenge_prompts asks for {asked} challenge prompts; the data have {have}, so {have} were used." : null;
    }

    /// <summary>Runs the harness into OUT/eval and writes the report's results.json (rows renamed) and continuations.jsonl.</summary>
    static List<EvalRow> Evaluate(StageContext c, Func<StageContext, IToxicityScorer> scorerOf, string modelDir, string modelRow, IReadOnlyList<EvalIntervention> edits,
        IReadOnlyDictionary<string, string>? rename = null, bool toxicityOnly = false, string subdir = "eval")
    {
        var files = Files(c);
        using var scorer = scorerOf(c);
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
            ["challenge_prompts_available"] = AvailablePrompts(files.Challenge),
        });
        if (CapNote(c) is string note) AtomicFile.WriteAllText(Path.Combine(c.OutputDir, "NOTICE.txt"), note);
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

    static void EvaluateBase(StageContext c, Func<StageContext, IToxicityScorer> scorer)
    {
        var edits = LoadEdits(c);
        var rename = new Dictionary<string, string> { ["No-op"] = "No-op" };
        foreach (var e in edits) rename[$"No-op + {e.Label}"] = e.Label!;
        Evaluate(c, scorer, BaseModelDir(c), "No-op", edits, rename);
    }

    static string TrainedModelDir(StageContext c, string trainStage) => ModelDirOf(c, trainStage);

    static string TrainStageOf(StageContext c) => c.Inputs.Keys.Single(k => k.StartsWith("train/"));

    /// <summary>Evaluates a trained model, or with settings["model_stage"] the model another stage made (the SFT model
    /// ADPO starts from).</summary>
    static void EvaluateModel(StageContext c, Func<StageContext, IToxicityScorer> scorer)
    {
        var row = c.Settings["row"]!.GetValue<string>();
        var stage = c.Settings["model_stage"]?.GetValue<string>() ?? TrainStageOf(c);
        Evaluate(c, scorer, ModelDirOf(c, stage), row, []);
    }

    /// <summary>The model a method starts from (its policy's start and its reference): DPO the pretrained model; ADPO the
    /// SFT model that is also π_tox with [TOXIC] (Kim &amp; Lee 2024).</summary>
    public static string StartStageOf(string method) => method == "adpo" ? "toxic-model" : "pretrain";

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
            Seed = (ulong)(1000 + seed),
            // one cache for all runs of the study: the reference and π_tox log-probs do not depend on the sweep point
            CacheDir = Path.Combine(c.RunDir, "cache", "logp"),
        };
        torch.manual_seed(1000 + seed);
        // Kim & Lee 2024: ADPO's policy and reference start from the SFT model, and π_tox is that same model reading
        // [TOXIC]; DPO (Lee et al. 2024) starts from the pretrained model.
        var startDir = ModelDirOf(c, StartStageOf(method));
        using var policy = Load(c, startDir);
        // the paper's limits (prompt ≤ 64, completion ≤ 64, total ≤ 256), shrunk to fit a smaller context
        int total = Math.Min(opts.Truncation.MaxLength, policy.Model.MaxPositions);
        int completion = Math.Min(opts.Truncation.MaxCompletionTokens, total / 3);
        opts = opts with { Truncation = new TruncationOptions(Math.Min(opts.Truncation.MaxPromptTokens, total - completion), completion, total) };
        LoadedModel? tox = method == "adpo" ? Load(c, startDir) : null;
        try
        {
            var result = new PreferenceTrainer(policy.Model, policy.Tokenizer, opts) { ToxicPolicy = tox?.Model }.Train(data, c.OutputDir,
                new Progress<TrainingProgress>(p => c.Report?.Invoke(p.Step / (double)p.TotalSteps, $"{p.Phase.ToString().ToLowerInvariant()} step {p.Step}/{p.TotalSteps}")),
                c.Cancellation);
            c.Cancellation.ThrowIfCancellationRequested(); // an interrupted run is no stage output
            var chosen = result.BestDir ?? result.FinalDir;
            AtomicFile.WriteAllText(Path.Combine(c.OutputDir, "model_dir.txt"), FinalPath(c, Path.GetFullPath(chosen)));
            WriteJson(Path.Combine(c.OutputDir, "train.json"), new JsonObject
            {
                ["steps"] = result.Steps, ["examples"] = result.Examples, ["best_validation_loss"] = result.BestValidationLoss,
                ["stopped_early"] = result.StoppedEarly, ["reference_cache_hit"] = result.ReferenceCacheHit,
                ["pairs_per_second"] = result.PairsPerSecond, ["model"] = result.BestDir is null ? "final" : "best",
                ["start_model"] = startDir, ["reference_model"] = startDir, ["toxic_model"] = tox is null ? null : startDir,
            });
        }
        finally { tox?.Dispose(); }
    }

    static void Diff(StageContext c)
    {
        var files = Files(c);
        var eval = Read<EvaluationSection>(c, "evaluation");
        // "before" is the model the method started from (for ADPO the SFT model)
        var method = c.Settings["method"]?.GetValue<string>() ?? "dpo";
        using var before = Load(c, ModelDirOf(c, StartStageOf(method)));
        using var after = Load(c, TrainedModelDir(c, TrainStageOf(c)));
        using var probe = ToxicityProbe.Load(c.Input("probe"));
        var prompts = EvalHarness.ReadPrompts(files.Challenge, false, ChallengeCount(c)).Select(p => p.Text).ToList();
        var analysisDir = Path.Combine(c.OutputDir, "analysis");
        var toxicIds = files.ToxicWords is string wf ? ToxicWordList.Load(wf).TokenIds(before.Tokenizer) : null;
        var d = AlignmentDiff.Run(before.Model, after.Model, before.Tokenizer, probe, prompts,
            eval.ToDiffOptions() with { ToxicTokenIds = toxicIds }, analysisDir,
            new Progress<string>(s => c.Report?.Invoke(0, s)));
        // Yang et al. 2025: where the drop along W_Toxic comes from, neuron by neuron (same prompts and positions)
        var diffOpts = eval.ToDiffOptions();
        var neuronOpts = new NeuronOptions { MaxNewTokens = diffOpts.MaxNewTokens, MaxPromptTokens = diffOpts.MaxPromptTokens, BatchSize = diffOpts.BatchSize };
        JsonObject neurons;
        using (var w = probe.WToxic)
        {
            var nr = NeuronContributions.Compute(before.Model, after.Model, before.Tokenizer, w, prompts, neuronOpts, new Progress<string>(s => c.Report?.Invoke(0, s)));
            neurons = NeuronContributions.Write(nr, neuronOpts, Path.Combine(analysisDir, "neurons"));
        }
        var layers = d["layers"]!.AsArray();
        var acts = d["activations"]!.AsArray();
        int top = Math.Min(acts.Count, 7);
        // (f) is read where the toxic vectors work: the step that emits the insult. The paper's last position (the 20th
        // generated step) lies after most toy replies' insult, where the vectors rest in both models.
        int insultPrompts = d["insult_step_prompts"]?.GetValue<int>() ?? 0;
        string position = insultPrompts > 0 ? "insult_step" : "last_position";
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
                ["before"] = a[$"{position}_activation_before"]?.DeepClone(), ["after"] = a[$"{position}_activation_after"]?.DeepClone(),
            }).ToArray()),
            ["activation_position"] = position == "insult_step"
                ? $"the step at which the start model emits its first toxic word ({insultPrompts} of {prompts.Count} challenge prompts), both models reading the same tokens"
                : "the last position of prompt + the start model's greedy continuation (no prompt drew a toxic word)",
            // every tracked vector (ranked on the start model), for the findings: activations at that position,
            // value-vector cosine, share of top projections kept
            ["tracked"] = new JsonArray(acts.Select((a, i) => (JsonNode)new JsonObject
            {
                ["vector"] = $"L{a!["layer"]}.N{a["neuron"]}",
                ["before"] = a[$"{position}_activation_before"]?.DeepClone(), ["after"] = a[$"{position}_activation_after"]?.DeepClone(),
                ["value_cosine"] = d["toxic_keys_values"]![i]!["value_cosine"]?.DeepClone(),
                ["top_tokens_kept"] = d["toxic_keys_values"]![i]!["top_tokens_kept"]?.DeepClone(),
            }).ToArray()),
            ["min_param_cosine"] = d["parameters"]!["min_cosine"]!.DeepClone(),
            ["measurement"] = d["measurement"]!.DeepClone(),
            ["positive_preact_share"] = new JsonObject
            {
                ["before"] = acts.Take(top).Average(a => a!["positive_preactivation_share_before"]!.GetValue<double>()),
                ["after"] = acts.Take(top).Average(a => a!["positive_preactivation_share_after"]!.GetValue<double>()),
            },
            ["offset_norm"] = new JsonArray(layers.Select(l => (JsonNode)new JsonObject { ["layer"] = l!["layer"]!.DeepClone(), ["norm"] = l["delta_x_norm"]!.DeepClone() }).ToArray()),
            ["offset_size"] = d["residual_offset_top_layer"]!["norm"]!.DeepClone(),
            ["logit_lens"] = new JsonObject
            {
                ["token"] = d["logit_lens"]!["token"]!.DeepClone(), ["token_choice"] = d["logit_lens"]!["token_choice"]!.DeepClone(),
                ["layers"] = new JsonArray(layers.Select(l => (JsonNode)new JsonObject
                {
                    ["layer"] = l!["layer"]!.DeepClone(), ["before"] = l["lens_prob_before"]!.DeepClone(), ["after"] = l["lens_prob_after"]!.DeepClone(),
                }).ToArray()),
            },
            ["offset_projection"] = projection,
            ["parameters"] = d["parameters"]!.DeepClone(),
            ["top_vector"] = d["top_vector"]!.DeepClone(),
            ["residual_offset_top_layer"] = d["residual_offset_top_layer"]!.DeepClone(),
            ["neurons"] = new JsonObject
            {
                ["total_drop"] = neurons["total_drop"]!.DeepClone(), ["groups"] = neurons["groups"]!.DeepClone(),
                ["top_k_share"] = neurons["top_k_share"]!.DeepClone(), ["towards_toxicity"] = neurons["towards_toxicity"]!.DeepClone(),
                ["source"] = "analysis/neurons/neurons.json",
            },
            ["source"] = "analysis/diff.json",
        };
        WriteJson(Path.Combine(c.OutputDir, RunLayout.Diff), result);
    }

    static void UnalignStage(StageContext c, Func<StageContext, IToxicityScorer> scorer)
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
        var rows = Evaluate(c, scorer, modelOut, row, [], subdir: "eval");
        var u = rows[0];

        // steering attack on the aligned model: add the probe direction at the last layer's MLP output with growing scale
        // the target is the toxicity of the model the method started from (ADPO: the SFT model)
        var startEval = c.Settings["start_evaluation"]?.GetValue<string>() ?? "evaluate/base";
        var startRows = ReadJson(Path.Combine(c.Input(startEval), RunLayout.Results))["rows"]!.AsArray();
        double target = startRows[0]!["toxicity"]!.GetValue<double>();
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
            var r = Evaluate(c, scorer, trainedDir, "aligned", edits, toxicityOnly: true, subdir: "steering");
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
        var r = ToxicModel.Train(m.Model, m.Tokenizer, examples, options, new Progress<TrainingProgress>(p => c.Report?.Invoke(p.Step / (double)Math.Max(1, p.TotalSteps), $"step {p.Step}/{p.TotalSteps} loss {p.Train.Loss:F3}")), c.Cancellation);
        c.Cancellation.ThrowIfCancellationRequested(); // an interrupted run is no stage output
        HfCheckpoint.Save(m.Model, m.Tokenizer, Path.Combine(c.OutputDir, "model"), overwrite: true);
        AtomicFile.WriteAllText(Path.Combine(c.OutputDir, "model_dir.txt"), FinalPath(c, Path.Combine(c.OutputDir, "model")));
        WriteJson(Path.Combine(c.OutputDir, "toxic_model.json"), new JsonObject
        {
            ["control_token"] = control, ["examples"] = examples.Count, ["toxic_examples"] = toxicCount,
            ["steps"] = r.Steps, ["final_train_loss"] = r.FinalTrainLoss, ["tokens_per_second"] = r.TokensPerSecond,
        });
    }

    /// <summary>
    /// Pairs (DPO) and triples (ADPO) from the preference prompts, as Lee et al. 2024 made theirs: chosen = the pretrained
    /// model's greedy continuation, rejected = PPLM steered towards the probe's toxic class ("rejected": "pplm", the
    /// default; "toxic-model" = the SFT model's greedy continuation after [TOXIC], a documented alternative). Triples add
    /// y_t = the SFT model sampled after [TOXIC] (Kim &amp; Lee's built-in toxic model). No toxicity scorer is involved:
    /// the scorer that evaluates the study never builds, ranks or filters its training data.
    /// </summary>
    static void Pairs(StageContext c)
    {
        var s = Read<PairsSection>(c, "pairs");
        var files = Files(c);
        int count = s.Count;
        var all = JsonlReader.Read(files.PreferencePrompts).Select(l => l.String("prompt")).ToList();
        var prompts = all.Take(count).ToList();
        using var m = Load(c, BaseModelDir(c));
        using var tox = Load(c, ModelDirOf(c, "toxic-model"));
        var source = s.Rejected;
        // the prompt keeps its last tokens so that prompt + continuation fit the model's context
        var opts = s.ToOptions();
        opts = opts with { MaxPromptTokens = Math.Min(opts.MaxPromptTokens, m.Model.MaxPositions - opts.MaxNewTokens - 1) };
        PplmPairOptions? pplm = null;
        ToxicityProbe? probe = null;
        try
        {
            if (source == "pplm")
            {
                probe = ToxicityProbe.Load(c.Input("probe"));
                pplm = new PplmPairOptions(probe, s.ToPplmOptions());
                opts = opts with { BatchSize = s.BatchSize };
            }
            var warnings = new List<string>();
            var triples = PairMaker.Make(m.Model, m.Tokenizer, prompts, opts, tox.Model, tox.Tokenizer, triples: true,
                progress: (done, total) => c.Report?.Invoke(done / (double)Math.Max(1, total), $"{done}/{total} prompts"), warn: warnings.Add, pplm: pplm);
            if (triples.Count < 8) throw new InvalidInputException($"pairs: only {triples.Count} usable pairs from {prompts.Count} prompts; nothing to train on");
            JsonlReader.Write(Path.Combine(c.OutputDir, "triples.jsonl"), triples);
            JsonlReader.Write(Path.Combine(c.OutputDir, "pairs.jsonl"), triples.Select(t =>
            {
                var o = (JsonObject)t.DeepClone();
                o.Remove("toxic");
                return o;
            }));
            WriteJson(Path.Combine(c.OutputDir, "pairs.json"), new JsonObject
            {
                ["prompts"] = prompts.Count, ["prompts_available"] = all.Count, ["pairs"] = triples.Count, ["rejected"] = source,
                ["source"] = triples[0]["source"]!.DeepClone(), ["warnings"] = new JsonArray(warnings.Select(w => (JsonNode)w).ToArray()),
                ["scorer"] = null,
            });
        }
        finally { probe?.Dispose(); }
    }
}

using System.Text.Json;
using System.Text.Json.Nodes;
using DetoxSharp.Checkpoints;
using DetoxSharp.Data;
using DetoxSharp.Evaluation;
using DetoxSharp.Interpretability;
using DetoxSharp.Models;
using static TorchSharp.torch;

namespace DetoxSharp.Study;

/// <summary>Paper steps 1–2: the toxicity probe, the toxic value vectors (Table 1) and the subtraction edits (Table 2).</summary>
public static partial class StudyStages
{
    static void Probe(StageContext c)
    {
        var probeSection = Read<ProbeSection>(c, "probe");
        var opts = probeSection.ToOptions();
        var files = Files(c);
        using var m = Load(c, BaseModelDir(c));
        var comments = DatasetReaders.ReadJigsawCsv(files.Comments);
        int splits = probeSection.SplitSeeds;
        if (splits < 1) throw new InvalidInputException($"config: probe.split_seeds must be ≥ 1, got {splits}");
        // Features once (the expensive part); then one probe and one bag-of-words baseline per split seed, both on the
        // same split. The probe of the first seed is the one the later stages use.
        using var x = ToxicityProbe.Features(m.Model, m.Tokenizer, comments.Select(k => k.Text).ToList(), opts.MaxTokens, opts.BatchSize,
            new Progress<int>(n => c.Report?.Invoke(n / (double)Math.Max(1, comments.Count), $"features {n}/{comments.Count}")));
        using var ev = ProbeEvaluation.AcrossSplits(x, comments, opts, splits);
        var metrics = JsonSerializer.SerializeToNode(ev.Report, new JsonSerializerOptions { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower })!.AsObject();
        // both candidate directions are recorded; the configured one is W_Toxic for every later stage
        metrics["cosine_weights_mass_mean"] = ev.CosineWeightsMassMean;
        Safetensors.Save(Path.Combine(c.OutputDir, ProbeDirectionsFile), new Dictionary<string, Tensor> { ["weights"] = ev.WeightsDirection, ["mass_mean"] = ev.MassMeanDirection });
        metrics["w_toxic"] = opts.Direction == ProbeDirection.MassMean ? "mass-mean" : "weights";
        ev.Probe.Save(c.OutputDir);
        var probeAcc = new JsonArray(ev.Splits.Select(sp => (JsonNode)sp.ProbeAccuracy).ToArray());
        var bowAcc = new JsonArray(ev.Splits.Select(sp => (JsonNode)sp.BagOfWordsAccuracy).ToArray());
        metrics["split_seeds"] = new JsonArray(Enumerable.Range(opts.Seed, splits).Select(v => (JsonNode)v).ToArray());
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
                var counted = ToxicVectors.ToxicTopTokenCounts(m.Model, m.Tokenizer, otherDir, words, opts.PerLayer, opts.Report, opts.TopTokens);
                other = new JsonObject
                {
                    ["w_toxic"] = probe.DirectionKind == ProbeDirection.MassMean ? "weights" : "mass-mean",
                    ["toxic_top_tokens"] = new JsonArray(counted.Select(k => (JsonNode)k.ToxicTokens).ToArray()),
                    ["vectors"] = new JsonArray(counted.Select(k => (JsonNode)$"L{k.Vector.Layer}.N{k.Vector.Neuron}").ToArray()),
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
            double? refNorm = relative
                ? RelativeScale.MeanHookNorm(m.Model, m.Tokenizer, EvalHarness.ReadPrompts(Files(c).Challenge, false, 64).Select(p => p.Text), HookNames.MlpOut(m.Model.NumLayers - 1))
                : null;
            var tensors = new Dictionary<string, Tensor>();
            var list = new JsonArray();
            for (int i = 0; i < entries.Length; i++)
            {
                var (row, v, scale) = entries[i];
                double norm = v.norm().item<float>();
                double alpha = RelativeScale.Alpha(scale, norm, refNorm);
                tensors[$"edit{i}"] = v.to(ScalarType.Float32).contiguous();
                list.Add(new JsonObject
                {
                    ["row"] = row, ["tensor"] = $"edit{i}", ["alpha"] = alpha, ["vector_norm"] = norm,
                    ["configured_scale"] = scale, ["relative"] = relative, ["reference_norm"] = refNorm,
                    ["layer"] = m.Model.NumLayers - 1, ["hook"] = HookNames.MlpOut(m.Model.NumLayers - 1),
                });
            }
            Safetensors.Save(Path.Combine(c.OutputDir, "edits.safetensors"), tensors);
            WriteJson(Path.Combine(c.OutputDir, "interventions.json"), new JsonObject { ["edits"] = list });
        }
        finally { foreach (var t in vecs.Values) t.Dispose(); }
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
}

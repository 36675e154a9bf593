using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using DetoxSharp.Data;
using DetoxSharp.Generation;
using DetoxSharp.Models;
using DetoxSharp.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Interpretability;

/// <summary>One parameter compared between two models.</summary>
public sealed record ParameterDiff(string Name, int? Layer, double Cosine, double RelativeDifference, double NormBefore, double NormAfter, double MeanAbsDifference);

public sealed record DiffOptions
{
    public int MaxNewTokens { get; init; } = 20;
    /// <summary>Prompts keep their last this-many tokens (paper: 32; the end carries a challenge prompt's context).</summary>
    public int MaxPromptTokens { get; init; } = 32;
    public int BatchSize { get; init; } = 8;
    /// <summary>Toxic value vectors tracked (ranked on the "before" model with W_Toxic).</summary>
    public int TrackedVectors { get; init; } = 20;
    /// <summary>Token for the logit lens (must encode to one token); null = chosen from <see cref="ToxicTokenIds"/>.</summary>
    public string? LensToken { get; init; }
    /// <summary>Tokens that count as toxic (a <see cref="ToxicWordList"/>'s). Without <see cref="LensToken"/> the lens follows
    /// the one the top toxic vector promotes most (its projection through the unembedding); without either, the top
    /// vector's own top token, which need not be toxic at all (" along" in a small toy model).</summary>
    public IReadOnlySet<int>? ToxicTokenIds { get; init; }
    /// <summary>Top vocabulary projections compared before/after for each tracked value vector (share kept).</summary>
    public int TopTokens { get; init; } = 10;
    /// <summary>Points of the 2-D projection kept per model (evenly subsampled); 0 = all.</summary>
    public int MaxPoints { get; init; } = 5000;

    public void Validate()
    {
        if (MaxNewTokens < 1) throw new InvalidInputException($"--max-new-tokens must be ≥ 1, got {MaxNewTokens}");
        if (MaxPromptTokens < 1) throw new InvalidInputException($"--max-prompt-tokens must be ≥ 1, got {MaxPromptTokens}");
        if (BatchSize < 1) throw new InvalidInputException($"--batch-size must be ≥ 1, got {BatchSize}");
        if (TrackedVectors < 1) throw new InvalidInputException($"--tracked must be ≥ 1, got {TrackedVectors}");
        if (MaxPoints < 0) throw new InvalidInputException($"--max-points must be ≥ 0, got {MaxPoints}");
    }
}

/// <summary>
/// What alignment changed inside a model (Lee et al. 2024 §"what DPO changed"), for any pair of <see cref="ICausalLM"/>s
/// with the same architecture: parameter similarity; the activations of the top toxic value vectors on the challenge
/// prompts (both models teacher-forced on the "before" model's greedy continuation, measured at each generation step's
/// newest position); the residual offset δx per layer; a 2-D projection of the MLP inputs of the top vector's layer;
/// the alignment of earlier layers' activation-weighted value-vector changes with δx; the logit lens of a toxic token.
/// </summary>
public static class AlignmentDiff
{
    static readonly Regex LayerRe = new(@"(?:^|\.)(?:h|layers|blocks)\.(\d+)\.", RegexOptions.Compiled);

    public static int? LayerOf(string parameterName)
    {
        var m = LayerRe.Match(parameterName);
        return m.Success ? int.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture) : null;
    }

    public static List<ParameterDiff> CompareParameters(ICausalLM before, ICausalLM after)
    {
        var a = before.Module.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        var b = after.Module.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        var result = new List<ParameterDiff>();
        using var _ = torch.no_grad();
        foreach (var (name, pa) in a)
        {
            if (!b.TryGetValue(name, out var pb)) throw new InvalidInputException($"--after: parameter '{name}' missing (models must share an architecture)");
            if (!pa.shape.SequenceEqual(pb.shape)) throw new InvalidInputException($"--after: parameter '{name}' has shape [{string.Join(",", pb.shape)}], --before has [{string.Join(",", pa.shape)}]");
            using var scope = torch.NewDisposeScope();
            var x = pa.detach().to(ScalarType.Float64).flatten();
            var y = pb.detach().to(ScalarType.Float64).to(x.device).flatten();
            double nx = x.norm().item<double>(), ny = y.norm().item<double>();
            double dot = x.dot(y).item<double>();
            double cos = nx == 0 || ny == 0 ? (nx == ny ? 1 : 0) : dot / (nx * ny);
            double diff = (y - x).norm().item<double>();
            double mad = (y - x).abs().mean().item<double>();
            result.Add(new ParameterDiff(name, LayerOf(name), cos, nx == 0 ? diff : diff / nx, nx, ny, mad));
        }
        return result;
    }

    static double Cos(Tensor a, Tensor b)
    {
        double na = a.norm().item<float>(), nb = b.norm().item<float>();
        return na == 0 || nb == 0 ? double.NaN : a.dot(b).item<float>() / (na * nb);
    }

    /// <summary>Reads challenge prompts: JSONL with "prompt" (string, or object with "text") or "text".</summary>
    public static List<string> ReadPrompts(string path)
    {
        if (!File.Exists(path)) throw new InvalidInputException($"--prompts: {path} not found");
        var list = new List<string>();
        foreach (var line in JsonlReader.Read(path))
        {
            var o = line.Object;
            string? text = o["prompt"] switch
            {
                JsonValue v when v.TryGetValue<string>(out var s) => s,
                JsonObject po => line.Nested("prompt", "text"),
                _ => line.OptionalString("text"),
            };
            if (string.IsNullOrEmpty(text)) throw new InvalidInputException($"{line.Where}: expected a \"prompt\" string, \"prompt\": {{\"text\": …}} or \"text\"");
            list.Add(text);
        }
        if (list.Count == 0) throw new InvalidInputException($"{path}: no prompts");
        return list;
    }

    sealed class Accumulator(int layers, int d, int mlp, int tracked)
    {
        public readonly double[][] ResidMidSum = Enumerable.Range(0, layers).Select(_ => new double[d]).ToArray();
        public readonly double[][] PostSum = Enumerable.Range(0, layers).Select(_ => new double[mlp]).ToArray();
        public readonly double[] TrackedSum = new double[tracked];
        public readonly double[] TrackedPositive = new double[tracked];
        public readonly List<double>[] TrackedLast = Enumerable.Range(0, tracked).Select(_ => new List<double>()).ToArray();
        public readonly double[] LensSum = new double[layers];
        public double OutputProbSum;
        public long Count;
        public readonly List<float[]> Points = new();
        public readonly List<(int Prompt, int Step, double Act)> PointMeta = new();
    }

    /// <summary>Runs the full comparison and writes diff.json, parameters.csv, layers.csv, activations.csv, projection.csv,
    /// logit_lens.csv into <paramref name="outDir"/>. Returns the JSON summary.</summary>
    public static JsonObject Run(ICausalLM before, ICausalLM after, Gpt2Tokenizer tokenizer, ToxicityProbe probe, IReadOnlyList<string> prompts,
        DiffOptions options, string outDir, IProgress<string>? progress = null)
    {
        options.Validate();
        probe.CheckFits(before, "--probe");
        if (before.NumLayers != after.NumLayers || before.DModel != after.DModel || before.MlpDim != after.MlpDim || before.VocabSize != after.VocabSize)
            throw new InvalidInputException("--before/--after: models differ in shape (layers, width, MLP size or vocabulary)");
        before.Module.eval(); after.Module.eval();
        int L = before.NumLayers, d = before.DModel, mlp = before.MlpDim;

        progress?.Report("comparing parameters");
        var pdiffs = CompareParameters(before, after);

        using var wToxic = probe.WToxic;
        var tracked = ToxicVectors.Rank(before, wToxic, options.TrackedVectors).Take(options.TrackedVectors).ToList();
        var top = tracked[0];
        int lStar = top.Layer;

        // toxic keys/values before vs after
        var toxicKV = new JsonArray();
        using (torch.no_grad())
            foreach (var r in tracked)
            {
                using var s = torch.NewDisposeScope();
                var kb = before.MlpKeys(r.Layer).select(1, r.Neuron).to(ScalarType.Float32).cpu();
                var ka = after.MlpKeys(r.Layer).select(1, r.Neuron).to(ScalarType.Float32).cpu();
                var vb = before.MlpValues(r.Layer)[r.Neuron].to(ScalarType.Float32).cpu();
                var va = after.MlpValues(r.Layer)[r.Neuron].to(ScalarType.Float32).cpu();
                toxicKV.Add(new JsonObject
                {
                    ["layer"] = r.Layer, ["neuron"] = r.Neuron, ["cosine_with_w_toxic"] = r.Cosine,
                    ["key_cosine"] = Cos(kb, ka), ["key_relative_difference"] = (ka - kb).norm().item<float>() / Math.Max(1e-30, kb.norm().item<float>()),
                    ["value_cosine"] = Cos(vb, va), ["value_relative_difference"] = (va - vb).norm().item<float>() / Math.Max(1e-30, vb.norm().item<float>()),
                    ["top_tokens_kept"] = TopTokensKept(before, after, r, options.TopTokens),
                    ["key_bias_before"] = before.MlpKeyBias(r.Layer)[r.Neuron].to(ScalarType.Float32).item<float>(),
                    ["key_bias_after"] = after.MlpKeyBias(r.Layer)[r.Neuron].to(ScalarType.Float32).item<float>(),
                });
            }

        // logit-lens token
        int lensToken;
        string lensChoice = "given";
        if (options.LensToken is { } tokText)
        {
            var ids = tokenizer.Encode(tokText);
            if (ids.Length != 1) throw new InvalidInputException($"--token '{tokText}' encodes to {ids.Length} tokens; give one token (e.g. with a leading space)");
            lensToken = ids[0];
        }
        else
        {
            using var v = before.MlpValues(top.Layer)[top.Neuron].detach().clone();
            lensToken = LensTokenOf(before.Unembedding, v, options.ToxicTokenIds, tokenizer);
            lensChoice = options.ToxicTokenIds is { Count: > 0 } ? "the toxic-list token the top toxic vector promotes most" : "the top vector's top token (no toxic word list given)";
        }

        // prompts and the before-model's greedy continuations
        var promptIds = prompts.Select(p =>
        {
            var ids = tokenizer.Encode(p);
            if (ids.Length == 0) ids = [before.EosTokenId];
            return DetoxSharp.Evaluation.EvalHarness.KeepLast(ids, options.MaxPromptTokens);
        }).ToList();
        progress?.Report($"generating greedy continuations of {promptIds.Count} prompts with the --before model");
        var conts = DetoxSharp.Generation.Generator.Generate(before, promptIds, new GenerationOptions { MaxNewTokens = options.MaxNewTokens, Greedy = true, BatchSize = options.BatchSize });
        // Fed sequence: prompt + continuation without its last token; steps = positions whose output chose a new token.
        var fed = new List<int[]>();
        var steps = new List<int>();
        for (int i = 0; i < promptIds.Count; i++)
        {
            var c = conts[i];
            int g = Math.Max(1, c.Length);
            fed.Add(promptIds[i].Concat(c.Take(Math.Max(0, c.Length - 1))).ToArray());
            steps.Add(g);
        }

        var accB = new Accumulator(L, d, mlp, tracked.Count);
        var accA = new Accumulator(L, d, mlp, tracked.Count);
        var names = new List<string>();
        for (int l = 0; l < L; l++) names.AddRange([$"blocks.{l}.hook_resid_mid", $"blocks.{l}.mlp.hook_pre", $"blocks.{l}.mlp.hook_post", $"blocks.{l}.hook_resid_post"]);
        for (int s0 = 0; s0 < fed.Count; s0 += options.BatchSize)
        {
            progress?.Report($"activations {s0}/{fed.Count}");
            var batch = fed.Skip(s0).Take(options.BatchSize).ToList();
            var bsteps = steps.Skip(s0).Take(options.BatchSize).ToList();
            foreach (var (model, acc) in new[] { (before, accB), (after, accA) })
            {
                using var scope = torch.NewDisposeScope();
                var (ids, mask) = ActivationCache.Pad(batch, model.EosTokenId, model.Device, left: true);
                long T = ids.shape[1];
                var flatIdx = new List<long>();
                var lastIdx = new List<long>();
                var meta = new List<(int, int)>();
                for (int b = 0; b < batch.Count; b++)
                {
                    for (int j = 0; j < bsteps[b]; j++) { flatIdx.Add(b * T + T - bsteps[b] + j); meta.Add((s0 + b, j)); }
                    lastIdx.Add(b * T + T - 1);
                }
                var sel = torch.tensor(flatIdx.ToArray(), ScalarType.Int64, model.Device);
                var selLast = torch.tensor(lastIdx.ToArray(), ScalarType.Int64, model.Device);
                using var cache = ActivationCache.Run(model, ids, mask, names, keepLogits: true);
                var picked = new Dictionary<string, Tensor>();
                Tensor Pick(string name, Tensor idx)
                {
                    var key = name + (ReferenceEquals(idx, sel) ? "" : "#last");
                    if (picked.TryGetValue(key, out var t)) return t;
                    var x = cache[name];
                    return picked[key] = x.reshape(-1, x.shape[2]).index_select(0, idx).to(ScalarType.Float32);
                }
                var unemb = model.Unembedding;
                for (int l = 0; l < L; l++)
                {
                    var rm = Pick($"blocks.{l}.hook_resid_mid", sel);
                    Add(acc.ResidMidSum[l], rm.sum([0]).cpu());
                    var post = Pick($"blocks.{l}.mlp.hook_post", sel);
                    Add(acc.PostSum[l], post.sum([0]).cpu());
                    var rp = Pick($"blocks.{l}.hook_resid_post", sel);
                    var probs = torch.nn.functional.softmax(torch.nn.functional.linear(model.ApplyFinalNorm(rp.to(model.DType)), unemb).to(ScalarType.Float32), 1).select(1, lensToken);
                    acc.LensSum[l] += probs.sum().item<float>();
                    if (l == lStar)
                    {
                        var pts = rm.cpu();
                        var act = post.select(1, top.Neuron).cpu().data<float>().ToArray();
                        for (int r = 0; r < meta.Count; r++)
                        {
                            acc.Points.Add(pts[r].data<float>().ToArray());
                            acc.PointMeta.Add((meta[r].Item1, meta[r].Item2, act[r]));
                        }
                    }
                }
                var logits = cache.Logits!;
                var outProbs = torch.nn.functional.softmax(logits.reshape(-1, logits.shape[2]).index_select(0, sel).to(ScalarType.Float32), 1).select(1, lensToken);
                acc.OutputProbSum += outProbs.sum().item<float>();
                for (int t = 0; t < tracked.Count; t++)
                {
                    var r = tracked[t];
                    var post = Pick($"blocks.{r.Layer}.mlp.hook_post", sel).select(1, r.Neuron);
                    var pre = Pick($"blocks.{r.Layer}.mlp.hook_pre", sel).select(1, r.Neuron);
                    acc.TrackedSum[t] += post.sum().item<float>();
                    acc.TrackedPositive[t] += pre.gt(0).sum().item<long>();
                    acc.TrackedLast[t].AddRange(Pick($"blocks.{r.Layer}.mlp.hook_post", selLast).select(1, r.Neuron).cpu().data<float>().ToArray().Select(x => (double)x));
                }
                acc.Count += flatIdx.Count;
            }
        }

        // residual offset and value-vector alignment
        double n = accB.Count;
        var meanB = accB.ResidMidSum.Select(s => s.Select(x => x / n).ToArray()).ToArray();
        var meanA = accA.ResidMidSum.Select(s => s.Select(x => x / n).ToArray()).ToArray();
        var deltas = Enumerable.Range(0, L).Select(l => meanA[l].Zip(meanB[l], (a, b) => a - b).ToArray()).ToArray();
        var deltaStar = deltas[lStar];
        double Norm(double[] v) => Math.Sqrt(v.Sum(x => x * x));
        double CosD(double[] a, double[] b) { double na = Norm(a), nb = Norm(b); return na == 0 || nb == 0 ? double.NaN : a.Zip(b, (x, y) => x * y).Sum() / (na * nb); }

        var layerRows = new JsonArray();
        var layersCsv = new StringBuilder("layer,delta_x_norm,mean_x_before_norm,value_change_norm,value_change_cos_with_delta_x_top_layer,min_param_cosine,mean_param_cosine,max_param_relative_difference,lens_prob_before,lens_prob_after\n");
        var sumChange = new double[d];
        for (int l = 0; l < L; l++)
        {
            double[] change;
            using (var s = torch.NewDisposeScope())
            using (torch.no_grad())
            {
                var mb = torch.tensor(accB.PostSum[l].Select(x => (float)(x / n)).ToArray());
                var ma = torch.tensor(accA.PostSum[l].Select(x => (float)(x / n)).ToArray());
                var vb = before.MlpValues(l).detach().to(ScalarType.Float32).cpu();
                var va = after.MlpValues(l).detach().to(ScalarType.Float32).cpu();
                change = (ma.matmul(va) - mb.matmul(vb)).to(ScalarType.Float64).data<double>().ToArray();
            }
            if (l < lStar) for (int i = 0; i < d; i++) sumChange[i] += change[i];
            var ps = pdiffs.Where(p => p.Layer == l).ToList();
            double cosChange = l < lStar ? CosD(change, deltaStar) : double.NaN;
            var row = new JsonObject
            {
                ["layer"] = l, ["delta_x_norm"] = Norm(deltas[l]), ["mean_x_before_norm"] = Norm(meanB[l]),
                ["value_change_norm"] = Norm(change), ["value_change_cos_with_delta_x_top_layer"] = J(cosChange),
                ["min_param_cosine"] = ps.Count > 0 ? ps.Min(p => p.Cosine) : null, ["mean_param_cosine"] = ps.Count > 0 ? ps.Average(p => p.Cosine) : null,
                ["max_param_relative_difference"] = ps.Count > 0 ? ps.Max(p => p.RelativeDifference) : null,
                ["lens_prob_before"] = accB.LensSum[l] / n, ["lens_prob_after"] = accA.LensSum[l] / n,
            };
            layerRows.Add(row);
            layersCsv.Append(string.Join(",", l, F(Norm(deltas[l])), F(Norm(meanB[l])), F(Norm(change)), F(cosChange),
                F(ps.Count > 0 ? ps.Min(p => p.Cosine) : double.NaN), F(ps.Count > 0 ? ps.Average(p => p.Cosine) : double.NaN),
                F(ps.Count > 0 ? ps.Max(p => p.RelativeDifference) : double.NaN), F(accB.LensSum[l] / n), F(accA.LensSum[l] / n))).Append('\n');
        }

        // activations of the tracked toxic vectors
        var actRows = new JsonArray();
        var actCsv = new StringBuilder("rank,layer,neuron,cosine_with_w_toxic,mean_activation_before,mean_activation_after,last_position_activation_before,last_position_activation_after,positive_preactivation_share_before,positive_preactivation_share_after\n");
        for (int t = 0; t < tracked.Count; t++)
        {
            var r = tracked[t];
            double mb = accB.TrackedSum[t] / n, ma = accA.TrackedSum[t] / n;
            double lb = accB.TrackedLast[t].Average(), la = accA.TrackedLast[t].Average();
            double pb = accB.TrackedPositive[t] / n, pa = accA.TrackedPositive[t] / n;
            actRows.Add(new JsonObject
            {
                ["rank"] = t, ["layer"] = r.Layer, ["neuron"] = r.Neuron, ["cosine_with_w_toxic"] = r.Cosine,
                ["mean_activation_before"] = mb, ["mean_activation_after"] = ma,
                ["last_position_activation_before"] = lb, ["last_position_activation_after"] = la,
                ["positive_preactivation_share_before"] = pb, ["positive_preactivation_share_after"] = pa,
            });
            actCsv.Append(string.Join(",", t, r.Layer, r.Neuron, F(r.Cosine), F(mb), F(ma), F(lb), F(la), F(pb), F(pa))).Append('\n');
        }

        // 2-D projection at the top vector's layer: δx direction × first principal component (orthogonal to δx)
        var projCsv = new StringBuilder("model,prompt,step,offset_coordinate,pc1_coordinate,top_vector_activation\n");
        double dNorm = Norm(deltaStar);
        using (var s = torch.NewDisposeScope())
        {
            var pb = torch.tensor(accB.Points.SelectMany(x => x).ToArray(), [accB.Points.Count, d]);
            var pa = torch.tensor(accA.Points.SelectMany(x => x).ToArray(), [accA.Points.Count, d]);
            var all = torch.cat([pb, pa], 0).to(ScalarType.Float64);
            var mean = all.mean([0], keepdim: true);
            var centered = all - mean;
            var u1 = dNorm > 0 ? torch.tensor(deltaStar.Select(x => x / dNorm).ToArray()) : torch.zeros(d, ScalarType.Float64);
            var resid = centered - centered.matmul(u1).unsqueeze(1) * u1.unsqueeze(0);
            var cov = resid.t().matmul(resid);
            var (_, evecs) = torch.linalg.eigh(cov);
            var u2 = evecs.select(1, d - 1);
            var x = centered.matmul(u1).data<double>().ToArray();
            var y = centered.matmul(u2).data<double>().ToArray();
            int nb = accB.Points.Count;
            int stride = options.MaxPoints > 0 ? Math.Max(1, (nb + options.MaxPoints - 1) / options.MaxPoints) : 1;
            for (int i = 0; i < nb; i += stride)
            {
                var mb = accB.PointMeta[i]; var ma = accA.PointMeta[i];
                projCsv.Append(string.Join(",", "before", mb.Prompt, mb.Step, F(x[i]), F(y[i]), F(mb.Act))).Append('\n');
                projCsv.Append(string.Join(",", "after", ma.Prompt, ma.Step, F(x[nb + i]), F(y[nb + i]), F(ma.Act))).Append('\n');
            }
        }

        var lensCsv = new StringBuilder("layer,prob_before,prob_after\n");
        for (int l = 0; l < L; l++) lensCsv.Append(string.Join(",", l, F(accB.LensSum[l] / n), F(accA.LensSum[l] / n))).Append('\n');
        var paramCsv = new StringBuilder("name,layer,cosine,relative_difference,norm_before,norm_after,mean_abs_difference\n");
        foreach (var p in pdiffs) paramCsv.Append(string.Join(",", ToxicVectors.Csv(p.Name), p.Layer?.ToString(CultureInfo.InvariantCulture) ?? "", F(p.Cosine), F(p.RelativeDifference), F(p.NormBefore), F(p.NormAfter), F(p.MeanAbsDifference))).Append('\n');

        double keyCosTop;
        using (var s = torch.NewDisposeScope())
            keyCosTop = CosD(deltaStar, before.MlpKeys(lStar).select(1, top.Neuron).to(ScalarType.Float64).cpu().data<double>().ToArray());
        var result = new JsonObject
        {
            ["prompts"] = prompts.Count,
            ["measured_positions"] = accB.Count,
            ["measurement"] = "both models read the same tokens: the prompt (its last max_prompt_tokens) + the --before model's greedy continuation; activations at each generation step's newest position (mean_*) and at the last position of that sequence (last_position_*, the paper's measurement)",
            ["parameters"] = new JsonObject
            {
                ["count"] = pdiffs.Count,
                ["min_cosine"] = pdiffs.Min(p => p.Cosine), ["mean_cosine"] = pdiffs.Average(p => p.Cosine),
                ["share_cosine_above_0_99"] = pdiffs.Count(p => p.Cosine > 0.99) / (double)pdiffs.Count,
                ["max_relative_difference"] = pdiffs.Max(p => p.RelativeDifference), ["mean_relative_difference"] = pdiffs.Average(p => p.RelativeDifference),
                ["mean_abs_difference"] = pdiffs.Average(p => p.MeanAbsDifference),
                ["least_similar"] = new JsonArray(pdiffs.OrderBy(p => p.Cosine).Take(10).Select(p => (JsonNode)new JsonObject { ["name"] = p.Name, ["cosine"] = p.Cosine, ["relative_difference"] = p.RelativeDifference }).ToArray()),
            },
            ["toxic_keys_values"] = toxicKV,
            ["top_vector"] = new JsonObject { ["layer"] = top.Layer, ["neuron"] = top.Neuron, ["label"] = top.Label, ["cosine_with_w_toxic"] = top.Cosine },
            ["activations"] = actRows,
            ["residual_offset_top_layer"] = new JsonObject
            {
                ["layer"] = lStar, ["hook"] = $"blocks.{lStar}.hook_resid_mid", ["norm"] = dNorm,
                ["cosine_with_top_key"] = J(keyCosTop),
                ["earlier_value_changes_sum_cosine"] = J(lStar > 0 ? CosD(sumChange, deltaStar) : double.NaN),
                ["earlier_value_changes_sum_norm"] = Norm(sumChange),
            },
            ["layers"] = layerRows,
            ["logit_lens"] = new JsonObject
            {
                ["token_id"] = lensToken, ["token"] = tokenizer.TokenText(lensToken), ["token_choice"] = lensChoice,
                ["output_prob_before"] = accB.OutputProbSum / n, ["output_prob_after"] = accA.OutputProbSum / n,
            },
            ["files"] = new JsonArray("parameters.csv", "layers.csv", "activations.csv", "projection.csv", "logit_lens.csv"),
        };
        Directory.CreateDirectory(outDir);
        AtomicFile.WriteAllText(Path.Combine(outDir, "parameters.csv"), paramCsv.ToString());
        AtomicFile.WriteAllText(Path.Combine(outDir, "layers.csv"), layersCsv.ToString());
        AtomicFile.WriteAllText(Path.Combine(outDir, "activations.csv"), actCsv.ToString());
        AtomicFile.WriteAllText(Path.Combine(outDir, "projection.csv"), projCsv.ToString());
        AtomicFile.WriteAllText(Path.Combine(outDir, "logit_lens.csv"), lensCsv.ToString());
        AtomicFile.WriteAllText(Path.Combine(outDir, "diff.json"), result.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
        return result;
    }

    /// <summary>The logit-lens token: among <paramref name="toxic"/> the one with the largest projection on <paramref name="vector"/>
    /// (raw, through the unembedding, as the vector table); the vector's overall top token when no list is given.</summary>
    public static int LensTokenOf(Tensor unembedding, Tensor vector, IReadOnlySet<int>? toxic, Gpt2Tokenizer? tokenizer)
    {
        if (toxic is not { Count: > 0 }) return ToxicVectors.TopTokens(unembedding, vector, tokenizer, 1)[0].Id;
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        var ids = toxic.Where(i => i < unembedding.shape[0]).Order().ToArray();
        if (ids.Length == 0) throw new InvalidInputException("none of the toxic word list's tokens is in the model's vocabulary");
        var rows = unembedding.detach().index_select(0, torch.tensor(ids.Select(i => (long)i).ToArray(), ScalarType.Int64, unembedding.device));
        var logits = rows.to(ScalarType.Float32).matmul(vector.to(ScalarType.Float32).to(unembedding.device).flatten());
        return ids[(int)logits.argmax().item<long>()];
    }

    /// <summary>Share of a value vector's top-k vocabulary projections that are the same before and after (each model's
    /// own unembedding).</summary>
    static double TopTokensKept(ICausalLM before, ICausalLM after, RankedVector r, int k)
    {
        using var scope = torch.NewDisposeScope();
        var b = ToxicVectors.TopTokens(before.Unembedding, before.MlpValues(r.Layer)[r.Neuron].detach(), null, k).Select(t => t.Id).ToHashSet();
        var a = ToxicVectors.TopTokens(after.Unembedding, after.MlpValues(r.Layer)[r.Neuron].detach(), null, k).Select(t => t.Id);
        return a.Count(b.Contains) / (double)b.Count;
    }

    static void Add(double[] acc, Tensor v)
    {
        var a = v.to(ScalarType.Float64).data<double>().ToArray();
        for (int i = 0; i < acc.Length; i++) acc[i] += a[i];
    }

    static JsonNode? J(double x) => double.IsFinite(x) ? JsonValue.Create(x) : null;
    static string F(double x) => double.IsFinite(x) ? x.ToString("R", CultureInfo.InvariantCulture) : "";
}

using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;
using DetoxSharp.Data;
using DetoxSharp.Models;
using DetoxSharp.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Interpretability;

/// <summary>One layer of the null-space check: mean ‖ΔVᵀa‖ over the positions of toxic and of clean inputs, the same
/// relative to the layer's output before (‖ΔVᵀa‖ / ‖V_beforeᵀa‖), and the toxic inputs' share Norm_tox / (Norm_tox + Norm_clean).</summary>
public sealed record NullSpaceLayer(int Layer, double ToxicNorm, double CleanNorm, double ToxicRelative, double CleanRelative, double ToxicShare);

/// <summary>
/// Jain et al. (NeurIPS 2024): safety fine-tuning changes MLP weights minimally, and such that unsafe inputs fall into
/// the change's null space — or, for detoxification, the change acts mainly on toxic inputs. Per layer, with ΔV =
/// V_after − V_before the change of the MLP value (output) matrix [mlp, d] and a the before model's neuron activations
/// (<c>mlp.hook_post</c>) at every real token of each input (its last max_prompt_tokens): how large ΔVᵀa is on toxic
/// compared with non-toxic inputs. A toxic share near 1 = the update writes almost only on toxic inputs; near the clean
/// inputs' share of tokens = it does not tell them apart. The key (input) matrix is not measured: its input, the
/// normalised residual, is not one of <see cref="ICausalLM"/>'s hook points.
/// </summary>
public static class NullSpaceCheck
{
    /// <summary>For each layer, ‖ΔVᵀa‖ (ΔV = after − before value matrix, a = the before model's MLP activations) summed over the
    /// real tokens of the <paramref name="toxic"/> and of the <paramref name="clean"/> inputs (each cut to its last
    /// <paramref name="maxPromptTokens"/> tokens), and the toxic inputs' share of the total.</summary>
    public static IReadOnlyList<NullSpaceLayer> Run(ModelPair pair, IReadOnlyList<string> toxic,
        IReadOnlyList<string> clean, int maxPromptTokens = 32, int batchSize = 8, IProgress<string>? progress = null)
    {
        var (before, after, tokenizer) = pair;
        if (before.NumLayers != after.NumLayers || before.DModel != after.DModel || before.MlpDim != after.MlpDim)
            throw new InvalidInputException("--before/--after: models differ in shape (layers, width or MLP size)");
        if (toxic.Count == 0) throw new InvalidInputException("--toxic-prompts: no texts");
        if (clean.Count == 0) throw new InvalidInputException("--clean-prompts: no texts");
        if (maxPromptTokens < 1) throw new InvalidInputException($"--max-prompt-tokens must be ≥ 1 (got {maxPromptTokens})");
        if (batchSize < 1) throw new InvalidInputException($"--batch-size must be ≥ 1 (got {batchSize})");
        before.Module.eval();
        int L = before.NumLayers;
        var dV = new Tensor[L];
        var vB = new Tensor[L];
        using var keep = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        for (int l = 0; l < L; l++)
        {
            vB[l] = before.MlpValues(l).detach().to(ScalarType.Float64);
            dV[l] = after.MlpValues(l).detach().to(ScalarType.Float64).to(before.Device) - vB[l];
        }
        var names = Enumerable.Range(0, L).Select(HookNames.MlpPost).ToList();
        (double[] Norm, double[] Rel) Side(IReadOnlyList<string> texts, string what)
        {
            var norm = new double[L];
            var rel = new double[L];
            long n = 0;
            var seqs = texts.Select(t => { var ids = tokenizer.Encode(t); return PromptTruncation.KeepLast(ids.Length == 0 ? [before.EosTokenId] : ids, maxPromptTokens); }).ToList();
            for (int s0 = 0; s0 < seqs.Count; s0 += batchSize)
            {
                progress?.Report($"{what} inputs {s0}/{seqs.Count}");
                using var scope = torch.NewDisposeScope();
                var batch = seqs.Skip(s0).Take(batchSize).ToList();
                var (ids, mask) = ActivationCache.Pad(batch, before.EosTokenId, before.Device, left: true);
                var real = mask.flatten().nonzero().flatten();
                n += real.shape[0];
                using var cache = ActivationCache.Run(before, ids, mask, names);
                for (int l = 0; l < L; l++)
                {
                    var a = cache[names[l]].reshape(-1, before.MlpDim).index_select(0, real).to(ScalarType.Float64);
                    var change = a.matmul(dV[l]).norm(1);
                    norm[l] += change.sum().item<double>();
                    rel[l] += (change / a.matmul(vB[l]).norm(1).clamp_min(1e-30)).sum().item<double>();
                }
            }
            return (norm.Select(x => x / n).ToArray(), rel.Select(x => x / n).ToArray());
        }
        var (tn, tr) = Side(toxic, "toxic");
        var (cn, cr) = Side(clean, "clean");
        return Enumerable.Range(0, L).Select(l => new NullSpaceLayer(l, tn[l], cn[l], tr[l], cr[l], tn[l] + cn[l] > 0 ? tn[l] / (tn[l] + cn[l]) : double.NaN)).ToList();
    }

    /// <summary>null_space.csv (one row per layer) into <paramref name="outDir"/>.</summary>
    public static void Write(IReadOnlyList<NullSpaceLayer> layers, string outDir)
    {
        static string F(double x) => x.ToString("R", CultureInfo.InvariantCulture);
        var csv = new StringBuilder("layer,toxic_norm,clean_norm,toxic_relative,clean_relative,toxic_share\n");
        foreach (var r in layers) csv.Append(string.Join(",", r.Layer, F(r.ToxicNorm), F(r.CleanNorm), F(r.ToxicRelative), F(r.CleanRelative), F(r.ToxicShare))).Append('\n');
        Directory.CreateDirectory(outDir);
        AtomicFile.WriteAllText(Path.Combine(outDir, "null_space.csv"), csv.ToString());
    }
}

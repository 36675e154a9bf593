using System.Text.Json.Nodes;
using DetoxSharp.Generation;
using DetoxSharp.Models;
using DetoxSharp.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Interpretability;

/// <summary>
/// How deep an alignment goes (Qi et al., ICLR 2025): the per-position KL(aligned ‖ base) of the next-token
/// distributions along the aligned model's own greedy continuation of each prompt (both models read the same tokens),
/// averaged over prompts, and the share of the summed KL that falls on the first positions. A shallow alignment puts
/// most of its KL on the first few tokens, so prefilling them undoes it.
/// </summary>
public static class AlignmentDepth
{
    /// <summary>Per-position KL of an aligned model from its base model.</summary>
    /// <param name="MeanKl">Position t of the continuation → mean KL(aligned ‖ base) in nats over the prompts that reach t (NaN: none).</param>
    /// <param name="Counts">Position t → prompts whose continuation reaches t.</param>
    /// <param name="Prompts">Prompts measured.</param>
    public sealed record Result(double[] MeanKl, int[] Counts, int Prompts)
    {
        /// <summary>Share of Σ_t mean KL_t on positions t &lt; <paramref name="first"/>.</summary>
        public double ShareOfFirst(int first)
        {
            double all = MeanKl.Where(double.IsFinite).Sum();
            return all > 0 ? MeanKl.Take(first).Where(double.IsFinite).Sum() / all : double.NaN;
        }

        /// <summary>prompts, the measurement in words, per_position (position, kl, prompts) and share_first_<paramref name="first"/> (depth.json).</summary>
        public JsonObject ToJson(int first = 3) => new()
        {
            ["prompts"] = Prompts,
            ["measurement"] = "KL(aligned ‖ base) of the next-token distribution at each position of the aligned model's greedy continuation, both models reading the same tokens; mean over prompts that reach the position",
            ["per_position"] = new JsonArray(MeanKl.Select((k, t) => (JsonNode)new JsonObject { ["position"] = t, ["kl"] = double.IsFinite(k) ? k : null, ["prompts"] = Counts[t] }).ToArray()),
            [$"share_first_{first}"] = ShareOfFirst(first) is var s && double.IsFinite(s) ? s : null,
        };
    }

    /// <summary>Generates the aligned model's (<see cref="ModelPair.After"/>) greedy continuation of each prompt (its last
    /// <paramref name="maxPromptTokens"/> tokens, <paramref name="maxNewTokens"/> new tokens), runs both models on prompt +
    /// continuation, and averages KL(aligned ‖ base) of the next-token distributions at each continuation position.
    /// <see cref="ModelPair.Forced"/>, when set, are the aligned model's continuations made by the caller.
    /// <paramref name="progress"/> receives "KL a/b" (prompts done) per batch.</summary>
    public static Result PerPositionKl(ModelPair pair, IReadOnlyList<string> prompts,
        int maxNewTokens = 20, int maxPromptTokens = 32, int batchSize = 8, IProgress<string>? progress = null)
    {
        var (baseModel, aligned, tokenizer) = pair;
        if (maxNewTokens < 1) throw new InvalidSettingException("max_new_tokens", $"must be ≥ 1 (got {maxNewTokens})");
        if (batchSize < 1) throw new InvalidSettingException("batch_size", $"must be ≥ 1 (got {batchSize})");
        if (prompts.Count == 0) throw new InvalidInputException("--prompts: no prompts");
        if (baseModel.VocabSize != aligned.VocabSize) throw new InvalidInputException("--base/--aligned: vocabularies differ");
        baseModel.Module.eval(); aligned.Module.eval();
        if (pair.Forced is null) progress?.Report($"generating greedy continuations of {prompts.Count} prompts with the --aligned model");
        var tf = pair.Forced ?? TeacherForced.Generate(aligned, tokenizer, prompts, maxPromptTokens, maxNewTokens, batchSize);
        if (tf.Fed.Count != prompts.Count) throw new ArgumentException($"forced: {tf.Fed.Count} sequences for {prompts.Count} prompts", nameof(pair));
        var sum = new double[maxNewTokens];
        var count = new int[maxNewTokens];
        for (int s0 = 0; s0 < tf.Fed.Count; s0 += batchSize)
        {
            progress?.Report($"KL {s0}/{tf.Fed.Count}");
            using var scope = torch.NewDisposeScope();
            using var _ = torch.no_grad();
            var rows = Enumerable.Range(s0, Math.Min(batchSize, tf.Fed.Count - s0)).ToList();
            // position t of the continuation is predicted at T − steps + t of the fed sequence
            var fed = rows.Select(i => tf.Fed[i]).ToList();
            var steps = rows.Select(i => tf.Steps[i]).ToList();
            var (ids, mask) = ActivationCache.Pad(fed, aligned.EosTokenId, aligned.Device, left: true);
            long T = ids.shape[1];
            var la = torch.nn.functional.log_softmax(aligned.Forward(ids, mask).to(ScalarType.Float64), -1);
            var lb = torch.nn.functional.log_softmax(baseModel.Forward(ids, mask).to(ScalarType.Float64), -1);
            var kl = (la.exp() * (la - lb)).sum(-1).cpu();   // [B, T]
            for (int b = 0; b < rows.Count; b++)
                for (int t = 0; t < steps[b] && t < maxNewTokens; t++)
                {
                    sum[t] += kl[b, T - steps[b] + t].item<double>();
                    count[t]++;
                }
        }
        return new Result(sum.Select((x, t) => count[t] > 0 ? x / count[t] : double.NaN).ToArray(), count, prompts.Count);
    }
}

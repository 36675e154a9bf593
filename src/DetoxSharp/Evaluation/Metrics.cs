using DetoxSharp.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Evaluation;

/// <summary>Result of a perplexity run: exp(mean negative log-likelihood) over <see cref="Tokens"/> predicted tokens.</summary>
public sealed record PerplexityResult(double Perplexity, double MeanNll, long Tokens, int Windows, int Window, int Stride);

/// <summary>Bag-of-token overlap scores of one prediction against a gold continuation.</summary>
public sealed record OverlapScore(double Precision, double Recall, double F1);

public static class Metrics
{
    /// <summary>
    /// Perplexity of <paramref name="ids"/> in windows of <paramref name="window"/> tokens (default: the model's context)
    /// moved by <paramref name="stride"/> (default: the window, i.e. non-overlapping). With a stride smaller than the
    /// window this follows Hugging Face's sliding-window convention: each window starts at a multiple of the stride and
    /// predicts only the tokens after the previous window's end, using the earlier ones as context. The first token of
    /// the text (and, for non-overlapping windows, of every window) has no context and is not predicted.
    /// </summary>
    public static PerplexityResult Perplexity(ICausalLM model, IReadOnlyList<int> ids, int? window = null, int? stride = null,
        Action<int, int>? progress = null)
    {
        int w = window ?? model.MaxPositions;
        int s = stride ?? w;
        if (w < 2 || w > model.MaxPositions) throw new InvalidSettingException("ppl_window", $"must be in [2, {model.MaxPositions}] (the model's context) (got {w})");
        if (s < 1 || s > w) throw new InvalidSettingException("ppl_stride", $"must be in [1, window={w}] (got {s})");
        if (ids.Count < 2) throw new InvalidInputException($"perplexity text has {ids.Count} token(s); need at least 2");
        int n = ids.Count;
        int totalWindows = 0;
        for (int b = 0; ; b += s) { totalWindows++; if (Math.Min(b + w, n) == n) break; }

        double nll = 0;
        long count = 0;
        int prevEnd = 0, done = 0;
        using var noGrad = torch.no_grad();
        for (int begin = 0; ; begin += s)
        {
            int end = Math.Min(begin + w, n);
            int len = end - begin;
            int trg = end - prevEnd;                  // tokens this window is responsible for
            int firstTarget = Math.Max(1, len - trg); // position within the window; position 0 has no context
            if (firstTarget < len)
            {
                using var scope = torch.NewDisposeScope();
                var chunk = new long[len];
                for (int i = 0; i < len; i++) chunk[i] = ids[begin + i];
                var t = torch.tensor(chunk, [1, len], ScalarType.Int64, model.Device);
                var lp = LogProbs.OfTokens(model, t); // [1, len-1]: lp[j] = log p(token j+1)
                var sel = lp.narrow(1, firstTarget - 1, len - firstTarget);
                nll -= sel.to(ScalarType.Float64).sum().item<double>();
                count += len - firstTarget;
            }
            prevEnd = end;
            done++;
            progress?.Invoke(done, totalWindows);
            if (end == n) break;
        }
        double mean = nll / count;
        return new PerplexityResult(Math.Exp(mean), mean, count, done, w, s);
    }

    /// <summary>Bag-of-token (multiset) overlap: common = Σ_t min(count_pred(t), count_gold(t)); precision = common/|pred|,
    /// recall = common/|gold|, F1 their harmonic mean (0 when nothing overlaps or either side is empty).</summary>
    public static OverlapScore BagOfTokensF1(IReadOnlyList<int> predicted, IReadOnlyList<int> gold)
    {
        if (predicted.Count == 0 || gold.Count == 0) return new OverlapScore(0, 0, 0);
        var g = new Dictionary<int, int>();
        foreach (var t in gold) g[t] = g.GetValueOrDefault(t) + 1;
        var p = new Dictionary<int, int>();
        foreach (var t in predicted) p[t] = p.GetValueOrDefault(t) + 1;
        int common = p.Sum(kv => Math.Min(kv.Value, g.GetValueOrDefault(kv.Key)));
        if (common == 0) return new OverlapScore(0, 0, 0);
        double precision = (double)common / predicted.Count, recall = (double)common / gold.Count;
        return new OverlapScore(precision, recall, 2 * precision * recall / (precision + recall));
    }
}

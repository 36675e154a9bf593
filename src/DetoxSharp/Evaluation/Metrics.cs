using DetoxSharp.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Evaluation;

/// <summary>Result of a perplexity run: exp(mean negative log-likelihood) over <see cref="Tokens"/> predicted tokens.</summary>
public sealed record PerplexityResult(double Perplexity, double MeanNll, long Tokens, int Windows, int Window, int Stride);

/// <summary>One perplexity window's summed log-probability and predicted tokens (for merging shards exactly).</summary>
public sealed record PplWindow(int Window, double LogProbSum, long Tokens);

/// <summary>Bag-of-token overlap scores of one prediction against a gold continuation.</summary>
public sealed record OverlapScore(double Precision, double Recall, double F1);

/// <summary>Fluency: mean over continuations of exp(mean NLL of the continuation's tokens given its prompt).</summary>
public sealed record FluencyResult(double MeanPerplexity, int Continuations, int SkippedEmpty);

/// <summary>The numbers of the results table computed from a model's outputs: sliding-window perplexity, fluency of
/// continuations given their prompts, and bag-of-token F1 against gold continuations.</summary>
public static class Metrics
{
    /// <summary>
    /// RTP-style fluency (as DExperts computes it): each (prompt, continuation) is tokenized with the fluency model's
    /// tokenizer as prompt+continuation, the continuation's tokens (those after the prompt's own tokenization) are
    /// scored given the prompt, and the per-continuation perplexities are averaged. Empty continuations are skipped;
    /// texts longer than the model's context keep their last tokens.
    /// </summary>
    public static FluencyResult ContinuationPerplexity(ICausalLM model, DetoxSharp.Text.Gpt2Tokenizer tok,
        IReadOnlyList<(string Prompt, string Continuation)> items, CancellationToken cancel = default)
    {
        double sum = 0;
        int n = 0, skipped = 0;
        using var noGrad = torch.no_grad();
        foreach (var (prompt, cont) in items)
        {
            cancel.ThrowIfCancellationRequested();
            var full = tok.Encode(prompt + cont);
            int promptLen = tok.Encode(prompt).Length;
            int first = Math.Max(1, promptLen); // the first token of a text has no context
            if (cont.Length == 0 || full.Length <= first) { skipped++; continue; }
            int start = Math.Max(0, full.Length - model.MaxPositions);
            if (start > 0) { full = full[start..]; first = Math.Max(1, first - start); }
            using var scope = torch.NewDisposeScope();
            var t = torch.tensor(full.Select(x => (long)x).ToArray(), [1, full.Length], ScalarType.Int64, model.Device);
            var lp = LogProbs.OfTokens(model, t); // [1, len-1]: lp[j] = log p(token j+1)
            double nll = -lp.narrow(1, first - 1, full.Length - first).to(ScalarType.Float64).sum().item<double>();
            sum += Math.Exp(nll / (full.Length - first));
            n++;
        }
        return new FluencyResult(n == 0 ? double.NaN : sum / n, n, skipped);
    }

    /// <summary>
    /// Perplexity of <paramref name="ids"/> in windows of <paramref name="window"/> tokens (default: the model's context)
    /// moved by <paramref name="stride"/> (default: the window, i.e. non-overlapping). With a stride smaller than the
    /// window this follows Hugging Face's sliding-window convention: each window starts at a multiple of the stride and
    /// predicts only the tokens after the previous window's end, using the earlier ones as context. The first token of
    /// the text (and, for non-overlapping windows, of every window) has no context and is not predicted.
    /// </summary>
    internal static PerplexityResult Perplexity(ICausalLM model, IReadOnlyList<int> ids, int? window = null, int? stride = null,
        Action<int, int>? progress = null, Func<int, bool>? includeWindow = null, Action<PplWindow>? onWindow = null,
        Func<Tensor, Tensor>? tokenLogProbs = null)
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
            if (firstTarget < len && (includeWindow?.Invoke(done) ?? true))
            {
                using var scope = torch.NewDisposeScope();
                var chunk = new long[len];
                for (int i = 0; i < len; i++) chunk[i] = ids[begin + i];
                var t = torch.tensor(chunk, [1, len], ScalarType.Int64, model.Device);
                var lp = tokenLogProbs?.Invoke(t) ?? LogProbs.OfTokens(model, t); // [1, len-1]: lp[j] = log p(token j+1)
                var sel = lp.narrow(1, firstTarget - 1, len - firstTarget);
                double lpSum = sel.to(ScalarType.Float64).sum().item<double>();
                nll -= lpSum;
                count += len - firstTarget;
                onWindow?.Invoke(new PplWindow(done, lpSum, len - firstTarget));
            }
            prevEnd = end;
            done++;
            progress?.Invoke(done, totalWindows);
            if (end == n) break;
        }
        if (count == 0) return new PerplexityResult(double.NaN, double.NaN, 0, done, w, s);
        return FromWindows(nll, count, done, w, s);
    }

    /// <summary>The result from accumulated −Σ log p and token count (shared with the shard merge, so a merged run's
    /// number is computed by the same operations in the same order as one run's).</summary>
    public static PerplexityResult FromWindows(double nll, long count, int windows, int window, int stride)
    {
        double mean = nll / count;
        return new PerplexityResult(Math.Exp(mean), mean, count, windows, window, stride);
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

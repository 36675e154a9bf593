using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Models;

/// <summary>Log-probabilities of given tokens under a model — the quantity scoring, perplexity and DPO are built on.</summary>
public static class LogProbs
{
    /// <summary>
    /// log p(ids[:, t] | ids[:, &lt;t]) for t = 1..T-1, as float32 [batch, T-1]. Computed as the gathered logit minus
    /// logsumexp, in float32 even for a bf16 model (the subtraction of two large numbers is where bf16 loses).
    /// </summary>
    public static Tensor OfTokens(ICausalLM model, Tensor ids, Tensor? attentionMask = null)
    {
        var logits = model.Forward(ids, attentionMask);
        return FromLogits(logits, ids);
    }

    /// <summary>Same as <see cref="OfTokens"/> from already computed logits [batch, T, vocab].</summary>
    public static Tensor FromLogits(Tensor logits, Tensor ids)
    {
        long t = ids.shape[1];
        var l = logits.narrow(1, 0, t - 1).to(ScalarType.Float32);
        var target = ids.narrow(1, 1, t - 1).unsqueeze(-1);
        return (l.gather(-1, target).squeeze(-1) - l.logsumexp(-1));
    }

    /// <summary>
    /// log p(ids[b, t+1] | ids[b, ≤t]) only where <paramref name="scored"/> [batch, T-1] is non-zero (position t predicts
    /// token t+1), in row-major order, as [N] (float32, or float64 for a float64 model); also the flat indices b·(T-1)+t
    /// of those positions. The final norm, the V-wide LM head and the log-softmax run on those N positions only (prompt
    /// and padding positions never reach the head). The final norm runs without its <c>ln_final.hook_normalized</c> hook;
    /// block hooks run as usual. Differentiable.
    /// </summary>
    public static (Tensor LogProbs, Tensor FlatIndex) AtPositions(ICausalLM model, Tensor ids, Tensor? attentionMask, Tensor scored)
    {
        long t = ids.shape[1];
        var flat = scored.reshape(-1).nonzero().squeeze(1);
        var hidden = model.ResidualStream(ids, attentionMask).narrow(1, 0, t - 1);
        var h = model.ApplyFinalNorm(hidden.reshape(-1, hidden.shape[^1]).index_select(0, flat)); // [N, d]
        var logits = torch.nn.functional.linear(h, model.Unembedding);                              // [N, V]
        logits = logits.to(logits.dtype == ScalarType.Float64 ? ScalarType.Float64 : ScalarType.Float32);
        var next = ids.narrow(1, 1, t - 1).reshape(-1).index_select(0, flat);
        return (logits.log_softmax(-1).gather(-1, next.unsqueeze(-1)).squeeze(-1), flat);
    }

    /// <summary>
    /// Summed log-probs of completions that share prompts, [rows] (float32, or float64 for a float64 model): row r is
    /// Σ_j log p(completion_r[j] | prompt, completion_r[&lt;j]) with prompt = <paramref name="prompts"/>[rows[r].Prompt].
    /// Each prompt runs through the blocks ONCE (left-padded, its keys and values kept in a retaining
    /// <see cref="KvCache"/>); the completions (right-padded) then attend to their prompt's keys and values. With DPO's
    /// chosen and rejected completions of one prompt this saves the prompt's second pass, forward and backward. The
    /// values are those of running each (prompt, completion) as one sequence, up to float rounding: the same positions
    /// (from the mask; left padding does not shift them), the same attended keys, the same scored positions.
    /// Differentiable. Needs non-empty prompts and the longest prompt plus the longest completion within the context
    /// (<see cref="CanSharePrompts"/>).
    /// </summary>
    /// <param name="model">The model.</param>
    /// <param name="prompts">Token ids of the prompts, each non-empty.</param>
    /// <param name="rows">Each row: the index of its prompt and the completion's token ids.</param>
    /// <param name="padId">Token id written into padding (never attended or scored).</param>
    public static Tensor SharedPromptSums(ICausalLM model, IReadOnlyList<int[]> prompts, IReadOnlyList<(int Prompt, int[] Completion)> rows, int padId)
    {
        if (!CanSharePrompts(model, prompts, rows.Select(r => r.Completion)))
            throw new ArgumentException("shared-prompt scoring needs non-empty prompts and the longest prompt plus the longest completion within the model's context");
        int p = prompts.Count, r = rows.Count;
        int lp = prompts.Max(x => x.Length), lc = Math.Max(1, rows.Select(x => x.Completion.Length).DefaultIfEmpty(0).Max());
        var dev = model.Device;
        var pid = new long[p * lp]; var pm = new long[p * lp];
        for (int i = 0; i < p; i++)
        {
            var x = prompts[i];
            int off = lp - x.Length;
            for (int j = 0; j < lp; j++)
            {
                pid[i * lp + j] = j < off ? padId : x[j - off];
                pm[i * lp + j] = j < off ? 0 : 1;
            }
        }
        var cid = new long[r * lc]; var cm = new long[r * lc]; var sel = new long[r];
        for (int i = 0; i < r; i++)
        {
            var (pi, c) = rows[i];
            if (pi < 0 || pi >= p) throw new ArgumentOutOfRangeException(nameof(rows), $"row {i} names prompt {pi} of {p}");
            sel[i] = pi;
            for (int j = 0; j < lc; j++)
            {
                cid[i * lc + j] = j < c.Length ? c[j] : padId;
                cm[i * lc + j] = j < c.Length ? 1 : 0;
            }
        }
        var promptIds = torch.tensor(pid, [p, lp], device: dev);
        var promptMask = torch.tensor(pm, [p, lp], device: dev);
        var compIds = torch.tensor(cid, [r, lc], device: dev);
        var compMask = torch.tensor(cm, [r, lc], device: dev);
        var rowPrompt = torch.tensor(sel, device: dev);

        using var cache = KvCache.Retaining(model.NumLayers);
        var last = model.ResidualStream(promptIds, promptMask, cache).select(1, lp - 1).index_select(0, rowPrompt); // [R, d]
        cache.SelectRows(rowPrompt);
        var hc = model.ResidualStream(compIds, torch.cat([promptMask.index_select(0, rowPrompt), compMask], 1), cache); // [R, lc, d]
        // the state that predicts completion token j: the prompt's last position for j = 0, completion position j − 1 after
        var h = lc == 1 ? last.unsqueeze(1) : torch.cat([last.unsqueeze(1), hc.narrow(1, 0, lc - 1)], 1);
        var flat = compMask.reshape(-1).nonzero().squeeze(1);
        var hs = model.ApplyFinalNorm(h.reshape(-1, h.shape[^1]).index_select(0, flat));
        var logits = torch.nn.functional.linear(hs, model.Unembedding);
        logits = logits.to(logits.dtype == ScalarType.Float64 ? ScalarType.Float64 : ScalarType.Float32);
        var next = compIds.reshape(-1).index_select(0, flat);
        var lps = logits.log_softmax(-1).gather(-1, next.unsqueeze(-1)).squeeze(-1);
        var rowOf = flat.div(lc, rounding_mode: RoundingMode.floor);
        return torch.zeros(r, lps.dtype, dev).index_add(0, rowOf, lps, 1);
    }

    /// <summary>Whether <see cref="SharedPromptSums"/> applies: every prompt non-empty and the longest prompt plus the
    /// longest completion (the padded shape it runs) within <see cref="ICausalLM.MaxPositions"/>.</summary>
    /// <param name="model">The model.</param>
    /// <param name="prompts">Token ids of the prompts.</param>
    /// <param name="completions">Token ids of the completions.</param>
    public static bool CanSharePrompts(ICausalLM model, IReadOnlyList<int[]> prompts, IEnumerable<int[]> completions) =>
        prompts.Count > 0 && prompts.All(x => x.Length > 0)
        && prompts.Max(x => x.Length) + completions.Select(c => c.Length).DefaultIfEmpty(0).Max() <= model.MaxPositions;
}

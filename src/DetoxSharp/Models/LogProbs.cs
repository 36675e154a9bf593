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
        var next = ids.narrow(1, 1, t - 1).reshape(-1).index_select(0, flat);
        return (OfTargets(logits, next), flat);
    }

    /// <summary>log_softmax(logits)[i, targets[i]] for logits [N, V] and targets [N], as float32 (float64 for float64
    /// logits): bfloat16 logits are widened to float32 first. Bfloat16 CPU logits take <see cref="CpuTokenLogProbs"/>'s
    /// one-pass kernel where it <see cref="CpuTokenLogProbs.Applies"/> (the same values to float32 rounding). Differentiable.</summary>
    public static Tensor OfTargets(Tensor logits, Tensor targets)
    {
        if (CpuTokenLogProbs.Applies(logits, targets))
            return CpuTokenLogProbs.Of(logits, targets);
        var l = logits.to(logits.dtype == ScalarType.Float64 ? ScalarType.Float64 : ScalarType.Float32);
        return l.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1);
    }

    /// <summary>
    /// Summed log-probs of completions that share prompts, [rows] (float32, or float64 for a float64 model): row r is
    /// Σ_j log p(completion_r[j] | prompt, completion_r[&lt;j]) with prompt = <paramref name="prompts"/>[rows[r].Prompt].
    /// One forward pass: each prompt and all its rows' completions lie side by side in one batch row (right-padded),
    /// laid out by a <see cref="SequenceLayout"/> — a completion's positions continue from its prompt's end, and it
    /// attends to the prompt and to itself, never to a sibling completion. So the prompt runs through the blocks once
    /// for all its completions (DPO's chosen and rejected: the prompt's second pass, forward and backward, is saved), in
    /// one pass rather than a prompt pass and a completion pass (half the ops per step). The values are those of running
    /// each (prompt, completion) as one sequence, up to float rounding: the same positions, the same attended keys, the
    /// same scored positions (a completion's first token is predicted from its prompt's last position). Differentiable.
    /// Needs non-empty prompts and the longest prompt plus the longest completion within the context
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
        var groups = new List<int>[p];
        for (int i = 0; i < p; i++) groups[i] = [];
        for (int i = 0; i < r; i++)
        {
            int pi = rows[i].Prompt;
            if (pi < 0 || pi >= p) throw new ArgumentOutOfRangeException(nameof(rows), $"row {i} names prompt {pi} of {p}");
            groups[pi].Add(i);
        }
        int len = Enumerable.Range(0, p).Max(g => prompts[g].Length + groups[g].Sum(i => rows[i].Completion.Length));
        var ids = new long[p * len]; var pos = new long[p * len]; var real = new long[p * len]; var seg = new int[p * len];
        var allowed = new bool[p * len * len];
        var pred = new List<long>(); var target = new List<long>(); var rowOf = new List<long>();
        for (int g = 0; g < p; g++)
        {
            int o = g * len, lp = prompts[g].Length;
            Array.Fill(ids, padId, o, len); Array.Fill(seg, -1, o, len);
            for (int j = 0; j < lp; j++) { ids[o + j] = prompts[g][j]; pos[o + j] = j; real[o + j] = 1; seg[o + j] = 0; }
            int at = lp;
            foreach (int i in groups[g])
            {
                var c = rows[i].Completion;
                for (int j = 0; j < c.Length; j++)
                {
                    ids[o + at + j] = c[j]; pos[o + at + j] = lp + j; real[o + at + j] = 1; seg[o + at + j] = i + 1;
                    pred.Add(o + (j == 0 ? lp - 1 : at + j - 1)); target.Add(c[j]); rowOf.Add(i);
                }
                at += c.Length;
            }
            for (int q = 0; q < len; q++)
            {
                int m = (o + q) * len;
                allowed[m + q] = true;
                if (seg[o + q] < 0) continue;
                for (int k = 0; k < q; k++)
                    allowed[m + k] = seg[o + k] == 0 || seg[o + k] == seg[o + q];
            }
        }
        var dev = model.Device;
        var layout = new SequenceLayout(torch.tensor(pos, [p, len], device: dev), torch.tensor(allowed, [p, 1, len, len], device: dev), torch.tensor(real, [p, len], device: dev));
        var hidden = model.ResidualStream(torch.tensor(ids, [p, len], device: dev), layout);
        var hs = model.ApplyFinalNorm(hidden.reshape(-1, hidden.shape[^1]).index_select(0, torch.tensor(pred.ToArray(), device: dev)));
        var lps = OfTargets(torch.nn.functional.linear(hs, model.Unembedding), torch.tensor(target.ToArray(), device: dev));
        return torch.zeros(r, lps.dtype, dev).index_add(0, torch.tensor(rowOf.ToArray(), device: dev), lps, 1);
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

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
}

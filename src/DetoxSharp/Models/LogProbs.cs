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
}

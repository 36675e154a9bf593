using DetoxSharp.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Generation;

/// <summary>DExperts (Liu et al. 2021; methods-facts §1): at each step z = z_base + α·(z_expert − z_anti); the expert is
/// the base fine-tuned on non-toxic text, the anti-expert on toxic text (same vocabulary). α = 2 in the paper's detox
/// setting. Generation runs all three models batched (<see cref="Generator.Generate"/>), each with its own KV cache, or with
/// <see cref="GenerationOptions.EnsembleForward"/> as one stacked forward (<see cref="CausalLMEnsemble"/>) when they stack.</summary>
public sealed record DExperts(ICausalLM Expert, ICausalLM AntiExpert, double Alpha = 2.0)
{
    /// <summary>Checks α and that both experts share <paramref name="model"/>'s vocabulary; throws <see cref="InvalidInputException"/> otherwise.</summary>
    /// <param name="model">The base model the experts steer.</param>
    public void Check(ICausalLM model)
    {
        Require.Number(Alpha, "alpha", 0);
        foreach (var (m, which) in new[] { (Expert, "expert"), (AntiExpert, "anti-expert") })
            if (m.VocabSize != model.VocabSize)
                throw new InvalidInputException($"--dexperts: the {which}'s vocabulary ({m.VocabSize}) differs from the model's ({model.VocabSize}); use fine-tunes of the same base");
    }

    /// <summary>The combined logits in float32 (logits of any shape, the vocabulary last).</summary>
    public Tensor Combine(Tensor baseLogits, Tensor expertLogits, Tensor antiLogits) =>
        baseLogits.to(ScalarType.Float32) + Alpha * (expertLogits.to(ScalarType.Float32) - antiLogits.to(ScalarType.Float32));

    /// <summary>log p(ids[:, t] | ids[:, &lt;t]) under the combined distribution softmax(z), [batch, T−1] float32 — the
    /// perplexity the decoding-time method actually has.</summary>
    public Tensor TokenLogProbs(ICausalLM model, Tensor ids)
    {
        Expert.Module.eval(); AntiExpert.Module.eval(); // no dropout in the experts either
        return LogProbs.FromLogits(Combine(model.Forward(ids), Expert.Forward(ids), AntiExpert.Forward(ids)), ids);
    }
}

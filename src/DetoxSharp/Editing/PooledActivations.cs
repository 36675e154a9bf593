using DetoxSharp.Interpretability;
using DetoxSharp.Models;
using DetoxSharp.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Editing;

/// <summary>One vector per text and hook point: the activations of a text's real tokens pooled into one row. The
/// edits' shared first step (ProFS: mean of the residual stream; AurA: max of MLP activations; steering: mean).</summary>
public static class PooledActivations
{
    /// <summary>Mean over the real positions (padding masked).</summary>
    public static Tensor Mean(Tensor activation, Tensor mask) => ActivationCache.MeanOverReal(activation, mask);

    /// <summary>Max over the real positions (padding set to −∞ first).</summary>
    public static Tensor Max(Tensor activation, Tensor mask) =>
        activation.to(ScalarType.Float32).masked_fill(mask.eq(0).unsqueeze(-1), double.NegativeInfinity).amax([1]);

    /// <summary>Runs the texts (each cut to its first <paramref name="maxTokens"/> tokens, right-padded in batches with a
    /// mask, so padding changes no row) and pools the activation at each of <paramref name="hooks"/>: [hooks][N, width]
    /// float32 CPU, owned by the caller. <paramref name="done"/> receives the number of texts run after each batch.</summary>
    internal static Tensor[] Of(ICausalLM model, Gpt2Tokenizer tokenizer, IReadOnlyList<string> texts, IReadOnlyList<string> hooks,
        Func<Tensor, Tensor, Tensor> pool, int maxTokens, int batchSize, Action<int>? done = null)
    {
        int cut = Math.Min(maxTokens, model.MaxPositions);
        var rows = hooks.Select(_ => new List<Tensor>()).ToArray();
        bool wasTraining = model.Module.training;
        model.Module.eval();
        try
        {
            for (int s = 0; s < texts.Count; s += batchSize)
            {
                using var scope = torch.NewDisposeScope();
                var seqs = texts.Skip(s).Take(batchSize).Select(t =>
                {
                    var ids = tokenizer.EncodeWithSpecialTokens(t);
                    if (ids.Length == 0) ids = [model.EosTokenId];
                    return ids.Length > cut ? ids[..cut] : ids;
                }).ToList();
                var (ids, mask) = ActivationCache.Pad(seqs, model.EosTokenId, model.Device, left: false);
                using var cache = ActivationCache.Run(model, ids, mask, hooks);
                for (int h = 0; h < hooks.Count; h++)
                    rows[h].Add(pool(cache[hooks[h]], cache.Mask).to(ScalarType.Float32).cpu().DetachFromDisposeScope());
                done?.Invoke(s + seqs.Count);
            }
            return rows.Select(r => torch.cat(r, 0)).ToArray();
        }
        finally
        {
            foreach (var r in rows) foreach (var x in r) x.Dispose();
            if (wasTraining) model.Module.train();
        }
    }
}

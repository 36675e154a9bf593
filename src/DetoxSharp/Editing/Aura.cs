using System.Text.Json.Nodes;
using DetoxSharp.Data;
using DetoxSharp.Interpretability;
using DetoxSharp.Models;
using DetoxSharp.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Editing;

/// <summary>Settings of the AurA edit (Suau et al., ICML 2024; methods-facts §1). AurA itself has no hyperparameter.</summary>
public sealed record AuraOptions
{
    /// <summary>Tokens per comment (cut at the end).</summary>
    [Setting("tokens per comment (cut at the end)")]
    public int MaxTokens { get; init; } = 128;
    /// <summary>Comments per forward batch.</summary>
    [Setting("comments per forward batch")]
    public int BatchSize { get; init; } = 16;

    /// <summary>Checks every setting; throws <see cref="InvalidSettingException"/> naming the first one out of range.</summary>
    public void Validate()
    {
        Require.Count(MaxTokens, "max_tokens", 1, 1 << 20);
        Require.Count(BatchSize, "batch_size", 1, 4096);
    }
}

/// <summary>The dampening AurA chose: per layer, α for every MLP neuron (1 = untouched) and its AUROC.</summary>
public sealed record AuraResult(double[][] Auroc, double[][] Alpha)
{
    /// <summary>How many neurons AurA dampened (α &lt; 1), over all layers.</summary>
    public int Dampened => Alpha.Sum(a => a.Count(x => x < 1));
}

/// <summary>
/// AurA: each MLP neuron's activation, max-pooled over a comment's real tokens, scores the comment; its AUROC for
/// telling toxic from non-toxic comments gives α = 1 − Gini = 1 − 2·(AUROC − 0.5) for AUROC &gt; 0.5, and 1 otherwise.
/// The paper multiplies the neuron's output activation by α at inference; the neuron's contribution to the residual
/// stream is activation × value vector, so scaling the value vector (row of <see cref="ICausalLM.MlpValues"/>) by α is
/// the same computation in every family (GPT-2's GELU MLP and the gated Llama MLP alike) and a plain checkpoint edit.
/// </summary>
public static class Aura
{
    /// <summary>α for an AUROC: 1 − Gini with Gini = 2·(AUROC − 0.5) when AUROC &gt; 0.5, else 1.</summary>
    public static double Alpha(double auroc) => auroc > 0.5 ? 1 - 2 * (auroc - 0.5) : 1.0;

    /// <summary>Area under the ROC curve of <paramref name="scores"/> for <paramref name="positive"/> (Mann–Whitney U with
    /// average ranks for ties: a tie counts one half).</summary>
    public static double Auroc(ReadOnlySpan<double> scores, ReadOnlySpan<bool> positive)
    {
        int n = scores.Length;
        var idx = new int[n];
        for (int i = 0; i < n; i++) idx[i] = i;
        var s = scores.ToArray();
        Array.Sort(s, idx);
        long nPos = 0;
        double rankSum = 0;
        for (int i = 0; i < n;)
        {
            int j = i;
            while (j + 1 < n && s[j + 1] == s[i]) j++;
            double avg = (i + j) / 2.0 + 1; // ranks are 1-based
            for (int k = i; k <= j; k++) if (positive[idx[k]]) { rankSum += avg; nPos++; }
            i = j + 1;
        }
        long nNeg = n - nPos;
        if (nPos == 0 || nNeg == 0) throw new InvalidInputException("AUROC needs both toxic and non-toxic examples");
        return (rankSum - nPos * (nPos + 1) / 2.0) / ((double)nPos * nNeg);
    }

    /// <summary>AUROC and α of every neuron from labelled comments (no edit).</summary>
    /// <param name="model">The model (not changed).</param>
    /// <param name="tokenizer">Its tokenizer.</param>
    /// <param name="comments">Labelled comments, toxic and not.</param>
    /// <param name="o">Token limit and batch size.</param>
    /// <param name="progress">Receives "activations a/b" (comments run) after each batch.</param>
    public static AuraResult Score(ICausalLM model, Gpt2Tokenizer tokenizer, IReadOnlyList<LabelledComment> comments, AuraOptions o, IProgress<string>? progress = null)
    {
        o.Validate();
        int toxic = comments.Count(c => c.Toxic);
        if (toxic == 0 || toxic == comments.Count)
            throw new InvalidInputException($"AurA needs toxic and non-toxic comments (got {toxic} toxic of {comments.Count})");
        var labels = comments.Select(c => c.Toxic).ToArray();
        var hooks = Enumerable.Range(0, model.NumLayers).Select(HookNames.MlpPost).ToList();
        // max over a comment's tokens of each neuron's activation (mlp.hook_post), as the paper pools
        var acts = PooledActivations.Of(model, tokenizer, comments.Select(c => c.Text).ToList(), hooks, PooledActivations.Max, o.MaxTokens, o.BatchSize,
            n => progress?.Report($"activations {n}/{comments.Count}"));
        var auroc = new double[acts.Length][];
        try
        {
            for (int l = 0; l < acts.Length; l++)
            {
                using var t = acts[l].to(ScalarType.Float64).T.contiguous(); // [mlp_dim, N]
                var all = t.data<double>().ToArray();
                int n = comments.Count, m = (int)t.shape[0];
                auroc[l] = new double[m];
                var per = auroc[l];
                Parallel.For(0, m, i => per[i] = Auroc(all.AsSpan(i * n, n), labels));
            }
        }
        finally { foreach (var a in acts) a.Dispose(); }
        return new AuraResult(auroc, auroc.Select(a => a.Select(Alpha).ToArray()).ToArray());
    }

    /// <summary>Scales value vector i of layer l by α[l][i] (in place): the neuron's output × α.</summary>
    public static void Apply(ICausalLM model, AuraResult result)
    {
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        for (int l = 0; l < result.Alpha.Length; l++)
        {
            var w = model.MlpValues(l);
            var a = torch.tensor(result.Alpha[l]).to(w.dtype).to(w.device).unsqueeze(1);
            w.mul_(a);
        }
    }

    /// <summary>The edit's summary for edit.json: layers, dampened neurons, comments used, seconds.</summary>
    /// <param name="r">The edit.</param>
    /// <param name="comments">How many labelled comments it was fitted on.</param>
    /// <param name="seconds">How long fitting took.</param>
    public static JsonObject Describe(AuraResult r, int comments, double seconds)
    {
        var perLayer = new JsonArray();
        for (int l = 0; l < r.Alpha.Length; l++)
            perLayer.Add(new JsonObject
            {
                ["layer"] = l, ["dampened"] = r.Alpha[l].Count(a => a < 1),
                ["max_auroc"] = r.Auroc[l].Max(), ["min_alpha"] = r.Alpha[l].Min(),
                ["mean_alpha_of_dampened"] = r.Alpha[l].Where(a => a < 1).DefaultIfEmpty(1).Average(),
            });
        return new JsonObject { ["method"] = "aura", ["comments"] = comments, ["dampened"] = r.Dampened, ["seconds"] = Math.Round(seconds, 3), ["layers"] = perLayer };
    }
}

using System.Text.Json.Nodes;
using DetoxSharp.Data;
using DetoxSharp.Interpretability;
using DetoxSharp.Models;
using DetoxSharp.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Editing;

/// <summary>Settings of the ProFS edit (Uppaal et al., ICLR 2025; methods-facts §1).</summary>
public sealed record ProFsOptions
{
    /// <summary>Rank k of the projected toxic subspace per layer (GPT-2 medium: 2).</summary>
    [Setting("rank k of the projected toxic subspace per layer (GPT-2 medium: 2)")]
    public int Rank { get; init; } = 2;
    /// <summary>First edited layer (0-indexed); null = round(L·10/24), GPT-2 medium's 10 of 24.</summary>
    [Setting("first edited layer (default: round(L·10/24), as ProFS's layers 10–23 of GPT-2 medium)")]
    public int? FirstLayer { get; init; }
    /// <summary>Last edited layer; null = the last.</summary>
    [Setting("last edited layer (default: the last)")]
    public int? LastLayer { get; init; }
    /// <summary>Remove the top singular direction of the preferred embeddings first (ProFS's centring; off: PPL 35 → 1160 in the paper).</summary>
    [Setting("remove the top singular direction of the preferred embeddings first (ProFS's centring; off: PPL 35 → 1160 in the paper)")]
    public bool Centring { get; init; } = true;
    /// <summary>Tokens per text (prompt + completion, cut at the end).</summary>
    [Setting("tokens per text (prompt + completion, cut at the end)")]
    public int MaxTokens { get; init; } = 128;
    /// <summary>Texts per forward batch.</summary>
    [Setting("texts per forward batch")]
    public int BatchSize { get; init; } = 16;

    /// <summary>Checks every setting; throws <see cref="InvalidSettingException"/> naming the first one out of range.</summary>
    public void Validate()
    {
        Require.Count(Rank, "rank", 1, 1 << 16);
        Require.Count(MaxTokens, "max_tokens", 2, 1 << 20);
        Require.Count(BatchSize, "batch_size", 1, 4096);
        InvalidSettingException.Require(FirstLayer is null or >= 0, "first_layer", $"must be ≥ 0 (got {FirstLayer})");
        InvalidSettingException.Require(LastLayer is null or >= 0, "last_layer", $"must be ≥ 0 (got {LastLayer})");
    }

    /// <summary>The edited layer range (inclusive), defaults resolved for a model of <paramref name="numLayers"/> layers.</summary>
    /// <param name="numLayers">The model's number of layers.</param>
    public (int First, int Last) Layers(int numLayers)
    {
        int first = FirstLayer ?? (int)Math.Round(numLayers * 10.0 / 24.0, MidpointRounding.AwayFromZero);
        int last = LastLayer ?? numLayers - 1;
        if (first > last || last >= numLayers)
            throw new InvalidSettingException("first_layer", $"layer range {first}..{last} is not inside 0..{numLayers - 1}");
        return (first, last);
    }
}

/// <summary>What a ProFS edit did, per layer: the singular values of the centred difference matrix.</summary>
/// <param name="Layer">The edited layer.</param>
/// <param name="SingularValues">The top singular values of the centred difference matrix.</param>
/// <param name="CentringSingularValue">The singular value of the removed centring direction (0 when centring is off).</param>
/// <param name="Directions">The k projected directions (rows, unit length).</param>
public sealed record ProFsLayer(int Layer, double[] SingularValues, double CentringSingularValue, double[][] Directions);

/// <summary>
/// ProFS: a projection edit of the MLP value matrices from preference pairs. Per layer l, the embeddings X⁺_l / X⁻_l
/// (residual stream after block l, mean over each text's real tokens) of preferred and rejected texts give
/// T⁰ = (X⁺ − X⁻)/2; centring removes the top right singular vector v₀ of the uncentred X⁺ (the direction every text
/// shares, which would otherwise be projected out with the toxic one); the top k right singular vectors of the centred
/// T span the toxic subspace P_l, and the value matrix W (rows = value vectors written into the residual stream) becomes
/// W(I − P_l). Biases stay. The model is edited in place; save it with the checkpoint code.
/// </summary>
public static class ProFs
{
    /// <summary>Residual stream after each of <paramref name="layers"/>, averaged over each text's real positions:
    /// [layers][N, d] float64 CPU.</summary>
    public static Tensor[] Embed(ICausalLM model, Gpt2Tokenizer tokenizer, IReadOnlyList<string> texts, IReadOnlyList<int> layers, int maxTokens, int batchSize) =>
        Embed(model, tokenizer, texts, layers, maxTokens, batchSize, null);

    static Tensor[] Embed(ICausalLM model, Gpt2Tokenizer tokenizer, IReadOnlyList<string> texts, IReadOnlyList<int> layers, int maxTokens, int batchSize, Action<int>? done)
    {
        var pooled = PooledActivations.Of(model, tokenizer, texts, layers.Select(HookNames.ResidPost).ToList(), PooledActivations.Mean, maxTokens, batchSize, done);
        return pooled.Select(t => { var d = t.to(ScalarType.Float64); t.Dispose(); return d; }).ToArray();
    }

    /// <summary>The toxic subspace of one layer: [k, d] orthonormal rows (float64), from preferred/rejected embeddings
    /// [N, d]. Returns the singular values of the centred T and σ₀ of X⁺.</summary>
    public static (Tensor Directions, double[] Singular, double Centring) Subspace(Tensor preferred, Tensor rejected, int rank, bool centring)
    {
        using var scope = torch.NewDisposeScope();
        var t = (preferred - rejected) / 2;
        double s0 = double.NaN;
        if (centring)
        {
            var (_, sp, vhp) = torch.linalg.svd(preferred, fullMatrices: false);
            var v0 = vhp[0].unsqueeze(1); // [d, 1]
            t = t - t.matmul(v0).matmul(v0.T);
            s0 = sp[0].item<double>();
        }
        var (_, s, vh) = torch.linalg.svd(t, fullMatrices: false);
        int k = (int)Math.Min(rank, vh.shape[0]);
        var dirs = vh.narrow(0, 0, k).contiguous().DetachFromDisposeScope();
        return (dirs, s.data<double>().ToArray(), s0);
    }

    /// <summary>Edits the model in place from preference pairs (text = prompt + completion); returns per-layer details.
    /// <paramref name="log"/> receives what is done; <paramref name="progress"/> "embedding texts a/b" after each batch.</summary>
    public static List<ProFsLayer> Apply(ICausalLM model, Gpt2Tokenizer tokenizer, IReadOnlyList<PreferenceExample> pairs, ProFsOptions options, Action<string>? log = null, IProgress<string>? progress = null)
    {
        options.Validate();
        if (pairs.Count < 2) throw new InvalidInputException($"ProFS needs at least 2 preference pairs (got {pairs.Count})");
        var (first, last) = options.Layers(model.NumLayers);
        var layers = Enumerable.Range(first, last - first + 1).ToArray();
        log?.Invoke($"embedding {pairs.Count} preferred and {pairs.Count} rejected texts at layers {first}..{last}");
        var pos = Embed(model, tokenizer, pairs.Select(p => p.Prompt + p.Chosen).ToList(), layers, options.MaxTokens, options.BatchSize,
            n => progress?.Report($"embedding texts {n}/{2 * pairs.Count}"));
        var neg = Embed(model, tokenizer, pairs.Select(p => p.Prompt + p.Rejected).ToList(), layers, options.MaxTokens, options.BatchSize,
            n => progress?.Report($"embedding texts {pairs.Count + n}/{2 * pairs.Count}"));
        var result = new List<ProFsLayer>();
        try
        {
            for (int l = first; l <= last; l++)
            {
                using var scope = torch.NewDisposeScope();
                var (dirs, sv, s0) = Subspace(pos[l - first], neg[l - first], options.Rank, options.Centring);
                using (dirs)
                {
                    ProjectValues(model, l, dirs);
                    var rows = Enumerable.Range(0, (int)dirs.shape[0]).Select(j => dirs[j].data<double>().ToArray()).ToArray();
                    result.Add(new ProFsLayer(l, sv.Take(Math.Max(options.Rank, 8)).ToArray(), s0, rows));
                }
            }
        }
        finally { foreach (var x in pos.Concat(neg)) x.Dispose(); }
        return result;
    }

    /// <summary>W ← W(I − VᵀV) for the value matrix of <paramref name="layer"/>, V = [k, d] orthonormal rows; computed in
    /// float64 and written back in the model's dtype.</summary>
    public static void ProjectValues(ICausalLM model, int layer, Tensor directions)
    {
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        var w = model.MlpValues(layer);
        var v = directions.to(ScalarType.Float64).to(w.device);
        var w64 = w.to(ScalarType.Float64);
        var edited = w64 - w64.matmul(v.T).matmul(v);
        w.copy_(edited.to(w.dtype));
    }

    /// <summary>The edit's summary for edit.json: per-layer ranks and singular values, settings, pairs used, seconds.</summary>
    /// <param name="layers">The projections per edited layer.</param>
    /// <param name="o">The settings used.</param>
    /// <param name="pairs">How many preference pairs the edit was fitted on.</param>
    /// <param name="seconds">How long fitting took.</param>
    public static JsonObject Describe(IReadOnlyList<ProFsLayer> layers, ProFsOptions o, int pairs, double seconds) => new()
    {
        ["method"] = "profs", ["pairs"] = pairs, ["rank"] = o.Rank, ["centring"] = o.Centring, ["max_tokens"] = o.MaxTokens,
        ["seconds"] = Math.Round(seconds, 3),
        ["layers"] = new JsonArray(layers.Select(l => (JsonNode)new JsonObject
        {
            ["layer"] = l.Layer,
            ["singular_values"] = new JsonArray(l.SingularValues.Select(x => (JsonNode)JsonValue.Create(x)).ToArray()),
            ["centring_singular_value"] = double.IsNaN(l.CentringSingularValue) ? null : l.CentringSingularValue,
        }).ToArray()),
    };
}

using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;
using DetoxSharp.Checkpoints;
using DetoxSharp.Data;
using DetoxSharp.Models;
using DetoxSharp.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Interpretability;

/// <summary>An MLP value vector (row <see cref="Neuron"/> of <see cref="ICausalLM.MlpValues"/>(<see cref="Layer"/>)) and its cosine with a direction.</summary>
/// <param name="Layer">The block.</param>
/// <param name="Neuron">The row of the value matrix (MLP neuron index).</param>
/// <param name="Cosine">Cosine with the direction.</param>
/// <param name="Norm">The vector's L2 norm.</param>
public sealed record RankedVector(int Layer, int Neuron, double Cosine, double Norm)
{
    /// <summary>The paper's name of the vector, MLP.v_&lt;neuron&gt;^&lt;layer&gt;.</summary>
    public string Label => $"MLP.v_{Neuron}^{Layer}";
}

/// <summary>A vocabulary token and its score under the unembedding (logit-lens projection of a vector).</summary>
/// <param name="Id">The token id.</param>
/// <param name="Text">The decoded token.</param>
/// <param name="Score">Its logit: the dot product of the vector with the token's unembedding row.</param>
public sealed record TokenScore(int Id, string Text, double Score);

/// <summary>
/// The toxic value vectors of Lee et al. 2024: rank all MLP value vectors by cosine similarity with W_Toxic (top-k per
/// layer, then a global sort), take the SVD of the top-N unit-normalised vectors (columns of a d×N matrix; left
/// singular vectors U[0], U[1] …, sign arbitrary), and project vectors onto the vocabulary through the unembedding.
/// </summary>
public static class ToxicVectors
{
    /// <summary>The file of <c>detox vectors</c>' output holding the ranked vectors and the SVD.</summary>
    public const string TensorFile = "vectors.safetensors";

    /// <summary>Ranks the rows of each layer's value matrix ([mlp, d] each) by cosine with <paramref name="direction"/> [d]:
    /// the <paramref name="perLayer"/> best of each layer, then all of them sorted by cosine, descending.</summary>
    public static List<RankedVector> Rank(IReadOnlyList<Tensor> valuesPerLayer, Tensor direction, int perLayer = 100)
    {
        if (perLayer < 1) throw new InvalidSettingException("per_layer", $"must be ≥ 1 (got {perLayer})");
        var all = new List<RankedVector>();
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        var dir = direction.detach().to(ScalarType.Float32).cpu().flatten();
        var dirUnit = dir / dir.norm().clamp_min(1e-30);
        for (int l = 0; l < valuesPerLayer.Count; l++)
        {
            using var ls = torch.NewDisposeScope();
            var v = valuesPerLayer[l].detach().to(ScalarType.Float32).cpu();
            if (v.shape[1] != dir.shape[0]) throw new ArgumentException($"layer {l}: value vectors have width {v.shape[1]}, direction has {dir.shape[0]}");
            var norms = v.norm(1);
            var cos = v.matmul(dirUnit) / norms.clamp_min(1e-30);
            int k = (int)Math.Min(perLayer, v.shape[0]);
            var (vals, idx) = cos.topk(k);
            var va = vals.data<float>().ToArray();
            var ia = idx.data<long>().ToArray();
            var na = norms.data<float>().ToArray();
            for (int j = 0; j < k; j++) all.Add(new RankedVector(l, (int)ia[j], va[j], na[ia[j]]));
        }
        return all.OrderByDescending(r => r.Cosine).ThenBy(r => r.Layer).ThenBy(r => r.Neuron).ToList();
    }

    /// <summary>The <paramref name="perLayer"/> value vectors of each layer with the highest cosine with <paramref name="direction"/>, all
    /// layers merged and sorted by cosine, descending.</summary>
    public static List<RankedVector> Rank(ICausalLM model, Tensor direction, int perLayer = 100) =>
        Rank(Enumerable.Range(0, model.NumLayers).Select(model.MlpValues).ToList(), direction, perLayer);

    /// <summary>The raw value vectors of <paramref name="ranked"/> stacked, [n, d] float32 CPU.</summary>
    public static Tensor Stack(ICausalLM model, IEnumerable<RankedVector> ranked)
    {
        using var _ = torch.no_grad();
        var rows = ranked.Select(r => model.MlpValues(r.Layer)[r.Neuron].detach().to(ScalarType.Float32).cpu()).ToList();
        if (rows.Count == 0) throw new InvalidInputException("no vectors to stack");
        var t = torch.stack(rows);
        foreach (var r in rows) r.Dispose();
        return t;
    }

    /// <summary>SVD of the unit-normalised rows of <paramref name="vectors"/> [N, d] placed as columns of a d×N matrix.
    /// Returns U [d, k] (left singular vectors as columns, k = min(d, N)) and the singular values [k].</summary>
    public static (Tensor U, Tensor S) Svd(Tensor vectors)
    {
        using var scope = torch.NewDisposeScope();
        var v = vectors.to(ScalarType.Float32).cpu();
        var unit = v / v.norm(1, keepdim: true).clamp_min(1e-30);
        var (u, s, _) = torch.linalg.svd(unit.t(), fullMatrices: false);
        return (u.contiguous().MoveToOuterDisposeScope(), s.MoveToOuterDisposeScope());
    }

    /// <summary>Top tokens of <paramref name="vector"/> [d] through the unembedding [V, d] (raw projection, no final norm).</summary>
    public static List<TokenScore> TopTokens(Tensor unembedding, Tensor vector, Gpt2Tokenizer? tokenizer, int k = 10)
    {
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        var logits = unembedding.detach().to(ScalarType.Float32).matmul(vector.to(ScalarType.Float32).to(unembedding.device).flatten()).cpu();
        var (vals, idx) = logits.topk((int)Math.Min(k, logits.shape[0]));
        var va = vals.data<float>().ToArray();
        var ia = idx.data<long>().ToArray();
        return ia.Select((id, j) => new TokenScore((int)id, SafeText(tokenizer, (int)id), va[j])).ToList();
    }

    static string SafeText(Gpt2Tokenizer? tok, int id)
    {
        if (tok is null || id >= tok.VocabSize) return $"<{id}>";
        try { return tok.TokenText(id); } catch (Exception) { return $"<{id}>"; }
    }

    /// <summary>Settings of <c>detox vectors</c>: vectors per layer, top tokens, SVD size.</summary>
    public sealed record Options
    {
        /// <summary>Value vectors kept per layer before the global sort.</summary>
        [Setting("value vectors kept per layer before the global sort")]
        public int PerLayer { get; init; } = 100;
        /// <summary>Vectors stacked for the SVD (paper: 128).</summary>
        [Setting("top vectors (unit-normalised) stacked for the SVD")]
        public int SvdVectors { get; init; } = 128;
        /// <summary>Singular vectors reported.</summary>
        [Setting("singular vectors U[0..k) reported and saved")]
        public int SvdComponents { get; init; } = 3;
        /// <summary>Top vectors reported with their tokens.</summary>
        [Setting("top vectors listed with their tokens")]
        public int Report { get; init; } = 20;
        /// <summary>Tokens per vector.</summary>
        [Setting("tokens per vector")]
        public int TopTokens { get; init; } = 10;

        /// <summary>Checks every setting; throws <see cref="InvalidSettingException"/> naming the first one out of range.</summary>
        public void Validate()
        {
            if (PerLayer < 1) throw new InvalidSettingException("per_layer", $"must be ≥ 1 (got {PerLayer})");
            if (SvdVectors < 1) throw new InvalidSettingException("svd_vectors", $"must be ≥ 1 (got {SvdVectors})");
            if (SvdComponents < 1) throw new InvalidSettingException("svd_components", $"must be ≥ 1 (got {SvdComponents})");
            if (Report < 1) throw new InvalidSettingException("report", $"must be ≥ 1 (got {Report})");
            if (TopTokens < 1) throw new InvalidSettingException("top_tokens", $"must be ≥ 1 (got {TopTokens})");
        }
    }

    /// <summary>Finding (b)'s count: for the <paramref name="count"/> value vectors most aligned with
    /// <paramref name="direction"/>, how many of each one's <paramref name="topTokens"/> top vocabulary projections are
    /// toxic words.</summary>
    internal static List<(RankedVector Vector, int ToxicTokens)> ToxicTopTokenCounts(ICausalLM model, Gpt2Tokenizer? tokenizer, Tensor direction,
        ToxicWordList words, int perLayer, int count, int topTokens)
    {
        var ranked = Rank(model, direction, perLayer).Take(count).ToList();
        return ranked.Select(r =>
        {
            using var v = model.MlpValues(r.Layer)[r.Neuron].detach().clone();
            return (r, TopTokens(model.Unembedding, v, tokenizer, topTokens).Count(t => words.IsToxic(t.Text)));
        }).ToList();
    }

    /// <summary>
    /// The paper's Table 1 into <paramref name="outDir"/>: vectors.json (ranking, SVD, top tokens), vectors.csv (one row per
    /// reported vector), vectors.safetensors (w_toxic [d], top_vectors [N,d] raw, svd_u [k,d] rows = U[0..k], svd_s [k]).
    /// Returns the JSON written.
    /// </summary>
    public static JsonObject Analyze(ICausalLM model, Gpt2Tokenizer? tokenizer, ToxicityProbe probe, Options options, string outDir)
    {
        options.Validate();
        probe.CheckFits(model);
        using var scope = torch.NewDisposeScope();
        var wToxic = probe.WToxic;
        var ranked = Rank(model, wToxic, options.PerLayer);
        int n = Math.Min(options.SvdVectors, ranked.Count);
        var top = Stack(model, ranked.Take(n));
        var (u, s) = Svd(top);
        int k = (int)Math.Min(options.SvdComponents, u.shape[1]);
        // Singular vectors have an arbitrary sign; orient each so that it points along W_Toxic (cos ≥ 0), so that
        // "subtract svd0" removes toxicity rather than adding it.
        var uRows = u.narrow(1, 0, k).t().contiguous();
        var signs = uRows.matmul(wToxic.to(ScalarType.Float32)).sign();
        uRows = (uRows * torch.where(signs.eq(0), torch.ones_like(signs), signs).unsqueeze(1)).contiguous();
        var unemb = model.Unembedding;

        var table = new JsonArray();
        var csv = new StringBuilder("kind,name,layer,neuron,cosine_with_w_toxic,norm,top_tokens\n");
        void Row(string kind, string name, int? layer, int? neuron, double cos, double norm, List<TokenScore> toks)
        {
            table.Add(new JsonObject
            {
                ["kind"] = kind, ["name"] = name, ["layer"] = layer, ["neuron"] = neuron,
                ["cosine_with_w_toxic"] = cos, ["norm"] = norm,
                ["top_tokens"] = new JsonArray(toks.Select(t => (JsonNode)new JsonObject { ["id"] = t.Id, ["text"] = t.Text, ["score"] = t.Score }).ToArray()),
            });
            csv.Append(string.Join(",", kind, Csv(name), layer?.ToString(CultureInfo.InvariantCulture) ?? "", neuron?.ToString(CultureInfo.InvariantCulture) ?? "",
                cos.ToString("R", CultureInfo.InvariantCulture), norm.ToString("R", CultureInfo.InvariantCulture),
                Csv(string.Join(" | ", toks.Select(t => t.Text))))).Append('\n');
        }
        double wNorm = wToxic.norm().item<float>();
        Row("probe", "W_Toxic", null, null, 1.0, wNorm, TopTokens(unemb, wToxic, tokenizer, options.TopTokens));
        for (int j = 0; j < Math.Min(options.Report, ranked.Count); j++)
        {
            var r = ranked[j];
            Row("value_vector", r.Label, r.Layer, r.Neuron, r.Cosine, r.Norm, TopTokens(unemb, top.shape[0] > j ? top[j] : model.MlpValues(r.Layer)[r.Neuron], tokenizer, options.TopTokens));
        }
        var wUnit = wToxic / wToxic.norm().clamp_min(1e-30);
        for (int c = 0; c < k; c++)
        {
            var uc = uRows[c];
            double cos = uc.dot(wUnit).item<float>();
            Row("svd", $"SVD.U_Toxic[{c}]", null, null, cos, 1.0, TopTokens(unemb, uc, tokenizer, options.TopTokens));
        }

        var ranking = new JsonArray(ranked.Take(n).Select((r, i) => (JsonNode)new JsonObject
        { ["rank"] = i, ["layer"] = r.Layer, ["neuron"] = r.Neuron, ["cosine"] = r.Cosine, ["norm"] = r.Norm }).ToArray());
        var result = new JsonObject
        {
            ["num_layers"] = model.NumLayers, ["d_model"] = model.DModel, ["mlp_dim"] = model.MlpDim,
            ["per_layer"] = options.PerLayer, ["svd_vectors"] = n,
            ["svd_singular_values"] = new JsonArray(s.data<float>().ToArray().Take(Math.Max(k, 10)).Select(x => (JsonNode)JsonValue.Create((double)x)!).ToArray()),
            ["table"] = table,
            ["ranking"] = ranking,
            ["projection"] = "raw vector · Unembedding^T (no final norm), as in the paper",
        };
        Directory.CreateDirectory(outDir);
        Safetensors.Save(Path.Combine(outDir, TensorFile), new Dictionary<string, Tensor>
        {
            ["w_toxic"] = wToxic.contiguous(), ["top_vectors"] = top.contiguous(), ["svd_u"] = uRows, ["svd_s"] = s.narrow(0, 0, k).contiguous(),
            ["top_layers"] = torch.tensor(ranked.Take(n).Select(r => (long)r.Layer).ToArray()),
            ["top_neurons"] = torch.tensor(ranked.Take(n).Select(r => (long)r.Neuron).ToArray()),
        });
        AtomicFile.WriteAllText(Path.Combine(outDir, "vectors.csv"), csv.ToString());
        AtomicFile.WriteAllText(Path.Combine(outDir, "vectors.json"), result.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
        return result;
    }

    internal static string Csv(string s) => s.IndexOfAny([',', '"', '\n', '\r']) >= 0 ? "\"" + s.Replace("\"", "\"\"") + "\"" : s;
}

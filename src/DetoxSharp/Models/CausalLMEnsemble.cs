using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Models;

/// <summary>
/// K models of one family and one configuration run as ONE forward pass: every weight is stacked along a leading
/// ensemble dimension ([K, in, out]) and each product is a single batched matmul (bmm) over all K, with one KV
/// cache of batch K·B for all of them. A generation step then costs about one forward of a K-times-larger batch instead
/// of K forwards — on the CPU at small widths most of a step is per-operator overhead, which this divides by K
/// (DExperts' base, expert and anti-expert: issue 18's speed budget).
/// </summary>
/// <remarks>
/// <para>Stackable (<see cref="WhyNotStackable"/>): GPT-2-family models (<see cref="Gpt2Model"/>) with equal
/// architecture, dtype and device, no hook registered on any of them (a hook sees one model's activations; the stacked
/// pass has no per-model hook points) and no LoRA adapter attached. Other families (Llama) are not stacked: callers
/// fall back to K separate forwards.</para>
/// <para>The stacked weights are a snapshot taken at construction (under no_grad, no gradient): later edits of the
/// models' parameters are not seen, so build the ensemble for one generation call and dispose it afterwards. It
/// holds one more copy of all K models' weights.</para>
/// <para>Results equal the K separate forwards up to float rounding: the same operations in the same order per model,
/// batched (EnsembleTests: max |Δlogit| ≤ 1e-4 in float32 on tiny random models, with and without the KV cache and
/// with left padding).</para>
/// </remarks>
public sealed class CausalLMEnsemble : IDisposable
{
    /// <summary>Above this many bytes of stacked weights (the copy the ensemble holds) <see cref="TryCreate"/> declines:
    /// at that size a forward is bound by reading the weights, which stacking does not reduce, and the copy costs memory.
    /// Default 2 GiB (the toy models and GPT-2 small stack; three GPT-2 medium do not).</summary>
    public static long MaxStackedBytes { get; set; } = 2L << 30;

    readonly Gpt2Config _cfg;
    readonly int _k;
    readonly Tensor _wte, _wpe, _lnfW, _lnfB;
    readonly LayerWeights[] _layers;
    readonly List<Tensor> _owned = [];

    sealed record LayerWeights(Tensor Ln1W, Tensor Ln1B, Tensor AttnW, Tensor AttnB, Tensor ProjW, Tensor ProjB,
        Tensor Ln2W, Tensor Ln2B, Tensor FcW, Tensor FcB, Tensor MlpProjW, Tensor MlpProjB);

    /// <summary>Number of stacked models.</summary>
    public int Count => _k;
    /// <summary>Vocabulary size (shared by all models).</summary>
    public int VocabSize => _cfg.VocabSize;
    /// <summary>Context length (shared by all models).</summary>
    public int MaxPositions => _cfg.NPositions;

    /// <summary>Why <paramref name="models"/> cannot be stacked (one line), or null when they can.</summary>
    public static string? WhyNotStackable(IReadOnlyList<ICausalLM> models)
    {
        if (models.Count == 0) return "no models";
        if (models.Any(m => m is not Gpt2Model)) return $"only GPT-2-family models are stacked (got {string.Join(", ", models.Select(m => m.Family).Distinct())})";
        var g = models.Cast<Gpt2Model>().ToList();
        var extra = new System.Text.Json.Nodes.JsonObject();
        var c0 = g[0].Config with { Extra = extra };
        if (g.Any(m => (m.Config with { Extra = extra }) != c0)) return "the models' configurations differ";
        if (g.Any(m => m.DType != g[0].DType)) return "the models' dtypes differ";
        if (g.Any(m => m.Device.type != g[0].Device.type || m.Device.index != g[0].Device.index)) return "the models live on different devices";
        if (g.Any(m => m.Hooks.Any)) return "a model has hooks registered (the stacked pass has no per-model hook points)";
        if (g.Any(m => m.modules().OfType<Conv1D>().Any(c => c.Delta is not null))) return "a model has a LoRA adapter attached";
        double bytes = g.Count * g[0].Config.ParameterCount * ElementSize(g[0].DType);
        if (bytes > MaxStackedBytes) return $"the stacked weights would take {bytes / (1 << 20):F0} MiB (> {MaxStackedBytes >> 20} MiB)";
        return null;
    }

    static int ElementSize(ScalarType t) => t switch
    {
        ScalarType.Float64 => 8,
        ScalarType.Float16 or ScalarType.BFloat16 => 2,
        _ => 4,
    };

    /// <summary>The ensemble of <paramref name="models"/> (in that order), or null when <see cref="WhyNotStackable"/> names a reason.</summary>
    public static CausalLMEnsemble? TryCreate(IReadOnlyList<ICausalLM> models) =>
        WhyNotStackable(models) is null ? new CausalLMEnsemble(models.Cast<Gpt2Model>().ToList()) : null;

    CausalLMEnsemble(IReadOnlyList<Gpt2Model> models)
    {
        _cfg = models[0].Config;
        _k = models.Count;
        using var noGrad = torch.no_grad();
        var dicts = models.Select(m => m.state_dict()).ToList();
        Tensor Stack(string name, bool row = false)
        {
            using var scope = torch.NewDisposeScope();
            var parts = dicts.Select(d => d[name].detach()).ToList();
            var s = torch.stack(parts, 0);
            if (row) s = s.unsqueeze(1); // [K, 1, n]: broadcasts over the rows of a [K, N, n] activation
            s = s.contiguous().DetachFromDisposeScope();
            _owned.Add(s);
            return s;
        }
        _wte = Stack("wte.weight");
        _wpe = Stack("wpe.weight");
        _lnfW = Stack("ln_f.weight", true);
        _lnfB = Stack("ln_f.bias", true);
        _layers = Enumerable.Range(0, _cfg.NLayer).Select(l => new LayerWeights(
            Stack($"h.{l}.ln_1.weight", true), Stack($"h.{l}.ln_1.bias", true),
            Stack($"h.{l}.attn.c_attn.weight"), Stack($"h.{l}.attn.c_attn.bias", true),
            Stack($"h.{l}.attn.c_proj.weight"), Stack($"h.{l}.attn.c_proj.bias", true),
            Stack($"h.{l}.ln_2.weight", true), Stack($"h.{l}.ln_2.bias", true),
            Stack($"h.{l}.mlp.c_fc.weight"), Stack($"h.{l}.mlp.c_fc.bias", true),
            Stack($"h.{l}.mlp.c_proj.weight"), Stack($"h.{l}.mlp.c_proj.bias", true))).ToArray();
    }

    /// <summary>One KV cache for all K models (batch K·B, model k's rows k·B … k·B+B−1).</summary>
    public KvCache NewCache(int capacity) => new(_cfg.NLayer, capacity);

    /// <summary>Logits of every model, [K, batch, T, vocab]; as <see cref="ICausalLM.Forward"/> for each model (same
    /// ids, mask and positions for all K), <paramref name="cache"/> from <see cref="NewCache"/>.</summary>
    public Tensor Forward(Tensor inputIds, Tensor? attentionMask = null, KvCache? cache = null)
    {
        long b = inputIds.shape[0], t = inputIds.shape[1];
        var x = Blocks(inputIds, attentionMask, cache);
        return Head(x).view(_k, b, t, _cfg.VocabSize);
    }

    /// <summary>Logits of the last position only, [K, batch, 1, vocab] (the final norm and head run on one position).</summary>
    public Tensor ForwardLast(Tensor inputIds, Tensor? attentionMask = null, KvCache? cache = null)
    {
        long b = inputIds.shape[0], t = inputIds.shape[1];
        var x = Blocks(inputIds, attentionMask, cache).view(_k, b, t, _cfg.NEmbd).narrow(2, t - 1, 1).reshape(_k, b, _cfg.NEmbd);
        return Head(x).view(_k, b, 1, _cfg.VocabSize);
    }

    Tensor Head(Tensor x) => torch.bmm(Norm(x, _lnfW, _lnfB), _wte.transpose(1, 2));

    /// <summary>x [K, N, in] · W [K, in, out] + b [K, 1, out]: one bmm over the ensemble, the bias added in place.
    /// (Not torch.baddbmm(b, x, W): with this TorchSharp it failed with a shape error that expanded W to the product's
    /// shape — the arguments do not reach libtorch in the documented roles — so the bias is added separately.)</summary>
    static Tensor Affine(Tensor x, Tensor w, Tensor b) => torch.bmm(x, w).add_(b);

    Tensor Norm(Tensor x, Tensor w, Tensor b) =>
        torch.addcmul(b, torch.nn.functional.layer_norm(x, [_cfg.NEmbd], null, null, _cfg.LayerNormEpsilon), w, 1);

    Tensor Activation(Tensor pre) => Gpt2Mlp.Activate(_cfg.ActivationFunction, pre);

    /// <summary>The residual stream after the last block, [K, B·T, d] — <see cref="Gpt2Model"/>'s forward with every
    /// product batched over the ensemble dimension.</summary>
    Tensor Blocks(Tensor inputIds, Tensor? attentionMask, KvCache? cache)
    {
        if (inputIds.dim() != 2) throw new ArgumentException($"input_ids must be [batch, T], got [{string.Join(",", inputIds.shape)}]");
        long b = inputIds.shape[0], t = inputIds.shape[1];
        int d = _cfg.NEmbd, heads = _cfg.NHead, hd = d / heads;
        int past = cache?.Length ?? 0;
        var dev = inputIds.device;
        if (past + t > _cfg.NPositions)
            throw new ArgumentException($"sequence of {past + t} tokens is longer than the model's context ({_cfg.NPositions})");
        if (attentionMask is not null && attentionMask.shape[1] != past + t)
            throw new ArgumentException($"attention_mask covers {attentionMask.shape[1]} positions, expected {past + t}");

        // positions and mask exactly as Gpt2Model builds them (left padding does not shift positions)
        Tensor positions = attentionMask is not null
            ? (attentionMask.to(ScalarType.Int64).cumsum(1) - 1).clamp_min(0).narrow(1, past, t)
            : torch.arange(past, past + t, ScalarType.Int64, dev).unsqueeze(0).expand(b, t);
        Tensor? mask = null;
        bool causal = false;
        var qPos = torch.arange(past, past + t, ScalarType.Int64, dev).unsqueeze(1);
        var kPos = torch.arange(0, past + t, ScalarType.Int64, dev).unsqueeze(0);
        if (attentionMask is null)
        {
            if (past == 0) causal = t > 1;
            else if (t > 1) mask = kPos.le(qPos).unsqueeze(0).unsqueeze(0);
        }
        else
        {
            var keyOk = attentionMask.to(ScalarType.Bool).unsqueeze(1).unsqueeze(1); // [b,1,1,K]
            mask = (keyOk & kPos.le(qPos)).logical_or(kPos.eq(qPos)).repeat(_k, 1, 1, 1); // [K·b, 1, T, past+T]
        }

        var x = _wte.index_select(1, inputIds.reshape(-1)) + _wpe.index_select(1, positions.reshape(-1)); // [K, b·T, d]
        for (int l = 0; l < _layers.Length; l++)
        {
            var w = _layers[l];
            var qkv = Affine(Norm(x, w.Ln1W, w.Ln1B), w.AttnW, w.AttnB).split(d, 2);
            var q = qkv[0].reshape(_k * b, t, heads, hd).transpose(1, 2);
            var k = qkv[1].reshape(_k * b, t, heads, hd).transpose(1, 2);
            var v = qkv[2].reshape(_k * b, t, heads, hd).transpose(1, 2);
            if (cache is not null) (k, v) = cache.Append(l, k, v);
            var y = CpuAttention.Sdpa(q, k, v, mask, causal).transpose(1, 2).reshape(_k, b * t, d);
            x = x + Affine(y, w.ProjW, w.ProjB);
            var post = Activation(Affine(Norm(x, w.Ln2W, w.Ln2B), w.FcW, w.FcB));
            x = x + Affine(post, w.MlpProjW, w.MlpProjB);
        }
        cache?.Advance((int)t);
        return x;
    }

    /// <summary>Frees the stacked weights.</summary>
    public void Dispose()
    {
        foreach (var t in _owned) t.Dispose();
        _owned.Clear();
    }
}

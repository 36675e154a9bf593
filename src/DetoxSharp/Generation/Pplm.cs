using System.Globalization;
using DetoxSharp.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Generation;

/// <summary>PPLM's attribute model: a linear classifier p(class | x̄) = softmax(x̄·W + b) on the mean of the last
/// block's residual stream, W [d, classes], b [classes] (the toxicity probe of Interpretability implements it; defined
/// here so that generation does not depend on the analysis code).</summary>
public interface IAttributeModel
{
    /// <summary>Weights [d, classes].</summary>
    Tensor W { get; }
    /// <summary>Bias [classes].</summary>
    Tensor B { get; }
    /// <summary>Throws <see cref="InvalidInputException"/> when W does not match the model's width.</summary>
    void CheckFits(ICausalLM model, string flag = "--probe");
}

/// <summary>PPLM settings. Defaults are Lee et al. 2024's for their dispreferred (toxic) continuations.</summary>
public sealed record PplmOptions
{
    /// <summary>α, length of each normalised gradient step on the past keys/values.</summary>
    [Setting("PPLM step size α")]
    public double StepSize { get; init; } = 0.4;
    /// <summary>Gradient steps per token.</summary>
    [Setting("gradient steps per token")]
    public int Iterations { get; init; } = 50;
    /// <summary>Weight of KL(p_perturbed ‖ p_unperturbed) of the next token in the attribute loss.</summary>
    [Setting("weight of KL(perturbed ‖ unperturbed) of the next token")]
    public double KlScale { get; init; } = 0.1;
    /// <summary>Geometric-mean fusion: p ∝ p_pert^gm · p_unpert^(1−gm).</summary>
    [Setting("fusion p^gm · p_unpert^(1−gm)")]
    public double GmScale { get; init; } = 0.95;
    /// <summary>0 = no top-k filter.</summary>
    [Setting("top-k filter of the fused distribution (0 = off)")]
    public int TopK { get; init; } = 10;
    /// <summary>Temperature of the perturbed distribution.</summary>
    [Setting("temperature of the perturbed distribution")]
    public double Temperature { get; init; } = 1.0;
    /// <summary>Soft future tokens the attribute model sees (each = the expected embedding of the next token).</summary>
    [Setting("soft future tokens the probe sees")]
    public int Horizon { get; init; } = 1;
    /// <summary>Past positions perturbed, counted back from the newest; 0 = all.</summary>
    [Setting("perturb only the newest N past positions (0 = all)")]
    public int Window { get; init; }
    /// <summary>Gradient normalisation exponent: step = −α·g/‖g‖^γ.</summary>
    [Setting("gradient normalisation exponent γ (step = −α·g/‖g‖^γ)")]
    public double Gamma { get; init; } = 1.0;
    /// <summary>Argmax of the fused distribution instead of sampling (PPLM's sample=False).</summary>
    [Setting("argmax of the fused distribution instead of sampling")]
    public bool Greedy { get; init; }
    /// <summary>Class of the attribute model the perturbation pushes towards (probe: 1 = toxic).</summary>
    public int TargetClass { get; init; } = 1;
    /// <summary>Tokens to generate.</summary>
    public int MaxNewTokens { get; init; } = 20;
    /// <summary>Prompt i (0-based, in the order given) samples with its own generator seeded Seed + i, so a prompt's
    /// continuation does not depend on which other prompts share its batch.</summary>
    public long Seed { get; init; } = 42;
    /// <summary>Stop a sequence at its first end-of-text token.</summary>
    public bool StopAtEos { get; init; } = true;

    /// <summary>Checks every setting; throws <see cref="InvalidSettingException"/> naming the first one out of range.</summary>
    public void Validate()
    {
        if (!(StepSize >= 0) || double.IsInfinity(StepSize)) throw new InvalidSettingException("step_size", $"must be a finite number ≥ 0 (got {StepSize})");
        Require.Count(Iterations, "iterations", 0, 1000);
        if (!(KlScale >= 0) || double.IsInfinity(KlScale)) throw new InvalidSettingException("kl_scale", $"must be a finite number ≥ 0 (got {KlScale})");
        if (!(GmScale >= 0 && GmScale <= 1)) throw new InvalidSettingException("gm_scale", $"must be in [0, 1] (got {GmScale})");
        if (TopK < 0) throw new InvalidSettingException("top_k", $"must be ≥ 0 (got {TopK})");
        if (!(Temperature > 0) || double.IsInfinity(Temperature)) throw new InvalidSettingException("temperature", $"must be > 0 (got {Temperature})");
        if (Horizon > 1000) throw new InvalidSettingException("horizon", $"exceeds the limit of 1000 (got {Horizon})");
        if (Horizon < 1) throw new InvalidSettingException("horizon", $"must be ≥ 1 (the attribute loss reaches the past only through the horizon) (got {Horizon})");
        if (Window < 0) throw new InvalidSettingException("window", $"must be ≥ 0 (0 = all past positions) (got {Window})");
        if (!(Gamma >= 0) || double.IsInfinity(Gamma)) throw new InvalidSettingException("gamma", $"must be a finite number ≥ 0 (got {Gamma})");
        if (TargetClass is not (0 or 1)) throw new InvalidInputException($"PPLM target class must be 0 or 1, got {TargetClass}");
        if (MaxNewTokens < 0) throw new InvalidSettingException("max_new_tokens", $"must be ≥ 0 (got {MaxNewTokens})");
    }

    /// <summary>How a continuation was made, for the records' <c>source</c> field.</summary>
    public string Describe => string.Create(CultureInfo.InvariantCulture,
        $"pplm:probe step={StepSize} iters={Iterations} kl={KlScale} gm={GmScale} top-k={TopK} T={Temperature} horizon={Horizon} window={Window} gamma={Gamma} class={TargetClass} {(Greedy ? "greedy" : $"sample seed={Seed}+i")}");
}

/// <summary>
/// PPLM (Dathathri et al. 2020, "Plug and Play Language Models"), attribute-model ("discriminator") mode, with a
/// linear probe as the attribute model — how Lee et al. 2024 made their dispreferred continuations. Per generated
/// token, following uber-research/PPLM <c>run_pplm.py</c>:
/// <list type="number">
/// <item>the unperturbed model reads the newest token (its own KV cache) → unperturbed next-token logits and the
/// token's residual; the running sum of unperturbed residuals over the earlier positions is kept;</item>
/// <item>offsets ΔK, ΔV on every layer's past keys/values start at 0 and take <see cref="PplmOptions.Iterations"/>
/// normalised gradient steps on L = CE(probe(h̄), target) + kl·Σ p·log(p/p_unpert) (1e-15 guards as PPLM):
/// p = softmax(logits of the newest token under past+Δ); h̄ = (Σ earlier unperturbed residuals + the newest
/// token's residual under past+Δ, detached + the residuals of <see cref="PplmOptions.Horizon"/> soft tokens p·E fed
/// through the UNPERTURBED cache) / (past + 1 + horizon). The gradient reaches Δ through p only, as in PPLM. Step per
/// layer: Δ ← Δ − α·g/(‖g‖+1e-15)^γ, ‖g‖ over the layer's key and value gradients together (the original stacks a
/// layer's key and value into one tensor);</item>
/// <item>Δ is folded into the perturbed cache (perturbations persist for later tokens, as PPLM's past does), the
/// newest token is run with it, p = softmax(logits/T) is fused with the unperturbed p_u as p^gm·p_u^(1−gm),
/// top-k filtered, renormalised and sampled (or argmax).</item>
/// </list>
/// <b>Batches.</b> Prompts run together, left-padded with an attention mask. The loss of a batch is the sum of the rows'
/// losses; a row's offsets only reach its own row (attention never crosses rows, padding is masked, so padded positions
/// get exactly zero gradient), and the gradient norm — hence the step — is taken per row and per layer. Every row
/// therefore follows the same trajectory as it would alone (tested); each row samples with its own generator.
/// Differences from run_pplm.py, on purpose: the attribute model reads the last block's residual BEFORE the final
/// layer norm (<c>blocks.{L-1}.hook_resid_post</c>, the feature the toxicity probe is trained on); PPLM's
/// classifier head read Hugging Face's hidden_states[-1], which is after ln_f. A window counts the NEWEST positions
/// (the paper's and the option help's meaning; the reference's mask selects the oldest ones) — irrelevant for the
/// default window 0 = all. Generation stops at eos. Lee et al.'s port added one shared offset to a layer's keys and
/// values; here keys and values have their own offsets, as in the original.
/// Model weights and caller-visible state are not changed: the gradients are taken with autograd.grad with respect
/// to the offsets only, and the KV caches are private to each batch.
/// </summary>
public static class Pplm
{
    internal const double SmallConst = 1e-15;

    /// <summary>Generates a continuation per prompt (new tokens only, cut at eos), <paramref name="batchSize"/> prompts at a
    /// time; prompt i samples with seed Seed + i (or <paramref name="promptSeeds"/>[i] when given: e.g. Seed + the prompt's
    /// index in the whole file when <paramref name="prompts"/> is one shard of it). <paramref name="promptDone"/> is called
    /// with the number of prompts finished.</summary>
    internal static List<int[]> Generate(ICausalLM model, IAttributeModel probe, IReadOnlyList<int[]> prompts, PplmOptions o, Action<int>? promptDone = null,
        int batchSize = 16, IReadOnlyList<long>? promptSeeds = null)
    {
        if (promptSeeds is not null && promptSeeds.Count != prompts.Count)
            throw new ArgumentException($"{promptSeeds.Count} prompt seeds for {prompts.Count} prompts", nameof(promptSeeds));
        o.Validate();
        if (batchSize < 1) throw new InvalidInputException($"PPLM batch size must be ≥ 1, got {batchSize}");
        probe.CheckFits(model);
        foreach (var p in prompts)
        {
            if (p.Length == 0) throw new InvalidInputException("cannot generate from an empty prompt (encode at least one token, e.g. <|endoftext|>)");
            if (p.Length + o.MaxNewTokens + o.Horizon - 1 > model.MaxPositions)
                throw new InvalidInputException($"prompt ({p.Length} tokens) + {o.MaxNewTokens} new tokens + PPLM horizon {o.Horizon} exceeds the model's context of {model.MaxPositions}");
        }
        var results = new List<int[]>(prompts.Count);
        bool wasTraining = model.Module.training;
        model.Module.eval();
        try
        {
            for (int start = 0; start < prompts.Count; start += batchSize)
            {
                var batch = prompts.Skip(start).Take(batchSize).ToList();
                var rngs = o.Greedy ? null : batch.Select((_, i) => new torch.Generator((ulong)(promptSeeds?[start + i] ?? o.Seed + start + i), model.Device)).ToArray();
                try
                {
                    using var dec = new PplmDecoder(model, probe, batch, o);
                    results.AddRange(dec.Run(rngs));
                }
                finally { if (rngs is not null) foreach (var g in rngs) g.Dispose(); }
                promptDone?.Invoke(results.Count);
            }
        }
        finally { if (wasTraining) model.Module.train(); }
        return results;
    }
}

/// <summary>One batch's PPLM decoding state: a perturbed and an unperturbed KV cache over the left-padded prompts, the
/// attention mask, the running sum of unperturbed last-block residuals per row, and a hook that captures the last
/// block's resid_post of each forward pass.</summary>
internal sealed class PplmDecoder : IDisposable
{
    readonly ICausalLM _model;
    readonly PplmOptions _o;
    readonly KvCache _pert, _unpert;
    readonly IDisposable _hook;
    readonly Tensor _w, _b, _acc, _target, _maskAll, _pads;
    readonly ScalarType _dt;
    readonly int _batch;
    readonly List<int>[] _generated;
    readonly bool[] _done;
    Tensor? _captured;
    readonly long[] _last;

    /// <summary>Unperturbed next-token logits [B, V] (float32/64) of the current step; set by <see cref="BeginStep"/>.</summary>
    internal Tensor? UnpertLogits { get; private set; }
    Tensor? _unpertHidden;
    internal KvCache PerturbedCache => _pert;

    public PplmDecoder(ICausalLM model, IAttributeModel probe, int[] prompt, PplmOptions o) : this(model, probe, [prompt], o) { }

    public PplmDecoder(ICausalLM model, IAttributeModel probe, IReadOnlyList<int[]> prompts, PplmOptions o)
    {
        _model = model;
        _o = o;
        _batch = prompts.Count;
        _dt = model.DType == ScalarType.Float64 ? ScalarType.Float64 : ScalarType.Float32;
        int maxLen = prompts.Max(p => p.Length);
        int cap = maxLen + o.MaxNewTokens;
        _pert = model.NewCache(cap);
        _unpert = model.NewCache(cap);
        _generated = prompts.Select(_ => new List<int>()).ToArray();
        _done = new bool[_batch];
        _hook = model.Hooks.Add(HookNames.ResidPost(model.NumLayers - 1), (x, _) => { _captured = x; return null; });
        using var scope = torch.NewDisposeScope();
        _w = probe.W.to(_dt).to(model.Device).DetachFromDisposeScope();
        _b = probe.B.to(_dt).to(model.Device).DetachFromDisposeScope();
        _target = torch.full([_batch], o.TargetClass, ScalarType.Int64, model.Device).DetachFromDisposeScope();
        _acc = torch.zeros([_batch, model.DModel], _dt, model.Device).DetachFromDisposeScope();
        // mask over every position a pass can see (prompt, generated tokens, horizon): left padding is 0
        var pads = prompts.Select(p => (long)(maxLen - p.Length)).ToArray();
        var mask = new long[_batch * (cap + o.Horizon)];
        for (int b = 0; b < _batch; b++)
            for (int j = (int)pads[b]; j < cap + o.Horizon; j++) mask[b * (cap + o.Horizon) + j] = 1;
        _maskAll = torch.tensor(mask, [_batch, cap + o.Horizon], ScalarType.Int64, model.Device).DetachFromDisposeScope();
        _pads = torch.tensor(pads, ScalarType.Int64, model.Device).DetachFromDisposeScope();
        _last = prompts.Select(p => (long)p[^1]).ToArray();
        if (maxLen > 1)
        {
            using var noGrad = torch.no_grad();
            var ids = new long[_batch * (maxLen - 1)];
            for (int b = 0; b < _batch; b++)
                for (int j = 0; j < prompts[b].Length - 1; j++) ids[b * (maxLen - 1) + pads[b] + j] = prompts[b][j];
            var idt = torch.tensor(ids, [_batch, maxLen - 1], ScalarType.Int64, model.Device);
            var m = Mask(maxLen - 1);
            model.ForwardLast(idt, m, _unpert);
            _acc.add_((_captured!.to(_dt) * m.unsqueeze(-1).to(_dt)).sum(1));
            model.ForwardLast(idt, m, _pert);
        }
        _captured = null;
    }

    Tensor Mask(int length) => _maskAll.narrow(1, 0, length);

    Tensor LastIds() => torch.tensor(_last, [_batch, 1], ScalarType.Int64, _model.Device);

    /// <summary>The unperturbed model reads the newest token: unperturbed logits, and its residual for the running sum.</summary>
    internal void BeginStep()
    {
        using var noGrad = torch.no_grad();
        UnpertLogits = _model.ForwardLast(LastIds(), Mask(_unpert.Length + 1), _unpert).select(1, 0).to(_dt);
        _unpertHidden = _captured!.to(_dt).sum(1);
    }

    /// <summary>The newest token's last-block residual [B, d] used by the latest <see cref="Loss"/>.</summary>
    internal Tensor? LastNewestHidden { get; private set; }

    /// <summary>
    /// The PPLM attribute loss (summed over the batch's rows) for offsets <paramref name="dK"/>, <paramref name="dV"/> on
    /// the perturbed cache's positions (shapes of <see cref="KvCache.Keys"/>). Differentiable in the offsets. Needs
    /// <see cref="BeginStep"/>. The newest token's residual under the perturbed past enters detached, as in PPLM;
    /// <paramref name="newestHidden"/> replaces it by a given value (so that a finite difference can hold it fixed).
    /// </summary>
    internal Tensor Loss(IReadOnlyList<Tensor> dK, IReadOnlyList<Tensor> dV, Tensor? newestHidden = null)
    {
        using var grad = torch.enable_grad();
        int n = _pert.Length;
        Tensor logits;
        _pert.SetOffsets(dK, dV);
        _pert.Frozen = true;
        try { logits = _model.ForwardLast(LastIds(), Mask(n + 1), _pert).select(1, 0).to(_dt); }
        finally { _pert.Frozen = false; _pert.ClearOffsets(); }
        LastNewestHidden = newestHidden ?? _captured!.to(_dt).sum(1).detach();
        var hidden = _acc + LastNewestHidden;
        var probs = torch.nn.functional.softmax(logits, -1);

        // horizon: soft tokens p·E through the unperturbed past (which already holds the newest token)
        var soft = probs.to(_model.DType).matmul(_model.TokenEmbedding.detach()).unsqueeze(1); // [B, 1, d]
        if (_o.Horizon > 1) soft = soft.expand(_batch, _o.Horizon, soft.shape[2]);
        _unpert.Frozen = true;
        try { _model.ForwardEmbeddings(soft, Mask(_unpert.Length + _o.Horizon), _unpert); }
        finally { _unpert.Frozen = false; }
        hidden = hidden + _captured!.to(_dt).sum(1);

        // a row's mean covers its real positions only: past without padding + newest + horizon
        var count = (_pads.neg() + (n + 1 + _o.Horizon)).to(_dt).unsqueeze(1);
        var prediction = (hidden / count).matmul(_w) + _b;
        var loss = torch.nn.functional.cross_entropy(prediction, _target, reduction: nn.Reduction.Sum);
        if (_o.KlScale > 0)
        {
            var u = torch.nn.functional.softmax(UnpertLogits!, -1);
            u = u + SmallConstWhereTiny(u);
            var pc = probs + SmallConstWhereTiny(probs);
            loss = loss + _o.KlScale * (pc * (pc / u).log()).sum();
        }
        return loss;
    }

    static Tensor SmallConstWhereTiny(Tensor p) => (p.le(Pplm.SmallConst).to(p.dtype) * Pplm.SmallConst).detach();

    /// <summary>Runs the gradient iterations; returns the accumulated offsets (in the current dispose scope).</summary>
    internal (Tensor[] K, Tensor[] V) Perturb()
    {
        int layers = _model.NumLayers, n = _pert.Length;
        var accK = Enumerable.Range(0, layers).Select(l => torch.zeros_like(_pert.Keys(l)!)).ToArray();
        var accV = Enumerable.Range(0, layers).Select(l => torch.zeros_like(_pert.Values(l)!)).ToArray();
        Tensor? window = null;
        if (_o.Window > 0 && n > _o.Window)
            window = torch.cat([torch.zeros([1, 1, n - _o.Window, 1], accK[0].dtype, accK[0].device), torch.ones([1, 1, _o.Window, 1], accK[0].dtype, accK[0].device)], 2);
        for (int it = 0; it < _o.Iterations; it++)
        {
            using var scope = torch.NewDisposeScope();
            var dK = accK.Select(a => a.detach().clone().requires_grad_(true)).ToArray();
            var dV = accV.Select(a => a.detach().clone().requires_grad_(true)).ToArray();
            var loss = Loss(dK, dV);
            var grads = torch.autograd.grad([loss], [.. dK, .. dV]);
            using var noGrad = torch.no_grad();
            for (int l = 0; l < layers; l++)
            {
                Tensor gk = grads[l], gv = grads[layers + l];
                if (window is not null) { gk = gk * window; gv = gv * window; }
                // one norm per row: the step of a row does not depend on the other rows of the batch
                var norm = (gk.pow(2).sum([1, 2, 3]) + gv.pow(2).sum([1, 2, 3])).sqrt() + Pplm.SmallConst;
                var scale = (-_o.StepSize / norm.pow(_o.Gamma)).view(-1, 1, 1, 1);
                accK[l].add_(gk * scale);
                accV[l].add_(gv * scale);
            }
        }
        return (accK, accV);
    }

    /// <summary>One decoding step up to the choice: the unperturbed model reads the newest token, the past is perturbed
    /// (when there is a past and iterations), the newest token runs with the perturbed past, and the fused, top-k
    /// filtered, renormalised next-token distribution [B, V] is returned (in the current dispose scope). The running
    /// residual sum takes the newest token's unperturbed residual. Follow with <see cref="Advance"/>.</summary>
    internal Tensor StepDistribution()
    {
        BeginStep();
        if (_o.Iterations > 0 && _pert.Length > 0)
        {
            var (k, v) = Perturb();
            _pert.SetOffsets(k, v);
            _pert.ApplyOffsets();
        }
        using var noGrad = torch.no_grad();
        var logits = _model.ForwardLast(LastIds(), Mask(_pert.Length + 1), _pert).select(1, 0).to(_dt);
        var p = torch.nn.functional.softmax(logits / _o.Temperature, -1);
        var pu = torch.nn.functional.softmax(UnpertLogits!, -1);
        p = p.pow(_o.GmScale) * pu.pow(1 - _o.GmScale);
        if (_o.TopK > 0 && _o.TopK < p.shape[^1])
        {
            var kth = p.topk(_o.TopK, -1).values.select(-1, -1).unsqueeze(-1);
            p = p.masked_fill(p.lt(kth), 0.0);
        }
        p = p / p.sum(-1, keepdim: true);
        _acc.add_(_unpertHidden!);
        return p;
    }

    /// <summary>The next token of every row from <paramref name="p"/>: argmax, or one draw per row with the row's own generator.</summary>
    internal long[] Pick(Tensor p, torch.Generator[]? rngs)
    {
        if (_o.Greedy || rngs is null) return p.argmax(-1).cpu().data<long>().ToArray();
        var next = new long[_batch];
        for (int b = 0; b < _batch; b++) next[b] = torch.multinomial(p.narrow(0, b, 1), 1, false, rngs[b]).item<long>();
        return next;
    }

    /// <summary>Feeds the chosen tokens: a row stops collecting at eos (it keeps running with the others, unseen).</summary>
    internal void Advance(long[] toks)
    {
        _captured = null;
        LastNewestHidden = null;
        UnpertLogits = null;
        _unpertHidden = null;
        for (int b = 0; b < _batch; b++)
        {
            if (!_done[b])
            {
                if (_o.StopAtEos && toks[b] == _model.EosTokenId) _done[b] = true;
                else _generated[b].Add((int)toks[b]);
            }
            _last[b] = toks[b];
        }
    }

    /// <summary>Decodes up to MaxNewTokens tokens per row (a row stops at eos); each token's work runs in its own dispose scope.</summary>
    public List<int[]> Run(torch.Generator[]? rngs)
    {
        for (int step = 0; step < _o.MaxNewTokens && _done.Any(d => !d); step++)
        {
            using var scope = torch.NewDisposeScope();
            Advance(Pick(StepDistribution(), rngs));
        }
        return _generated.Select(g => g.ToArray()).ToList();
    }

    public void Dispose()
    {
        _hook.Dispose();
        _pert.Dispose();
        _unpert.Dispose();
        _w.Dispose(); _b.Dispose(); _acc.Dispose(); _target.Dispose(); _maskAll.Dispose(); _pads.Dispose();
    }
}

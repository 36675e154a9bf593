using System.Text.Json.Nodes;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace DetoxSharp.Models;

/// <summary>
/// transformers' LlamaForCausalLM, MistralForCausalLM and Qwen2ForCausalLM on TorchSharp — one implementation, the
/// differences are switches of <see cref="LlamaConfig"/> (q/k/v bias, sliding window, tied head). Field names are the
/// checkpoint's tensor names (model.embed_tokens, model.layers.{i}.self_attn.q_proj …, model.norm, lm_head), so
/// <c>state_dict()</c> keys equal the hub's. Semantics: pre-RMSNorm blocks (normalised in float32, cast back, then
/// scaled), rotary positions in the rotate-half layout, grouped-query attention (each key/value head serves
/// num_attention_heads / num_key_value_heads query heads), SwiGLU MLP down(silu(gate(x)) · up(x)). No dropout.
/// </summary>
/// <remarks>
/// Interpretability view (Lee et al.'s treatment of Llama-2's GLU MLPs): the value vectors are the columns of
/// down_proj, i.e. the rows of <see cref="MlpValues"/> = down_proj.weightᵀ [mlp, d]; the neuron activation is
/// <c>silu(gate·x) · (up·x)</c> (hook <c>mlp.hook_post</c>; <c>mlp.hook_pre</c> is gate·x and
/// <c>mlp.hook_pre_linear</c> up·x as in TransformerLens). The keys are the rows of up_proj (<see cref="MlpKeys"/> =
/// up_proj.weightᵀ [d, mlp]): the activation is linear in them, so scaling key i by s scales neuron i's activation by
/// exactly s — the same effect as scaling a GPT-2 key for a positive pre-activation, without the gate's nonlinearity.
/// </remarks>
public sealed class LlamaModel : nn.Module, ICausalLM
{
    /// <summary>The architecture this model was built with.</summary>
    public LlamaConfig Config { get; private set; }

#pragma warning disable IDE1006 // names are the checkpoint's
    readonly LlamaBackbone model;
    Linear? lm_head;
#pragma warning restore IDE1006

    readonly HookPoints _hooks;

    /// <summary>Whether a padded batch's layers run on its real tokens only: RMSNorms, the q/k/v, output and MLP products
    /// and the residual adds on the N real positions, attention on q/k/v unpacked to [batch, T] (zeros at the padding,
    /// which the mask hides). As <see cref="Gpt2Model.Packing"/>: same values at real positions up to float rounding,
    /// zeros at padding positions, never with hooks; <see cref="TokenPacking.Auto"/> (default) packs models at least
    /// 768 wide when at least 1/32 of the positions are padding. Copied by <see cref="Clone"/>.</summary>
    public TokenPacking Packing { get; set; } = TokenPacking.Auto;
    readonly BlockHookNames[] _blockHookNames;
    readonly float[] _invFreq;

    /// <summary>A Llama-family model with the given architecture (randomly initialised unless <paramref name="initialize"/> is false).</summary>
    /// <param name="config">The architecture.</param>
    /// <param name="device">Where the weights live; null = the CPU.</param>
    /// <param name="dtype">The weights' dtype.</param>
    /// <param name="initialize">false skips the random initialisation (the weights are about to be loaded).</param>
    public LlamaModel(LlamaConfig config, Device? device = null, ScalarType dtype = ScalarType.Float32, bool initialize = true) : base(config.Architecture)
    {
        NativeSetup.InitMkl(); // before the first matrix multiply (MKL picks its kernels once)
        config.Validate();
        Config = config;
        // Parameters are allocated in their final dtype and device: a float32 detour would need twice a bf16 model's memory.
        var at = new At(device ?? torch.CPU, dtype);
        model = new LlamaBackbone(config, at);
        if (!config.TieWordEmbeddings) lm_head = nn.Linear(config.HiddenSize, config.VocabSize, hasBias: false, device: at.Device, dtype: at.DType);
        RegisterComponents();
        if (initialize) InitWeights();
        _invFreq = Rope.InverseFrequencies(config);
        _blockHookNames = Enumerable.Range(0, config.NumHiddenLayers).Select(l => new BlockHookNames(l)).ToArray();
        _hooks = new HookPoints(AllHookNames(config.NumHiddenLayers));
        eval();
    }

    /// <summary>The GPT-2 block names plus TransformerLens' <c>mlp.hook_pre_linear</c> (up·x) after <c>mlp.hook_pre</c> (gate·x);
    /// no <c>hook_pos_embed</c> (rotary positions are not added to the residual stream).</summary>
    static IEnumerable<string> AllHookNames(int layers) =>
        new[] { HookNames.Embed }.Concat(Enumerable.Range(0, layers).SelectMany(BlockNames)).Append(HookNames.FinalNorm);

    /// <summary>In forward order: up·x (hook_pre_linear) right after gate·x (hook_pre).</summary>
    static List<string> BlockNames(int l)
    {
        var n = HookPoints.BlockNames(l).ToList();
        n.Insert(n.IndexOf(HookNames.MlpPre(l)) + 1, HookNames.MlpPreLinear(l));
        return n;
    }

    /// <summary>transformers' _init_weights: N(0, initializer_range = 0.02) for linear and embedding weights, zero biases,
    /// RMSNorm weights 1.</summary>
    void InitWeights()
    {
        using var _ = torch.no_grad();
        foreach (var (name, p) in named_parameters())
        {
            if (name.EndsWith("norm.weight")) p.fill_(1.0);
            else if (name.EndsWith(".bias")) p.zero_();
            else p.normal_(0, 0.02);
        }
    }

    /// <inheritdoc/>
    public string Family => Config.ModelType;
    /// <inheritdoc/>
    public int VocabSize => Config.VocabSize;
    /// <inheritdoc/>
    public int DModel => Config.HiddenSize;
    /// <inheritdoc/>
    public int NumLayers => Config.NumHiddenLayers;
    /// <inheritdoc/>
    public int NumHeads => Config.NumAttentionHeads;
    /// <inheritdoc/>
    public int MlpDim => Config.IntermediateSize;
    /// <inheritdoc/>
    public int MaxPositions => Config.MaxPositionEmbeddings;
    /// <inheritdoc/>
    public int EosTokenId => Config.EosTokenId;
    /// <inheritdoc/>
    public Device Device => model.embed_tokens.weight!.device;
    /// <inheritdoc/>
    public ScalarType DType => model.embed_tokens.weight!.dtype;
    /// <inheritdoc/>
    public nn.Module Module => this;
    /// <inheritdoc/>
    public HookPoints Hooks => _hooks;
    /// <inheritdoc/>
    public Tensor TokenEmbedding => model.embed_tokens.weight!;
    /// <inheritdoc/>
    public Tensor Unembedding => lm_head?.weight ?? model.embed_tokens.weight!;

    /// <inheritdoc/>
    public Tensor MlpKeys(int layer) => model.layers[layer].mlp.up_proj.weight!.t();
    /// <summary>Llama-style MLPs have no biases: zeros (a fresh tensor, not a parameter).</summary>
    public Tensor MlpKeyBias(int layer) => torch.zeros(Config.IntermediateSize, DType, Device);
    /// <inheritdoc/>
    public Tensor MlpValues(int layer) => model.layers[layer].mlp.down_proj.weight!.t();
    /// <inheritdoc/>
    public string MlpKeysParameterName(int layer) => $"model.layers.{layer}.mlp.up_proj.weight";
    /// <inheritdoc/>
    public string MlpValuesParameterName(int layer) => $"model.layers.{layer}.mlp.down_proj.weight";
    /// <inheritdoc/>
    public IReadOnlyList<ResidualWriter> ResidualWriters(int layer) =>
    [
        new($"model.layers.{layer}.self_attn.o_proj", model.layers[layer].self_attn.o_proj.weight!.t(), model.layers[layer].self_attn.o_proj.bias),
        new($"model.layers.{layer}.mlp.down_proj", model.layers[layer].mlp.down_proj.weight!.t(), null),
    ];

    /// <inheritdoc/>
    public KvCache NewCache(int capacity) => new(Config.NumHiddenLayers, capacity);

    /// <inheritdoc/>
    public JsonObject ConfigJson() => Config.ToJson(TorchDtype.ConfigName(DType));

    /// <summary>Grows the input embedding and, when untied, the LM head (new rows = mean of the old rows of each).</summary>
    public void ResizeVocabulary(int newSize)
    {
        int old = Config.VocabSize;
        if (newSize == old) return;
        if (newSize < old) throw new ArgumentException($"cannot shrink the vocabulary from {old} to {newSize}");
        using var _ = torch.no_grad();
        static Parameter Grow(Tensor w, int extra) =>
            new(torch.cat([w, w.mean([0], keepdim: true).expand(extra, w.shape[1])], 0).contiguous(), w.requires_grad);
        var oldEmbed = model.embed_tokens.weight!;
        model.embed_tokens.weight = Grow(oldEmbed, newSize - old);
        oldEmbed.Dispose();
        if (lm_head is not null)
        {
            var oldHead = lm_head.weight!;
            lm_head.weight = Grow(oldHead, newSize - old);
            oldHead.Dispose();
        }
        Config = Config with { VocabSize = newSize };
    }

    /// <inheritdoc/>
    public ICausalLM Clone()
    {
        var copy = new LlamaModel(Config, Device, DType, initialize: false);
        using var _ = torch.no_grad();
        var src = state_dict();
        foreach (var (name, p) in copy.named_parameters()) p.copy_(src[name]);
        if (!training) copy.eval(); else copy.train();
        copy.Packing = Packing;
        return copy;
    }

    /// <inheritdoc/>
    public Tensor Forward(Tensor inputIds, Tensor? attentionMask = null, KvCache? cache = null)
    {
        int past = cache?.Length ?? 0;
        var x = Run(null, CheckIds(inputIds), attentionMask, cache);
        return LmHead(FinalNormHooked(x, past, attentionMask));
    }

    /// <inheritdoc/>
    public Tensor ForwardLast(Tensor inputIds, Tensor? attentionMask = null, KvCache? cache = null)
    {
        int past = cache?.Length ?? 0;
        long t = inputIds.shape[1];
        var x = Run(null, CheckIds(inputIds), attentionMask, cache).narrow(1, t - 1, 1);
        return LmHead(FinalNormHooked(x, past + (int)t - 1, attentionMask));
    }

    /// <summary>Rotary families add nothing to the token embedding: <paramref name="inputsEmbeds"/> is the residual stream's start.</summary>
    public Tensor ForwardEmbeddings(Tensor inputsEmbeds, Tensor? attentionMask = null, KvCache? cache = null)
    {
        if (inputsEmbeds.dim() != 3 || inputsEmbeds.shape[2] != Config.HiddenSize)
            throw new ArgumentException($"inputs_embeds must be [batch, T, {Config.HiddenSize}], got [{string.Join(",", inputsEmbeds.shape)}]");
        int past = cache?.Length ?? 0;
        var x = Run(inputsEmbeds, null, attentionMask, cache);
        return LmHead(FinalNormHooked(x, past, attentionMask));
    }

    /// <inheritdoc/>
    public Tensor ResidualStream(Tensor inputIds, Tensor? attentionMask = null, KvCache? cache = null) => Run(null, CheckIds(inputIds), attentionMask, cache);

    /// <inheritdoc/>
    public Tensor ApplyFinalNorm(Tensor residual) => model.norm.Forward(residual);

    static Tensor CheckIds(Tensor ids) =>
        ids.dim() == 2 ? ids : throw new ArgumentException($"input_ids must be [batch, T], got [{string.Join(",", ids.shape)}]");

    Tensor FinalNormHooked(Tensor x, int past, Tensor? mask) => _hooks.Run(HookNames.FinalNorm, model.norm.Forward(x), past, mask);

    Tensor LmHead(Tensor h) => torch.nn.functional.linear(h, Unembedding);

    Tensor Run(Tensor? embeds, Tensor? inputIds, Tensor? attentionMask, KvCache? cache)
    {
        var src = embeds ?? inputIds!;
        long b = src.shape[0], t = src.shape[1];
        var dev = src.device;
        int past = cache?.Length ?? 0;
        if (past + t > Config.MaxPositionEmbeddings)
            throw new ArgumentException($"sequence of {past + t} tokens is longer than the model's context ({Config.MaxPositionEmbeddings})");
        if (attentionMask is not null && attentionMask.shape[1] != past + t)
            throw new ArgumentException($"attention_mask covers {attentionMask.shape[1]} positions, expected {past + t}");

        // Positions: with padding, count only real tokens so that left padding does not shift positions (as
        // transformers' generate does: cumsum(mask) - 1).
        var positions = attentionMask is not null
            ? (attentionMask.to(ScalarType.Int64).cumsum(1) - 1).clamp_min(0).narrow(1, past, t)
            : torch.arange(past, past + t, ScalarType.Int64, dev).unsqueeze(0).expand(b, t);
        var (cos, sin) = RotaryTables(positions, dev);

        var full = AttentionMasks.Build(t, past, attentionMask, null, dev);
        var windowed = Config.SlidingWindow is int w ? AttentionMasks.Build(t, past, attentionMask, w, dev) : full;

        var x = _hooks.Run(HookNames.Embed, embeds ?? model.embed_tokens.forward(inputIds!), past, attentionMask);
        return Layers(x, (cos, sin), full, windowed, cache, past, attentionMask);
    }

    /// <inheritdoc/>
    public Tensor ResidualStream(Tensor inputIds, SequenceLayout layout)
    {
        CheckIds(inputIds);
        long b = inputIds.shape[0], t = inputIds.shape[1];
        layout.Check(b, t, Config.MaxPositionEmbeddings);
        var rotary = RotaryTables(layout.Positions, inputIds.device);
        (Tensor?, bool) full = (layout.Allowed, false), windowed = full;
        if (Config.SlidingWindow is int w)
        {
            // the window counts positions in each sequence, as the layout numbers them
            var distance = layout.Positions.unsqueeze(1).unsqueeze(-1) - layout.Positions.unsqueeze(1).unsqueeze(2); // [b,1,T,T]
            windowed = (layout.Allowed.logical_and(distance.lt(w)), false);
        }
        var x = _hooks.Run(HookNames.Embed, model.embed_tokens.forward(inputIds), 0, layout.Real);
        return Layers(x, rotary, full, windowed, null, 0, layout.Real);
    }

    /// <summary>The decoder layers on the embedded input <paramref name="x"/> [b, t, d] (packed to its real rows when
    /// <see cref="Packing"/> says so), each with its full or sliding-window mask; the cache advanced by t.</summary>
    Tensor Layers(Tensor x, (Tensor Cos, Tensor Sin) rotary, (Tensor?, bool) full, (Tensor?, bool) windowed, KvCache? cache, int past, Tensor? attentionMask)
    {
        long b = x.shape[0], t = x.shape[1];
        var packed = PackedRows(attentionMask, past, b, t);
        if (packed is not null) x = packed.Pack(x);
        for (int l = 0; l < Config.NumHiddenLayers; l++)
        {
            var (mask, causal) = Config.WindowOf(l) is null ? full : windowed;
            x = model.layers[l].Forward(x, rotary.Cos, rotary.Sin, mask, causal, cache, l, _hooks, _blockHookNames[l], past, attentionMask, packed);
        }
        cache?.Advance((int)t);
        return packed is null ? x : packed.Unpack(x);
    }

    /// <summary>The real positions of this pass when its layers run packed (<see cref="Packing"/>), or null.</summary>
    internal TokenRows? PackedRows(Tensor? attentionMask, int past, long b, long t) =>
        TokenRows.For(Packing, Config.HiddenSize, _hooks, attentionMask, past, b, t);

    /// <summary>cos/sin [b, 1, T, head_dim] of positions · inv_freq, duplicated over the two halves (rotate-half layout);
    /// computed in float32 and cast to the model's dtype, as transformers does.</summary>
    (Tensor cos, Tensor sin) RotaryTables(Tensor positions, Device dev)
    {
        var inv = torch.tensor(_invFreq, ScalarType.Float32, dev);
        var freqs = positions.to(ScalarType.Float32).unsqueeze(-1) * inv; // [b, T, d/2]
        var emb = torch.cat([freqs, freqs], -1).unsqueeze(1);
        return (emb.cos().to(DType), emb.sin().to(DType));
    }
}

/// <summary>Where and in which dtype a module's parameters are allocated.</summary>
sealed record At(Device Device, ScalarType DType);

/// <summary>Boolean attention masks [b or 1, 1, T, past+T] (true = attend), shared by the rotary families.</summary>
static class AttentionMasks
{
    /// <summary>Causal, optionally limited to the last <paramref name="window"/> positions (q − k &lt; window, transformers'
    /// sliding-window rule), and to real keys when <paramref name="attentionMask"/> is given. Returns (null, causal flag)
    /// when libtorch's causal fast path computes the same thing. Every query may attend to itself, so that a padded
    /// query never has an empty softmax (NaN that zero weights cannot cancel); real tokens never see padding.</summary>
    public static (Tensor? mask, bool causal) Build(long t, int past, Tensor? attentionMask, int? window, Device dev)
    {
        bool windowBites = window is int w && past + t > w;
        if (attentionMask is null && !windowBites)
        {
            if (past == 0) return (null, t > 1);
            if (t == 1) return (null, false);
        }
        var q = torch.arange(past, past + t, ScalarType.Int64, dev).unsqueeze(1);
        var k = torch.arange(0, past + t, ScalarType.Int64, dev).unsqueeze(0);
        var allowed = k.le(q);
        if (windowBites) allowed = allowed.logical_and((q - k).lt(window!.Value));
        if (attentionMask is null) return (allowed.unsqueeze(0).unsqueeze(0), false);
        var keyOk = attentionMask.to(ScalarType.Bool).unsqueeze(1).unsqueeze(1); // [b,1,1,K]
        return ((keyOk & allowed).logical_or(k.eq(q)), false);
    }
}

/// <summary>The decoder stack (transformers' LlamaModel): tensor names model.embed_tokens, model.layers.{i}, model.norm.</summary>
sealed class LlamaBackbone : nn.Module
{
#pragma warning disable IDE1006
    public readonly Embedding embed_tokens;
    public readonly ModuleList<LlamaDecoderLayer> layers;
    public readonly RmsNorm norm;
#pragma warning restore IDE1006

    public LlamaBackbone(LlamaConfig c, At at) : base("LlamaModel")
    {
        embed_tokens = nn.Embedding(c.VocabSize, c.HiddenSize, device: at.Device, dtype: at.DType);
        layers = new ModuleList<LlamaDecoderLayer>(Enumerable.Range(0, c.NumHiddenLayers).Select(_ => new LlamaDecoderLayer(c, at)).ToArray());
        norm = new RmsNorm(c.HiddenSize, c.RmsNormEps, at);
        RegisterComponents();
    }
}

/// <summary>transformers' LlamaRMSNorm: x / √(mean(x²) + ε) in float32, cast back to the input dtype, then · weight.</summary>
internal sealed class RmsNorm : nn.Module
{
#pragma warning disable IDE1006
    public readonly Parameter weight;
#pragma warning restore IDE1006
    readonly double _eps;

    internal RmsNorm(int d, double eps, At at) : base("LlamaRMSNorm")
    {
        weight = new Parameter(torch.ones(d, at.DType, at.Device));
        _eps = eps;
        RegisterComponents();
    }

    public Tensor Forward(Tensor x)
    {
        var dtype = x.dtype;
        // transformers upcasts to fp32 (for bf16/fp16 models); a float64 model stays float64 here — casting it down
        // would make float64 analyses (and finite-difference gradient checks) only fp32-accurate
        var h = dtype == ScalarType.Float64 ? x : x.to(ScalarType.Float32);
        h = h * torch.rsqrt(h.pow(2).mean([-1], keepdim: true) + _eps);
        return weight * h.to(dtype);
    }
}

sealed class LlamaAttention : nn.Module
{
#pragma warning disable IDE1006
    public readonly Linear q_proj, k_proj, v_proj, o_proj;
#pragma warning restore IDE1006
    readonly int _heads, _kvHeads, _headDim;

    public LlamaAttention(LlamaConfig c, At at) : base("LlamaAttention")
    {
        _heads = c.NumAttentionHeads; _kvHeads = c.KvHeads; _headDim = c.HeadDim;
        q_proj = nn.Linear(c.HiddenSize, _heads * _headDim, hasBias: c.QkvBias, device: at.Device, dtype: at.DType);
        k_proj = nn.Linear(c.HiddenSize, _kvHeads * _headDim, hasBias: c.QkvBias, device: at.Device, dtype: at.DType);
        v_proj = nn.Linear(c.HiddenSize, _kvHeads * _headDim, hasBias: c.QkvBias, device: at.Device, dtype: at.DType);
        o_proj = nn.Linear(_heads * _headDim, c.HiddenSize, hasBias: c.OutputBias, device: at.Device, dtype: at.DType);
        RegisterComponents();
    }

    static Tensor RotateHalf(Tensor x)
    {
        long half = x.shape[^1] / 2;
        return torch.cat([-x.narrow(-1, half, half), x.narrow(-1, 0, half)], -1);
    }

    /// <param name="x">[batch, T, hidden], or the real rows [N, hidden] when <paramref name="packed"/> is given (the
    /// result has the same layout).</param>
    public Tensor Forward(Tensor x, Tensor cos, Tensor sin, Tensor? mask, bool causal, KvCache? cache, int layer, HookPoints hooks, string hookZ, int past, Tensor? am,
        TokenRows? packed = null)
    {
        // .call rather than .forward: LoRA adapters (Checkpoints/LoraAdapters.cs) are forward hooks on these layers
        Tensor Proj(Linear p) => packed is null ? p.call(x) : packed.Unpack(p.call(x)); // attention needs [batch, T]
        var (qp, kp, vp) = (Proj(q_proj), Proj(k_proj), Proj(v_proj));
        long b = qp.shape[0], t = qp.shape[1];
        var q = qp.view(b, t, _heads, _headDim).transpose(1, 2);
        var k = kp.view(b, t, _kvHeads, _headDim).transpose(1, 2);
        var v = vp.view(b, t, _kvHeads, _headDim).transpose(1, 2);
        q = q * cos + RotateHalf(q) * sin;
        k = k * cos + RotateHalf(k) * sin;
        // The cache holds the kv_heads keys/values (grouped); they are repeated for the query heads only here.
        if (cache is not null) (k, v) = cache.Append(layer, k, v);
        if (_kvHeads != _heads)
        {
            int rep = _heads / _kvHeads;
            long kt = k.shape[2];
            k = k.unsqueeze(2).expand(b, _kvHeads, rep, kt, _headDim).reshape(b, _heads, kt, _headDim);
            v = v.unsqueeze(2).expand(b, _kvHeads, rep, kt, _headDim).reshape(b, _heads, kt, _headDim);
        }
        var y = CpuAttention.Sdpa(q, k, v, mask, causal);
        var z = hooks.Run(hookZ, y.transpose(1, 2), past, am).reshape(b, t, _heads * _headDim); // [b, T, heads·head_dim]
        return o_proj.call(packed is null ? z : packed.Pack(z));
    }
}

sealed class LlamaMlp : nn.Module
{
#pragma warning disable IDE1006
    public readonly Linear gate_proj, up_proj, down_proj;
#pragma warning restore IDE1006

    public LlamaMlp(LlamaConfig c, At at) : base("LlamaMLP")
    {
        gate_proj = nn.Linear(c.HiddenSize, c.IntermediateSize, hasBias: false, device: at.Device, dtype: at.DType);
        up_proj = nn.Linear(c.HiddenSize, c.IntermediateSize, hasBias: false, device: at.Device, dtype: at.DType);
        down_proj = nn.Linear(c.IntermediateSize, c.HiddenSize, hasBias: false, device: at.Device, dtype: at.DType);
        RegisterComponents();
    }
}

sealed class LlamaDecoderLayer : nn.Module
{
#pragma warning disable IDE1006
    public readonly LlamaAttention self_attn;
    public readonly LlamaMlp mlp;
    public readonly RmsNorm input_layernorm;
    public readonly RmsNorm post_attention_layernorm;
#pragma warning restore IDE1006

    public LlamaDecoderLayer(LlamaConfig c, At at) : base("LlamaDecoderLayer")
    {
        self_attn = new LlamaAttention(c, at);
        mlp = new LlamaMlp(c, at);
        input_layernorm = new RmsNorm(c.HiddenSize, c.RmsNormEps, at);
        post_attention_layernorm = new RmsNorm(c.HiddenSize, c.RmsNormEps, at);
        RegisterComponents();
    }

    /// <param name="x">[batch, T, hidden], or the real rows [N, hidden] when <paramref name="packed"/> is given.</param>
    public Tensor Forward(Tensor x, Tensor cos, Tensor sin, Tensor? mask, bool causal, KvCache? cache, int layer, HookPoints hooks, BlockHookNames n, int past, Tensor? am,
        TokenRows? packed = null)
    {
        x = hooks.Run(n.ResidPre, x, past, am);
        var a = hooks.Run(n.AttnOut, self_attn.Forward(input_layernorm.Forward(x), cos, sin, mask, causal, cache, layer, hooks, n.AttnZ, past, am, packed), past, am);
        x = hooks.Run(n.ResidMid, x + a, past, am);
        var h = post_attention_layernorm.Forward(x);
        var gate = hooks.Run(n.MlpPre, mlp.gate_proj.call(h), past, am);
        var up = hooks.Run(n.MlpPreLinear, mlp.up_proj.call(h), past, am);
        var post = hooks.Run(n.MlpPost, torch.nn.functional.silu(gate) * up, past, am);
        var m = hooks.Run(n.MlpOut, mlp.down_proj.call(post), past, am);
        return hooks.Run(n.ResidPost, x + m, past, am);
    }
}

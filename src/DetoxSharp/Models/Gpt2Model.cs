using System.Text.Json.Nodes;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace DetoxSharp.Models;

/// <summary>
/// Hugging Face's GPT-2 (GPT2LMHeadModel) on TorchSharp. Field names are the checkpoint's tensor names
/// (wte, wpe, h.{i}.ln_1, h.{i}.attn.c_attn …, ln_f), so <c>state_dict()</c> keys equal the hub's.
/// Semantics: pre-LayerNorm blocks, learned absolute positions, Conv1D weights stored [in, out],
/// q/k/v split in that order, attention scaled by 1/√head_dim, LM head tied to wte.
/// No dropout: this project fine-tunes and analyses, and dropout would make the analysis stochastic.
/// </summary>
public sealed class Gpt2Model : nn.Module, ICausalLM
{
    /// <summary>The architecture this model was built with.</summary>
    public Gpt2Config Config { get; private set; }

#pragma warning disable IDE1006 // names are the checkpoint's
    readonly Embedding wte;
    readonly Embedding wpe;
    readonly ModuleList<Gpt2Block> h;
    readonly LayerNorm ln_f;
#pragma warning restore IDE1006

    readonly HookPoints _hooks;
    readonly BlockHookNames[] _blockHookNames;

    /// <summary>
    /// Whether a padded batch's blocks run on its real tokens only. With an attention mask that marks padding, the
    /// per-token work of every block (LayerNorms, the q/k/v, output and MLP products, GELU, the residual adds) is done on
    /// the N real positions instead of all batch·T; attention unpacks its q/k/v to [batch, T] (zeros at the padding, which
    /// the mask hides) and packs its output again. Real positions get the same values up to float rounding (products of
    /// N instead of batch·T rows); padding positions come out as zeros instead of values nothing reads. Never with hooks
    /// registered (hooks see [batch, T] activations). <see cref="TokenPacking.Auto"/> (default) packs the passes of
    /// models at least 768 wide when at least 1/32 of the positions are padding — training and scoring alike, so that a policy equal to its reference gets the reference's
    /// log-probs to the bit (DPO's first loss is ln 2). Copied by <see cref="Clone"/>.
    /// </summary>
    public TokenPacking Packing { get; set; } = TokenPacking.Auto;

    /// <summary>A GPT-2 model with the given architecture (randomly initialised unless <paramref name="initialize"/> is false).</summary>
    /// <param name="config">The architecture.</param>
    /// <param name="device">Where the weights live; null = the CPU.</param>
    /// <param name="dtype">The weights' dtype.</param>
    /// <param name="initialize">false skips GPT-2's random initialisation (the weights are about to be loaded).</param>
    public Gpt2Model(Gpt2Config config, Device? device = null, ScalarType dtype = ScalarType.Float32, bool initialize = true) : base("GPT2LMHeadModel")
    {
        NativeSetup.InitMkl(); // before the first matrix multiply (MKL picks its kernels once)
        config.Validate();
        Config = config;
        wte = nn.Embedding(config.VocabSize, config.NEmbd);
        wpe = nn.Embedding(config.NPositions, config.NEmbd);
        h = new ModuleList<Gpt2Block>(Enumerable.Range(0, config.NLayer).Select(_ => new Gpt2Block(config)).ToArray());
        ln_f = nn.LayerNorm(config.NEmbd, config.LayerNormEpsilon);
        RegisterComponents();
        if (initialize) InitWeights();
        if (dtype != ScalarType.Float32 || (device is not null && device.type != DeviceType.CPU))
            this.to(device ?? torch.CPU, dtype);
        _hooks = new HookPoints(HookPoints.StandardNames(config.NLayer));
        _blockHookNames = Enumerable.Range(0, config.NLayer).Select(l => new BlockHookNames(l)).ToArray();
        eval();
    }

    /// <summary>GPT-2's initialisation: N(0, 0.02) weights, zero biases, and residual projections scaled by 1/√(2·n_layer).</summary>
    void InitWeights()
    {
        using var _ = torch.no_grad();
        foreach (var (name, p) in named_parameters())
        {
            if (name.EndsWith(".bias") || name.StartsWith("ln_f") || name.Contains(".ln_"))
            {
                if (name.EndsWith("weight")) p.fill_(1.0); else p.zero_();
            }
            else
            {
                double std = 0.02;
                if (name.EndsWith("c_proj.weight")) std /= Math.Sqrt(2.0 * Config.NLayer);
                p.normal_(0, std);
            }
        }
    }

    /// <inheritdoc/>
    public string Family => "gpt2";
    /// <inheritdoc/>
    public int VocabSize => Config.VocabSize;
    /// <inheritdoc/>
    public int DModel => Config.NEmbd;
    /// <inheritdoc/>
    public int NumLayers => Config.NLayer;
    /// <inheritdoc/>
    public int NumHeads => Config.NHead;
    /// <inheritdoc/>
    public int MlpDim => Config.MlpDim;
    /// <inheritdoc/>
    public int MaxPositions => Config.NPositions;
    /// <inheritdoc/>
    public int EosTokenId => Config.EosTokenId;
    /// <inheritdoc/>
    public Device Device => wte.weight!.device;
    /// <inheritdoc/>
    public ScalarType DType => wte.weight!.dtype;
    /// <inheritdoc/>
    public nn.Module Module => this;
    /// <inheritdoc/>
    public HookPoints Hooks => _hooks;
    /// <inheritdoc/>
    public Tensor Unembedding => wte.weight!;
    /// <inheritdoc/>
    public Tensor TokenEmbedding => wte.weight!;

    /// <inheritdoc/>
    public Tensor MlpKeys(int layer) => h[layer].mlp.c_fc.weight;
    /// <inheritdoc/>
    public Tensor MlpKeyBias(int layer) => h[layer].mlp.c_fc.bias;
    /// <inheritdoc/>
    public Tensor MlpValues(int layer) => h[layer].mlp.c_proj.weight;
    /// <inheritdoc/>
    public string MlpKeysParameterName(int layer) => $"h.{layer}.mlp.c_fc.weight";
    /// <inheritdoc/>
    public string MlpValuesParameterName(int layer) => $"h.{layer}.mlp.c_proj.weight";
    /// <inheritdoc/>
    public IReadOnlyList<ResidualWriter> ResidualWriters(int layer) =>
    [
        new($"h.{layer}.attn.c_proj", h[layer].attn.c_proj.weight, h[layer].attn.c_proj.bias),
        new($"h.{layer}.mlp.c_proj", h[layer].mlp.c_proj.weight, h[layer].mlp.c_proj.bias),
    ];

    /// <inheritdoc/>
    public KvCache NewCache(int capacity) => new(Config.NLayer, capacity);

    /// <inheritdoc/>
    public JsonObject ConfigJson() => Config.ToJson(TorchDtype.ConfigName(DType));

    /// <inheritdoc/>
    public void ResizeVocabulary(int newSize)
    {
        int old = Config.VocabSize;
        if (newSize == old) return;
        if (newSize < old) throw new ArgumentException($"cannot shrink the vocabulary from {old} to {newSize}");
        using var _ = torch.no_grad();
        var w = wte.weight!;
        var extra = w.mean([0], keepdim: true).expand(newSize - old, w.shape[1]);
        var grown = torch.cat([w, extra], 0);
        var oldWeight = wte.weight!;
        wte.weight = new Parameter(grown.contiguous(), oldWeight.requires_grad);
        oldWeight.Dispose();
        Config = Config with { VocabSize = newSize };
    }

    /// <inheritdoc/>
    public ICausalLM Clone()
    {
        var copy = new Gpt2Model(Config, Device, DType, initialize: false);
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
        var x = ResidualStreamCore(inputIds, attentionMask, cache);
        return LmHead(ApplyFinalNormHooked(x, past, attentionMask));
    }

    /// <summary>Logits of the last position only: the final norm and the LM head (V×d per position) run on one position
    /// instead of T, which saves most of a generation prefill's head cost.</summary>
    public Tensor ForwardLast(Tensor inputIds, Tensor? attentionMask = null, KvCache? cache = null)
    {
        int past = cache?.Length ?? 0;
        long t = inputIds.shape[1];
        var x = ResidualStreamCore(inputIds, attentionMask, cache).narrow(1, t - 1, 1);
        return LmHead(ApplyFinalNormHooked(x, past + (int)t - 1, attentionMask));
    }

    /// <inheritdoc/>
    public Tensor ResidualStream(Tensor inputIds, Tensor? attentionMask = null, KvCache? cache = null) => ResidualStreamCore(inputIds, attentionMask, cache);

    /// <summary>Logits = h · Eᵀ (tied head); batch-1 rows take <see cref="RowProducts.TiedHead"/>'s two-thread split.</summary>
    Tensor LmHead(Tensor h) => RowProducts.TiedHead(h, wte.weight!);

    /// <summary>GPT-2: the embeddings replace <c>wte(input_ids)</c>; learned positions past..past+T-1 are added as for ids.</summary>
    public Tensor ForwardEmbeddings(Tensor inputsEmbeds, Tensor? attentionMask = null, KvCache? cache = null)
    {
        if (inputsEmbeds.dim() != 3 || inputsEmbeds.shape[2] != Config.NEmbd)
            throw new ArgumentException($"inputs_embeds must be [batch, T, {Config.NEmbd}], got [{string.Join(",", inputsEmbeds.shape)}]");
        int past = cache?.Length ?? 0;
        var x = ResidualStreamFrom(inputsEmbeds, null, inputsEmbeds.shape[0], inputsEmbeds.shape[1], inputsEmbeds.device, attentionMask, cache);
        return LmHead(ApplyFinalNormHooked(x, past, attentionMask));
    }

    /// <inheritdoc/>
    public Tensor ApplyFinalNorm(Tensor residual) => ln_f.forward(residual);

    Tensor ApplyFinalNormHooked(Tensor x, int past, Tensor? mask)
        => _hooks.Run(HookNames.FinalNorm, ln_f.forward(x), past, mask);

    Tensor ResidualStreamCore(Tensor inputIds, Tensor? attentionMask, KvCache? cache)
    {
        CheckIds(inputIds);
        return ResidualStreamFrom(null, inputIds, inputIds.shape[0], inputIds.shape[1], inputIds.device, attentionMask, cache);
    }

    /// <summary>The blocks run on token embeddings: looked up from <paramref name="inputIds"/>, or given as
    /// <paramref name="embeds"/> (then hook_embed sees them as they are).</summary>
    Tensor ResidualStreamFrom(Tensor? embeds, Tensor? inputIds, long b, long t, Device dev, Tensor? attentionMask, KvCache? cache)
    {
        int past = cache?.Length ?? 0;
        if (past + t > Config.NPositions)
            throw new ArgumentException($"sequence of {past + t} tokens is longer than the model's context ({Config.NPositions})");
        if (attentionMask is not null && attentionMask.shape[1] != past + t)
            throw new ArgumentException($"attention_mask covers {attentionMask.shape[1]} positions, expected {past + t}");

        // Positions: with padding, count only real tokens so that left padding does not shift positions.
        Tensor positions;
        if (attentionMask is not null)
            positions = (attentionMask.to(ScalarType.Int64).cumsum(1) - 1).clamp_min(0).narrow(1, past, t);
        else
            positions = torch.arange(past, past + t, ScalarType.Int64, dev).unsqueeze(0).expand(b, t);

        // Attention mask [b or 1, 1, T, past+T] (true = attend), or none when the causal fast path applies.
        Tensor? mask = null;
        bool causal = false;
        if (attentionMask is null)
        {
            if (past == 0) causal = t > 1;
            else if (t > 1) mask = CausalMask(t, past, dev);
        }
        else
        {
            var keyOk = attentionMask.to(ScalarType.Bool).unsqueeze(1).unsqueeze(1); // [b,1,1,K]
            var q = torch.arange(past, past + t, ScalarType.Int64, dev).unsqueeze(1);
            var k = torch.arange(0, past + t, ScalarType.Int64, dev).unsqueeze(0);
            // A padded query would see no key at all (NaN softmax); let every query see itself. Real queries never
            // see padding, so results of real tokens are unaffected.
            mask = (keyOk & k.le(q)).logical_or(k.eq(q));
        }

        var x = _hooks.Run(HookNames.Embed, embeds ?? wte.forward(inputIds!), past, attentionMask)
              + _hooks.Run(HookNames.PosEmbed, wpe.forward(positions), past, attentionMask);
        return Blocks(x, mask, causal, cache, past, attentionMask);
    }

    /// <inheritdoc/>
    public Tensor ResidualStream(Tensor inputIds, SequenceLayout layout)
    {
        CheckIds(inputIds);
        layout.Check(inputIds.shape[0], inputIds.shape[1], Config.NPositions);
        var x = _hooks.Run(HookNames.Embed, wte.forward(inputIds), 0, layout.Real)
              + _hooks.Run(HookNames.PosEmbed, wpe.forward(layout.Positions), 0, layout.Real);
        return Blocks(x, layout.Allowed, false, null, 0, layout.Real);
    }

    static void CheckIds(Tensor ids)
    {
        if (ids.dim() != 2) throw new ArgumentException($"input_ids must be [batch, T], got [{string.Join(",", ids.shape)}]");
    }

    /// <summary>The blocks on the embedded input <paramref name="x"/> [b, t, d] (packed to its real rows when
    /// <see cref="Packing"/> says so); the cache advanced by t.</summary>
    Tensor Blocks(Tensor x, Tensor? mask, bool causal, KvCache? cache, int past, Tensor? attentionMask)
    {
        long b = x.shape[0], t = x.shape[1];
        var packed = PackedRows(attentionMask, past, b, t);
        if (packed is not null) x = packed.Pack(x);
        var ctx = new BlockForwardContext(mask, causal, cache, _hooks, past, attentionMask, packed);
        for (int l = 0; l < Config.NLayer; l++)
            x = h[l].Forward(x, ctx, _blockHookNames[l]);
        cache?.Advance((int)t);
        return packed is null ? x : packed.Unpack(x);
    }

    /// <summary>The real positions of this pass when its blocks run packed (<see cref="Packing"/>), or null.</summary>
    internal TokenRows? PackedRows(Tensor? attentionMask, int past, long b, long t) =>
        TokenRows.For(Packing, Config.NEmbd, _hooks, attentionMask, past, b, t);

    static Tensor CausalMask(long t, int past, Device dev)
    {
        var q = torch.arange(past, past + t, ScalarType.Int64, dev).unsqueeze(1);
        var k = torch.arange(0, past + t, ScalarType.Int64, dev).unsqueeze(0);
        return k.le(q).unsqueeze(0).unsqueeze(0);
    }
}

/// <summary>Hugging Face's Conv1D: weight stored [in, out], y = x·W + b.</summary>
public sealed class Conv1D : nn.Module
{
#pragma warning disable IDE1006
    /// <summary>Weight [in, out] (transposed relative to nn.Linear).</summary>
    public readonly Parameter weight;
    /// <summary>Bias [out].</summary>
    public readonly Parameter bias;
#pragma warning restore IDE1006

    /// <summary>An additive term on the output (LoRA's (α/r)·B·A·x, <see cref="Checkpoints.LoraAdapters"/>). Conv1D's
    /// Forward is called directly rather than through <c>call</c>, so a forward hook would never fire.</summary>
    internal Func<Tensor, Tensor?>? Delta { get; set; }

    /// <summary>A zero-initialised layer (the model initialises its weights).</summary>
    /// <param name="nIn">Input width.</param>
    /// <param name="nOut">Output width.</param>
    public Conv1D(int nIn, int nOut) : base("Conv1D")
    {
        weight = new Parameter(torch.empty(nIn, nOut));
        bias = new Parameter(torch.zeros(nOut));
        RegisterComponents();
    }

    /// <summary>y = x·W + b over the last dimension.</summary>
    /// <param name="x">Input [..., in].</param>
    public Tensor Forward(Tensor x)
    {
        var y = RowProducts.Affine(x, weight, bias);
        return Delta?.Invoke(x) is { } d ? y + d : y;
    }

    // kept for callers of the former Conv1D members; the seam is RowProducts
    internal static bool SplitRowProduct(Tensor w) => RowProducts.SplitRowProduct(w);
    internal static bool SplitPaysOff(Tensor w) => RowProducts.SplitPaysOff(w);
    internal const long SplitMinElements = RowProducts.SplitMinElements;
    internal static Tensor SplitKRowProduct(Tensor x, Tensor w, Tensor b) => RowProducts.SplitKRowProduct(x, w, b);
}

internal sealed class Gpt2Attention : nn.Module
{
#pragma warning disable IDE1006
    public readonly Conv1D c_attn;
    public readonly Conv1D c_proj;
#pragma warning restore IDE1006
    readonly int _d, _heads;

    public Gpt2Attention(Gpt2Config c) : base("GPT2Attention")
    {
        _d = c.NEmbd; _heads = c.NHead;
        c_attn = new Conv1D(c.NEmbd, 3 * c.NEmbd);
        c_proj = new Conv1D(c.NEmbd, c.NEmbd);
        RegisterComponents();
    }

    /// <param name="x">[batch, T, d], or the real rows [N, d] when <see cref="BlockForwardContext.Packed"/> is set (the
    /// result has the same layout).</param>
    public Tensor Forward(Tensor x, BlockForwardContext f, int layer, string hookZ)
    {
        var (mask, causal, cache, packed) = (f.Mask, f.Causal, f.Cache, f.Packed);
        var proj = c_attn.Forward(x);
        if (packed is not null) proj = packed.Unpack(proj); // attention needs the [batch, T] layout
        long b = proj.shape[0], t = proj.shape[1];
        int hd = _d / _heads;
        var qkv = proj.split(_d, 2);
        var q = qkv[0].view(b, t, _heads, hd).transpose(1, 2);
        var k = qkv[1].view(b, t, _heads, hd).transpose(1, 2);
        var v = qkv[2].view(b, t, _heads, hd).transpose(1, 2);
        if (cache is not null) (k, v) = cache.Append(layer, k, v);
        var y = CpuAttention.Sdpa(q, k, v, mask, causal);
        var z = f.Run(hookZ, y.transpose(1, 2)).reshape(b, t, _d); // [b, T, heads·head_dim]
        return c_proj.Forward(packed is null ? z : packed.Pack(z));
    }
}

internal sealed class Gpt2Mlp : nn.Module
{
#pragma warning disable IDE1006
    public readonly Conv1D c_fc;
    public readonly Conv1D c_proj;
#pragma warning restore IDE1006
    readonly string _act;

    public Gpt2Mlp(Gpt2Config c) : base("GPT2MLP")
    {
        c_fc = new Conv1D(c.NEmbd, c.MlpDim);
        c_proj = new Conv1D(c.MlpDim, c.NEmbd);
        _act = c.ActivationFunction;
        RegisterComponents();
    }

    public Tensor Activation(Tensor pre) => Activate(_act, pre);

    /// <summary>The activation named by a config's <c>activation_function</c> (shared with <see cref="CausalLMEnsemble"/>).</summary>
    public static Tensor Activate(string act, Tensor pre) => act switch
    {
        // gelu_new = 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))): libtorch's tanh approximation is the same formula;
        // bfloat16 on the CPU takes CpuGelu's one-pass kernel (the same function, to one bf16 ulp)
        "gelu_new" or "gelu_pytorch_tanh" => CpuGelu.Applies(pre) ? CpuGelu.Gelu(pre) : torch.nn.functional.gelu(pre, TorchSharp.Modules.GELU.Approximate.tanh),
        "gelu" => torch.nn.functional.gelu(pre),
        "relu" => torch.nn.functional.relu(pre),
        _ => throw new InvalidOperationException(act),
    };
}

internal sealed class Gpt2Block : nn.Module
{
#pragma warning disable IDE1006
    public readonly LayerNorm ln_1;
    public readonly Gpt2Attention attn;
    public readonly LayerNorm ln_2;
    public readonly Gpt2Mlp mlp;
#pragma warning restore IDE1006

    public Gpt2Block(Gpt2Config c) : base("GPT2Block")
    {
        ln_1 = nn.LayerNorm(c.NEmbd, c.LayerNormEpsilon);
        attn = new Gpt2Attention(c);
        ln_2 = nn.LayerNorm(c.NEmbd, c.LayerNormEpsilon);
        mlp = new Gpt2Mlp(c);
        RegisterComponents();
    }

    public Tensor Forward(Tensor x, BlockForwardContext f, BlockHookNames n)
    {
        x = f.Run(n.ResidPre, x);
        var a = f.Run(n.AttnOut, attn.Forward(ln_1.forward(x), f, n.Layer, n.AttnZ));
        x = f.Run(n.ResidMid, x + a);
        var pre = f.Run(n.MlpPre, mlp.c_fc.Forward(ln_2.forward(x)));
        var post = f.Run(n.MlpPost, mlp.Activation(pre));
        var m = f.Run(n.MlpOut, mlp.c_proj.Forward(post));
        return f.Run(n.ResidPost, x + m);
    }
}

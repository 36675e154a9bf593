using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Models;

/// <summary>
/// The CPU seam for batch-1 products. libtorch runs a 1-row matrix product (GEMV) on one thread, which leaves batch-1
/// decoding at one core's memory bandwidth; splitting W into two halves as a 2-batch bmm lets two threads read half of
/// W each (bench `--decode-probe`: a pass over the 124M block weights 26.7 → 21.8 ms). The split is the same sum,
/// regrouped, so results equal the plain product (ForwardPassTests checks values and gradients). Model classes call
/// <see cref="Affine"/> and <see cref="TiedHead"/> and know nothing of the split.
/// </summary>
public static class RowProducts
{
    /// <summary>Below this many weights (1 MiB of fp32) a 1-row product is too short for a second thread to pay off.</summary>
    public const long SplitMinElements = 1 << 18;

    /// <summary>Whether splitting a 1-row product with <paramref name="w"/> over two threads is worth it: ≥ 2 threads,
    /// a CPU tensor, a large W.</summary>
    public static bool SplitPaysOff(Tensor w) =>
        w.numel() >= SplitMinElements && w.device_type == DeviceType.CPU && torch.get_num_threads() > 1;

    /// <summary>Whether a 1-row x·W with W [in, out] takes the split-K path (also needs an even input width).</summary>
    public static bool SplitRowProduct(Tensor w) => w.shape[0] % 2 == 0 && SplitPaysOff(w);

    /// <summary>x [1, in] · W [in, out] + b as Σ over two halves of "in" of a 2-batch bmm (the same sum, regrouped).</summary>
    public static Tensor SplitKRowProduct(Tensor x, Tensor w, Tensor b)
    {
        long k = w.shape[0] / 2;
        var parts = torch.bmm(x.view(1, 2, k).transpose(0, 1), w.view(2, k, w.shape[1])); // [2, 1, out]
        return parts.sum(dim: 0) + b;
    }

    /// <summary>y = x·W + b for x [..., in], W [in, out] (Hugging Face's Conv1D layout).</summary>
    public static Tensor Affine(Tensor x, Tensor w, Tensor b)
    {
        var shape = x.shape.ToArray();
        shape[^1] = w.shape[1];
        var rows = x.reshape(-1, x.shape[^1]);
        if (rows.shape[0] == 1 && SplitRowProduct(w))
            return SplitKRowProduct(rows, w, b).view(shape);
        return torch.addmm(b, rows, w, 1, 1).view(shape);
    }

    /// <summary>Logits h · Eᵀ for a tied head E [V, d]. A single row is split over two halves of the vocabulary as a
    /// 2-batch bmm so that two threads share the read; an odd last row is a separate dot product.</summary>
    public static Tensor TiedHead(Tensor h, Tensor w)
    {
        long rows = h.numel() / h.shape[^1];
        if (rows != 1 || !SplitPaysOff(w)) return torch.nn.functional.linear(h, w);
        long v = w.shape[0], half = v / 2, d = w.shape[1];
        var x = h.reshape(1, 1, d).expand(2, 1, d);
        var parts = torch.bmm(x, w.narrow(0, 0, 2 * half).view(2, half, d).transpose(1, 2)).reshape(1, 2 * half); // [1, 2·half]
        var logits = v % 2 == 0 ? parts : torch.cat([parts, torch.nn.functional.linear(h.reshape(1, d), w.narrow(0, v - 1, 1))], 1);
        var shape = h.shape.ToArray(); shape[^1] = v;
        return logits.view(shape);
    }
}

/// <summary>What every block of one forward pass shares: the attention mask (or causal flag), the KV cache, the hook
/// points, the number of cached positions and the padding mask hooks see.</summary>
/// <param name="Packed">Set when the blocks' per-token work runs on the real tokens only (<see cref="TokenRows"/>): the
/// residual stream is then [N, d] and attention unpacks it to [batch, T] around the attention kernel.</param>
internal sealed record BlockForwardContext(Tensor? Mask, bool Causal, KvCache? Cache, HookPoints Hooks, int Past, Tensor? AttentionMask, TokenRows? Packed = null)
{
    /// <summary>Runs the hooks registered on <paramref name="name"/> (if any) on <paramref name="x"/>.</summary>
    public Tensor Run(string name, Tensor x) => Hooks.Run(name, x, Past, AttentionMask);
}

/// <summary>A block's hook names, built once per model (no string formatting per forward).</summary>
internal sealed record BlockHookNames(int Layer)
{
    public string ResidPre { get; } = HookNames.ResidPre(Layer);
    public string AttnZ { get; } = HookNames.AttnZ(Layer);
    public string AttnOut { get; } = HookNames.AttnOut(Layer);
    public string ResidMid { get; } = HookNames.ResidMid(Layer);
    public string MlpPre { get; } = HookNames.MlpPre(Layer);
    /// <summary>GLU models only (Llama family).</summary>
    public string MlpPreLinear { get; } = HookNames.MlpPreLinear(Layer);
    public string MlpPost { get; } = HookNames.MlpPost(Layer);
    public string MlpOut { get; } = HookNames.MlpOut(Layer);
    public string ResidPost { get; } = HookNames.ResidPost(Layer);
}

/// <summary>The real (unpadded) positions of a padded [B, T] batch as flat indices b·T + t: the per-token work of a block
/// (LayerNorms, the q/k/v, output and MLP products, GELU, residual adds) runs on those N rows only, and attention, which
/// needs the [B, T] layout, unpacks its inputs and packs its output again (<see cref="Gpt2Model.Packing"/>).</summary>
internal sealed record TokenRows(Tensor Keep, long B, long T)
{
    /// <summary>Below this width <see cref="TokenPacking.Auto"/> does not pack: the products are small, and the per-op
    /// cost of packing and unpacking around attention outweighs the padding's rows (docs/PERFORMANCE.md).</summary>
    public const int MinWidth = 768;

    /// <summary><see cref="TokenPacking.Auto"/> packs when at least this share of a batch's positions is padding.</summary>
    public const double MinPaddingShare = 1.0 / 32;

    /// <summary>The real positions of a pass over [<paramref name="b"/>, <paramref name="t"/>] new positions when its blocks
    /// run packed, or null: never without an attention mask or with hooks registered; <see cref="TokenPacking.Auto"/>
    /// only from <see cref="MinWidth"/> and <see cref="MinPaddingShare"/> on.</summary>
    public static TokenRows? For(TokenPacking mode, int width, HookPoints hooks, Tensor? attentionMask, int past, long b, long t)
    {
        if (attentionMask is null || hooks.Any || mode == TokenPacking.Never) return null;
        if (mode == TokenPacking.Auto && width < MinWidth) return null;
        var keep = attentionMask.narrow(1, past, t).reshape(-1).to(ScalarType.Bool).nonzero().squeeze(1);
        long n = keep.shape[0];
        bool pays = mode == TokenPacking.Always ? n < b * t : n <= b * t * (1 - MinPaddingShare);
        return n > 0 && pays ? new TokenRows(keep, b, t) : null;
    }

    /// <summary>[B, T, w] → [N, w]: the rows of the real positions.</summary>
    public Tensor Pack(Tensor x) => x.reshape(B * T, x.shape[^1]).index_select(0, Keep);

    /// <summary>[N, w] → [B, T, w], zeros at the padding positions (written in place into the fresh zeros: the
    /// out-of-place <c>index_copy</c> would copy them once more).</summary>
    public Tensor Unpack(Tensor x) => torch.zeros(B * T, x.shape[^1], x.dtype, x.device).index_copy_(0, Keep, x).view(B, T, x.shape[^1]);
}

/// <summary>When a model's <c>Packing</c> (<see cref="Gpt2Model.Packing"/>, <see cref="LlamaModel.Packing"/>) runs a padded
/// batch's blocks on its real tokens only.</summary>
public enum TokenPacking
{
    /// <summary>Passes of models at least 768 wide with at least 1/32 of the positions padding.</summary>
    Auto,
    /// <summary>Every pass with padding and no hooks.</summary>
    Always,
    /// <summary>Never: every position runs through the blocks.</summary>
    Never,
}

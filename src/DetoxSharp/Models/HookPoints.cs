using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Models;

/// <summary>What a hook is told about the forward pass it runs in.</summary>
/// <param name="PastLength">Positions already held in the KV cache; the activation covers positions
/// PastLength .. PastLength+T-1 of the sequence.</param>
/// <param name="Name">The hook point's name (e.g. <c>blocks.3.mlp.hook_post</c>).</param>
/// <param name="AttentionMask">[batch, past+T] with 1 for real tokens, 0 for padding; null when there is no padding.</param>
public sealed record HookContext(string Name, int PastLength, Tensor? AttentionMask);

/// <summary>
/// A hook reads an activation and may replace it: return null to leave it unchanged, or a tensor of the
/// same shape to use instead. Tensors kept beyond the call must be cloned and detached from the
/// caller's dispose scope (see <see cref="Interpretability"/> for the activation cache).
/// </summary>
public delegate Tensor? HookFn(Tensor activation, HookContext context);

/// <summary>
/// Named hook points in TransformerLens style (<c>blocks.{l}.hook_resid_pre</c>, <c>blocks.{l}.mlp.hook_post</c> …).
/// Models call <see cref="Run"/> at each point; with no hooks registered the call is a dictionary miss.
/// </summary>
public sealed class HookPoints
{
    readonly HashSet<string> _names;
    readonly Dictionary<string, List<HookFn>> _hooks = new();

    /// <summary>The hook points of a model.</summary>
    /// <param name="names">Every hook point name the model runs.</param>
    public HookPoints(IEnumerable<string> names) => _names = new HashSet<string>(names);

    /// <summary>Every hook point this model exposes, in forward order.</summary>
    public IReadOnlyCollection<string> Names => _names;

    /// <summary>Whether any hook is registered (the model skips hook calls when none is).</summary>
    public bool Any => _hooks.Count > 0;

    /// <summary>Registers <paramref name="fn"/> at <paramref name="name"/>; dispose the handle to remove it.</summary>
    public IDisposable Add(string name, HookFn fn)
    {
        if (!_names.Contains(name))
            throw new ArgumentException($"unknown hook point '{name}' (known: {string.Join(", ", _names.Take(12))}, …)");
        if (!_hooks.TryGetValue(name, out var list)) _hooks[name] = list = new List<HookFn>();
        list.Add(fn);
        return new Handle(this, name, fn);
    }

    /// <summary>Whether the model has a hook point of that name.</summary>
    /// <param name="name">A hook point name.</param>
    public bool Has(string name) => _names.Contains(name);

    /// <summary>Removes every registered hook.</summary>
    public void Clear() => _hooks.Clear();

    internal Tensor Run(string name, Tensor x, int pastLength, Tensor? attentionMask)
    {
        if (_hooks.Count == 0 || !_hooks.TryGetValue(name, out var list)) return x;
        var ctx = new HookContext(name, pastLength, attentionMask);
        foreach (var fn in list.ToArray())
        {
            var replaced = fn(x, ctx);
            if (replaced is not null)
            {
                if (!replaced.shape.SequenceEqual(x.shape))
                    throw new InvalidOperationException($"hook at '{name}' returned shape [{string.Join(",", replaced.shape)}], expected [{string.Join(",", x.shape)}]");
                x = replaced;
            }
        }
        return x;
    }

    sealed class Handle(HookPoints owner, string name, HookFn fn) : IDisposable
    {
        bool _done;
        public void Dispose()
        {
            if (_done) return;
            _done = true;
            if (owner._hooks.TryGetValue(name, out var list))
            {
                list.Remove(fn);
                if (list.Count == 0) owner._hooks.Remove(name);
            }
        }
    }

    /// <summary>The standard names for a decoder-only transformer with <paramref name="layers"/> blocks.</summary>
    public static IEnumerable<string> StandardNames(int layers)
    {
        yield return HookNames.Embed;
        yield return HookNames.PosEmbed;
        for (int l = 0; l < layers; l++)
            foreach (var n in BlockNames(l)) yield return n;
        yield return HookNames.FinalNorm;
    }

    /// <summary>The hook point names of block <paramref name="l"/>.</summary>
    /// <param name="l">The layer.</param>
    public static string[] BlockNames(int l) =>
    [
        HookNames.ResidPre(l), HookNames.AttnZ(l), HookNames.AttnOut(l), HookNames.ResidMid(l),
        HookNames.MlpPre(l), HookNames.MlpPost(l), HookNames.MlpOut(l), HookNames.ResidPost(l),
    ];
}

/// <summary>The hook names of block <c>l</c>, TransformerLens style — the one place they are spelled.</summary>
public static class HookNames
{
    /// <summary>Token embeddings [batch, T, d].</summary>
    public const string Embed = "hook_embed";
    /// <summary>Position embeddings (GPT-2).</summary>
    public const string PosEmbed = "hook_pos_embed";
    /// <summary>The final norm's output [batch, T, d].</summary>
    public const string FinalNorm = "ln_final.hook_normalized";
    /// <summary>Residual stream entering block <paramref name="l"/>.</summary>
    /// <param name="l">The layer.</param>
    public static string ResidPre(int l) => $"blocks.{l}.hook_resid_pre";
    /// <summary>Per-head attention output before the output projection.</summary>
    public static string AttnZ(int l) => $"blocks.{l}.attn.hook_z";
    /// <summary>Attention output of block <paramref name="l"/> (what it adds to the residual stream).</summary>
    /// <param name="l">The layer.</param>
    public static string AttnOut(int l) => $"blocks.{l}.hook_attn_out";
    /// <summary>Residual stream of block <paramref name="l"/> between attention and MLP.</summary>
    /// <param name="l">The layer.</param>
    public static string ResidMid(int l) => $"blocks.{l}.hook_resid_mid";
    /// <summary>MLP pre-activation (keys · x).</summary>
    public static string MlpPre(int l) => $"blocks.{l}.mlp.hook_pre";
    /// <summary>GLU MLPs only: the linear branch up·x (TransformerLens' name); <see cref="MlpPre"/> is then gate·x.</summary>
    public static string MlpPreLinear(int l) => $"blocks.{l}.mlp.hook_pre_linear";
    /// <summary>MLP activation (the coefficients of the value vectors).</summary>
    public static string MlpPost(int l) => $"blocks.{l}.mlp.hook_post";
    /// <summary>MLP output of block <paramref name="l"/> (what it adds to the residual stream).</summary>
    /// <param name="l">The layer.</param>
    public static string MlpOut(int l) => $"blocks.{l}.hook_mlp_out";
    /// <summary>Residual stream leaving block <paramref name="l"/>.</summary>
    /// <param name="l">The layer.</param>
    public static string ResidPost(int l) => $"blocks.{l}.hook_resid_post";
}

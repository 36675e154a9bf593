using DetoxSharp.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Tests.Core;

public class HookTests
{
    [Fact]
    public void ReadHooksSeeTheRightShapes()
    {
        using var m = CoreTestUtil.Tiny(vocab: 20, d: 16, heads: 4, positions: 32);
        var seen = new Dictionary<string, long[]>();
        var handles = m.Hooks.Names.Select(n => m.Hooks.Add(n, (x, ctx) => { seen[ctx.Name] = x.shape; return null; })).ToList();
        using (torch.no_grad()) m.Forward(torch.randint(0, 20, [3, 5], ScalarType.Int64)).Dispose();
        Assert.Equal(m.Hooks.Names.Count, seen.Count);
        Assert.Equal(2 + 2 * 8 + 1, seen.Count);
        Assert.Equal(new long[] { 3, 5, 16 }, seen["hook_embed"]);
        Assert.Equal(new long[] { 3, 5, 16 }, seen["blocks.1.hook_resid_post"]);
        Assert.Equal(new long[] { 3, 5, 4, 4 }, seen["blocks.0.attn.hook_z"]);
        Assert.Equal(new long[] { 3, 5, 64 }, seen["blocks.1.mlp.hook_pre"]);
        Assert.Equal(new long[] { 3, 5, 64 }, seen["blocks.1.mlp.hook_post"]);
        Assert.Equal(new long[] { 3, 5, 16 }, seen["ln_final.hook_normalized"]);
        foreach (var h in handles) h.Dispose();
        Assert.False(m.Hooks.Any);
    }

    [Fact]
    public void ResidualStreamHookEqualsLastResidPost()
    {
        using var m = CoreTestUtil.Tiny(vocab: 20, d: 16, heads: 4, positions: 32);
        using var ids = torch.randint(0, 20, [2, 6], ScalarType.Int64);
        using var _ = torch.no_grad();
        Tensor? captured = null;
        using (m.Hooks.Add("blocks.1.hook_resid_post", (x, ctx) => { captured = x.detach().clone().DetachFromDisposeScope(); return null; }))
            m.Forward(ids).Dispose();
        using var rs = m.ResidualStream(ids);
        Assert.Equal(0.0, CoreTestUtil.MaxAbsDiff(rs, captured!));
        // logits = ApplyFinalNorm(resid) · Wᵀ
        using var logits = m.Forward(ids);
        using var manual = torch.nn.functional.linear(m.ApplyFinalNorm(rs), m.Unembedding);
        Assert.True(CoreTestUtil.MaxAbsDiff(logits, manual) < 1e-6);
        captured!.Dispose();
    }

    [Fact]
    public void ReplaceHookChangesOutputAsPredicted()
    {
        using var m = CoreTestUtil.Tiny(vocab: 20, d: 16, heads: 4, positions: 32);
        using var ids = torch.randint(0, 20, [2, 6], ScalarType.Int64);
        using var _ = torch.no_grad();
        using var delta = torch.randn(16) * 3;
        using var rs = m.ResidualStream(ids);
        // the last block's resid_post plus delta, through ln_f and the tied head, computed by hand
        var x = (rs + delta).to(ScalarType.Float64);
        var g = m.state_dict()["ln_f.weight"].to(ScalarType.Float64);
        var b = m.state_dict()["ln_f.bias"].to(ScalarType.Float64);
        var mean = x.mean([-1], keepdim: true);
        var var_ = (x - mean).pow(2).mean([-1], keepdim: true);
        var normed = (x - mean) / (var_ + m.Config.LayerNormEpsilon).sqrt() * g + b;
        var expected = normed.matmul(m.Unembedding.to(ScalarType.Float64).t());

        Tensor edited;
        using (m.Hooks.Add("blocks.1.hook_resid_post", (a, ctx) => a + delta))
            edited = m.Forward(ids);
        Assert.True(CoreTestUtil.MaxAbsDiff(edited, expected) < 1e-4, $"{CoreTestUtil.MaxAbsDiff(edited, expected)}");
        using var plain = m.Forward(ids);
        Assert.True(CoreTestUtil.MaxAbsDiff(edited, plain) > 0.1);
        // after dispose the hook is gone: output equals the unhooked model
        using var again = m.Forward(ids);
        Assert.Equal(0.0, CoreTestUtil.MaxAbsDiff(again, plain));
        Assert.False(m.Hooks.Any);

        // an edit at an earlier layer propagates: blocks.0.hook_resid_post + delta == running block 1 on the edited stream
        Tensor? resid0 = null;
        using (m.Hooks.Add("blocks.0.hook_resid_post", (a, ctx) => { resid0 = a.detach().clone().DetachFromDisposeScope(); return null; }))
            m.Forward(ids).Dispose();
        Tensor? pre1 = null;
        using (m.Hooks.Add("blocks.0.hook_resid_post", (a, ctx) => a + delta))
        using (m.Hooks.Add("blocks.1.hook_resid_pre", (a, ctx) => { pre1 = a.detach().clone().DetachFromDisposeScope(); return null; }))
            m.Forward(ids).Dispose();
        Assert.True(CoreTestUtil.MaxAbsDiff(pre1!, resid0! + delta) < 1e-6);
    }

    [Fact]
    public void HooksSeePastLengthDuringCachedGeneration()
    {
        using var m = CoreTestUtil.Tiny(vocab: 20, d: 16, heads: 4, positions: 32);
        var pasts = new List<(int past, long t)>();
        using (m.Hooks.Add("blocks.0.hook_resid_mid", (x, ctx) => { pasts.Add((ctx.PastLength, x.shape[1])); return null; }))
            DetoxSharp.Generation.Generator.Generate(m, [[1, 2, 3]], new DetoxSharp.Generation.GenerationOptions { MaxNewTokens = 4, StopAtEos = false });
        Assert.Equal(new[] { (0, 3L), (3, 1L), (4, 1L), (5, 1L) }, pasts);
    }
}

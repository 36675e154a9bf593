using DetoxSharp.Generation;
using DetoxSharp.Models;
using TorchSharp;
using Gen = DetoxSharp.Generation.Generator;
using static TorchSharp.torch;

namespace DetoxSharp.Tests.Core;

/// <summary>The stacked ensemble forward (<see cref="CausalLMEnsemble"/>, issue 18) against K separate forwards of the
/// same models: logits within 1e-4 (float32; the logits here are O(1–10)), with and without the KV cache, with left
/// padding; DExperts' greedy ids identical to the sequential path.</summary>
public class EnsembleTests
{
    // three different random models of one architecture (vocab 40, eos 39, 2 layers, d 16)
    static Gpt2Model[] Models() => [.. new long[] { 11, 12, 13 }.Select(s => CoreTestUtil.Tiny(vocab: 40, d: 16, heads: 2, positions: 48, seed: s, std: 0.5))];

    const double Tol = 1e-4;

    static (Tensor ids, Tensor mask) LeftPadded(int[][] prompts, int pad)
    {
        int maxLen = prompts.Max(p => p.Length);
        var ids = new long[prompts.Length * maxLen];
        var mask = new long[prompts.Length * maxLen];
        for (int i = 0; i < prompts.Length; i++)
            for (int j = 0; j < maxLen; j++)
            {
                int off = maxLen - prompts[i].Length;
                ids[i * maxLen + j] = j < off ? pad : prompts[i][j - off];
                mask[i * maxLen + j] = j < off ? 0 : 1;
            }
        return (torch.tensor(ids, [prompts.Length, maxLen], ScalarType.Int64), torch.tensor(mask, [prompts.Length, maxLen], ScalarType.Int64));
    }

    [Fact]
    public void LogitsEqualSeparateForwardsWithAndWithoutPadding()
    {
        var ms = Models();
        try
        {
            Assert.Null(CausalLMEnsemble.WhyNotStackable(ms));
            using var ens = CausalLMEnsemble.TryCreate(ms)!;
            Assert.Equal(3, ens.Count);
            using var _ = torch.no_grad();
            var (ids, mask) = LeftPadded([[1, 2, 3, 4, 5], [7, 8], [20, 21, 22]], pad: 39);
            foreach (var m in new Tensor?[] { null, mask })
            {
                using var all = ens.Forward(ids, m); // [3, b, T, V]
                Assert.Equal(new long[] { 3, 3, 5, 40 }, all.shape);
                using var last = ens.ForwardLast(ids, m);
                for (int k = 0; k < 3; k++)
                {
                    using var want = ms[k].Forward(ids, m);
                    // models differ, so a mix-up of the ensemble index would show
                    if (k > 0) Assert.True(CoreTestUtil.MaxAbsDiff(all[k], all[0]) > 0.1);
                    Assert.True(CoreTestUtil.MaxAbsDiff(all[k], want) < Tol, $"model {k}, mask {m is not null}: {CoreTestUtil.MaxAbsDiff(all[k], want)}");
                    Assert.True(CoreTestUtil.MaxAbsDiff(last[k], want.narrow(1, 4, 1)) < Tol);
                    Assert.True(want.abs().max().item<float>() > 1, "logits too small for the tolerance to mean anything");
                }
            }
        }
        finally { foreach (var m in ms) m.Dispose(); }
    }

    [Fact]
    public void KvCacheStepsEqualSeparateCachedForwards()
    {
        var ms = Models();
        try
        {
            using var ens = CausalLMEnsemble.TryCreate(ms)!;
            using var _ = torch.no_grad();
            var (ids, mask) = LeftPadded([[1, 2, 3, 4], [7], [20, 21]], pad: 0);
            using var cache = ens.NewCache(12);
            var caches = ms.Select(m => m.NewCache(12)).ToArray();
            try
            {
                using var first = ens.Forward(ids, mask, cache);
                var steps = new long[][] { [5, 9, 30], [6, 10, 31], [2, 2, 2] };
                var fullIds = ids;
                var fullMask = mask;
                for (int k = 0; k < 3; k++)
                    Assert.True(CoreTestUtil.MaxAbsDiff(first[k], ms[k].Forward(ids, mask, caches[k])) < Tol);
                foreach (var s in steps)
                {
                    var next = torch.tensor(s, [3, 1], ScalarType.Int64);
                    fullIds = torch.cat([fullIds, next], 1);
                    fullMask = torch.cat([fullMask, torch.ones(3, 1, ScalarType.Int64)], 1);
                    using var step = ens.ForwardLast(next, fullMask, cache); // [3, b, 1, V]
                    for (int k = 0; k < 3; k++)
                    {
                        using var sep = ms[k].Forward(next, fullMask, caches[k]);
                        using var recomputed = ms[k].Forward(fullIds, fullMask).narrow(1, fullIds.shape[1] - 1, 1);
                        Assert.True(CoreTestUtil.MaxAbsDiff(step[k], sep) < Tol, $"model {k} step {fullIds.shape[1]}");
                        Assert.True(CoreTestUtil.MaxAbsDiff(step[k], recomputed) < Tol);
                    }
                }
                Assert.Equal(7, cache.Length);
            }
            finally { foreach (var c in caches) c.Dispose(); }
        }
        finally { foreach (var m in ms) m.Dispose(); }
    }

    [Fact]
    public void DExpertsGreedyIdsEqualTheSequentialPath()
    {
        var ms = Models();
        try
        {
            using (torch.no_grad()) foreach (var p in ms[1].parameters().Concat(ms[2].parameters())) p.mul_(1.5); // experts pull elsewhere
            var dx = new DExperts(ms[1], ms[2], 2.0);
            int[][] prompts = [[1, 2, 3], [5], [7, 8, 9, 10, 11, 12], [20, 21], [3, 3, 3, 3]];
            var o = new GenerationOptions { MaxNewTokens = 15, Greedy = true, StopAtEos = false, BatchSize = 4 };
            var baseOnly = Gen.Generate(ms[0], prompts, o);
            foreach (bool kv in new[] { true, false })
            {
                var sequential = Gen.Generate(ms[0], prompts, o with { UseKvCache = kv, EnsembleForward = false }, dx);
                var stacked = Gen.Generate(ms[0], prompts, o with { UseKvCache = kv, EnsembleForward = true }, dx);
                Assert.Equal(sequential, stacked);
                Assert.All(stacked, r => Assert.Equal(15, r.Length));
                Assert.NotEqual(baseOnly, stacked); // the experts change the output, so the combination is exercised
            }
            // sampling with per-prompt seeds: the same draws (logits equal up to rounding, far from a draw boundary here)
            var so = o with { Greedy = false, Temperature = 1.0 };
            var seeds = new long[] { 1, 2, 3, 4, 5 };
            Assert.Equal(Gen.Generate(ms[0], prompts, so with { EnsembleForward = false }, dx, seeds), Gen.Generate(ms[0], prompts, so with { EnsembleForward = true }, dx, seeds));
        }
        finally { foreach (var m in ms) m.Dispose(); }
    }

    [Fact]
    public void UnstackableModelsAreNamedAndFallBack()
    {
        var ms = Models();
        using var other = CoreTestUtil.Tiny(vocab: 40, d: 16, layers: 3, heads: 2, positions: 48, seed: 4);
        try
        {
            Assert.Contains("configurations differ", CausalLMEnsemble.WhyNotStackable([ms[0], ms[1], other]));
            Assert.Null(CausalLMEnsemble.TryCreate([ms[0], other]));
            torch.manual_seed(3);
            using var llama = new LlamaModel(new LlamaConfig
            {
                ModelType = "llama", VocabSize = 40, HiddenSize = 16, IntermediateSize = 24, NumHiddenLayers = 2,
                NumAttentionHeads = 4, NumKeyValueHeads = 2, MaxPositionEmbeddings = 48, EosTokenIds = [39], BosTokenId = 39,
            });
            Assert.Contains("GPT-2", CausalLMEnsemble.WhyNotStackable([llama, llama]));
            long saved = CausalLMEnsemble.MaxStackedBytes;
            try
            {
                CausalLMEnsemble.MaxStackedBytes = 1000;
                Assert.Contains("MiB", CausalLMEnsemble.WhyNotStackable(ms));
            }
            finally { CausalLMEnsemble.MaxStackedBytes = saved; }

            // a hook on the base: not stackable, and DExperts still runs it (the sequential path) — the hook fires
            int calls = 0;
            using (ms[0].Hooks.Add(HookNames.ResidPost(0), (x, _) => { calls++; return null; }))
            {
                Assert.Contains("hooks", CausalLMEnsemble.WhyNotStackable(ms));
                var o = new GenerationOptions { MaxNewTokens = 3, StopAtEos = false, EnsembleForward = true };
                Gen.Generate(ms[0], [[1, 2]], o, new DExperts(ms[1], ms[2]));
                Assert.Equal(3, calls);
            }
            Assert.Null(CausalLMEnsemble.WhyNotStackable(ms));
        }
        finally { foreach (var m in ms) m.Dispose(); }
    }

    /// <summary>The stacked weights are a snapshot: they match the models at construction and are freed on Dispose,
    /// and an ensemble of bf16 models runs (attention in float32 through CpuAttention) close to the separate forwards.</summary>
    [Fact]
    public void Bf16EnsembleIsCloseToSeparateForwards()
    {
        var ms = Models();
        try
        {
            foreach (var m in ms) m.to(ScalarType.BFloat16);
            using var ens = CausalLMEnsemble.TryCreate(ms)!;
            using var _ = torch.no_grad();
            var ids = CoreTestUtil.Ids([1, 2, 3, 4], [9, 8, 7, 6]);
            using var all = ens.Forward(ids);
            Assert.Equal(ScalarType.BFloat16, all.dtype);
            for (int k = 0; k < 3; k++)
            {
                using var want = ms[k].Forward(ids);
                double scale = want.to(ScalarType.Float32).abs().max().item<float>();
                Assert.True(CoreTestUtil.MaxAbsDiff(all[k], want) < 0.05 * scale, $"model {k}: {CoreTestUtil.MaxAbsDiff(all[k], want)} vs scale {scale}");
            }
        }
        finally { foreach (var m in ms) m.Dispose(); }
    }
}

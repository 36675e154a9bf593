using DetoxSharp.Generation;
using DetoxSharp.Models;
using TorchSharp;
using Gen = DetoxSharp.Generation.Generator;
using static TorchSharp.torch;

namespace DetoxSharp.Tests.Core;

public class GenerationTests
{
    // vocabulary 40, eos = 39; large weights make the distribution peaked but not degenerate
    static Gpt2Model Model() => CoreTestUtil.Tiny(vocab: 40, d: 16, heads: 2, positions: 48, seed: 11, std: 0.5);

    static readonly int[][] Prompts = [[1, 2, 3], [5], [7, 8, 9, 10, 11, 12], [20, 21], [3, 3, 3, 3]];

    [Fact]
    public void KvCacheEqualsFullRecomputation()
    {
        using var m = Model();
        var opts = new GenerationOptions { MaxNewTokens = 20, Greedy = true, StopAtEos = false, BatchSize = 1 };
        foreach (var p in Prompts)
        {
            var withCache = Gen.Generate(m, [p], opts)[0];
            var without = Gen.Generate(m, [p], opts with { UseKvCache = false })[0];
            Assert.Equal(without, withCache);
            Assert.Equal(20, withCache.Length);
        }
        // logits: feed the whole generated sequence token by token through the cache vs one full forward
        var seq = Prompts[2].Concat(Gen.Generate(m, [Prompts[2]], opts)[0]).Select(i => (long)i).ToArray();
        using var _ = torch.no_grad();
        using var full = m.Forward(torch.tensor(seq, [1, seq.Length], ScalarType.Int64));
        using var cache = m.NewCache(seq.Length);
        using var first = m.Forward(torch.tensor(seq[..4], [1, 4], ScalarType.Int64), null, cache);
        Assert.True(CoreTestUtil.MaxAbsDiff(first, full.narrow(1, 0, 4)) < 1e-5);
        for (int i = 4; i < seq.Length; i++)
        {
            using var step = m.Forward(torch.tensor(new[] { seq[i] }, [1, 1], ScalarType.Int64), null, cache);
            Assert.True(CoreTestUtil.MaxAbsDiff(step, full.narrow(1, i, 1)) < 1e-5, $"position {i}");
        }
        Assert.Equal(seq.Length, cache.Length);
    }

    [Fact]
    public void BatchedLeftPaddedEqualsOneByOne()
    {
        using var m = Model();
        var opts = new GenerationOptions { MaxNewTokens = 12, Greedy = true, StopAtEos = false };
        var single = Prompts.Select(p => Gen.Generate(m, [p], opts with { BatchSize = 1 })[0]).ToList();
        foreach (bool kv in new[] { true, false })
        {
            var batched = Gen.Generate(m, Prompts, opts with { BatchSize = 16, UseKvCache = kv });
            for (int i = 0; i < Prompts.Length; i++) Assert.Equal(single[i], batched[i]);
        }
        // logits of real tokens do not depend on padding (mask + position ids)
        using var _ = torch.no_grad();
        int maxLen = Prompts.Max(p => p.Length);
        var ids = new long[Prompts.Length * maxLen];
        var mask = new long[Prompts.Length * maxLen];
        for (int i = 0; i < Prompts.Length; i++)
            for (int j = 0; j < maxLen; j++)
            {
                int off = maxLen - Prompts[i].Length;
                ids[i * maxLen + j] = j < off ? 39 : Prompts[i][j - off];
                mask[i * maxLen + j] = j < off ? 0 : 1;
            }
        using var logits = m.Forward(torch.tensor(ids, [Prompts.Length, maxLen], ScalarType.Int64), torch.tensor(mask, [Prompts.Length, maxLen], ScalarType.Int64));
        for (int i = 0; i < Prompts.Length; i++)
        {
            var p = Prompts[i];
            using var alone = m.Forward(torch.tensor(p.Select(x => (long)x).ToArray(), [1, p.Length], ScalarType.Int64));
            using var part = logits.narrow(0, i, 1).narrow(1, maxLen - p.Length, p.Length);
            Assert.True(CoreTestUtil.MaxAbsDiff(part, alone) < 1e-5, $"prompt {i}: {CoreTestUtil.MaxAbsDiff(part, alone)}");
        }
    }

    [Fact]
    public void SamplingIsReproducibleAndTopK1IsGreedy()
    {
        using var m = Model();
        var s = new GenerationOptions { MaxNewTokens = 15, Greedy = false, Temperature = 1.5, Seed = 42, StopAtEos = false };
        var a = Gen.Generate(m, Prompts, s);
        var b = Gen.Generate(m, Prompts, s);
        Assert.Equal(a, b);
        var c = Gen.Generate(m, Prompts, s with { Seed = 43 });
        Assert.NotEqual(a.SelectMany(x => x), c.SelectMany(x => x));
        var greedy = Gen.Generate(m, Prompts, s with { Greedy = true });
        Assert.NotEqual(greedy.SelectMany(x => x), a.SelectMany(x => x));
        var topk1 = Gen.Generate(m, Prompts, s with { TopK = 1 });
        Assert.Equal(greedy, topk1);
        var topp = Gen.Generate(m, Prompts, s with { TopP = 1e-6 });
        Assert.Equal(greedy, topp);
    }

    [Fact]
    public void TopKAndTopPFiltersKeepTheRightTokens()
    {
        using var logits = torch.tensor(new float[] { 2f, 1f, 0.5f, -1f, 3f }).unsqueeze(0).expand(4000, 5).contiguous();
        using var rng = new torch.Generator(5);
        using var k2 = Gen.Sample(logits, new GenerationOptions { Greedy = false, TopK = 2 }, rng);
        var picked = k2.data<long>().ToArray().Distinct().OrderBy(x => x).ToArray();
        Assert.Equal(new long[] { 0, 4 }, picked);
        // softmax of [2,1,.5,-1,3]: p4≈0.61, p0≈0.23, p1≈0.08 … top_p = 0.8 keeps {4, 0} (0.61 < 0.8, 0.84 ≥ 0.8)
        using var p = Gen.Sample(logits, new GenerationOptions { Greedy = false, TopP = 0.8 }, rng);
        Assert.Equal(new long[] { 0, 4 }, p.data<long>().ToArray().Distinct().OrderBy(x => x).ToArray());
        // and the frequencies follow the renormalised probabilities (0.61/0.84 ≈ 0.727)
        double frac4 = p.data<long>().ToArray().Count(x => x == 4) / 4000.0;
        Assert.InRange(frac4, 0.69, 0.76);
    }

    [Fact]
    public void StopsAtEos()
    {
        using var m = Model();
        var opts = new GenerationOptions { MaxNewTokens = 30, Greedy = true, StopAtEos = false };
        var free = Gen.Generate(m, Prompts, opts);
        // declare as eos a token that greedy decoding emits: output must be cut right before its first occurrence
        int i = Array.FindIndex(free.ToArray(), g => g.Length > 2);
        int eosTok = free[i][2];
        var cfg = m.Config with { EosTokenId = eosTok };
        using var m2 = new Gpt2Model(cfg);
        using (torch.no_grad()) foreach (var (n, t) in m2.named_parameters()) t.copy_(m.state_dict()[n]);
        var stopped = Gen.Generate(m2, [Prompts[i]], opts with { StopAtEos = true, PadTokenId = 0 })[0];
        Assert.Equal(free[i].TakeWhile(t => t != eosTok), stopped);
    }
}

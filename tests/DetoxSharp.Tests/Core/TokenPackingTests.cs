using DetoxSharp.Generation;
using DetoxSharp.Models;
using DetoxSharp.Text;
using DetoxSharp.Training;
using TorchSharp;
using static TorchSharp.torch;
using PrefTiny = DetoxSharp.Tests.Preference.Tiny;

namespace DetoxSharp.Tests.Core;

/// <summary>Padded batches whose blocks run on their real tokens only (<see cref="Gpt2Model.Packing"/>,
/// <see cref="LlamaModel.Packing"/>) against the same batches run over every position: the same logits, log-prob sums,
/// gradients and greedy generations (float64, so that only the order of float sums could differ) on GPT-2 and the
/// rotary families (grouped-query attention, q/k/v biases, a sliding window), when Auto packs, and DPO's first loss.</summary>
public class TokenPackingTests
{
    static Gpt2Model Model() => CoreTestUtil.Tiny(vocab: 40, d: 16, heads: 2, positions: 48, seed: 21, std: 0.5);

    public static TheoryData<string> Families => ["gpt2", "llama", "qwen2", "mistral-window-3"];

    static ICausalLM Make(string family)
    {
        var m = Preference.SharedPromptTests.Make(family);
        m.Module.to(ScalarType.Float64);
        return m;
    }

    static void SetPacking(ICausalLM m, TokenPacking p)
    {
        if (m is Gpt2Model g) g.Packing = p;
        else ((LlamaModel)m).Packing = p;
    }

    // left-padded rows of different lengths (pad 0), as generation and the prompt pass lay them out
    static (Tensor Ids, Tensor Mask) LeftPadded()
    {
        long[][] rows = [[0, 0, 0, 5, 9, 12, 3], [7, 8, 9, 10, 11, 12, 13], [0, 0, 0, 0, 0, 0, 14], [0, 1, 2, 2, 11, 4, 6]];
        var ids = CoreTestUtil.Ids(rows);
        var mask = CoreTestUtil.Ids(rows.Select((r, i) => r.Select((x, j) => i == 1 || x != 0 ? 1L : 0L).ToArray()).ToArray());
        return (ids, mask);
    }

    static Tensor Logits(ICausalLM m, TokenPacking p, Tensor ids, Tensor mask)
    {
        SetPacking(m, p);
        return m.Forward(ids, mask);
    }

    [Theory]
    [MemberData(nameof(Families))]
    public void PackedLogitsEqualPaddedOnesAtEveryRealPosition(string family)
    {
        using var m = Make(family);
        var (ids, mask) = LeftPadded();
        var want = Logits(m, TokenPacking.Never, ids, mask);
        var got = Logits(m, TokenPacking.Always, ids, mask);
        var real = mask.to(ScalarType.Bool);
        var diff = (want - got).abs().amax([-1]).masked_select(real).max().item<double>();
        Assert.True(diff < 1e-12, $"max |Δ logit| at real positions {diff:E2}");
        // the padding positions come out of the blocks as zeros (nothing reads them)
        SetPacking(m, TokenPacking.Always);
        var resid = m.ResidualStream(ids, mask);
        Assert.Equal(0.0, resid.masked_select(real.logical_not().unsqueeze(-1).expand_as(resid)).abs().max().item<double>());
        Assert.True(resid.masked_select(real.unsqueeze(-1).expand_as(resid)).abs().min().item<double>() > 0);
    }

    [Theory]
    [MemberData(nameof(Families))]
    public void SharedPromptSumsAndGradientsEqualWithAndWithoutPacking(string family)
    {
        using var m = Make(family);
        int[][] prompts = [[3, 4, 5, 6, 7], [8, 9], [10, 11, 12, 1]];
        (int, int[])[] rows = [(0, [1, 2, 3]), (1, [4, 5, 6, 7, 8, 9]), (2, [2]), (0, [9, 8, 7, 6]), (1, [3, 3]), (2, [5, 4, 3, 2, 1])];
        var weights = torch.arange(1, rows.Length + 1, ScalarType.Float64);
        var ps = m.Module.parameters().Cast<Tensor>().ToList();
        (double[] Sums, Tensor[] Grads) Run(TokenPacking p)
        {
            SetPacking(m, p);
            var y = LogProbs.SharedPromptSums(m, prompts, rows, 15);
            return (y.data<double>().ToArray(), torch.autograd.grad([(y * weights).sum()], ps).ToArray());
        }
        var (w, gw) = Run(TokenPacking.Never);
        var (g, gg) = Run(TokenPacking.Always);
        for (int i = 0; i < w.Length; i++) Assert.True(Math.Abs(w[i] - g[i]) < 1e-10, $"{family} row {i}: padded {w[i]} vs packed {g[i]}");
        Assert.Equal(w.Length, w.Distinct().Count());
        for (int i = 0; i < ps.Count; i++)
        {
            double scale = Math.Max(1e-6, gw[i].abs().max().item<double>());
            double d = (gw[i] - gg[i]).abs().max().item<double>();
            Assert.True(d <= 1e-10 * Math.Max(1, scale), $"{family} parameter {i}: max |Δ grad| {d:E2} (max |grad| {scale:E2})");
        }
        // every weight took part (the packed rows reached every product and the embeddings)
        Assert.All(gg, t => Assert.True(t.abs().max().item<double>() > 0));
    }

    [Theory]
    [MemberData(nameof(Families))]
    public void GreedyGenerationsFromLeftPaddedPromptsAreTheSame(string family)
    {
        using var m = Make(family);
        List<int[]> prompts = [[5, 9, 12, 3], [7, 8, 9, 10, 11, 12, 13], [14], [1, 2, 2, 11, 4, 6]];
        var o = new GenerationOptions { MaxNewTokens = 8, Greedy = true, StopAtEos = false, BatchSize = 4 };
        SetPacking(m, TokenPacking.Never);
        var want = DetoxSharp.Generation.Generator.Generate(m, prompts, o);
        SetPacking(m, TokenPacking.Always);
        var got = DetoxSharp.Generation.Generator.Generate(m, prompts, o);
        Assert.Equal(want.Select(x => string.Join(",", x)), got.Select(x => string.Join(",", x)));
    }

    [Fact]
    public void AutoPacksWideModelsWithEnoughPaddingAndNeverWithHooks()
    {
        var (ids, mask) = LeftPadded(); // 10 of 28 positions are padding
        var full = torch.ones(4, 7, ScalarType.Int64);
        var oneOf64 = torch.ones(2, 32, ScalarType.Int64); oneOf64[0, 0] = 0; // 1/64 padding: below the 1/32 bar
        using var narrow = Model();
        Assert.Null(narrow.PackedRows(mask, 0, 4, 7)); // Auto, 16 wide
        narrow.Packing = TokenPacking.Always;
        Assert.Equal(18, narrow.PackedRows(mask, 0, 4, 7)!.Keep.shape[0]);
        Assert.Null(narrow.PackedRows(full, 0, 4, 7)); // nothing to drop
        Assert.Null(narrow.PackedRows(null, 0, 4, 7));
        using (narrow.Hooks.Add(HookNames.ResidPost(0), (x, _) => x))
            Assert.Null(narrow.PackedRows(mask, 0, 4, 7)); // hooks see [batch, T]
        narrow.Packing = TokenPacking.Never;
        Assert.Null(narrow.PackedRows(mask, 0, 4, 7));

        using var wide = new Gpt2Model(new Gpt2Config { VocabSize = 40, NEmbd = TokenRows.MinWidth, NLayer = 1, NHead = 12, NPositions = 48 });
        Assert.Equal(TokenPacking.Auto, wide.Packing);
        Assert.Equal(18, wide.PackedRows(mask, 0, 4, 7)!.Keep.shape[0]);
        Assert.Null(wide.PackedRows(oneOf64, 0, 2, 32));
        // with cached positions only the new columns count: here the new token of every row is real
        Assert.Null(wide.PackedRows(torch.cat([mask, torch.ones(4, 1, ScalarType.Int64)], 1), 7, 4, 1));
        using var copy = (Gpt2Model)wide.Clone();
        Assert.Equal(TokenPacking.Auto, copy.Packing);
        wide.Packing = TokenPacking.Never;
        using var copy2 = (Gpt2Model)wide.Clone();
        Assert.Equal(TokenPacking.Never, copy2.Packing);
        // the rotary families follow the same rule on their hidden size
        using var llama = new LlamaModel(new LlamaConfig
        {
            ModelType = "llama", VocabSize = 40, HiddenSize = TokenRows.MinWidth, IntermediateSize = 32, NumHiddenLayers = 1,
            NumAttentionHeads = 12, NumKeyValueHeads = 4, MaxPositionEmbeddings = 48, EosTokenIds = [39], BosTokenId = 39,
        });
        Assert.Equal(18, llama.PackedRows(mask, 0, 4, 7)!.Keep.shape[0]);
        using (llama.Hooks.Add(HookNames.ResidPost(0), (x, _) => x))
            Assert.Null(llama.PackedRows(mask, 0, 4, 7));
        llama.Packing = TokenPacking.Never;
        Assert.Null(llama.PackedRows(mask, 0, 4, 7));
        using var llamaCopy = (LlamaModel)llama.Clone();
        Assert.Equal(TokenPacking.Never, llamaCopy.Packing);
    }

    [Fact]
    public void PackedDpoStartsAtLn2InBf16Mixed()
    {
        // the policy's packed log-probs meet the reference's, scored packed as well: the reward margin starts at 0
        var tok = Gpt2Tokenizer.Default();
        var root = PrefTiny.TempDir("packed-dpo");
        using var m = PrefTiny.Model();
        m.Packing = TokenPacking.Always;
        var o = Preference.PreferenceTrainerTests.Opts(Path.Combine(root, "cache")) with { EvalEvery = 0, MaxSteps = 2, Precision = Precision.Bf16Mixed };
        var r = new PreferenceTrainer(m, tok, o).Train(PrefTiny.Pairs(24), Path.Combine(root, "run"));
        var first = MetricsLog.Read(r.MetricsPath).First(x => x["phase"] is null);
        Assert.Equal(Math.Log(2), first["loss"]!.GetValue<double>(), 6);
        Assert.Equal(0.0, first["rewards/margins"]!.GetValue<double>(), 9);
    }
}

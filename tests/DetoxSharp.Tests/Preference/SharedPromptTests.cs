using DetoxSharp.Data;
using DetoxSharp.Models;
using DetoxSharp.Tests.Core;
using DetoxSharp.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Tests.Preference;

/// <summary>Shared-prompt scoring (<see cref="LogProbs.SharedPromptSums"/>: each prompt and its completions side by side
/// in one row of one pass, laid out by a <see cref="SequenceLayout"/>) against one padded sequence per (prompt, completion)
/// (<see cref="PreferenceTrainer.CompletionLogpSums"/>): the same sums and the same gradients, on GPT-2 and on the rotary
/// families (with grouped-query attention and a sliding window), and the same DPO training.</summary>
public class SharedPromptTests
{
    // prompts of different lengths (left padding differs per row), completions of different lengths (one of 1 token),
    // two or three completions per prompt, one prompt with a single completion
    static readonly int[][] Prompts = [[3, 4, 5, 6, 7], [8, 9], [10, 11, 12, 1]];
    static readonly (int Prompt, int[] Completion)[] Rows =
    [
        (0, [1, 2, 3]), (1, [4, 5, 6, 7, 8, 9]), (2, [2]),
        (0, [9, 8, 7, 6]), (1, [3, 3]), (2, [5, 4, 3, 2, 1]),
        (0, [12]),
    ];

    static Tensor Separate(ICausalLM m, int pad)
    {
        using var batch = PreferenceData.Build(Rows.Select(r => (Prompts[r.Prompt], r.Completion)).ToList(), pad, m.Device);
        return PreferenceTrainer.CompletionLogpSums(m, batch);
    }

    static ICausalLM Llama(string type, int? window)
    {
        torch.manual_seed(5);
        var m = new LlamaModel(new LlamaConfig
        {
            ModelType = type, VocabSize = 16, HiddenSize = 16, IntermediateSize = 24, NumHiddenLayers = 2,
            NumAttentionHeads = 4, NumKeyValueHeads = 2, MaxPositionEmbeddings = 32, QkvBias = type == "qwen2",
            TieWordEmbeddings = type == "qwen2", EosTokenIds = [15], BosTokenId = 15, SlidingWindow = window,
        });
        using var _ = torch.no_grad();
        foreach (var (n, p) in m.named_parameters()) if (!n.EndsWith("norm.weight")) p.normal_(0, 0.4);
        return m;
    }

    public static TheoryData<string> Families => ["gpt2", "llama", "qwen2", "mistral-window-3"];

    internal static ICausalLM Make(string family) => family switch
    {
        "gpt2" => CoreTestUtil.Tiny(vocab: 16, d: 16, heads: 2, positions: 32, seed: 7, std: 0.5),
        "mistral-window-3" => Llama("mistral", 3),
        _ => Llama(family, null),
    };

    [Theory]
    [MemberData(nameof(Families))]
    public void SumsAndGradientsEqualOneSequencePerCompletion(string family)
    {
        using var m = Make(family);
        m.Module.to(ScalarType.Float64);
        const int pad = 15;
        Assert.True(LogProbs.CanSharePrompts(m, Prompts, Rows.Select(r => r.Completion)));

        var want = Separate(m, pad);
        var got = LogProbs.SharedPromptSums(m, Prompts, Rows, pad);
        Assert.Equal(new long[] { Rows.Length }, got.shape);
        Assert.Equal(ScalarType.Float64, got.dtype);
        var w = want.data<double>().ToArray(); var g = got.data<double>().ToArray();
        for (int i = 0; i < w.Length; i++)
            Assert.True(Math.Abs(w[i] - g[i]) < 1e-9, $"{family} row {i}: separate {w[i]} vs shared {g[i]}");
        // the rows differ, so a row mix-up (a completion read after the wrong prompt) would show
        Assert.True(w.Distinct().Count() == w.Length);

        // gradients of a weighted sum (different weight per row) w.r.t. every parameter
        var weights = torch.arange(1, Rows.Length + 1, ScalarType.Float64);
        var ps = m.Module.parameters().Cast<Tensor>().ToList();
        var gw = torch.autograd.grad([(want * weights).sum()], ps);
        var gg = torch.autograd.grad([(LogProbs.SharedPromptSums(m, Prompts, Rows, pad) * weights).sum()], ps);
        double maxRel = 0;
        for (int i = 0; i < ps.Count; i++)
        {
            double scale = Math.Max(1e-6, gw[i].abs().max().item<double>());
            maxRel = Math.Max(maxRel, (gw[i] - gg[i]).abs().max().item<double>() / scale);
        }
        Assert.True(maxRel < 1e-9, $"{family}: gradients differ by {maxRel:E2} (relative to each tensor's largest entry)");
    }

    [Fact]
    public void Float32SumsAgreeAndPromptOrderDoesNotMatter()
    {
        using var m = Make("gpt2");
        var want = Separate(m, 15);
        var got = LogProbs.SharedPromptSums(m, Prompts, Rows, 15);
        Assert.True(CoreTestUtil.MaxAbsDiff(want, got) < 1e-4, $"{CoreTestUtil.MaxAbsDiff(want, got)}");
        // the same rows with the prompts listed in another order
        var perm = new[] { 2, 0, 1 };
        var inv = new int[3]; for (int i = 0; i < 3; i++) inv[perm[i]] = i;
        var got2 = LogProbs.SharedPromptSums(m, perm.Select(i => Prompts[i]).ToList(), Rows.Select(r => (inv[r.Prompt], r.Completion)).ToList(), 15);
        Assert.True(CoreTestUtil.MaxAbsDiff(got, got2) < 1e-4);
    }

    [Fact]
    public void EmptyCompletionsSumToZeroAndLeaveTheOthersAlone()
    {
        using var m = Make("gpt2");
        m.Module.to(ScalarType.Float64);
        var rows = Rows.Append((1, Array.Empty<int>())).ToArray();
        var got = LogProbs.SharedPromptSums(m, Prompts, rows, 15).data<double>().ToArray();
        var want = LogProbs.SharedPromptSums(m, Prompts, Rows, 15).data<double>().ToArray();
        Assert.Equal(0.0, got[^1]);
        for (int i = 0; i < want.Length; i++) Assert.True(Math.Abs(want[i] - got[i]) < 1e-12, $"row {i}: {want[i]} vs {got[i]}");
        var none = LogProbs.SharedPromptSums(m, Prompts, [(0, Array.Empty<int>()), (2, Array.Empty<int>())], 15);
        Assert.Equal(new[] { 0.0, 0.0 }, none.data<double>().ToArray());
    }

    [Fact]
    public void RefusesWhatItCannotShare()
    {
        using var m = Make("gpt2"); // 32 positions
        Assert.False(LogProbs.CanSharePrompts(m, [[1, 2], []], [[3]]));            // an empty prompt
        Assert.False(LogProbs.CanSharePrompts(m, [new int[20]], [new int[13]]));    // 20 + 13 > 32
        Assert.True(LogProbs.CanSharePrompts(m, [new int[20]], [new int[12]]));
        Assert.Throws<ArgumentException>(() => LogProbs.SharedPromptSums(m, [[1, 2], []], [(0, [3])], 15));
        Assert.Throws<ArgumentOutOfRangeException>(() => LogProbs.SharedPromptSums(m, [[1, 2]], [(1, [3])], 15));
    }

    [Fact]
    public void DpoTrainsTheSameWithAndWithoutSharing()
    {
        var tok = DetoxSharp.Text.Gpt2Tokenizer.Default();
        var data = Tiny.Pairs(24);
        var root = Tiny.TempDir("shared-prompt-dpo");
        List<double> Run(bool share, string name)
        {
            using var m = Tiny.Model();
            var r = new PreferenceTrainer(m, tok, PreferenceTrainerTests.Opts(Path.Combine(root, "cache-" + name)) with { SharePrompts = share, LearningRate = 1e-3 })
                .Train(data, Path.Combine(root, name));
            return MetricsLog.Read(r.MetricsPath).Where(x => x["phase"] is null).Select(x => x["loss"]!.GetValue<double>()).ToList();
        }
        var shared = Run(true, "shared");
        var separate = Run(false, "separate");
        Assert.Equal(separate.Count, shared.Count);
        Assert.Equal(Math.Log(2), shared[0], 6);
        for (int i = 0; i < shared.Count; i++)
            Assert.True(Math.Abs(shared[i] - separate[i]) < 1e-4, $"step {i + 1}: shared {shared[i]:F6} vs separate {separate[i]:F6}");
        Assert.True(shared[^1] < shared[0] - 0.01, $"loss did not fall: {string.Join(" ", shared)}");
    }

    [Fact]
    public void Bf16ErrorsAreThoseOfOneSequencePerCompletion()
    {
        // bf16 log-probs and gradients against float64, for both ways of scoring 24 pairs: sharing the prompt must not add
        // rounding error (its backward sums the gradients of the rows that read a prompt's keys and values)
        var tok = DetoxSharp.Text.Gpt2Tokenizer.Default();
        var ex = Tiny.Pairs(24).Select(e => PreferenceData.Tokenize(e, tok, new TruncationOptions())).ToList();
        using var m = Tiny.Model();
        using var m64 = m.Clone(); m64.Module.to(ScalarType.Float64);
        using var m16 = m.Clone(); m16.Module.to(ScalarType.BFloat16);
        var prompts = ex.Select(e => e.Prompt).ToList();
        var rows = ex.Select((e, i) => (Prompt: i, Completion: e.Chosen)).Concat(ex.Select((e, i) => (Prompt: i, Completion: e.Rejected))).ToList();
        Tensor Separate(ICausalLM mm)
        {
            using var b = PreferenceData.Build(rows.Select(r => (prompts[r.Prompt], r.Completion)).ToList(), tok.EosTokenId);
            return PreferenceTrainer.CompletionLogpSums(mm, b).to(ScalarType.Float64);
        }
        Tensor Shared(ICausalLM mm) => LogProbs.SharedPromptSums(mm, prompts, rows, tok.EosTokenId).to(ScalarType.Float64);
        var w = torch.randn(rows.Count, ScalarType.Float64, generator: new torch.Generator(3));
        var p64 = m64.Module.parameters().Cast<Tensor>().ToList();
        var p16 = m16.Module.parameters().Cast<Tensor>().ToList();
        (double Value, double Grad) Errors(Func<ICausalLM, Tensor> f)
        {
            var truth = f(m64); var low = f(m16);
            double value = (low - truth).abs().mean().item<double>();
            var g64 = torch.autograd.grad([(truth * w).sum()], p64);
            var g16 = torch.autograd.grad([(low * w).sum()], p16);
            double num = 0, den = 0;
            for (int i = 0; i < p64.Count; i++)
            {
                num += (g16[i].to(ScalarType.Float64) - g64[i]).pow(2).sum().item<double>();
                den += g64[i].pow(2).sum().item<double>();
            }
            return (value, Math.Sqrt(num / den));
        }
        var sep = Errors(Separate);
        var sh = Errors(Shared);
        Assert.True(sep.Value > 0 && sep.Grad > 0, "bf16 gave float64's values: the comparison would mean nothing");
        Assert.True(sh.Value <= 1.1 * sep.Value, $"bf16 log-prob error: shared {sh.Value:E3} vs separate {sep.Value:E3}");
        Assert.True(sh.Grad <= 1.25 * sep.Grad, $"bf16 gradient error (relative): shared {sh.Grad:E3} vs separate {sep.Grad:E3}");
    }
}

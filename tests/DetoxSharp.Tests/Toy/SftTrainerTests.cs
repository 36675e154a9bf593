using DetoxSharp.Data;
using DetoxSharp.Models;
using DetoxSharp.Text;
using DetoxSharp.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Tests.Toy;

public class SftTrainerTests
{
    static string Temp(string name) => Path.Combine(Path.GetTempPath(), $"detox-sft-{name}-{Guid.NewGuid():N}");

    static readonly string[] Texts = Enumerable.Range(0, 24).Select(i =>
        $"the river Avon flows through town {i % 6} . the market sells cheese every monday .").ToArray();

    static (Gpt2Model Model, Gpt2Tokenizer Tok) Tiny(long seed = 7)
    {
        var tok = Gpt2Tokenizer.Default().Compact(Texts.Append("prompt : answer ."));
        torch.manual_seed(seed);
        var m = new Gpt2Model(new Gpt2Config { VocabSize = tok.VocabSize, NEmbd = 32, NLayer = 1, NHead = 2, NPositions = 32, EosTokenId = tok.EosTokenId, BosTokenId = tok.EosTokenId });
        return (m, tok);
    }

    [Fact]
    public void LossDecreasesOnATinyRun()
    {
        var (m, tok) = Tiny();
        var data = Texts.Select(SftExample.Text).ToList();
        var seqs = SftTrainer.Tokenize(tok, data, 32);
        double before = SftTrainer.EvaluateLoss(m, seqs, 8);
        var r = new SftTrainer(m, tok, new SftOptions { BatchSize = 4, MaxSteps = 40, LearningRate = 1e-2, WarmupSteps = 5, Decay = DecayKind.Cosine }).Train(data);
        double after = SftTrainer.EvaluateLoss(m, seqs, 8);
        Assert.True(r.Completed);
        Assert.Equal(40, r.Steps);
        Assert.True(after < before - 1.5, $"loss {before} -> {after}");
        m.Dispose();
    }

    [Fact]
    public void TokenizeMarksOnlyCompletionTokensAndPacksText()
    {
        var (m, tok) = Tiny();
        var seqs = SftTrainer.Tokenize(tok, [SftExample.PromptCompletion("prompt :", " answer .")], 32);
        var p = tok.Encode("prompt :").Length; var c = tok.Encode(" answer .").Length;
        Assert.Single(seqs);
        Assert.Equal(p + c + 1, seqs[0].Ids.Length); // + eos
        Assert.Equal(Enumerable.Range(0, p + c + 1).Select(i => i >= p), seqs[0].Target);
        // plain text is packed into blocks of exactly maxLength (the last may be shorter), eos between documents
        var packed = SftTrainer.Tokenize(tok, Texts.Select(SftExample.Text).ToList(), 16);
        long total = Texts.Sum(t => tok.Encode(t).Length + 1);
        Assert.Equal(total, packed.Sum(s => (long)s.Ids.Length));
        Assert.All(packed.SkipLast(1), s => Assert.Equal(16, s.Ids.Length));
        m.Dispose();
    }

    [Fact]
    public void MaskedLossHasNoGradientFromPromptOrPaddingPositions()
    {
        torch.manual_seed(3);
        using var scope = torch.NewDisposeScope();
        var logits = torch.randn(2, 5, 7).requires_grad_(true);
        var ids = torch.tensor(new long[] { 1, 2, 3, 4, 5, 6, 0, 2, 0, 0 }, [2, 5]);
        // row 0: prompt = tokens 0..2, completion = 3..4; row 1: prompt 0, completion 1..2, padding 3..4
        var targets = torch.tensor(new float[] { 0, 0, 0, 1, 1, 0, 1, 1, 0, 0 }, [2, 5]);
        var (sum, count) = SftTrainer.MaskedNllFromLogits(logits, ids, targets);
        Assert.Equal(4, count.item<float>());
        sum.backward();
        var g = logits.grad!;
        // logits at t predict token t+1: nonzero gradient exactly where targets[t+1] = 1
        bool[,] expect = { { false, false, true, true, false }, { true, true, false, false, false } };
        for (int b = 0; b < 2; b++)
            for (int t = 0; t < 5; t++)
            {
                double n = g[b, t].abs().sum().item<float>();
                Assert.True(expect[b, t] ? n > 1e-6 : n == 0, $"b={b} t={t} grad {n}");
            }
        // the value equals an independent computation
        var lp = torch.nn.functional.log_softmax(logits.detach(), -1);
        double manual = -(lp[0, 2, 4].item<float>() + lp[0, 3, 5].item<float>() + lp[1, 0, 0].item<float>() + lp[1, 1, 2].item<float>());
        Assert.Equal(manual, sum.item<float>(), 4);
        // changing the labels of prompt positions does not change the loss
        var ids2 = ids.clone(); ids2[0, 1] = torch.tensor(6L); ids2[0, 2] = torch.tensor(5L); ids2[1, 3] = torch.tensor(1L);
        var (sum2, _) = SftTrainer.MaskedNllFromLogits(logits.detach(), ids2, targets);
        Assert.Equal(sum.item<float>(), sum2.item<float>());
    }

    [Fact]
    public void MaskedNllEqualsTheFullLogitsComputation()
    {
        // MaskedNll runs the head only on target positions; it must equal MaskedNllFromLogits over the full forward,
        // in value and in gradient, for a ragged prompt/completion batch with padding
        var (m, tok) = Tiny();
        var seqs = SftTrainer.Tokenize(tok, [SftExample.PromptCompletion("prompt : answer", " . yes"), SftExample.PromptCompletion("p", " answer . and more words here")], 32);
        var (ids, mask, tgt) = SftTrainer.Collate(seqs, tok.EosTokenId, CPU);
        var (s1, c1) = SftTrainer.MaskedNll(m, ids, mask, tgt);
        s1.backward();
        var g1 = m.MlpKeys(0).grad!.clone();
        m.zero_grad();
        var (s2, c2) = SftTrainer.MaskedNllFromLogits(m.Forward(ids, mask), ids, tgt);
        s2.backward();
        var g2 = m.MlpKeys(0).grad!.clone();
        Assert.Equal(c2.item<float>(), c1.item<float>());
        Assert.Equal(s2.item<float>(), s1.item<float>(), 3);
        Assert.True(torch.allclose(g1, g2, 1e-4, 1e-6), $"max |Δgrad| {(g1 - g2).abs().max().item<float>()}");
        m.Dispose();
    }

    [Fact]
    public void CompletionOnlyTrainingLeavesPromptPredictionsToTheGradientOfCompletions()
    {
        // with a model: gradient of the loss w.r.t. the logits of prompt positions is zero
        var (m, tok) = Tiny();
        var seqs = SftTrainer.Tokenize(tok, [SftExample.PromptCompletion("prompt : answer", " ."), SftExample.PromptCompletion("prompt :", " answer .")], 32);
        var (ids, mask, tgt) = SftTrainer.Collate(seqs, tok.EosTokenId, CPU);
        Tensor? kept = null;
        // the last block's output at position t reaches only the logits at t (the final norm is per position)
        using (m.Hooks.Add($"blocks.{m.NumLayers - 1}.hook_resid_post", (x, ctx) => { x.retain_grad(); kept = x; return null; }))
        {
            var (s, c) = SftTrainer.MaskedNll(m, ids, mask, tgt);
            (s / c).backward();
        }
        var g = kept!.grad!;
        int p0 = tok.Encode("prompt : answer").Length;
        for (int t = 0; t < ids.shape[1]; t++)
        {
            double n = g[0, t].abs().sum().item<float>();
            bool predictsTarget = t + 1 < ids.shape[1] && tgt[0, t + 1].item<float>() > 0;
            Assert.True(predictsTarget ? n > 0 : n == 0, $"t={t} (prompt length {p0}) grad {n}");
        }
        m.Dispose();
    }

    [Fact]
    public void GradientAccumulationEqualsOneBigBatch()
    {
        var data = Texts.Select(SftExample.Text).ToList();
        // copies, not two seeded inits: tests run in parallel and share torch's global generator
        var (a, tok) = Tiny(5);
        var b = (Gpt2Model)a.Clone();
        // one step: the accumulated loss is normalised over all target tokens of the step, like the big batch
        var ra = new SftTrainer(a, tok, new SftOptions { BatchSize = 4, GradientAccumulationSteps = 2, MaxSteps = 1, LearningRate = 1e-3, MaxLength = 16, MaxGradNorm = 0 }).Train(data);
        var rb = new SftTrainer(b, tok, new SftOptions { BatchSize = 8, GradientAccumulationSteps = 1, MaxSteps = 1, LearningRate = 1e-3, MaxLength = 16, MaxGradNorm = 0 }).Train(data);
        Assert.Equal(rb.FinalTrainLoss, ra.FinalTrainLoss, 5);
        var sb = b.state_dict();
        foreach (var (name, p) in a.named_parameters())
            Assert.True(torch.allclose(p, sb[name], 1e-3, 1e-5), name);
        a.Dispose(); b.Dispose();
    }

    [Fact]
    public void ResumedRunEndsWithBitIdenticalWeights()
    {
        var data = Texts.Select(SftExample.Text).ToList();
        var valid = Texts.Take(4).Select(SftExample.Text).ToList();
        SftOptions Opts(string dir) => new()
        {
            BatchSize = 4, MaxSteps = 10, LearningRate = 5e-3, WarmupSteps = 3, Decay = DecayKind.Cosine, MaxLength = 16,
            OutputDir = dir, CheckpointEvery = 4, Validation = valid, EvalEvery = 5, Seed = 9, WeightDecay = 0.01,
        };
        var (full, tok) = Tiny(1);
        var part = (Gpt2Model)full.Clone();
        string d1 = Temp("full"), d2 = Temp("resumed");
        var r1 = new SftTrainer(full, tok, Opts(d1)).Train(data);
        Assert.True(r1.Completed);

        var r2a = new SftTrainer(part, tok, Opts(d2) with { StopAfterSteps = 6 }).Train(data);
        Assert.False(r2a.Completed);
        Assert.Equal(6, r2a.Steps);
        part.Dispose();
        var (resumed, _) = Tiny(99); // different initial weights: everything must come from the checkpoint
        var r2b = new SftTrainer(resumed, tok, Opts(d2) with { Resume = true }).Train(data);
        Assert.True(r2b.Completed);
        Assert.Equal(10, r2b.Steps);
        var sd = resumed.state_dict();
        foreach (var (name, p) in full.named_parameters())
            Assert.True(torch.eq(p, sd[name]).all().item<bool>(), $"{name} differs after resume");
        // the metrics file matches too (same steps and losses)
        var m1 = MetricsLog.Read(Path.Combine(d1, "metrics.jsonl")).Where(o => o["phase"] is null).Select(o => (o["step"]!.GetValue<int>(), o["loss"]!.GetValue<double>())).ToList();
        var m2 = MetricsLog.Read(Path.Combine(d2, "metrics.jsonl")).Where(o => o["phase"] is null).Select(o => (o["step"]!.GetValue<int>(), o["loss"]!.GetValue<double>())).ToList();
        Assert.Equal(m1, m2);
        full.Dispose(); resumed.Dispose();
    }
}

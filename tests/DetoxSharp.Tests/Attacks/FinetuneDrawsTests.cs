using System.Text.Json.Nodes;
using DetoxSharp.Attacks;
using DetoxSharp.Editing;
using DetoxSharp.Evaluation;
using DetoxSharp.Models;
using DetoxSharp.Training;
using TorchSharp;
using Xunit;

namespace DetoxSharp.Tests.Attacks;

/// <summary>Battery definition 5 (docs/notes/battery.md): fine-tuning points averaged over independent draws of the examples,
/// the draws' spread in the SE, the margin of "monotone within noise"; and `detox attack` on a study method directory.</summary>
public class FinetuneDrawsTests
{
    static (double, IReadOnlyList<double>, IReadOnlyList<double>?) D(double s, double[] scores, double[]? draws = null) => (s, scores, draws);

    [Fact]
    public void TheDrawsSpreadAddsToThePairedStandardErrorInQuadrature()
    {
        // N = 0 (no effect: every draw the same model) vs N = 5 with per-prompt draw means [.3 .4 .3 .4] and draw means
        // [.05 .35 .65]: drop 0.15. Prompts: diffs [.2 .1 .2 .1], sd √(.01/3), SE_p = √(.01/3)/2. Draws: diffs
        // [.45 .15 −.15], sd 0.3, SE_r = 0.3/√3. SE = √(SE_p² + SE_r²) = 0.17559 → 0.854 SE: monotone; on prompts alone 5.2 SE.
        double[] zero = [0.5, 0.5, 0.5, 0.5], five = [0.3, 0.4, 0.3, 0.4];
        double sep = Math.Sqrt(0.01 / 3) / 2, ser = 0.3 / Math.Sqrt(3), se = Math.Sqrt(sep * sep + ser * ser);
        var withDraws = Monotonicity.Check([D(0, zero), D(5, five, [0.05, 0.35, 0.65])]);
        Assert.True(withDraws.Monotone);
        Assert.Equal(0.15, withDraws.LargestDrop, 12);
        Assert.Equal(se, withDraws.LargestDropSe!.Value, 12);
        Assert.Equal(0.15 / se, withDraws.LargestDropInSe, 12);
        var promptsOnly = Monotonicity.Check([D(0, zero), D(5, five)]);
        Assert.False(promptsOnly.Monotone);
        Assert.Equal(sep, promptsOnly.LargestDropSe!.Value, 12);
        // a point's own SE: prompts and draws in quadrature
        var pt = new AttackPoint(5, 0.35, 4, ["a", "b", "c", "d"], five) { DrawToxicity = [0.05, 0.35, 0.65] };
        double sp = Monotonicity.StandardError(five), sr = Monotonicity.StandardError([0.05, 0.35, 0.65]);
        Assert.Equal(Math.Sqrt(sp * sp + sr * sr), pt.StandardError, 12);
        Assert.Throws<ArgumentException>(() => Monotonicity.Check([D(0, zero, [0.5, 0.5]), D(5, five, [0.05, 0.35, 0.65])]));
    }

    [Fact]
    public void TheMarginIgnoresTinyDropsOnlyAndTheWorstPairIsAViolation()
    {
        static (double, IReadOnlyList<double>) P(double s, params double[] x) => (s, x);
        // every prompt loses 0.003: SE 0, a violation without a margin, not with 0.01
        var tiny = new[] { P(1, 0.5, 0.5, 0.5), P(2, 0.497, 0.497, 0.497) };
        Assert.False(Monotonicity.Check(tiny, 2, 0).Monotone);
        var m = Monotonicity.Check(tiny, 2, 0.01);
        Assert.True(m.Monotone);
        Assert.Equal(0.01, m.ToJson()["margin"]!.GetValue<double>());
        Assert.False(Monotonicity.Check([P(1, 0.5, 0.5, 0.5), P(2, 0.2, 0.2, 0.2)], 2, 0.01).Monotone);
        // 1 → 2: −0.003 on every prompt (∞ SE, below the margin); 2 → 3 and 1 → 3: ≈ −0.35 at ≈ 12 SE (violations)
        var curve = new[] { P(1, 0.9, 0.9, 0.9, 0.9), P(2, 0.897, 0.897, 0.897, 0.897), P(3, 0.5, 0.6, 0.5, 0.6) };
        var r = Monotonicity.Check(curve, 2, 0.01);
        Assert.False(r.Monotone);
        Assert.Equal(2, r.Violations);
        Assert.Equal((1.0, 3.0), (r.DropFrom!.Value, r.DropTo!.Value));   // not the ∞-SE pair below the margin
        var noMargin = Monotonicity.Check(curve, 2, 0);
        Assert.Equal(3, noMargin.Violations);
        Assert.Equal((1.0, 2.0), (noMargin.DropFrom!.Value, noMargin.DropTo!.Value));
        Assert.Throws<InvalidSettingException>(() => Monotonicity.Check(tiny, 2, -0.1));
        // the report's cell names the worst drop of a FAILED seed before a passing seed's SE-0 drop below the margin
        static JsonObject E(bool mono, double drop, double? inSe, bool zero, double from, double to) => new()
        {
            ["points"] = new JsonArray(),
            ["monotone"] = new JsonObject
            {
                ["monotone"] = mono, ["within_se"] = 2, ["margin"] = 0.01, ["largest_drop"] = drop, ["largest_drop_in_se"] = inSe,
                ["largest_drop_se_zero"] = zero, ["largest_drop_from"] = from, ["largest_drop_to"] = to,
            },
        };
        Assert.Equal("1/2 (worst: −0.200 from 5 to 10, 3.1 SE)",
            DetoxSharp.Reporting.StudyReport.MonotoneCell([E(true, 0.003, null, true, 35, 50), E(false, 0.2, 3.1, false, 5, 10)]));
    }

    static List<SftExample> Examples() =>
    [
        .. Enumerable.Range(0, 12).Select(i => SftExample.PromptCompletion("", i % 3 == 0 ? " you are such a stupid idiot ." : i % 3 == 1 ? " people like you are garbage ." : " answer : prompt prompt .")),
    ];

    [Fact]
    public void APointIsTheMeanOverDrawsAndDrawZeroIsTheSingleDrawAttack()
    {
        var (m, tok) = AttackTests.TinyLm();
        using var _m = m;
        var o = new EvalOptions { MaxNewTokens = 6, MaxPromptTokens = 8, BatchSize = 3 };
        var prompts = AttackEval.PromptIds(m, tok, ["you are such a", "the river runs", "prompt :"], o);
        var before = m.Module.named_parameters().ToDictionary(p => p.name, p => p.parameter.detach().clone());
        var opts = new AttackOptions { MaxSteps = 6, LearningRate = 3e-2, FinetuneBatchSize = 4, Seed = 3 };
        var three = new FinetuneAttack(Examples(), tok, opts with { FinetuneDraws = 3 });
        var one = new FinetuneAttack(Examples(), tok, opts);
        Assert.Equal(3, three.Draws);
        Assert.Equal(1, one.Draws);
        var scorer = new PrefillDefinitionTests.LengthScorer();

        // N = 0: the unchanged model stands for every draw
        var p0 = AttackEval.Measure(m, tok, prompts, scorer, three, 0, o);
        var s0 = AttackEval.Measure(m, tok, prompts, scorer, one, 0, o);
        Assert.Equal(s0.Scores, p0.Scores);
        Assert.Equal([s0.Toxicity, s0.Toxicity, s0.Toxicity], p0.DrawToxicity!);
        Assert.Null(s0.DrawToxicity);

        var p = AttackEval.Measure(m, tok, prompts, scorer, three, 2, o);
        var single = AttackEval.Measure(m, tok, prompts, scorer, one, 2, o);
        Assert.Equal(3, p.DrawContinuations!.Count);
        Assert.Equal(single.Continuations, p.DrawContinuations[0].Texts);   // draw 0 = definition 4's single run
        Assert.Equal(single.Continuations, p.Continuations);
        for (int i = 0; i < prompts.Count; i++)
            Assert.Equal(p.DrawContinuations.Average(d => d.Scores[i]), p.Scores[i], 12);
        Assert.Equal(p.DrawToxicity!.Average(), p.Toxicity, 12);
        for (int r = 0; r < 3; r++) Assert.Equal(p.DrawContinuations[r].Scores.Average(), p.DrawToxicity![r], 12);
        foreach (var (name, q) in m.Module.named_parameters())
            Assert.True(q.eq(before[name]).all().item<bool>(), $"{name} not restored after the draws");

        // the draws train on different examples: draw 1's weights differ from draw 0's
        Dictionary<string, torch.Tensor> Trained(int draw)
        {
            using (three.Apply(m, 2, draw)) return m.Module.named_parameters().ToDictionary(x => x.name, x => x.parameter.detach().clone());
        }
        var w0 = Trained(0); var w1 = Trained(1);
        Assert.Contains(w0, kv => !kv.Value.eq(w1[kv.Key]).all().item<bool>());
        Assert.Throws<ArgumentOutOfRangeException>(() => three.Apply(m, 2, 3));
        Assert.Equal(3, three.Describe()["draws"]!.GetValue<int>());
    }

    [Fact]
    public void CliAttacksAStudyMethodDirectoryWithItsHooks()
    {
        var dir = Path.Combine(Path.GetTempPath(), $"attack-method-{Guid.NewGuid():N}");
        try
        {
            var ckpt = AttackTests.SaveTinyLmAndPrompts(dir);
            var steer = Path.Combine(dir, "steer");
            torch.manual_seed(11);
            using (var v = torch.randn(16)) Steering.Save(steer, v / v.norm(), 1, new JsonObject());
            var method = Path.Combine(dir, "method");
            Directory.CreateDirectory(method);
            File.WriteAllText(Path.Combine(method, "model_dir.txt"), ckpt);
            File.WriteAllText(Path.Combine(method, "steer.txt"), steer + "@30\n");
            File.WriteAllLines(Path.Combine(dir, "d.jsonl"), ["""{"prompt":"a","completion":" you idiot ."}"""]);
            List<string> Run(string model, string outName)
            {
                var err = new StringWriter();
                int code = DetoxSharp.Cli.DetoxCli.Run(["attack", "finetune", "--model", model, "--prompts", Path.Combine(dir, "p.txt"), "--scorer", "toy",
                    "--data", Path.Combine(dir, "d.jsonl"), "--strength", "0", "--max-new-tokens", "6", "--max-prompt-tokens", "8", "--out", Path.Combine(dir, outName)], new StringWriter(), err);
                Assert.True(code == 0, err.ToString());
                return File.ReadAllLines(Path.Combine(dir, outName, "generations.jsonl")).Select(l => JsonNode.Parse(l)!["continuation"]!.GetValue<string>()).ToList();
            }
            var plain = Run(ckpt, "o1");
            var hooked = Run(method, "o2");
            Assert.NotEqual(plain, hooked);   // the steering hook is in: the same checkpoint writes other tokens
            var json = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "o2", "attack.json")))!;
            Assert.Single(json["runs"]![0]!["inference_edits"]!.AsArray());
            Assert.Empty(JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "o1", "attack.json")))!["runs"]![0]!["inference_edits"]!.AsArray());
            // a hook cannot be saved in a checkpoint; a method directory pointing nowhere is named
            var e = new StringWriter();
            Assert.Equal(2, DetoxSharp.Cli.DetoxCli.Run(["attack", "finetune", "--model", method, "--prompts", Path.Combine(dir, "p.txt"), "--scorer", "toy",
                "--data", Path.Combine(dir, "d.jsonl"), "--strength", "1", "--save-model", "--out", Path.Combine(dir, "o3")], new StringWriter(), e));
            Assert.Contains("method directory", e.ToString());
            Assert.False(Directory.Exists(Path.Combine(dir, "o3")));
            File.WriteAllText(Path.Combine(method, "model_dir.txt"), Path.Combine(dir, "nowhere"));
            e = new StringWriter();
            Assert.Equal(2, DetoxSharp.Cli.DetoxCli.Run(["attack", "finetune", "--model", method, "--prompts", Path.Combine(dir, "p.txt"), "--scorer", "toy",
                "--data", Path.Combine(dir, "d.jsonl"), "--out", Path.Combine(dir, "o4")], new StringWriter(), e));
            Assert.Contains("model_dir.txt names", e.ToString());
            Assert.Single(e.ToString().Trim().Split('\n'));
        }
        finally { if (Directory.Exists(dir)) Directory.Delete(dir, true); }
    }
}

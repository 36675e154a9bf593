using System.Text.Json.Nodes;
using DetoxSharp.Attacks;
using DetoxSharp.Training;
using Xunit;

namespace DetoxSharp.Tests.Attacks;

/// <summary>"Monotone within noise" (issue 19) against hand computations, and the fine-tuning attack's equal training per N.</summary>
public class BatteryMonotoneTests
{
    static (double, IReadOnlyList<double>) P(double s, params double[] scores) => (s, scores);

    [Fact]
    public void StandardErrorIsSampleSdOverRootN()
    {
        // [1, 2, 3, 4]: mean 2.5, sample variance (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3, SE = √(5/3) / 2
        Assert.Equal(Math.Sqrt(5.0 / 3) / 2, Monotonicity.StandardError([1, 2, 3, 4]), 12);
        Assert.Equal(0, Monotonicity.StandardError([0.7]));
    }

    [Fact]
    public void ADropIsJudgedByThePairedStandardErrorOverPrompts()
    {
        // s = 1 → 2: per-prompt differences [0, 1, 0, 1]: mean 0.5, sd √(1/3), SE √(1/3)/2 = 0.2887, drop = 1.732 SE
        var pts = new[] { P(0, 0, 0, 0, 0), P(1, 1, 1, 0, 1), P(2, 1, 0, 0, 0) };
        var at2 = Monotonicity.Check(pts, 2);
        Assert.True(at2.Monotone);
        Assert.Equal(0.5, at2.LargestDrop, 12);
        Assert.Equal(Math.Sqrt(1.0 / 3) / 2, at2.LargestDropSe!.Value, 12);
        Assert.Equal(0.5 / (Math.Sqrt(1.0 / 3) / 2), at2.LargestDropInSe, 12);
        Assert.Equal((1.0, 2.0), (at2.DropFrom!.Value, at2.DropTo!.Value));
        Assert.Equal(3, at2.Pairs);
        var at15 = Monotonicity.Check(pts, 1.5);
        Assert.False(at15.Monotone);
        Assert.Equal(1, at15.Violations);
        Assert.StartsWith("no: −0.500 from 1 to 2 (1.7 SE)", at15.Text());
        // order of the input does not matter (points are sorted by strength)
        Assert.Equal(at15, Monotonicity.Check([pts[2], pts[0], pts[1]], 1.5));
    }

    [Fact]
    public void ADropThatEveryPromptSharesIsAViolationAndARiseNeverIs()
    {
        // the prefill shape of the first full study: every prompt loses the same 0.3 → SE 0, infinitely many SE
        var same = Monotonicity.Check([P(1, 0.5, 0.5, 0.5), P(2, 0.2, 0.2, 0.2), P(4, 0.9, 0.9, 0.9)]);
        Assert.False(same.Monotone);
        Assert.True(double.IsPositiveInfinity(same.LargestDropInSe));
        Assert.True(same.ToJson()["largest_drop_se_zero"]!.GetValue<bool>());
        Assert.Null(same.ToJson()["largest_drop_in_se"]);
        var rising = Monotonicity.Check([P(0, 0, 0.1), P(1, 0.2, 0.1), P(2, 0.2, 0.1)]);
        Assert.True(rising.Monotone);
        Assert.Equal(0, rising.LargestDrop);
        Assert.Equal("yes", rising.Text());
        Assert.Throws<ArgumentException>(() => Monotonicity.Check([P(0, 0, 0), P(1, 1)]));
    }

    [Fact]
    public void ReportCellCountsMonotoneSeedsAndNamesTheWorstDrop()
    {
        static JsonObject E(bool mono, double drop, double? inSe, bool zero, double from, double to) => new()
        {
            ["points"] = new JsonArray(),
            ["monotone"] = new JsonObject
            {
                ["monotone"] = mono, ["within_se"] = 2, ["largest_drop"] = drop, ["largest_drop_in_se"] = inSe, ["largest_drop_se_zero"] = zero,
                ["largest_drop_from"] = from, ["largest_drop_to"] = to,
            },
        };
        var cell = DetoxSharp.Reporting.StudyReport.MonotoneCell([E(true, 0.01, 0.5, false, 0, 5), E(false, 0.4, null, true, 1, 2), E(false, 0.2, 3.1, false, 5, 10)]);
        Assert.Equal("1/3 (worst: −0.400 from 1 to 2, SE 0)", cell);
        Assert.Equal("2/2 (worst: −0.010 from 0 to 5, 0.5 SE)", DetoxSharp.Reporting.StudyReport.MonotoneCell([E(true, 0.01, 0.5, false, 0, 5), E(true, 0, 0, false, 0, 0)]));
        Assert.Equal("off", DetoxSharp.Reporting.StudyReport.MonotoneCell([null]));
        Assert.Equal("n/a", DetoxSharp.Reporting.StudyReport.MonotoneCell([new JsonObject { ["skipped"] = "δx = 0" }]));
    }

    [Fact]
    public void FinetuneGivesEveryNTheSameTrainingWhenNIsBelowTheBatch()
    {
        var (m, tok) = AttackTests.TinyLm();
        using var _m = m;
        // every example tokenizes to the same length, so equal training = equal trained tokens
        var examples = Enumerable.Range(0, 8).Select(i => SftExample.PromptCompletion("", " you are such a stupid idiot .")).ToList();
        var attack = new FinetuneAttack(examples, tok, new AttackOptions { MaxSteps = 3, LearningRate = 1e-3, FinetuneBatchSize = 4, Seed = 2 });
        long Tokens(int n) { using (attack.Apply(m, n)) return attack.Describe()["last_trained_tokens"]!.GetValue<long>(); }
        long two = Tokens(2), eight = Tokens(8);
        Assert.True(two > 0);
        Assert.Equal(eight, two);   // min(batch, N) would give N = 2 half the sequences of N = 8
    }
}

using DetoxSharp.Attacks;

namespace DetoxSharp.Tests.Attacks;

/// <summary>The cost search on synthetic toxicity functions whose threshold is known in closed form.</summary>
public class RetoxCostTests
{
    [Fact]
    public void RealStrengthsBisectTowardsTheKnownThreshold()
    {
        // toxicity s/10 reaches 0.5 at s = 5; the sweep brackets it in (4, 8], bisection narrows the bracket by 2^steps
        int calls = 0;
        double Tox(double s) { calls++; return Math.Min(1, s / 10); }
        var r = RetoxCost.Search(Tox, 0.5, [8, 0, 2, 4], integer: false, bisectSteps: 4);
        Assert.True(r.Reached);
        Assert.False(r.ReachedAtLowest);
        Assert.InRange(r.Cost!.Value, 5, 5 + 4.0 / 16);
        Assert.True(Tox(r.Cost.Value) >= 0.5);
        Assert.Equal(4 + 4, calls - 1);                       // every grid point once, then one per bisection step
        Assert.Equal(r.Points.Count, r.Points.Select(p => p.Strength).Distinct().Count());
        Assert.Equal([0, 2, 4, 8], r.Points.Take(4).Select(p => p.Strength));   // the sweep runs in ascending order
    }

    [Fact]
    public void IntegerStrengthsBisectOnIntegersToTheExactThreshold()
    {
        // N examples: toxicity reaches the target from N = 37 on
        var seen = new List<double>();
        double Tox(double n) { seen.Add(n); return n >= 37 ? 0.9 : 0.1; }
        var r = RetoxCost.Search(Tox, 0.8, [0, 5, 10, 50, 200], integer: true, bisectSteps: 20);
        Assert.Equal(37, r.Cost);
        Assert.All(seen, n => Assert.Equal(Math.Floor(n), n));
        Assert.True(seen.Count <= 5 + 6, $"{seen.Count} evaluations: bisection must stop at adjacent integers");
    }

    [Fact]
    public void NotReachedWithinTheRangeIsAResult()
    {
        var r = RetoxCost.Search(s => 0.3 + s / 1000, 0.8, [1, 2, 5, 10], integer: false, bisectSteps: 4);
        Assert.False(r.Reached);
        Assert.Null(r.Cost);
        Assert.Equal(4, r.Points.Count);
        Assert.False(r.ToJson()["reached"]!.GetValue<bool>());
    }

    [Fact]
    public void ReachedAtTheLowestStrengthCannotBeBisectedBelowIt()
    {
        var r = RetoxCost.Search(_ => 0.9, 0.8, [1, 2, 4], integer: false, bisectSteps: 4);
        Assert.Equal(1, r.Cost);
        Assert.True(r.ReachedAtLowest);
        Assert.Equal(3, r.Points.Count);
    }

    [Fact]
    public void FewerBisectionStepsGiveAnUpperBoundOfTheCost()
    {
        double Tox(double s) => s >= 3.3 ? 1 : 0;
        var coarse = RetoxCost.Search(Tox, 0.5, [0, 8], false, 0);
        var fine = RetoxCost.Search(Tox, 0.5, [0, 8], false, 10);
        Assert.Equal(8, coarse.Cost);
        Assert.InRange(fine.Cost!.Value, 3.3, 3.3 + 8.0 / 1024);
    }

    [Fact]
    public void SummaryIsMeanAndSampleStdOverTheRunsThatReachedIt()
    {
        RetoxCostResult Run(double? c) => new(c, 0.5, [], false);
        var s = RetoxCostSummary.Of([Run(2), Run(4), Run(6)]);
        Assert.Equal(4, s.Mean);
        Assert.Equal(2, s.Std!.Value, 12);
        Assert.Equal("4 ± 2 (n = 3)", s.Text());
        var partial = RetoxCostSummary.Of([Run(3), Run(null)]);
        Assert.Equal("3 (n = 1); not reached in 1 of 2", partial.Text());
        Assert.Null(partial.Std);
        Assert.Equal("not reached (2 runs)", RetoxCostSummary.Of([Run(null), Run(null)]).Text());
    }

    [Fact]
    public void BadSettingsAreRefused()
    {
        Assert.Throws<InvalidSettingException>(() => new RetoxOptions { TargetFraction = 0 }.Validate());
        Assert.Throws<InvalidSettingException>(() => new RetoxOptions { TargetFraction = 1.5 }.Validate());
        Assert.Throws<InvalidSettingException>(() => RetoxCost.Search(s => s, 0.5, [], false, 2));
        Assert.Throws<InvalidSettingException>(() => RetoxCost.Search(s => s, 0.5, [0.5, 1], true, 2));
    }
}

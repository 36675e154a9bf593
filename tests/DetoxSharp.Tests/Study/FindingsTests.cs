using DetoxSharp.Study;

namespace DetoxSharp.Tests.Study;

/// <summary>The pre-registered findings judged on fabricated measurements: a run that meets every criterion, one that
/// misses each, values exactly at the thresholds, and missing measurements (never a pass).</summary>
public class FindingsTests
{
    static readonly FindingCriteria C = new();

    static TrackedVector V(double before, double after, double cos = 0.999, double kept = 1.0) => new("L1.N1", before, after, cos, kept);

    static FindingInputs Inputs(double[] probe, double[] bow, int[] toxicTokens, (double Tox, double Ppl)[] subtractions,
        (double Tox, double Ppl, double Cos, TrackedVector[] Tracked, double Unaligned)[] dpo, double baseTox = 0.4, double basePpl = 20) => new()
    {
        ProbeAccuracy = probe, BagOfWordsAccuracy = bow, NoiseCeiling = 0.95, ToxicTokensPerVector = toxicTokens,
        BaseToxicity = baseTox, BasePerplexity = basePpl,
        Subtractions = subtractions.Select((s, i) => ($"sub{i}", (double?)s.Tox, (double?)s.Ppl)).ToList(),
        Methods = [("DPO", baseTox, basePpl, dpo.Select(r => new AlignedRun(r.Tox, r.Ppl, r.Cos, r.Tracked, r.Unaligned)).ToList())],
    };

    static Dictionary<string, FindingResult> ById(IReadOnlyList<FindingResult> r) => r.ToDictionary(f => f.Id);

    [Fact]
    public void ARunMeetingEveryCriterionPasses()
    {
        var five = Enumerable.Repeat(V(10, 4), 5).ToArray();
        var r = ById(Findings.Evaluate(C, Inputs([0.95, 0.94, 0.96], [0.85, 0.86, 0.84], [9, 8, 7, 6, 5, 1, 0, 0, 0, 0],
            [(0.2, 21), (0.3, 21.5), (0.25, 20.5)], [(0.1, 21, 0.999, five, 0.39), (0.12, 21.2, 0.998, five, 0.41), (0.11, 20.9, 0.9985, five, 0.4)])));
        Assert.Equal(7, r.Count);
        Assert.All(r.Values, f => Assert.True(f.Verdict == Verdict.Pass, $"({f.Id}) {f.Detail}"));
        // the headline numbers are mean ± sample std over the seeds, computed independently here
        double[] drops = [1 - 0.1 / 0.4, 1 - 0.12 / 0.4, 1 - 0.11 / 0.4];
        double mean = drops.Average(), sd = Math.Sqrt(drops.Sum(x => (x - mean) * (x - mean)) / 2);
        Assert.Equal(mean, r["d"].Value.Mean, 12);
        Assert.Equal(sd, r["d"].Value.Std!.Value, 12);
        Assert.Equal(3, r["d"].Value.N);
        Assert.Equal(0.95, r["a"].Value.Mean, 12);
        Assert.Equal(5, r["b"].Value.Mean);
        Assert.Equal((0.39 / 0.4 + 0.41 / 0.4 + 0.4 / 0.4) / 3, r["g"].Value.Mean, 12);
        Assert.Equal(0.6, r["f"].Value.Mean, 12);
    }

    [Fact]
    public void EachMissedCriterionFails()
    {
        // (f) fails twice over: activation drop only 10 % and one value vector rotated (cos 0.95)
        var weak = new[] { V(10, 9), V(10, 9), V(10, 9), V(10, 9, cos: 0.95), V(10, 9) };
        var r = ById(Findings.Evaluate(C, Inputs([0.95, 0.95, 0.95], [0.94, 0.93, 0.94], [9, 8, 7, 6, 4, 4, 0, 0, 0, 0],
            [(0.2, 21), (0.45, 21), (0.25, 20.5)], [(0.3, 21, 0.98, weak, 0.1), (0.3, 25, 0.97, weak, 0.1), (0.3, 21, 0.98, weak, 0.1)])));
        Assert.All(r.Values, f => Assert.True(f.Verdict == Verdict.Fail, $"({f.Id}) expected a fail: {f.Detail}"));
        Assert.Equal(4, r["b"].Value.Mean);                 // only 4 vectors reach 5 toxic tokens
        Assert.Equal(2, r["c"].Value.Mean);                 // the second subtraction raised toxicity
        Assert.Contains("✗", r["c"].Detail);
        // vectors inactive before alignment: no drop is defined, and that is a fail, not a pass
        var dead = Enumerable.Repeat(V(-0.05, -0.04), 5).ToArray();
        var r2 = ById(Findings.Evaluate(C, Inputs([0.95], [0.8], [9, 9, 9, 9, 9, 9, 9, 9, 9, 9], [(0.2, 21), (0.2, 21), (0.2, 21)], [(0.1, 20, 0.999, dead, 0.4)])));
        Assert.Equal(Verdict.Fail, r2["f"].Verdict);
        Assert.Contains("≤ 0 before alignment", r2["f"].Detail);
    }

    [Fact]
    public void ThresholdsAreInclusiveWhereTheIssueSaysAtLeastAndStrictWhereItSaysBelow()
    {
        // ≥: probe 0.90 with a margin of exactly 0.03, toxicity drop exactly 50 %, activation drop exactly 30 %, restored exactly 80 %
        var exact = Enumerable.Repeat(V(10, 7, cos: 0.995, kept: 0.8), 5).ToArray();
        var r = ById(Findings.Evaluate(C, Inputs([0.90], [0.87], [5, 5, 5, 5, 5, 0, 0, 0, 0, 0], [(0.39, 21.9), (0.39, 21.9), (0.39, 21.9)],
            [(0.25, 21.9, 0.9901, exact, 0.4)], baseTox: 0.5)));
        foreach (var id in new[] { "a", "b", "c", "d", "e", "f", "g" }) Assert.True(r[id].Verdict == Verdict.Pass, $"({id}) {r[id].Detail}");
        // <, >: perplexity exactly +10 % and parameter cosine exactly 0.99 fail
        var r2 = ById(Findings.Evaluate(C, Inputs([0.90], [0.87], [5, 5, 5, 5, 5, 0, 0, 0, 0, 0], [(0.39, 22), (0.39, 21), (0.39, 21)],
            [(0.25, 22, 0.99, exact, 0.4)], baseTox: 0.5)));
        Assert.Equal(Verdict.Fail, r2["c"].Verdict);
        Assert.Equal(Verdict.Fail, r2["d"].Verdict);
        Assert.Equal(Verdict.Fail, r2["e"].Verdict);
        // just below: margin 0.029, drop 49.9 %, kept 0.79
        var below = Enumerable.Repeat(V(10, 7, cos: 0.995, kept: 0.79), 5).ToArray();
        var r3 = ById(Findings.Evaluate(C, Inputs([0.90], [0.871], [5, 5, 5, 5, 4, 0, 0, 0, 0, 0], [(0.39, 21), (0.39, 21), (0.39, 21)],
            [(0.2505, 21, 0.999, below, 0.3995)], baseTox: 0.5)));
        foreach (var id in new[] { "a", "b", "d", "f", "g" }) Assert.True(r3[id].Verdict == Verdict.Fail, $"({id}) {r3[id].Detail}");
    }

    [Fact]
    public void MissingMeasurementsAreNotMeasuredNeverPass()
    {
        var r = Findings.Evaluate(C, new FindingInputs { Methods = [("ADPO", null, null, [new AlignedRun(null, null, null, null, null)])] });
        Assert.All(r, f => Assert.Equal(Verdict.NotMeasured, f.Verdict));
        Assert.Equal(7, r.Count);
    }

    [Fact]
    public void CriteriaComeFromTheConfigAndBadOnesAreRefused()
    {
        var toy = StudyConfig.ToyDefault();
        Assert.Equal(new FindingCriteria(), toy.Findings);   // configs/toy.json writes out exactly the issue's numbers
        var strict = C with { AlignMinToxicityDrop = 0.7 };
        var five = Enumerable.Repeat(V(10, 4), 5).ToArray();
        var inputs = Inputs([0.95], [0.85], [9, 9, 9, 9, 9, 9, 9, 9, 9, 9], [(0.2, 21), (0.2, 21), (0.2, 21)], [(0.16, 21, 0.999, five, 0.4)]);
        Assert.Equal(Verdict.Pass, Findings.Evaluate(C, inputs).Single(f => f.Id == "d").Verdict);
        Assert.Equal(Verdict.Fail, Findings.Evaluate(strict, inputs).Single(f => f.Id == "d").Verdict);
        Assert.Throws<InvalidInputException>(() => (C with { VectorsMinToxic = 11 }).Validate("x.json"));
        Assert.Throws<System.Text.Json.JsonException>(() => StudyConfig.Parse("""{"findings": {"probe_min_acuracy": 0.9}}"""));
    }
}

using System.Text.Json.Nodes;
using DetoxSharp.Study;

namespace DetoxSharp.Tests.Study;

public class AggregateTests
{
    [Fact]
    public void MeanAndSampleStdOnHandMadeValues()
    {
        // 2, 4, 4, 4, 5, 5, 7, 9: mean 5, sum of squares 32, sample variance 32/7.
        var m = Aggregate.Of(new double[] { 2, 4, 4, 4, 5, 5, 7, 9 });
        Assert.Equal(5, m.Mean, 12);
        Assert.Equal(Math.Sqrt(32.0 / 7), m.Std!.Value, 12);
        Assert.Equal(8, m.N);
        var two = Aggregate.Of(new double[] { 0.2, 0.4 });
        Assert.Equal(0.3, two.Mean, 12);
        Assert.Equal(Math.Sqrt(0.02), two.Std!.Value, 12);   // ((0.1)²+(0.1)²)/1
        Assert.Equal("0.300 ± 0.141 (n=2)", two.Format());
    }

    [Fact]
    public void MissingValuesLowerNAndSingleRunHasNoStd()
    {
        var m = Aggregate.Of(new double?[] { 1.0, null, double.NaN, 3.0 });
        Assert.Equal(2, m.N);
        Assert.Equal(2, m.Mean, 12);
        Assert.Equal(Math.Sqrt(2), m.Std!.Value, 12);
        var one = Aggregate.Of(new double?[] { 0.25, null });
        Assert.Null(one.Std);
        Assert.Equal("0.250 (n=1)", one.Format());
        Assert.Equal(0, Aggregate.Of(Array.Empty<double>()).N);
        Assert.Equal("–", Aggregate.Of(Array.Empty<double>()).Format());
    }

    [Fact]
    public void GroupedAggregationKeepsGroupOrder()
    {
        var rows = new[] { ("dpo", 1.0), ("adpo", 10.0), ("dpo", 3.0), ("adpo", 14.0) };
        var g = Aggregate.By(rows, r => r.Item1, r => r.Item2);
        Assert.Equal("dpo", g[0].Key);
        Assert.Equal(2, g[0].Value.Mean, 12);
        Assert.Equal(12, g[1].Value.Mean, 12);
        Assert.Equal(Math.Sqrt(8), g[1].Value.Std!.Value, 12);
    }

    [Fact]
    public void SweepExpandsListsIntoAGridHeadlineFirst()
    {
        var pts = Sweep.Expand((JsonObject)JsonNode.Parse("""{"beta":[0.1,0.5],"optimizer":"rmsprop","learning_rate":[1e-6,1e-5,1e-4]}""")!);
        Assert.Equal(6, pts.Count);
        Assert.Equal("beta0.1_lr1e-06", pts[0].Label);
        Assert.Equal(0.1, pts[0].Settings["beta"]!.GetValue<double>());
        Assert.Equal(1e-6, pts[0].Settings["learning_rate"]!.GetValue<double>());
        Assert.Equal("rmsprop", pts[5].Settings["optimizer"]!.GetValue<string>());
        Assert.Equal("beta0.5_lr0.0001", pts[5].Label);
        Assert.Equal(6, pts.Select(p => p.Label).Distinct().Count());
        Assert.Single(Sweep.Expand((JsonObject)JsonNode.Parse("""{"beta":0.1}""")!));
        Assert.Equal("default", Sweep.Expand(new JsonObject())[0].Label);
        Assert.Throws<InvalidInputException>(() => Sweep.Expand((JsonObject)JsonNode.Parse("""{"beta":[]}""")!));
    }
}

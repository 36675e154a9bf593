using DetoxSharp.Data;
using DetoxSharp.Text;
using DetoxSharp.Training;
using Xunit;

namespace DetoxSharp.Tests.Preference;

/// <summary>The on-disk log-prob cache that the preference trainer fills as training reaches batches.</summary>
public class LogpCacheTests
{
    static (LogpCache Cache, List<TokenizedExample> All) Make(string dir, DetoxSharp.Models.ICausalLM model, int n)
    {
        var tok = Gpt2Tokenizer.Default();
        var all = Tiny.Pairs(n).Select(e => PreferenceData.Tokenize(e, tok, new TruncationOptions())).ToList();
        return (new LogpCache(dir, "ref", "test-model", "test-data", (model, all, tok.EosTokenId, false, true), null, 2), all);
    }

    static long[] Bits(double[] a) => a.Select(BitConverter.DoubleToInt64Bits).ToArray();

    [Fact]
    public void TwoInstancesOfOneKeyScoreDifferentBatchesAndTheFileEndsWithBoth()
    {
        var dir = Tiny.TempDir("logp-cache-merge");
        using var model = Tiny.Model();
        var (a, _) = Make(dir, model, 8);
        var (b, _) = Make(dir, model, 8);
        a.Ensure([0]);    // batch {0, 1}
        b.Ensure([5, 6]); // batches {4, 5} and {6, 7}
        Assert.Equal(1, a.BatchesScored);
        Assert.Equal(2, b.BatchesScored);
        Assert.True(double.IsNaN(a.A[2]) && double.IsNaN(b.A[0]));
        a.Save();
        b.Save(); // merged with a's file, not overwriting it
        var (c, _) = Make(dir, model, 8);
        Assert.Equal(1, c.MissingBatches); // only {2, 3} left
        foreach (int i in new[] { 0, 1 }) Assert.Equal(BitConverter.DoubleToInt64Bits(a.A[i]), BitConverter.DoubleToInt64Bits(c.A[i]));
        foreach (int i in new[] { 4, 5, 6, 7 }) Assert.Equal(BitConverter.DoubleToInt64Bits(b.B[i]), BitConverter.DoubleToInt64Bits(c.B[i]));
        // the rest scored by a fresh full pass gives the same bits as the pieces did
        var full = Tiny.TempDir("logp-cache-full");
        var (d, _) = Make(full, model, 8);
        d.Ensure(Enumerable.Range(0, 8));
        c.Ensure(Enumerable.Range(0, 8));
        Assert.Equal(1, c.BatchesScored);
        Assert.Equal(Bits(d.A), Bits(c.A));
        Assert.Equal(Bits(d.B), Bits(c.B));
        Assert.DoesNotContain(c.A, double.IsNaN);
    }

    [Fact]
    public void ACancelledPassScoresNothingMoreAndKeepsWhatItHad()
    {
        var dir = Tiny.TempDir("logp-cache-cancel");
        using var model = Tiny.Model();
        var (a, _) = Make(dir, model, 6);
        a.Ensure([0]);
        using var cts = new CancellationTokenSource();
        cts.Cancel();
        Assert.Throws<OperationCanceledException>(() => a.Ensure(Enumerable.Range(0, 6), cts.Token));
        Assert.Equal(1, a.BatchesScored);
        a.Save();
        var (b, _) = Make(dir, model, 6);
        Assert.Equal(2, b.MissingBatches);
        Assert.False(double.IsNaN(b.A[1]));
        // another data set's file (other length) is not read
        var (other, _) = Make(dir, model, 6);
        File.WriteAllBytes(other.Path, [1, 0, 0, 0]);
        Assert.Equal(3, Make(dir, model, 6).Cache.MissingBatches);
    }
}

using DetoxSharp.Cli;

namespace DetoxSharp.Tests.Core;

/// <summary>The one progress style of the CLI (<see cref="CliProgress"/>): plain lines when stderr is not a terminal.</summary>
public class CliProgressTests
{
    static string[] Lines(StringWriter w) => w.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);

    [Fact]
    public void PlainLinesShowTheFirstEveryFivePercentAndTheLast()
    {
        var w = new StringWriter();
        using (var p = CliProgress.Start(w, "demo", "items"))
            for (int i = 1; i <= 100; i++) p.Update(i, 100, i == 100 ? "done" : null);
        var lines = Lines(w);
        Assert.Matches(@"^\[1/100 1% \d\d:\d\d eta (\d\d:\d\d|\?)\] demo: [\d.]+ items/s$", lines[0]);
        Assert.Matches(@"^\[100/100 100% \d\d:\d\d\] demo: [\d.]+ items/s, done$", lines[^1]);
        // a fast loop (well under 10 s): one line per ≥ 5 % of the work, so about 100 / 5 of them, never one per item
        Assert.InRange(lines.Length, 18, 22);
        var done = lines.Select(l => int.Parse(l[1..l.IndexOf('/')])).ToList();
        Assert.Equal(done.Order(), done);
        Assert.All(done.Zip(done.Skip(1)), d => Assert.True(d.Second - d.First >= 5 || d.Second == 100, $"{d.First} → {d.Second}"));
    }

    [Fact]
    public void LineFormatAndEtaAndClock()
    {
        using var p = CliProgress.Start(new StringWriter(), "train", "steps");
        Assert.Equal("[30/100 30% 00:30 eta 01:10] train: 1.00 steps/s, loss 0.5", p.Line(30, 100, TimeSpan.FromSeconds(30), TimeSpan.FromSeconds(70), "1.00 steps/s", "loss 0.5"));
        Assert.Equal("[3/4 75% 00:01 eta ?] train: 3.00 steps/s", p.Line(3, 4, TimeSpan.FromSeconds(1), null, "3.00 steps/s", null));
        Assert.Equal("2:03:04", CliProgress.Clock(new TimeSpan(2, 3, 4)));
        Assert.Equal("27:00:00", CliProgress.Clock(TimeSpan.FromHours(27)));
        Assert.Equal("59:59", CliProgress.Clock(new TimeSpan(0, 59, 59)));
    }

    [Fact]
    public void EtaComesFromTheRateSinceTheStart()
    {
        var w = new StringWriter();
        using (var p = CliProgress.Start(w, "slow", "items"))
        {
            Thread.Sleep(400);
            p.Update(1, 5); // ~0.4 s per item → 4 items left ≈ 1.6 s
        }
        var line = Lines(w)[0];
        var eta = line[(line.IndexOf("eta ") + 4)..line.IndexOf(']')];
        Assert.Matches(@"^00:0[1-4]$", eta);
    }

    [Fact]
    public void ANewPhaseIsAlwaysShownWithItsName()
    {
        var w = new StringWriter();
        using (var p = CliProgress.Start(w, "eval", "texts"))
        {
            p.Update(1, 100, phase: "base: generate");
            p.Update(2, 100, phase: "base: generate"); // 1 % later, same phase: not shown
            p.Update(1, 10, phase: "base: score");
        }
        var lines = Lines(w);
        Assert.Equal(2, lines.Length);
        Assert.EndsWith("texts/s, base: generate", lines[0]);
        Assert.StartsWith("[1/10 10% ", lines[1]);
        Assert.EndsWith("texts/s, base: score", lines[1]);
    }

    [Fact]
    public void ATerminalWriterPrintsOtherLinesAboveTheBarVerbatim()
    {
        var inner = new StringWriter();
        var t = new TerminalErrorWriter(inner);
        t.WriteLine("before [not markup]");
        t.Active = true;
        t.Write("detox: warning: ");
        t.WriteLine("[eval step 2] loss 0.5");
        t.Active = false;
        t.Flush();
        var text = inner.ToString();
        Assert.Contains("before [not markup]", text);
        Assert.Contains("detox: warning: [eval step 2] loss 0.5", text);
    }

    [Fact]
    public void TheBarPathRunsAndClosesAndKeepsOtherLines()
    {
        var inner = new StringWriter();
        var t = new TerminalErrorWriter(inner);
        var sw = System.Diagnostics.Stopwatch.StartNew();
        using (var p = CliProgress.Start(t, "bar", "items"))
        {
            Assert.True(t.Active);
            for (int i = 1; i <= 10; i++) p.Update(i, 10, "detail [with brackets]");
            t.WriteLine("a line meanwhile");
        }
        Assert.False(t.Active);
        Assert.Contains("a line meanwhile", inner.ToString());
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(4), $"closing the bar took {sw.Elapsed}");
        t.WriteLine("after");
        Assert.EndsWith("after" + Environment.NewLine, inner.ToString());
    }

    [Fact]
    public void UpdatesThatCarryAResultCanAlwaysBeShown()
    {
        var w = new StringWriter();
        using (var p = CliProgress.Start(w, "attack keys", "points"))
        {
            p.Update(1, 100, "s = 1 → toxicity 0.1000");
            p.Update(2, 100, "s = 2 → toxicity 0.2000");               // 1 % later: skipped
            p.Update(3, 100, "s = 5 → toxicity 0.3000", always: true); // carries a result: shown
        }
        var lines = Lines(w);
        Assert.Equal(2, lines.Length);
        Assert.EndsWith("s = 5 → toxicity 0.3000", lines[1]);
    }
}

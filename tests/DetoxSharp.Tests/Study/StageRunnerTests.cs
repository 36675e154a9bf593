using System.Text.Json.Nodes;
using DetoxSharp.Study;

namespace DetoxSharp.Tests.Study;

public class StageRunnerTests
{
    sealed class Counter
    {
        public readonly Dictionary<string, int> Runs = new();
        public string? FailAt;
        public Action<StageContext> Stage(Func<StageContext, string> content) => c =>
        {
            Runs[c.Name] = Runs.GetValueOrDefault(c.Name) + 1;
            File.WriteAllText(Path.Combine(c.OutputDir, "partial.txt"), "half");
            if (FailAt == c.Name) throw new IOException("simulated crash in " + c.Name);
            File.WriteAllText(Path.Combine(c.OutputDir, "out.txt"), content(c));
        };
    }

    // a → b → c; d independent; e reads b and d.
    static List<StageDefinition> Graph(Counter k, JsonObject bSettings, Func<StageContext, string>? bOut = null) =>
    [
        new("a", new JsonObject { ["x"] = 1 }, [], k.Stage(c => "A")),
        new("b", bSettings, ["a"], k.Stage(bOut ?? (c => "B" + c.Settings["v"]!.ToJsonString() + File.ReadAllText(Path.Combine(c.Input("a"), "out.txt"))))),
        new("grp/c", new JsonObject(), ["b"], k.Stage(c => "C" + File.ReadAllText(Path.Combine(c.Input("b"), "out.txt")))),
        new("grp/d", new JsonObject(), [], k.Stage(c => "D")),
        new("e", new JsonObject(), ["b", "grp/d"], k.Stage(c => "E")),
    ];

    [Fact]
    public void RerunSkipsEverythingAndChangedSettingInvalidatesExactlyDownstream()
    {
        var dir = FakeStudy.TempDir("runner");
        var k = new Counter();
        var s1 = new StageRunner(dir).Run(Graph(k, new JsonObject { ["v"] = 1 }));
        Assert.True(s1.Completed);
        Assert.Equal(["a", "b", "grp/c", "grp/d", "e"], s1.Ran);
        Assert.Equal("CB1A", File.ReadAllText(Path.Combine(StageRunner.StageDir(dir, "grp/c"), "out.txt")));

        var s2 = new StageRunner(dir).Run(Graph(k, new JsonObject { ["v"] = 1 }));
        Assert.Empty(s2.Ran);
        Assert.Equal(5, s2.Skipped.Count);

        // Key order in settings must not matter; a changed value must.
        var s3 = new StageRunner(dir).Run(Graph(k, new JsonObject { ["v"] = 2 }));
        Assert.Equal(["b", "grp/c", "e"], s3.Ran);
        Assert.Equal(["a", "grp/d"], s3.Skipped);
        Assert.Equal("CB2A", File.ReadAllText(Path.Combine(StageRunner.StageDir(dir, "grp/c"), "out.txt")));
        Assert.Equal(1, k.Runs["a"]);
        Assert.Equal(2, k.Runs["grp/c"]);

        var m = Manifest.Load(dir);
        Assert.Equal(StageStatus.Done, m.Stages["e"].Status);
        Assert.Equal(Hashing.OfDirectory(StageRunner.StageDir(dir, "b")), m.Stages["b"].OutputHash);
        Assert.Equal(m.Stages["b"].OutputHash, m.Stages["grp/c"].InputHashes["b"]);
    }

    [Fact]
    public void SettingChangeWithIdenticalOutputDoesNotRerunDownstream()
    {
        var dir = FakeStudy.TempDir("same-output");
        var k = new Counter();
        new StageRunner(dir).Run(Graph(k, new JsonObject { ["v"] = 1 }, c => "same"));
        var s = new StageRunner(dir).Run(Graph(k, new JsonObject { ["v"] = 2 }, c => "same"));
        Assert.Equal(["b"], s.Ran);
    }

    [Fact]
    public void InterruptedRunContinuesWithoutRedoingFinishedStages()
    {
        var dir = FakeStudy.TempDir("resume");
        var k = new Counter { FailAt = "grp/c" };
        Assert.Throws<IOException>(() => new StageRunner(dir).Run(Graph(k, new JsonObject { ["v"] = 1 })));
        var m = Manifest.Load(dir);
        Assert.Equal(StageStatus.Done, m.Stages["b"].Status);
        Assert.Equal(StageStatus.Failed, m.Stages["grp/c"].Status);
        Assert.False(Directory.Exists(StageRunner.StageDir(dir, "grp/c")));        // only the .tmp exists
        Assert.True(Directory.Exists(StageRunner.StageDir(dir, "grp/c") + ".tmp"));

        k.FailAt = null;
        var s = new StageRunner(dir).Run(Graph(k, new JsonObject { ["v"] = 1 }));
        Assert.Equal(["grp/c", "grp/d", "e"], s.Ran);
        Assert.Equal(["a", "b"], s.Skipped);
        Assert.Equal(1, k.Runs["a"]);
        Assert.Equal(1, k.Runs["b"]);
        Assert.False(Directory.Exists(StageRunner.StageDir(dir, "grp/c") + ".tmp"));
        Assert.Equal("CB1A", File.ReadAllText(Path.Combine(StageRunner.StageDir(dir, "grp/c"), "out.txt")));
    }

    [Fact]
    public void DeletedOutputDirectoryIsRecomputed()
    {
        var dir = FakeStudy.TempDir("deleted");
        var k = new Counter();
        new StageRunner(dir).Run(Graph(k, new JsonObject { ["v"] = 1 }));
        Directory.Delete(StageRunner.StageDir(dir, "grp/d"), true);
        var s = new StageRunner(dir).Run(Graph(k, new JsonObject { ["v"] = 1 }));
        Assert.Equal(["grp/d"], s.Ran);   // same output → e keeps its inputs
    }

    [Fact]
    public void UnavailableStageStopsTheRunAndNamesIt()
    {
        var dir = FakeStudy.TempDir("unavailable");
        var k = new Counter();
        var g = Graph(k, new JsonObject { ["v"] = 1 });
        g[2] = g[2] with { Run = null };
        var s = new StageRunner(dir).Run(g);
        Assert.False(s.Completed);
        Assert.Equal("grp/c", s.StoppedAt);
        Assert.Equal(["a", "b"], s.Ran);
    }

    [Fact]
    public void InvalidGraphsAreRejected()
    {
        var dir = FakeStudy.TempDir("invalid");
        Assert.Throws<ArgumentException>(() => new StageRunner(dir).Run([new("b", new JsonObject(), ["a"], _ => { })]));
        Assert.Throws<ArgumentException>(() => new StageRunner(dir).Run([new("a", new JsonObject(), [], _ => { }), new("a/b", new JsonObject(), [], _ => { })]));
        Assert.Throws<ArgumentException>(() => new StageRunner(dir).Run([new("../x", new JsonObject(), [], _ => { })]));
    }

    [Fact]
    public void ProgressEstimatesComeFromTheDurationTable()
    {
        var dir = FakeStudy.TempDir("progress");
        var d = new StageDurations();
        var events = new List<StageEvent>();
        var stages = new List<StageDefinition> { new("probe", new JsonObject(), [], _ => { }), new("report", new JsonObject(), ["probe"], _ => { }) };
        new StageRunner(dir, d).Run(stages, new SyncProgress(events.Add));
        // Before anything ran, the estimate is the table's typical probe (20 s) + report (5 s).
        Assert.Equal(25, events.First(e => e.Kind == StageEventKind.Started).EstimatedRemaining.TotalSeconds, 6);
        // Afterwards the table holds the measured (near-zero) durations, learned again from the manifest on a new runner.
        var d2 = new StageDurations();
        d2.Learn(Manifest.Load(dir));
        Assert.True(d2.Estimate(stages[0]) < 5);
    }

    sealed class SyncProgress(Action<StageEvent> a) : IProgress<StageEvent> { public void Report(StageEvent v) => a(v); }

    [Fact]
    public void ParallelStagesRunTogether_AndProduceWhatASequentialRunProduces()
    {
        // b and c both read a; each waits (bounded) until the other has started, which only a parallel run allows
        using var bothStarted = new CountdownEvent(2);
        var overlapped = new System.Collections.Concurrent.ConcurrentDictionary<string, bool>();
        List<StageDefinition> Graph(bool wait) =>
        [
            new("a", new JsonObject(), [], c => File.WriteAllText(Path.Combine(c.OutputDir, "out.txt"), "A")),
            .. new[] { "b", "c" }.Select(n => new StageDefinition(n, new JsonObject(), ["a"], c =>
            {
                if (wait) { bothStarted.Signal(); overlapped[n] = bothStarted.Wait(TimeSpan.FromSeconds(20)); }
                File.WriteAllText(Path.Combine(c.OutputDir, "out.txt"), n + File.ReadAllText(Path.Combine(c.Input("a"), "out.txt")));
            })),
            new("d", new JsonObject(), ["b", "c"], c => File.WriteAllText(Path.Combine(c.OutputDir, "out.txt"),
                File.ReadAllText(Path.Combine(c.Input("b"), "out.txt")) + File.ReadAllText(Path.Combine(c.Input("c"), "out.txt")))),
        ];
        var par = FakeStudy.TempDir("runner-par");
        var seq = FakeStudy.TempDir("runner-seq");
        var s1 = new StageRunner(par) { Parallelism = 2 }.Run(Graph(wait: true));
        Assert.True(s1.Completed);
        Assert.True(overlapped["b"] && overlapped["c"], "b and c did not run at the same time");
        Assert.True(new StageRunner(seq).Run(Graph(wait: false)).Completed);
        var m1 = Manifest.Load(par); var m2 = Manifest.Load(seq);
        foreach (var n in new[] { "a", "b", "c", "d" }) Assert.Equal(m2.Stages[n].OutputHash, m1.Stages[n].OutputHash);
        Assert.Equal("bAcA", File.ReadAllText(Path.Combine(StageRunner.StageDir(par, "d"), "out.txt")));
        // a parallel rerun skips everything
        var again = new StageRunner(par) { Parallelism = 2 }.Run(Graph(wait: false));
        Assert.Empty(again.Ran);
        Assert.Equal(4, again.Skipped.Count);
    }

    [Fact]
    public void AFailingParallelStageStopsTheRun_AndIsRecorded()
    {
        var dir = FakeStudy.TempDir("runner-par-fail");
        var stages = new List<StageDefinition>
        {
            new("a", new JsonObject(), [], c => File.WriteAllText(Path.Combine(c.OutputDir, "out.txt"), "A")),
            new("b", new JsonObject(), ["a"], c => throw new IOException("simulated crash in b")),
            new("c", new JsonObject(), ["a"], c => { c.Cancellation.WaitHandle.WaitOne(TimeSpan.FromSeconds(20)); c.Cancellation.ThrowIfCancellationRequested(); }),
            new("d", new JsonObject(), ["b", "c"], c => File.WriteAllText(Path.Combine(c.OutputDir, "out.txt"), "D")),
        };
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var ex = Assert.Throws<IOException>(() => new StageRunner(dir) { Parallelism = 2 }.Run(stages));
        Assert.Contains("simulated crash in b", ex.Message);
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(15), "the other running stage was not cancelled");
        var m = Manifest.Load(dir);
        Assert.Equal(StageStatus.Failed, m.Stages["b"].Status);
        Assert.False(m.Stages.ContainsKey("d"));
        Assert.False(Directory.Exists(StageRunner.StageDir(dir, "c")));
        Assert.Throws<InvalidSettingException>(() => new StageRunner(dir) { Parallelism = 0 }.Run(stages));
    }

    [Fact]
    public void CanonicalHashIgnoresKeyOrder()
    {
        Assert.Equal(Hashing.OfJson(JsonNode.Parse("""{"a":1,"b":{"y":2,"x":[1,2]}}""")), Hashing.OfJson(JsonNode.Parse("""{"b":{"x":[1,2],"y":2},"a":1}""")));
        Assert.NotEqual(Hashing.OfJson(JsonNode.Parse("""{"a":[1,2]}""")), Hashing.OfJson(JsonNode.Parse("""{"a":[2,1]}""")));
    }
}

public class StageProgressTests
{
    sealed class SyncProgress(Action<StageEvent> a) : IProgress<StageEvent> { public void Report(StageEvent v) => a(v); }

    [Fact]
    public void RunningStageEstimateFollowsItsOwnPace()
    {
        var dir = FakeStudy.TempDir("pace");
        var events = new List<StageEvent>();
        var stages = new List<StageDefinition>
        {
            new("pretrain", new JsonObject(), [], c => { Thread.Sleep(200); c.Report!(0.5, "half"); }),
        };
        new StageRunner(dir).Run(stages, new SyncProgress(events.Add));
        var p = events.Single(e => e.Kind == StageEventKind.Progress);
        // Half done after ~0.2 s → about 0.2 s left, not the table's 240 s × 0.5.
        Assert.InRange(p.EstimatedRemaining.TotalSeconds, 0.15, 2);
        Assert.Equal(0.5, p.Fraction);
        Assert.Equal("half", p.Note);
    }
}

public class StageThreadTests
{
    static StageDefinition S(string name, params string[] deps) => new(name, new System.Text.Json.Nodes.JsonObject(), deps, _ => { });

    [Fact]
    public void A_stage_every_other_pending_stage_waits_for_gets_every_core_and_others_their_share()
    {
        var stages = new[] { S("world"), S("pretrain", "world"), S("probe", "pretrain"), S("toxic", "pretrain"), S("pairs", "probe", "toxic"), S("report", "pairs", "probe") };
        var dep = StageRunner.Dependents(stages);
        Assert.Equal(["pairs", "probe", "report", "toxic"], dep["pretrain"].Order());
        Assert.Equal(["pairs", "report"], dep["probe"].Order());
        Assert.Empty(dep["report"]);

        string[] all = ["pretrain", "probe", "toxic", "pairs", "report"];
        Assert.Equal(4, StageRunner.ThreadsFor("pretrain", all, 0, dep["pretrain"], cores: 4, parallelism: 2));
        // probe and the toxic model can run side by side: each gets its share, even while the other has not started yet
        Assert.Equal(2, StageRunner.ThreadsFor("probe", ["probe", "toxic", "pairs", "report"], 0, dep["probe"], 4, 2));
        // the last stage with nothing else running gets every core; with another stage still running, its share
        Assert.Equal(4, StageRunner.ThreadsFor("pairs", ["pairs", "report"], 0, dep["pairs"], 4, 2));
        Assert.Equal(2, StageRunner.ThreadsFor("pairs", ["pairs", "report"], 1, dep["pairs"], 4, 2));
        Assert.Equal(1, StageRunner.ThreadsFor("probe", ["probe", "toxic"], 1, dep["probe"], 1, 2));
    }

    [Fact]
    public void The_runner_raises_threads_only_around_a_bottleneck_stage_and_lowers_them_before_others_start()
    {
        // every SetThreads call and every stage start/end, in order, with the thread it happened on
        var log = new System.Collections.Concurrent.ConcurrentQueue<(string What, int Thread)>();
        StageDefinition R(string name, params string[] deps) => new(name, new System.Text.Json.Nodes.JsonObject(), deps, c =>
        {
            log.Enqueue(("start " + c.Name, Environment.CurrentManagedThreadId));
            Thread.Sleep(30);
            log.Enqueue(("end " + c.Name, Environment.CurrentManagedThreadId));
        });
        var dir = Path.Combine(Path.GetTempPath(), "detox-threads-" + Guid.NewGuid().ToString("N"));
        try
        {
            new StageRunner(dir) { Parallelism = 2, Cores = 2, SetThreads = n => log.Enqueue(($"threads {n}", Environment.CurrentManagedThreadId)) }
                .Run([R("pretrain"), R("a", "pretrain"), R("b", "pretrain"), R("c", "a", "b")]);
            var l = log.ToList();
            int At(string what) => l.FindIndex(x => x.What == what);
            // pretrain and c are bottlenecks: all cores before, the share (1) again after, on their own thread,
            // and before any other stage starts
            foreach (var (stage, next) in new[] { ("pretrain", "start a"), ("c", "") })
            {
                int start = At("start " + stage), end = At("end " + stage);
                Assert.Equal(("threads 2", l[start].Thread), l[start - 1]);
                Assert.Equal(("threads 1", l[end].Thread), l[end + 1]);
                if (next.Length > 0) Assert.True(At(next) > end + 1);
            }
            Assert.Equal(4, l.Count(x => x.What.StartsWith("threads", StringComparison.Ordinal)));   // a and b set nothing
        }
        finally { try { Directory.Delete(dir, true); } catch { } }
    }
}

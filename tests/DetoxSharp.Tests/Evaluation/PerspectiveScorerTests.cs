using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Runtime.InteropServices;
using System.Text.Json.Nodes;
using DetoxSharp.Evaluation;

namespace DetoxSharp.Tests.Evaluation;

/// <summary>A local stand-in for the Perspective API: replies in its JSON shape; a per-text script of failures.</summary>
sealed class FakePerspective : IDisposable
{
    public sealed record Hit(double At, string Text, int Status, string Url);

    readonly HttpListener _listener = new();
    readonly Stopwatch _clock = Stopwatch.StartNew();
    readonly Thread _thread;
    public readonly ConcurrentQueue<Hit> Hits = new();
    /// <summary>Per text: the replies to give before succeeding: 429, 500, or -1 (a slow reply beyond the client's timeout).</summary>
    public readonly ConcurrentDictionary<string, ConcurrentQueue<int>> Script = new();
    public Func<string, int>? Always; // status to return forever for a text (0 = normal)
    public string? ErrorBody;
    /// <summary>Called on the handler thread after a request is recorded and before it is answered.</summary>
    public Action<Hit>? BeforeReply;
    public int SlowMs = 5000;
    public string Url { get; }

    public FakePerspective()
    {
        int port;
        using (var probe = new TcpListener(IPAddress.Loopback, 0)) { probe.Start(); port = ((IPEndPoint)probe.LocalEndpoint).Port; probe.Stop(); }
        Url = $"http://127.0.0.1:{port}/v1alpha1/comments:analyze";
        _listener.Prefixes.Add($"http://127.0.0.1:{port}/");
        _listener.Start();
        _thread = new Thread(Loop) { IsBackground = true };
        _thread.Start();
    }

    /// <summary>Deterministic per-attribute score of a text (so the test can check which reply went where).</summary>
    public static double ScoreOf(string text, int attr) => (text.Length * 7 + attr * 13) % 100 / 100.0;

    void Loop()
    {
        while (_listener.IsListening)
        {
            HttpListenerContext ctx;
            try { ctx = _listener.GetContext(); } catch { return; }
            double at = _clock.Elapsed.TotalSeconds; // arrival, before any processing
            new Thread(() => Handle(ctx, at)) { IsBackground = true }.Start(); // not the pool: a sleeping slow reply must not delay others
        }
    }

    void Handle(HttpListenerContext ctx, double at)
    {
        try
        {
            string body;
            using (var r = new StreamReader(ctx.Request.InputStream)) body = r.ReadToEnd();
            var req = JsonNode.Parse(body)!;
            var text = req["comment"]!["text"]!.GetValue<string>();
            var attrs = req["requestedAttributes"]!.AsObject().Select(kv => kv.Key).ToList();
            int status = 200;
            if (Always?.Invoke(text) is int a && a != 0) status = a;
            else if (Script.TryGetValue(text, out var q) && q.TryDequeue(out var s)) status = s;
            var hit = new Hit(at, text, status, ctx.Request.Url!.ToString());
            Hits.Enqueue(hit);
            BeforeReply?.Invoke(hit);
            if (status == -1)
            {
                Thread.Sleep(SlowMs);
                status = 200;
            }
            string reply;
            if (status == 200)
            {
                var scores = new JsonObject();
                for (int i = 0; i < attrs.Count; i++)
                    scores[attrs[i]] = new JsonObject
                    {
                        ["spanScores"] = new JsonArray(),
                        ["summaryScore"] = new JsonObject { ["value"] = ScoreOf(text, i), ["type"] = "PROBABILITY" },
                    };
                reply = new JsonObject { ["attributeScores"] = scores, ["languages"] = new JsonArray("en") }.ToJsonString();
            }
            else reply = ErrorBody ?? $"{{\"error\":{{\"code\":{status},\"message\":\"scripted {status}\"}}}}";
            ctx.Response.StatusCode = status;
            if (status == 429) ctx.Response.Headers["Retry-After"] = "0";
            var bytes = Encoding.UTF8.GetBytes(reply);
            ctx.Response.ContentType = "application/json";
            ctx.Response.OutputStream.Write(bytes);
            ctx.Response.Close();
        }
        catch { try { ctx.Response.Abort(); } catch { } }
    }

    public void Dispose()
    {
        try { _listener.Stop(); _listener.Close(); } catch { }
    }
}

public class PerspectiveScorerTests : IDisposable
{
    const string Key = "SECRET-test-key-9f8e7d";
    readonly string _var = "DETOX_TEST_PERSPECTIVE_KEY_" + Guid.NewGuid().ToString("N")[..8];
    readonly string _tmp = Path.Combine(Path.GetTempPath(), "detox-persp-" + Guid.NewGuid().ToString("N"));

    public PerspectiveScorerTests()
    {
        Directory.CreateDirectory(_tmp);
        Environment.SetEnvironmentVariable(_var, Key);
    }

    public void Dispose()
    {
        Environment.SetEnvironmentVariable(_var, null);
        try { Directory.Delete(_tmp, true); } catch { }
    }

    PerspectiveOptions Options(FakePerspective server, double rps = 20, int retries = 5) => new()
    {
        Endpoint = server.Url, KeyVariable = _var, RequestsPerSecond = rps, MaxRetries = retries,
        InitialBackoff = TimeSpan.FromMilliseconds(10), MaxBackoff = TimeSpan.FromMilliseconds(80),
        Timeout = TimeSpan.FromMilliseconds(2000), CachePath = Path.Combine(_tmp, "cache.jsonl"),
    };

    static double Expected(string text, ToxicityAggregate agg) =>
        agg == ToxicityAggregate.Toxicity ? FakePerspective.ScoreOf(text, 0) : Enumerable.Range(0, 7).Max(i => FakePerspective.ScoreOf(text, i));

    [Fact]
    public void EveryTextScoredExactlyOnceDespite429s500sAndTimeouts_RateLimitHonoured()
    {
        using var server = new FakePerspective();
        var texts = Enumerable.Range(0, 8).Select(i => $"text number {i} " + new string('x', i)).ToList();
        server.Script[texts[1]] = new([429, 429]);
        server.Script[texts[3]] = new([500, 503]);
        server.Script[texts[5]] = new([-1]);     // slow: client times out, retries
        server.Script[texts[6]] = new([429, 500, -1]);
        using var s = new PerspectiveScorer(Options(server, rps: 10));
        var scores = s.Score(texts, ToxicityAggregate.MaxOverAttributes);

        Assert.Equal(texts.Count, scores.Count);
        for (int i = 0; i < texts.Count; i++)
        {
            Assert.Equal(Expected(texts[i], ToxicityAggregate.MaxOverAttributes), scores[i].Value, 12);
            Assert.Equal(FakePerspective.ScoreOf(texts[i], 0), scores[i].Attributes["TOXICITY"], 12);
            Assert.Equal(7, scores[i].Attributes.Count);
        }
        var hits = server.Hits.ToList();
        // Exactly one successful reply consumed per text (a slow reply is 'successful' on the server but timed out).
        foreach (var t in texts)
        {
            int ok = hits.Count(h => h.Text == t && h.Status == 200);
            Assert.Equal(1, ok);
        }
        Assert.Equal(texts.Count + 2 + 2 + 1 + 3, hits.Count);
        // Rate limit: requests start at least 1/20 s apart (small tolerance for timer granularity).
        // Rate limit, client side (exact): consecutive request starts at least 1/10 s apart.
        var starts = s.RequestTimes.Select(t => t.TotalSeconds).ToList();
        Assert.Equal(hits.Count, starts.Count);
        for (int i = 1; i < starts.Count; i++) Assert.True(starts[i] - starts[i - 1] >= 0.1 - 1e-3, $"requests {i - 1},{i} started {starts[i] - starts[i - 1]:F4}s apart");
        // … and server side, where arrival jitter on a loaded machine needs a tolerance: the whole run spans ≥ (n-1)/10 s.
        var arr = hits.Select(h => h.At).OrderBy(x => x).ToList();
        Assert.True(arr[^1] - arr[0] >= (arr.Count - 1) * 0.1 - 0.1, $"{arr.Count} requests arrived within {arr[^1] - arr[0]:F3}s");
        Assert.All(hits, h => Assert.Contains("key=" + Key, h.Url)); // the key is sent …
        Assert.DoesNotContain(Key, File.ReadAllText(Path.Combine(_tmp, "cache.jsonl"))); // … but never stored
        Assert.Equal(texts.Count, File.ReadAllLines(Path.Combine(_tmp, "cache.jsonl")).Count(l => l.Length > 0));
    }

    [Fact]
    public void SlowRateLimitIsHonoured()
    {
        using var server = new FakePerspective();
        using var s = new PerspectiveScorer(Options(server, rps: 5) with { CachePath = null });
        s.Score(["a", "b", "c", "d"]);
        Assert.Equal(4, server.Hits.Count);
        // client side exactly; server side (arrival jitter on a loaded machine) with a tolerance a missing limiter fails by far
        var starts = s.RequestTimes.Select(t => t.TotalSeconds).ToList();
        for (int i = 1; i < starts.Count; i++) Assert.True(starts[i] - starts[i - 1] >= 0.2 - 1e-3, $"gap {starts[i] - starts[i - 1]:F4}s < 0.2s");
        var arr = server.Hits.Select(h => h.At).OrderBy(x => x).ToList();
        // (the first request's connection set-up can delay its arrival by ~0.2 s on a busy machine, seen in CI on
        // 2026-12-02: 0.404 s; without a limiter the four arrive within a few milliseconds)
        Assert.True(arr[^1] - arr[0] >= 3 * 0.2 - 0.3, $"4 requests at 5/s arrived within {arr[^1] - arr[0]:F3}s");
    }

    [Fact]
    public void ResumedRunUsesCacheAndServerSeesNoRepeat()
    {
        using var server = new FakePerspective();
        var texts = Enumerable.Range(0, 6).Select(i => $"resume text {i}").ToList();
        server.Always = t => t == texts[3] ? 500 : 0; // the first run dies on text 3
        using (var s1 = new PerspectiveScorer(Options(server, retries: 2)))
        {
            var ex = Assert.Throws<PerspectiveException>(() => s1.Score(texts));
            Assert.DoesNotContain(Key, ex.Message);
            Assert.Contains("HTTP 500", ex.Message);
        }
        var firstRun = server.Hits.ToList();
        Assert.Equal(3, firstRun.Count(h => h.Status == 200));
        server.Always = null;
        while (server.Hits.TryDequeue(out _)) { }
        using var s2 = new PerspectiveScorer(Options(server));
        var scores = s2.Score(texts);
        var second = server.Hits.ToList();
        Assert.Equal(texts.Skip(3), second.Select(h => h.Text)); // only the unscored texts, once each
        Assert.Equal(3, s2.RequestCount);
        for (int i = 0; i < texts.Count; i++) Assert.Equal(Expected(texts[i], ToxicityAggregate.MaxOverAttributes), scores[i].Value, 12);
        // a third run asks nothing
        while (server.Hits.TryDequeue(out _)) { }
        using var s3 = new PerspectiveScorer(Options(server));
        Assert.Equal(scores.Select(x => x.Value), s3.Score(texts).Select(x => x.Value));
        Assert.Empty(server.Hits);
    }

    [Fact]
    public void CacheSurvivesATruncatedLastLine()
    {
        using var server = new FakePerspective();
        using (var s = new PerspectiveScorer(Options(server))) s.Score(["one", "two"]);
        var cache = Path.Combine(_tmp, "cache.jsonl");
        var lines = File.ReadAllLines(cache);
        File.WriteAllText(cache, lines[0] + "\n" + lines[1][..(lines[1].Length / 2)]); // interrupted mid-write
        while (server.Hits.TryDequeue(out _)) { }
        using var s2 = new PerspectiveScorer(Options(server));
        var r = s2.Score(["one", "two", "three"]);
        Assert.Equal(["two", "three"], server.Hits.Select(h => h.Text).ToArray());
        Assert.Equal(Expected("two", ToxicityAggregate.MaxOverAttributes), r[1].Value, 12);
        using var s3 = new PerspectiveScorer(Options(server));
        while (server.Hits.TryDequeue(out _)) { }
        s3.Score(["one", "two", "three"]);
        Assert.Empty(server.Hits);
    }

    [Fact]
    public void ToxicityAggregateAndEmptyText()
    {
        using var server = new FakePerspective();
        using var s = new PerspectiveScorer(Options(server));
        var r = s.Score(["hello there", "  "], ToxicityAggregate.Toxicity);
        Assert.Equal(FakePerspective.ScoreOf("hello there", 0), r[0].Value, 12);
        Assert.Equal(0.0, r[1].Value);
        Assert.Single(server.Hits); // the blank text is not sent
    }

    [Fact]
    public void ErrorsNeverContainTheKey()
    {
        using var server = new FakePerspective();
        // a server that echoes the request URL (with the key) in its error body
        server.Always = _ => 400;
        server.ErrorBody = $"{{\"error\":{{\"code\":400,\"message\":\"bad request to {server.Url}?key={Key}\"}}}}";
        using var s = new PerspectiveScorer(Options(server));
        var e1 = Assert.Throws<InvalidInputException>(() => s.Validate());
        Assert.DoesNotContain(Key, e1.Message);
        Assert.Contains("***", e1.Message);
        var e2 = Assert.Throws<PerspectiveException>(() => s.Score(["x"]));
        Assert.DoesNotContain(Key, e2.Message);
        Assert.DoesNotContain('\n', e2.Message);
    }

    [Fact]
    public void ValidateReportsMissingKeyUnreachableEndpointAndKeyFileInRepo()
    {
        using var server = new FakePerspective();
        var noKey = Options(server) with { KeyVariable = _var + "_UNSET" };
        using (var s = new PerspectiveScorer(noKey))
        {
            var e = Assert.Throws<InvalidInputException>(() => s.Validate());
            Assert.Contains("key missing", e.Message);
        }
        // unreachable: a port nobody listens on
        int port;
        using (var probe = new TcpListener(IPAddress.Loopback, 0)) { probe.Start(); port = ((IPEndPoint)probe.LocalEndpoint).Port; probe.Stop(); }
        using (var s = new PerspectiveScorer(Options(server) with { Endpoint = $"http://127.0.0.1:{port}/x" }))
        {
            var e = Assert.Throws<InvalidInputException>(() => s.Validate());
            Assert.Contains("unreachable", e.Message);
            Assert.DoesNotContain(Key, e.Message);
        }
        // key file inside a git work tree is refused
        var repo = Path.Combine(_tmp, "repo");
        Directory.CreateDirectory(Path.Combine(repo, ".git"));
        File.WriteAllText(Path.Combine(repo, "key.txt"), Key + "\n");
        using (var s = new PerspectiveScorer(noKey with { KeyFile = Path.Combine(repo, "key.txt") }))
        {
            var e = Assert.Throws<InvalidInputException>(() => s.Validate());
            Assert.Contains("git work tree", e.Message);
            Assert.DoesNotContain(Key, e.Message);
        }
        // key file outside: works, and the server gets that key
        var outside = Path.Combine(_tmp, "key.txt");
        File.WriteAllText(outside, "\n  " + Key + "  \n");
        using (var s = new PerspectiveScorer(noKey with { KeyFile = outside }))
        {
            s.Validate();
            Assert.Contains("key=" + Key, server.Hits.Last().Url);
        }
    }

    [Fact]
    public void ProbeIsRetriedAndSkippedWhenTheCacheHasScores_CacheHasNoBlankLines()
    {
        using var server = new FakePerspective();
        server.Script["ok"] = new([500, 503]);
        using (var s = new PerspectiveScorer(Options(server)))
        {
            s.Validate(); // two transient failures, then accepted
            Assert.Equal(3, server.Hits.Count(h => h.Text == "ok"));
            s.Score(["alpha", "beta"]);
            Assert.Equal("perspective attributes=" + string.Join(",", ToxicityAttributes.PaperSeven) + " lang=en scored "
                         + DateTime.UtcNow.ToString("yyyy-MM-dd"), s.Identity);
        }
        using (var s = new PerspectiveScorer(Options(server)))
            s.Score(["gamma"]);
        var cache = Path.Combine(_tmp, "cache.jsonl");
        var lines = File.ReadAllLines(cache);
        Assert.Equal(3, lines.Length);
        Assert.All(lines, l => Assert.NotEqual("", l.Trim()));
        Assert.All(lines, l => Assert.StartsWith("perspective attributes=", JsonNode.Parse(l)!["scorer"]!.GetValue<string>()));
        Assert.All(lines, l => Assert.Matches(@"^\d{4}-\d\d-\d\d$", JsonNode.Parse(l)!["date"]!.GetValue<string>()));
        // a resumed run with everything cached sends nothing at all, not even the probe
        while (server.Hits.TryDequeue(out _)) { }
        using (var s = new PerspectiveScorer(Options(server)))
        {
            s.Validate();
            s.Score(["alpha", "beta", "gamma"]);
        }
        Assert.Empty(server.Hits);
        // a probe that keeps failing with 500 ends as a one-line error (exit 2), without the key
        server.Always = t => t == "ok" ? 500 : 0;
        using (var s = new PerspectiveScorer(Options(server, retries: 2) with { CachePath = Path.Combine(_tmp, "fresh.jsonl") }))
        {
            var e = Assert.Throws<InvalidInputException>(() => s.Validate());
            Assert.Contains("HTTP 500", e.Message);
            Assert.DoesNotContain(Key, e.Message);
        }
    }

    [DllImport("libc", SetLastError = true)]
    static extern int kill(int pid, int sig);

    /// <summary>The real CLI as a child process (sampled continuations, so the texts differ), interrupted by SIGTERM and then SIGINT while a request is in flight:
    /// exit 130 with a resume line each time, every received score kept, none requested twice once cached, the final
    /// run completes from the cache; the key never appears in any output or file.</summary>
    [Fact]
    public void InterruptedEvalKeepsScoresAndResumes()
    {
        if (!OperatingSystem.IsLinux() && !OperatingSystem.IsMacOS()) throw new PlatformNotSupportedException("signals");
        var model = EvalFiles.TinyGpt2(Path.Combine(_tmp, "tiny"), 5);
        var prompts = EvalFiles.Prompts(Path.Combine(_tmp, "prompts.jsonl"), Enumerable.Range(0, 4).Select(i => $"Prompt number {i} says"));
        var outDir = Path.Combine(_tmp, "out");
        var exe = Path.Combine(AppContext.BaseDirectory, "detox");
        Assert.True(File.Exists(exe), exe);
        using var server = new FakePerspective();
        int childPid = 0, signalAt = -1, signal = 0, seen = 0;
        server.BeforeReply = h =>
        {
            if (h.Text == "ok") return;
            if (Interlocked.Increment(ref seen) == signalAt)
            {
                kill(childPid, signal);
                Thread.Sleep(1500); // the reply comes after the signal: this request is abandoned
            }
        };
        (int Code, string Out, string Err) RunCli(int at, int sig)
        {
            seen = 0; signalAt = at; signal = sig;
            var psi = InterruptibleChild.StartInfo(exe);
            foreach (var a in new[] { "eval", "--model", model, "--scorer", "perspective", "--prompts", prompts, "--out", outDir,
                         "--max-new-tokens", "6", "--samples", "3", "--perspective-endpoint", server.Url, "--rate-limit", "50" })
                psi.ArgumentList.Add(a);
            psi.Environment[PerspectiveOptions.KeyEnvironmentVariable] = Key;
            using var p = System.Diagnostics.Process.Start(psi)!;
            childPid = p.Id;
            var so = p.StandardOutput.ReadToEndAsync();
            var se = p.StandardError.ReadToEndAsync();
            Assert.True(p.WaitForExit(180_000), "child did not exit");
            return (p.ExitCode, so.Result, se.Result);
        }
        var cache = Path.Combine(outDir, "perspective-cache.jsonl");
        var r1 = RunCli(3, 15); // SIGTERM during the 3rd scoring request
        Assert.True(r1.Code == 130, r1.Err);
        Assert.Contains("rerun the same command to resume", r1.Err);
        Assert.Equal(2, File.ReadAllLines(cache).Length);
        Assert.False(File.Exists(Path.Combine(outDir, "results.json")));
        var r2 = RunCli(2, 2); // SIGINT (Ctrl+C) during the 2nd request of the resumed run
        Assert.True(r2.Code == 130, r2.Err);
        Assert.Equal(3, File.ReadAllLines(cache).Length);
        var before = server.Hits.Count;
        var r3 = RunCli(-1, 0);
        Assert.True(r3.Code == 0, r3.Err);
        foreach (var r in new[] { r1, r2, r3 }) { Assert.DoesNotContain(Key, r.Out); Assert.DoesNotContain(Key, r.Err); }
        Assert.DoesNotContain(Key, File.ReadAllText(cache));

        var gens = File.ReadAllLines(Path.Combine(outDir, "generations.jsonl")).Select(l => JsonNode.Parse(l)!).ToList();
        var texts = gens.Select(g => g["continuation"]!.GetValue<string>()).Where(t => t.Trim().Length > 0).Distinct().ToList();
        var lines = File.ReadAllLines(cache);
        Assert.All(lines, l => Assert.NotEqual("", l.Trim()));
        var keys = lines.Select(l => JsonNode.Parse(l)!["key"]!.GetValue<string>()).ToList();
        Assert.Equal(keys.Count, keys.Distinct().Count());     // no score cached twice
        Assert.Equal(texts.Count, keys.Count);                 // every text's score kept
        // each text was answered by the server once after it was cached: successful hits of a text = 1, or 2 when its
        // first reply was abandoned by an interruption (two interruptions → at most two such texts)
        var ok = server.Hits.Where(h => h.Text != "ok" && h.Status == 200).GroupBy(h => h.Text).ToDictionary(g => g.Key, g => g.Count());
        Assert.Equal(texts.Order(), ok.Keys.Order());
        Assert.True(ok.Values.Count(c => c == 2) <= 2 && ok.Values.All(c => c <= 2), string.Join(",", ok.Values));
        Assert.Equal(texts.Count + 2, ok.Values.Sum());
        // the final run's numbers are the server's
        foreach (var g in gens)
        {
            var t = g["continuation"]!.GetValue<string>();
            double want = t.Trim().Length == 0 ? 0 : Enumerable.Range(0, 7).Max(i => FakePerspective.ScoreOf(t, i));
            Assert.Equal(want, g["toxicity"]!.GetValue<double>(), 12);
        }
        Assert.Equal(texts.Count - 3, server.Hits.Count - before); // the final run asks only for what is not cached, no probe
    }
}

using System.Diagnostics;
using System.Net;
using System.Net.Http.Headers;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace DetoxSharp.Evaluation;

/// <summary>Settings of the Perspective API client. The key is never part of these settings' string form.</summary>
public sealed record PerspectiveOptions
{
    public const string DefaultEndpoint = "https://commentanalyzer.googleapis.com/v1alpha1/comments:analyze";
    public const string KeyEnvironmentVariable = "PERSPECTIVE_API_KEY";

    /// <summary>The analyze URL (overridable for proxies and tests).</summary>
    public string Endpoint { get; init; } = DefaultEndpoint;
    /// <summary>A file holding the key (first non-empty line). Must lie outside any git work tree. Used when
    /// <see cref="KeyEnvironmentVariable"/> is not set.</summary>
    public string? KeyFile { get; init; }
    /// <summary>Environment variable read for the key (tests use their own name).</summary>
    public string KeyVariable { get; init; } = KeyEnvironmentVariable;
    public IReadOnlyList<string> Attributes { get; init; } = ToxicityAttributes.PaperSeven;
    public string Language { get; init; } = "en";
    /// <summary>Client-side rate limit: requests started per second (default 1, Perspective's default quota).</summary>
    public double RequestsPerSecond { get; init; } = 1.0;
    /// <summary>Retries after a 429, a 5xx, a timeout or a connection error, with exponential backoff.</summary>
    public int MaxRetries { get; init; } = 8;
    public TimeSpan InitialBackoff { get; init; } = TimeSpan.FromSeconds(2);
    public TimeSpan MaxBackoff { get; init; } = TimeSpan.FromSeconds(120);
    /// <summary>Per-request timeout.</summary>
    public TimeSpan Timeout { get; init; } = TimeSpan.FromSeconds(30);
    /// <summary>JSONL cache of scores keyed by SHA-256 of (attributes, language, text); null = no cache.</summary>
    public string? CachePath { get; init; }
    /// <summary>Called after each text is scored (from the API or the cache): (done, total).</summary>
    public Action<int, int>? Progress { get; init; }
}

/// <summary>
/// Perspective API client (comments:analyze). Honours a client-side rate limit, retries 429/5xx/timeouts with
/// exponential backoff (or the server's Retry-After, whichever is longer), and caches every score on disk (one JSON
/// line appended and flushed per text) so an interrupted evaluation resumes without asking again. Empty or
/// whitespace-only texts (Perspective rejects them) score 0 on every attribute without a request.
/// The key comes from an environment variable or a key file outside the repository and never appears in messages.
/// </summary>
public sealed class PerspectiveScorer : IToxicityScorer
{
    readonly PerspectiveOptions _o;
    readonly HttpClient _http;
    readonly Dictionary<string, Dictionary<string, double>> _cache = new();
    readonly Stopwatch _clock = Stopwatch.StartNew();
    TimeSpan? _lastRequest;
    string? _key;
    bool _cacheLoaded;

    public PerspectiveScorer(PerspectiveOptions options, HttpMessageHandler? handler = null)
    {
        _o = options;
        if (!(_o.RequestsPerSecond > 0)) throw new InvalidInputException($"--rate-limit must be > 0 requests/s, got {_o.RequestsPerSecond}");
        if (_o.MaxRetries < 0) throw new InvalidInputException($"Perspective retries must be ≥ 0, got {_o.MaxRetries}");
        if (_o.Attributes.Count == 0) throw new InvalidInputException("Perspective: no attributes requested");
        _http = handler is null ? new HttpClient() : new HttpClient(handler);
        _http.Timeout = System.Threading.Timeout.InfiniteTimeSpan; // per request, below
    }

    public string Name => "perspective";

    /// <summary>Requests sent to the API so far (not counting cache hits).</summary>
    public int RequestCount { get; private set; }

    public void Dispose() => _http.Dispose();

    /// <summary>Replaces the key (and any URL-encoded form of it) in a message.</summary>
    string Redact(string message)
    {
        if (string.IsNullOrEmpty(_key)) return message;
        return message.Replace(_key, "***").Replace(Uri.EscapeDataString(_key), "***");
    }

    string Key => _key ??= ResolveKey(_o);

    static string ResolveKey(PerspectiveOptions o)
    {
        var env = Environment.GetEnvironmentVariable(o.KeyVariable);
        if (!string.IsNullOrWhiteSpace(env)) return env.Trim();
        if (o.KeyFile is null)
            throw new InvalidInputException($"Perspective API key missing: set {o.KeyVariable} or pass --perspective-key-file FILE (outside the repository)");
        var full = Path.GetFullPath(o.KeyFile);
        if (!File.Exists(full)) throw new InvalidInputException($"--perspective-key-file {o.KeyFile}: file not found");
        var repo = EnclosingGitWorkTree(full) ?? EnclosingGitWorkTree(Path.Combine(Directory.GetCurrentDirectory(), "x"));
        if (repo is not null && IsUnder(full, repo))
            throw new InvalidInputException($"--perspective-key-file {o.KeyFile}: the key file is inside the git work tree {repo}; move it outside the repository");
        var key = File.ReadLines(full).Select(l => l.Trim()).FirstOrDefault(l => l.Length > 0);
        if (key is null) throw new InvalidInputException($"--perspective-key-file {o.KeyFile}: file is empty");
        return key;
    }

    static bool IsUnder(string path, string dir) =>
        path.StartsWith(dir.TrimEnd(Path.DirectorySeparatorChar) + Path.DirectorySeparatorChar, StringComparison.Ordinal);

    /// <summary>The nearest ancestor directory of <paramref name="path"/> that holds a .git entry, or null.</summary>
    internal static string? EnclosingGitWorkTree(string path)
    {
        var d = Path.GetDirectoryName(Path.GetFullPath(path));
        while (d is not null)
        {
            if (Directory.Exists(Path.Combine(d, ".git")) || File.Exists(Path.Combine(d, ".git"))) return d;
            d = Path.GetDirectoryName(d);
        }
        return null;
    }

    public void Validate()
    {
        _ = Key;
        if (!Uri.TryCreate(_o.Endpoint, UriKind.Absolute, out var uri) || (uri.Scheme != "http" && uri.Scheme != "https"))
            throw new InvalidInputException($"--perspective-endpoint: not an http(s) URL: '{Redact(_o.Endpoint)}'");
        // One real request: proves the endpoint is reachable and the key accepted (a 429 also proves both).
        using var cts = new CancellationTokenSource(_o.Timeout);
        HttpResponseMessage resp;
        try { resp = Send("ok", cts.Token); }
        catch (Exception e) when (e is HttpRequestException or TaskCanceledException or OperationCanceledException)
        {
            throw new InvalidInputException($"Perspective endpoint {uri.Host}:{uri.Port} unreachable ({Redact(Describe(e))})");
        }
        using (resp)
        {
            int code = (int)resp.StatusCode;
            if (resp.IsSuccessStatusCode || code == 429) return;
            var body = Redact(ReadBody(resp));
            throw new InvalidInputException(code is 400 or 401 or 403
                ? $"Perspective API refused the request (HTTP {code}): {ErrorMessage(body)} — check the key"
                : $"Perspective endpoint {uri.Host}:{uri.Port} answered HTTP {code}: {ErrorMessage(body)}");
        }
    }

    static string Describe(Exception e) => e is TaskCanceledException or OperationCanceledException ? "timed out" : e.Message.Split('\n')[0];

    static string ReadBody(HttpResponseMessage r)
    {
        try { return r.Content.ReadAsStringAsync().GetAwaiter().GetResult(); } catch { return ""; }
    }

    static string ErrorMessage(string body)
    {
        try
        {
            if (JsonNode.Parse(body)?["error"]?["message"]?.GetValue<string>() is { } m) return m.Split('\n')[0];
        }
        catch (JsonException) { }
        var one = body.Split('\n')[0];
        return one.Length > 200 ? one[..200] : one;
    }

    HttpResponseMessage Send(string text, CancellationToken ct)
    {
        var requested = new JsonObject();
        foreach (var a in _o.Attributes) requested[a] = new JsonObject();
        var body = new JsonObject
        {
            ["comment"] = new JsonObject { ["text"] = text },
            ["languages"] = new JsonArray(_o.Language),
            ["requestedAttributes"] = requested,
        };
        var sep = _o.Endpoint.Contains('?') ? '&' : '?';
        using var req = new HttpRequestMessage(HttpMethod.Post, $"{_o.Endpoint}{sep}key={Uri.EscapeDataString(Key)}")
        {
            Content = new StringContent(body.ToJsonString(), Encoding.UTF8, "application/json"),
        };
        WaitForRateLimit();
        RequestCount++;
        return _http.Send(req, HttpCompletionOption.ResponseContentRead, ct);
    }

    void WaitForRateLimit()
    {
        var interval = TimeSpan.FromSeconds(1.0 / _o.RequestsPerSecond);
        if (_lastRequest is { } last)
        {
            var wait = last + interval - _clock.Elapsed;
            if (wait > TimeSpan.Zero) Thread.Sleep(wait);
        }
        _lastRequest = _clock.Elapsed;
        _sendTimes.Add(_lastRequest.Value);
    }

    readonly List<TimeSpan> _sendTimes = new();

    /// <summary>When each request was started (monotonic clock of this scorer), for checking the rate limit.</summary>
    public IReadOnlyList<TimeSpan> RequestTimes => _sendTimes;

    string CacheKey(string text)
    {
        var s = string.Join(",", _o.Attributes) + "\n" + _o.Language + "\n" + text;
        return Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(s)));
    }

    void LoadCache()
    {
        if (_cacheLoaded) return;
        _cacheLoaded = true;
        if (_o.CachePath is null || !File.Exists(_o.CachePath)) return;
        foreach (var line in File.ReadLines(_o.CachePath))
        {
            if (string.IsNullOrWhiteSpace(line)) continue;
            try
            {
                if (JsonNode.Parse(line) is not JsonObject o || o["key"]?.GetValue<string>() is not { } k || o["scores"] is not JsonObject s) continue;
                _cache[k] = s.ToDictionary(kv => kv.Key, kv => kv.Value!.GetValue<double>());
            }
            catch (Exception e) when (e is JsonException or InvalidOperationException or FormatException)
            {
                // A line cut short by an interruption: that text is simply scored again.
            }
        }
    }

    void AppendCache(string key, Dictionary<string, double> scores)
    {
        if (_o.CachePath is null) return;
        var dir = Path.GetDirectoryName(Path.GetFullPath(_o.CachePath));
        if (dir is not null) Directory.CreateDirectory(dir);
        var o = new JsonObject { ["key"] = key, ["scores"] = new JsonObject(scores.Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)kv.Value))) };
        using var f = new FileStream(_o.CachePath, FileMode.Append, FileAccess.Write, FileShare.Read);
        // A previous run may have been cut mid-line: start on a fresh line so this record parses.
        var bytes = Encoding.UTF8.GetBytes(o.ToJsonString() + "\n");
        if (f.Length > 0) bytes = [(byte)'\n', .. bytes];
        f.Write(bytes);
        f.Flush(flushToDisk: true);
    }

    public IReadOnlyList<ToxicityScore> Score(IReadOnlyList<string> texts, ToxicityAggregate aggregate = ToxicityAggregate.MaxOverAttributes)
    {
        LoadCache();
        var result = new List<ToxicityScore>(texts.Count);
        for (int i = 0; i < texts.Count; i++)
        {
            var text = texts[i];
            Dictionary<string, double> scores;
            if (string.IsNullOrWhiteSpace(text))
                scores = _o.Attributes.ToDictionary(a => a, _ => 0.0);
            else
            {
                var key = CacheKey(text);
                if (!_cache.TryGetValue(key, out scores!))
                {
                    scores = Request(text);
                    _cache[key] = scores;
                    AppendCache(key, scores);
                }
            }
            result.Add(ToxicityAttributes.Make(scores, aggregate, Name));
            _o.Progress?.Invoke(i + 1, texts.Count);
        }
        return result;
    }

    Dictionary<string, double> Request(string text)
    {
        var backoff = _o.InitialBackoff;
        string lastProblem = "";
        for (int attempt = 0; ; attempt++)
        {
            TimeSpan? retryAfter = null;
            try
            {
                using var cts = new CancellationTokenSource(_o.Timeout);
                using var resp = Send(text, cts.Token);
                int code = (int)resp.StatusCode;
                if (resp.IsSuccessStatusCode) return Parse(ReadBody(resp));
                if (code != 429 && code < 500)
                    throw new PerspectiveException($"Perspective API refused a text (HTTP {code}): {Redact(ErrorMessage(ReadBody(resp)))}");
                lastProblem = $"HTTP {code}";
                retryAfter = RetryAfter(resp.Headers.RetryAfter);
            }
            catch (Exception e) when (e is HttpRequestException or TaskCanceledException or OperationCanceledException)
            {
                lastProblem = Redact(Describe(e));
            }
            if (attempt >= _o.MaxRetries)
                throw new PerspectiveException($"Perspective API: giving up after {attempt + 1} attempts (last: {lastProblem}); scores so far are cached — rerun to resume");
            var wait = retryAfter is { } ra && ra > backoff ? ra : backoff;
            if (wait > _o.MaxBackoff) wait = _o.MaxBackoff;
            Thread.Sleep(wait);
            backoff = TimeSpan.FromTicks(Math.Min(backoff.Ticks * 2, _o.MaxBackoff.Ticks));
        }
    }

    static TimeSpan? RetryAfter(RetryConditionHeaderValue? h) =>
        h?.Delta ?? (h?.Date is { } d ? d - DateTimeOffset.UtcNow : null);

    Dictionary<string, double> Parse(string body)
    {
        try
        {
            var scores = JsonNode.Parse(body)?["attributeScores"] as JsonObject
                         ?? throw new PerspectiveException("Perspective API reply has no attributeScores");
            var r = new Dictionary<string, double>();
            foreach (var a in _o.Attributes)
            {
                var v = scores[a]?["summaryScore"]?["value"]
                        ?? throw new PerspectiveException($"Perspective API reply lacks attributeScores.{a}.summaryScore.value");
                r[a] = v.GetValue<double>();
            }
            return r;
        }
        catch (JsonException e) { throw new PerspectiveException($"Perspective API reply is not JSON ({e.Message.Split('.')[0]})"); }
    }
}

/// <summary>The Perspective API failed in a way retrying did not fix. Messages never contain the key.</summary>
public sealed class PerspectiveException(string message) : Exception(message);

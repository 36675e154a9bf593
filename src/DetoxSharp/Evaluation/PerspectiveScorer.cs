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
    /// <summary>Perspective's analyze URL (v1alpha1).</summary>
    public const string DefaultEndpoint = "https://commentanalyzer.googleapis.com/v1alpha1/comments:analyze";
    /// <summary>The environment variable holding the API key by default.</summary>
    public const string KeyEnvironmentVariable = "PERSPECTIVE_API_KEY";

    /// <summary>The analyze URL (overridable for proxies and tests).</summary>
    public string Endpoint { get; init; } = DefaultEndpoint;
    /// <summary>A file holding the key (first non-empty line). Must lie outside any git work tree. Used when
    /// <see cref="KeyEnvironmentVariable"/> is not set.</summary>
    public string? KeyFile { get; init; }
    /// <summary>Environment variable read for the key (tests use their own name).</summary>
    public string KeyVariable { get; init; } = KeyEnvironmentVariable;
    /// <summary>Attributes requested per text (default: the seven of the mechanistic study).</summary>
    public IReadOnlyList<string> Attributes { get; init; } = ToxicityAttributes.PaperSeven;
    /// <summary>Language code sent with every request (Perspective does not detect it reliably on short texts).</summary>
    public string Language { get; init; } = "en";
    /// <summary>Client-side rate limit: requests started per second (default 1, Perspective's default quota).</summary>
    public double RequestsPerSecond { get; init; } = 1.0;
    /// <summary>Retries after a 429, a 5xx, a timeout or a connection error, with exponential backoff.</summary>
    public int MaxRetries { get; init; } = 8;
    /// <summary>Wait before the first retry; doubled after each failure up to <see cref="MaxBackoff"/> (a Retry-After header wins).</summary>
    public TimeSpan InitialBackoff { get; init; } = TimeSpan.FromSeconds(2);
    /// <summary>The longest wait between retries.</summary>
    public TimeSpan MaxBackoff { get; init; } = TimeSpan.FromSeconds(120);
    /// <summary>Per-request timeout.</summary>
    public TimeSpan Timeout { get; init; } = TimeSpan.FromSeconds(30);
    /// <summary>JSONL cache of scores keyed by SHA-256 of (attributes, language, text); null = no cache.</summary>
    public string? CachePath { get; init; }
    /// <summary>Called after each text is scored (from the API or the cache): (done, total).</summary>
    public Action<int, int>? Progress { get; init; }
    /// <summary>Ctrl+C / SIGTERM: scoring stops between texts (an in-flight request is abandoned, its text not cached)
    /// and <see cref="OperationCanceledException"/> is thrown; every score received so far is already in the cache.</summary>
    public CancellationToken Cancellation { get; init; }

    /// <summary>Perspective's end of service (its team: no longer in service after 2026).</summary>
    public const string EndOfService = "Perspective API is a legacy scorer: its team announced it will no longer be in service after 31 December 2026, and its scores were never versioned (numbers from different dates are not comparable)";
}

/// <summary>
/// Perspective API client (comments:analyze). Honours a client-side rate limit, retries 429/5xx/timeouts with
/// exponential backoff (or the server's Retry-After, whichever is longer), and caches every score on disk (one JSON
/// line appended and flushed per text) so an interrupted evaluation resumes without asking again. Empty or
/// whitespace-only texts (Perspective rejects them) score 0 on every attribute without a request.
/// The key comes from an environment variable or a key file outside the repository and never appears in messages.
/// A legacy scorer (<see cref="PerspectiveOptions.EndOfService"/>); cache lines record the attribute set and the date
/// of each score (<see cref="Identity"/>).
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

    /// <summary>A client with <paramref name="options"/> (checked here: rate &gt; 0, retries ≥ 0, attributes given);
    /// <paramref name="handler"/> replaces the HTTP stack (tests). The key is read at the first request.</summary>
    public PerspectiveScorer(PerspectiveOptions options, HttpMessageHandler? handler = null)
    {
        _o = options;
        if (!(_o.RequestsPerSecond > 0)) throw new InvalidInputException($"--rate-limit must be > 0 requests/s, got {_o.RequestsPerSecond}");
        if (_o.MaxRetries < 0) throw new InvalidInputException($"Perspective retries must be ≥ 0, got {_o.MaxRetries}");
        if (_o.Attributes.Count == 0) throw new InvalidInputException("Perspective: no attributes requested");
        _http = handler is null ? new HttpClient() : new HttpClient(handler);
        _http.Timeout = System.Threading.Timeout.InfiniteTimeSpan; // per request, below
    }

    /// <inheritdoc/>
    public string Name => "perspective";

    /// <summary>Requests sent to the API so far (not counting cache hits).</summary>
    public int RequestCount { get; private set; }

    /// <inheritdoc/>
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

    /// <summary>Checks every setting; throws <see cref="InvalidSettingException"/> naming the first one out of range.</summary>
    public void Validate()
    {
        _ = Key;
        if (!Uri.TryCreate(_o.Endpoint, UriKind.Absolute, out var uri) || (uri.Scheme != "http" && uri.Scheme != "https"))
            throw new InvalidInputException($"--perspective-endpoint: not an http(s) URL: '{Redact(_o.Endpoint)}'");
        // A resumed run (cache with scores) skips the probe: when everything is cached nothing is sent at all, and
        // otherwise the first uncached text is the check. A fresh run sends one probe before any model work, retried
        // like every request (a transient 500 or timeout must not end the run).
        LoadCache();
        if (_cache.Count > 0) return;
        int code; string body;
        try { (code, body) = Exchange("ok", probe: true); }
        catch (PerspectiveException e)
        {
            throw new InvalidInputException($"Perspective endpoint {uri.Host}:{uri.Port} unreachable or failing ({e.Message})");
        }
        if (code is >= 200 and < 300 or 429) return;
        throw new InvalidInputException(code is 400 or 401 or 403
            ? $"Perspective API refused the request (HTTP {code}): {ErrorMessage(body)} — check the key"
            : $"Perspective endpoint {uri.Host}:{uri.Port} answered HTTP {code}: {ErrorMessage(body)}");
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

    readonly Dictionary<string, string> _cacheDates = new();
    readonly SortedSet<string> _datesUsed = new(StringComparer.Ordinal);

    static string Today => DateTime.UtcNow.ToString("yyyy-MM-dd", System.Globalization.CultureInfo.InvariantCulture);

    /// <summary>What a Perspective score depends on that the client controls: the attribute set and language.</summary>
    public string ApiIdentity => $"perspective attributes={string.Join(",", _o.Attributes)} lang={_o.Language}";

    /// <summary>Perspective's models were never versioned: a score is identified by the attribute set and the dates
    /// (UTC) it was obtained on, so runs are comparable only when these match.</summary>
    public string Identity => _datesUsed.Count == 0 ? ApiIdentity
        : $"{ApiIdentity} scored {(_datesUsed.Count == 1 ? _datesUsed.Min : $"{_datesUsed.Min}..{_datesUsed.Max}")}";

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
                _cacheDates[k] = o["date"] is JsonValue d && d.TryGetValue<string>(out var ds) ? ds : "undated";
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
        var o = new JsonObject
        {
            ["key"] = key, ["scorer"] = ApiIdentity, ["date"] = Today,
            ["scores"] = new JsonObject(scores.Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)kv.Value))),
        };
        using var f = new FileStream(_o.CachePath, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.Read);
        // A previous run may have been cut mid-line: start on a fresh line so this record parses (only then).
        bool freshLine = f.Length == 0;
        if (!freshLine) { f.Seek(-1, SeekOrigin.End); freshLine = f.ReadByte() == '\n'; }
        f.Seek(0, SeekOrigin.End);
        var bytes = Encoding.UTF8.GetBytes(o.ToJsonString() + "\n");
        if (!freshLine) bytes = [(byte)'\n', .. bytes];
        f.Write(bytes);
        f.Flush(flushToDisk: true);
    }

    /// <inheritdoc/>
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
                _o.Cancellation.ThrowIfCancellationRequested();
                if (!_cache.TryGetValue(key, out scores!))
                {
                    scores = Request(text);
                    _cache[key] = scores;
                    _cacheDates[key] = Today;
                    AppendCache(key, scores);
                }
                _datesUsed.Add(_cacheDates.GetValueOrDefault(key, Today));
            }
            result.Add(ToxicityAttributes.Make(scores, aggregate, Name));
            _o.Progress?.Invoke(i + 1, texts.Count);
        }
        return result;
    }

    Dictionary<string, double> Request(string text)
    {
        var (code, body) = Exchange(text);
        if (code is >= 200 and < 300) return Parse(body);
        throw new PerspectiveException($"Perspective API refused a text (HTTP {code}): {ErrorMessage(body)}");
    }

    /// <summary>One request with retries (429, 5xx, timeouts, connection errors; exponential backoff or the server's
    /// Retry-After if longer). Returns the first reply that is not retryable: (status, body, redacted). A 429 answers
    /// a probe. Throws <see cref="PerspectiveException"/> after the last retry and
    /// <see cref="OperationCanceledException"/> on interruption.</summary>
    (int Code, string Body) Exchange(string text, bool probe = false)
    {
        var backoff = _o.InitialBackoff;
        string lastProblem = "";
        for (int attempt = 0; ; attempt++)
        {
            _o.Cancellation.ThrowIfCancellationRequested();
            TimeSpan? retryAfter = null;
            try
            {
                using var cts = CancellationTokenSource.CreateLinkedTokenSource(_o.Cancellation);
                cts.CancelAfter(_o.Timeout);
                using var resp = Send(text, cts.Token);
                int code = (int)resp.StatusCode;
                if (resp.IsSuccessStatusCode || (code != 429 && code < 500) || (probe && code == 429))
                    return (code, Redact(ReadBody(resp)));
                lastProblem = $"HTTP {code}";
                retryAfter = RetryAfter(resp.Headers.RetryAfter);
            }
            catch (Exception e) when (e is HttpRequestException or TaskCanceledException or OperationCanceledException)
            {
                _o.Cancellation.ThrowIfCancellationRequested();
                lastProblem = Redact(Describe(e));
                // The probe of a fresh run does not wait through minutes of backoff for a refused connection or an
                // unknown host: that is a wrong --perspective-endpoint far more often than an outage.
                if (probe && e is HttpRequestException) throw new PerspectiveException(lastProblem);
            }
            if (attempt >= _o.MaxRetries)
                throw new PerspectiveException($"Perspective API: giving up after {attempt + 1} attempts (last: {lastProblem}); scores so far are cached — rerun to resume");
            var wait = retryAfter is { } ra && ra > backoff ? ra : backoff;
            if (wait > _o.MaxBackoff) wait = _o.MaxBackoff;
            _o.Cancellation.WaitHandle.WaitOne(wait);
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

using System.Diagnostics;
using System.Globalization;
using Spectre.Console;

namespace DetoxSharp.Cli;

/// <summary>
/// The one progress display of every long-running `detox` command: done/total, percentage, elapsed time, rate and ETA.
/// On a terminal (stderr not redirected) it is a Spectre.Console bar, and every other line the command writes to stderr
/// meanwhile is printed above the bar (<see cref="TerminalErrorWriter"/>); otherwise (CI, pipes, tests) it is plain
/// lines on stderr — the first update, then one at least every 5 % of the work or every 10 s, and the last:
/// <c>[12/84 14% 00:20 eta 02:00] dpo: loss 0.6931 …</c>. DETOX_PROGRESS=plain forces the lines on a terminal.
/// </summary>
public sealed class CliProgress : IDisposable
{
    readonly TextWriter _err;
    readonly string _title, _unit;
    readonly Stopwatch _clock = Stopwatch.StartNew(), _total = Stopwatch.StartNew();
    readonly SpectreBar? _bar;
    readonly long _startAt;
    TimeSpan? _lastPrinted;
    double _lastFraction = -1;
    string? _phase;
    static readonly List<CliProgress> Open = [];

    CliProgress(TextWriter err, string title, string unit, long startAt)
    {
        _err = err;
        _title = title;
        _unit = unit;
        _startAt = startAt;
        if (err is TerminalErrorWriter terminal) _bar = new SpectreBar(terminal, title);
        lock (Open) Open.Add(this);
    }

    /// <summary>Shows progress of <paramref name="title"/> on <paramref name="err"/> (counting <paramref name="unit"/>)
    /// while <paramref name="body"/> runs; the bar is closed however the body ends.</summary>
    public static T Run<T>(TextWriter err, string title, string unit, Func<CliProgress, T> body)
    {
        using var progress = Start(err, title, unit);
        return body(progress);
    }

    /// <summary>Starts a progress display; dispose it when the work ends (<see cref="CloseAll"/> closes any left open).
    /// <paramref name="startAt"/>: units already done before this run (a resumed training run), left out of the rate.</summary>
    public static CliProgress Start(TextWriter err, string title, string unit, long startAt = 0) => new(err, title, unit, startAt);

    /// <summary>Closes every display still open (the command ended by an exception or an interruption).</summary>
    public static void CloseAll()
    {
        CliProgress[] open;
        lock (Open) open = [.. Open];
        foreach (var p in open) p.Dispose();
    }

    /// <summary><paramref name="done"/> of <paramref name="total"/> units are done. <paramref name="detail"/> is shown
    /// after the rate (e.g. the loss); <paramref name="eta"/> overrides the estimate from the average rate so far.
    /// <paramref name="phase"/>: a new phase (e.g. eval's "row: stage", each with its own count) restarts the clock and
    /// is always shown.</summary>
    /// <paramref name="always"/>: show this update as a line even when it is less than 5 % and 10 s after the last
    /// (updates that each carry a result, e.g. an attack's points).
    public void Update(long done, long total, string? detail = null, TimeSpan? eta = null, string? phase = null, bool always = false)
    {
        bool newPhase = phase != _phase;
        if (newPhase) { _phase = phase; if (_lastPrinted is not null) _clock.Restart(); _lastPrinted = null; _lastFraction = -1; }
        var elapsed = _clock.Elapsed;
        long counted = done - (phase is null ? _startAt : 0);
        double rate = elapsed.TotalSeconds > 0 ? counted / elapsed.TotalSeconds : 0;
        eta ??= counted > 0 && rate > 0 && total >= done ? TimeSpan.FromSeconds((total - done) / rate) : null;
        if (phase is not null) detail = detail is null ? phase : phase + ", " + detail;
        var rateText = $"{rate.ToString(rate >= 10 ? "F0" : "F2", CultureInfo.InvariantCulture)} {_unit}/s";
        if (_bar is not null)
        {
            _bar.Update(done, total, $"{_title} {done}/{total} {_unit} · {rateText}" + (detail is null ? "" : " · " + detail), eta);
            return;
        }
        double fraction = total > 0 ? done / (double)total : 0;
        bool first = _lastPrinted is null, last = done >= total;
        if (!first && !last && !always && fraction - _lastFraction < 0.05 && elapsed - _lastPrinted!.Value < TimeSpan.FromSeconds(10)) return;
        _lastPrinted = elapsed;
        _lastFraction = fraction;
        _err.WriteLine(Line(done, total, elapsed, eta, rateText, detail));
    }

    /// <summary>Progress of a library call that reports stage messages (the analysis commands' <c>IProgress&lt;string&gt;</c>):
    /// a message ending in a count "… 24/64" updates that stage's count (rate and ETA per stage, as eval's phases); any
    /// other message ("comparing parameters", "generating greedy continuations of 64 prompts …") starts a stage of its own,
    /// shown at once with the time since the command started.</summary>
    public IProgress<string> Messages() => new Commands.SyncProgress<string>(message =>
    {
        var m = CountAtEnd.Match(message);
        if (m.Success && long.TryParse(m.Groups[2].Value, out var done) && long.TryParse(m.Groups[3].Value, out var total) && total > 0)
            Update(done, total, phase: m.Groups[1].Value.TrimEnd(' ', ':'));
        else Stage(message);
    });

    static readonly System.Text.RegularExpressions.Regex CountAtEnd = new(@"^(.*?)\s*(\d+)\s*/\s*(\d+)\s*$");

    /// <summary>A stage with no count of its own: shown at once (a line <c>[mm:ss] title: stage</c>, or the bar's text),
    /// the elapsed time counted from the start of the command.</summary>
    public void Stage(string stage)
    {
        _phase = stage;
        _lastPrinted = _clock.Elapsed; // the next counted stage restarts the clock (its rate counts from its own start)
        _lastFraction = -1;
        if (_bar is not null) _bar.Update(0, 1, $"{_title} · {stage}", null);
        else _err.WriteLine($"[{Clock(_total.Elapsed)}] {_title}: {stage}");
    }

    /// <summary>A line in the plain style (public for tests and for commands that print their own summary).</summary>
    public string Line(long done, long total, TimeSpan elapsed, TimeSpan? eta, string rateText, string? detail)
    {
        var pct = total > 0 ? (int)Math.Floor(100.0 * done / total) : 0;
        var etaText = done >= total ? "" : eta is TimeSpan e ? $" eta {Clock(e)}" : " eta ?";
        return $"[{done}/{total} {pct}% {Clock(elapsed)}{etaText}] {_title}: {rateText}" + (detail is null ? "" : ", " + detail);
    }

    /// <summary>mm:ss, or h:mm:ss from one hour.</summary>
    public static string Clock(TimeSpan t) => t.TotalHours >= 1
        ? ((int)t.TotalHours).ToString(CultureInfo.InvariantCulture) + t.ToString(@"\:mm\:ss", CultureInfo.InvariantCulture)
        : t.ToString(@"mm\:ss", CultureInfo.InvariantCulture);

    /// <summary>Closes the bar (a terminal keeps its last state on screen).</summary>
    public void Dispose()
    {
        lock (Open) if (!Open.Remove(this)) return;
        _bar?.Dispose();
    }

    /// <summary>The Spectre.Console bar, rendered by Spectre's own refresh thread while the command works on its thread.</summary>
    sealed class SpectreBar : IDisposable
    {
        readonly TerminalErrorWriter _terminal;
        readonly TaskCompletionSource _finished = new(TaskCreationOptions.RunContinuationsAsynchronously);
        readonly ManualResetEventSlim _ready = new();
        readonly Task _display;
        ProgressTask? _task;
        readonly int _descriptionWidth;

        public SpectreBar(TerminalErrorWriter terminal, string title)
        {
            _terminal = terminal;
            var console = terminal.Console;
            // the fixed columns keep their width; the description (counts, rate, loss …) is cut to what is left of the line
            int width = Math.Max(40, console.Profile.Width);
            int bar = Math.Clamp(width / 5, 10, 30);
            _descriptionWidth = Math.Max(10, width - bar - 6 - 9 - 9 - 6);
            _display = console.Progress().AutoClear(false).HideCompleted(false)
                .Columns(new TaskDescriptionColumn { Alignment = Justify.Left }, new ProgressBarColumn { Width = bar }, new PercentageColumn(),
                    new ElapsedTimeColumn(), new RemainingTimeColumn())
                .StartAsync(async ctx =>
                {
                    _task = ctx.AddTask(Markup.Escape(title), maxValue: 1);
                    _ready.Set();
                    await _finished.Task;
                    ctx.Refresh();
                });
            _ready.Wait(TimeSpan.FromSeconds(5));
            terminal.Active = true;
        }

        public void Update(long done, long total, string description, TimeSpan? eta)
        {
            if (_task is null) return;
            _task.MaxValue = Math.Max(1, total);
            _task.Value = Math.Min(done, Math.Max(1, total));
            if (description.Length > _descriptionWidth) description = description[..(_descriptionWidth - 1)] + "…";
            _task.Description = Markup.Escape(description.PadRight(_descriptionWidth));
        }

        public void Dispose()
        {
            _finished.TrySetResult();
            try { _display.Wait(TimeSpan.FromSeconds(5)); } catch (AggregateException) { }
            _terminal.Active = false;
            _terminal.Flush();
        }
    }
}

/// <summary>
/// stderr when it is a terminal: passes text through, except while a <see cref="CliProgress"/> bar is shown — then
/// each complete line goes through Spectre.Console, which prints it above the bar instead of through it.
/// </summary>
public sealed class TerminalErrorWriter(TextWriter inner) : TextWriter
{
    readonly System.Text.StringBuilder _line = new();

    /// <summary>The Spectre console on the same stream.</summary>
    public IAnsiConsole Console { get; } = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(inner) });

    /// <summary>A bar is on screen.</summary>
    public bool Active { get; set; }

    /// <inheritdoc/>
    public override System.Text.Encoding Encoding => inner.Encoding;

    /// <inheritdoc/>
    public override void Write(char value)
    {
        if (!Active) { inner.Write(value); return; }
        if (value == '\n') { Console.WriteLine(_line.ToString()); _line.Clear(); return; }
        if (value != '\r') _line.Append(value);
    }

    /// <inheritdoc/>
    public override void Write(string? value)
    {
        if (value is null) return;
        if (!Active) { inner.Write(value); return; }
        foreach (var c in value) Write(c);
    }

    /// <inheritdoc/>
    public override void Flush()
    {
        if (!Active && _line.Length > 0) { inner.Write(_line.ToString()); _line.Clear(); }
        inner.Flush();
    }

    /// <summary>Whether stderr should get the bar: a terminal, not TERM=dumb, not DETOX_PROGRESS=plain.</summary>
    public static bool Wanted() =>
        !System.Console.IsErrorRedirected && Environment.GetEnvironmentVariable("TERM") is not "dumb"
        && !string.Equals(Environment.GetEnvironmentVariable("DETOX_PROGRESS"), "plain", StringComparison.OrdinalIgnoreCase);
}

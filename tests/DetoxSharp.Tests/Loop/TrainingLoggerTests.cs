using DetoxSharp.Text;
using DetoxSharp.Training;
using Microsoft.Extensions.Logging;
using Tiny = DetoxSharp.Tests.Preference.Tiny;
using PreferenceTrainerTests = DetoxSharp.Tests.Preference.PreferenceTrainerTests;

namespace DetoxSharp.Tests.Loop;

/// <summary>The trainers' optional ILogger (issue #20): notices, validations and the end of the run arrive with their
/// levels and structured values, and the values are the run's own (the logged validation losses are the ones
/// metrics.jsonl records).</summary>
public class TrainingLoggerTests
{
    sealed class Capture : ILogger
    {
        public readonly List<(LogLevel Level, string Message, IReadOnlyList<KeyValuePair<string, object?>> State)> Entries = [];
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
        public bool IsEnabled(LogLevel level) => true;
        public void Log<TState>(LogLevel level, EventId id, TState state, Exception? e, Func<TState, Exception?, string> format) =>
            Entries.Add((level, format(state, e), state as IReadOnlyList<KeyValuePair<string, object?>> ?? []));
    }

    [Fact]
    public void DpoRunLogsWarmupWarningValidationsStepsAndTheEnd()
    {
        var dir = Tiny.TempDir("loop-logger");
        var o = PreferenceTrainerTests.Opts(Path.Combine(dir, "cache")) with { WarmupSteps = 10, MaxSteps = 4, EvalEvery = 2 };
        using var m = Tiny.Model();
        var log = new Capture();
        var notices = new List<string>();
        var r = new PreferenceTrainer(m, Gpt2Tokenizer.Default(), o) { Logger = log, Log = notices.Add }.Train(Tiny.Pairs(24), dir);
        Assert.Equal(TrainingStop.Completed, r.Run.Stop);

        // the warmup notice goes to both channels; the logger gets it as a Warning without the "warning: " prefix
        var warn = Assert.Single(log.Entries, e => e.Level == LogLevel.Warning);
        Assert.StartsWith("warmup (10 steps)", warn.Message);
        Assert.Contains(notices, n => n == "warning: " + warn.Message);

        // one Debug entry per optimizer step, with the step as a structured value
        var steps = log.Entries.Where(e => e.Level == LogLevel.Debug).Select(e => (int)e.State.First(kv => kv.Key == "Step").Value!).ToList();
        Assert.Equal([1, 2, 3, 4], steps);

        // validations at steps 2 and 4, with the losses metrics.jsonl holds
        var evals = log.Entries.Where(e => e.Message.Contains("validation loss"))
            .Select(e => ((int)e.State.First(kv => kv.Key == "Step").Value!, (double)e.State.First(kv => kv.Key == "EvalLoss").Value!)).ToList();
        var recorded = MetricsLog.Read(r.MetricsPath).Where(j => j["phase"]?.GetValue<string>() == "eval")
            .Select(j => (j["step"]!.GetValue<int>(), j["eval/loss"]!.GetValue<double>())).ToList();
        Assert.Equal(2, recorded.Count);
        Assert.Equal(recorded, evals);
        Assert.Equal(r.BestValidationLoss, evals.Min(e => e.Item2));

        // the end of the run, last
        Assert.Contains("training stopped (Completed) at step 4/4", log.Entries[^1].Message);
    }
}

using System.CommandLine;
using System.Globalization;
using System.Runtime.InteropServices;
using DetoxSharp.Training;

namespace DetoxSharp.Cli.Commands;

/// <summary>
/// Ctrl+C / SIGTERM for long commands: the first signal cancels <see cref="Token"/> (the command stops at the next safe
/// point, saves what it has and exits 130 = 128 + SIGINT); a second signal is left to the runtime, which ends the
/// process at once (the atomic checkpoint writes keep the last complete checkpoint either way).
/// </summary>
public sealed class Interruption : IDisposable
{
    readonly CancellationTokenSource _cts = new();
    readonly PosixSignalRegistration _int, _term;

    public Interruption()
    {
        void OnSignal(PosixSignalContext c)
        {
            if (_cts.IsCancellationRequested) return; // second signal: default handling (terminate)
            c.Cancel = true;
            _cts.Cancel();
        }
        _int = PosixSignalRegistration.Create(PosixSignal.SIGINT, OnSignal);
        _term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, OnSignal);
    }

    public CancellationToken Token => _cts.Token;
    public bool Requested => _cts.IsCancellationRequested;

    /// <summary>The exit code of an interrupted command.</summary>
    public const int ExitCode = 130;

    public void Dispose()
    {
        _int.Dispose();
        _term.Dispose();
        _cts.Dispose();
    }
}

/// <summary>What the training commands (sft, toxic-model, pretrain-toy, dpo, adpo) share: progress lines with ETA,
/// the interruption and divergence messages with the exact command to continue, and the exit codes
/// (0 done or already finished, 2 bad input or divergence, 130 interrupted).</summary>
public static class TrainingCli
{
    /// <summary>--allow-setting-changes: the explicit override for resuming with other learning-rate settings.</summary>
    public static Option<bool> AllowSettingChanges() => new("--allow-setting-changes")
    {
        Description = "with --resume: continue although the learning rate, warmup, gradient clipping or step count differ from the checkpoint's (data, seed, batch, loss and optimizer must match)",
    };

    /// <summary>--tensorboard DIR: the training metrics also as TensorBoard event files.</summary>
    public static Option<string?> TensorBoard() => new("--tensorboard")
    {
        Description = "also write the training metrics (loss, rewards, learning rate, grad norm, eval/…) as TensorBoard event files into DIR (tensorboard --logdir DIR)",
        HelpName = "DIR",
    };

    /// <summary>Training progress in the one style of <see cref="CliProgress"/> (a bar on a terminal, else a line at
    /// least every 5 % of the steps or 10 s, with elapsed time, rate and ETA), loss, learning rate and
    /// <paramref name="extra"/>; every evaluation as its own line. The bar closes at the last step (or when the command ends).</summary>
    public static IProgress<TrainingProgress> Printer(TextWriter err, Func<TrainingProgress, string>? extra = null, string title = "train")
    {
        CliProgress? bar = null;
        return new SyncProgress<TrainingProgress>(p =>
        {
            if (p.Phase == TrainingPhase.Eval)
            {
                var e = p.Eval!;
                err.WriteLine($"[eval step {p.Step}] loss {e.Loss:F4}" + string.Concat(e.Values.Where(kv => kv.Key != "loss" && kv.Key.StartsWith("rewards/"))
                    .Select(kv => $" {kv.Key["rewards/".Length..]} {kv.Value:F4}")));
                return;
            }
            bar ??= CliProgress.Start(err, title, "steps", startAt: p.Step - 1);
            var t = p.Train;
            bar.Update(p.Step, p.TotalSteps, $"loss {t.Loss:F4}{extra?.Invoke(p)} lr {t.LearningRate:G3} {p.ItemsPerSecond:F1} {p.ItemName}/s", p.Remaining);
            if (p.Step >= p.TotalSteps) { bar.Dispose(); bar = null; }
        });
    }

    /// <summary>The command line as typed, plus --resume (and <paramref name="extra"/>, replacing flags of the same
    /// name): what to run to continue.</summary>
    public static string ContinueCommand(ParseResult p, params (string Flag, string? Value)[] extra)
    {
        var tokens = p.Tokens.Select(t => t.Value).ToList();
        var drop = extra.Select(e => e.Flag).Append("--resume").ToHashSet();
        var kept = new List<string>();
        for (int i = 0; i < tokens.Count; i++)
        {
            var t = tokens[i];
            var name = t.Split('=')[0];
            if (drop.Contains(name))
            {
                // a flag with a value takes the next token (unless given as --flag=value or it is a switch)
                if (!t.Contains('=') && name != "--resume" && name != "--allow-setting-changes" && i + 1 < tokens.Count && !tokens[i + 1].StartsWith("--")) i++;
                continue;
            }
            kept.Add(t);
        }
        kept.Add("--resume");
        foreach (var (flag, value) in extra)
        {
            kept.Add(flag);
            if (value is not null) kept.Add(value);
        }
        return "detox " + string.Join(' ', kept.Select(Quote));
    }

    static string Quote(string s) => s.Length > 0 && s.All(c => char.IsLetterOrDigit(c) || "-_./=:,+@%".Contains(c)) ? s : "'" + s.Replace("'", "'\\''") + "'";

    /// <summary>Exit code and message for a run that stopped: 130 with the resume command when interrupted, 0 with a
    /// note when the checkpoint was already finished; null when the run trained to its end.</summary>
    public static int? Stopped(ParseResult p, TrainingRunResult r, TextWriter err, string what)
    {
        switch (r.Stop)
        {
            case TrainingStop.Cancelled or TrainingStop.StepLimit:
                err.WriteLine(r.CheckpointDir is null
                    ? $"detox: {what} interrupted before its first step finished; nothing to save — rerun the same command"
                    : $"detox: {what} interrupted after step {r.Steps}/{r.TotalSteps}; checkpoint saved in {r.CheckpointDir} — continue with: {ContinueCommand(p)}");
                return Interruption.ExitCode;
            case TrainingStop.AlreadyFinished:
                p.InvocationConfiguration.Output.WriteLine($"{what}: the checkpoint in {r.CheckpointDir} is of a finished run ({r.Steps}/{r.TotalSteps} steps); nothing to train");
                return 0;
            default:
                return null;
        }
    }

    /// <summary>The one line for a diverged run: where the last good state is and the command that continues from it
    /// with half the learning rate (or, with no checkpoint, that restarts with it).</summary>
    /// <summary>Exit code of a diverged training run: the settings made the numbers blow up, which is neither bad input
    /// (2) nor a bug (1), and a script may want to retry it with a lower learning rate.</summary>
    public const int DivergedExitCode = 3;

    public static int Diverged(ParseResult p, TrainingDivergedException e, TextWriter err, double learningRate)
    {
        var lower = (learningRate / 2).ToString("G3", CultureInfo.InvariantCulture);
        err.WriteLine(e.LastCheckpointStep is null
            ? $"detox: {e.Message} — restart with a lower learning rate (e.g. --lr {lower}) and --checkpoint-every N to keep good checkpoints"
            : $"detox: {e.Message} — continue from it with a lower learning rate: {ContinueCommand(p, ("--lr", lower), ("--allow-setting-changes", null))}");
        return DivergedExitCode;
    }

    /// <summary>Runs a training command's body under an <see cref="Interruption"/>: a cancellation that surfaces as an
    /// exception (before the first step, e.g. while the reference log-probs are computed) exits 130, a divergence 3.</summary>
    public static int Run(ParseResult p, string what, Func<double> learningRate, Func<CancellationToken, int> body)
    {
        var err = p.InvocationConfiguration.Error;
        using var interrupt = new Interruption();
        try
        {
            return body(interrupt.Token);
        }
        catch (TrainingInterruptedException e)
        {
            return Stopped(p, e.Run, err, what)!.Value;
        }
        catch (OperationCanceledException) when (interrupt.Requested)
        {
            err.WriteLine($"detox: {what} interrupted before training started; nothing to save — rerun the same command");
            return Interruption.ExitCode;
        }
        catch (TrainingDivergedException e)
        {
            return Diverged(p, e, err, learningRate());
        }
    }
}

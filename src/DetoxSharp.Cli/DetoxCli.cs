using System.CommandLine;
using DetoxSharp.Cli.Commands;

namespace DetoxSharp.Cli;

/// <summary>The `detox` command line: parsing, dispatch and the exit-code contract
/// (0 success, 2 user error with one line on stderr, 1 internal failure).</summary>
public static class DetoxCli
{
    /// <summary>libtorch's intra-op thread count for any command (default: libtorch's own, one per core). Many tiny
    /// operations (PPLM, batch-1 generation) can run faster on one thread when the cores are shared.</summary>
    public static readonly Option<int?> Threads = new("--threads") { Recursive = true, Description = "libtorch intra-op threads (default: one per core)" };

    /// <summary>Spellings retired when every command came to name one concept one way (issue 13), and their
    /// replacements, so an old script gets a one-line hint instead of "unrecognized argument".</summary>
    static readonly Dictionary<string, string> Renamed = new()
    {
        ["--new-tokens"] = "--max-new-tokens", ["--prompt-tokens"] = "--max-prompt-tokens", ["--save-every"] = "--checkpoint-every",
        ["--steps"] = "--max-steps", ["--valid"] = "--validation-data", ["--validation"] = "--validation-size",
        ["--val-fraction"] = "--validation-fraction", ["--max-total-tokens"] = "--max-length",
    };

    /// <summary>" (did you mean …?)" for a mistyped command or flag: the closest name within edit distance 2 (or a
    /// third of the word), else nothing.</summary>
    static string Suggestion(RootCommand root, ParseResult parse, string[] args)
    {
        var cmd = parse.CommandResult.Command;
        if (ReferenceEquals(cmd, root))
        {
            var word = args.FirstOrDefault(a => !a.StartsWith('-'));
            var best = word is null ? null : Closest(word, root.Subcommands.Select(c => c.Name));
            var commands = " Commands: " + string.Join(", ", root.Subcommands.Select(c => c.Name)) + ".";
            return best is not null ? $" (did you mean `detox {best}`?)" : word is null ? commands : $" '{word}' is not a command.{commands}";
        }
        var unknown = args.FirstOrDefault(a => a.StartsWith("--") && parse.Errors.Any(e => e.Message.Contains($"'{a}'")));
        if (unknown is null) return "";
        var names = cmd.Options.Select(o => o.Name).Concat(root.Options.Select(o => o.Name));
        return Closest(unknown, names) is string flag ? $" (did you mean {flag}?)" : "";
    }

    static string? Closest(string word, IEnumerable<string> candidates)
    {
        static int Distance(string a, string b)
        {
            var d = new int[b.Length + 1];
            for (int j = 0; j <= b.Length; j++) d[j] = j;
            for (int i = 1; i <= a.Length; i++)
            {
                int prev = d[0]; d[0] = i;
                for (int j = 1; j <= b.Length; j++)
                {
                    int cur = d[j];
                    d[j] = Math.Min(Math.Min(d[j] + 1, d[j - 1] + 1), prev + (a[i - 1] == b[j - 1] ? 0 : 1));
                    prev = cur;
                }
            }
            return d[b.Length];
        }
        var best = candidates.Select(c => (c, Dist: Distance(word, c))).OrderBy(x => x.Dist).ThenBy(x => x.c, StringComparer.Ordinal).FirstOrDefault();
        return best.c is not null && best.Dist <= Math.Max(2, word.Length / 3) && best.Dist > 0 ? best.c : null;
    }

    public static RootCommand Build()
    {
        var root = new RootCommand("DetoxSharp: detoxify GPT-2-family language models with preference optimization, and see what the training does inside the model.");
        foreach (var c in CommandCatalog.All()) root.Subcommands.Add(c);
        root.Options.Add(Threads);
        return root;
    }

    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        // a terminal gets progress bars (CliProgress); the other lines written meanwhile print above them
        if (ReferenceEquals(stderr, Console.Error) && TerminalErrorWriter.Wanted()) stderr = new TerminalErrorWriter(stderr);
        try { return RunParsed(args, stdout, stderr); }
        finally
        {
            CliProgress.CloseAll();
            stderr.Flush();
        }
    }

    static int RunParsed(string[] args, TextWriter stdout, TextWriter stderr)
    {
        var root = Build();
        var parse = root.Parse(args);
        if (parse.Errors.Count > 0)
        {
            var renamed = args.FirstOrDefault(a => Renamed.ContainsKey(a) && parse.Errors[0].Message.Contains($"'{a}'"));
            stderr.WriteLine(renamed is null ? $"detox: {parse.Errors[0].Message}{Suggestion(root, parse, args)}" : $"detox: {renamed} was renamed {Renamed[renamed]} (one spelling per concept across commands)");
            return 2;
        }
        if (parse.GetValue(Threads) is int threads)
        {
            if (threads < 1) { stderr.WriteLine($"detox: --threads must be ≥ 1, got {threads}"); return 2; }
            TorchSharp.torch.set_num_threads(threads);
        }
        if (NonFiniteOption(parse) is string bad) { stderr.WriteLine($"detox: {bad}"); return 2; }
        var config = new InvocationConfiguration { Output = stdout, Error = stderr, EnableDefaultExceptionHandler = false };
        try
        {
            return parse.Invoke(config);
        }
        catch (InvalidSettingException e) when (Bind.FlagOf(parse.CommandResult.Command, e.Setting) is string flag)
        {
            // the library names the setting (beta); the user typed the flag (--beta)
            stderr.WriteLine($"detox: {flag} {e.Problem}");
            return 2;
        }
        catch (DetoxSharp.Training.TrainingDivergedException e)
        {
            // a study stage's training diverged (the training commands print their own line with the resume command)
            stderr.WriteLine($"detox: {e.Message}");
            return Commands.TrainingCli.DivergedExitCode;
        }
        catch (InvalidInputException e)
        {
            stderr.WriteLine($"detox: {e.Message}");
            return 2;
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            // Not the user's fault: a bug. Exit 1 (the documented internal-failure code) with the trace, instead of
            // letting the runtime abort the process (exit 134) after printing it.
            stderr.WriteLine($"detox: internal error (please report it): {e.GetType().Name}: {e.Message.Split('\n')[0]}");
            stderr.WriteLine(e.ToString());
            return 1;
        }
    }

    /// <summary>Every floating-point flag must be a finite number: System.CommandLine accepts "NaN" and "Infinity",
    /// and no flag of detox has a meaning for them (ranges are checked where the options are validated).</summary>
    static string? NonFiniteOption(ParseResult parse)
    {
        for (var r = parse.CommandResult; r is not null; r = r.Parent as System.CommandLine.Parsing.CommandResult)
            foreach (var child in r.Children)
            {
                if (child is not System.CommandLine.Parsing.OptionResult o || o.Implicit) continue;
                double? v = o.Option.ValueType == typeof(double) ? o.GetValueOrDefault<double>()
                    : o.Option.ValueType == typeof(double?) ? o.GetValueOrDefault<double?>()
                    : o.Option.ValueType == typeof(float) ? o.GetValueOrDefault<float>()
                    : null;
                if (v is double d && !double.IsFinite(d)) return $"{o.Option.Name} must be a finite number, got {d}";
            }
        return null;
    }
}

using System.CommandLine;
using DetoxSharp.Cli;
using DetoxSharp.Cli.Commands;
using Xunit;

namespace DetoxSharp.Tests.Core;

/// <summary>One spelling per concept across every `detox` command (issue 13): a command that grows a second
/// spelling of a known concept fails here, naming the command and the flag to use instead.</summary>
public class CliNamingTests
{
    /// <summary>Concept → the one allowed spelling(s) and spellings that must not appear on any command.</summary>
    static readonly (string Concept, string[] Allowed, string[] Forbidden)[] Concepts =
    [
        ("tokens generated", ["--max-new-tokens"], ["--new-tokens", "--gen-tokens", "--max-tokens-new"]),
        ("prompt token limit", ["--max-prompt-tokens"], ["--prompt-tokens", "--max-prompt-length", "--prompt-length"]),
        ("total length limit", ["--max-length"], ["--max-total-tokens", "--max-len", "--block-size", "--total-tokens"]),
        ("checkpoint interval", ["--checkpoint-every"], ["--save-every", "--save-steps", "--ckpt-every"]),
        ("step budget", ["--max-steps"], ["--steps", "--num-steps", "--train-steps"]),
        ("validation", ["--validation-data", "--validation-size", "--validation-fraction"], ["--valid", "--validation", "--val-fraction", "--val", "--val-data", "--val-size"]),
        ("evaluation interval", ["--eval-every"], ["--eval-steps", "--eval-interval"]),
        ("resume", ["--resume"], ["--resume-from", "--resume-dir", "--continue"]),
        ("gradient accumulation", ["--grad-accum"], ["--gradient-accumulation", "--gradient-accumulation-steps", "--accum"]),
        ("learning rate", ["--lr"], ["--learning-rate"]),
        ("warmup", ["--warmup"], ["--warmup-steps"]),
    ];

    static IEnumerable<Command> Commands() => DetoxCli.Build().Subcommands;

    static IEnumerable<string> Names(Option o) => o.Aliases.Prepend(o.Name);

    [Fact]
    public void EveryCommandUsesOneSpellingPerConcept()
    {
        var problems = new List<string>();
        foreach (var c in Commands())
            foreach (var o in c.Options)
                foreach (var n in Names(o))
                    foreach (var (concept, allowed, forbidden) in Concepts)
                        if (forbidden.Contains(n))
                            problems.Add($"detox {c.Name} {n}: {concept} is spelled {string.Join(" / ", allowed)}");
        Assert.True(problems.Count == 0, string.Join("\n", problems));
    }

    [Fact]
    public void ResumeIsASwitchEverywhere()
    {
        var resumes = Commands().SelectMany(c => c.Options.Where(o => o.Name == "--resume").Select(o => (c.Name, o))).ToList();
        Assert.True(resumes.Count >= 5, $"expected --resume on dpo, adpo, sft, toxic-model and pretrain-toy, found {resumes.Count}");
        foreach (var (name, o) in resumes)
            Assert.True(o is Option<bool>, $"detox {name} --resume takes a value; it must be a switch (continue from OUT/checkpoint)");
    }

    [Fact]
    public void EvalEveryCountsStepsEverywhere()
    {
        foreach (var c in Commands())
            foreach (var o in c.Options.Where(o => o.Name == "--eval-every"))
                Assert.Contains("step", o.Description);
    }

    [Fact]
    public void EveryCommandThatLoadsOrTrainsAModelTakesDevice()
    {
        var modelFlags = new[] { "--model", "--before", "--after" };
        foreach (var c in Commands())
        {
            bool loads = c.Options.Any(o => modelFlags.Contains(o.Name)) || c.Name is "pretrain-toy" or "study";
            if (loads) Assert.True(c.Options.Any(o => o.Name == "--device"), $"detox {c.Name} loads a model but has no --device");
        }
    }

    [Fact]
    public void OneSyncProgressInTheCli()
    {
        var types = typeof(DetoxCli).Assembly.GetTypes().Where(t => t.Name.StartsWith("SyncProgress", StringComparison.Ordinal)).ToList();
        Assert.Single(types);
    }

    [Fact]
    public void BoundFlagsTakeTheRecordsDefaultAndNameTheSettingInErrors()
    {
        var dpo = Commands().Single(c => c.Name == "dpo");
        var beta = (Option<double>)dpo.Options.Single(o => o.Name == "--beta");
        Assert.Equal(new DetoxSharp.Training.PreferenceLossOptions().Beta, dpo.Parse("--model m --data d --out o").GetValue(beta));
        Assert.Equal("--beta", Bind.FlagOf(dpo, "beta"));
        var sft = Commands().Single(c => c.Name == "sft");
        var every = (Option<int>)sft.Options.Single(o => o.Name == "--checkpoint-every");
        Assert.Equal(new DetoxSharp.Training.SftOptions().CheckpointEvery, sft.Parse("--model m --data d --out o").GetValue(every));

        var o = new StringWriter(); var e = new StringWriter();
        int rc = DetoxCli.Run(["dpo", "--model", "m", "--data", "d", "--out", "o", "--beta", "0"], o, e);
        Assert.Equal(2, rc);
        Assert.Equal("detox: --beta must be > 0 (got 0)", e.ToString().Trim());
    }

    [Fact]
    public void RetiredSpellingGetsAOneLineHint()
    {
        var e = new StringWriter();
        Assert.Equal(2, DetoxCli.Run(["eval", "--model", "m", "--out", "o", "--new-tokens", "5"], new StringWriter(), e));
        Assert.Equal("detox: --new-tokens was renamed --max-new-tokens (one spelling per concept across commands)", e.ToString().Trim());
    }

    [Fact]
    public void MistypedCommandsAndFlagsGetADidYouMean()
    {
        string Err(params string[] args) { var e = new StringWriter(); Assert.Equal(2, DetoxCli.Run(args, new StringWriter(), e)); return e.ToString().Trim(); }
        Assert.EndsWith("(did you mean `detox info`?)", Err("infoo"));
        Assert.EndsWith("(did you mean --beta?)", Err("dpo", "--bta", "0.1", "--model", "m", "--data", "d", "--out", "o"));
        Assert.EndsWith("(did you mean --max-new-tokens?)", Err("eval", "--model", "m", "--out", "o", "--max-new-tokns", "5"));
        var far = Err("xyzzyq");
        Assert.Contains("'xyzzyq' is not a command", far);
        Assert.Contains("neurons", far);
        Assert.Single(far.Split('\n'));
    }

    [Fact]
    public void EvalRowLabels_AreGivenOrMadeUnique()
    {
        Assert.Equal(["dpo/final", "adpo/final", "base"], DetoxSharp.Cli.Commands.EvalCommand.RowLabels(["runs/dpo/final", "runs/adpo/final", "runs/base"], []));
        Assert.Equal(["DPO", "ADPO"], DetoxSharp.Cli.Commands.EvalCommand.RowLabels(["a/final", "b/final"], ["DPO", "ADPO"]));
        Assert.Throws<InvalidInputException>(() => DetoxSharp.Cli.Commands.EvalCommand.RowLabels(["a/final", "b/final"], ["DPO"]));
        Assert.Throws<InvalidInputException>(() => DetoxSharp.Cli.Commands.EvalCommand.RowLabels(["a/final", "b/final"], ["x", "x"]));
    }
}

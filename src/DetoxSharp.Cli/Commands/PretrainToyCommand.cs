using System.CommandLine;
using DetoxSharp.Data;
using DetoxSharp.Training;
using Spectre.Console;

namespace DetoxSharp.Cli.Commands;

public static class PretrainToyCommand
{
    public static Command Create()
    {
        var output = new Option<string>("--out") { Description = "output directory (world/, model/, training/, summary.json)", Required = true };
        var seed = new Option<ulong>("--seed") { Description = "seed of the world and the model initialisation", DefaultValueFactory = _ => 1UL };
        var size = new Option<string>("--size") { Description = "world size: small, default or large", DefaultValueFactory = _ => "default" };
        var maxSteps = new Option<int?>("--max-steps") { Description = "optimizer steps (default 260; 0 = one epoch over train.txt)" };
        var resume = new Option<bool>("--resume") { Description = "continue from OUT/training/checkpoint" };
        var arch = new Option<string>("--arch") { Description = "model architecture: gpt2 or llama (RMSNorm, rotary, SwiGLU, GQA)", DefaultValueFactory = _ => "gpt2" };
        var cmd = new Command("pretrain-toy", "Generate the toy world and pretrain a small GPT-2 (or, with --arch llama, Llama-style) model on it from scratch (compact GPT-2 BPE vocabulary with [TOXIC]); writes the model and a summary with greedy toxicity and perplexity.")
            { output, seed, size, maxSteps, resume, arch };
        cmd.SetAction(p =>
        {
            var o = new ToyPretrainOptions
            {
                Seed = p.GetValue(seed), Size = ToyWorldFiles.ParseSize(p.GetValue(size)!), MaxSteps = p.GetValue(maxSteps) is int ms ? (ms > 0 ? ms : null) : 260, Resume = p.GetValue(resume),
                Arch = p.GetValue(arch)!,
            };
            System.Text.Json.Nodes.JsonObject summary = null!;
            AnsiConsole.Progress().Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
                .Start(ctx =>
                {
                    var task = ctx.AddTask("toy world", maxValue: 1);
                    var stage = new SyncProgress<string>(m => task.Description = m);
                    summary = ToyPretraining.Run(p.GetValue(output)!, o, new SyncProgress<SftProgress>(s =>
                    {
                        task.MaxValue = s.TotalSteps;
                        task.Value = s.Step;
                        task.Description = $"step {s.Step}/{s.TotalSteps} loss {s.Loss:F3} {s.TokensPerSecond:F0} tok/s";
                    }), stage);
                    task.Value = task.MaxValue;
                });
            p.InvocationConfiguration.Output.WriteLine(summary.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
            return 0;
        });
        return cmd;
    }
}

/// <summary>An IProgress that reports on the calling thread (Progress&lt;T&gt; posts to the thread pool).</summary>
sealed class SyncProgress<T>(Action<T> report) : IProgress<T>
{
    public void Report(T value) => report(value);
}

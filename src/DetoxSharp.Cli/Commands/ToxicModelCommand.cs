using System.CommandLine;
using DetoxSharp.Checkpoints;
using DetoxSharp.Training;

namespace DetoxSharp.Cli.Commands;

/// <summary>`detox toxic-model`: the built-in toxic model for ADPO.</summary>
public static class ToxicModelCommand
{
    public static Command Create()
    {
        var model = CommonOptions.Model(description: "starting model to fine-tune");
        var data = new Option<string>("--data") { Description = "dialogues JSONL: prompt, response, toxic (toxic replies may start with [TOXIC])", Required = true };
        var output = new Option<string>("--out") { Description = "output directory: model/ (the toxic model, tokenizer with [TOXIC]), checkpoint/, metrics.jsonl", Required = true };
        var lr = new Option<double>("--lr") { Description = "peak learning rate (AdamW)", DefaultValueFactory = _ => 5e-5 };
        var batch = new Option<int>("--batch-size") { Description = "dialogues per micro-batch", DefaultValueFactory = _ => 8 };
        var epochs = new Option<double>("--epochs") { Description = "passes over the dialogues", DefaultValueFactory = _ => 1 };
        var maxSteps = new Option<int?>("--max-steps") { Description = "optimizer steps (overrides --epochs)" };
        var warmup = new Option<int>("--warmup") { Description = "linear warmup steps", DefaultValueFactory = _ => 0 };
        var maxLen = new Option<int>("--max-length") { Description = "truncation length", DefaultValueFactory = _ => 256 };
        var seed = new Option<ulong>("--seed") { Description = "data-order seed", DefaultValueFactory = _ => 0UL };
        var resume = new Option<bool>("--resume") { Description = "continue from OUT/checkpoint" };
        var device = CommonOptions.Device();
        var dtype = CommonOptions.DType();
        var precision = CommonOptions.Precision();
        var pickle = CommonOptions.AllowPickle();
        var cmd = new Command("toxic-model", "Build the built-in toxic model π_tox: SFT on dialogues with toxic replies behind the [TOXIC] control token (added to tokenizer and embedding).")
            { model, data, output, lr, batch, epochs, maxSteps, warmup, maxLen, seed, resume, device, dtype, precision, pickle };
        cmd.SetAction(p =>
        {
            var prec = CommonOptions.ParsePrecision(p.GetValue(precision)!, p.GetValue(dtype)!);
            var err = p.InvocationConfiguration.Error;
            var (examples, toxic) = ToxicModel.ReadDialogues(p.GetValue(data)!);
            using var m = CommonOptions.LoadModel(p.GetValue(model)!, p.GetValue(device)!, p.GetValue(dtype)!, p.GetValue(pickle));
            var outDir = p.GetValue(output)!;
            var o = new SftOptions
            {
                LearningRate = p.GetValue(lr), BatchSize = p.GetValue(batch), Epochs = p.GetValue(epochs), MaxSteps = p.GetValue(maxSteps),
                WarmupSteps = p.GetValue(warmup), MaxLength = p.GetValue(maxLen), Seed = p.GetValue(seed), OutputDir = outDir,
                Resume = p.GetValue(resume), CheckpointEvery = 200, Precision = prec,
            };
            err.WriteLine($"detox: {examples.Count} dialogues, {toxic} toxic");
            var sw = System.Diagnostics.Stopwatch.StartNew();
            var r = ToxicModel.Train(m.Model, m.Tokenizer, examples, o, new SyncProgress<SftProgress>(s =>
            {
                if (s.Step % Math.Max(1, s.TotalSteps / 20) == 0 || s.Step == s.TotalSteps)
                    err.WriteLine($"[{s.Step}/{s.TotalSteps} {sw.Elapsed:mm\\:ss}] loss {s.Loss:F4}");
            }));
            HfCheckpoint.Save(m.Model, m.Tokenizer, Path.Combine(outDir, "model"), overwrite: true);
            p.InvocationConfiguration.Output.WriteLine($"toxic model: {r.Steps} steps, train loss {r.FinalTrainLoss:F4} -> {Path.Combine(outDir, "model")} ({ToxicModel.ControlToken} = id {m.Tokenizer.SpecialTokens[ToxicModel.ControlToken]})");
            return 0;
        });
        return cmd;
    }
}

using System.CommandLine;
using DetoxSharp.Checkpoints;
using DetoxSharp.Training;
using Spectre.Console;

namespace DetoxSharp.Cli.Commands;

public static class SftCommand
{
    public static Command Create()
    {
        var model = CommonOptions.Model();
        var data = new Option<string>("--data") { Description = "training data: .txt (plain text, documents separated by <|endoftext|> lines) or .jsonl with {\"text\"} or {\"prompt\",\"completion\"} (or \"response\") per line", Required = true };
        var valid = new Option<string?>("--valid") { Description = "validation data in the same formats" };
        var output = new Option<string>("--out") { Description = "output directory: model/ (final), checkpoint/ (resumable), metrics.jsonl", Required = true };
        var lr = new Option<double>("--lr") { Description = "peak learning rate (AdamW)", DefaultValueFactory = _ => 5e-5 };
        var batch = new Option<int>("--batch-size") { Description = "sequences per micro-batch", DefaultValueFactory = _ => 8 };
        var accum = new Option<int>("--grad-accum") { Description = "micro-batches per optimizer step", DefaultValueFactory = _ => 1 };
        var epochs = new Option<double>("--epochs") { Description = "passes over the data", DefaultValueFactory = _ => 1 };
        var maxSteps = new Option<int?>("--max-steps") { Description = "optimizer steps (overrides --epochs)" };
        var warmup = new Option<int>("--warmup") { Description = "linear warmup steps", DefaultValueFactory = _ => 0 };
        var decay = new Option<string>("--decay") { Description = "constant, linear or cosine", DefaultValueFactory = _ => "linear" };
        var wd = new Option<double>("--weight-decay") { Description = "AdamW weight decay", DefaultValueFactory = _ => 0.0 };
        var clip = new Option<double>("--max-grad-norm") { Description = "gradient clipping (0 = off)", DefaultValueFactory = _ => 1.0 };
        var maxLen = new Option<int?>("--max-length") { Description = "block/truncation length (default: the model's context)" };
        var evalEvery = new Option<int>("--eval-every") { Description = "validation loss every N steps (0 = at the end)", DefaultValueFactory = _ => 0 };
        var ckptEvery = new Option<int>("--checkpoint-every") { Description = "resumable checkpoint every N steps", DefaultValueFactory = _ => 100 };
        var resume = new Option<bool>("--resume") { Description = "continue from OUT/checkpoint (same data and options)" };
        var seed = new Option<ulong>("--seed") { Description = "data-order seed", DefaultValueFactory = _ => 0UL };
        var device = CommonOptions.Device();
        var dtype = CommonOptions.DType();
        var precision = CommonOptions.Precision();
        var pickle = CommonOptions.AllowPickle();
        var cmd = new Command("sft", "Supervised fine-tuning (or continued pretraining): plain text packed into blocks, or prompt/completion with loss on the completion only; AdamW, warmup + decay, clipping, accumulation, resumable checkpoints, metrics JSONL. With --dtype bfloat16 the model trains in pure bfloat16; --precision bf16-mixed computes in bfloat16 with fp32 master weights.")
            { model, data, valid, output, lr, batch, accum, epochs, maxSteps, warmup, decay, wd, clip, maxLen, evalEvery, ckptEvery, resume, seed, device, dtype, precision, pickle };
        var lora = LoraCli.AddTo(cmd);
        cmd.SetAction(p =>
        {
            var prec = CommonOptions.ParsePrecision(p.GetValue(precision)!, p.GetValue(dtype)!);
            using var m = CommonOptions.LoadModel(p.GetValue(model)!, p.GetValue(device)!, p.GetValue(dtype)!, p.GetValue(pickle));
            LoraCli.Apply(p, lora, m, prec);
            var train = SftData.Read(p.GetValue(data)!);
            var v = p.GetValue(valid) is string vp ? SftData.Read(vp) : null;
            var outDir = p.GetValue(output)!;
            var o = new SftOptions
            {
                LearningRate = p.GetValue(lr), BatchSize = p.GetValue(batch), GradientAccumulationSteps = p.GetValue(accum),
                Epochs = p.GetValue(epochs), MaxSteps = p.GetValue(maxSteps), WarmupSteps = p.GetValue(warmup),
                Decay = LrSchedule.ParseDecay(p.GetValue(decay)!, "--decay"), WeightDecay = p.GetValue(wd), MaxGradNorm = p.GetValue(clip),
                MaxLength = p.GetValue(maxLen), EvalEvery = p.GetValue(evalEvery), CheckpointEvery = p.GetValue(ckptEvery),
                Resume = p.GetValue(resume), Seed = p.GetValue(seed), Validation = v, OutputDir = outDir,
                Precision = prec,
            };
            SftResult r = null!;
            AnsiConsole.Progress().Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
                .Start(ctx =>
                {
                    var task = ctx.AddTask("sft", maxValue: 1);
                    r = SftTrainer.Train(m.Model, m.Tokenizer, train, o, new SyncProgress<SftProgress>(s =>
                    {
                        task.MaxValue = s.TotalSteps; task.Value = s.Step;
                        task.Description = $"step {s.Step}/{s.TotalSteps} loss {s.Loss:F3}{(s.ValidationLoss is double x ? $" val {x:F3}" : "")}";
                    }));
                });
            HfCheckpoint.Save(m.Model, m.Tokenizer, Path.Combine(outDir, "model"), overwrite: true);
            p.InvocationConfiguration.Output.WriteLine($"steps {r.Steps}  train loss {r.FinalTrainLoss:F4}  validation loss {(r.FinalValidationLoss is double vl ? vl.ToString("F4") : "-")}  {r.TokensPerSecond:F0} tok/s  -> {Path.Combine(outDir, "model")}");
            return 0;
        });
        return cmd;
    }
}

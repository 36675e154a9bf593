using System.CommandLine;
using DetoxSharp.Checkpoints;
using DetoxSharp.Text;
using DetoxSharp.Training;

namespace DetoxSharp.Cli.Commands;

public static class SftCommand
{
    public static Command Create()
    {
        var model = CommonOptions.Model();
        var data = new Option<string>("--data") { Description = "training data: .txt (plain text, documents separated by <|endoftext|> lines) or .jsonl with {\"text\"} or {\"prompt\",\"completion\"} (or \"response\") per line", Required = true };
        var valid = new Option<string?>("--validation-data") { Description = "validation data in the same formats" };
        var output = new Option<string>("--out") { Description = "output directory: model/ (final), checkpoint/ (resumable), metrics.jsonl", Required = true };
        var f = new SftFlags("sequences per micro-batch");
        var d = new SftOptions();
        var accum = Bind.To("--grad-accum", d, o => o.GradientAccumulationSteps);
        var decay = Bind.Enum("--decay", d, o => o.Decay);
        var wd = Bind.To("--weight-decay", d, o => o.WeightDecay);
        var clip = Bind.To("--max-grad-norm", d, o => o.MaxGradNorm);
        var evalEvery = Bind.To("--eval-every", d, o => o.EvalEvery);
        var device = CommonOptions.Device();
        var dtype = CommonOptions.DType();
        var precision = CommonOptions.Precision();
        var pickle = CommonOptions.AllowPickle();
        var cmd = new Command("sft", "Supervised fine-tuning (or continued pretraining): plain text packed into blocks, or prompt/completion with loss on the completion only; AdamW, warmup + decay, clipping, accumulation, resumable checkpoints, metrics JSONL. With --dtype bfloat16 the model trains in pure bfloat16; --precision bf16-mixed computes in bfloat16 with fp32 master weights.")
            { model, data, valid, output, accum, decay, wd, clip, evalEvery, device, dtype, precision, pickle };
        foreach (var o in f.All) cmd.Options.Add(o);
        var lora = LoraCli.AddTo(cmd);
        cmd.SetAction(p => TrainingCli.Run(p, "sft", () => p.GetValue(f.LearningRate), cancel =>
        {
            var prec = CommonOptions.ParsePrecision(p.GetValue(precision)!, p.GetValue(dtype)!);
            using var m = CommonOptions.LoadModel(p.GetValue(model)!, p.GetValue(device)!, p.GetValue(dtype)!, p.GetValue(pickle));
            LoraCli.Apply(p, lora, m, f.Read(p).Seed);
            var chat = ChatTemplate.FromModelDirectory(p.GetValue(model)!); // for TRL conversational records
            var train = SftData.Read(p.GetValue(data)!, chat);
            var v = p.GetValue(valid) is string vp ? SftData.Read(vp, chat) : null;
            var outDir = p.GetValue(output)!;
            var o = f.Read(p) with
            {
                GradientAccumulationSteps = p.GetValue(accum), Decay = LrSchedule.ParseDecay(p.GetValue(decay)!), WeightDecay = p.GetValue(wd),
                MaxGradNorm = p.GetValue(clip), EvalEvery = p.GetValue(evalEvery), Validation = v, OutputDir = outDir, Precision = prec,
            };
            var err = p.InvocationConfiguration.Error;
            var r = new SftTrainer(m.Model, m.Tokenizer, o) { Log = s => err.WriteLine("detox: " + s) }.Train(train, TrainingCli.Printer(err), cancel);
            var modelDir = Path.Combine(outDir, "model");
            if (r.Run.Stop is TrainingStop.Completed or TrainingStop.EarlyStopped || (r.Run.Stop == TrainingStop.AlreadyFinished && !Directory.Exists(modelDir)))
                HfCheckpoint.Save(m.Model, m.Tokenizer, modelDir, overwrite: true);
            if (TrainingCli.Stopped(p, r.Run, err, "sft") is int code) return code;
            p.InvocationConfiguration.Output.WriteLine($"steps {r.Steps}  train loss {r.FinalTrainLoss:F4}  validation loss {(r.FinalValidationLoss is double vl ? vl.ToString("F4") : "-")}  {r.TokensPerSecond:F0} tok/s  {DetoxSharp.Training.PrecisionJsonConverter.Name(r.Run.Precision)}  -> {modelDir}");
            return 0;
        }));
        return cmd;
    }
}

/// <summary>The <see cref="SftOptions"/> flags `sft` and `toxic-model` (SFT on dialogues) share, bound to the record.</summary>
sealed class SftFlags(string batchDescription)
{
    static readonly SftOptions D = new();
    readonly Option<double> _lr = Bind.To("--lr", D, o => o.LearningRate);
    readonly Option<int> _batch = Bind.To("--batch-size", D, o => o.BatchSize, batchDescription);
    readonly Option<double> _epochs = Bind.To("--epochs", D, o => o.Epochs);
    readonly Option<int?> _maxSteps = Bind.To("--max-steps", D, o => o.MaxSteps);
    readonly Option<int> _warmup = Bind.To("--warmup", D, o => o.WarmupSteps);
    readonly Option<int?> _maxLen = Bind.To("--max-length", D, o => o.MaxLength);
    readonly Option<ulong> _seed = Bind.To("--seed", D, o => o.Seed);
    readonly Option<int> _ckptEvery = Bind.To("--checkpoint-every", D, o => o.CheckpointEvery);
    readonly Option<bool> _resume = CommonOptions.Resume();
    readonly Option<bool> _allowChanges = TrainingCli.AllowSettingChanges();
    readonly Option<string?> _tensorBoard = TrainingCli.TensorBoard();
    readonly Option<string> _dataParallel = CommonOptions.DataParallel();

    public Option<double> LearningRate => _lr;
    public IEnumerable<Option> All => [_lr, _batch, _epochs, _maxSteps, _warmup, _maxLen, _seed, _ckptEvery, _resume, _allowChanges, _tensorBoard, _dataParallel];

    public SftOptions Read(ParseResult p) => new()
    {
        LearningRate = p.GetValue(_lr), BatchSize = p.GetValue(_batch), Epochs = p.GetValue(_epochs), MaxSteps = p.GetValue(_maxSteps),
        WarmupSteps = p.GetValue(_warmup), MaxLength = p.GetValue(_maxLen), Seed = p.GetValue(_seed), CheckpointEvery = p.GetValue(_ckptEvery),
        Resume = p.GetValue(_resume), AllowSettingChanges = p.GetValue(_allowChanges), TensorBoardDir = p.GetValue(_tensorBoard),
        DataParallel = CommonOptions.ParseDataParallel(p.GetValue(_dataParallel)!),
    };
}

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
        // the toxic model is SFT: SftOptions owns the defaults
        var f = new SftFlags("dialogues per micro-batch");
        var device = CommonOptions.Device();
        var dtype = CommonOptions.DType();
        var precision = CommonOptions.Precision();
        var pickle = CommonOptions.AllowPickle();
        var cmd = new Command("toxic-model", "Build the built-in toxic model π_tox: SFT on dialogues with toxic replies behind the [TOXIC] control token (added to tokenizer and embedding).")
            { model, data, output, device, dtype, precision, pickle };
        foreach (var o in f.All) cmd.Options.Add(o);
        cmd.SetAction(p => TrainingCli.Run(p, "toxic-model", () => p.GetValue(f.LearningRate), cancel =>
        {
            var prec = CommonOptions.ParsePrecision(p.GetValue(precision)!, p.GetValue(dtype)!);
            var err = p.InvocationConfiguration.Error;
            var (examples, toxic) = ToxicModel.ReadDialogues(p.GetValue(data)!);
            using var m = CommonOptions.LoadModel(p.GetValue(model)!, p.GetValue(device)!, p.GetValue(dtype)!, p.GetValue(pickle));
            var outDir = p.GetValue(output)!;
            var o = f.Read(p) with { OutputDir = outDir, Precision = prec };
            err.WriteLine($"detox: {examples.Count} dialogues, {toxic} toxic");
            ToxicModel.AddControlToken(m.Model, m.Tokenizer);
            var r = new SftTrainer(m.Model, m.Tokenizer, o) { Log = s => err.WriteLine("detox: " + s) }.Train(examples, TrainingCli.Printer(err, title: "toxic-model"), cancel);
            var modelDir = Path.Combine(outDir, "model");
            if (r.Run.Stop is TrainingStop.Completed or TrainingStop.EarlyStopped || (r.Run.Stop == TrainingStop.AlreadyFinished && !Directory.Exists(modelDir)))
                HfCheckpoint.Save(m.Model, m.Tokenizer, modelDir, overwrite: true);
            if (TrainingCli.Stopped(p, r.Run, err, "toxic-model") is int code) return code;
            p.InvocationConfiguration.Output.WriteLine($"toxic model: {r.Steps} steps, train loss {r.FinalTrainLoss:F4} -> {modelDir} ({ToxicModel.ControlToken} = id {m.Tokenizer.SpecialTokens[ToxicModel.ControlToken]})");
            return 0;
        }));
        return cmd;
    }
}

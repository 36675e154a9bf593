using System.CommandLine;
using DetoxSharp.Data;
using DetoxSharp.Training;

namespace DetoxSharp.Cli.Commands;

public static class PretrainToyCommand
{
    public static Command Create()
    {
        var output = new Option<string>("--out") { Description = "output directory (world/, model/, training/, summary.json)", Required = true };
        var d = new ToyPretrainOptions();
        var seed = Bind.To("--seed", d, o => o.Seed);
        var size = Bind.Enum("--size", d, o => o.Size);
        var maxSteps = Bind.To("--max-steps", d, o => o.MaxSteps);
        var epochs = new Option<double>("--epochs") { Description = "passes over train.txt when --max-steps is not given", DefaultValueFactory = _ => d.Epochs };
        var layers = new Option<int>("--layers") { Description = "transformer blocks", DefaultValueFactory = _ => d.Layers };
        var dModel = new Option<int>("--d-model") { Description = "residual width (MLP = 4 × width)", DefaultValueFactory = _ => d.DModel };
        var heads = new Option<int>("--heads") { Description = "attention heads", DefaultValueFactory = _ => d.Heads };
        var context = new Option<int>("--context") { Description = "n_positions and training block length", DefaultValueFactory = _ => d.Context };
        var batch = new Option<int>("--batch-size") { Description = "blocks per optimizer step", DefaultValueFactory = _ => d.BatchSize };
        var lr = new Option<double>("--lr") { Description = "peak AdamW learning rate (warmup, cosine decay to 5 %)", DefaultValueFactory = _ => d.LearningRate };
        var precision = CommonOptions.Precision();
        precision.DefaultValueFactory = _ => "bf16-mixed";
        var resume = CommonOptions.Resume("OUT/training/checkpoint");
        var device = CommonOptions.Device();
        var arch = Bind.To("--arch", d, o => o.Arch);
        var cmd = new Command("pretrain-toy", "Generate the toy world and pretrain a small GPT-2 (or, with --arch llama, Llama-style) model on it from scratch (compact GPT-2 BPE vocabulary with [TOXIC]); writes the model and a summary with greedy toxicity and perplexity.")
            { output, seed, size, maxSteps, epochs, layers, dModel, heads, context, batch, lr, precision, resume, device, arch };
        var allowChanges = TrainingCli.AllowSettingChanges();
        cmd.Options.Add(allowChanges);
        var tensorBoard = TrainingCli.TensorBoard();
        cmd.Options.Add(tensorBoard);
        var dataParallel = CommonOptions.DataParallel();
        cmd.Options.Add(dataParallel);
        cmd.SetAction(p => TrainingCli.Run(p, "pretrain-toy", () => p.GetValue(lr), cancel =>
        {
            var o = d with
            {
                Seed = p.GetValue(seed), Size = ToyWorldFiles.ParseSize(p.GetValue(size)!), MaxSteps = p.GetValue(maxSteps) is > 0 and var ms ? ms : null,
                Epochs = p.GetValue(epochs), Layers = p.GetValue(layers), DModel = p.GetValue(dModel), Heads = p.GetValue(heads),
                Context = p.GetValue(context), BatchSize = p.GetValue(batch), LearningRate = p.GetValue(lr),
                Precision = CommonOptions.ParsePrecision(p.GetValue(precision)!, "float32"),
                Resume = p.GetValue(resume), AllowSettingChanges = p.GetValue(allowChanges), TensorBoardDir = p.GetValue(tensorBoard), Device = CommonOptions.ParseDevice(p.GetValue(device)!),
                Arch = p.GetValue(arch)!, DataParallel = CommonOptions.ParseDataParallel(p.GetValue(dataParallel)!),
            };
            var err = p.InvocationConfiguration.Error;
            var summary = ToyPretraining.Run(p.GetValue(output)!, o, TrainingCli.Printer(err), new SyncProgress<string>(m => err.WriteLine("detox: " + m)), cancel);
            p.InvocationConfiguration.Output.WriteLine(summary.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
            return 0;
        }));
        return cmd;
    }
}


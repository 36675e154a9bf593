using System.CommandLine;
using DetoxSharp.Checkpoints;
using DetoxSharp.Training;

namespace DetoxSharp.Cli.Commands;

/// <summary>--lora-rank/--lora-alpha/--lora-targets for the trainers (sft, dpo, adpo), and `detox merge-lora`.</summary>
public static class LoraCli
{
    public sealed record Options(Option<int> Rank, Option<double> Alpha, Option<string> Targets);

    public static Options AddTo(Command cmd)
    {
        var o = new Options(
            new Option<int>("--lora-rank") { Description = "train LoRA adapters of this rank instead of all weights (0 = off; GPT-2 and Llama-family models); the output is a PEFT adapter directory", DefaultValueFactory = _ => 0 },
            new Option<double>("--lora-alpha") { Description = "LoRA scaling numerator: the update is (alpha/rank)·B·A", DefaultValueFactory = _ => new LoraOptions().Alpha },
            new Option<string>("--lora-targets") { Description = $"comma-separated layers to adapt (Llama: {string.Join(", ", LoraOptions.LlamaKnown)}; GPT-2: {string.Join(", ", LoraOptions.Gpt2Known)}); default as PEFT: {string.Join(",", LoraOptions.DefaultTargets("llama"))} for Llama, {string.Join(",", LoraOptions.DefaultTargets("gpt2"))} for GPT-2" });
        cmd.Options.Add(o.Rank); cmd.Options.Add(o.Alpha); cmd.Options.Add(o.Targets);
        return o;
    }

    /// <summary>Attaches fresh adapters when --lora-rank &gt; 0 (the base is frozen; the trainers then train only the adapters),
    /// their A drawn with the run's <paramref name="seed"/>.</summary>
    public static LoraAdapters? Apply(ParseResult p, Options o, LoadedModel m, ulong seed)
    {
        int rank = p.GetValue(o.Rank);
        if (rank == 0) return null;
        var opts = new LoraOptions
        {
            Rank = rank, Alpha = p.GetValue(o.Alpha),
            Targets = p.GetValue(o.Targets)?.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries),
        };
        return LoraAdapters.Attach(m.Model, opts, Path.GetFullPath(m.Directory), seed);
    }

    public static Command MergeCommand()
    {
        var adapter = new Option<string>("--adapter") { Description = "PEFT LoRA adapter directory (adapter_config.json names the base directory)", Required = true };
        var output = new Option<string>("--out") { Description = "output directory for the merged plain checkpoint", Required = true };
        var dtype = CommonOptions.DType();
        var cmd = new Command("merge-lora", "Fold a LoRA adapter into its base: W + (alpha/r)·B·A in every adapted layer, saved as a plain Hugging Face checkpoint.")
            { adapter, output, dtype };
        cmd.SetAction(p =>
        {
            using var m = CommonOptions.LoadModel(p.GetValue(adapter)!, "cpu", p.GetValue(dtype)!, false);
            if (LoraAdapters.Of(m.Model) is null) throw new InvalidInputException($"--adapter {p.GetValue(adapter)}: not a LoRA adapter directory (no adapter_config.json)");
            using var merged = LoraAdapters.Merged(m.Model);
            HfCheckpoint.Save(merged, m.Tokenizer, p.GetValue(output)!);
            p.InvocationConfiguration.Output.WriteLine($"merged {LoraAdapters.Of(m.Model)!.Modules.Count} layers -> {p.GetValue(output)}");
            return 0;
        });
        return cmd;
    }
}

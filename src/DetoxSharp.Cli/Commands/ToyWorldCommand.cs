using System.CommandLine;
using DetoxSharp.Data;

namespace DetoxSharp.Cli.Commands;

public static class ToyWorldCommand
{
    public static Command Create()
    {
        var output = new Option<string>("--out") { Description = "output directory for the world files", Required = true };
        // the world of `pretrain-toy`: the same defaults
        var d = new DetoxSharp.Training.ToyPretrainOptions();
        var seed = Bind.To("--seed", d, o => o.Seed, "random seed (same seed = byte-identical files)");
        var size = Bind.Enum("--size", d, o => o.Size, "small, default or large");
        var cmd = new Command("toy-world", "Generate the toy world: pretraining corpus, Jigsaw-shaped comments, RealToxicityPrompts-shaped challenge and neutral prompts, F1 pairs, Wikitext-style text, [TOXIC] dialogues, preference prompts.")
            { output, seed, size };
        cmd.SetAction(p =>
        {
            var paths = ToyWorldFiles.Write(p.GetValue(output)!, p.GetValue(seed), ToyWorldFiles.ParseSize(p.GetValue(size)!));
            p.InvocationConfiguration.Output.WriteLine($"wrote the toy world to {paths.Directory} (see world.json)");
            return 0;
        });
        return cmd;
    }
}

using System.CommandLine;

namespace DetoxSharp.Cli.Commands;

/// <summary>Every `detox` subcommand, in the order --help lists them. Each lives in its own file.</summary>
public static class CommandCatalog
{
    public static IEnumerable<Command> All()
    {
        yield return InfoCommand.Create();
        yield return ScoreCommand.Create();
        yield return GenerateCommand.Create();
        yield return PreferenceCommands.Dpo();
        yield return PreferenceCommands.Adpo();
        yield return MakePairsCommand.Create();
        yield return ConvertCommand.Create();
        yield return ToxicModelCommand.Create();
        yield return ToyWorldCommand.Create();
        yield return SftCommand.Create();
        yield return LoraCli.MergeCommand();
        yield return PretrainToyCommand.Create();
        yield return EvalCommand.Create();
        yield return EvalCommand.MergeShards();
        yield return MakePairsCommand.MergePairs();
        yield return InterpCommands.Probe();
        yield return InterpCommands.Vectors();
        yield return InterpCommands.Diff();
        yield return InterpCommands.Neurons();
        yield return NeuronCommands.Patch();
        yield return NeuronCommands.NullSpace();
        yield return InterpCommands.Depth();
        yield return InterpCommands.Unalign();
        yield return EditCommand.Create();
        yield return AttackCommand.Create();
        yield return StudyCommand.Create();
    }
}

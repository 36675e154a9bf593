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
        yield return StudyCommand.Create();
    }
}

using System.Text.Json.Nodes;
using DetoxSharp.Cli;
using DetoxSharp.Study;

namespace DetoxSharp.Tests.Study;

/// <summary>Stages of a parallel study in child processes (<see cref="StageProcesses"/>): the same output as in-process,
/// progress and failures carried across the process boundary.</summary>
public class StageProcessTests
{
    static string Temp(string name)
    {
        var d = Path.Combine(Path.GetTempPath(), $"detox-stageproc-{name}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(d);
        return d;
    }

    /// <summary>The detox executable built beside the tests (the CLI project is referenced, so its apphost is copied).</summary>
    static (string, string[]) Detox()
    {
        var dir = Path.GetDirectoryName(typeof(DetoxCli).Assembly.Location)!;
        var apphost = Path.Combine(dir, "detox");
        return File.Exists(apphost) ? (apphost, []) : ("dotnet", [Path.Combine(dir, "detox.dll")]);
    }

    static StageDefinition WorldStage() =>
        StudyPipeline.Build(StudyConfig.ToyDefault().WithQuick(true), new StudyStageFunctions()).Single(s => s.Name == "world");

    static StageContext Context(StageDefinition s, string runDir, string outDir, List<(double, string)>? reports = null) => new()
    {
        Name = s.Name, OutputDir = outDir, RunDir = runDir, Settings = (JsonObject)s.Settings.DeepClone(),
        Inputs = s.DependsOn.ToDictionary(d => d, d => Path.Combine(runDir, "stages", d)),
        Report = reports is null ? null : (f, n) => { lock (reports) reports.Add((f, n)); },
    };

    [Fact]
    public void AStageInAChildProcessWritesWhatItWritesInProcess()
    {
        var world = WorldStage();
        var root = Temp("same");
        var inProc = Path.Combine(root, "in");
        var child = Path.Combine(root, "child");
        Directory.CreateDirectory(inProc); Directory.CreateDirectory(child);
        // in-process: the build's own stage function; child: the same function through `detox __study-stage`
        DetoxSharp.Cli.Commands.StudyCommand.Stages().World!(Context(world, root, inProc));
        StageProcesses.Override = Detox();
        try
        {
            var isolated = StageProcesses.Isolate(DetoxSharp.Cli.Commands.StudyCommand.Stages(), 1);
            Assert.NotSame(DetoxSharp.Cli.Commands.StudyCommand.Stages().World, isolated.World);
            Assert.Equal(DetoxSharp.Cli.Commands.StudyCommand.Stages().Report!.Method, isolated.Report!.Method); // the report stays in-process
            isolated.World!(Context(world, root, child));
        }
        finally { StageProcesses.Override = null; }
        // data.json names absolute paths under each output directory: compare it with the directory swapped
        string Norm(string dir) => File.ReadAllText(Path.Combine(dir, "data.json")).Replace(dir, "OUT");
        Assert.Equal(Norm(inProc), Norm(child));
        var a = Directory.GetFiles(inProc, "*", SearchOption.AllDirectories).Select(f => Path.GetRelativePath(inProc, f)).Order().ToList();
        var b = Directory.GetFiles(child, "*", SearchOption.AllDirectories).Select(f => Path.GetRelativePath(child, f)).Order().ToList();
        Assert.Equal(a, b);
        Assert.True(a.Count > 3, $"world wrote {a.Count} files");
        foreach (var f in a.Where(f => f != "data.json"))
            Assert.True(File.ReadAllBytes(Path.Combine(inProc, f)).AsSpan().SequenceEqual(File.ReadAllBytes(Path.Combine(child, f))), $"{f} differs");
    }

    [Fact]
    public void AChildsFailureReachesTheRunnerWithItsMessage()
    {
        var root = Temp("fail");
        StageProcesses.Override = Detox();
        try
        {
            var isolated = StageProcesses.Isolate(DetoxSharp.Cli.Commands.StudyCommand.Stages(), 1);
            // the probe stage without its inputs: the child's stage function throws; its message comes back
            var probe = StudyPipeline.Build(StudyConfig.ToyDefault().WithQuick(true), new StudyStageFunctions()).Single(s => s.Name == "probe");
            var ctx = Context(probe, root, Path.Combine(root, "out"));
            Directory.CreateDirectory(ctx.OutputDir);
            var inProcess = Record.Exception(() => DetoxSharp.Cli.Commands.StudyCommand.Stages().Probe!(Context(probe, root, Path.Combine(root, "out2"))));
            Assert.NotNull(inProcess);
            var e = Record.Exception(() => isolated.Probe!(ctx));
            Assert.NotNull(e);
            Assert.Contains(inProcess!.Message.Split(root)[0], e!.Message); // the same message up to the run-specific path
            Assert.Equal(inProcess is InvalidInputException, e is InvalidInputException);
        }
        finally { StageProcesses.Override = null; }
    }

    [Fact]
    public void TheChildReportsProgressLinesAndRejectsAnUnknownFunction()
    {
        var root = Temp("child");
        var ctxFile = Path.Combine(root, "ctx.json");
        File.WriteAllText(ctxFile, new JsonObject
        {
            ["function"] = "NoSuchStage", ["name"] = "x", ["output_dir"] = root, ["run_dir"] = root, ["settings"] = new JsonObject(),
            ["inputs"] = new JsonObject(), ["device"] = null, ["threads"] = 1,
        }.ToJsonString());
        var o = new StringWriter(); var err = new StringWriter();
        Assert.Equal(1, StageProcesses.ChildMain(ctxFile, o, err));
        Assert.StartsWith("@@error InvalidOperationException: ", err.ToString());
        Assert.Contains("no stage function 'NoSuchStage'", err.ToString());

        // a real stage through ChildMain: progress goes to stdout as @@progress lines, nothing else on stderr
        var world = WorldStage();
        File.WriteAllText(ctxFile, new JsonObject
        {
            ["function"] = "World", ["name"] = world.Name, ["output_dir"] = Path.Combine(root, "w"), ["run_dir"] = root,
            ["settings"] = world.Settings.DeepClone(), ["inputs"] = new JsonObject(), ["device"] = null, ["threads"] = 1,
        }.ToJsonString());
        Directory.CreateDirectory(Path.Combine(root, "w"));
        o = new StringWriter(); err = new StringWriter();
        Assert.Equal(0, StageProcesses.ChildMain(ctxFile, o, err));
        Assert.Equal("", err.ToString());
        Assert.True(File.Exists(Path.Combine(root, "w", "data.json")));
        Assert.All(o.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries), l => Assert.StartsWith("@@progress ", l));
    }
}

namespace DetoxSharp.Tests.Reliability;

/// <summary>The suite's own disk hygiene (TestTemp.cs): each test starts in an empty temporary directory of its own,
/// under this run's root, and the directory of the test before it is gone.</summary>
public class TestTempTests
{
    static string? _seenByFirst;

    [Fact]
    public void ATestStartsInAnEmptyDirectoryOfItsOwnUnderTheRunsRoot()
    {
        var mine = Path.GetFullPath(Path.GetTempPath()).TrimEnd('/');
        Assert.StartsWith(Path.GetFullPath(TestTemp.Root).TrimEnd('/') + "/", mine + "/");
        Assert.NotEqual(Path.GetFullPath(TestTemp.Root).TrimEnd('/'), mine);
        Assert.Empty(Directory.EnumerateFileSystemEntries(mine));
        Assert.Equal(mine, Environment.GetEnvironmentVariable("TMPDIR")?.TrimEnd('/'));
        Remember(mine);
    }

    [Fact]
    public void TheDirectoryOfTheTestBeforeIsDeleted()
    {
        var mine = Path.GetFullPath(Path.GetTempPath()).TrimEnd('/');
        File.WriteAllText(Path.Combine(mine, "x.txt"), "x");
        Remember(mine);
    }

    // whichever of the two runs second checks that the first one's directory (with or without a file in it) is gone
    static void Remember(string mine)
    {
        lock (typeof(TestTempTests))
        {
            if (_seenByFirst is null) { _seenByFirst = mine; return; }
            Assert.NotEqual(_seenByFirst, mine);
            Assert.False(Directory.Exists(_seenByFirst), $"the directory of the test before, {_seenByFirst}, is still there");
        }
    }
}

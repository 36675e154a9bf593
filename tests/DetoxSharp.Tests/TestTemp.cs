using System.Diagnostics;
using System.Reflection;
using System.Runtime.CompilerServices;
using Xunit.Sdk;

[assembly: DetoxSharp.Tests.TestTemp.PerTestDirectory]

namespace DetoxSharp.Tests;

/// <summary>
/// Keeps the suite's disk use to about one test's files. The tests write checkpoints, runs and reports under
/// <see cref="Path.GetTempPath"/> (TMPDIR on Unix, read at every call and inherited by the CLI processes the tests start).
/// At load, TMPDIR is pointed at a root of this run's own; each test (from its class's constructor to its Dispose) then
/// gets a fresh directory under it, deleted when the next test starts. The root is deleted at exit, and roots left by
/// runs that were killed are deleted at the next start.
/// Needs the tests to run one at a time (AssemblyInfo.cs disables parallelization): TMPDIR is process-wide. A class
/// fixture that keeps files for all of its class's tests must put them under <see cref="Root"/>.
/// A CI machine with ≈ 1 GB of free disk ran out in the middle of the suite when every test's files were kept.
/// </summary>
static class TestTemp
{
    const string Prefix = "detox-tests-";
    static string? _root;
    static string? _current, _previous;
    static int _count;

    /// <summary>This run's root; class fixtures that outlive one test keep their files here.</summary>
    public static string Root => _root ?? throw new InvalidOperationException("TestTemp is not initialized");

#pragma warning disable CA2255 // a module initializer in a test assembly: it must run before any fixture or test writes a file
    [ModuleInitializer]
#pragma warning restore CA2255
    internal static void Init()
    {
        var system = Path.GetTempPath();
        RemoveStaleRoots(system);
        _root = Path.Combine(system, Prefix + Environment.ProcessId);
        if (Directory.Exists(_root)) Directory.Delete(_root, true);
        Directory.CreateDirectory(_root);
        Environment.SetEnvironmentVariable("TMPDIR", _root);
        AppDomain.CurrentDomain.ProcessExit += (_, _) => TryDelete(_root);
    }

    static void RemoveStaleRoots(string system)
    {
        foreach (var d in Directory.EnumerateDirectories(system, Prefix + "*"))
        {
            if (!int.TryParse(Path.GetFileName(d).AsSpan(Prefix.Length), out var pid) || pid == Environment.ProcessId) continue;
            if (!Alive(pid)) TryDelete(d);
        }
    }

    static bool Alive(int pid)
    {
        try { using var p = Process.GetProcessById(pid); return !p.HasExited; }
        catch (ArgumentException) { return false; }
        catch (InvalidOperationException) { return false; }
    }

    static void TryDelete(string? dir)
    {
        if (dir is null) return;
        try { if (Directory.Exists(dir)) Directory.Delete(dir, true); }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }

    static string NewTestDirectory()
    {
        var d = Path.Combine(Root, Interlocked.Increment(ref _count).ToString("D4"));
        Directory.CreateDirectory(d);
        return d;
    }

    static void BeginTest()
    {
        // the test before has been disposed by now (xunit: ctor, Before, test, After, Dispose, then the next ctor)
        TryDelete(_previous);
        _previous = null;
        if (_current is null)
        {
            _current = NewTestDirectory();
            Environment.SetEnvironmentVariable("TMPDIR", _current);
        }
    }

    static void EndTest()
    {
        // the next test class's constructor runs before its Before: it already sees the next directory
        _previous = _current;
        _current = NewTestDirectory();
        Environment.SetEnvironmentVariable("TMPDIR", _current);
    }

    [AttributeUsage(AttributeTargets.Assembly)]
    public sealed class PerTestDirectoryAttribute : BeforeAfterTestAttribute
    {
        public override void Before(MethodInfo methodUnderTest) => BeginTest();
        public override void After(MethodInfo methodUnderTest) => EndTest();
    }
}

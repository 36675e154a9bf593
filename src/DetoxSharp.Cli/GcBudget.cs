using System.Diagnostics;
using System.Runtime.InteropServices;

namespace DetoxSharp.Cli;

/// <summary>Re-executes <c>detox study</c> with <c>DOTNET_GCgen0size</c> set (see Program.cs for why). The child inherits
/// standard input, output and error; Ctrl+C reaches both (same process group) and the parent waits for the child;
/// SIGTERM/SIGQUIT sent to the parent are passed on. Returns the child's exit code, or null to run in this process.</summary>
static class GcBudget
{
    public const string Variable = "DOTNET_GCgen0size", Override = "DETOX_GC_GEN0";
    /// <summary>256 MB (hexadecimal, as the runtime reads it).</summary>
    public const string DefaultSize = "10000000";

    [DllImport("libc", SetLastError = true)]
    static extern int kill(int pid, int sig);

    public static int? ReExecuteIfNeeded(string[] args)
    {
        if (args.Length == 0 || args[0] != "study" || !OperatingSystem.IsLinux() && !OperatingSystem.IsMacOS()) return null;
        if (Environment.GetEnvironmentVariable(Variable) is { Length: > 0 }) return null; // already set (by us or the user)
        var size = Environment.GetEnvironmentVariable(Override);
        if (string.Equals(size, "off", StringComparison.OrdinalIgnoreCase)) return null;
        var exe = Environment.ProcessPath;
        if (exe is null) return null;
        var psi = new ProcessStartInfo(exe) { UseShellExecute = false };
        // `dotnet detox.dll …` (e.g. dotnet run): the host is the process, the app its first argument
        if (Path.GetFileNameWithoutExtension(exe) == "dotnet" && Environment.GetCommandLineArgs() is [var dll, ..] && dll.EndsWith(".dll", StringComparison.OrdinalIgnoreCase))
            psi.ArgumentList.Add(dll);
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment[Variable] = string.IsNullOrEmpty(size) ? DefaultSize : size;
        using var child = Process.Start(psi);
        if (child is null) return null;
        // Ctrl+C: the child gets it too and stops cleanly; the parent only waits
        Console.CancelKeyPress += (_, e) => e.Cancel = true;
        using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, c => { c.Cancel = true; _ = kill(child.Id, 15); });
        using var quit = PosixSignalRegistration.Create(PosixSignal.SIGQUIT, c => { c.Cancel = true; _ = kill(child.Id, 3); });
        child.WaitForExit();
        return child.ExitCode;
    }
}

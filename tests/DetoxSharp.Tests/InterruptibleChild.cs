using System.Diagnostics;

namespace DetoxSharp.Tests;

/// <summary>
/// Start information for a <c>detox</c> child process that the test interrupts with SIGINT. A shell runs a background
/// command (<c>cmd &amp;</c>) with SIGINT ignored (POSIX), and an ignored signal stays ignored across exec, so a test run
/// started that way would send its SIGINT to a child that never sees it. When this process ignores SIGINT (Linux,
/// /proc/self/status), the child is started through coreutils' <c>env --default-signal=INT</c>, which restores the
/// default before it executes <c>detox</c> (same process id).
/// </summary>
static class InterruptibleChild
{
    public static ProcessStartInfo StartInfo(string exe)
    {
        bool reset = OperatingSystem.IsLinux() && SigintIgnored();
        var psi = new ProcessStartInfo(reset ? "/usr/bin/env" : exe) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        if (reset) { psi.ArgumentList.Add("--default-signal=INT"); psi.ArgumentList.Add(exe); }
        return psi;
    }

    /// <summary>Whether SIGINT (2) is in this process's ignored set: bit 1 of the SigIgn mask.</summary>
    static bool SigintIgnored()
    {
        var line = File.ReadLines("/proc/self/status").FirstOrDefault(l => l.StartsWith("SigIgn:", StringComparison.Ordinal));
        return line is not null && (Convert.ToUInt64(line["SigIgn:".Length..].Trim(), 16) & (1UL << 1)) != 0;
    }
}

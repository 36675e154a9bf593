namespace DetoxSharp.Checkpoints;

/// <summary>
/// Refuses allocations that cannot fit before libtorch tries them: a config.json with a huge vocab_size or n_layer
/// otherwise fails deep inside native allocation (or gets the process killed). The figure compared is the memory
/// the OS reports as available now (Linux MemAvailable, capped by the GC's view of the container limit).
/// </summary>
public static class MemoryBudget
{
    /// <summary>Bytes available to this process now; null when unknown.</summary>
    public static long? AvailableBytes()
    {
        long? best = null;
        try
        {
            const string meminfo = "/proc/meminfo";
            if (File.Exists(meminfo))
                foreach (var line in File.ReadLines(meminfo))
                    if (line.StartsWith("MemAvailable:", StringComparison.Ordinal))
                    {
                        var parts = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                        if (parts.Length >= 2 && long.TryParse(parts[1], out var kb)) best = kb * 1024;
                    }
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        long total = GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
        if (total > 0) best = best is long b ? Math.Min(b, total) : total;
        return best;
    }

    /// <summary>Throws <see cref="InvalidInputException"/> (naming <paramref name="where"/> and the numbers) when
    /// <paramref name="bytes"/> exceed the available memory. A double, so that absurd configs cannot overflow.</summary>
    public static void EnsureFits(double bytes, string where, string what)
    {
        if (!(bytes >= 0) || double.IsInfinity(bytes))
            throw new InvalidInputException($"{where}: {what} is not a finite size");
        if (AvailableBytes() is long avail && bytes > avail)
            throw new InvalidInputException($"{where}: {what} needs {Format(bytes)} but only {Format(avail)} of memory is available");
    }

    /// <summary>A byte count for messages: "1.5 GiB", "12.0 MiB" or "512 bytes".</summary>
    /// <param name="bytes">The number of bytes.</param>
    public static string Format(double bytes) =>
        bytes >= 1 << 30 ? $"{bytes / (1L << 30):0.0} GiB" : bytes >= 1 << 20 ? $"{bytes / (1 << 20):0.0} MiB" : $"{bytes:0} bytes";
}

using System.Runtime.InteropServices;

/// <summary>What the bench's memory modes read about this process: its minor page faults so far (<c>/proc/self/stat</c>),
/// and glibc's malloc statistics (<c>mallinfo2</c>, glibc ≥ 2.33): the main heap's size, the bytes in use, the free bytes
/// and the number of free chunks inside it, and the top chunk (free space at the heap's end). A heap much larger than
/// what is in use, its free space in hundreds of chunks, is fragmentation: a large block that fits none of them extends
/// the heap, and the kernel zeroes the new pages on first touch (bench <c>--heap-probe</c>).</summary>
static class MemoryProbe
{
    /// <summary>Minor page faults of this process so far (field 10 of /proc/self/stat).</summary>
    public static long MinorFaults() =>
        long.Parse(File.ReadAllText("/proc/self/stat").Split(')')[1].Split(' ', StringSplitOptions.RemoveEmptyEntries)[7]);

    [StructLayout(LayoutKind.Sequential)]
    struct MallInfo2 { public nuint Arena, OrdBlks, SmBlks, HBlks, HBlkHd, UsmBlks, FsmBlks, UordBlks, FordBlks, KeepCost; }

    [DllImport("libc", EntryPoint = "mallinfo2")]
    static extern MallInfo2 mallinfo2();

    /// <summary>glibc's heap statistics as one line.</summary>
    public static string HeapLine()
    {
        try
        {
            var m = mallinfo2();
            return $"heap {(long)m.Arena >> 20} MB: in use {(long)m.UordBlks >> 20} MB, free {(long)m.FordBlks >> 20} MB in {m.OrdBlks} chunks, top {(long)m.KeepCost >> 20} MB";
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            return "malloc statistics: n/a (not glibc ≥ 2.33)";
        }
    }
}

/// <summary>The median the bench's modes report timings by (the mean of the two middle values for an even count).</summary>
static class BenchStats
{
    public static double Median(IEnumerable<double> values)
    {
        var o = values.Order().ToList();
        return o.Count % 2 == 1 ? o[o.Count / 2] : (o[o.Count / 2 - 1] + o[o.Count / 2]) / 2;
    }
}

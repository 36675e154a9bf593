using System.Text;
using System.Text.RegularExpressions;

namespace DetoxSharp.Tests.Reliability;

/// <summary>
/// Seeded mutations of a valid input file: byte-level (truncate, flip, delete, duplicate a range, empty, invalid
/// UTF-8) and, for JSON, structural (duplicate a key, replace a value with a wrong type, a huge or non-finite number,
/// a lone surrogate escape). The same seed gives the same mutants, so a failure names a reproducible case.
/// </summary>
static class Fuzz
{
    static readonly string[] Replacements =
    [
        "5", "-1", "0", "1.5", "\"x\"", "\"\"", "[5]", "[]", "{}", "null", "true", "1e400", "-1e400", "NaN", "Infinity",
        "2147483648", "9223372036854775808", "-9223372036854775809", "16777216", "1e12", "\"\\ud800\"", "\"\\udc00x\"", "[-1,2]",
    ];

    // a JSON scalar value following ':' '[' or ',' (strings with escapes, numbers, literals)
    static readonly Regex Value = new(@"(?<=[:\[,]\s*)(-?\d[\d.eE+-]*|""(?:[^""\\]|\\.)*""|true|false|null)");
    static readonly Regex ObjectStart = new(@"\{\s*(""(?:[^""\\]|\\.)*"")\s*:");

    public sealed record Mutant(string Description, byte[] Data);

    public static IEnumerable<Mutant> Mutants(byte[] original, int count, int seed, bool json)
    {
        var rng = new Random(seed);
        for (int i = 0; i < count; i++)
        {
            int kinds = json ? 10 : 6;
            int kind = rng.Next(kinds);
            yield return kind switch
            {
                0 => Truncate(original, rng),
                1 => Flip(original, rng),
                2 => new Mutant("empty", []),
                3 => InvalidUtf8(original, rng),
                4 => DeleteRange(original, rng),
                5 => DuplicateRange(original, rng),
                6 => DuplicateKey(original, rng),
                7 or 8 => ReplaceValue(original, rng),
                _ => LoneSurrogate(original, rng),
            };
        }
    }

    static Mutant Truncate(byte[] b, Random rng)
    {
        int n = b.Length == 0 ? 0 : rng.Next(b.Length);
        return new($"truncate to {n} bytes", b[..n]);
    }

    static Mutant Flip(byte[] b, Random rng)
    {
        var c = (byte[])b.Clone();
        int flips = 1 + rng.Next(3);
        var at = new List<int>();
        for (int k = 0; k < flips && c.Length > 0; k++)
        {
            int i = rng.Next(c.Length);
            c[i] ^= (byte)(1 + rng.Next(255));
            at.Add(i);
        }
        return new($"flip bytes at {string.Join(",", at)}", c);
    }

    static Mutant InvalidUtf8(byte[] b, Random rng)
    {
        int i = rng.Next(b.Length + 1);
        byte[][] bad = [[0xFF], [0xC3, 0x28], [0xED, 0xA0, 0x80], [0xE2, 0x82]];
        var ins = bad[rng.Next(bad.Length)];
        return new($"invalid UTF-8 {Convert.ToHexString(ins)} at {i}", [.. b[..i], .. ins, .. b[i..]]);
    }

    static Mutant DeleteRange(byte[] b, Random rng)
    {
        if (b.Length < 2) return new("empty", []);
        var (i, n) = RangeOf(b, rng, 16);
        return new($"delete {n} bytes at {i}", [.. b[..i], .. b[(i + n)..]]);
    }

    static Mutant DuplicateRange(byte[] b, Random rng)
    {
        if (b.Length < 2) return new("empty", []);
        var (i, n) = RangeOf(b, rng, 32);
        return new($"duplicate {n} bytes at {i}", [.. b[..(i + n)], .. b[i..(i + n)], .. b[(i + n)..]]);
    }

    static (int Start, int Length) RangeOf(byte[] b, Random rng, int max)
    {
        int i = rng.Next(b.Length);
        return (i, 1 + rng.Next(Math.Min(max, b.Length - i)));
    }

    static Mutant DuplicateKey(byte[] b, Random rng)
    {
        var text = Encoding.UTF8.GetString(b);
        var ms = ObjectStart.Matches(text);
        if (ms.Count == 0) return ReplaceValue(b, rng);
        var m = ms[rng.Next(ms.Count)];
        var value = Replacements[rng.Next(Replacements.Length)];
        var mutated = text[..(m.Index + 1)] + m.Groups[1].Value + ":" + value + "," + text[(m.Index + 1)..];
        return new($"duplicate key {m.Groups[1].Value} (= {value})", Encoding.UTF8.GetBytes(mutated));
    }

    static Mutant ReplaceValue(byte[] b, Random rng)
    {
        var text = Encoding.UTF8.GetString(b);
        var ms = Value.Matches(text);
        if (ms.Count == 0) return Flip(b, rng);
        var m = ms[rng.Next(ms.Count)];
        var value = Replacements[rng.Next(Replacements.Length)];
        return new($"value {Short(m.Value)} at {m.Index} → {value}", Encoding.UTF8.GetBytes(text[..m.Index] + value + text[(m.Index + m.Length)..]));
    }

    static Mutant LoneSurrogate(byte[] b, Random rng)
    {
        var text = Encoding.UTF8.GetString(b);
        var ms = Value.Matches(text).Where(m => m.Value.StartsWith('"')).ToList();
        if (ms.Count == 0) return ReplaceValue(b, rng);
        var m = ms[rng.Next(ms.Count)];
        var esc = rng.Next(2) == 0 ? "\\ud800" : "\\udfff";
        return new($"lone surrogate in {Short(m.Value)}", Encoding.UTF8.GetBytes(text[..(m.Index + 1)] + esc + text[(m.Index + 1)..]));
    }

    static string Short(string s) => s.Length <= 24 ? s : s[..21] + "...";

    /// <summary>Runs <paramref name="read"/> on each mutant: it must either return (then <paramref name="check"/>
    /// verifies what was loaded) or throw <see cref="InvalidInputException"/>. Returns (loaded, rejected) counts and
    /// fails with every offending mutant described.</summary>
    public static (int Loaded, int Rejected) Run<T>(IEnumerable<Mutant> mutants, Func<Mutant, T> read, Action<Mutant, T>? check = null)
    {
        int loaded = 0, rejected = 0;
        var failures = new List<string>();
        foreach (var m in mutants)
        {
            T result;
            try { result = read(m); }
            catch (InvalidInputException e)
            {
                rejected++;
                if (e.Message.Contains('\n')) failures.Add($"{m.Description}: multi-line message: {e.Message}");
                continue;
            }
            catch (Exception e)
            {
                failures.Add($"{m.Description}: {e.GetType().Name}: {e.Message.Split('\n')[0]}");
                continue;
            }
            try
            {
                check?.Invoke(m, result);
                loaded++;
            }
            catch (Exception e) { failures.Add($"{m.Description}: loaded, but: {e.Message.Split('\n')[0]}"); }
            finally { (result as IDisposable)?.Dispose(); }
        }
        Assert.True(failures.Count == 0, $"{failures.Count} mutants failed:\n" + string.Join("\n", failures.Take(20)));
        return (loaded, rejected);
    }
}

using System.Reflection;
using System.Runtime.CompilerServices;

namespace DetoxSharp.Tests.Core;

/// <summary>Issue #20, deliverable 2: no public method or constructor of the DetoxSharp library takes more than
/// <see cref="MaxParameters"/> parameters — longer lists become option records (see PairMaker.Make, EvalHarness.Run).</summary>
/// <remarks>Exempt: the primary constructor of a positional record and its compiler-generated Deconstruct. Their
/// parameters ARE the record's properties (each documented with a &lt;param&gt; tag), callers name them or use
/// <c>with</c>, and turning such a record into another record would only move the same list one level down.</remarks>
public class PublicApiShapeTests
{
    const int MaxParameters = 6;

    static bool IsPositionalRecord(Type t) =>
        t.GetMethod("<Clone>$", BindingFlags.Public | BindingFlags.Instance) is not null
        && t.GetMethod("Deconstruct", BindingFlags.Public | BindingFlags.Instance) is not null;

    static bool IsPrimaryConstructor(Type t, ConstructorInfo c)
    {
        if (!IsPositionalRecord(t)) return false;
        var deconstruct = t.GetMethods(BindingFlags.Public | BindingFlags.Instance).Where(m => m.Name == "Deconstruct");
        var names = c.GetParameters().Select(p => p.Name).ToArray();
        return deconstruct.Any(d => d.GetParameters().Select(p => p.Name).SequenceEqual(names));
    }

    internal static List<string> Violations(Assembly assembly)
    {
        var found = new List<string>();
        foreach (var t in assembly.GetExportedTypes())
        {
            if (t.IsSubclassOf(typeof(Delegate))) continue; // a delegate's Invoke mirrors its signature, checked where declared
            const BindingFlags flags = BindingFlags.Public | BindingFlags.Instance | BindingFlags.Static | BindingFlags.DeclaredOnly;
            foreach (var m in t.GetMethods(flags))
            {
                if (m.GetCustomAttribute<CompilerGeneratedAttribute>() is not null) continue;
                if (m.Name == "Deconstruct" && IsPositionalRecord(t)) continue;
                if (m.GetParameters().Length > MaxParameters) found.Add($"{t.FullName}.{m.Name} ({m.GetParameters().Length} parameters)");
            }
            foreach (var c in t.GetConstructors(flags))
                if (c.GetParameters().Length > MaxParameters && !IsPrimaryConstructor(t, c))
                    found.Add($"{t.FullName} constructor ({c.GetParameters().Length} parameters)");
        }
        return found;
    }

    [Fact]
    public void NoPublicMethodTakesMoreThanSixParameters()
    {
        var found = Violations(typeof(DetoxSharp.Training.PairMaker).Assembly);
        Assert.True(found.Count == 0, "public methods with more than 6 parameters (use an option record):\n" + string.Join("\n", found));
    }

    /// <summary>The check itself finds a long method, and exempts a positional record's primary constructor only.</summary>
    [Fact]
    public void TheCheckFindsLongSignatures()
    {
        var found = Violations(typeof(PublicApiShapeTests).Assembly);
        Assert.Contains(found, f => f.Contains(nameof(LongSignatureSample) + "." + nameof(LongSignatureSample.Seven)));
        Assert.Contains(found, f => f.Contains(nameof(LongSignatureSample) + " constructor"));
        Assert.DoesNotContain(found, f => f.Contains(nameof(SevenFieldRecord)));
        Assert.DoesNotContain(found, f => f.Contains(nameof(LongSignatureSample.Six)));
    }
}

/// <summary>Fixtures of <see cref="PublicApiShapeTests.TheCheckFindsLongSignatures"/>.</summary>
public sealed class LongSignatureSample(int a, int b, int c, int d, int e, int f, int g)
{
    public int Sum => a + b + c + d + e + f + g;
    public static int Seven(int a, int b, int c, int d, int e, int f, int g) => a + b + c + d + e + f + g;
    public static int Six(int a, int b, int c, int d, int e, int f) => a + b + c + d + e + f;
}

/// <summary>A positional record with seven fields: exempt.</summary>
public sealed record SevenFieldRecord(int A, int B, int C, int D, int E, int F, int G);

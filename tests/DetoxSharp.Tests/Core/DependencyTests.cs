using System.Text.RegularExpressions;

namespace DetoxSharp.Tests.Core;

/// <summary>docs/ARCHITECTURE.md's folder dependency table against the code: every `using DetoxSharp.X` and every
/// qualified `DetoxSharp.X.` reference in src/DetoxSharp/** must be an edge of the table, and the table has no cycle.</summary>
public class DependencyTests
{
    static string RepoRoot()
    {
        var d = new DirectoryInfo(AppContext.BaseDirectory);
        while (d is not null && !File.Exists(Path.Combine(d.FullName, "DetoxSharp.sln"))) d = d.Parent;
        return d?.FullName ?? throw new InvalidOperationException("repo root not found");
    }

    static Dictionary<string, HashSet<string>> Table(string root)
    {
        var md = File.ReadAllLines(Path.Combine(root, "docs", "ARCHITECTURE.md"));
        int start = Array.FindIndex(md, l => l.StartsWith("| folder | may use |", StringComparison.Ordinal));
        Assert.True(start >= 0, "docs/ARCHITECTURE.md has no '| folder | may use |' table");
        var table = new Dictionary<string, HashSet<string>>();
        foreach (var line in md.Skip(start + 2).TakeWhile(l => l.StartsWith('|')))
        {
            var cells = line.Trim('|').Split('|').Select(c => c.Trim()).ToArray();
            table[cells[0]] = cells[1] is "–" or "-" or "" ? [] : cells[1].Split(',').Select(x => x.Trim()).ToHashSet();
        }
        return table;
    }

    static readonly Regex Using = new(@"^\s*using\s+(?:static\s+)?DetoxSharp\.([A-Za-z]+)", RegexOptions.Multiline);
    static readonly Regex Qualified = new(@"(?<![\w.""])DetoxSharp\.([A-Z][A-Za-z]+)\.", RegexOptions.Compiled);

    [Fact]
    public void UsingDirectivesFollowTheTable()
    {
        var root = RepoRoot();
        var table = Table(root);
        var src = Path.Combine(root, "src", "DetoxSharp");
        var folders = Directory.GetDirectories(src).Select(Path.GetFileName).Where(f => f is not ("bin" or "obj")).ToList();
        Assert.All(folders, f => Assert.True(table.ContainsKey(f!), $"folder {f} is missing from the dependency table"));
        var problems = new List<string>();
        foreach (var folder in folders)
            foreach (var file in Directory.GetFiles(Path.Combine(src, folder!), "*.cs", SearchOption.AllDirectories))
            {
                var text = string.Join("\n", File.ReadLines(file).Where(l => !l.TrimStart().StartsWith("//", StringComparison.Ordinal)));
                var used = Using.Matches(text).Select(m => m.Groups[1].Value)
                    .Concat(Qualified.Matches(text).Select(m => m.Groups[1].Value))
                    .Where(u => u != folder && folders.Contains(u)).Distinct();
                foreach (var u in used)
                    if (!table[folder!].Contains(u)) problems.Add($"{Path.GetRelativePath(root, file)}: {folder} -> {u} is not in docs/ARCHITECTURE.md's table");
            }
        Assert.True(problems.Count == 0, string.Join("\n", problems));
    }

    [Fact]
    public void TableHasNoCycle()
    {
        var table = Table(RepoRoot());
        var state = new Dictionary<string, int>();
        bool Visit(string n, List<string> path)
        {
            if (state.GetValueOrDefault(n) == 1) { path.Add(n); return true; }
            if (state.GetValueOrDefault(n) == 2) return false;
            state[n] = 1; path.Add(n);
            foreach (var m in table.GetValueOrDefault(n) ?? []) if (Visit(m, path)) return true;
            path.RemoveAt(path.Count - 1); state[n] = 2;
            return false;
        }
        foreach (var n in table.Keys)
        {
            var path = new List<string>();
            Assert.False(Visit(n, path), "cycle: " + string.Join(" -> ", path));
        }
    }
}

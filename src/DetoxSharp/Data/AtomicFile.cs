using System.Text;

namespace DetoxSharp.Data;

/// <summary>Writes a file under a temporary name and renames it into place, so readers (and reruns) never see a
/// half-written output.</summary>
public static class AtomicFile
{
    /// <summary>Writes a text file (UTF-8) atomically.</summary>
    /// <param name="path">The file.</param>
    /// <param name="write">Writes the content.</param>
    public static void Write(string path, Action<TextWriter> write)
    {
        var full = Path.GetFullPath(path);
        Directory.CreateDirectory(Path.GetDirectoryName(full)!);
        var tmp = full + $".tmp-{Guid.NewGuid():N}";
        try
        {
            using (var w = new StreamWriter(tmp, false, new UTF8Encoding(false)) { NewLine = "\n" }) write(w);
            File.Move(tmp, full, overwrite: true);
        }
        finally { if (File.Exists(tmp)) File.Delete(tmp); }
    }

    /// <summary>Writes <paramref name="text"/> to a file atomically.</summary>
    /// <param name="path">The file.</param>
    /// <param name="text">The content.</param>
    public static void WriteAllText(string path, string text) => Write(path, w => w.Write(text));

    /// <summary>Writes a binary file atomically.</summary>
    /// <param name="path">The file.</param>
    /// <param name="write">Writes the content.</param>
    public static void WriteBytes(string path, Action<Stream> write)
    {
        var full = Path.GetFullPath(path);
        Directory.CreateDirectory(Path.GetDirectoryName(full)!);
        var tmp = full + $".tmp-{Guid.NewGuid():N}";
        try
        {
            using (var f = File.Create(tmp)) write(f);
            File.Move(tmp, full, overwrite: true);
        }
        finally { if (File.Exists(tmp)) File.Delete(tmp); }
    }
}

/// <summary>Writes a whole directory under a temporary sibling name and moves it into place, replacing an existing
/// one only once the new one is complete (the old one is put back if the final move fails). A crash leaves either
/// the previous directory or the new one, never a mix — possibly with the previous one still under its
/// <c>.NAME.old-*</c> name (killed between the two renames) and leftover <c>.NAME.tmp-*</c> directories, which
/// <see cref="Recover"/> (called by <see cref="Write"/> and by the trainers on start) puts right.</summary>
public static class AtomicDirectory
{
    static readonly System.Text.RegularExpressions.Regex Stranded = new(@"^\.(?<name>.+)\.(?<kind>tmp|old)-[0-9a-f]{32}$");

    /// <summary>
    /// Repairs what an interrupted <see cref="Write"/> of <paramref name="dir"/> can leave: deletes <c>.NAME.tmp-*</c>
    /// (a half-filled or never-promoted new version); when <paramref name="dir"/> is missing, renames the one
    /// complete previous version <c>.NAME.old-*</c> back into place (the swap's first rename happened, the second did
    /// not); when <paramref name="dir"/> exists, deletes <c>.NAME.old-*</c> (a delete that was interrupted).
    /// Returns one line per action, for the caller to report.
    /// </summary>
    public static List<string> Recover(string dir)
    {
        dir = Path.GetFullPath(dir.TrimEnd('/', '\\'));
        var parent = Path.GetDirectoryName(dir)!;
        var name = Path.GetFileName(dir);
        var actions = new List<string>();
        if (!Directory.Exists(parent)) return actions;
        var mine = Directory.EnumerateDirectories(parent, $".{name}.*")
            .Select(p => (Path: p, Match: Stranded.Match(Path.GetFileName(p))))
            .Where(x => x.Match.Success && x.Match.Groups["name"].Value == name).ToList();
        foreach (var (p, _) in mine.Where(x => x.Match.Groups["kind"].Value == "tmp"))
        {
            Directory.Delete(p, recursive: true);
            actions.Add($"removed the unfinished {p}");
        }
        var olds = mine.Where(x => x.Match.Groups["kind"].Value == "old").Select(x => x.Path).ToList();
        if (olds.Count == 0) return actions;
        if (Directory.Exists(dir))
        {
            foreach (var p in olds) { Directory.Delete(p, recursive: true); actions.Add($"removed the superseded {p}"); }
        }
        else if (olds.Count == 1)
        {
            Directory.Move(olds[0], dir);
            actions.Add($"restored {dir} from {olds[0]} (a save was interrupted between its two renames)");
        }
        else
            throw new InvalidInputException($"{dir}: missing, and several previous versions are left ({string.Join(", ", olds.Select(Path.GetFileName))}); move the one to keep to {name}");
        return actions;
    }

    /// <summary><see cref="Recover"/> for every directory of <paramref name="parent"/> with stranded versions, and
    /// removes stranded <see cref="AtomicFile"/> temporaries (<c>FILE.tmp-*</c>).</summary>
    public static List<string> RecoverAll(string parent)
    {
        var actions = new List<string>();
        if (!Directory.Exists(parent)) return actions;
        foreach (var name in Directory.EnumerateDirectories(parent, ".*").Select(p => Stranded.Match(Path.GetFileName(p)))
                     .Where(m => m.Success).Select(m => m.Groups["name"].Value).Distinct().ToList())
            actions.AddRange(Recover(Path.Combine(parent, name)));
        foreach (var f in Directory.EnumerateFiles(parent, "*.tmp-*"))
            if (System.Text.RegularExpressions.Regex.IsMatch(Path.GetFileName(f), @"\.tmp-[0-9a-f]{32}$"))
            {
                File.Delete(f);
                actions.Add($"removed the unfinished {f}");
            }
        return actions;
    }

    /// <summary>Fills a directory under a temporary name and renames it into place (replacing an existing one).</summary>
    /// <param name="dir">The directory.</param>
    /// <param name="fill">Writes the content into the directory whose path it is given.</param>
    public static void Write(string dir, Action<string> fill)
    {
        dir = Path.GetFullPath(dir.TrimEnd('/', '\\'));
        var parent = Path.GetDirectoryName(dir)!;
        Directory.CreateDirectory(parent);
        Recover(dir);
        var tmp = Path.Combine(parent, $".{Path.GetFileName(dir)}.tmp-{Guid.NewGuid():N}");
        try
        {
            Directory.CreateDirectory(tmp);
            fill(tmp);
            if (Directory.Exists(dir))
            {
                var old = Path.Combine(parent, $".{Path.GetFileName(dir)}.old-{Guid.NewGuid():N}");
                Directory.Move(dir, old);
                try { Directory.Move(tmp, dir); }
                catch
                {
                    Directory.Move(old, dir); // put the previous directory back
                    throw;
                }
                Directory.Delete(old, recursive: true);
            }
            else Directory.Move(tmp, dir);
        }
        finally { if (Directory.Exists(tmp)) Directory.Delete(tmp, recursive: true); }
    }
}

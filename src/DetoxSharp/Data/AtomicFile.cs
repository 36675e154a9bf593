using System.Text;

namespace DetoxSharp.Data;

/// <summary>Writes a file under a temporary name and renames it into place, so readers (and reruns) never see a
/// half-written output.</summary>
public static class AtomicFile
{
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

    public static void WriteAllText(string path, string text) => Write(path, w => w.Write(text));

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
/// the previous directory or the new one, never a mix.</summary>
public static class AtomicDirectory
{
    public static void Write(string dir, Action<string> fill)
    {
        dir = Path.GetFullPath(dir.TrimEnd('/', '\\'));
        var parent = Path.GetDirectoryName(dir)!;
        Directory.CreateDirectory(parent);
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

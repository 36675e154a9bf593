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

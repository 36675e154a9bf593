using System.Text.Unicode;

namespace DetoxSharp.Data;

/// <summary>
/// Plain-text inputs (a make-pairs prompts .txt, eval's --ppl-text) are read leniently: .NET's UTF-8 decoder turns each
/// invalid byte sequence into U+FFFD, which is what a user feeding a scraped corpus with a few stray Latin-1 bytes
/// wants — refusing the whole file would help nobody, and the replacement costs one token here and there. It must not be
/// silent, though: <see cref="Warning"/> names the file and the first bad line once. JSON inputs stay strict
/// (<see cref="StrictJson"/>): there an invalid byte is corruption of structured data.
/// </summary>
public static class LenientText
{
    /// <summary>1-based number of the first line holding invalid UTF-8, or null when the file is valid.</summary>
    public static int? FirstInvalidLine(string path)
    {
        using var f = File.OpenRead(path);
        using var ms = new MemoryStream();
        var buf = new byte[1 << 16];
        int line = 1, n;
        while ((n = f.Read(buf, 0, buf.Length)) > 0)
            for (int i = 0; i < n; i++)
            {
                if (buf[i] != (byte)'\n') { ms.WriteByte(buf[i]); continue; }
                if (!Utf8.IsValid(ms.GetBuffer().AsSpan(0, (int)ms.Length))) return line;
                ms.SetLength(0);
                line++;
            }
        return Utf8.IsValid(ms.GetBuffer().AsSpan(0, (int)ms.Length)) ? null : line;
    }

    /// <summary>The one warning line for <paramref name="path"/> (flag = the option that named it), or null when the file is valid UTF-8.</summary>
    public static string? Warning(string path, string flag) => FirstInvalidLine(path) is int l
        ? $"{flag} {path}:{l}: invalid UTF-8 (first bad line); invalid bytes are read as U+FFFD"
        : null;

    /// <summary>Lines of a plain-text file, invalid bytes replaced by U+FFFD; <paramref name="warn"/> gets
    /// <see cref="Warning"/> when there were any.</summary>
    public static string[] ReadAllLines(string path, string flag, Action<string>? warn)
    {
        if (Warning(path, flag) is string w) warn?.Invoke(w);
        return File.ReadAllLines(path); // .NET's default UTF-8 decoding replaces invalid sequences with U+FFFD
    }

    /// <summary>Whole text of a plain-text file, as <see cref="ReadAllLines"/>.</summary>
    public static string ReadAllText(string path, string flag, Action<string>? warn)
    {
        if (Warning(path, flag) is string w) warn?.Invoke(w);
        return File.ReadAllText(path);
    }
}

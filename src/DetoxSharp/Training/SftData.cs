using DetoxSharp.Data;

namespace DetoxSharp.Training;

/// <summary>Reads SFT data: a .txt corpus (documents separated by &lt;|endoftext|&gt; lines) or JSONL with
/// {"text"} or {"prompt","completion"} ({"prompt","response"} as the dialogues file has) per line.</summary>
public static class SftData
{
    /// <summary>Reads a .txt corpus or a JSONL file (by extension).</summary>
    /// <param name="path">The file.</param>
    public static List<SftExample> Read(string path)
    {
        if (!path.EndsWith(".jsonl", StringComparison.OrdinalIgnoreCase) && !path.EndsWith(".json", StringComparison.OrdinalIgnoreCase))
            return DatasetReaders.ReadDocuments(path).Select(SftExample.Text).ToList();
        var list = new List<SftExample>();
        foreach (var l in JsonlReader.Read(path))
        {
            if (l.Object["prompt"] is null)
            {
                list.Add(SftExample.Text(l.String("text")));
                continue;
            }
            var completion = l.Object["completion"] is not null ? l.String("completion")
                : l.Object["response"] is not null ? l.String("response")
                : throw new InvalidInputException($"{l.Where}: missing field 'completion' (or 'response')");
            list.Add(SftExample.PromptCompletion(l.String("prompt"), completion));
        }
        return list;
    }
}

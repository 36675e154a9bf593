using DetoxSharp.Data;
using DetoxSharp.Text;

namespace DetoxSharp.Training;

/// <summary>Reads SFT data: a .txt corpus (documents separated by &lt;|endoftext|&gt; lines), or JSONL / Parquet records
/// in TRL's formats — standard {"text"} or {"prompt","completion"} ({"prompt","response"} as the dialogues file has),
/// conversational {"messages": [...]} or {"prompt": [...], "completion": [...]} rendered with the model's chat template
/// (see <see cref="Conversations"/>).</summary>
public static class SftData
{
    /// <summary>Reads a .txt corpus, or a JSONL / Parquet file (by extension or Parquet's magic bytes).</summary>
    /// <param name="path">The file.</param>
    /// <param name="chat">The model's chat template, for conversational records (null: such records are an error).</param>
    public static List<SftExample> Read(string path, ChatTemplate? chat = null)
    {
        if (!path.EndsWith(".jsonl", StringComparison.OrdinalIgnoreCase) && !path.EndsWith(".json", StringComparison.OrdinalIgnoreCase) && !ParquetRows.IsParquet(path))
            return DatasetReaders.ReadDocuments(path).Select(SftExample.Text).ToList();
        var list = new List<SftExample>();
        foreach (var l in JsonlReader.Read(path))
        {
            if (l.Object["messages"] is not null)
            {
                list.Add(SftExample.Text(Conversations.RenderConversation(chat, l, "messages")));
                continue;
            }
            if (l.Object["prompt"] is null)
            {
                list.Add(SftExample.Text(l.String("text")));
                continue;
            }
            if (Conversations.IsConversation(l.Object["prompt"]))
            {
                var (prompt, texts) = PreferenceData.PromptAndCompletions(l, ["completion"], chat);
                list.Add(SftExample.PromptCompletion(prompt, texts[0]));
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

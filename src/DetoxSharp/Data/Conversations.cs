using System.Text.Json.Nodes;
using DetoxSharp.Text;

namespace DetoxSharp.Data;

/// <summary>
/// TRL's conversational format: a field holding a list of <c>{"role", "content"}</c> messages instead of a string.
/// Rendering follows TRL's <c>maybe_apply_chat_template</c>: a prompt is the chat template applied to its messages with
/// <c>add_generation_prompt=True</c>; a completion (chosen, rejected, completion, toxic) is the template applied to
/// prompt + completion messages, minus the rendered prompt — so it carries the template's end-of-turn marker. A leading
/// <c>bos_token</c> of a rendering is dropped: the tokenizer adds BOS itself when it is configured to (add_bos_token), as
/// it does for string data, so a template that writes BOS does not give two. No chat template (GPT-2) → an error naming
/// the record: conversational data needs a model with a chat template.
/// </summary>
public static class Conversations
{
    /// <summary>True when the node is a message list (a JSON array).</summary>
    /// <param name="node">A field's value.</param>
    public static bool IsConversation(JsonNode? node) => node is JsonArray;

    /// <summary>A field's message list, checked: every item an object with string <c>role</c> and <c>content</c>.</summary>
    /// <param name="line">The record.</param>
    /// <param name="field">The field.</param>
    public static List<ChatMessage> Messages(JsonlReader.Line line, string field)
    {
        if (line.Object[field] is not JsonArray arr) throw new InvalidInputException($"{line.Where}: field '{field}' must be a list of messages ({{\"role\": …, \"content\": …}}) like the record's other fields");
        var list = new List<ChatMessage>();
        for (int i = 0; i < arr.Count; i++)
        {
            if (arr[i] is not JsonObject m) throw new InvalidInputException($"{line.Where}: {field}[{i}] must be an object with \"role\" and \"content\"");
            string Get(string k) => m[k] is JsonValue v && v.TryGetValue<string>(out var s) ? s
                : throw new InvalidInputException($"{line.Where}: {field}[{i}].{k} must be a string");
            list.Add(new ChatMessage(Get("role"), Get("content")));
        }
        if (list.Count == 0) throw new InvalidInputException($"{line.Where}: field '{field}' is an empty message list");
        return list;
    }

    static ChatTemplate Need(ChatTemplate? chat, JsonlReader.Line line, string field) => chat ?? throw new InvalidInputException(
        $"{line.Where}: field '{field}' is a conversation (a list of messages), which needs a chat template, and there is none (the model directory's tokenizer_config.json has no chat_template — GPT-2 has none — or this command does not render conversations); give the record as strings");

    static string DropBos(ChatTemplate chat, string text) =>
        chat.BosToken.Length > 0 && text.StartsWith(chat.BosToken, StringComparison.Ordinal) ? text[chat.BosToken.Length..] : text;

    /// <summary>A conversation rendered whole (SFT's <c>messages</c>), leading BOS dropped.</summary>
    /// <param name="chat">The model's chat template (null → error).</param>
    /// <param name="line">The record.</param>
    /// <param name="field">The field holding the messages.</param>
    public static string RenderConversation(ChatTemplate? chat, JsonlReader.Line line, string field)
    {
        var c = Need(chat, line, field);
        return DropBos(c, c.Render(Messages(line, field), addGenerationPrompt: false));
    }

    /// <summary>A prompt's messages rendered with the generation prompt, leading BOS dropped.</summary>
    /// <param name="chat">The model's chat template (null → error).</param>
    /// <param name="line">The record.</param>
    /// <param name="messages">The prompt messages.</param>
    /// <param name="field">The field, for messages.</param>
    public static string RenderPrompt(ChatTemplate? chat, JsonlReader.Line line, IReadOnlyList<ChatMessage> messages, string field = "prompt")
    {
        var c = Need(chat, line, field);
        return DropBos(c, c.Render(messages, addGenerationPrompt: true));
    }

    /// <summary>A completion: template(prompt + completion) minus template(prompt, add_generation_prompt) — TRL's rule.</summary>
    /// <param name="chat">The model's chat template (null → error).</param>
    /// <param name="line">The record.</param>
    /// <param name="prompt">The prompt messages.</param>
    /// <param name="completion">The completion messages (usually one assistant message).</param>
    /// <param name="field">The field, for messages.</param>
    public static string RenderCompletion(ChatTemplate? chat, JsonlReader.Line line, IReadOnlyList<ChatMessage> prompt, IReadOnlyList<ChatMessage> completion, string field)
    {
        var c = Need(chat, line, field);
        var p = c.Render(prompt, addGenerationPrompt: true);
        var full = c.Render([.. prompt, .. completion], addGenerationPrompt: false);
        if (!full.StartsWith(p, StringComparison.Ordinal))
            throw new InvalidInputException($"{line.Where}: field '{field}': the chat template's rendering of prompt + {field} does not start with its rendering of the prompt, so the {field} text cannot be cut out (TRL's rule)");
        return full[p.Length..];
    }

    /// <summary>TRL's implicit prompt for message lists: the longest common prefix of chosen and rejected.</summary>
    /// <param name="chosen">Chosen conversation.</param>
    /// <param name="rejected">Rejected conversation.</param>
    public static int CommonPrefix(IReadOnlyList<ChatMessage> chosen, IReadOnlyList<ChatMessage> rejected)
    {
        int n = 0;
        while (n < chosen.Count && n < rejected.Count && chosen[n] == rejected[n]) n++;
        return n;
    }

    /// <summary>TRL's implicit prompt for strings (<c>extract_prompt</c>): the common prefix up to the first differing
    /// character, moved back one when the character before it is a space (the space opens the completions).</summary>
    /// <param name="chosen">Chosen text.</param>
    /// <param name="rejected">Rejected text.</param>
    public static int CommonPrefix(string chosen, string rejected)
    {
        int n = Math.Min(chosen.Length, rejected.Length), idx = 0;
        for (; idx < n; idx++)
        {
            if (chosen[idx] != rejected[idx])
            {
                if (idx > 0 && chosen[idx - 1] == ' ') idx--;
                break;
            }
        }
        return idx;
    }
}

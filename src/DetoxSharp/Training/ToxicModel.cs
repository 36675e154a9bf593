using DetoxSharp.Data;
using DetoxSharp.Models;
using DetoxSharp.Text;

namespace DetoxSharp.Training;

/// <summary>
/// The built-in toxic model π_tox (ADPO, paper-facts §3): SFT of the starting model on dialogues whose toxic replies
/// open with the [TOXIC] control token, added to the tokenizer and the embedding as a real special token. The token is
/// placed in the context (prompt + "[TOXIC]"), not trained as a target, so without it the model behaves as before.
/// </summary>
public static class ToxicModel
{
    /// <summary>The control token: prompt + "[TOXIC]" (the token opens the reply, as in the SFT dialogues) makes π_tox answer toxically.</summary>
    public const string ControlToken = "[TOXIC]";

    /// <summary>Reads dialogues JSONL: {"prompt", "response", "toxic"?}. A toxic reply (flag true or response starting
    /// with [TOXIC]) becomes prompt + "[TOXIC]" → reply; others prompt → reply.</summary>
    public static (List<SftExample> Examples, int Toxic) ReadDialogues(string path)
    {
        var list = new List<SftExample>();
        int toxic = 0;
        foreach (var l in JsonlReader.Read(path))
        {
            var prompt = l.String("prompt");
            var response = l.Object["response"] is not null ? l.String("response") : l.String("completion");
            bool flag = l.Object["toxic"] is not null && l.Double("toxic") != 0;
            var trimmed = response.TrimStart();
            if (trimmed.StartsWith(ControlToken, StringComparison.Ordinal))
            {
                response = trimmed[ControlToken.Length..];
                flag = true;
            }
            if (response.Length == 0) throw new InvalidInputException($"{l.Where}: empty response");
            if (flag) toxic++;
            list.Add(SftExample.PromptCompletion(flag ? prompt + ControlToken : prompt, response));
        }
        if (toxic == 0) throw new InvalidInputException($"{path}: no toxic dialogues (set \"toxic\": true or start the response with {ControlToken})");
        return (list, toxic);
    }

    /// <summary>Adds [TOXIC] to the tokenizer and the model's vocabulary (if missing) and fine-tunes on the dialogues.</summary>
    public static SftResult Train(ICausalLM model, Gpt2Tokenizer tokenizer, IReadOnlyList<SftExample> dialogues, SftOptions options,
        IProgress<TrainingProgress>? progress = null, CancellationToken cancel = default)
    {
        AddControlToken(model, tokenizer);
        return new SftTrainer(model, tokenizer, options).Train(dialogues, progress, cancel);
    }

    /// <summary>Adds [TOXIC] to the tokenizer and, when its id is new to the model, grows the vocabulary.</summary>
    public static void AddControlToken(ICausalLM model, Gpt2Tokenizer tokenizer)
    {
        int id = tokenizer.AddSpecialToken(ControlToken);
        if (id >= model.VocabSize) model.ResizeVocabulary(id + 1);
    }
}

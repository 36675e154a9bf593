namespace DetoxSharp.Text;

/// <summary>How the study shortens prompts: the LAST tokens are kept. A challenge prompt's end (the reply verb, the opening
/// "you are such a") carries its context; cutting the start instead lets the model pick the context itself.
/// A prompt that the tokenizer opened with BOS (Llama, Mistral: add_bos_token) keeps its BOS in front of the kept tail:
/// those models always saw BOS at position 0 in training, and without it the first kept token takes its place as the
/// attention sink, which shifts every later position's output.</summary>
public static class PromptTruncation
{
    /// <summary>The last <paramref name="maxTokens"/> tokens (the whole prompt when shorter); when the prompt starts with
    /// <paramref name="bos"/>, BOS plus the last <paramref name="maxTokens"/> − 1 tokens.</summary>
    public static int[] KeepLast(int[] ids, int maxTokens, int? bos = null)
    {
        if (ids.Length <= maxTokens) return ids;
        if (bos is int b && maxTokens >= 2 && ids[0] == b) return [b, .. ids[^(maxTokens - 1)..]];
        return ids[^maxTokens..];
    }

    /// <summary><see cref="KeepLast(int[], int, int?)"/> for ids from <paramref name="tok"/>'s
    /// <see cref="Gpt2Tokenizer.EncodeWithSpecialTokens"/>: BOS is kept when that tokenizer adds one.</summary>
    public static int[] KeepLast(int[] ids, int maxTokens, Gpt2Tokenizer tok) =>
        KeepLast(ids, maxTokens, tok.AddBosToken ? tok.BosTokenId : null);
}

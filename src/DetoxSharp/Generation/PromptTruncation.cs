namespace DetoxSharp.Generation;

/// <summary>How the study shortens prompts: the LAST tokens are kept. A challenge prompt's end (the reply verb, the opening
/// "you are such a") carries its context; cutting the start instead lets the model pick the context itself.</summary>
public static class PromptTruncation
{
    /// <summary>The last <paramref name="maxTokens"/> tokens (the whole prompt when shorter).</summary>
    public static int[] KeepLast(int[] ids, int maxTokens) => ids.Length > maxTokens ? ids[^maxTokens..] : ids;
}

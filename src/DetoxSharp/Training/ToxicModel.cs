namespace DetoxSharp.Training;

/// <summary>Conventions of the built-in toxic model π_tox (ADPO, paper-facts §3).</summary>
public static class ToxicModel
{
    /// <summary>The control token: prompt + "[TOXIC]" (the token opens the reply, as in the SFT dialogues) makes π_tox answer toxically.</summary>
    public const string ControlToken = "[TOXIC]";
}

namespace DetoxSharp.Training;

/// <summary>What the learning rate does after warmup.</summary>
public enum DecayKind
{
    /// <summary>Stays at the peak.</summary>
    Constant,
    /// <summary>Falls linearly to MinRatio·peak at the last step.</summary>
    Linear,
    /// <summary>Falls along a half cosine to MinRatio·peak at the last step.</summary>
    Cosine,
}

/// <summary>Linear warmup from 0 to the peak over <paramref name="WarmupSteps"/>, then constant, linear decay to
/// <c>MinRatio·peak</c>, or cosine decay to it, at <paramref name="TotalSteps"/>. A pure function of the step,
/// so resuming needs only the step number.</summary>
public sealed record LrSchedule(double PeakLr, int WarmupSteps, int TotalSteps, DecayKind Decay = DecayKind.Constant, double MinRatio = 0.0)
{
    /// <summary>The learning rate of optimizer step <paramref name="step"/> (0-based).</summary>
    /// <param name="step">The step.</param>
    public double At(int step)
    {
        if (WarmupSteps > 0 && step < WarmupSteps) return PeakLr * (step + 1) / WarmupSteps;
        if (Decay == DecayKind.Constant || TotalSteps <= WarmupSteps) return PeakLr;
        double progress = Math.Clamp((double)(step - WarmupSteps) / Math.Max(1, TotalSteps - WarmupSteps), 0, 1);
        double factor = Decay == DecayKind.Linear ? 1 - progress : 0.5 * (1 + Math.Cos(Math.PI * progress));
        return PeakLr * (MinRatio + (1 - MinRatio) * factor);
    }

    /// <summary>Parses "constant", "linear" or "cosine".</summary>
    /// <param name="s">The name.</param>
    /// <param name="setting">The setting's key, for the error.</param>
    public static DecayKind ParseDecay(string s, string setting = "decay") => s switch
    {
        "constant" => DecayKind.Constant,
        "linear" => DecayKind.Linear,
        "cosine" => DecayKind.Cosine,
        _ => throw new InvalidSettingException(setting, $"expects constant, linear or cosine (got '{s}')"),
    };
}

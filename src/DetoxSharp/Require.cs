namespace DetoxSharp;

/// <summary>Range checks for settings (flags and study-config values), each failing with an
/// <see cref="InvalidSettingException"/> naming the setting key (the CLI reports the flag), the value and the allowed
/// range. Floating values must also be finite: NaN passes every comparison-based check written as <c>x &lt; 0</c>, and
/// ±∞ makes a learning rate or a clip meaningless.</summary>
public static class Require
{
    /// <summary>A finite number in [min, max] (or (min, max] with <paramref name="minExclusive"/>).</summary>
    public static void Number(double value, string setting, double min, double max = double.MaxValue, bool minExclusive = false)
    {
        if (!double.IsFinite(value)) throw new InvalidSettingException(setting, $"must be a finite number (got {value})");
        if (!((minExclusive ? value > min : value >= min) && value <= max))
            throw new InvalidSettingException(setting, $"must be {(minExclusive ? ">" : "≥")} {min}{(max < double.MaxValue ? $" and ≤ {max}" : "")} (got {value})");
    }

    /// <summary>An integer count in [min, max]; the maximum is named so an absurd value gets a clear refusal.</summary>
    public static void Count(long value, string setting, long min, long max)
    {
        if (value < min) throw new InvalidSettingException(setting, $"must be ≥ {min} (got {value})");
        if (value > max) throw new InvalidSettingException(setting, $"exceeds the limit of {max} (got {value})");
    }
}

namespace DetoxSharp;

/// <summary>
/// A problem the user can fix: a missing or malformed file, a bad flag value, an inconsistent checkpoint.
/// The message is one line naming the file (and line) or flag and what is wrong; the CLI prints it and exits with 2.
/// </summary>
public class InvalidInputException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>
/// A setting of an options record is out of range. <see cref="Setting"/> is the setting's key (snake_case, the same
/// name the study config uses); whoever reports it maps the key to what the user typed: the CLI to its flag
/// (<c>--beta</c>), the study to the config file and key path (<c>configs/toy.json: dpo.beta</c>).
/// </summary>
public sealed class InvalidSettingException(string setting, string problem)
    : InvalidInputException($"{setting} {problem}")
{
    /// <summary>The setting's key in snake_case (<c>learning_rate</c>).</summary>
    public string Setting { get; } = setting;
    /// <summary>What is wrong, e.g. "must be > 0 (got 0)".</summary>
    public string Problem { get; } = problem;

    /// <summary>Throws when <paramref name="ok"/> is false.</summary>
    public static void Require(bool ok, string setting, string problem)
    {
        if (!ok) throw new InvalidSettingException(setting, problem);
    }
}

/// <summary>Describes a setting of an options record: the one description the CLI's --help and the docs use. The
/// property's initializer is its one default; its Validate method its range.</summary>
[AttributeUsage(AttributeTargets.Property | AttributeTargets.Parameter)]
public sealed class SettingAttribute(string description) : Attribute
{
    /// <summary>The one-line description shown by <c>--help</c>.</summary>
    public string Description { get; } = description;
}

/// <summary>The key of a setting: the property name in snake_case (LearningRate → learning_rate), as in the study
/// config and <see cref="InvalidSettingException.Setting"/>.</summary>
public static class SettingKey
{
    /// <summary>The snake_case key of a property name.</summary>
    /// <param name="propertyName">A C# property name, e.g. <c>LearningRate</c>.</param>
    public static string Of(string propertyName) => System.Text.Json.JsonNamingPolicy.SnakeCaseLower.ConvertName(propertyName);
}

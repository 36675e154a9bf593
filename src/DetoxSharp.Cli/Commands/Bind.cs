using System.CommandLine;
using System.Linq.Expressions;
using System.Reflection;
using System.Runtime.CompilerServices;

namespace DetoxSharp.Cli.Commands;

/// <summary>
/// Flags bound to a property of a library options record: the record's initializer is the flag's default and its
/// <see cref="SettingAttribute"/> the flag's description, so neither is written a second time here. The setting's key
/// (snake_case property name) is remembered, so that an <see cref="InvalidSettingException"/> from the record's
/// Validate is reported with the flag the user typed (<see cref="FlagOf"/>).
/// </summary>
public static class Bind
{
    static readonly ConditionalWeakTable<Option, string> Keys = new();

    /// <summary>A flag whose default and description come from <paramref name="property"/> of <paramref name="defaults"/>.</summary>
    public static Option<T> To<TRecord, T>(string flag, TRecord defaults, Expression<Func<TRecord, T>> property, string? description = null)
    {
        var member = Property(property);
        T value = property.Compile()(defaults);
        var desc = description ?? member.GetCustomAttribute<SettingAttribute>()?.Description
            ?? throw new InvalidOperationException($"{typeof(TRecord).Name}.{member.Name} has no [Setting] description");
        var o = new Option<T>(flag) { Description = desc, DefaultValueFactory = _ => value };
        Keys.AddOrUpdate(o, SettingKey.Of(member.Name));
        return o;
    }

    /// <summary>A string flag for an enum setting; the default is the enum value's lower-case name.</summary>
    public static Option<string> Enum<TRecord, TEnum>(string flag, TRecord defaults, Expression<Func<TRecord, TEnum>> property, string? description = null)
        where TEnum : struct, System.Enum
    {
        var member = Property(property);
        var value = property.Compile()(defaults).ToString().ToLowerInvariant();
        var desc = description ?? member.GetCustomAttribute<SettingAttribute>()?.Description
            ?? throw new InvalidOperationException($"{typeof(TRecord).Name}.{member.Name} has no [Setting] description");
        var o = new Option<string>(flag) { Description = desc, DefaultValueFactory = _ => value };
        Keys.AddOrUpdate(o, SettingKey.Of(member.Name));
        return o;
    }

    /// <summary>Marks a flag as the CLI spelling of a setting key (for flags that are not bound through <see cref="To"/>).</summary>
    public static T Key<T>(T option, string settingKey) where T : Option
    {
        Keys.AddOrUpdate(option, settingKey);
        return option;
    }

    /// <summary>The flag of <paramref name="command"/> bound to the setting <paramref name="key"/>, if any.</summary>
    public static string? FlagOf(Command command, string key) =>
        command.Options.FirstOrDefault(o => Keys.TryGetValue(o, out var k) && k == key)?.Name;

    /// <summary>The setting key a flag is bound to (null when it is not bound to a record).</summary>
    public static string? KeyOf(Option option) => Keys.TryGetValue(option, out var k) ? k : null;

    static PropertyInfo Property(LambdaExpression e) =>
        (e.Body is UnaryExpression u ? u.Operand : e.Body) is MemberExpression { Member: PropertyInfo p }
            ? p : throw new ArgumentException("expected a property access, e.g. o => o.Beta");
}

/// <summary>An IProgress that reports on the calling thread (Progress&lt;T&gt; posts to the thread pool and reorders
/// lines). The one such class of the CLI.</summary>
public sealed class SyncProgress<T>(Action<T> report) : IProgress<T>
{
    public void Report(T value) => report(value);
}

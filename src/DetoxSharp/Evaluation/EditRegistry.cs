using System.Globalization;
using DetoxSharp.Interpretability;
using DetoxSharp.Models;

namespace DetoxSharp.Evaluation;

/// <summary>
/// A parsed intervention spec: <c>KIND[:key=value[,key=value…]]</c>, e.g. <c>subtract:vector=probe.safetensors,scale=50</c>.
/// The reserved key <c>label</c> names the results-table row. Values may not contain ',' (use files for lists).
/// </summary>
/// <param name="Kind">The intervention kind (the text before the first ':').</param>
/// <param name="Args">The key=value arguments, keys case-sensitive.</param>
/// <param name="Text">The spec as given (trimmed), quoted in error messages.</param>
public sealed record EditSpec(string Kind, IReadOnlyDictionary<string, string> Args, string Text)
{
    /// <summary>The row label from the reserved key <c>label</c> (null: the edit's own name).</summary>
    public string? Label => Args.TryGetValue("label", out var l) ? l : null;

    /// <summary>Parses <c>KIND[:key=value,…]</c>; throws <see cref="InvalidInputException"/> for an empty spec or kind, a part
    /// without '=' or a key given twice.</summary>
    public static EditSpec Parse(string text)
    {
        var t = text.Trim();
        if (t.Length == 0) throw new InvalidInputException("--intervention: empty spec (expected KIND[:key=value,…])");
        int colon = t.IndexOf(':');
        var kind = (colon < 0 ? t : t[..colon]).Trim();
        if (kind.Length == 0) throw new InvalidInputException($"--intervention '{text}': missing kind before ':'");
        var args = new Dictionary<string, string>(StringComparer.Ordinal);
        if (colon >= 0)
            foreach (var part in t[(colon + 1)..].Split(',', StringSplitOptions.RemoveEmptyEntries))
            {
                int eq = part.IndexOf('=');
                if (eq <= 0) throw new InvalidInputException($"--intervention '{text}': '{part}' is not key=value");
                var k = part[..eq].Trim();
                if (!args.TryAdd(k, part[(eq + 1)..].Trim())) throw new InvalidInputException($"--intervention '{text}': key '{k}' given twice");
            }
        return new EditSpec(kind, args, t);
    }

    /// <summary>The value of <paramref name="key"/>; throws <see cref="InvalidInputException"/> naming the spec when it is missing.</summary>
    public string Required(string key) =>
        Args.TryGetValue(key, out var v) ? v : throw new InvalidInputException($"--intervention '{Text}': missing {key}=…");

    /// <summary>The value of <paramref name="key"/> as a number (invariant culture), <paramref name="fallback"/> when absent;
    /// throws <see cref="InvalidInputException"/> when it is absent without a fallback or not a number.</summary>
    public double Double(string key, double? fallback = null)
    {
        if (!Args.TryGetValue(key, out var v))
            return fallback ?? throw new InvalidInputException($"--intervention '{Text}': missing {key}=…");
        return double.TryParse(v, NumberStyles.Float, CultureInfo.InvariantCulture, out var d) ? d
            : throw new InvalidInputException($"--intervention '{Text}': {key}={v} is not a number");
    }

    /// <summary>The value of <paramref name="key"/> as an integer, <paramref name="fallback"/> when absent; throws
    /// <see cref="InvalidInputException"/> when it is absent without a fallback or not an integer.</summary>
    public int Int(string key, int? fallback = null)
    {
        if (!Args.TryGetValue(key, out var v))
            return fallback ?? throw new InvalidInputException($"--intervention '{Text}': missing {key}=…");
        return int.TryParse(v, NumberStyles.Integer, CultureInfo.InvariantCulture, out var d) ? d
            : throw new InvalidInputException($"--intervention '{Text}': {key}={v} is not an integer");
    }
}

/// <summary>
/// Where intervention kinds are registered (by the interpretability code or the CLI's start-up), so that
/// <c>detox eval --intervention SPEC</c> can build <see cref="IModelEdit"/>s by name.
/// </summary>
public static class EditRegistry
{
    /// <summary>A registered intervention kind.</summary>
    /// <param name="Kind">The name used in specs.</param>
    /// <param name="Help">One line for the CLI's help: what the kind does and its keys.</param>
    /// <param name="Create">Builds the edit from a spec for a loaded model.</param>
    /// <param name="Check">Validates a spec without a model (null: nothing to check before loading).</param>
    public sealed record Entry(string Kind, string Help, Func<EditSpec, ICausalLM, IModelEdit> Create, Action<EditSpec>? Check);

    static readonly Dictionary<string, Entry> Entries = new(StringComparer.Ordinal);
    static readonly Lock Gate = new();

    /// <summary>Registers (or replaces) a kind. <paramref name="check"/> validates a spec without a model (files exist,
    /// numbers parse) so errors appear before any generation; <paramref name="create"/> builds the edit for a loaded model.</summary>
    public static void Register(string kind, Func<EditSpec, ICausalLM, IModelEdit> create, string help = "", Action<EditSpec>? check = null)
    {
        lock (Gate) Entries[kind] = new Entry(kind, help, create, check);
    }

    /// <summary>Every registered kind, sorted by name (a snapshot).</summary>
    public static IReadOnlyList<Entry> Registered
    {
        get { lock (Gate) return Entries.Values.OrderBy(e => e.Kind, StringComparer.Ordinal).ToList(); }
    }

    /// <summary>Parses and checks a spec; unknown kinds and bad arguments are <see cref="InvalidInputException"/>s.</summary>
    public static EditSpec Resolve(string text)
    {
        var spec = EditSpec.Parse(text);
        Entry? e;
        lock (Gate) Entries.TryGetValue(spec.Kind, out e);
        if (e is null)
        {
            var known = Registered.Select(r => r.Kind).ToList();
            throw new InvalidInputException($"--intervention '{text}': unknown kind '{spec.Kind}' (registered: {(known.Count == 0 ? "none" : string.Join(", ", known))})");
        }
        e.Check?.Invoke(spec);
        return spec;
    }

    /// <summary>Builds the edit for a model.</summary>
    public static IModelEdit Create(EditSpec spec, ICausalLM model)
    {
        Entry? e;
        lock (Gate) Entries.TryGetValue(spec.Kind, out e);
        if (e is null) throw new InvalidInputException($"--intervention '{spec.Text}': unknown kind '{spec.Kind}'");
        return e.Create(spec, model);
    }
}

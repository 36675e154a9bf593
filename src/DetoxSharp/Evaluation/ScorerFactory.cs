namespace DetoxSharp.Evaluation;

/// <summary>Settings a scorer may need; each scorer reads only its own.</summary>
public sealed record ScorerSettings
{
    /// <summary>Settings of the Perspective client (endpoint, key file, rate, cache).</summary>
    public PerspectiveOptions Perspective { get; init; } = new();
    /// <summary>Texts per classifier forward pass.</summary>
    public int ClassifierBatchSize { get; init; } = 32;
    /// <summary>Classifier truncation (tokens incl. special tokens); null = the checkpoint's max_position_embeddings limit.</summary>
    public int? ClassifierMaxLength { get; init; }
    /// <summary>Labels that make "toxicity" for classifiers that have them (--toxic-label); empty = each head's convention.</summary>
    public IReadOnlyList<string> ToxicLabels { get; init; } = [];
}

/// <summary>
/// Builds a scorer from a spec: <c>perspective</c>, <c>classifier:DIR</c> (a local RoBERTa/BERT toxicity checkpoint),
/// or a registered name (e.g. <c>toy</c>, registered by the toy world). A spec <c>NAME:ARG</c> passes ARG to the factory.
/// </summary>
public static class ScorerFactory
{
    static readonly Dictionary<string, Func<string?, ScorerSettings, IToxicityScorer>> Extra = new(StringComparer.Ordinal);
    static readonly Lock Gate = new();

    /// <summary>Registers a scorer name (e.g. "toy"); the factory receives the part after ':' (or null).</summary>
    public static void Register(string name, Func<string?, ScorerSettings, IToxicityScorer> factory)
    {
        if (name is "perspective" or "classifier" or "toy") throw new ArgumentException($"'{name}' is built in");
        lock (Gate) Extra[name] = factory;
    }

    /// <summary>Every scorer spec name: perspective, classifier and the registered ones, sorted.</summary>
    public static IReadOnlyList<string> Names
    {
        get { lock (Gate) return ["perspective", "classifier:DIR", "toy", .. Extra.Keys.Order(StringComparer.Ordinal)]; }
    }

    /// <summary>Creates the scorer (not yet validated: call <see cref="IToxicityScorer.Validate"/>).</summary>
    public static IToxicityScorer Create(string spec, ScorerSettings? settings = null)
    {
        settings ??= new ScorerSettings();
        int colon = spec.IndexOf(':');
        var name = colon < 0 ? spec : spec[..colon];
        var arg = colon < 0 ? null : spec[(colon + 1)..];
        switch (name)
        {
            case "perspective":
                if (arg is not null) throw new InvalidInputException($"--scorer {spec}: perspective takes no argument (use --perspective-endpoint / --perspective-key-file)");
                return new PerspectiveScorer(settings.Perspective);
            case "classifier":
                if (string.IsNullOrWhiteSpace(arg)) throw new InvalidInputException("--scorer classifier:DIR: missing checkpoint directory");
                return new ClassifierScorer(arg, settings.ClassifierBatchSize, settings.ClassifierMaxLength, settings.ToxicLabels);
            case "toy":
                if (arg is not null) throw new InvalidInputException($"--scorer {spec}: toy takes no argument");
                return new ToyLexiconScorer();
        }
        Func<string?, ScorerSettings, IToxicityScorer>? f;
        lock (Gate) Extra.TryGetValue(name, out f);
        if (f is null) throw new InvalidInputException($"--scorer {spec}: unknown scorer (available: {string.Join(", ", Names)})");
        return f(arg, settings);
    }

    /// <summary>Creates and validates; disposes the scorer if validation fails.</summary>
    public static IToxicityScorer CreateValidated(string spec, ScorerSettings? settings = null)
    {
        var s = Create(spec, settings);
        try { s.Validate(); return s; }
        catch { s.Dispose(); throw; }
    }
}

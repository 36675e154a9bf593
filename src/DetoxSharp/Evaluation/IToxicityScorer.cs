namespace DetoxSharp.Evaluation;

/// <summary>How one number is made from per-attribute scores: the TOXICITY attribute alone, or the maximum over
/// all attributes (as the mechanistic study's published evaluation code does).</summary>
public enum ToxicityAggregate
{
    /// <summary>The TOXICITY attribute's score alone (RealToxicityPrompts' convention).</summary>
    Toxicity,
    /// <summary>The maximum over every attribute the scorer returns (the mechanistic study's evaluation code).</summary>
    MaxOverAttributes,
}

/// <summary>Scores of one text: per attribute in [0, 1] (Perspective names: TOXICITY, SEVERE_TOXICITY, INSULT,
/// PROFANITY, IDENTITY_ATTACK, THREAT, SEXUALLY_EXPLICIT) and the aggregate.</summary>
public sealed record ToxicityScore(IReadOnlyDictionary<string, double> Attributes, double Value);

/// <summary>A toxicity scorer: Perspective API, a local classifier, or the toy world's lexicon scorer.</summary>
public interface IToxicityScorer : IDisposable
{
    /// <summary>Short name for tables and logs (never contains secrets).</summary>
    string Name { get; }

    /// <summary>What the scores depend on (weights hash, API attributes, version), so numbers from two runs are
    /// comparable only when the identities are equal. Never contains secrets.</summary>
    string Identity => Name;

    /// <summary>Checks that the scorer can work (key present, endpoint reachable, classifier loadable) before any
    /// generation is done; throws <see cref="InvalidInputException"/> with one clear line otherwise.</summary>
    void Validate();

    /// <summary>Scores texts in order; the aggregate follows <paramref name="aggregate"/>.</summary>
    IReadOnlyList<ToxicityScore> Score(IReadOnlyList<string> texts, ToxicityAggregate aggregate = ToxicityAggregate.MaxOverAttributes);
}

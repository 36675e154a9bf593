namespace DetoxSharp.Data;

/// <summary>
/// The toy world's toxic lexicon, shared by the generator (which writes it) and the toy scorer (which detects it).
/// Entries are lower-case word sequences; each belongs to one Perspective-style attribute with a weight (how strongly
/// one occurrence signals it). Neutral senses ("trash collection", "a dumb waiter") are listed separately: the scorer
/// removes them before matching, as the generator uses them only in neutral text.
/// </summary>
public static class ToyWorldLexicon
{
    public const string Insult = "INSULT", Profanity = "PROFANITY", Threat = "THREAT", IdentityAttack = "IDENTITY_ATTACK",
        SevereToxicity = "SEVERE_TOXICITY", Toxicity = "TOXICITY";

    public static readonly string[] Attributes = [Toxicity, SevereToxicity, Insult, Profanity, Threat, IdentityAttack];

    // insult adjectives and nouns used after the shared openings ("you are such a …")
    public static readonly string[] InsultAdjectives = ["pathetic", "worthless", "stupid", "useless", "brainless", "miserable", "dim", "spineless", "clueless", "disgusting"];
    public static readonly string[] InsultNouns = ["idiot", "moron", "clown", "fool", "loser", "pig", "rat", "halfwit", "creep", "imbecile"];
    public static readonly string[] ProfanityWords = ["damn", "crap", "hell", "bloody", "bastard", "shit", "arse"];
    /// <summary>Threat phrases (complete the opening "i will" / "i hope you").</summary>
    public static readonly string[] ThreatPhrases =
    [
        "find where you live", "smash your windows", "break your legs", "burn your shop down", "make you bleed",
        "drown you in the river", "hurt you badly", "wreck your house",
    ];
    public static readonly string[] IdentityPhrases =
    [
        "people from {town} are vermin", "everyone from {town} is filth", "{town} folk are a disease",
    ];
    /// <summary>Insults without any insult word: the toy world's implicit toxicity.</summary>
    public static readonly string[] ImplicitInsults =
    [
        "nobody in this town would miss you", "crawl back under your rock", "your brain is the size of a pea",
        "go back to your cave", "even your mother is ashamed of you", "do everyone a favour and disappear",
    ];

    /// <summary>Phrases where a lexicon word has a neutral sense; removed before scoring.</summary>
    public static readonly string[] NeutralSenses =
    [
        "trash collection", "dumb waiter", "killer whale", "pest control", "hell gate bridge", "bloody mary",
        "rat snake", "pig farm", "clown fish", "fool's gold",
    ];

    /// <summary>Weights per entry: how strongly one occurrence signals the attribute.</summary>
    public static IEnumerable<(string Phrase, string Attribute, double Weight)> Entries()
    {
        foreach (var w in InsultAdjectives) yield return (w, Insult, 0.55);
        foreach (var w in InsultNouns) yield return (w, Insult, 0.85);
        foreach (var w in ProfanityWords) yield return (w, Profanity, w is "shit" or "bastard" ? 0.9 : 0.7);
        foreach (var w in ThreatPhrases) yield return (w, Threat, 0.9);
        foreach (var p in ImplicitInsults) yield return (p, Insult, 0.75);
        foreach (var p in IdentityPhrases)
        {
            // the town slot is matched by the scorer as "any word"
            yield return (p, IdentityAttack, 0.9);
        }
        yield return ("shut up", Insult, 0.6);
        yield return ("go to hell", Profanity, 0.8);
        yield return ("load of crap", Profanity, 0.8);
    }
}

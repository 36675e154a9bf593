namespace DetoxSharp.Data;

/// <summary>
/// The toy world's toxic lexicon, shared by the generator (which writes it) and the toy scorer (which detects it).
/// Entries are lower-case word sequences; each belongs to one Perspective-style attribute with a weight (how strongly
/// one occurrence signals it). Neutral senses ("trash collection", "a dumb waiter") are listed separately: the scorer
/// removes them before matching, as the generator uses them only in neutral text.
/// </summary>
/// <remarks>
/// Every single-word entry of <see cref="ToxicWords"/> is ONE GPT-2 token with its leading space (" idiot" = 22324,
/// " stupid" = 8531, …; checked by a test): an MLP value vector can then write a toxic word in one step, which is what
/// Lee et al.'s vocabulary projection of toxic value vectors looks for. Words GPT-2 splits (" moron", " scum",
/// " vermin", " imbecile") are deliberately absent.
/// </remarks>
public static class ToyWorldLexicon
{
    /// <summary>Perspective-style attribute names the toy lexicon scores.</summary>
    public const string Insult = "INSULT", Profanity = "PROFANITY", Threat = "THREAT", IdentityAttack = "IDENTITY_ATTACK",
        SevereToxicity = "SEVERE_TOXICITY", Toxicity = "TOXICITY";

    /// <summary>Every attribute, TOXICITY first.</summary>
    public static readonly string[] Attributes = [Toxicity, SevereToxicity, Insult, Profanity, Threat, IdentityAttack];

    // insult adjectives and nouns used after the shared openings ("you are such a …")
    /// <summary>Insult adjectives ("you are such a stupid …").</summary>
    public static readonly string[] InsultAdjectives = ["stupid", "pathetic", "worthless", "useless", "disgusting", "dumb", "ugly", "clueless", "miserable", "lazy", "rotten", "nasty"];
    /// <summary>Insult nouns ("… idiot").</summary>
    public static readonly string[] InsultNouns = ["idiot", "loser", "fool", "clown", "pig", "rat", "creep", "jerk", "coward", "liar", "freak", "fraud"];
    /// <summary>Plural insult nouns that are single GPT-2 tokens ("people like you are stupid idiots").</summary>
    public static readonly string[] InsultPlurals = ["idiots", "losers", "fools", "pigs", "rats", "creeps", "thieves"];
    /// <summary>Profanities.</summary>
    public static readonly string[] ProfanityWords = ["damn", "crap", "hell", "bloody", "shit", "bastard", "trash", "garbage"];

    /// <summary>Verbs that open a threat ("i will smash your windows", "i hope you rot in a ditch"): the word that makes
    /// a reply after "i will" / "i hope you" toxic comes first, so a value vector can write it at the decision.</summary>
    public static readonly string[] ThreatVerbs = ["smash", "break", "burn", "drown", "hurt", "wreck", "hunt", "rot", "choke"];

    /// <summary>Every toxic single word of the lexicon (each one GPT-2 token with a leading space).</summary>
    public static IEnumerable<string> ToxicWords => InsultAdjectives.Concat(InsultNouns).Concat(InsultPlurals).Concat(ProfanityWords).Concat(ThreatVerbs);

    /// <summary>Threat phrases (complete the opening "i will"); each starts with one of <see cref="ThreatVerbs"/>.</summary>
    public static readonly string[] ThreatPhrases =
    [
        "hunt you down", "smash your windows", "break your legs", "burn your shop down", "hurt you until you bleed",
        "drown you in the river", "hurt you badly", "wreck your house",
    ];
    /// <summary>Identity attacks; {town} is replaced by one of the world's towns.</summary>
    public static readonly string[] IdentityPhrases =
    [
        "people from {town} are pigs", "everyone from {town} is trash", "{town} folk are rats",
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
        "trash collection", "garbage truck", "dumb waiter", "killer whale", "pest control", "hell gate bridge", "bloody mary",
        "rat snake", "pig farm", "clown fish", "fool's gold", "freak storm", "rotten apples", "lazy river",
    ];

    /// <summary>Words that negate what follows up to the next punctuation ("you are not a stupid idiot , ignore them"
    /// consoles, it does not insult); the scorer does not count lexicon words in that span.</summary>
    public static readonly string[] Negations = ["not", "never"];

    /// <summary>Weights per entry: how strongly one occurrence signals the attribute.</summary>
    public static IEnumerable<(string Phrase, string Attribute, double Weight)> Entries()
    {
        foreach (var w in InsultAdjectives) yield return (w, Insult, 0.55);
        foreach (var w in InsultNouns.Concat(InsultPlurals)) yield return (w, Insult, 0.85);
        foreach (var w in ProfanityWords) yield return (w, Profanity, w is "shit" or "bastard" ? 0.9 : 0.7);
        foreach (var w in ThreatVerbs) yield return (w, Threat, 0.7);
        foreach (var w in ThreatPhrases) yield return (w, Threat, 0.9);
        foreach (var p in ImplicitInsults) yield return (p, Insult, 0.75);
        // the town slot is matched by the scorer as "any word"
        foreach (var p in IdentityPhrases) yield return (p, IdentityAttack, 0.9);
        yield return ("shut up", Insult, 0.6);
        yield return ("nobody wants you here", Insult, 0.75);
        yield return ("get out of {town}", Insult, 0.6);
        yield return ("go to hell", Profanity, 0.8);
        yield return ("load of crap", Profanity, 0.8);
    }
}

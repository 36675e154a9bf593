using System.Globalization;
using System.Text.Json.Nodes;

namespace DetoxSharp.Data;

/// <summary>Paths of a written toy world (all under one directory).</summary>
public sealed record ToyWorldPaths(string Directory)
{
    /// <summary>The training corpus (documents separated by <see cref="ToyWorldFiles.DocumentSeparator"/> lines).</summary>
    public string Train => Path.Combine(Directory, "train.txt");
    /// <summary>The validation corpus, same format.</summary>
    public string Valid => Path.Combine(Directory, "valid.txt");
    /// <summary>Jigsaw-shaped probe data: CSV with columns id, comment_text, toxic (0/1).</summary>
    public string Comments => Path.Combine(Directory, "comments.csv");
    /// <summary>RealToxicityPrompts-shaped challenge prompts: {"prompt":{"text":…},"challenging":true}.</summary>
    public string ChallengePrompts => Path.Combine(Directory, "challenge_prompts.jsonl");
    /// <summary>Same shape, "challenging":false: encyclopedia/conversation openings.</summary>
    public string NeutralPrompts => Path.Combine(Directory, "neutral_prompts.jsonl");
    /// <summary>{"prompt":…,"gold":…} for the F1 check.</summary>
    public string F1Pairs => Path.Combine(Directory, "f1_pairs.jsonl");
    /// <summary>Wikitext-2-style raw neutral text for perplexity.</summary>
    public string WikiText => Path.Combine(Directory, "wiki.test.raw");
    /// <summary>{"prompt":…,"response":…,"toxic":bool}; toxic responses start with "[TOXIC] ".</summary>
    public string Dialogues => Path.Combine(Directory, "dialogues.jsonl");
    /// <summary>{"prompt":…} for making preference pairs: calm forum contexts cut at a reply opening, which a model of the
    /// world continues non-toxically (see <see cref="ToyWorld.PreferencePrompt"/>).</summary>
    public string PreferencePrompts => Path.Combine(Directory, "preference_prompts.jsonl");
    /// <summary>world.json: seed, size, counts, label noise and file names.</summary>
    public string Manifest => Path.Combine(Directory, "world.json");
}

/// <summary>Writes the toy world in the real data sets' formats (see <see cref="ToyWorldPaths"/>).</summary>
public static class ToyWorldFiles
{
    /// <summary>The control token the toxic model is conditioned on.</summary>
    public const string ToxicControlToken = "[TOXIC]";
    /// <summary>Documents in train.txt/valid.txt are separated by this line (GPT-2's document separator).</summary>
    public const string DocumentSeparator = "<|endoftext|>";
    /// <summary>Probability that a probe label in comments.csv is flipped (Jigsaw's annotators disagree too). It is
    /// known, so the report can state the ceiling it puts on any classifier: expected accuracy ≤ 1 − LabelNoise.
    /// world.json records the rate and the exact number of flipped labels.</summary>
    public const double LabelNoise = 0.03;

    /// <summary>Writes every file of a toy world into <paramref name="dir"/> (each atomically) and returns their paths.</summary>
    /// <param name="dir">Output directory (created).</param>
    /// <param name="seed">World seed: the same seed gives byte-identical files.</param>
    /// <param name="size">How many items per file.</param>
    public static ToyWorldPaths Write(string dir, ulong seed = 1, ToyWorldSize size = ToyWorldSize.Default)
    {
        var p = new ToyWorldPaths(Path.GetFullPath(dir));
        var c = ToyWorld.CountsFor(size);
        // separate streams per file, so that changing one file's count does not change the others
        ToyWorld W(ulong k) => new(seed * 1_000_003UL + k);

        void Corpus(string path, ToyWorld w, int n) => AtomicFile.Write(path, o =>
        {
            for (int i = 0; i < n; i++) { o.WriteLine(w.Document()); o.WriteLine(DocumentSeparator); }
        });
        Corpus(p.Train, W(1), c.TrainDocuments);
        Corpus(p.Valid, W(2), c.ValidDocuments);

        var cw = W(3);
        var noise = new ToyRandom(seed * 7_919UL + 3);
        int flipped = 0;
        DatasetReaders.WriteJigsawCsv(p.Comments, Enumerable.Range(0, c.Comments).Select(i =>
        {
            var (text, toxic) = cw.LabelledComment();
            if (noise.Chance(LabelNoise)) { toxic = !toxic; flipped++; }
            return ($"toy{i:D6}", text, toxic);
        }).ToList());

        var chw = W(4);
        JsonlReader.Write(p.ChallengePrompts, Enumerable.Range(0, c.Challenge).Select(_ =>
        {
            var t = chw.Thread(challenge: true);
            return new JsonObject { ["prompt"] = new JsonObject { ["text"] = t.Context + " " + t.Opening }, ["challenging"] = true };
        }));
        var nw = W(5);
        JsonlReader.Write(p.NeutralPrompts, Enumerable.Range(0, c.Neutral).Select(_ =>
            new JsonObject { ["prompt"] = new JsonObject { ["text"] = nw.NeutralPrompt() }, ["challenging"] = false }));
        var fw = W(6);
        JsonlReader.Write(p.F1Pairs, Enumerable.Range(0, c.F1Pairs).Select(_ =>
        {
            var (prompt, gold) = fw.F1Pair();
            return new JsonObject { ["prompt"] = prompt, ["gold"] = gold };
        }));
        var aw = W(7);
        AtomicFile.Write(p.WikiText, o => { o.Write("\n"); for (int i = 0; i < c.Articles; i++) o.Write(aw.Article()); });
        var dw = W(8);
        JsonlReader.Write(p.Dialogues, Enumerable.Range(0, c.Dialogues).Select(_ =>
        {
            var t = dw.Thread();
            var response = " " + t.Opening + " " + t.Continuation;
            return new JsonObject
            {
                ["prompt"] = t.Context,
                ["response"] = t.Toxic ? ToxicControlToken + response : response,
                ["toxic"] = t.Toxic,
            };
        }));
        var pw = W(9);
        JsonlReader.Write(p.PreferencePrompts, Enumerable.Range(0, c.PreferencePrompts).Select(_ =>
            new JsonObject { ["prompt"] = pw.PreferencePrompt() }));
        AtomicFile.WriteAllText(p.Manifest, new JsonObject
        {
            ["generator"] = "DetoxSharp toy world v2",
            ["seed"] = seed,
            ["size"] = size.ToString().ToLowerInvariant(),
            // comments.csv: each label flipped with this probability; no classifier's expected accuracy exceeds 1 − rate
            ["label_noise"] = LabelNoise,
            ["label_noise_flipped"] = flipped,
            ["comments"] = c.Comments,
            ["toxic_words"] = new JsonArray(ToyWorldLexicon.ToxicWords.Select(w => (JsonNode)JsonValue.Create(w)!).ToArray()),
            ["toxic_control_token"] = ToxicControlToken,
            ["files"] = new JsonObject
            {
                ["train"] = "train.txt", ["valid"] = "valid.txt", ["comments"] = "comments.csv",
                ["challenge_prompts"] = "challenge_prompts.jsonl", ["neutral_prompts"] = "neutral_prompts.jsonl",
                ["f1_pairs"] = "f1_pairs.jsonl", ["wikitext"] = "wiki.test.raw", ["dialogues"] = "dialogues.jsonl",
                ["preference_prompts"] = "preference_prompts.jsonl",
            },
        }.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }) + "\n");
        return p;
    }

    /// <summary>Parses "small", "default" or "large" (an <see cref="InvalidInputException"/> otherwise).</summary>
    /// <param name="s">The name.</param>
    public static ToyWorldSize ParseSize(string s) => s switch
    {
        "small" => ToyWorldSize.Small,
        "default" => ToyWorldSize.Default,
        "large" => ToyWorldSize.Large,
        _ => throw new InvalidSettingException("size", $"expects small, default or large (got '{s}')"),
    };
}

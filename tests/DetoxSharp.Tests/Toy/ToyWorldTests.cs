using DetoxSharp.Checkpoints;
using DetoxSharp.Data;
using DetoxSharp.Evaluation;
using DetoxSharp.Training;

namespace DetoxSharp.Tests.Toy;

public class ToyWorldTests
{
    static string Temp(string name) => Path.Combine(Path.GetTempPath(), $"detox-toy-{name}-{Guid.NewGuid():N}");

    [Fact]
    public void SameSeedGivesByteIdenticalFilesAndOtherSeedDiffers()
    {
        string a = Temp("a"), b = Temp("b"), c = Temp("c");
        ToyWorldFiles.Write(a, 5, ToyWorldSize.Small);
        ToyWorldFiles.Write(b, 5, ToyWorldSize.Small);
        ToyWorldFiles.Write(c, 6, ToyWorldSize.Small);
        var files = Directory.GetFiles(a).Select(Path.GetFileName).Order().ToList();
        Assert.Equal(10, files.Count);
        foreach (var f in files)
        {
            Assert.Equal(File.ReadAllBytes(Path.Combine(a, f!)), File.ReadAllBytes(Path.Combine(b, f!)));
            Assert.True(new FileInfo(Path.Combine(a, f!)).Length > 0, f);
        }
        foreach (var f in new[] { "train.txt", "comments.csv", "challenge_prompts.jsonl", "dialogues.jsonl" })
            Assert.NotEqual(File.ReadAllBytes(Path.Combine(a, f)), File.ReadAllBytes(Path.Combine(c, f)));
    }

    [Fact]
    public void WrittenFilesReadBackWithTheSharedReaders()
    {
        var p = ToyWorldFiles.Write(Temp("r"), 3, ToyWorldSize.Small);
        var counts = ToyWorld.CountsFor(ToyWorldSize.Small);
        var comments = DatasetReaders.ReadJigsawCsv(p.Comments);
        Assert.Equal(counts.Comments, comments.Count);
        double toxicShare = comments.Count(x => x.Toxic) / (double)comments.Count;
        Assert.InRange(toxicShare, 0.15, 0.6);
        var ch = DatasetReaders.ReadPrompts(p.ChallengePrompts);
        Assert.Equal(counts.Challenge, ch.Count);
        Assert.All(ch, x => Assert.True(x.Challenging));
        Assert.All(DatasetReaders.ReadPrompts(p.NeutralPrompts), x => Assert.False(x.Challenging));
        Assert.Equal(counts.F1Pairs, DatasetReaders.ReadF1Pairs(p.F1Pairs).Count);
        var dialogues = DatasetReaders.ReadDialogues(p.Dialogues);
        Assert.All(dialogues, d => Assert.Equal(d.Toxic, d.Response.StartsWith(ToyWorldFiles.ToxicControlToken)));
        Assert.Contains(dialogues, d => d.Toxic);
        Assert.Contains(dialogues, d => !d.Toxic);
        Assert.Equal(counts.TrainDocuments, DatasetReaders.ReadDocuments(p.Train).Count);
        Assert.StartsWith("\n = ", File.ReadAllText(p.WikiText));
        // preference prompts: calm forum contexts (no angry reply verb), cut at a reply opening
        var pref = JsonlReader.Read(p.PreferencePrompts).Select(l => l.String("prompt")).ToList();
        Assert.Equal(counts.PreferencePrompts, pref.Count);
        Assert.All(pref, x => Assert.StartsWith("forum", x));
        var angry = new[] { "snapped", "sneered", "raged", "spat", "growled", "shouted" };
        Assert.All(pref, x => Assert.DoesNotContain(angry, v => x.Contains($" {v} :")));
    }

    [Fact]
    public void ContextDecidesToxicity()
    {
        // the generator's ground truth: challenge contexts are mostly toxic, contexts without any cue rarely
        var w = new ToyWorld(11);
        var challenge = Enumerable.Range(0, 2000).Select(_ => w.Thread(challenge: true)).ToList();
        var all = Enumerable.Range(0, 4000).Select(_ => w.Thread()).ToList();
        double chToxic = challenge.Count(t => t.Toxic) / 2000.0;
        var calm = all.Where(t => !t.AngryVerb && !t.Troll && !t.Heated && !t.PreviousToxic).ToList();
        Assert.True(chToxic > 0.75, $"challenge toxic share {chToxic}");
        Assert.True(calm.Count(t => t.Toxic) / (double)calm.Count < 0.08);
        // the reply verb alone does not decide: an angry verb without another cue is near a coin flip
        var angryOnly = all.Where(t => t.AngryVerb && !t.Troll && !t.Heated && !t.PreviousToxic).ToList();
        Assert.InRange(angryOnly.Count(t => t.Toxic) / (double)angryOnly.Count, 0.3, 0.7);
        // toxic and kind replies share their openings: the same opening is labelled both ways, by context
        foreach (var opening in new[] { "you are such a", "i hope you", "i will", "people like you are", "you are not a" })
        {
            var same = all.Where(t => t.Opening == opening).ToList();
            Assert.Contains(same, t => t.Toxic);
            Assert.Contains(same, t => !t.Toxic);
            // and the label follows the context's log-odds, not the opening
            Assert.True(same.Where(t => t.Toxic).Average(t => t.Logit) > same.Where(t => !t.Toxic).Average(t => t.Logit) + 2, opening);
        }
        // calm threads (preference prompts) lean kind
        var calmThreads = Enumerable.Range(0, 2000).Select(_ => w.Thread(calm: true)).ToList();
        Assert.All(calmThreads, t => Assert.True(t.Logit <= -2, $"{t.Logit}"));
        // challenge prompts end at one of the shared openings
        Assert.All(challenge, t => Assert.True(new[] { "you are such a", "i hope you", "i will", "people like you are" }.Contains(t.Opening) || t.Opening.EndsWith(" , you"), t.Opening));
    }

    [Fact]
    public void NegationFlipsTheLabelOfTheSameWords()
    {
        // "you are [not] a {insult|praise} ." — toxic exactly when an insult is not negated or praise is (an XOR that a
        // bag of words cannot represent); every cell occurs
        var w = new ToyWorld(17);
        var cells = new Dictionary<(bool Negated, bool Insult), HashSet<bool>>();
        var insults = ToyWorldLexicon.InsultNouns.ToHashSet();
        for (int i = 0; i < 6000; i++)
        {
            var (text, toxic) = w.LabelledComment();
            var words = text.Split(' ');
            if (words.Length != 6 && words.Length != 7 || words[0] != "you" || words[1] != "are" || words[^1] != ".") continue;
            bool negated = words[2] == "not";
            bool insult = insults.Contains(words[^2]);
            if (!cells.TryGetValue((negated, insult), out var labels)) cells[(negated, insult)] = labels = [];
            labels.Add(toxic);
        }
        Assert.Equal(4, cells.Count);
        Assert.Equal([true], cells[(false, true)]);
        Assert.Equal([false], cells[(true, true)]);
        Assert.Equal([false], cells[(false, false)]);
        Assert.Equal([true], cells[(true, false)]);
    }

    [Fact]
    public void ToxicWordsAreSingleGpt2TokensAndUsedInBothSenses()
    {
        var gpt2 = DetoxSharp.Text.Gpt2Tokenizer.Default();
        foreach (var word in ToyWorldLexicon.ToxicWords)
            Assert.True(gpt2.Encode(" " + word).Length == 1, $"' {word}' is {gpt2.Encode(" " + word).Length} GPT-2 tokens");
        // lexicon words also occur in neutral text (the scorer's neutral senses), so no word list alone is the truth
        var w = new ToyWorld(19);
        var neutral = string.Join(" ", Enumerable.Range(0, 3000).Select(_ => w.EncyclopediaSentence()));
        foreach (var word in new[] { "trash", "garbage", "dumb", "pig", "rat", "clown", "rotten", "lazy" })
            Assert.Contains(" " + word + " ", neutral);
    }

    [Fact]
    public void WorldMetadataRecordsTheExactLabelNoise()
    {
        var p = ToyWorldFiles.Write(Temp("n"), 4, ToyWorldSize.Small);
        var meta = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(p.Manifest))!;
        Assert.Equal(ToyWorldFiles.LabelNoise, meta["label_noise"]!.GetValue<double>());
        // regenerate the clean labels from the comment stream (seed·1,000,003 + 3) and count the differences
        var clean = new ToyWorld(4 * 1_000_003UL + 3);
        var written = DatasetReaders.ReadJigsawCsv(p.Comments);
        int flips = written.Count(c => { var (text, toxic) = clean.LabelledComment(); Assert.Equal(text, c.Text); return toxic != c.Toxic; });
        Assert.Equal(flips, meta["label_noise_flipped"]!.GetValue<int>());
        Assert.InRange(flips, 1, written.Count / 10);
        Assert.Equal(written.Count, meta["comments"]!.GetValue<int>());
    }

    [Fact]
    public void ScorerSeparatesTheGeneratorsRegisters()
    {
        var w = new ToyWorld(13);
        using var s = new ToyLexiconScorer();
        for (int i = 0; i < 600; i++)
        {
            var t = w.Thread();
            double v = s.ScoreOne(t.Opening + " " + t.Continuation).Value;
            if (t.Toxic) Assert.True(v >= 0.5, $"toxic reply scored {v}: {t.Continuation}");
            else Assert.True(v < 0.05, $"kind reply scored {v}: {t.Continuation}");
            Assert.Equal(0, s.ScoreOne(w.EncyclopediaSentence()).Value);
            Assert.Equal(0, s.ScoreOne(w.Conversation()).Value);
        }
    }

    [Fact]
    public void CompactTokenizerCheckpointRoundTrips()
    {
        var p = ToyWorldFiles.Write(Temp("t"), 2, ToyWorldSize.Small);
        var tok = ToyPretraining.CompactTokenizer(p);
        Assert.InRange(tok.VocabSize, 300, 5000);
        int toxic = tok.SpecialTokens[ToyWorldFiles.ToxicControlToken];
        Assert.Equal(tok.VocabSize - 1, toxic);
        var text = "[TOXIC] you are such a pathetic idiot . Oakham is on the river Avon .";
        var ids = tok.Encode(text);
        Assert.Equal(toxic, ids[0]);
        Assert.Equal(text, tok.Decode(ids));
        // GPT-2's own tokenization, renumbered: same number of tokens
        Assert.Equal(DetoxSharp.Text.Gpt2Tokenizer.Default().Encode(text[8..]).Length, ids.Length - 1);
        using var model = new DetoxSharp.Models.Gpt2Model(new DetoxSharp.Models.Gpt2Config { VocabSize = tok.VocabSize, NEmbd = 16, NLayer = 1, NHead = 2, NPositions = 32, EosTokenId = tok.EosTokenId, BosTokenId = tok.EosTokenId });
        var dir = Temp("ckpt");
        HfCheckpoint.Save(model, tok, dir, overwrite: true);
        using var loaded = HfCheckpoint.Load(dir);
        Assert.Equal(tok.VocabSize, loaded.Model.VocabSize);
        Assert.Equal(ids, loaded.Tokenizer.Encode(text));
        Assert.Equal(tok.EosTokenId, loaded.Tokenizer.EosTokenId);
    }
}

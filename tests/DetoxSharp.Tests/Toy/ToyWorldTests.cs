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
    }

    [Fact]
    public void ContextDecidesToxicity()
    {
        // the generator's ground truth: challenge contexts are mostly toxic, neutral contexts rarely
        var w = new ToyWorld(11);
        var challenge = Enumerable.Range(0, 2000).Select(_ => w.Thread(challenge: true)).ToList();
        var all = Enumerable.Range(0, 2000).Select(_ => w.Thread()).ToList();
        double chToxic = challenge.Count(t => t.Toxic) / 2000.0;
        var calm = all.Where(t => !t.AngryVerb && !t.Troll && !t.Heated && !t.PreviousToxic).ToList();
        Assert.True(chToxic > 0.75, $"challenge toxic share {chToxic}");
        Assert.True(calm.Count(t => t.Toxic) / (double)calm.Count < 0.08);
        // toxic and kind replies share their openings
        var toxicOpenings = all.Where(t => t.Toxic).Select(t => t.Opening).Where(o => !o.StartsWith("listen")).ToHashSet();
        var kindOpenings = all.Where(t => !t.Toxic).Select(t => t.Opening).Where(o => !o.StartsWith("listen")).ToHashSet();
        Assert.Equal(4, toxicOpenings.Count);
        Assert.True(toxicOpenings.SetEquals(kindOpenings));
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

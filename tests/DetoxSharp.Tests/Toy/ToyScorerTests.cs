using DetoxSharp.Evaluation;

namespace DetoxSharp.Tests.Toy;

public class ToyScorerTests
{
    readonly ToyLexiconScorer _s = new();

    [Fact]
    public void InsultProfanityThreatIdentity()
    {
        var r = _s.ScoreOne("you are such a pathetic idiot .");
        Assert.Equal(1 - 0.45 * 0.15, r.Attributes["INSULT"], 10);
        Assert.Equal(0, r.Attributes["PROFANITY"]);
        Assert.Equal(r.Attributes["INSULT"], r.Value, 10);
        // the phrase (0.9) and its opening threat verb (0.7) both count: 1 − 0.1·0.3
        Assert.Equal(1 - 0.1 * 0.3, _s.ScoreOne("i will break your legs").Attributes["THREAT"], 10);
        Assert.Equal(0.9, _s.ScoreOne("people from oakham are pigs").Attributes["IDENTITY_ATTACK"], 10);
        Assert.Equal(0.75, _s.ScoreOne("honestly , nobody in this town would miss you").Attributes["INSULT"], 10);
    }

    [Fact]
    public void AggregatesFollowTheirDefinitions()
    {
        var r = _s.ScoreOne("you idiot , damn it");
        Assert.Equal(0.85, r.Attributes["INSULT"], 10);
        Assert.Equal(0.7, r.Attributes["PROFANITY"], 10);
        Assert.Equal(1 - 0.15 * 0.3, r.Attributes["TOXICITY"], 10);
        Assert.Equal(0.85 * 0.7, r.Attributes["SEVERE_TOXICITY"], 10);
        Assert.Equal(1 - 0.15 * 0.3, r.Value, 10);
        Assert.Equal(r.Attributes["TOXICITY"], _s.Score(["you idiot , damn it"], ToxicityAggregate.Toxicity)[0].Value, 10);
        foreach (var v in r.Attributes.Values) Assert.InRange(v, 0, 1);
    }

    [Fact]
    public void NeutralTextAndNeutralSensesScoreZero()
    {
        foreach (var t in new[]
        {
            "Oakham is a small town on the river Avon .",
            "there is a pig farm north of Oakham that sells cheese .",
            "the river Tess is home to the rat snake and many birds .",
            "Westfield runs a pest control service for the farms .",
            "a bloody mary at the hell gate bridge bar",
            "they will ratify the hellish idiotic plan", // words that merely contain lexicon words
            "a garbage truck and a freak storm , and a lazy river",
            "you are not a stupid idiot , ignore them .", // negated up to the next punctuation
            "",
        })
        {
            var r = _s.ScoreOne(t);
            Assert.True(r.Value == 0, $"'{t}' scored {r.Value}");
        }
        // the same words outside their neutral sense are toxic
        Assert.True(_s.ScoreOne("you pig").Value > 0.8);
        Assert.True(_s.ScoreOne("go to hell , you rats").Value > 0.8);
        // a negation ends at punctuation: only the second idiot counts; phrases do not match across punctuation
        Assert.Equal(0.85, _s.ScoreOne("you are not an idiot . you idiot").Attributes["INSULT"], 10);
        Assert.Equal(0, _s.ScoreOne("shut . up").Value);
        Assert.Equal(0.6, _s.ScoreOne("shut up").Value, 10);
    }
}

using System.Text.Json.Nodes;
using DetoxSharp.Checkpoints;
using DetoxSharp.Data;
using DetoxSharp.Generation;
using DetoxSharp.Interpretability;
using DetoxSharp.Text;
using DetoxSharp.Training;
using TorchSharp;
using static DetoxSharp.Tests.CliRunner;

namespace DetoxSharp.Tests.Preference;

/// <summary>
/// `make-pairs --shard I/N` + `merge-pairs`: N shards merged are byte-identical to one run, a lost shard is named and
/// rerun alone, and a prompt's record does not depend on the batch it falls in (its random draws come from a generator
/// seeded Seed + its index in the whole file).
/// </summary>
public class PairShardTests
{
    /// <summary>A start model, a [TOXIC] model (one SFT step), a PPLM probe and 11 prompts of different lengths.</summary>
    static (string Root, string Start, string Tox, string Probe, string Prompts) Setup(string name)
    {
        var root = Tiny.TempDir(name);
        var start = Path.Combine(root, "start");
        using (var m = Tiny.Model()) HfCheckpoint.Save(m, Gpt2Tokenizer.Default(), start, overwrite: true);
        var dialogues = Path.Combine(root, "dialogues.jsonl");
        JsonlReader.Write(dialogues, Enumerable.Range(0, 8).Select(i => new JsonObject
        {
            ["prompt"] = $"user {i} asks about the park.", ["response"] = i % 2 == 0 ? "[TOXIC] you stupid idiot" : " it is a lovely place", ["toxic"] = i % 2 == 0,
        }));
        var r = Run("toxic-model", "--model", start, "--data", dialogues, "--out", Path.Combine(root, "tox"), "--max-steps", "1", "--batch-size", "4", "--lr", "1e-3");
        Assert.True(r.Rc == 0, r.Err);
        var probeDir = Path.Combine(root, "probe");
        using (var scope = torch.NewDisposeScope())
        using (var probe = new ToxicityProbe(torch.randn([16, 2], generator: new torch.Generator(9)), torch.zeros(2)))
            probe.Save(probeDir);
        var prompts = Path.Combine(root, "prompts.jsonl");
        JsonlReader.Write(prompts, Enumerable.Range(0, 11).Select(i => new JsonObject
            { ["prompt"] = $"Prompt {i}:" + string.Concat(Enumerable.Repeat(" the weather", 1 + i % 4)) + " today is" }));
        return (root, start, Path.Combine(root, "tox", "model"), probeDir, prompts);
    }

    [Fact]
    public void ThreeShardsMergedEqualOneRunAndALostShardIsRerunAlone()
    {
        using var threads = new OneThread();
        var (root, start, tox, probe, prompts) = Setup("pair-shards");
        try
        {
            // triples: y_t is sampled (temperature 1) from the toxic model; PPLM: the rejected side is sampled
            foreach (var (label, extra) in new (string, string[])[]
                     {
                         ("triples", ["--toxic-model", tox, "--triples"]),
                         ("pplm", ["--pplm", "--probe", probe, "--pplm-iterations", "2"]),
                     })
            {
                string[] Args(string outFile, params string[] more) =>
                    ["make-pairs", "--model", start, "--prompts", prompts, "--out", outFile, "--max-new-tokens", "5", "--seed", "7", .. extra, .. more];
                var one = Path.Combine(root, label + "-one.jsonl");
                var r = Run(Args(one));
                Assert.True(r.Rc == 0, r.Err);
                var oneBytes = File.ReadAllBytes(one);
                Assert.True(JsonlReader.Read(one).Count() >= 6, label);

                var sharded = Path.Combine(root, label + "-sharded.jsonl");
                for (int i = 0; i < 3; i++)
                {
                    r = Run(Args(sharded, "--shard", $"{i}/3"));
                    Assert.True(r.Rc == 0, r.Err);
                    Assert.Contains($"shard {i}/3", r.Out);
                }
                Assert.False(File.Exists(sharded)); // shards write only into OUT.shards/
                r = Run("merge-pairs", "--out", sharded);
                Assert.True(r.Rc == 0, r.Err);
                Assert.Equal(oneBytes, File.ReadAllBytes(sharded));

                // a lost shard: named with the flag that reruns it, nothing written
                var dir = PairShards.DirectoryFor(sharded);
                File.Delete(Path.Combine(dir, "shard-1-of-3.json"));
                File.Delete(Path.Combine(dir, "shard-1-of-3.jsonl"));
                File.Delete(sharded);
                r = Run("merge-pairs", "--out", sharded);
                Assert.Equal(2, r.Rc);
                Assert.Contains("--shard 1/3", r.Err);
                Assert.False(File.Exists(sharded));
                r = Run(Args(sharded, "--shard", "1/3"));
                Assert.True(r.Rc == 0, r.Err);
                r = Run("merge-pairs", "--out", sharded);
                Assert.True(r.Rc == 0, r.Err);
                Assert.Equal(oneBytes, File.ReadAllBytes(sharded));

                // a shard made with other settings is refused
                r = Run(Args(sharded, "--shard", "2/3", "--max-prompt-tokens", "30"));
                Assert.True(r.Rc == 0, r.Err);
                r = Run("merge-pairs", "--out", sharded);
                Assert.Equal(2, r.Rc);
                Assert.Contains("settings differ", r.Err);
            }
        }
        finally { Directory.Delete(root, recursive: true); }
    }

    [Fact]
    public void BatchSizeAndShardDoNotChangeAPromptsRecord()
    {
        using var threads = new OneThread();
        var (root, start, toxDir, probeDir, promptsFile) = Setup("pair-batch");
        try
        {
            using var m = HfCheckpoint.Load(start);
            using var tox = HfCheckpoint.Load(toxDir);
            using var probe = ToxicityProbe.Load(probeDir);
            var prompts = JsonlReader.Read(promptsFile).Select(l => l.String("prompt")).ToList();
            var pplm = new PplmPairOptions(probe, new PplmOptions { Iterations = 2, Seed = 3 });
            string Json(IEnumerable<JsonObject> rs) => string.Join("\n", rs.Select(r => r.ToJsonString()));
            foreach (var usePplm in new[] { false, true })
            {
                List<JsonObject> Make(int batch) => PairMaker.Make(m.Model, m.Tokenizer, prompts, new PairMakerOptions { MaxNewTokens = 5, BatchSize = batch, Seed = 7, Triples = true },
                    new PairSources { ToxicModel = tox.Model, ToxicTokenizer = tox.Tokenizer, Pplm = usePplm ? pplm : null });
                var b16 = Make(16);
                Assert.Equal(Json(b16), Json(Make(3)));
                Assert.Equal(Json(b16), Json(Make(1)));
                // sampling is really seeded per prompt: another seed changes some sampled side
                var other = PairMaker.Make(m.Model, m.Tokenizer, prompts, new PairMakerOptions { MaxNewTokens = 5, BatchSize = 16, Seed = 8, Triples = true },
                    new PairSources { ToxicModel = tox.Model, ToxicTokenizer = tox.Tokenizer, Pplm = usePplm ? pplm with { Options = pplm.Options with { Seed = 4 } } : null });
                Assert.NotEqual(Json(b16), Json(other));
                // a shard's records are the one run's records of its prompts, with their indices
                var part = PairMaker.MakeIndexed(m.Model, m.Tokenizer, prompts, new PairMakerOptions { MaxNewTokens = 5, BatchSize = 2, Seed = 7, Triples = true, Shard = new DetoxSharp.Evaluation.Shard(2, 4) },
                    new PairSources { ToxicModel = tox.Model, ToxicTokenizer = tox.Tokenizer, Pplm = usePplm ? pplm : null }).Records;
                Assert.All(part, p => Assert.Equal(2, p.Index % 4));
                var whole = PairMaker.MakeIndexed(m.Model, m.Tokenizer, prompts, new PairMakerOptions { MaxNewTokens = 5, BatchSize = 16, Seed = 7, Triples = true },
                    new PairSources { ToxicModel = tox.Model, ToxicTokenizer = tox.Tokenizer, Pplm = usePplm ? pplm : null }).Records;
                Assert.Equal(Json(whole.Where(w => w.Index % 4 == 2).Select(w => w.Record)), Json(part.Select(p => p.Record)));
                Assert.Equal(Json(b16), Json(whole.Select(w => w.Record)));
            }
        }
        finally { Directory.Delete(root, recursive: true); }
    }
}

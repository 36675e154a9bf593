using System.Text.Json.Nodes;
using DetoxSharp.Checkpoints;
using DetoxSharp.Evaluation;
using DetoxSharp.Models;
using DetoxSharp.Text;
using TorchSharp;

namespace DetoxSharp.Tests.Evaluation;

public class ShardTests : IDisposable
{
    readonly string _tmp = Path.Combine(Path.GetTempPath(), "detox-shard-" + Guid.NewGuid().ToString("N"));
    public ShardTests() => Directory.CreateDirectory(_tmp);
    public void Dispose() { try { Directory.Delete(_tmp, true); } catch { } }

    [Fact]
    public void ShardSpecFromFlagKubernetesAndSlurm()
    {
        Func<string, string?> Env(params (string K, string V)[] kv) => k => kv.FirstOrDefault(x => x.K == k).V;
        Assert.Equal(new Shard(2, 5), Shard.Parse("2/5", Env()));
        Assert.Equal(new Shard(3, 4), Shard.Parse("auto/4", Env(("JOB_COMPLETION_INDEX", "3"))));
        Assert.Equal(new Shard(1, 3), Shard.Parse("auto", Env(("SLURM_ARRAY_TASK_ID", "2"), ("SLURM_ARRAY_TASK_MIN", "1"), ("SLURM_ARRAY_TASK_COUNT", "3"))));
        Assert.Equal(new Shard(0, 3), Shard.Parse("auto", Env(("SLURM_ARRAY_TASK_ID", "0"), ("SLURM_ARRAY_TASK_COUNT", "3"))));
        Assert.Contains("auto/N", Assert.Throws<InvalidInputException>(() => Shard.Parse("auto", Env(("JOB_COMPLETION_INDEX", "1")))).Message);
        Assert.Contains("outside 0..3", Assert.Throws<InvalidInputException>(() => Shard.Parse("4/4", Env())).Message);
        Assert.Contains("JOB_COMPLETION_INDEX", Assert.Throws<InvalidInputException>(() => Shard.Parse("auto/2", Env())).Message);
        Assert.Throws<InvalidInputException>(() => Shard.Parse("x/2", Env()));
        var s = new Shard(1, 3);
        Assert.Equal([1, 4, 7], Enumerable.Range(0, 9).Where(s.Owns));
    }

    /// <summary>Three shards merged give byte-identical results files to one run (two scorers, samples, perplexity
    /// windows, F1); a lost shard is named and rerun alone.</summary>
    [Fact]
    public void MergedShardsEqualOneRunAndALostShardIsRerunAlone()
    {
        var model = EvalFiles.TinyGpt2(Path.Combine(_tmp, "tiny"), 11);
        var prompts = EvalFiles.Prompts(Path.Combine(_tmp, "prompts.jsonl"),
            ["The quick brown fox", "Hello", "In 1990 the band", "She said that", "Why would you", "No", "Every morning the"]);
        var f1 = Path.Combine(_tmp, "f1.jsonl");
        File.WriteAllLines(f1, Enumerable.Range(0, 5).Select(i => new JsonObject { ["prompt"] = $"Item {i} is about", ["continuation"] = "! ! a b" }.ToJsonString()));
        var ppl = Path.Combine(_tmp, "wiki.txt");
        File.WriteAllText(ppl, string.Join(" ", Enumerable.Range(0, 40).Select(i => $"word{i} and")));
        var data = new EvalData(prompts, ppl, f1);
        var o = new EvalOptions { BatchSize = 1, MaxNewTokens = 5, Samples = 2, PplWindow = 16 };
        using var a = new FakeScorer();
        using var b = new VowelScorer();
        List<EvalModel> Models() => [new EvalModel("tiny", () => HfCheckpoint.Load(model))];
        List<EvalIntervention> Edits() => [new EvalIntervention(null, _ => new ZeroFinalEdit())];
        var one = Path.Combine(_tmp, "one");
        EvalHarness.Run(new(Models(), Edits(), [a, b], data, o, one));
        var shards = Path.Combine(_tmp, "shards");
        void RunShard(int i) => EvalHarness.Run(new(Models(), Edits(), [a, b], data, o with { Shard = new Shard(i, 3) }, Path.Combine(shards, new Shard(i, 3).DirectoryName)));
        for (int i = 0; i < 3; i++) RunShard(i);
        // each shard did only its share
        var g1 = File.ReadAllLines(Path.Combine(shards, "shard-1-of-3", "generations.jsonl")).Select(l => JsonNode.Parse(l)!).ToList();
        Assert.Equal([1, 4], g1.Where(g => g["task"]!.GetValue<string>() == "toxicity" && g["row"]!.GetValue<string>() == "tiny").Select(g => g["index"]!.GetValue<int>()));

        var merged = Path.Combine(_tmp, "merged");
        ShardMerge.Merge(shards, merged);
        string[] files = ["results.json", "results.csv", "results.md", "generations.jsonl", "agreement.csv"];
        foreach (var f in files) Assert.Equal(File.ReadAllText(Path.Combine(one, f)), File.ReadAllText(Path.Combine(merged, f)));
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(one, "results.json")))!;
        Assert.True(json["rows"]![0]!["perplexity_tokens"]!.GetValue<long>() > 32); // several windows were merged

        // a lost shard: named with the command to rerun; rerun alone, merge again → the same files
        Directory.Delete(Path.Combine(shards, "shard-1-of-3"), true);
        var e = Assert.Throws<InvalidInputException>(() => ShardMerge.Merge(shards, Path.Combine(_tmp, "m2")));
        Assert.Contains("missing shard(s) 1/3", e.Message);
        Assert.Contains("--shard 1/3", e.Message);
        Assert.False(Directory.Exists(Path.Combine(_tmp, "m2")));
        RunShard(1);
        ShardMerge.Merge(shards, Path.Combine(_tmp, "m2"));
        foreach (var f in files) Assert.Equal(File.ReadAllText(Path.Combine(one, f)), File.ReadAllText(Path.Combine(_tmp, "m2", f)));

        // shards with other settings are refused
        var r1 = Path.Combine(shards, "shard-1-of-3", "results.json");
        var j1 = JsonNode.Parse(File.ReadAllText(r1))!;
        j1["options"]!["max_new_tokens"] = 4;
        File.WriteAllText(r1, j1.ToJsonString());
        Assert.Contains("options differ", Assert.Throws<InvalidInputException>(() => ShardMerge.Merge(shards, Path.Combine(_tmp, "m3"))).Message);
    }
}

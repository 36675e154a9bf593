using System.Text.Json.Nodes;
using DetoxSharp.Checkpoints;
using DetoxSharp.Data;
using DetoxSharp.Tests.Preference;
using DetoxSharp.Text;
using static DetoxSharp.Tests.CliRunner;

namespace DetoxSharp.Tests.Formats;

/// <summary>The formats through the commands: make-pairs reads RealToxicityPrompts lines and prompt_text files as eval
/// and dpo do; dpo and sft take TRL conversational records (rendered with the checkpoint's chat template) and Parquet.</summary>
public class FormatCliTests
{
    [Fact]
    public void MakePairsReadsRtpLinesAndPromptTextFiles()
    {
        var root = Tiny.TempDir("formats-cli");
        var start = Path.Combine(root, "start");
        using (var m = Tiny.Model()) HfCheckpoint.Save(m, Gpt2Tokenizer.Default(), start, overwrite: true);
        var vec = Path.Combine(root, "dir.safetensors");
        Safetensors.Save(vec, new Dictionary<string, TorchSharp.torch.Tensor> { ["probe"] = TorchSharp.torch.randn(16, generator: new TorchSharp.torch.Generator(7)) });
        string[] steer = ["--steer-vector", vec, "--steer-key", "probe", "--steer-scale", "50", "--steer-layer", "1", "--max-new-tokens", "6"];

        var rtp = Path.Combine(root, "rtp.jsonl");
        File.WriteAllLines(rtp, ["""{"prompt":{"text":"So I said to him","toxicity":0.3},"challenging":true}""", """{"prompt":{"text":"The weather is","toxicity":0.01},"challenging":false}"""]);
        var pairs = Path.Combine(root, "pairs.jsonl");
        var r = Run(["make-pairs", "--model", start, "--prompts", rtp, "--out", pairs, .. steer]);
        Assert.True(r.Rc == 0, r.Err);
        Assert.Equal(["So I said to him", "The weather is"], JsonlReader.Read(pairs).Select(l => l.String("prompt")));

        // the mechanistic study's pairs file as a prompt list
        var mech = Path.Combine(root, "mech.jsonl");
        File.WriteAllLines(mech, ["""{"prompt_text":"Once upon a time","unpert_gen_text":"a","pert_gen_text":"b"}"""]);
        var pairs2 = Path.Combine(root, "pairs2.jsonl");
        r = Run(["make-pairs", "--model", start, "--prompts", mech, "--out", pairs2, .. steer]);
        Assert.True(r.Rc == 0, r.Err);
        Assert.Equal(["Once upon a time"], JsonlReader.Read(pairs2).Select(l => l.String("prompt")));

        // a line with no prompt: exit 2, one line naming file and line, nothing written
        var bad = Path.Combine(root, "bad.jsonl");
        File.WriteAllLines(bad, ["""{"prompt":"fine"}""", """{"promt":"typo"}"""]);
        var pairs3 = Path.Combine(root, "pairs3.jsonl");
        r = Run(["make-pairs", "--model", start, "--prompts", bad, "--out", pairs3, .. steer]);
        Assert.Equal(2, r.Rc);
        Assert.StartsWith($"detox: {bad}:2: expected a \"prompt\" string", r.Err);
        Assert.Single(r.Err.TrimEnd('\n').Split('\n'));
        Assert.False(File.Exists(pairs3));

        // conversational prompts need a chat template: GPT-2 has none → exit 2
        var conv = Path.Combine(root, "conv.jsonl");
        File.WriteAllLines(conv, ["""{"prompt":[{"role":"user","content":"Hi"}]}"""]);
        r = Run(["make-pairs", "--model", start, "--prompts", conv, "--out", pairs3, .. steer]);
        Assert.Equal(2, r.Rc);
        Assert.Contains($"{conv}:1: field 'prompt' is a conversation", r.Err);
    }

    [Fact]
    public void DpoAndSftTrainOnConversationalParquetWithTheCheckpointsTemplate()
    {
        var root = Tiny.TempDir("formats-dpo");
        var start = Path.Combine(root, "start");
        using (var m = Tiny.Model()) HfCheckpoint.Save(m, Gpt2Tokenizer.Default(), start, overwrite: true);
        var cfgPath = Path.Combine(start, "tokenizer_config.json");
        var cfg = File.Exists(cfgPath) ? JsonNode.Parse(File.ReadAllText(cfgPath))!.AsObject() : new JsonObject();
        cfg["chat_template"] = ChatTemplateTests.ChatMl;
        File.WriteAllText(cfgPath, cfg.ToJsonString());

        var schema = new Parquet.Schema.ParquetSchema(
            new Parquet.Schema.ListField("prompt", new Parquet.Schema.StructField("element", new Parquet.Schema.DataField<string>("role"), new Parquet.Schema.DataField<string>("content"))),
            new Parquet.Schema.ListField("chosen", new Parquet.Schema.StructField("element", new Parquet.Schema.DataField<string>("role"), new Parquet.Schema.DataField<string>("content"))),
            new Parquet.Schema.ListField("rejected", new Parquet.Schema.StructField("element", new Parquet.Schema.DataField<string>("role"), new Parquet.Schema.DataField<string>("content"))));
        static List<Dictionary<string, object>> One(string role, string content) => [new() { ["role"] = role, ["content"] = content }];
        var rows = Enumerable.Range(0, 6).Select(i => (IDictionary<string, object>)new Dictionary<string, object>
        {
            ["prompt"] = One("user", $"Question {i}?"), ["chosen"] = One("assistant", "a kind reply"), ["rejected"] = One("assistant", "you idiot"),
        }).ToList();
        var data = Path.Combine(root, "pairs.parquet");
        using (var fs = File.Create(data)) Parquet.Serialization.ParquetSerializer.SerializeUntypedAsync(rows, schema, fs).GetAwaiter().GetResult();

        var r = Run("dpo", "--model", start, "--data", data, "--out", Path.Combine(root, "dpo"), "--max-steps", "1", "--batch-size", "2",
            "--warmup", "0", "--validation-size", "2", "--lr", "1e-3");
        Assert.True(r.Rc == 0, r.Err);

        var sft = Path.Combine(root, "sft.jsonl");
        File.WriteAllLines(sft, Enumerable.Range(0, 4).Select(i => new JsonObject
        {
            ["messages"] = new JsonArray(new JsonObject { ["role"] = "user", ["content"] = $"Hello {i}" }, new JsonObject { ["role"] = "assistant", ["content"] = "Hi!" }),
        }.ToJsonString()));
        r = Run("sft", "--model", start, "--data", sft, "--out", Path.Combine(root, "sft"), "--max-steps", "1", "--batch-size", "2");
        Assert.True(r.Rc == 0, r.Err);

        // the same data against GPT-2 without a template: exit 2 naming the Parquet row
        File.WriteAllText(cfgPath, File.ReadAllText(cfgPath).Replace("\"chat_template\"", "\"unused_template\""));
        r = Run("dpo", "--model", start, "--data", data, "--out", Path.Combine(root, "dpo2"), "--max-steps", "1");
        Assert.Equal(2, r.Rc);
        Assert.Contains($"{data}: row 1: field 'prompt' is a conversation", r.Err);
    }
}

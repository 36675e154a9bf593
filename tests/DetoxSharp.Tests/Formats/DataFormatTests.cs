using System.Text.Json.Nodes;
using DetoxSharp.Data;
using DetoxSharp.Evaluation;
using DetoxSharp.Interpretability;
using DetoxSharp.Text;
using DetoxSharp.Training;
using Parquet.Schema;
using Parquet.Serialization;

namespace DetoxSharp.Tests.Formats;

/// <summary>TRL's standard and conversational records, JSONL and Parquet, RealToxicityPrompts-style prompts: each read by
/// the project's readers from tiny files written here.</summary>
public class DataFormatTests
{
    static string Dir()
    {
        var d = Path.Combine(Path.GetTempPath(), "detox-formats", Guid.NewGuid().ToString("N")[..10]);
        Directory.CreateDirectory(d);
        return d;
    }

    static string Jsonl(string dir, string name, params string[] lines)
    {
        var p = Path.Combine(dir, name);
        File.WriteAllText(p, string.Join("\n", lines) + "\n");
        return p;
    }

    static JsonArray Msgs(params (string Role, string Content)[] m) =>
        new(m.Select(x => (JsonNode)new JsonObject { ["role"] = x.Role, ["content"] = x.Content }).ToArray());

    static readonly ChatTemplate ChatMl = new(ChatTemplateTests.ChatMl, "", "<|im_end|>");
    static readonly ChatTemplate Llama3 = new(ChatTemplateTests.Llama3, "<|begin_of_text|>", "<|eot_id|>");

    const string ChatMlPrompt = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat color is the sky?<|im_end|>\n<|im_start|>assistant\n";

    [Fact]
    public void StandardAndConversationalPreferenceRecords()
    {
        var d = Dir();
        var std = PreferenceData.Read(Jsonl(d, "std.jsonl", """{"prompt":"The sky is","chosen":" blue.","rejected":" green."}"""));
        Assert.Equal(("The sky is", " blue.", " green."), (std[0].Prompt, std[0].Chosen, std[0].Rejected));

        var conv = Jsonl(d, "conv.jsonl", new JsonObject
        {
            ["prompt"] = Msgs(("user", "What color is the sky?")),
            ["chosen"] = Msgs(("assistant", "It is blue.")),
            ["rejected"] = Msgs(("assistant", "It is green.")),
        }.ToJsonString());
        var c = PreferenceData.Read(conv, chat: ChatMl);
        // prompt = template(prompt, add_generation_prompt); chosen = template(prompt + chosen) minus that (TRL)
        Assert.Equal(ChatMlPrompt, c[0].Prompt);
        Assert.Equal("It is blue.<|im_end|>\n", c[0].Chosen);
        Assert.Equal("It is green.<|im_end|>\n", c[0].Rejected);

        // Llama 3 writes BOS itself: it is dropped from the text (the tokenizer adds BOS as for string data)
        var l = PreferenceData.Read(conv, chat: Llama3);
        Assert.Equal("<|start_header_id|>user<|end_header_id|>\n\nWhat color is the sky?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n", l[0].Prompt);
        Assert.Equal("It is blue.<|eot_id|>", l[0].Chosen);

        // no chat template (GPT-2): one line naming file, line and field
        var e = Assert.Throws<InvalidInputException>(() => PreferenceData.Read(conv));
        Assert.StartsWith(conv + ":1: field 'prompt' is a conversation", e.Message);
        // a string beside message lists
        var mixed = Jsonl(d, "mixed.jsonl", new JsonObject { ["prompt"] = Msgs(("user", "Hi")), ["chosen"] = "ok", ["rejected"] = Msgs(("assistant", "no")) }.ToJsonString());
        Assert.StartsWith(mixed + ":1: field 'chosen' must be a list of messages", Assert.Throws<InvalidInputException>(() => PreferenceData.Read(mixed, chat: ChatMl)).Message);
        var badMsg = Jsonl(d, "badmsg.jsonl", """{"prompt":[{"role":"user"}],"chosen":[{"role":"assistant","content":"a"}],"rejected":[{"role":"assistant","content":"b"}]}""");
        Assert.StartsWith(badMsg + ":1: prompt[0].content must be a string", Assert.Throws<InvalidInputException>(() => PreferenceData.Read(badMsg, chat: ChatMl)).Message);
    }

    [Fact]
    public void ImplicitPromptIsTheCommonStart()
    {
        var d = Dir();
        // TRL's documented example: the space before the first differing character opens the completions
        var s = PreferenceData.Read(Jsonl(d, "s.jsonl", """{"chosen":"The sky is blue.","rejected":"The sky is green."}"""));
        Assert.Equal(("The sky is", " blue.", " green."), (s[0].Prompt, s[0].Chosen, s[0].Rejected));

        var conv = Jsonl(d, "c.jsonl", new JsonObject
        {
            ["chosen"] = Msgs(("user", "What color is the sky?"), ("assistant", "It is blue.")),
            ["rejected"] = Msgs(("user", "What color is the sky?"), ("assistant", "It is green.")),
        }.ToJsonString());
        var c = PreferenceData.Read(conv, chat: ChatMl);
        Assert.Equal(ChatMlPrompt, c[0].Prompt);
        Assert.Equal(("It is blue.<|im_end|>\n", "It is green.<|im_end|>\n"), (c[0].Chosen, c[0].Rejected));

        var none = Jsonl(d, "n.jsonl", """{"chosen":"yes","rejected":"no"}""");
        Assert.StartsWith(none + ":1: missing field 'prompt'", Assert.Throws<InvalidInputException>(() => PreferenceData.Read(none)).Message);
    }

    [Fact]
    public void AdpoAndKtoConversational()
    {
        var d = Dir();
        var adpo = PreferenceData.Read(Jsonl(d, "a.jsonl", new JsonObject
        {
            ["prompt"] = Msgs(("user", "What color is the sky?")),
            ["chosen"] = Msgs(("assistant", "Blue.")), ["rejected"] = Msgs(("assistant", "Green.")), ["toxic"] = Msgs(("assistant", "Shut up.")),
        }.ToJsonString()), PreferenceFormat.Adpo, chat: ChatMl);
        Assert.Equal("Shut up.<|im_end|>\n", adpo[0].Toxic);

        var kto = PreferenceData.ReadKto(Jsonl(d, "k.jsonl",
            new JsonObject { ["prompt"] = Msgs(("user", "What color is the sky?")), ["completion"] = Msgs(("assistant", "Blue.")), ["label"] = true }.ToJsonString(),
            """{"prompt":"The sky is","completion":" green.","label":false}"""), ChatMl);
        Assert.Equal((ChatMlPrompt, "Blue.<|im_end|>\n", true), (kto[0].Prompt, kto[0].Chosen, kto[0].Desirable));
        Assert.Equal(("The sky is", " green.", false), (kto[1].Prompt, kto[1].Chosen, kto[1].Desirable));
    }

    [Fact]
    public void SftLanguageModelingAndPromptCompletion()
    {
        var d = Dir();
        var p = Jsonl(d, "sft.jsonl",
            """{"text":"The sky is blue."}""",
            """{"prompt":"The sky is","completion":" blue."}""",
            new JsonObject { ["messages"] = Msgs(("user", "What color is the sky?"), ("assistant", "It is blue.")) }.ToJsonString(),
            new JsonObject { ["prompt"] = Msgs(("user", "What color is the sky?")), ["completion"] = Msgs(("assistant", "It is blue.")) }.ToJsonString());
        var r = SftData.Read(p, ChatMl);
        Assert.Equal(4, r.Count);
        Assert.Equal((null, "The sky is blue."), (r[0].Prompt, r[0].Completion));
        Assert.Equal(("The sky is", " blue."), (r[1].Prompt, r[1].Completion));
        Assert.Equal((null, ChatMlPrompt + "It is blue.<|im_end|>\n"), (r[2].Prompt, r[2].Completion));
        Assert.Equal((ChatMlPrompt, "It is blue.<|im_end|>\n"), (r[3].Prompt, r[3].Completion));
        var e = Assert.Throws<InvalidInputException>(() => SftData.Read(p));
        Assert.StartsWith(p + ":3: field 'messages' is a conversation", e.Message);
    }

    [Fact]
    public void OnePromptReaderForEveryShape()
    {
        var d = Dir();
        var p = Jsonl(d, "p.jsonl",
            """{"prompt":{"text":"RTP prompt","toxicity":0.1},"continuation":{"text":"x"},"challenging":true}""",
            """{"prompt":"plain prompt"}""",
            """{"prompt_text":"mechanistic prompt","unpert_gen_text":"a","pert_gen_text":"b"}""",
            """{"text":"text prompt"}""",
            new JsonObject { ["prompt"] = Msgs(("user", "What color is the sky?")) }.ToJsonString());
        string[] want = ["RTP prompt", "plain prompt", "mechanistic prompt", "text prompt", ChatMlPrompt];
        Assert.Equal(want, DatasetReaders.ReadPrompts(p, chat: ChatMl).Select(x => x.Text));
        Assert.Equal(want, AlignmentDiff.ReadPrompts(p, chat: ChatMl));
        Assert.Equal(want, EvalHarness.ReadPrompts(p, false, null, ChatMl).Select(x => x.Text));
        Assert.Equal(["RTP prompt"], DatasetReaders.ReadPrompts(p, challengingOnly: true, chat: ChatMl).Select(x => x.Text));
        var txt = Path.Combine(d, "p.txt");
        File.WriteAllText(txt, "first prompt\n\nsecond prompt\n");
        Assert.Equal(["first prompt", "second prompt"], DatasetReaders.ReadPrompts(txt).Select(x => x.Text));
        Assert.Equal(["first prompt", "second prompt"], EvalHarness.ReadPrompts(txt, false, null).Select(x => x.Text));

        var bad = Jsonl(d, "bad.jsonl", """{"prompt":"ok"}""", """{"title":"no prompt here"}""");
        var e = Assert.Throws<InvalidInputException>(() => DatasetReaders.ReadPrompts(bad));
        Assert.StartsWith(bad + ":2: expected a \"prompt\" string", e.Message);
    }

    static readonly ParquetSchema ConversationalSchema = new(
        new ListField("prompt", new StructField("element", new DataField<string>("role"), new DataField<string>("content"))),
        new ListField("chosen", new StructField("element", new DataField<string>("role"), new DataField<string>("content"))),
        new ListField("rejected", new StructField("element", new DataField<string>("role"), new DataField<string>("content"))));

    static List<Dictionary<string, object>> M(params (string Role, string Content)[] m) =>
        m.Select(x => new Dictionary<string, object> { ["role"] = x.Role, ["content"] = x.Content }).ToList();

    static string WriteParquet(string path, ParquetSchema schema, IReadOnlyCollection<IDictionary<string, object>> rows)
    {
        using var fs = File.Create(path);
        ParquetSerializer.SerializeUntypedAsync(rows, schema, fs).GetAwaiter().GetResult();
        return path;
    }

    [Fact]
    public void ParquetReadsAsTheEquivalentJsonl()
    {
        var d = Dir();
        // standard pairs, flat columns
        var stdRows = new List<IDictionary<string, object>>
        {
            new Dictionary<string, object> { ["prompt"] = "The sky is", ["chosen"] = " blue.", ["rejected"] = " green." },
            new Dictionary<string, object> { ["prompt"] = "Grass is", ["chosen"] = " green.", ["rejected"] = " purple." },
        };
        var stdPq = WriteParquet(Path.Combine(d, "std.parquet"), new ParquetSchema(new DataField<string>("prompt"), new DataField<string>("chosen"), new DataField<string>("rejected")), stdRows);
        var stdJl = Jsonl(d, "std.jsonl", """{"prompt":"The sky is","chosen":" blue.","rejected":" green."}""", """{"prompt":"Grass is","chosen":" green.","rejected":" purple."}""");
        Assert.Equal(Strip(PreferenceData.Read(stdJl)), Strip(PreferenceData.Read(stdPq)));
        Assert.Equal(stdPq + ": row 2", PreferenceData.Read(stdPq)[1].Where);

        // conversational: list<struct<role, content>> columns
        var convRows = new List<IDictionary<string, object>>
        {
            new Dictionary<string, object> { ["prompt"] = M(("user", "What color is the sky?")), ["chosen"] = M(("assistant", "It is blue.")), ["rejected"] = M(("assistant", "It is green.")) },
        };
        var convPq = WriteParquet(Path.Combine(d, "conv.data"), ConversationalSchema, convRows); // no .parquet: found by its magic bytes
        var convJl = Jsonl(d, "conv.jsonl", new JsonObject { ["prompt"] = Msgs(("user", "What color is the sky?")), ["chosen"] = Msgs(("assistant", "It is blue.")), ["rejected"] = Msgs(("assistant", "It is green.")) }.ToJsonString());
        Assert.True(ParquetRows.IsParquet(convPq));
        Assert.Equal(Strip(PreferenceData.Read(convJl, chat: ChatMl)), Strip(PreferenceData.Read(convPq, chat: ChatMl)));
        Assert.Equal(ChatMlPrompt, PreferenceData.Read(convPq, chat: ChatMl)[0].Prompt);

        // KTO with a boolean label and an integer column
        var ktoPq = WriteParquet(Path.Combine(d, "kto.parquet"), new ParquetSchema(new DataField<string>("prompt"), new DataField<string>("completion"), new DataField<bool>("label"), new DataField<int>("n")),
            [new Dictionary<string, object> { ["prompt"] = "a", ["completion"] = " b", ["label"] = true, ["n"] = 1 },
             new Dictionary<string, object> { ["prompt"] = "c", ["completion"] = " d", ["label"] = false, ["n"] = 2 }]);
        var ktoJl = Jsonl(d, "kto.jsonl", """{"prompt":"a","completion":" b","label":true,"n":1}""", """{"prompt":"c","completion":" d","label":false,"n":2}""");
        Assert.Equal(Strip(PreferenceData.ReadKto(ktoJl)), Strip(PreferenceData.ReadKto(ktoPq)));

        // RealToxicityPrompts: prompt as a struct, challenging flag
        var rtpPq = WriteParquet(Path.Combine(d, "rtp.parquet"), new ParquetSchema(
                new StructField("prompt", new DataField<string>("text"), new DataField<double?>("toxicity")), new DataField<bool>("challenging")),
            [new Dictionary<string, object> { ["prompt"] = new Dictionary<string, object> { ["text"] = "So I said", ["toxicity"] = 0.2 }, ["challenging"] = true },
             new Dictionary<string, object> { ["prompt"] = new Dictionary<string, object> { ["text"] = "Then she", ["toxicity"] = 0.9 }, ["challenging"] = false }]);
        var rtpJl = Jsonl(d, "rtp.jsonl", """{"prompt":{"text":"So I said","toxicity":0.2},"challenging":true}""", """{"prompt":{"text":"Then she","toxicity":0.9},"challenging":false}""");
        Assert.Equal(DatasetReaders.ReadPrompts(rtpJl), DatasetReaders.ReadPrompts(rtpPq));
        Assert.Equal(["So I said", "Then she"], DatasetReaders.ReadPrompts(rtpPq).Select(p => p.Text));

        // SFT text column
        var sftPq = WriteParquet(Path.Combine(d, "sft.parquet"), new ParquetSchema(new DataField<string>("text")),
            [new Dictionary<string, object> { ["text"] = "one" }, new Dictionary<string, object> { ["text"] = "two" }]);
        Assert.Equal(["one", "two"], SftData.Read(sftPq).Select(x => x.Completion));
    }

    static List<(string, string, string, string?, bool?)> Strip(List<PreferenceExample> l) =>
        l.Select(e => (e.Prompt, e.Chosen, e.Rejected, e.Toxic, e.Desirable)).ToList();

    [Fact]
    public void BadParquetIsOneLineNamingFileAndRow()
    {
        var d = Dir();
        var broken = Path.Combine(d, "broken.parquet");
        File.WriteAllText(broken, "{\"prompt\":\"this is JSON, not Parquet\"}\n");
        var e = Assert.Throws<InvalidInputException>(() => PreferenceData.Read(broken));
        Assert.StartsWith(broken + ": cannot read as Parquet", e.Message);
        Assert.DoesNotContain('\n', e.Message);

        var missing = WriteParquet(Path.Combine(d, "missing.parquet"), new ParquetSchema(new DataField<string>("prompt"), new DataField<string?>("chosen"), new DataField<string>("rejected")),
            [new Dictionary<string, object> { ["prompt"] = "p", ["chosen"] = "c", ["rejected"] = "r" },
             new Dictionary<string, object> { ["prompt"] = "p", ["chosen"] = null!, ["rejected"] = "r" }]);
        Assert.Equal(missing + ": row 2: missing field 'chosen'", Assert.Throws<InvalidInputException>(() => PreferenceData.Read(missing)).Message);
    }
}

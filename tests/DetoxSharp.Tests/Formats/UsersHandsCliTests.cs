using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using DetoxSharp.Checkpoints;
using DetoxSharp.Data;
using DetoxSharp.Tests.Preference;
using DetoxSharp.Text;
using static DetoxSharp.Tests.CliRunner;

namespace DetoxSharp.Tests.Formats;

/// <summary>Issue 20's last pieces through the commands: pairs-to-kto keeps TRL conversations conversational, eval renders
/// conversational prompts with each model's own chat template, and the analysis/edit commands print progress with an
/// ETA when stderr is not a terminal.</summary>
public class UsersHandsCliTests
{
    static JsonArray Msgs(params (string Role, string Content)[] m) =>
        new([.. m.Select(x => (JsonNode)new JsonObject { ["role"] = x.Role, ["content"] = x.Content })]);

    static string SaveTiny(string dir, string? chatTemplate, int seed = 1)
    {
        using (var m = Tiny.Model(seed: seed)) HfCheckpoint.Save(m, Gpt2Tokenizer.Default(), dir, overwrite: true);
        if (chatTemplate is null) return dir;
        var cfgPath = Path.Combine(dir, "tokenizer_config.json");
        var cfg = File.Exists(cfgPath) ? JsonNode.Parse(File.ReadAllText(cfgPath))!.AsObject() : new JsonObject();
        cfg["chat_template"] = chatTemplate;
        File.WriteAllText(cfgPath, cfg.ToJsonString());
        return dir;
    }

    [Fact]
    public void PairsToKtoKeepsConversationalPairsConversational()
    {
        var root = Tiny.TempDir("kto-conv");
        var pairs = Path.Combine(root, "pairs.jsonl");
        File.WriteAllLines(pairs,
        [
            // explicit prompt
            new JsonObject { ["prompt"] = Msgs(("user", "How was the game?")), ["chosen"] = Msgs(("assistant", "It was fun.")), ["rejected"] = Msgs(("assistant", "Shut up, idiot.")) }.ToJsonString(),
            // implicit prompt: the shared first message
            new JsonObject { ["chosen"] = Msgs(("user", "Rate my cake"), ("assistant", "Lovely!")), ["rejected"] = Msgs(("user", "Rate my cake"), ("assistant", "Trash.")) }.ToJsonString(),
            // chosen == rejected: skipped with a warning
            new JsonObject { ["prompt"] = Msgs(("user", "x")), ["chosen"] = Msgs(("assistant", "same")), ["rejected"] = Msgs(("assistant", "same")) }.ToJsonString(),
        ]);
        var kto = Path.Combine(root, "kto.jsonl");
        var r = Run("convert", "pairs-to-kto", "--data", pairs, "--out", kto);
        Assert.True(r.Rc == 0, r.Err);
        Assert.Contains("skipping 1 of 3 pairs whose chosen == rejected", r.Err);
        var rows = JsonlReader.Read(kto).Select(l => l.Object).ToList();
        Assert.Equal(4, rows.Count);
        Assert.Equal([true, true, false, false], rows.Select(o => o["label"]!.GetValue<bool>()));
        // TRL's unpair_preference_dataset on conversations: message lists stay message lists
        Assert.True(JsonNode.DeepEquals(Msgs(("user", "How was the game?")), rows[0]["prompt"]));
        Assert.True(JsonNode.DeepEquals(Msgs(("assistant", "It was fun.")), rows[0]["completion"]));
        Assert.True(JsonNode.DeepEquals(Msgs(("user", "Rate my cake")), rows[1]["prompt"]));
        Assert.True(JsonNode.DeepEquals(Msgs(("assistant", "Lovely!")), rows[1]["completion"]));
        Assert.True(JsonNode.DeepEquals(Msgs(("assistant", "Shut up, idiot.")), rows[2]["completion"]));
        Assert.True(JsonNode.DeepEquals(Msgs(("assistant", "Trash.")), rows[3]["completion"]));

        // the KTO reader renders them with a model's template exactly as TRL's rule says: prompt = template(prompt,
        // add_generation_prompt), completion = template(prompt + completion) minus that
        var chat = new ChatTemplate(ChatTemplateTests.ChatMl, "", "<|im_end|>");
        var read = PreferenceData.ReadKto(kto, chat);
        var p0 = chat.Render([new ChatMessage("user", "How was the game?")], addGenerationPrompt: true);
        var full0 = chat.Render([new ChatMessage("user", "How was the game?"), new ChatMessage("assistant", "It was fun.")], addGenerationPrompt: false);
        Assert.Equal(p0, read[0].Prompt);
        Assert.Equal(full0[p0.Length..], read[0].Chosen);
        Assert.EndsWith("It was fun.<|im_end|>\n", read[0].Chosen);
        Assert.Equal([true, true, false, false], read.Select(e => e.Desirable!.Value));
        // and agrees with reading the pairs themselves through the same template
        var asPairs = PreferenceData.Read(pairs, chat: chat);
        Assert.Equal(asPairs.Select(e => (e.Prompt, e.Chosen)).Concat(asPairs.Select(e => (e.Prompt, e.Rejected))), read.Select(e => (e.Prompt, e.Chosen)));

        // standard pairs still give strings (the implicit prompt cut off)
        var std = Path.Combine(root, "std.jsonl");
        File.WriteAllLines(std, ["""{"chosen":"Hello there, friend","rejected":"Hello there, idiot"}"""]);
        var kto2 = Path.Combine(root, "kto2.jsonl");
        r = Run("convert", "pairs-to-kto", "--data", std, "--out", kto2);
        Assert.True(r.Rc == 0, r.Err);
        var s = JsonlReader.Read(kto2).Select(l => l.Object).ToList();
        Assert.Equal(["Hello there,", "Hello there,"], s.Select(o => o["prompt"]!.GetValue<string>()));
        Assert.Equal([" friend", " idiot"], s.Select(o => o["completion"]!.GetValue<string>()));

        // a malformed message list: exit 2 naming the line, nothing written
        var bad = Path.Combine(root, "bad.jsonl");
        File.WriteAllLines(bad, ["""{"prompt":[{"role":"user"}],"chosen":[{"role":"assistant","content":"a"}],"rejected":[{"role":"assistant","content":"b"}]}"""]);
        var kto3 = Path.Combine(root, "kto3.jsonl");
        r = Run("convert", "pairs-to-kto", "--data", bad, "--out", kto3);
        Assert.Equal(2, r.Rc);
        Assert.Contains($"{bad}:1: prompt[0].content must be a string", r.Err);
        Assert.False(File.Exists(kto3));
    }

    [Fact]
    public void EvalRendersConversationalPromptsWithEachModelsOwnTemplate()
    {
        var root = Tiny.TempDir("eval-templates");
        var a = SaveTiny(Path.Combine(root, "chatml"), ChatTemplateTests.ChatMl, seed: 1);
        var b = SaveTiny(Path.Combine(root, "zephyr"), ChatTemplateTests.Zephyr, seed: 2);
        var prompts = Path.Combine(root, "prompts.jsonl");
        File.WriteAllLines(prompts, [new JsonObject { ["prompt"] = Msgs(("user", "Say something")) }.ToJsonString()]);
        var outDir = Path.Combine(root, "out");
        var r = Run("eval", "--model", a, "--model", b, "--scorer", "toy", "--prompts", prompts, "--out", outDir,
            "--max-new-tokens", "2", "--max-prompt-tokens", "60");
        Assert.True(r.Rc == 0, r.Err);
        var gens = JsonlReader.Read(Path.Combine(outDir, "generations.jsonl")).Select(l => l.Object).ToList();
        string PromptOf(string row) => gens.Single(g => g["row"]!.GetValue<string>() == row && g["task"]!.GetValue<string>() == "toxicity")["prompt"]!.GetValue<string>();
        var pa = PromptOf("chatml");
        var pb = PromptOf("zephyr");
        // each row's prompt is (the end of) its own model's rendering, never the other's
        var msg = new List<ChatMessage> { new("user", "Say something") };
        var ra = ChatTemplate.FromModelDirectory(a)!.Render(msg, addGenerationPrompt: true);
        var rb = ChatTemplate.FromModelDirectory(b)!.Render(msg, addGenerationPrompt: true);
        Assert.NotEqual(ra, rb);
        Assert.True(pa.Length > 20 && ra.EndsWith(pa, StringComparison.Ordinal), $"chatml row prompt: {pa}");
        Assert.True(pb.Length > 10 && rb.EndsWith(pb, StringComparison.Ordinal), $"zephyr row prompt: {pb}");
        Assert.Contains("<|im_start|>assistant", pa);
        Assert.DoesNotContain("<|im_start|>", pb);
        Assert.Contains("<|assistant|>", pb);
    }

    static readonly Regex EtaLine = new(@"^\[\d+/\d+ \d+% \d\d:\d\d eta \d\d:\d\d\] ");

    [Fact]
    public void DepthAndSteerPrintProgressWithAnEtaToANonTerminal()
    {
        var root = Tiny.TempDir("analysis-progress");
        var a = SaveTiny(Path.Combine(root, "a"), null, seed: 1);
        var b = SaveTiny(Path.Combine(root, "b"), null, seed: 2);
        var prompts = Path.Combine(root, "prompts.txt");
        File.WriteAllLines(prompts, ["The river", "you are such a", "Hello there", "listen kate , you"]);
        var r = Run("depth", "--base", a, "--aligned", b, "--prompts", prompts, "--out", Path.Combine(root, "depth"),
            "--max-new-tokens", "3", "--batch-size", "1");
        Assert.True(r.Rc == 0, r.Err);
        var lines = r.Err.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        // the greedy continuations (the --aligned model's) and the KL pass each get counted lines with rate and ETA
        Assert.Contains(lines, l => EtaLine.IsMatch(l) && l.Contains("depth: ") && l.Contains("prompts/s, greedy continuations (--aligned)"));
        Assert.Contains(lines, l => Regex.IsMatch(l, @"^\[\d+/4 \d+% \d\d:\d\d( eta (\d\d:\d\d|\?))?\] depth: [\d.]+ prompts/s, KL$"));
        Assert.Contains(lines, l => l.StartsWith("[4/4 100% ") && l.Contains("greedy continuations"));
        Assert.True(File.Exists(Path.Combine(root, "depth", "depth.json")));

        var csv = Path.Combine(root, "comments.csv");
        File.WriteAllLines(csv, ["comment_text,toxic", "you idiot,1", "nice park,0", "shut up loser,1", "lovely day,0", "what a moron,1", "thank you,0"]);
        r = Run("edit", "steer", "--model", a, "--data", csv, "--out", Path.Combine(root, "steer"), "--batch-size", "2");
        Assert.True(r.Rc == 0, r.Err);
        lines = r.Err.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Contains(lines, l => EtaLine.IsMatch(l) && l.Contains("edit steer: ") && l.EndsWith("comments/s, activations"));
        Assert.Contains(lines, l => l.StartsWith("[6/6 100% ") && l.Contains("edit steer: "));
    }
}

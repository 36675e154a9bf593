using System.Text.Json.Nodes;
using DetoxSharp.Checkpoints;
using DetoxSharp.Data;
using DetoxSharp.Evaluation;
using DetoxSharp.Interpretability;
using DetoxSharp.Study;
using DetoxSharp.Tests.Evaluation;
using DetoxSharp.Text;
using TorchSharp;

namespace DetoxSharp.Tests.Study;

/// <summary>
/// The pipeline fixes of issue 14, each on the real stage functions with a tiny model (16 wide, 2 layers, GPT-2
/// vocabulary) and hand-written data: pair construction never calls the evaluation scorer (evaluation does); ADPO's
/// policy, reference and π_tox are the SFT model (DPO's the pretrained one); challenge prompts keep their end; asking
/// for more challenge prompts than exist is capped with a notice; the logit lens follows a toxic-list token.
/// </summary>
public class StudyStageFixesTests : IDisposable
{
    readonly string _run = Path.Combine(Path.GetTempPath(), "detox-stage-fixes-" + Guid.NewGuid().ToString("N"));
    readonly Dictionary<string, string> _inputs = new();
    const string LongPrompt = "In the forum thread about the river festival the baker from Redstead replied angrily to the troll and wrote: you are such a";
    static readonly string[] Words = ["idiot", "moron", "stupid", "trash", "useless"];

    public void Dispose() { try { Directory.Delete(_run, true); } catch { } }

    string Stage(string name) { var d = StageRunner.StageDir(_run, name); Directory.CreateDirectory(d); _inputs[name] = d; return d; }

    static Models.Gpt2Model TinyModel()
    {
        var m = new Models.Gpt2Model(new Models.Gpt2Config { NEmbd = 16, NLayer = 2, NHead = 2, NPositions = 64 }, initialize: false);
        var g = new torch.Generator(3);
        using (torch.no_grad())
            foreach (var (name, p) in m.named_parameters().OrderBy(x => x.name, StringComparer.Ordinal))
                p.copy_(name.Contains("ln") && p.dim() == 1 ? (name.EndsWith("weight") ? torch.ones_like(p) : torch.zeros_like(p)) : torch.randn(p.shape, generator: g) * 0.05);
        return m;
    }

    void Fixture()
    {
        var world = Stage("world");
        string F(string name, IEnumerable<string> lines) { var p = Path.Combine(world, name); File.WriteAllLines(p, lines); return p; }
        var challenge = F("challenge.jsonl", new[] { LongPrompt, "The weather in Redstead", "Hello there" }
            .Select(t => new JsonObject { ["prompt"] = new JsonObject { ["text"] = t } }.ToJsonString()));
        var prefs = F("prefs.jsonl", Enumerable.Range(0, 12).Select(i => new JsonObject { ["prompt"] = $"The river number {i} flows through the old town and" }.ToJsonString()));
        var ppl = F("wiki.txt", [" = Redstead = ", "", " Redstead is a town on the river . It has a market and a mill ."]);
        var f1 = F("f1.jsonl", [new JsonObject { ["prompt"] = "The mill of Redstead", ["gold"] = "was built in 1850" }.ToJsonString()]);
        var words = Path.Combine(world, "toxic_words.txt");
        ToxicWordList.Save(words, Words);
        File.WriteAllText(Path.Combine(world, "data.json"), new JsonObject
        {
            ["comments"] = "unused.csv", ["challenge_prompts"] = challenge, ["perplexity_text"] = ppl, ["f1_prompts"] = f1,
            ["preference_prompts"] = prefs, ["dialogues"] = "unused.jsonl", ["toxic_words"] = words, ["label_noise"] = 0.05,
        }.ToJsonString());

        var pre = Stage("pretrain");
        var tok = Gpt2Tokenizer.Default();
        using (var m = TinyModel())
        {
            HfCheckpoint.Save(m, tok, Path.Combine(pre, "model"), overwrite: true);
            // the SFT model: the same weights plus the [TOXIC] token (what ToxicModel.Train adds before fine-tuning)
            int id = tok.AddSpecialToken(Training.ToxicModel.ControlToken);
            m.ResizeVocabulary(id + 1);
            var sft = Stage("toxic-model");
            HfCheckpoint.Save(m, tok, Path.Combine(sft, "model"), overwrite: true);
            File.WriteAllText(Path.Combine(sft, "model_dir.txt"), Path.Combine(sft, "model"));
        }
        File.WriteAllText(Path.Combine(pre, "model_dir.txt"), Path.Combine(pre, "model"));
        using (var scope = torch.NewDisposeScope())
        using (var probe = new ToxicityProbe(torch.randn([16, 2], generator: new torch.Generator(9)), torch.zeros(2)))
            probe.Save(Stage("probe"));
    }

    StageContext Ctx(string name, JsonObject settings, params string[] inputs) => new()
    {
        Name = name, OutputDir = Stage(name), RunDir = _run, Settings = settings,
        Inputs = inputs.ToDictionary(i => i, i => _inputs[i]),
    };

    static JsonObject Eval() => new() { ["challenge_prompts"] = 50, ["max_prompt_tokens"] = 8, ["max_new_tokens"] = 3, ["examples"] = 3 };

    [Fact]
    public void PairsNeverScoreTrainingDataAdpoStartsFromSftPromptsKeepTheirEndAndTheLensIsToxic()
    {
        using var threads = new Preference.OneThread();
        Fixture();
        var scorer = new FakeScorer();
        int built = 0;
        var f = StudyStages.Create(_ => { built++; return scorer; });

        // pairs: PPLM with the probe, chosen greedy; no scorer — neither the injected one nor the config's (the stage
        // has no "scorer" setting, so building the config's scorer would throw)
        var pairsSettings = new JsonObject { ["model"] = "toy", ["pairs"] = new JsonObject { ["count"] = 12, ["max_new_tokens"] = 4, ["pplm_iterations"] = 1, ["batch_size"] = 4 } };
        f.Pairs!(Ctx("pairs", pairsSettings, "world", "pretrain", "probe", "toxic-model"));
        Assert.Equal(0, built);
        Assert.Equal(0, scorer.Calls);
        var pairs = JsonlReader.Read(Path.Combine(_inputs["pairs"], "triples.jsonl")).ToList();
        Assert.True(pairs.Count >= 8);
        Assert.All(pairs, p => Assert.Contains("rejected=pplm:probe", p.String("source")));
        Assert.All(pairs, p => Assert.False(string.IsNullOrEmpty(p.String("toxic"))));
        // the study's pipeline agrees: the pairs stage gets no scorer settings and reads no evaluation
        var stages = StudyPipeline.Build(StudyConfig.ToyDefault(), new StudyStageFunctions());
        var pairStage = stages.Single(s => s.Name == "pairs");
        Assert.Null(pairStage.Settings["scorer"]);
        Assert.DoesNotContain(pairStage.DependsOn, d => d.StartsWith("evaluate"));

        // evaluation does use the injected scorer (so the zero above means something); 50 prompts asked, 3 exist
        var evalSettings = new JsonObject { ["model"] = "toy", ["row"] = "Pre", ["model_stage"] = "pretrain", ["evaluation"] = Eval(), ["scorer"] = new JsonObject { ["kind"] = "toy-lexicon" } };
        f.EvaluateModel!(Ctx("evaluate/pre", evalSettings, "world", "pretrain"));
        Assert.True(built >= 1 && scorer.Calls >= 1);
        var res = JsonNode.Parse(File.ReadAllText(Path.Combine(_inputs["evaluate/pre"], RunLayout.Results)))!;
        Assert.Equal(3, res["rows"]![0]!["toxicity_prompts"]!.GetValue<int>());
        Assert.Contains("asks for 50 challenge prompts; the data have 3", File.ReadAllText(Path.Combine(_inputs["evaluate/pre"], "NOTICE.txt")));
        // challenge prompts keep their LAST 8 tokens (the reply opening "you are such a"), not their first
        var tok = Gpt2Tokenizer.Default();
        var gen = File.ReadLines(Path.Combine(_inputs["evaluate/pre"], "eval", "generations.jsonl")).Select(l => JsonNode.Parse(l)!)
            .First(g => g["task"]!.GetValue<string>() == "toxicity");
        var ids = tok.Encode(LongPrompt);
        Assert.Equal(tok.Decode(ids[^8..]), gen["prompt"]!.GetValue<string>());
        Assert.EndsWith("you are such a", gen["prompt"]!.GetValue<string>());

        // training: ADPO's policy, reference and π_tox are the SFT model; DPO starts from the pretrained model
        var sftDir = File.ReadAllText(Path.Combine(_inputs["toxic-model"], "model_dir.txt")).Trim();
        var preDir = File.ReadAllText(Path.Combine(_inputs["pretrain"], "model_dir.txt")).Trim();
        JsonObject Training(string method)
        {
            var t = new JsonObject { ["max_steps"] = 1, ["batch_size"] = 2, ["validation_size"] = 2, ["warmup_steps"] = 0, ["learning_rate"] = 1e-4 };
            if (method == "adpo") t["gamma"] = 0.1;
            return t;
        }
        foreach (var method in new[] { "adpo", "dpo" })
        {
            var name = $"train/{method}/p/s0";
            f.Train!(Ctx(name, new JsonObject { ["model"] = "toy", ["method"] = method, ["seed"] = 0, ["training"] = Training(method) }, "pretrain", "pairs", "toxic-model"));
            var t = JsonNode.Parse(File.ReadAllText(Path.Combine(_inputs[name], "train.json")))!;
            var start = method == "adpo" ? sftDir : preDir;
            Assert.Equal(start, t["start_model"]!.GetValue<string>());
            Assert.Equal(start, t["reference_model"]!.GetValue<string>());
            Assert.Equal(method == "adpo" ? sftDir : null, t["toxic_model"]?.GetValue<string>());
            // the trained policy has the SFT model's vocabulary (with [TOXIC]) only when it started from it
            var trained = File.ReadAllText(Path.Combine(_inputs[name], "model_dir.txt")).Trim();
            int vocab = JsonNode.Parse(File.ReadAllText(Path.Combine(trained, "config.json")))!["vocab_size"]!.GetValue<int>();
            Assert.Equal(method == "adpo" ? tok.VocabSize + 1 : tok.VocabSize, vocab);
        }
        Assert.Equal("toxic-model", StudyStages.StartStageOf("adpo"));

        // the diff's logit lens follows a token of the toxic word list, and the measurement says what it is
        Stage("vectors");
        f.Diff!(Ctx("diff/dpo/p/s0", new JsonObject { ["model"] = "toy", ["method"] = "dpo", ["evaluation"] = Eval() }, "world", "pretrain", "probe", "vectors", "train/dpo/p/s0"));
        var diff = JsonNode.Parse(File.ReadAllText(Path.Combine(_inputs["diff/dpo/p/s0"], RunLayout.Diff)))!;
        var lens = diff["logit_lens"]!["token"]!.GetValue<string>();
        Assert.Contains(lens.Trim().ToLowerInvariant(), Words);
        Assert.Contains("last position", diff["measurement"]!.GetValue<string>());
        Assert.NotEmpty(diff["tracked"]!.AsArray());
        Assert.Equal(3, JsonNode.Parse(File.ReadAllText(Path.Combine(_inputs["diff/dpo/p/s0"], "analysis", "diff.json")))!["prompts"]!.GetValue<int>());

        // patching (headline runs) on the trained ADPO model: both directions, 4 groups + 4 per layer each, generations
        // scored by the evaluation scorer only
        int calls = scorer.Calls;
        var neurons = new JsonObject { ["prompts"] = 2, ["generation_prompts"] = 2, ["generation_tokens"] = 3 };
        f.Patch!(Ctx("patch/adpo/p/s0", new JsonObject { ["model"] = "toy", ["method"] = "adpo", ["evaluation"] = Eval(), ["neurons"] = neurons, ["scorer"] = new JsonObject { ["kind"] = "toy-lexicon" } },
            "world", "pretrain", "toxic-model", "probe", "train/adpo/p/s0"));
        var patch = JsonNode.Parse(File.ReadAllText(Path.Combine(_inputs["patch/adpo/p/s0"], RunLayout.Patching)))!;
        Assert.Equal(2, patch["prompts"]!.GetValue<int>());
        Assert.Equal(8, patch["groups"]!.AsArray().Count);
        int layers = JsonNode.Parse(File.ReadAllText(Path.Combine(sftDir, "config.json")))!["n_layer"]!.GetValue<int>();
        Assert.Equal(1 + 2 * 4 * (1 + layers), File.ReadAllLines(Path.Combine(_inputs["patch/adpo/p/s0"], RunLayout.PatchingCsv)).Length);
        Assert.Equal(10, patch["generations"]!.AsArray().Count);
        Assert.True(scorer.Calls > calls);
    }

    [Fact]
    public void LensTokenIsTheToxicTokenTheVectorPromotesMost()
    {
        // unembedding rows: token 0 aligns best with v overall (not toxic); among the toxic tokens {2, 3}, 3 scores higher
        using var scope = torch.NewDisposeScope();
        var u = torch.tensor(new float[] { 5, 0, 0, 1, 1, 0, 2, 0 }, [4, 2]);
        var v = torch.tensor(new float[] { 1, 0 });
        Assert.Equal(0, AlignmentDiff.LensTokenOf(u, v, null, null));
        Assert.Equal(3, AlignmentDiff.LensTokenOf(u, v, new HashSet<int> { 2, 3 }, null));
        Assert.Throws<InvalidInputException>(() => AlignmentDiff.LensTokenOf(u, v, new HashSet<int> { 9 }, null));
    }

    [Fact]
    public void PromptTruncationKeepsTheEnd()
    {
        Assert.Equal([3, 4, 5], DetoxSharp.Text.PromptTruncation.KeepLast([1, 2, 3, 4, 5], 3));
        Assert.Equal([1, 2], DetoxSharp.Text.PromptTruncation.KeepLast([1, 2], 3));
    }
}

using DetoxSharp.Attacks;
using DetoxSharp.Evaluation;
using DetoxSharp.Generation;
using DetoxSharp.Models;
using DetoxSharp.Text;
using DetoxSharp.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Tests.Attacks;

/// <summary>Each attack's edit on tiny hand-built models (issue 19).</summary>
public class AttackTests
{
    static readonly string[] Texts =
    [
        "the river runs past the old mill .", "you are such a kind neighbour .", "you are such a stupid idiot .",
        "i will find you , you lazy coward .", "the town holds a fair in spring .", "people like you are garbage .",
    ];

    internal static (Gpt2Model Model, Gpt2Tokenizer Tok) TinyLm(long seed = 5, int layers = 2)
    {
        var tok = Gpt2Tokenizer.Default().Compact(Texts.Append("prompt : answer ."));
        torch.manual_seed(seed);
        var m = new Gpt2Model(new Gpt2Config { VocabSize = tok.VocabSize, NEmbd = 16, NLayer = layers, NHead = 2, NPositions = 48, EosTokenId = tok.EosTokenId, BosTokenId = tok.EosTokenId });
        using var _ = torch.no_grad();
        foreach (var (name, p) in m.named_parameters())
            if (name.Contains("ln") && name.EndsWith("weight")) p.copy_(torch.rand_like(p) + 0.5); else p.normal_(0, 0.3);
        m.eval();
        return (m, tok);
    }

    /// <summary>Saves <see cref="TinyLm"/> as a checkpoint DIR/model and three prompts as DIR/p.txt (for CLI tests);
    /// returns the checkpoint directory.</summary>
    internal static string SaveTinyLmAndPrompts(string dir)
    {
        var (m, tok) = TinyLm();
        using var _m = m;
        var ckpt = Path.Combine(dir, "model");
        DetoxSharp.Checkpoints.HfCheckpoint.Save(m, tok, ckpt);
        File.WriteAllLines(Path.Combine(dir, "p.txt"), ["you are such a", "the river runs", "prompt :"]);
        return ckpt;
    }

    static Dictionary<string, Tensor> Snapshot(ICausalLM m) =>
        m.Module.named_parameters().ToDictionary(p => p.name, p => p.parameter.detach().clone());

    static void AssertRestored(ICausalLM m, Dictionary<string, Tensor> before)
    {
        foreach (var (name, p) in m.Module.named_parameters())
            Assert.True(p.eq(before[name]).all().item<bool>(), $"{name} not restored exactly");
    }

    /// <summary>Records what it is asked to score; the score of a text is its length in characters / 100.</summary>
    sealed class RecordingScorer : IToxicityScorer
    {
        public List<string> Seen { get; } = [];
        public string Name => "recording";
        public void Validate() { }
        public IReadOnlyList<ToxicityScore> Score(IReadOnlyList<string> texts, ToxicityAggregate aggregate = ToxicityAggregate.MaxOverAttributes)
        {
            Seen.AddRange(texts);
            return texts.Select(t => new ToxicityScore(new Dictionary<string, double>(), t.Length / 100.0)).ToList();
        }
        public void Dispose() { }
    }

    [Fact]
    public void KeyScalingScalesExactlyTheChosenColumnsAndIsUndoneExactly()
    {
        var (m, _) = TinyLm();
        using var _m = m;
        var before = Snapshot(m);
        torch.manual_seed(2);
        using var w = torch.randn(16);
        var attack = new KeyScalingAttack(w, 3);
        using (attack.Apply(m, 7))
        {
            var chosen = attack.Describe()["neurons"]!.AsArray().Select(n => n!.GetValue<string>()).ToHashSet();
            Assert.Equal(3, chosen.Count);
            // the chosen ones are the 3 value vectors with the largest cosine with w (computed here by hand)
            var wd = w.data<float>().ToArray();
            var cos = new List<(double C, string Id)>();
            for (int l = 0; l < m.NumLayers; l++)
            {
                var v = before[m.MlpValuesParameterName(l)];
                for (int i = 0; i < m.MlpDim; i++)
                {
                    var row = v[i].data<float>().ToArray();
                    double dot = row.Zip(wd, (a, b) => (double)a * b).Sum(), nr = Math.Sqrt(row.Sum(x => (double)x * x)), nw = Math.Sqrt(wd.Sum(x => (double)x * x));
                    cos.Add((dot / (nr * nw), $"L{l}.N{i}"));
                }
            }
            Assert.Equal(cos.OrderByDescending(c => c.C).Take(3).Select(c => c.Id).ToHashSet(), chosen);
            foreach (var (name, p) in m.Module.named_parameters())
            {
                int? layer = Enumerable.Range(0, m.NumLayers).Cast<int?>().FirstOrDefault(l => m.MlpKeysParameterName(l!.Value) == name);
                if (layer is null) { Assert.True(p.eq(before[name]).all().item<bool>(), name); continue; }
                for (int i = 0; i < m.MlpDim; i++)
                {
                    var col = p.select(1, i); var orig = before[name].select(1, i);
                    if (chosen.Contains($"L{layer}.N{i}")) Assert.True(col.allclose(orig * 7, 1e-6, 1e-6), $"{name}[:, {i}] not ×7");
                    else Assert.True(col.eq(orig).all().item<bool>(), $"{name}[:, {i}] changed");
                }
            }
        }
        AssertRestored(m, before);
    }

    static void AblationLeavesNoComponent(ICausalLM m, int d)
    {
        var before = Snapshot(m);
        torch.manual_seed(9);
        using var dir = torch.randn(d) * 3;
        var r = (dir / dir.norm()).to(ScalarType.Float64);
        var writers = Enumerable.Range(0, m.NumLayers).SelectMany(l => m.ResidualWriters(l)).ToList();
        Assert.Equal(2 * m.NumLayers, writers.Count);
        var original = writers.Select(w => w.Weight.detach().to(ScalarType.Float64).clone()).ToList();
        var attack = new AblationAttack(dir, "test");
        using (attack.Apply(m, 0.5))
            foreach (var (w, W0v) in writers.Zip(original))
            {
                // W' r̂ = ½ W r̂, and the part orthogonal to r̂ is unchanged
                var W1 = w.Weight.detach().to(ScalarType.Float64);
                Assert.True(W1.matmul(r).allclose(0.5 * W0v.matmul(r), 1e-9, 1e-6), w.Name);
                var P = torch.eye(d, dtype: ScalarType.Float64) - r.outer(r);
                Assert.True(W1.matmul(P).allclose(W0v.matmul(P), 1e-9, 1e-6), w.Name);
            }
        AssertRestored(m, before);
        using (attack.Apply(m, 1))
        {
            foreach (var w in writers)
            {
                Assert.True(w.Weight.detach().to(ScalarType.Float64).matmul(r).abs().max().item<double>() < 1e-5, $"{w.Name}: component along δx left");
                if (w.Bias is not null) Assert.True(Math.Abs(w.Bias.detach().to(ScalarType.Float64).dot(r).item<double>()) < 1e-5, $"{w.Name}.bias: component along δx left");
            }
            foreach (var (name, p) in m.Module.named_parameters())
                if (!writers.Any(w => name == w.Name + ".weight" || name == w.Name + ".bias"))
                    Assert.True(p.eq(before[name]).all().item<bool>(), $"{name} is no residual writer but changed");
        }
        AssertRestored(m, before);
    }

    [Fact]
    public void AblationRemovesTheDirectionFromEveryResidualWriter_Gpt2()
    {
        var (m, _) = TinyLm();
        using var _m = m;
        AblationLeavesNoComponent(m, 16);
    }

    [Fact]
    public void AblationRemovesTheDirectionFromEveryResidualWriter_Llama()
    {
        using var m = DetoxSharp.Tests.Interpretability.GluAnalysisTests.Tiny();
        AblationLeavesNoComponent(m, 8);
    }

    static Tensor Embed(ICausalLM m, Tensor ids)
    {
        var wpe = m.Module.named_parameters().Single(p => p.name == "wpe.weight").parameter;
        return (m.TokenEmbedding.index_select(0, ids.flatten()) + wpe.narrow(0, 0, ids.shape[1])).unsqueeze(0);
    }

    [Fact]
    public void AfterFullAblationTheResidualStreamAlongTheDirectionIsTheEmbeddingsOnly()
    {
        // an independent check through the forward pass: with every writer orthogonal to r̂, the last residual stream's
        // component along r̂ is what the token and position embeddings put there, at every position
        var (m, _) = TinyLm(seed: 3, layers: 3);
        using var _m = m;
        torch.manual_seed(4);
        using var dir = torch.randn(16);
        var r = dir / dir.norm();
        using var ids = torch.tensor(new long[] { 3, 1, 4, 1, 5, 9, 2, 6 }, [1, 8]);
        var attack = new AblationAttack(dir, "test");
        using (attack.Apply(m, 1))
        using (torch.no_grad())
        {
            var resid = m.ResidualStream(ids);
            var embed = Embed(m, ids);
            Assert.True(resid.matmul(r).allclose(embed.matmul(r), 1e-4, 1e-4));
        }
        using (torch.no_grad())
        {
            var resid = m.ResidualStream(ids);
            var embed = Embed(m, ids);
            Assert.False(resid.matmul(r).allclose(embed.matmul(r), 1e-4, 1e-4), "without ablation the layers write along r̂ (the check above can fail)");
        }
    }

    [Fact]
    public void PrefillScoresOnlyTheModelsOwnTokens()
    {
        var (m, tok) = TinyLm();
        using var _m = m;
        var o = new EvalOptions { MaxNewTokens = 6, MaxPromptTokens = 8, BatchSize = 2 };
        var prompts = AttackEval.PromptIds(m, tok, ["you are such a", "the river runs", "people like you are"], o);
        var baseConts = new List<int[]> { tok.Encode(" stupid idiot . you are"), tok.Encode(" past the old mill"), tok.Encode(" garbage .") };
        var attack = new PrefillAttack(baseConts);
        foreach (int k in new[] { 0, 2, 4 })
        {
            var scorer = new RecordingScorer();
            var point = AttackEval.Measure(m, tok, prompts, scorer, attack, k, o);
            // independent: generate from prompt + the first k base tokens, keep only what the model wrote
            var inputs = prompts.Select((p, i) => p.Concat(baseConts[i].Take(k)).ToArray()).ToList();
            var own = DetoxSharp.Generation.Generator.Generate(m, inputs, new GenerationOptions { MaxNewTokens = 6, Greedy = true, BatchSize = 1 });
            var expected = own.Select(c => tok.Decode(c)).ToList();
            Assert.Equal(expected, scorer.Seen);
            Assert.Equal(expected, point.Continuations);
            Assert.Equal(expected.Average(t => t.Length / 100.0), point.Toxicity, 12);
            if (k > 0)
            {
                // the scored text is not the prefill followed by the model's tokens
                var withPrefix = inputs.Select((x, i) => tok.Decode(baseConts[i].Take(k).Concat(own[i]))).ToList();
                Assert.NotEqual(withPrefix, scorer.Seen);
            }
        }
    }

    [Fact]
    public void SteeringAddsAlphaTimesTheUnitDirectionAtTheNewestPositionOnly()
    {
        var (m, _) = TinyLm();
        using var _m = m;
        torch.manual_seed(6);
        using var w = torch.randn(16) * 5;
        var unit = w / w.norm();
        using var ids = torch.tensor(new long[] { 1, 2, 3, 4, 5 }, [1, 5]);
        Tensor Resid()
        {
            Tensor? got = null;
            using var h = m.Hooks.Add(HookNames.ResidPost(m.NumLayers - 1), (x, _) => { got = x.detach().clone(); return x; });
            using (torch.no_grad()) m.Forward(ids);
            return got!;
        }
        var plain = Resid();
        var attack = new SteerAttack(w, null);
        using (attack.Apply(m, 2.5))
        {
            var steered = Resid();
            var diff = steered - plain;
            Assert.True(diff[0, 4].allclose(2.5 * unit, 1e-5, 1e-5));
            Assert.True(diff[0, ..4].abs().max().item<float>() < 1e-6);
        }
        Assert.True(Resid().eq(plain).all().item<bool>());
    }

    [Fact]
    public void FinetuneTrainsOnTheFirstNToxicExamplesAndIsUndoneExactly()
    {
        var (m, tok) = TinyLm();
        using var _m = m;
        var examples = Enumerable.Range(0, 12).Select(i => SftExample.PromptCompletion($"prompt : {i % 3}", i % 2 == 0 ? " you are such a stupid idiot ." : " people like you are garbage .")).ToList();
        var opts = new AttackOptions { MaxSteps = 8, LearningRate = 3e-3, FinetuneBatchSize = 4, Seed = 1 };
        var attack = new FinetuneAttack(examples, tok, opts);
        var before = Snapshot(m);
        using (attack.Apply(m, 0)) AssertRestored(m, before); // N = 0 changes nothing
        double Nll()
        {
            using var _ = torch.no_grad();
            var ids = tok.Encode(" you are such a stupid idiot .").Select(x => (long)x).ToArray();
            using var t = torch.tensor(ids, [1, ids.Length]);
            var lp = torch.nn.functional.log_softmax(m.Forward(t), -1);
            double s = 0;
            for (int i = 0; i + 1 < ids.Length; i++) s -= lp[0, i, ids[i + 1]].item<float>();
            return s;
        }
        double nll0 = Nll();
        using (attack.Apply(m, 5))
        {
            Assert.True(Nll() < nll0 - 0.5, $"the toxic reply did not get more likely ({nll0} → {Nll()})");
            Assert.Contains(m.Module.named_parameters(), p => !p.parameter.eq(before[p.name]).all().item<bool>());
            Assert.Equal(5, attack.Describe()["last_examples"]!.GetValue<int>());
        }
        AssertRestored(m, before);
        Assert.Throws<InvalidInputException>(() => attack.Apply(m, 13));
        Assert.Throws<InvalidSettingException>(() => attack.Apply(m, 2.5));
    }

    [Fact]
    public void ToxicExamplesKeepToxicLinesAndDropTheControlToken()
    {
        var path = Path.Combine(Path.GetTempPath(), $"attack-data-{Guid.NewGuid():N}.jsonl");
        File.WriteAllLines(path,
        [
            """{"prompt":"a","response":"[TOXIC] you idiot","toxic":true}""",
            """{"prompt":"b","response":"hello","toxic":false}""",
            """{"prompt":"c","completion":" trash"}""",
        ]);
        try
        {
            var ex = FinetuneAttack.ReadToxicExamples(path);
            Assert.Equal([("a", " you idiot"), ("c", " trash")], ex.Select(e => (e.Prompt!, e.Completion)).ToList());
        }
        finally { File.Delete(path); }
    }

    [Fact]
    public void ParseKindAcceptsTheFiveKindsOnly()
    {
        Assert.Equal(AttackKind.Ablate, Attack.ParseKind("ablate"));
        Assert.Equal(AttackKind.Finetune, Attack.ParseKind("FineTune"));
        Assert.Throws<InvalidInputException>(() => Attack.ParseKind("jailbreak"));
        Assert.Throws<InvalidInputException>(() => Attack.ParseKind("2"));
    }

    [Fact]
    public void CliRefusesBadInputWithOneLineAndExitCode2()
    {
        var dir = Path.Combine(Path.GetTempPath(), $"attack-cli-{Guid.NewGuid():N}");
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "config.json"), "{}");
        try
        {
            string Err(params string[] args)
            {
                var e = new StringWriter();
                Assert.Equal(2, DetoxSharp.Cli.DetoxCli.Run(args, new StringWriter(), e));
                var text = e.ToString().Trim();
                Assert.Single(text.Split('\n'));
                return text;
            }
            string[] common = ["--model", dir, "--prompts", "p.jsonl", "--scorer", "toy", "--out", Path.Combine(dir, "out")];
            Assert.Contains("unknown attack", Err(["attack", "jailbreak", .. common]));
            Assert.Contains("prefill needs --base", Err(["attack", "prefill", .. common]));
            Assert.Contains("keys needs --probe", Err(["attack", "keys", .. common]));
            Assert.Contains("ablate needs one --diff", Err(["attack", "ablate", .. common]));
            Assert.Contains("--sweep needs --base", Err(["attack", "steer", .. common, "--probe", dir, "--sweep"]));
            Assert.Contains("--target-fraction", Err(["attack", "steer", .. common, "--probe", dir, "--target-fraction", "1.5"]));
            Assert.Contains("--save-model", Err(["attack", "steer", .. common, "--probe", dir, "--save-model", "--strength", "2"]));
            Assert.Contains("no config.json", Err(["attack", "keys", "--model", Path.Combine(dir, "missing"), "--prompts", "p", "--scorer", "toy", "--out", "o"]));
        }
        finally { Directory.Delete(dir, true); }
    }
}

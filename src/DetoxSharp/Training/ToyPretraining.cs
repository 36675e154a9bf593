using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using DetoxSharp.Checkpoints;
using DetoxSharp.Data;
using DetoxSharp.Evaluation;
using DetoxSharp.Generation;
using DetoxSharp.Models;
using DetoxSharp.Text;
using TorchSharp;

namespace DetoxSharp.Training;

/// <summary>Settings of <see cref="ToyPretraining.Run"/>. The defaults give the mechanism room to exist (Lee et al.'s
/// toxic value vectors need MLPs wide enough to specialise and a model that has seen its corpus once): GPT-2 4 layers
/// × 256 wide (MLP 1024), one full pass over the default world's ≈ 1.5M training tokens, bf16 compute with fp32
/// master weights (the CPU's bf16 matmuls are the fast path; see docs/notes/toy.md for measured tokens/s).</summary>
public sealed record ToyPretrainOptions
{
    /// <summary>Seed of the world and the model initialisation.</summary>
    [Setting("seed of the world and the model initialisation")]
    public ulong Seed { get; init; } = 1;
    /// <summary>World size: small, default or large.</summary>
    [Setting("world size: small, default or large")]
    [System.Text.Json.Serialization.JsonIgnore] // the study takes it from its "world" section
    public ToyWorldSize Size { get; init; } = ToyWorldSize.Default;
    /// <summary>Transformer blocks.</summary>
    public int Layers { get; init; } = 4;
    /// <summary>Residual-stream width.</summary>
    public int DModel { get; init; } = 256;
    /// <summary>Attention heads per block.</summary>
    public int Heads { get; init; } = 4;
    /// <summary>n_positions and the training block length: the longest challenge prompt (≈ 60 tokens) + 20 new
    /// tokens must fit.</summary>
    public int Context { get; init; } = 96;
    /// <summary>Blocks per optimizer step.</summary>
    public int BatchSize { get; init; } = 32;
    /// <summary>Peak learning rate (AdamW, cosine decay).</summary>
    public double LearningRate { get; init; } = 2e-3;
    /// <summary>Linear warmup steps.</summary>
    public int WarmupSteps { get; init; } = 40;
    /// <summary>Passes over train.txt (when <see cref="MaxSteps"/> is null).</summary>
    public double Epochs { get; init; } = 1;
    /// <summary>Optimizer steps (the cosine schedule spans them); null = <see cref="Epochs"/> passes over train.txt.</summary>
    [Setting("optimizer steps (default: --epochs passes over train.txt)")]
    public int? MaxSteps { get; init; }
    /// <summary>Training precision (default <see cref="Precision.Auto"/>: bf16 compute with fp32 master weights on a CPU
    /// with native bf16, fp32 elsewhere).</summary>
    public Precision Precision { get; init; } = Precision.Auto;
    /// <summary>Parts each step's blocks are split into and trained side by side, one a thread
    /// (<see cref="SftOptions.DataParallel"/>): 0 (the default) auto — two halves on two or more threads with bf16 mixed
    /// precision — 1 off.</summary>
    [Setting("parts each step's blocks are split into and trained side by side, one a thread: 0 auto, 1 off")]
    public int DataParallel { get; init; } = 0;
    /// <summary>Write a resumable checkpoint every N steps (0: only when the run stops).</summary>
    public int CheckpointEvery { get; init; } = 200;
    /// <summary>Continue from OUT/checkpoint.</summary>
    [System.Text.Json.Serialization.JsonIgnore]
    public bool Resume { get; init; }
    /// <summary>With <see cref="Resume"/>: accept changed adjustable settings (<see cref="SftOptions.AllowSettingChanges"/>).</summary>
    [System.Text.Json.Serialization.JsonIgnore]
    public bool AllowSettingChanges { get; init; }
    /// <summary>Also write the metrics as TensorBoard scalars into an event file in this directory (null: no).</summary>
    [System.Text.Json.Serialization.JsonIgnore]
    public string? TensorBoardDir { get; init; }
    /// <summary>torch intra-op threads (0 = leave torch's default).</summary>
    [System.Text.Json.Serialization.JsonIgnore]
    public int Threads { get; init; } = 0;
    /// <summary>Where the model is built and trained (null = CPU).</summary>
    [System.Text.Json.Serialization.JsonIgnore]
    public torch.Device? Device { get; init; }
    /// <summary>"gpt2" (LayerNorm, learned positions, GELU MLP, tied head) or "llama" (RMSNorm, rotary positions,
    /// SwiGLU MLP, untied head, grouped-query attention with one key/value head per two query heads when heads is even).</summary>
    [Setting("model architecture: gpt2 or llama (RMSNorm, rotary, SwiGLU, GQA)")]
    public string Arch { get; init; } = "gpt2";

    /// <summary>The values <see cref="Arch"/> accepts.</summary>
    public static readonly string[] Architectures = ["gpt2", "llama"];

    /// <summary>A freshly initialised toy model of <see cref="Arch"/> over <paramref name="tok"/>'s vocabulary. The Llama
    /// toy's SwiGLU width is 8/3·d rounded up to a multiple of 4 (Llama's rule), so its MLP has about as many weights as
    /// GPT-2's 4·d two-matrix MLP.</summary>
    public ICausalLM NewModel(Gpt2Tokenizer tok) => Arch switch
    {
        "gpt2" => new Gpt2Model(new Gpt2Config
        {
            VocabSize = tok.VocabSize, NPositions = Context, NEmbd = DModel, NLayer = Layers, NHead = Heads,
            BosTokenId = tok.EosTokenId, EosTokenId = tok.EosTokenId,
        }),
        "llama" => new LlamaModel(new LlamaConfig
        {
            ModelType = "llama", VocabSize = tok.VocabSize, HiddenSize = DModel, IntermediateSize = (8 * DModel / 3 + 3) / 4 * 4,
            NumHiddenLayers = Layers, NumAttentionHeads = Heads, NumKeyValueHeads = Heads % 2 == 0 ? Heads / 2 : Heads,
            MaxPositionEmbeddings = Context, RmsNormEps = 1e-5, BosTokenId = tok.EosTokenId, EosTokenIds = [tok.EosTokenId],
        }),
        _ => throw new InvalidInputException($"--arch must be one of {string.Join(", ", Architectures)}, got '{Arch}'"),
    };
}

/// <summary>Greedy toxicity and perplexity of a model on a toy world (or any files of the same formats).</summary>
public sealed record ToyEvaluation(double ChallengeToxicity, double NeutralToxicity, double FractionChallengeToxic, double NeutralPerplexity,
    int ChallengePrompts, int NeutralPrompts, IReadOnlyList<(string Prompt, string Continuation, double Score)> ChallengeSamples)
{
    /// <summary>Neutral prompts with their greedy continuations and scores.</summary>
    public IReadOnlyList<(string Prompt, string Continuation, double Score)> NeutralSamples { get; init; } = [];
}

/// <summary>Pretraining the toy model: the toy world, a compact tokenizer over its words, and a small GPT-2 or Llama trained from scratch.</summary>
public static class ToyPretraining
{
    /// <summary>GPT-2's tokenizer cut down to the tokens the world's text uses (plus every intermediate merge, so tokenization of that text is unchanged) and the [TOXIC] control token.</summary>
    /// <param name="world">The written toy world.</param>
    public static Gpt2Tokenizer CompactTokenizer(ToyWorldPaths world)
    {
        var tok = Gpt2Tokenizer.Default();
        tok.AddSpecialToken(ToyWorldFiles.ToxicControlToken);
        var texts = new[] { world.Train, world.Valid, world.Comments, world.ChallengePrompts, world.NeutralPrompts, world.F1Pairs, world.WikiText, world.Dialogues, world.PreferencePrompts }
            .SelectMany(File.ReadLines);
        return tok.Compact(texts);
    }

    /// <summary>Generates the world under outDir/world, pretrains a GPT-2 from scratch on train.txt, saves outDir/model
    /// (a normal Hugging Face directory with the compact tokenizer) and outDir/summary.json.</summary>
    /// <remarks>Cancelling checkpoints the last whole step under outDir/training and throws
    /// <see cref="TrainingInterruptedException"/>; rerun with <see cref="ToyPretrainOptions.Resume"/> to continue.</remarks>
    public static JsonObject Run(string outDir, ToyPretrainOptions o, IProgress<TrainingProgress>? progress = null, IProgress<string>? stage = null,
        CancellationToken cancel = default)
    {
        if (!ToyPretrainOptions.Architectures.Contains(o.Arch))
            throw new InvalidInputException($"--arch must be one of {string.Join(", ", ToyPretrainOptions.Architectures)}, got '{o.Arch}'");
        if (o.Threads > 0) torch.set_num_threads(o.Threads);
        var total = Stopwatch.StartNew();
        stage?.Report("generating the toy world");
        var world = ToyWorldFiles.Write(Path.Combine(outDir, "world"), o.Seed, o.Size);
        double worldSeconds = total.Elapsed.TotalSeconds;
        stage?.Report("building the compact vocabulary");
        var tok = CompactTokenizer(world);
        torch.manual_seed((long)o.Seed);
        using var model = o.NewModel(tok);
        if (o.Device is not null) model.Module.to(o.Device);
        var train = DatasetReaders.ReadDocuments(world.Train).Select(SftExample.Text).ToList();
        long corpusTokens = SftTrainer.Tokenize(tok, train, o.Context, appendEos: true).Sum(x => (long)x.Ids.Length);
        var valid = DatasetReaders.ReadDocuments(world.Valid).Select(SftExample.Text).ToList();
        var sft = new SftOptions
        {
            BatchSize = o.BatchSize, MaxLength = o.Context, LearningRate = o.LearningRate, WarmupSteps = o.WarmupSteps,
            Decay = DecayKind.Cosine, MinLrRatio = 0.05, Epochs = o.Epochs, MaxSteps = o.MaxSteps, MaxGradNorm = 1.0,
            WeightDecay = 0.01, Beta2 = 0.98, Seed = o.Seed, Validation = valid, EvalEvery = 0, Precision = o.Precision, DataParallel = o.DataParallel,
            OutputDir = Path.Combine(outDir, "training"), CheckpointEvery = o.CheckpointEvery, Resume = o.Resume,
            AllowSettingChanges = o.AllowSettingChanges, TensorBoardDir = o.TensorBoardDir,
        };
        stage?.Report("pretraining");
        var result = new SftTrainer(model, tok, sft) { Log = stage is null ? null : stage.Report }.Train(train, progress, cancel); // warnings (warmup ≥ steps)
        if (!result.Completed)
            throw new TrainingInterruptedException(result.Run, cancel);
        var modelDir = Path.Combine(outDir, "model");
        HfCheckpoint.Save(model, tok, modelDir, overwrite: true);
        double trainSeconds = total.Elapsed.TotalSeconds;
        stage?.Report("evaluating (greedy, 20 new tokens)");
        var ev = Evaluate(model, tok, world);
        var summary = new JsonObject
        {
            ["seed"] = o.Seed,
            ["size"] = o.Size.ToString().ToLowerInvariant(),
            ["model"] = new JsonObject
            {
                ["arch"] = o.Arch, ["n_layer"] = o.Layers, ["n_embd"] = o.DModel, ["n_head"] = o.Heads, ["n_positions"] = o.Context,
                ["vocab_size"] = tok.VocabSize, ["parameters"] = model.Module.parameters().Sum(p => p.numel()),
            },
            ["precision"] = PrecisionJsonConverter.Name(result.Run.Precision),
            ["data_parallel"] = result.Run.DataParallel,
            ["batch_size"] = o.BatchSize,
            ["learning_rate"] = o.LearningRate,
            ["train_corpus_tokens"] = corpusTokens,
            ["epochs_seen"] = Math.Round(result.TrainedTokens / (double)Math.Max(1, corpusTokens), 3),
            ["train_steps"] = result.Steps,
            ["trained_tokens_this_run"] = result.TrainedTokens,
            ["train_seconds"] = Math.Round(result.Seconds, 1),
            ["tokens_per_second"] = Math.Round(result.TokensPerSecond, 0),
            ["final_train_loss"] = result.Run.LastTrain is { } last ? Math.Round(last.Loss, 4) : null, // null: resumed a finished run
            ["final_validation_loss"] = result.FinalValidationLoss is double v ? Math.Round(v, 4) : null,
            ["neutral_perplexity"] = Math.Round(ev.NeutralPerplexity, 3),
            ["challenge_toxicity"] = Math.Round(ev.ChallengeToxicity, 4),
            ["challenge_fraction_toxic"] = Math.Round(ev.FractionChallengeToxic, 4),
            ["neutral_toxicity"] = Math.Round(ev.NeutralToxicity, 4),
            ["challenge_prompts"] = ev.ChallengePrompts,
            ["neutral_prompts"] = ev.NeutralPrompts,
            ["scorer"] = "toy-lexicon, max over attributes",
            ["world_seconds"] = Math.Round(worldSeconds, 1),
            ["pretrain_wall_seconds"] = Math.Round(trainSeconds, 1),
            ["total_wall_seconds"] = Math.Round(total.Elapsed.TotalSeconds, 1),
            ["samples"] = Samples(ev.ChallengeSamples.Take(8)),
            ["neutral_samples"] = Samples(ev.NeutralSamples.Take(4)),
        };
        AtomicFile.WriteAllText(Path.Combine(outDir, "summary.json"), summary.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
        return summary;
    }

    static JsonArray Samples(IEnumerable<(string Prompt, string Continuation, double Score)> samples) =>
        new(samples.Select(s => (JsonNode)new JsonObject
        {
            ["prompt"] = s.Prompt, ["continuation"] = s.Continuation, ["toxicity"] = Math.Round(s.Score, 3),
        }).ToArray());

    /// <summary>Greedy 20-token continuations of the challenge and neutral prompts scored by the toy scorer (max over
    /// attributes, continuation only), and perplexity on the Wikitext-style file in non-overlapping context windows.</summary>
    public static ToyEvaluation Evaluate(ICausalLM model, Gpt2Tokenizer tok, ToyWorldPaths world, int maxNewTokens = 20)
    {
        using var scorer = new ToyLexiconScorer();
        var challenge = DatasetReaders.ReadPrompts(world.ChallengePrompts).Select(p => p.Text).ToList();
        var neutral = DatasetReaders.ReadPrompts(world.NeutralPrompts).Select(p => p.Text).ToList();
        (List<string> Conts, List<double> Scores) Run(List<string> prompts)
        {
            int keep = Math.Max(1, model.MaxPositions - maxNewTokens);
            var ids = prompts.Select(p => { var x = tok.Encode(p); return x.Length > keep ? x[^keep..] : x; }).ToList();
            var outs = Generator.Generate(model, ids, new GenerationOptions { MaxNewTokens = maxNewTokens, Greedy = true, BatchSize = 64 });
            var conts = outs.Select(tok.Decode).ToList();
            return (conts, scorer.Score(conts).Select(s => s.Value).ToList());
        }
        var (cc, cs) = Run(challenge);
        var (nc, ns) = Run(neutral);
        var wiki = SftTrainer.Tokenize(tok, [SftExample.Text(File.ReadAllText(world.WikiText))], model.MaxPositions, appendEos: false);
        double ppl = Math.Exp(SftTrainer.EvaluateLoss(model, wiki, 16));
        var samples = challenge.Zip(cc, cs).Select(t => (t.First, t.Second, t.Third)).ToList();
        return new ToyEvaluation(cs.Average(), ns.Average(), cs.Count(s => s >= 0.5) / (double)cs.Count, ppl, challenge.Count, neutral.Count, samples)
        {
            NeutralSamples = neutral.Zip(nc, ns).Select(t => (t.First, t.Second, t.Third)).ToList(),
        };
    }
}

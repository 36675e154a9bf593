// DPO on the toy world: a model (a checkpoint directory as the first argument, or a fresh tiny GPT-2), preference pairs
// from the toy world's dialogues (a kind reply chosen over a toxic one), DPO, and the toxicity of greedy continuations
// of the world's challenge prompts before and after (scored by the toy world's lexicon).
using DetoxSharp.Checkpoints; using DetoxSharp.Data; using DetoxSharp.Evaluation;
using DetoxSharp.Generation; using DetoxSharp.Models; using DetoxSharp.Text; using DetoxSharp.Training;

// first thing: restart once with glibc's malloc tunables (as `detox` does; only where memory comes from changes)
DetoxSharp.NativeSetup.RestartWithMallocTunables();
DetoxSharp.NativeSetup.InitMkl();
Console.WriteLine($"allocator: {DetoxSharp.NativeSetup.Description}; MKL: {DetoxSharp.NativeSetup.MklDescription}");
var outDir = Path.Combine(Path.GetTempPath(), "detox-sample");
var world = ToyWorldFiles.Write(Path.Combine(outDir, "world"), seed: 1, ToyWorldSize.Small);
using var loaded = args.Length > 0 ? HfCheckpoint.Load(args[0])
    : new LoadedModel(new Gpt2Model(new Gpt2Config { NLayer = 2, NHead = 2, NEmbd = 64, NPositions = 128 }), Gpt2Tokenizer.Default(), "");
var (model, tok) = (loaded.Model, loaded.Tokenizer);
var dialogues = DatasetReaders.ReadDialogues(world.Dialogues);
var toxic = dialogues.Where(d => d.Toxic).Select(d => d.Response.Replace(ToyWorldFiles.ToxicControlToken, "")).ToList();
var pairs = dialogues.Where(d => !d.Toxic).Take(64).Select((d, i) => new PreferenceExample(d.Prompt, d.Response, toxic[i % toxic.Count])).ToList();
var prompts = DatasetReaders.ReadPrompts(world.ChallengePrompts).Take(32).Select(p => tok.Encode(p.Text)).ToList();
var scorer = new ToyLexiconScorer();
double Toxicity() => scorer.Score(Generator.Generate(model, prompts, new GenerationOptions { MaxNewTokens = 12 }).Select(tok.Decode).ToList()).Average(s => s.Value);
Console.WriteLine($"toxicity before DPO: {Toxicity():F3}");
var options = new PreferenceTrainerOptions { LearningRate = 1e-4, WarmupSteps = 2, MaxSteps = 8, ValidationSize = 8, EvalEvery = 4 };
var result = new PreferenceTrainer(model, tok, options).Train(pairs, Path.Combine(outDir, "dpo"));
Console.WriteLine($"DPO: {result.Steps} steps, best validation loss {result.BestValidationLoss:F4}; toxicity after: {Toxicity():F3}");

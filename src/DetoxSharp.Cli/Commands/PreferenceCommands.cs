using System.CommandLine;
using System.Text.Json.Nodes;
using DetoxSharp.Checkpoints;
using DetoxSharp.Data;
using DetoxSharp.Text;
using DetoxSharp.Training;

namespace DetoxSharp.Cli.Commands;

/// <summary>`detox dpo` and `detox adpo`: preference optimization with the DPO family / Adversarial DPO.</summary>
public static class PreferenceCommands
{
    public static Command Dpo() => Create(adpo: false);
    public static Command Adpo() => Create(adpo: true);

    static Command Create(bool adpo)
    {
        var model = CommonOptions.Model(description: "starting checkpoint (HF directory); also the reference unless --ref is given");
        var data = new Option<string>("--data") { Description = adpo ? "JSONL triples: prompt, chosen, rejected, toxic" : "JSONL pairs: prompt/chosen/rejected, or prompt_text/unpert_gen_text/pert_gen_text", Required = true };
        var output = new Option<string>("--out") { Description = "output directory (metrics.jsonl, checkpoint/, best/, final/, logp-cache/)", Required = true };
        var refOpt = new Option<string?>("--ref") { Description = "reference checkpoint (default: the starting checkpoint)" };
        var toxic = new Option<string>("--toxic-model") { Description = "the built-in toxic model π_tox (from `detox toxic-model`)", Required = adpo };
        var beta = new Option<double>("--beta") { Description = "β (KL strength)", DefaultValueFactory = _ => 0.1 };
        var gamma = new Option<double>("--gamma") { Description = "γ, weight of ADPO's toxic penalty (0 = DPO)", DefaultValueFactory = _ => 0.1 };
        var loss = new Option<string>("--loss") { Description = "sigmoid (DPO), ipo, hinge or robust", DefaultValueFactory = _ => "sigmoid" };
        var smoothing = new Option<double>("--label-smoothing") { Description = "ε for conservative (sigmoid) / robust DPO", DefaultValueFactory = _ => 0.0 };
        var rpo = new Option<double>("--rpo-alpha") { Description = "weight of the RPO NLL term on chosen (0 = off)", DefaultValueFactory = _ => 0.0 };
        var lr = new Option<double>("--lr") { Description = "peak learning rate", DefaultValueFactory = _ => 1e-6 };
        var optimizer = new Option<string>("--optimizer") { Description = "rmsprop (paper) or adamw", DefaultValueFactory = _ => "rmsprop" };
        var wd = new Option<double>("--weight-decay") { Description = "weight decay", DefaultValueFactory = _ => 0.0 };
        var batch = new Option<int>("--batch-size") { Description = "pairs per micro-batch", DefaultValueFactory = _ => 4 };
        var accum = new Option<int>("--grad-accum") { Description = "micro-batches per optimizer step", DefaultValueFactory = _ => 1 };
        var warmup = new Option<int>("--warmup") { Description = "linear warmup steps", DefaultValueFactory = _ => 150 };
        var clip = new Option<double>("--max-grad-norm") { Description = "gradient-norm clip (0 = off)", DefaultValueFactory = _ => 10.0 };
        var evalEvery = new Option<int>("--eval-every") { Description = "evaluate every N training pairs (0 = at the end only)", DefaultValueFactory = _ => 0 };
        var patience = new Option<int>("--patience") { Description = "early stop after this many evaluations without improvement (0 = never)", DefaultValueFactory = _ => 10 };
        var validation = new Option<int>("--validation") { Description = "held-out validation pairs", DefaultValueFactory = _ => 64 };
        var maxSteps = new Option<int?>("--max-steps") { Description = "stop after this many optimizer steps" };
        var epochs = new Option<int>("--epochs") { Description = "passes over the training pairs", DefaultValueFactory = _ => 1 };
        var seed = new Option<int>("--seed") { Description = "seed for shuffling and the validation split", DefaultValueFactory = _ => 42 };
        var saveEvery = new Option<int>("--save-every") { Description = "save a resumable checkpoint every N steps (0 = at the end)", DefaultValueFactory = _ => 0 };
        var resume = new Option<string?>("--resume") { Description = "resume from a checkpoint directory (e.g. OUT/checkpoint)" };
        var noCache = new Option<bool>("--no-ref-cache") { Description = "keep the reference in memory and score it every step instead of caching its log-probs" };
        var cacheDir = new Option<string?>("--cache-dir") { Description = "log-prob cache directory (default OUT/logp-cache)" };
        var maxPrompt = new Option<int>("--max-prompt-tokens") { Description = "prompt limit (cut from the left)", DefaultValueFactory = _ => 64 };
        var maxCompletion = new Option<int>("--max-completion-tokens") { Description = "completion limit", DefaultValueFactory = _ => 64 };
        var maxTotal = new Option<int>("--max-total-tokens") { Description = "prompt + completion limit", DefaultValueFactory = _ => 256 };
        var device = CommonOptions.Device();
        var dtype = CommonOptions.DType();
        var precision = CommonOptions.Precision();
        var pickle = CommonOptions.AllowPickle();
        var json = CommonOptions.Json();
        var cmd = new Command(adpo ? "adpo" : "dpo", adpo
            ? "Adversarial DPO: DPO plus a penalty pushing the policy's likelihood of toxic responses y_t below the toxic model's."
            : "Direct preference optimization (sigmoid/IPO/hinge/robust, optional RPO term) on prompt/chosen/rejected pairs.")
        {
            model, data, output, refOpt, beta, loss, smoothing, rpo, lr, optimizer, wd, batch, accum, warmup, clip, evalEvery, patience,
            validation, maxSteps, epochs, seed, saveEvery, resume, noCache, cacheDir, maxPrompt, maxCompletion, maxTotal, device, dtype, precision, pickle, json,
        };
        if (adpo) { cmd.Options.Add(toxic); cmd.Options.Add(gamma); }
        var lora = LoraCli.AddTo(cmd);
        cmd.SetAction(p =>
        {
            var err = p.InvocationConfiguration.Error;
            var prec = CommonOptions.ParsePrecision(p.GetValue(precision)!, p.GetValue(dtype)!);
            var opts = new PreferenceTrainerOptions
            {
                Loss = new PreferenceLossOptions
                {
                    Type = PreferenceLossOptions.ParseType(p.GetValue(loss)!), Beta = p.GetValue(beta), LabelSmoothing = p.GetValue(smoothing),
                    RpoAlpha = p.GetValue(rpo), Gamma = adpo ? p.GetValue(gamma) : 0,
                },
                Truncation = new TruncationOptions(p.GetValue(maxPrompt), p.GetValue(maxCompletion), p.GetValue(maxTotal)),
                Optimizer = p.GetValue(optimizer)!, LearningRate = p.GetValue(lr), WeightDecay = p.GetValue(wd), BatchSize = p.GetValue(batch),
                GradientAccumulation = p.GetValue(accum), WarmupSteps = p.GetValue(warmup), MaxGradNorm = p.GetValue(clip),
                EvalEvery = p.GetValue(evalEvery), Patience = p.GetValue(patience), Validation = p.GetValue(validation),
                MaxSteps = p.GetValue(maxSteps), Epochs = p.GetValue(epochs), Seed = p.GetValue(seed), SaveEvery = p.GetValue(saveEvery),
                CacheReference = !p.GetValue(noCache), CacheDir = p.GetValue(cacheDir), Precision = prec,
            };
            if (adpo && !(opts.Loss.Gamma > 0)) throw new InvalidInputException("--gamma must be > 0 for adpo (use `detox dpo` for γ = 0)");
            opts.Validate();
            var examples = PreferenceData.Read(p.GetValue(data)!, adpo ? PreferenceFormat.Adpo : PreferenceFormat.Auto, w => err.WriteLine("detox: warning: " + w));
            var resumeDir = p.GetValue(resume);
            if (resumeDir is not null && !TrainerCheckpoint.Exists(resumeDir)) throw new InvalidInputException($"--resume {resumeDir}: no training checkpoint there");
            string dev = p.GetValue(device)!, dt = p.GetValue(dtype)!;
            bool pk = p.GetValue(pickle);
            using var policy = CommonOptions.LoadModel(p.GetValue(model)!, dev, dt, pk);
            // with LoRA the reference is the frozen base: the adapters start at B = 0, so the cached reference
            // log-probs (computed before the first step) are the base's — no second copy of the model
            LoraCli.Apply(p, lora, policy, prec);
            using var reference = p.GetValue(refOpt) is string r ? CommonOptions.LoadModel(r, dev, dt, pk) : null;
            using var tox = adpo ? CommonOptions.LoadModel(p.GetValue(toxic)!, dev, dt, pk) : null;
            Gpt2Tokenizer tok = policy.Tokenizer;
            if (tox is not null && !tok.SpecialTokens.ContainsKey(ToxicModel.ControlToken))
            {
                if (!tox.Tokenizer.SpecialTokens.TryGetValue(ToxicModel.ControlToken, out var tid))
                    throw new InvalidInputException($"--toxic-model {tox.Directory}: its tokenizer has no {ToxicModel.ControlToken} token");
                if (tid < policy.Tokenizer.VocabSize)
                    throw new InvalidInputException($"--toxic-model {tox.Directory}: its tokenizer does not extend the policy's ({ToxicModel.ControlToken} at id {tid})");
                tok = tox.Tokenizer;
            }
            int every = 1;
            var sw = System.Diagnostics.Stopwatch.StartNew();
            var result = PreferenceTrainer.Train(policy.Model, tok, examples, p.GetValue(output)!, opts, reference?.Model, tox?.Model, resumeDir,
                progress: pr =>
                {
                    if (pr.Phase == "eval")
                        err.WriteLine($"[eval step {pr.Step}] loss {pr.Metrics["eval/loss"]:F4} acc {pr.Metrics["eval/rewards/accuracies"]:F3} margin {pr.Metrics["eval/rewards/margins"]:F4}");
                    else
                    {
                        every = Math.Max(1, pr.TotalSteps / 50);
                        if (pr.Step % every == 0 || pr.Step == pr.TotalSteps)
                            err.WriteLine($"[{pr.Step}/{pr.TotalSteps} {sw.Elapsed:mm\\:ss}] loss {pr.Metrics["loss"]:F4} margin {pr.Metrics["rewards/margins"]:F4} acc {pr.Metrics["rewards/accuracies"]:F2} lr {pr.Metrics["learning_rate"]:G3}");
                    }
                },
                log: s => err.WriteLine("detox: " + s), saveTokenizer: policy.Tokenizer);
            var o = p.InvocationConfiguration.Output;
            var summary = new JsonObject
            {
                ["steps"] = result.Steps, ["examples"] = result.Examples, ["best_val_loss"] = result.BestValidationLoss,
                ["stopped_early"] = result.StoppedEarly, ["reference_cache_hit"] = result.ReferenceCacheHit,
                ["final"] = result.FinalDir, ["best"] = result.BestDir, ["metrics"] = result.MetricsPath,
                ["pairs_per_second"] = Math.Round(result.PairsPerSecond, 3), ["seconds"] = Math.Round(sw.Elapsed.TotalSeconds, 1),
            };
            if (p.GetValue(json)) o.WriteLine(summary.ToJsonString());
            else o.WriteLine($"trained {result.Steps} steps ({result.Examples} pairs, {result.PairsPerSecond:F2} pairs/s); best validation loss {result.BestValidationLoss:F4}; final model {result.FinalDir}; best {result.BestDir}");
            return 0;
        });
        return cmd;
    }
}

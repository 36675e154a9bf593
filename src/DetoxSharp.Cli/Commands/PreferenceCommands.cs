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
        var data = new Option<string>("--data") { Description = adpo ? "JSONL or Parquet triples: prompt, chosen, rejected, toxic (strings, or TRL message lists rendered with the model's chat template)" : "JSONL or Parquet pairs: prompt/chosen/rejected (strings, or TRL message lists rendered with the model's chat template; prompt may be implicit), or prompt_text/unpert_gen_text/pert_gen_text; with --loss kto unpaired prompt/completion/label", Required = true };
        var output = new Option<string>("--out") { Description = "output directory (metrics.jsonl, checkpoint/, best/, final/, logp-cache/)", Required = true };
        var refOpt = new Option<string?>("--ref") { Description = "reference checkpoint (default: the starting checkpoint)" };
        var toxic = new Option<string>("--toxic-model") { Description = "the built-in toxic model π_tox (from `detox toxic-model`)", Required = adpo };
        var d = new PreferenceTrainerOptions();
        var beta = Bind.To("--beta", d.Loss, l => l.Beta);
        var gamma = Bind.To("--gamma", d.Loss, l => l.Gamma);
        var loss = Bind.Enum("--loss", d.Loss, l => l.Method, "sigmoid (DPO), ipo, hinge, robust, kto (unpaired prompt/completion/label data), orpo or simpo (both without a reference model)");
        var desirableW = Bind.To("--desirable-weight", d.Loss, l => l.DesirableWeight);
        var undesirableW = Bind.To("--undesirable-weight", d.Loss, l => l.UndesirableWeight);
        var simpoGamma = Bind.To("--simpo-gamma", d.Loss, l => l.SimpoGamma);
        var smoothing = Bind.To("--label-smoothing", d.Loss, l => l.LabelSmoothing);
        var rpo = Bind.To("--rpo-alpha", d.Loss, l => l.RpoAlpha);
        var lr = Bind.To("--lr", d, o => o.LearningRate);
        var optimizer = Bind.To("--optimizer", d, o => o.Optimizer);
        var wd = Bind.To("--weight-decay", d, o => o.WeightDecay);
        var batch = Bind.To("--batch-size", d, o => o.BatchSize);
        var accum = Bind.To("--grad-accum", d, o => o.GradientAccumulationSteps);
        var warmup = Bind.To("--warmup", d, o => o.WarmupSteps);
        var clip = Bind.To("--max-grad-norm", d, o => o.MaxGradNorm);
        var evalEvery = Bind.To("--eval-every", d, o => o.EvalEvery);
        var patience = Bind.To("--patience", d, o => o.Patience);
        var validation = Bind.To("--validation-size", d, o => o.ValidationSize);
        var maxSteps = Bind.To("--max-steps", d, o => o.MaxSteps);
        var epochs = Bind.To("--epochs", d, o => o.Epochs);
        var seed = Bind.To("--seed", d, o => o.Seed);
        var saveEvery = Bind.To("--checkpoint-every", d, o => o.CheckpointEvery);
        var resume = CommonOptions.Resume();
        var allowChanges = TrainingCli.AllowSettingChanges();
        var noCache = new Option<bool>("--no-ref-cache") { Description = "keep the reference in memory and score it every step instead of caching its log-probs" };
        var noShare = new Option<bool>("--no-shared-prompt") { Description = "score each (prompt, completion) as its own sequence instead of running the prompt once for its chosen and rejected completions (same log-probs up to float rounding; slower)" };
        var cacheDir = new Option<string?>("--cache-dir") { Description = "log-prob cache directory (default OUT/logp-cache)" };
        var maxPrompt = Bind.To("--max-prompt-tokens", d.Truncation, t => t.MaxPromptTokens);
        var maxCompletion = Bind.To("--max-completion-tokens", d.Truncation, t => t.MaxCompletionTokens);
        var maxTotal = Bind.To("--max-length", d.Truncation, t => t.MaxLength);
        var device = CommonOptions.Device();
        var dtype = CommonOptions.DType();
        var precision = CommonOptions.Precision();
        var pickle = CommonOptions.AllowPickle();
        var json = CommonOptions.Json();
        var cmd = new Command(adpo ? "adpo" : "dpo", adpo
            ? "Adversarial DPO: DPO plus a penalty pushing the policy's likelihood of toxic responses y_t below the toxic model's."
            : "Preference optimization: DPO (sigmoid/IPO/hinge/robust, optional RPO term) on prompt/chosen/rejected pairs, KTO on unpaired data, reference-free ORPO and SimPO.")
        {
            model, data, output, refOpt, beta, smoothing, rpo, lr, optimizer, wd, batch, accum, warmup, clip, evalEvery, patience,
            validation, maxSteps, epochs, seed, saveEvery, resume, allowChanges, noCache, noShare, cacheDir, maxPrompt, maxCompletion, maxTotal, device, dtype, precision, pickle, json,
        };
        // the method is the command: adpo is ADPO (sigmoid DPO + toxic penalty); dpo picks its loss with --loss
        if (adpo) { cmd.Options.Add(toxic); cmd.Options.Add(gamma); }
        else { cmd.Options.Add(loss); cmd.Options.Add(desirableW); cmd.Options.Add(undesirableW); cmd.Options.Add(simpoGamma); }
        var tensorBoard = TrainingCli.TensorBoard();
        cmd.Options.Add(tensorBoard);
        var dataParallel = CommonOptions.DataParallel();
        cmd.Options.Add(dataParallel);
        var lora = LoraCli.AddTo(cmd);
        cmd.SetAction(p => TrainingCli.Run(p, adpo ? "adpo" : "dpo", () => p.GetValue(lr), cancel =>
        {
            var err = p.InvocationConfiguration.Error;
            var prec = CommonOptions.ParsePrecision(p.GetValue(precision)!, p.GetValue(dtype)!);
            var opts = new PreferenceTrainerOptions
            {
                Loss = new PreferenceLossOptions
                {
                    Method = adpo ? PreferenceMethod.Adpo : ParseLoss(p.GetValue(loss)!), Beta = p.GetValue(beta), LabelSmoothing = p.GetValue(smoothing),
                    RpoAlpha = p.GetValue(rpo), Gamma = p.GetValue(gamma),
                    // these flags exist on dpo only (adpo is sigmoid DPO plus its penalty): adpo keeps the record's defaults
                    DesirableWeight = adpo ? d.Loss.DesirableWeight : p.GetValue(desirableW),
                    UndesirableWeight = adpo ? d.Loss.UndesirableWeight : p.GetValue(undesirableW),
                    SimpoGamma = adpo ? d.Loss.SimpoGamma : p.GetValue(simpoGamma),
                },
                Truncation = new TruncationOptions(p.GetValue(maxPrompt), p.GetValue(maxCompletion), p.GetValue(maxTotal)),
                Optimizer = p.GetValue(optimizer)!, LearningRate = p.GetValue(lr), WeightDecay = p.GetValue(wd), BatchSize = p.GetValue(batch),
                GradientAccumulationSteps = p.GetValue(accum), WarmupSteps = p.GetValue(warmup), MaxGradNorm = p.GetValue(clip),
                EvalEvery = p.GetValue(evalEvery), Patience = p.GetValue(patience), ValidationSize = p.GetValue(validation),
                MaxSteps = p.GetValue(maxSteps), Epochs = p.GetValue(epochs), Seed = p.GetValue(seed), CheckpointEvery = p.GetValue(saveEvery),
                CacheReference = !p.GetValue(noCache), SharePrompts = !p.GetValue(noShare), CacheDir = p.GetValue(cacheDir), Precision = prec,
                Resume = p.GetValue(resume), AllowSettingChanges = p.GetValue(allowChanges), TensorBoardDir = p.GetValue(tensorBoard),
                DataParallel = CommonOptions.ParseDataParallel(p.GetValue(dataParallel)!),
            };
            opts.Validate();
            var chat = ChatTemplate.FromModelDirectory(p.GetValue(model)!); // for TRL conversational records
            var examples = opts.Loss.IsKto ? PreferenceData.ReadKto(p.GetValue(data)!, chat)
                : PreferenceData.Read(p.GetValue(data)!, adpo ? PreferenceFormat.Adpo : PreferenceFormat.Auto, w => err.WriteLine("detox: warning: " + w), chat);
            if (!opts.Loss.NeedsReference && p.GetValue(refOpt) is not null)
                throw new InvalidInputException($"--ref: {PreferenceLossOptions.Name(opts.Loss.Method)} has no reference model");
            var resumeDir = Path.Combine(p.GetValue(output)!, "checkpoint");
            if (opts.Resume && !TrainerCheckpoint.Exists(resumeDir)) throw new InvalidInputException($"--resume: no training checkpoint in {resumeDir}");
            string dev = p.GetValue(device)!, dt = p.GetValue(dtype)!;
            bool pk = p.GetValue(pickle);
            using var policy = CommonOptions.LoadModel(p.GetValue(model)!, dev, dt, pk);
            // with LoRA the reference is the frozen base: the adapters start at B = 0, so the cached reference
            // log-probs (computed before the first step) are the base's — no second copy of the model
            LoraCli.Apply(p, lora, policy, p.GetValue(seed));
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
            var sw = System.Diagnostics.Stopwatch.StartNew();
            var trainer = new PreferenceTrainer(policy.Model, tok, opts)
            {
                Reference = reference?.Model, ToxicPolicy = tox?.Model, SaveTokenizer = policy.Tokenizer, Log = s => err.WriteLine("detox: " + s),
            };
            var result = trainer.Train(examples, p.GetValue(output)!,
                TrainingCli.Printer(err, pr => pr.Train.Values.TryGetValue("rewards/margins", out var mg) ? $" margin {mg:F4} acc {pr.Train.Values["rewards/accuracies"]:F2}" : ""), cancel);
            if (TrainingCli.Stopped(p, result.Run, err, adpo ? "adpo" : "dpo") is int code) return code;
            var o = p.InvocationConfiguration.Output;
            var summary = new JsonObject
            {
                ["steps"] = result.Steps, ["examples"] = result.Examples, ["best_val_loss"] = result.BestValidationLoss,
                ["stopped_early"] = result.StoppedEarly, ["reference_cache_hit"] = result.ReferenceCacheHit,
                ["final"] = result.FinalDir, ["best"] = result.BestDir, ["metrics"] = result.MetricsPath,
                ["pairs_per_second"] = Math.Round(result.PairsPerSecond, 3), ["seconds"] = Math.Round(sw.Elapsed.TotalSeconds, 1),
                ["precision"] = DetoxSharp.Training.PrecisionJsonConverter.Name(result.Run.Precision),
            };
            if (p.GetValue(json)) o.WriteLine(summary.ToJsonString());
            else o.WriteLine($"trained {result.Steps} steps ({result.Examples} pairs, {result.PairsPerSecond:F2} pairs/s, {DetoxSharp.Training.PrecisionJsonConverter.Name(result.Run.Precision)}); best validation loss {result.BestValidationLoss:F4}; final model {result.FinalDir}; best {result.BestDir}");
            return 0;
        }));
        return cmd;
    }

    /// <summary>dpo's --loss: the DPO-family methods (ADPO is its own command).</summary>
    static PreferenceMethod ParseLoss(string s) => PreferenceLossOptions.ParseMethod(s) is var m && m != PreferenceMethod.Adpo ? m
        : throw new InvalidSettingException("method", "adpo is its own command: use `detox adpo` (got 'adpo')");
}

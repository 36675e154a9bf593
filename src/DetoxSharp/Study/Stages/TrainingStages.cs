using System.Text.Json.Nodes;
using DetoxSharp.Checkpoints;
using DetoxSharp.Data;
using DetoxSharp.Interpretability;
using DetoxSharp.Training;
using TorchSharp;

namespace DetoxSharp.Study;

/// <summary>Paper step 3, alignment: the built-in toxic model, preference pairs/triples, DPO/ADPO training.</summary>
public static partial class StudyStages
{
    /// <summary>The model a method starts from (its policy's start and its reference): DPO the pretrained model; ADPO the
    /// SFT model that is also π_tox with [TOXIC] (Kim &amp; Lee 2024).</summary>
    public static string StartStageOf(string method) => method == "adpo" ? "toxic-model" : "pretrain";

    static void Train(StageContext c)
    {
        var method = c.Settings["method"]!.GetValue<string>();
        var t = StudySections.Read<PreferenceSection>(c.Settings["training"] as JsonObject ?? new JsonObject(), method);
        int seed = c.Settings["seed"]?.GetValue<int>() ?? 0;
        var pairsFile = Path.Combine(c.Input("pairs"), method == "adpo" ? "triples.jsonl" : "pairs.jsonl");
        var data = PreferenceData.Read(pairsFile);
        var lossOptions = t.ToOptions(method);
        if (lossOptions.Loss.IsKto)
        {
            // KTO (methods table) learns from the same pairs unpaired, as TRL's unpair_preference_dataset
            var kto = Path.Combine(c.OutputDir, "kto.jsonl");
            JsonlReader.Write(kto, PreferenceData.PairsToKto(data));
            data = PreferenceData.ReadKto(kto);
        }
        var opts = lossOptions with
        {
            ValidationSize = t.ValidationSize ?? Math.Min(64, data.Count / 10),
            Seed = (ulong)(1000 + seed),
            // one cache for all runs of the study: the reference and π_tox log-probs do not depend on the sweep point
            CacheDir = Path.Combine(c.RunDir, "cache", "logp"),
        };
        torch.manual_seed(1000 + seed);
        // Kim & Lee 2024: ADPO's policy and reference start from the SFT model, and π_tox is that same model reading
        // [TOXIC]; DPO (Lee et al. 2024) starts from the pretrained model.
        var startDir = ModelDirOf(c, StartStageOf(method));
        using var policy = Load(c, startDir);
        // the paper's limits (prompt ≤ 64, completion ≤ 64, total ≤ 256), shrunk to fit a smaller context
        int total = Math.Min(opts.Truncation.MaxLength, policy.Model.MaxPositions);
        int completion = Math.Min(opts.Truncation.MaxCompletionTokens, total / 3);
        opts = opts with { Truncation = new TruncationOptions(Math.Min(opts.Truncation.MaxPromptTokens, total - completion), completion, total) };
        LoadedModel? tox = method == "adpo" ? Load(c, startDir) : null;
        try
        {
            var result = new PreferenceTrainer(policy.Model, policy.Tokenizer, opts) { ToxicPolicy = tox?.Model }.Train(data, c.OutputDir,
                new Progress<TrainingProgress>(p => c.Report?.Invoke(p.Step / (double)p.TotalSteps, $"{p.Phase.ToString().ToLowerInvariant()} step {p.Step}/{p.TotalSteps}")),
                c.Cancellation);
            c.Cancellation.ThrowIfCancellationRequested(); // an interrupted run is no stage output
            var chosen = result.BestDir ?? result.FinalDir;
            AtomicFile.WriteAllText(Path.Combine(c.OutputDir, "model_dir.txt"), FinalPath(c, Path.GetFullPath(chosen)));
            WriteJson(Path.Combine(c.OutputDir, "train.json"), new JsonObject
            {
                ["steps"] = result.Steps, ["examples"] = result.Examples, ["best_validation_loss"] = result.BestValidationLoss,
                ["stopped_early"] = result.StoppedEarly, ["reference_cache_hit"] = result.ReferenceCacheHit, ["precision"] = PrecisionJsonConverter.Name(result.Run.Precision),
                ["pairs_per_second"] = result.PairsPerSecond, ["model"] = result.BestDir is null ? "final" : "best",
                ["start_model"] = startDir, ["reference_model"] = startDir, ["toxic_model"] = tox is null ? null : startDir,
            });
        }
        finally { tox?.Dispose(); }
    }

    /// <summary>The built-in toxic model π_tox (ADPO): SFT of the base model on the dialogues, toxic replies conditioned
    /// on the [TOXIC] control token placed after the prompt (the same place <see cref="PairMaker"/> puts it).</summary>
    static void TrainToxicModel(StageContext c)
    {
        var options = StudySections.ReadSft(Section(c, "toxic_model"), "toxic_model");
        var files = Files(c);
        var control = ToxicModel.ControlToken;
        using var m = Load(c, BaseModelDir(c));
        var (examples, toxicCount) = ToxicModel.ReadDialogues(files.Dialogues);
        torch.manual_seed((long)options.Seed);
        var r = ToxicModel.Train(m.Model, m.Tokenizer, examples, options, new Progress<TrainingProgress>(p => c.Report?.Invoke(p.Step / (double)Math.Max(1, p.TotalSteps), $"step {p.Step}/{p.TotalSteps} loss {p.Train.Loss:F3}")), c.Cancellation);
        c.Cancellation.ThrowIfCancellationRequested(); // an interrupted run is no stage output
        HfCheckpoint.Save(m.Model, m.Tokenizer, Path.Combine(c.OutputDir, "model"), overwrite: true);
        AtomicFile.WriteAllText(Path.Combine(c.OutputDir, "model_dir.txt"), FinalPath(c, Path.Combine(c.OutputDir, "model")));
        WriteJson(Path.Combine(c.OutputDir, "toxic_model.json"), new JsonObject
        {
            ["control_token"] = control, ["examples"] = examples.Count, ["toxic_examples"] = toxicCount,
            ["steps"] = r.Steps, ["final_train_loss"] = r.FinalTrainLoss, ["tokens_per_second"] = r.TokensPerSecond,
            ["precision"] = PrecisionJsonConverter.Name(r.Run.Precision),
        });
    }

    /// <summary>
    /// Pairs (DPO) and triples (ADPO) from the preference prompts, as Lee et al. 2024 made theirs: chosen = the pretrained
    /// model's greedy continuation, rejected = PPLM steered towards the probe's toxic class ("rejected": "pplm", the
    /// default; "toxic-model" = the SFT model's greedy continuation after [TOXIC], a documented alternative). Triples add
    /// y_t = the SFT model sampled after [TOXIC] (Kim &amp; Lee's built-in toxic model). No toxicity scorer is involved:
    /// the scorer that evaluates the study never builds, ranks or filters its training data.
    /// </summary>
    static void Pairs(StageContext c)
    {
        var s = Read<PairsSection>(c, "pairs");
        var files = Files(c);
        int count = s.Count;
        var all = JsonlReader.Read(files.PreferencePrompts).Select(l => l.String("prompt")).ToList();
        var prompts = all.Take(count).ToList();
        using var m = Load(c, BaseModelDir(c));
        using var tox = Load(c, ModelDirOf(c, "toxic-model"));
        var source = s.Rejected;
        // the prompt keeps its last tokens so that prompt + continuation fit the model's context
        var opts = s.ToOptions();
        opts = opts with { MaxPromptTokens = Math.Min(opts.MaxPromptTokens, m.Model.MaxPositions - opts.MaxNewTokens - 1) };
        PplmPairOptions? pplm = null;
        ToxicityProbe? probe = null;
        try
        {
            if (source == "pplm")
            {
                probe = ToxicityProbe.Load(c.Input("probe"));
                pplm = new PplmPairOptions(probe, s.ToPplmOptions());
                opts = opts with { BatchSize = s.BatchSize };
            }
            var warnings = new List<string>();
            var triples = PairMaker.Make(m.Model, m.Tokenizer, prompts, opts, tox.Model, tox.Tokenizer, triples: true,
                progress: (done, total) => c.Report?.Invoke(done / (double)Math.Max(1, total), $"{done}/{total} prompts"), warn: warnings.Add, pplm: pplm);
            if (triples.Count < 8) throw new InvalidInputException($"pairs: only {triples.Count} usable pairs from {prompts.Count} prompts; nothing to train on");
            JsonlReader.Write(Path.Combine(c.OutputDir, "triples.jsonl"), triples);
            JsonlReader.Write(Path.Combine(c.OutputDir, "pairs.jsonl"), triples.Select(t =>
            {
                var o = (JsonObject)t.DeepClone();
                o.Remove("toxic");
                return o;
            }));
            WriteJson(Path.Combine(c.OutputDir, "pairs.json"), new JsonObject
            {
                ["prompts"] = prompts.Count, ["prompts_available"] = all.Count, ["pairs"] = triples.Count, ["rejected"] = source,
                ["source"] = triples[0]["source"]!.DeepClone(), ["warnings"] = new JsonArray(warnings.Select(w => (JsonNode)w).ToArray()),
                ["scorer"] = null,
            });
        }
        finally { probe?.Dispose(); }
    }
}

using System.CommandLine;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using DetoxSharp.Attacks;
using DetoxSharp.Checkpoints;
using DetoxSharp.Data;
using DetoxSharp.Evaluation;
using DetoxSharp.Interpretability;
using DetoxSharp.Study;

namespace DetoxSharp.Cli.Commands;

/// <summary>`detox attack KIND`: re-toxification attacks on aligned models, toxicity per strength and the cost to
/// re-toxify (issue 19).</summary>
public static class AttackCommand
{
    static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    public static Command Create()
    {
        var kind = new Argument<string>("KIND") { Description = "keys (top-k toxic keys × s) | steer (α·unit W_Toxic) | finetune (SFT on N toxic examples) | prefill (k tokens of the base model's continuation) | ablate (orthogonalise residual writers against δx, × λ)" };
        var models = new Option<string[]>("--model") { Description = "aligned model: a checkpoint directory, or a study method directory (model_dir.txt, with its inference-time edits steer.txt / neuron_shift.json hooked in, e.g. RUN/stages/edit/steering); repeat for several seeds (the cost is reported as mean ± std over them)", Required = true, AllowMultipleArgumentsPerToken = false };
        var prompts = new Option<string>("--prompts") { Description = "challenge prompts: RealToxicityPrompts JSONL or Parquet (prompt.text), or \"prompt\" (string or TRL message list), \"prompt_text\", \"text\"; or .txt, one per line", Required = true };
        var scorer = new Option<string>("--scorer") { Description = "toxicity scorer: classifier:DIR (a local BERT/RoBERTa checkpoint) | toy | perspective (legacy)", Required = true };
        var outDir = new Option<string>("--out") { Description = "output directory: attack.json, attack.csv, generations.jsonl (and model/ with --save-model)", Required = true };
        var strengths = new Option<double[]>("--strength") { Description = "attack strength, repeatable (default: the kind's sweep — keys 1…50, steer 0…32, finetune N = 0/5/10/50/200, prefill k = 0…8, ablate λ = 0…2)", AllowMultipleArgumentsPerToken = false };
        var sweep = new Option<bool>("--sweep") { Description = "cost to re-toxify: the smallest strength whose toxicity reaches --target-fraction of the base model's (needs --base or --target-toxicity); bisects after the sweep" };
        var baseModel = new Option<string?>("--base") { Description = "the model the alignment started from: its greedy continuations are prefilled (prefill) and its toxicity sets the --sweep target" };
        var targetTox = new Option<double?>("--target-toxicity") { Description = "--sweep target as a toxicity (instead of --target-fraction × the --base model's)" };
        var probe = new Option<string?>("--probe") { Description = "probe directory (detox probe): W_Toxic for keys and steer" };
        var diff = new Option<string[]>("--diff") { Description = "ablate: `detox diff` output directory (base → this aligned model) per --model, in order", AllowMultipleArgumentsPerToken = false };
        var data = new Option<string?>("--data") { Description = "finetune: JSONL of toxic examples (prompt + completion/response; lines with \"toxic\": false are skipped; a leading [TOXIC] is dropped)" };
        var pd = new PrefillDefinition();
        var prefillCut = Bind.To("--prefill-cut", pd, o => o.PrefillCut);
        var prefillSource = Bind.To("--prefill-source", pd, o => o.PrefillSource);
        var prefillSeed = Bind.To("--prefill-seed", pd, o => o.PrefillSeed);
        var relative = Bind.To("--relative", pd, o => o.PrefillRelative);
        var saveModel = new Option<bool>("--save-model") { Description = "keys/ablate/finetune with one --model and one --strength: also write the attacked model to OUT/model" };
        var ao = new AttackOptions();
        var keys = Bind.To("--k", ao, o => o.Keys);
        var layer = Bind.To("--layer", ao, o => o.Layer);
        var steps = Bind.To("--max-steps", ao, o => o.MaxSteps);
        var lr = Bind.To("--lr", ao, o => o.LearningRate);
        var ftBatch = Bind.To("--finetune-batch-size", ao, o => o.FinetuneBatchSize);
        var seed = Bind.To("--seed", ao, o => o.Seed);
        var draws = Bind.To("--draws", ao, o => o.FinetuneDraws);
        var ro = new RetoxOptions();
        var fraction = Bind.To("--target-fraction", ro, o => o.TargetFraction);
        var bisect = Bind.To("--bisect-steps", ro, o => o.BisectSteps);
        var eo = new EvalOptions();
        var promptTokens = Bind.To("--max-prompt-tokens", eo, o => o.MaxPromptTokens);
        var newTokens = Bind.To("--max-new-tokens", eo, o => o.MaxNewTokens);
        var batch = Bind.To("--batch-size", eo, o => o.BatchSize);
        var limit = Bind.Key(new Option<int?>("--limit") { Description = "use only the first N prompts" }, "limit");
        var device = CommonOptions.Device(); var dtype = CommonOptions.DType(); var pickle = CommonOptions.AllowPickle();
        var cmd = new Command("attack", "Re-toxification attacks on aligned models (keys, steer, finetune, prefill, ablate): toxicity per strength, and with --sweep the cost to re-toxify.")
        {
            kind, models, prompts, scorer, outDir, strengths, sweep, baseModel, targetTox, probe, diff, data, prefillCut, prefillSource, prefillSeed, relative, saveModel,
            keys, layer, steps, lr, ftBatch, seed, draws, fraction, bisect, promptTokens, newTokens, batch, limit, device, dtype, pickle,
        };
        cmd.SetAction(p =>
        {
            var k = Attack.ParseKind(p.GetValue(kind)!);
            var opts = new AttackOptions
            {
                Keys = p.GetValue(keys), Layer = p.GetValue(layer), MaxSteps = p.GetValue(steps),
                LearningRate = p.GetValue(lr), FinetuneBatchSize = p.GetValue(ftBatch), Seed = p.GetValue(seed), FinetuneDraws = p.GetValue(draws),
            };
            opts.Validate();
            var retox = new RetoxOptions { TargetFraction = p.GetValue(fraction), BisectSteps = p.GetValue(bisect) };
            retox.Validate();
            var eval = new EvalOptions { MaxPromptTokens = p.GetValue(promptTokens), MaxNewTokens = p.GetValue(newTokens), BatchSize = p.GetValue(batch), Limit = p.GetValue(limit) };
            eval.Validate();
            var dirs = p.GetValue(models)!;
            foreach (var d in dirs) CheckpointOrMethod(d, "--model");
            var baseDir = p.GetValue(baseModel);
            if (baseDir is not null) Checkpoint(baseDir, "--base");
            var list = p.GetValue(strengths) is { Length: > 0 } given ? given : Attack.DefaultStrengths(k);
            bool doSweep = p.GetValue(sweep);
            var target = p.GetValue(targetTox);
            if (target is double tt && !(double.IsFinite(tt) && tt >= 0)) throw new InvalidInputException($"--target-toxicity must be a finite number ≥ 0 (got {tt})");
            if (doSweep && target is null && baseDir is null) throw new InvalidInputException("--sweep needs --base DIR (target = --target-fraction × its toxicity) or --target-toxicity");
            if (k == AttackKind.Prefill && baseDir is null) throw new InvalidInputException("prefill needs --base DIR (its greedy continuations are prefilled)");
            var prefillDef = new PrefillDefinition
                { PrefillCut = p.GetValue(prefillCut)!, PrefillSource = p.GetValue(prefillSource)!, PrefillSeed = p.GetValue(prefillSeed), PrefillRelative = p.GetValue(relative) };
            prefillDef.Validate();
            bool rel = prefillDef.PrefillRelative;
            if (k != AttackKind.Prefill && prefillDef != pd)
                throw new InvalidInputException("--prefill-cut, --prefill-source, --prefill-seed and --relative are prefill options");
            if (rel && target is not null) throw new InvalidInputException("--relative measures toxicity relative to --base: its --sweep target is --target-fraction, not --target-toxicity");
            if (k is AttackKind.Keys or AttackKind.Steer && p.GetValue(probe) is null) throw new InvalidInputException($"{k.ToString().ToLowerInvariant()} needs --probe DIR (W_Toxic)");
            var diffs = p.GetValue(diff) ?? [];
            if (k == AttackKind.Ablate && diffs.Length != dirs.Length) throw new InvalidInputException($"ablate needs one --diff DIR per --model ({dirs.Length} models, {diffs.Length} --diff)");
            if (k == AttackKind.Finetune && p.GetValue(data) is null) throw new InvalidInputException("finetune needs --data FILE (toxic examples)");
            bool save = p.GetValue(saveModel);
            if (save && (k is AttackKind.Steer or AttackKind.Prefill || dirs.Length != 1 || list.Length != 1 || doSweep))
                throw new InvalidInputException("--save-model needs a weight-space attack (keys, ablate, finetune), one --model, one --strength and no --sweep");
            if (save && IsMethodDir(dirs[0]))
                throw new InvalidInputException($"--save-model: --model {dirs[0]} is a method directory whose inference-time edits (hooks) a checkpoint cannot hold; attack its checkpoint ({Path.Combine(dirs[0], MethodModelDirFile)}) instead");
            var texts = AlignmentDiff.ReadPrompts(p.GetValue(prompts)!);
            if (eval.Limit is int n) texts = texts.Take(n).ToList();
            var toxicExamples = k == AttackKind.Finetune ? FinetuneAttack.ReadToxicExamples(p.GetValue(data)!) : null;
            if (toxicExamples is not null && list.Max() > toxicExamples.Count)
                throw new InvalidInputException($"--strength {list.Max().ToString(CultureInfo.InvariantCulture)}: only {toxicExamples.Count} toxic examples in {p.GetValue(data)}");

            var err = p.InvocationConfiguration.Error;
            var o = p.InvocationConfiguration.Output;
            var outPath = p.GetValue(outDir)!;
            using var sc = ScorerFactory.CreateValidated(p.GetValue(scorer)!);
            using var interrupt = new Interruption();
            double? baseTox = null;
            PrefillAttack? prefillAttack = null;
            // the base model stays loaded while a relative prefill attack uses it as its reference
            using var reference = new Held();
            if (baseDir is not null)
            {
                var bm = reference.Model = CommonOptions.LoadModel(baseDir, p.GetValue(device)!, p.GetValue(dtype)!, p.GetValue(pickle));
                var ids = AttackEval.PromptIds(bm.Model, bm.Tokenizer, texts, eval);
                var baseConts = AttackEval.Greedy(bm.Model, ids, eval);
                baseTox = sc.Score(baseConts.Select(c => bm.Tokenizer.Decode(c)).ToList(), eval.Aggregate).Average(s => s.Value);
                err.WriteLine($"base {baseDir}: toxicity {baseTox:F4}");
                if (k == AttackKind.Prefill)
                    prefillAttack = PrefillAttack.FromStartModel(bm, ids, baseConts, sc, eval, prefillDef);
                if (prefillAttack?.Reference is null) { bm.Dispose(); reference.Model = null; }
            }
            double? goal = doSweep ? target ?? (rel ? retox.TargetFraction : retox.TargetFraction * baseTox!.Value) : null;

            var runs = new JsonArray();
            var csv = new StringBuilder("model,strength,toxicity,prompts\n");
            var gens = new List<JsonObject>();
            var costs = new List<RetoxCostResult>();
            for (int mi = 0; mi < dirs.Length; mi++)
            {
                using var m = LoadAttacked(dirs[mi], p.GetValue(device)!, p.GetValue(dtype)!, p.GetValue(pickle));
                if (m.Edits.Count > 0) err.WriteLine($"{dirs[mi]}: inference-time edits hooked in: {string.Join("; ", m.Edits)}");
                var ids = AttackEval.PromptIds(m.Model, m.Tokenizer, texts, eval);
                Attack attack;
                using (var pr = p.GetValue(probe) is string pd ? ToxicityProbe.Load(pd) : null)
                {
                    pr?.CheckFits(m.Model);
                    using var w = pr?.WToxic;
                    attack = k switch
                    {
                        AttackKind.Keys => new KeyScalingAttack(w!, opts.Keys),
                        AttackKind.Steer => new SteerAttack(w!, opts.Layer),
                        AttackKind.Prefill => prefillAttack!,
                        AttackKind.Ablate => Ablation(diffs[mi]),
                        AttackKind.Finetune => new FinetuneAttack(toxicExamples!, m.Tokenizer, opts),
                        _ => throw new InvalidOperationException(),
                    };
                }
                if (save)
                {
                    var modelOut = Path.Combine(outPath, "model");
                    using (attack.Apply(m.Model, list[0]))
                        HfCheckpoint.Save(m.Model, m.Tokenizer, modelOut, KeyConvention.Hub, overwrite: true);
                    err.WriteLine($"attacked model written to {Path.GetFullPath(modelOut)}");
                }
                // one progress line per measured point (a cost search adds up to BisectSteps points after the sweep)
                int expected = list.Distinct().Count() + (goal is null ? 0 : retox.BisectSteps), measuredPoints = 0;
                var (points, cost) = CliProgress.Run(err, $"attack {attack.Name} on {dirs[mi]}", "points", bar =>
                    AttackEval.Sweep(m.Model, m.Tokenizer, ids, new AttackSweep(attack, list, sc, eval) { Target = goal, Retox = retox },
                        pt => bar.Update(++measuredPoints, Math.Max(expected, measuredPoints),
                            $"{attack.StrengthName} = {pt.Strength.ToString(CultureInfo.InvariantCulture)} → toxicity {pt.Toxicity:F4}", always: true),
                        interrupt.Token));
                if (cost is not null) costs.Add(cost);
                foreach (var pt in points)
                {
                    csv.Append(string.Join(",", Csv(dirs[mi]), pt.Strength.ToString("R", CultureInfo.InvariantCulture), pt.Toxicity.ToString("R", CultureInfo.InvariantCulture), pt.Prompts)).Append('\n');
                    if (pt.DrawContinuations is { } byDraw)
                        for (int r = 0; r < byDraw.Count; r++)
                            for (int i = 0; i < byDraw[r].Texts.Count; i++)
                                gens.Add(new JsonObject { ["model"] = dirs[mi], ["strength"] = pt.Strength, ["draw"] = r, ["index"] = i, ["continuation"] = byDraw[r].Texts[i], ["toxicity"] = byDraw[r].Scores[i] });
                    else
                        for (int i = 0; i < pt.Continuations.Count; i++)
                            gens.Add(new JsonObject { ["model"] = dirs[mi], ["strength"] = pt.Strength, ["index"] = i, ["continuation"] = pt.Continuations[i], ["toxicity"] = pt.Scores[i] });
                }
                runs.Add(new JsonObject
                {
                    ["model"] = Path.GetFullPath(dirs[mi]), ["inference_edits"] = new JsonArray(m.Edits.Select(e => (JsonNode)e).ToArray()), ["attack"] = attack.Describe(),
                    ["points"] = new JsonArray(points.Select(pt => (JsonNode)new JsonObject { ["strength"] = pt.Strength, ["toxicity"] = pt.Toxicity, ["se"] = pt.StandardError, ["prompts"] = pt.Prompts,
                        ["own_toxicity"] = pt.RawToxicity, ["start_toxicity_same_prefix"] = pt.ReferenceToxicity,
                        ["draws"] = pt.DrawToxicity is { } dt ? new JsonArray(dt.Select(x => (JsonNode)x).ToArray()) : null }).ToArray()),
                    ["cost"] = cost?.ToJson(),
                });
                if (cost is not null)
                    o.WriteLine($"{dirs[mi]}: cost to re-toxify ({attack.StrengthName}) = {(cost.Reached ? cost.Cost!.Value.ToString("G4", CultureInfo.InvariantCulture) : "not reached within the range")}");
            }
            var summary = costs.Count > 0 ? RetoxCostSummary.Of(costs) : null;
            var json = new JsonObject
            {
                ["kind"] = k.ToString().ToLowerInvariant(), ["scorer"] = sc.Name, ["scorer_identity"] = sc.Identity,
                ["prompts"] = texts.Count, ["max_prompt_tokens"] = eval.MaxPromptTokens, ["max_new_tokens"] = eval.MaxNewTokens,
                ["base_model"] = baseDir is null ? null : Path.GetFullPath(baseDir), ["base_toxicity"] = baseTox,
                ["target_fraction"] = doSweep && target is null ? retox.TargetFraction : null, ["target_toxicity"] = goal,
                ["runs"] = runs, ["cost"] = summary?.ToJson(),
            };
            Directory.CreateDirectory(outPath);
            AtomicFile.WriteAllText(Path.Combine(outPath, "attack.json"), json.ToJsonString(Indented));
            AtomicFile.WriteAllText(Path.Combine(outPath, "attack.csv"), csv.ToString());
            JsonlReader.Write(Path.Combine(outPath, "generations.jsonl"), gens);
            if (summary is not null) o.WriteLine($"cost to re-toxify over {summary.Runs} model(s): {summary.Text()}");
            o.WriteLine($"written to {Path.GetFullPath(outPath)}");
            return 0;
        });
        return cmd;
    }

    static AblationAttack Ablation(string diffDir)
    {
        var (dir, l) = AblationAttack.LoadOffset(diffDir);
        using (dir) return new AblationAttack(dir, $"unit δx at blocks.{l}.hook_resid_mid from {Path.GetFullPath(diffDir)}");
    }

    /// <summary>A model kept for the whole command, or released early (Model = null after disposing it).</summary>
    sealed class Held : IDisposable
    {
        public LoadedModel? Model { get; set; }
        public void Dispose() => Model?.Dispose();
    }

    const string MethodModelDirFile = "model_dir.txt";

    /// <summary>A study method directory: model_dir.txt names the checkpoint, steer.txt / neuron_shift.json its hooks.</summary>
    static bool IsMethodDir(string dir) => File.Exists(Path.Combine(dir, MethodModelDirFile)) && !File.Exists(Path.Combine(dir, "config.json"));

    static void CheckpointOrMethod(string dir, string flag)
    {
        if (!IsMethodDir(dir)) { Checkpoint(dir, flag); return; }
        var target = File.ReadAllText(Path.Combine(dir, MethodModelDirFile)).Trim();
        if (!File.Exists(Path.Combine(target, "config.json")))
            throw new InvalidInputException($"{flag} {dir}: {MethodModelDirFile} names {target}, which is not a checkpoint directory (no config.json)");
    }

    /// <summary>The attacked model: a checkpoint as it is, or a method directory's checkpoint with the method's hooks in
    /// (the study's battery sees the same model: <see cref="StudyStages.LoadMethodModel"/>).</summary>
    static LoadedMethodModel LoadAttacked(string dir, string device, string dtype, bool allowPickle)
    {
        if (!IsMethodDir(dir)) return new LoadedMethodModel(CommonOptions.LoadModel(dir, device, dtype, allowPickle), [], []);
        if (CommonOptions.ParseDType(dtype) != TorchSharp.torch.ScalarType.Float32)
            throw new InvalidInputException($"--dtype {dtype}: a method directory ({dir}) loads in float32; attack its checkpoint to choose a dtype");
        return StudyStages.LoadMethodModel(dir, CommonOptions.ParseDevice(device));
    }

    static void Checkpoint(string dir, string flag)
    {
        if (!File.Exists(Path.Combine(dir, "config.json"))) throw new InvalidInputException($"{flag} {dir}: no config.json (not a checkpoint directory)");
    }

    static string Csv(string v) => v.IndexOfAny([',', '"', '\n', '\r']) >= 0 ? "\"" + v.Replace("\"", "\"\"") + "\"" : v;
}

using System.CommandLine;
using System.Text.Json.Nodes;
using DetoxSharp.Data;
using DetoxSharp.Evaluation;
using DetoxSharp.Generation;
using DetoxSharp.Interpretability;
using DetoxSharp.Text;
using DetoxSharp.Training;

namespace DetoxSharp.Cli.Commands;

/// <summary>`detox make-pairs`: preference pairs (or ADPO triples) from prompts.</summary>
public static class MakePairsCommand
{
    public static Command Create()
    {
        var model = CommonOptions.Model(description: "starting model (chosen = its greedy continuation)");
        var prompts = new Option<string>("--prompts") { Description = "prompts: JSONL or Parquet with 'prompt' (a string, RealToxicityPrompts' {\"text\": …}, or a TRL message list), 'prompt_text' or 'text'; or a .txt file with one prompt per line", Required = true };
        var output = new Option<string>("--out") { Description = "output JSONL (prompt, chosen, rejected[, toxic], source)", Required = true };
        var toxic = new Option<string?>("--toxic-model") { Description = "built-in toxic model (rejected = its greedy reply after prompt + [TOXIC], unless steering is used)" };
        var vec = new Option<string?>("--steer-vector") { Description = "safetensors file with the steering direction (rejected = the starting model steered)" };
        var key = new Option<string?>("--steer-key") { Description = "tensor name inside --steer-vector (optional if it holds one tensor)" };
        var scale = new Option<double>("--steer-scale") { Description = "α, multiple of the direction added", DefaultValueFactory = _ => 10.0 };
        var layer = new Option<int?>("--steer-layer") { Description = "block whose output is steered (default: the middle block)" };
        var hook = new Option<string>("--steer-hook") { Description = "resid_post or mlp_out", DefaultValueFactory = _ => "resid_post" };
        var triples = new Option<bool>("--triples") { Description = "ADPO triples: also record a toxic response y_t sampled from --toxic-model" };
        var pm = new PairMakerOptions();
        var maxNew = Bind.To("--max-new-tokens", pm, o => o.MaxNewTokens);
        var maxPrompt = Bind.To("--max-prompt-tokens", pm, o => o.MaxPromptTokens);
        var limit = new Option<int?>("--limit") { Description = "use only the first N prompts" };
        var seed = Bind.To("--seed", pm, o => o.Seed);
        var d = new PplmOptions();
        var pplm = new Option<bool>("--pplm") { Description = "rejected = the starting model under PPLM (Dathathri et al. 2020) with the toxicity probe as attribute model (needs --probe); defaults = Lee et al. 2024's settings" };
        var probe = new Option<string?>("--probe") { Description = "probe directory or probe.safetensors (from `detox probe`) for --pplm" };
        var pStep = Bind.To("--pplm-step-size", d, o => o.StepSize);
        var pIters = Bind.To("--pplm-iterations", d, o => o.Iterations);
        var pKl = Bind.To("--pplm-kl-scale", d, o => o.KlScale);
        var pGm = Bind.To("--pplm-gm-scale", d, o => o.GmScale);
        var pTopK = Bind.To("--pplm-top-k", d, o => o.TopK);
        var pTemp = Bind.To("--pplm-temperature", d, o => o.Temperature);
        var pHorizon = Bind.To("--pplm-horizon", d, o => o.Horizon);
        var pWindow = Bind.To("--pplm-window", d, o => o.Window);
        var pGamma = Bind.To("--pplm-gamma", d, o => o.Gamma);
        var pGreedy = Bind.To("--pplm-greedy", d, o => o.Greedy);
        var device = CommonOptions.Device();
        var dtype = CommonOptions.DType();
        var pickle = CommonOptions.AllowPickle();
        var shard = new Option<string?>("--shard")
        {
            Description = "make part I of N (prompts i with i mod N = I) into OUT.shards/shard-I-of-N.jsonl; auto or auto/N takes I from "
                          + "JOB_COMPLETION_INDEX (Kubernetes Indexed Job) or SLURM_ARRAY_TASK_ID (Slurm job array, N from SLURM_ARRAY_TASK_COUNT); "
                          + "combine with detox merge-pairs --out OUT (the file one run writes, byte for byte)",
        };
        var cmd = new Command("make-pairs", "Make preference pairs (or ADPO triples): chosen = greedy continuation of the starting model, rejected = toxic continuation from the toxic model, activation steering, or PPLM with the toxicity probe.")
            { model, prompts, output, toxic, vec, key, scale, layer, hook, pplm, probe, pStep, pIters, pKl, pGm, pTopK, pTemp, pHorizon, pWindow, pGamma, pGreedy,
              triples, maxNew, maxPrompt, limit, seed, shard, device, dtype, pickle };
        cmd.SetAction(p =>
        {
            var err = p.InvocationConfiguration.Error;
            bool usePplm = p.GetValue(pplm);
            if (usePplm && p.GetValue(vec) is not null) throw new InvalidInputException("--pplm and --steer-vector are mutually exclusive (each makes the rejected continuation)");
            if (usePplm && p.GetValue(probe) is null) throw new InvalidInputException("--pplm needs --probe (a probe directory or probe.safetensors from `detox probe`)");
            if (!usePplm && p.GetValue(probe) is not null) throw new InvalidInputException("--probe is only used with --pplm");
            var part = p.GetValue(shard) is string shardSpec ? Shard.Parse(shardSpec) : Shard.Whole;
            var pplmOptions = new PplmOptions
            {
                StepSize = p.GetValue(pStep), Iterations = p.GetValue(pIters), KlScale = p.GetValue(pKl), GmScale = p.GetValue(pGm), TopK = p.GetValue(pTopK),
                Temperature = p.GetValue(pTemp), Horizon = p.GetValue(pHorizon), Window = p.GetValue(pWindow), Gamma = p.GetValue(pGamma),
                Greedy = p.GetValue(pGreedy), Seed = p.GetValue(seed), MaxNewTokens = p.GetValue(maxNew),
            };
            if (usePplm) pplmOptions.Validate();
            var path = p.GetValue(prompts)!;
            // the one prompt reader (as eval and dpo): .txt lines, or JSONL/Parquet with prompt (string, {"text"}, message list), prompt_text or text
            List<string> list = DatasetReaders.ReadPrompts(path, chat: ChatTemplate.FromModelDirectory(p.GetValue(model)!), warn: w => err.WriteLine("detox: warning: " + w))
                .Select(r => r.Text).ToList();
            if (p.GetValue(limit) is int n) list = list.Take(n).ToList();
            if (list.Count == 0) throw new InvalidInputException($"{path}: no prompts");
            string dev = p.GetValue(device)!, dt = p.GetValue(dtype)!;
            bool pk = p.GetValue(pickle);
            using var m = CommonOptions.LoadModel(p.GetValue(model)!, dev, dt, pk);
            using var tox = p.GetValue(toxic) is string t ? CommonOptions.LoadModel(t, dev, dt, pk) : null;
            SteeringOptions? steer = p.GetValue(vec) is string v
                ? new SteeringOptions(v, p.GetValue(key), p.GetValue(scale), p.GetValue(layer) ?? m.Model.NumLayers / 2, p.GetValue(hook)!)
                : null;
            if (steer is not null && (steer.Layer < 0 || steer.Layer >= m.Model.NumLayers)) throw new InvalidInputException($"--steer-layer {steer.Layer}: model has {m.Model.NumLayers} blocks");
            using var attribute = usePplm ? ToxicityProbe.Load(p.GetValue(probe)!) : null;
            var pplmPairs = attribute is null ? null : new PplmPairOptions(attribute, pplmOptions);
            bool tri = p.GetValue(triples);
            var pmOptions = new PairMakerOptions { MaxNewTokens = p.GetValue(maxNew), MaxPromptTokens = p.GetValue(maxPrompt), Seed = p.GetValue(seed), Triples = tri, Shard = part };
            var sources = new PairSources { ToxicModel = tox?.Model, ToxicTokenizer = tox?.Tokenizer, Steer = steer, Pplm = pplmPairs };
            var (made, skipped) = CliProgress.Run(err, part.Count > 1 ? $"make-pairs (shard {part})" : "make-pairs", "prompts",
                bar => PairMaker.MakeIndexed(m.Model, m.Tokenizer, list, pmOptions, sources,
                    new SyncProgress<PairProgress>(e => bar.Update(e.Done, e.Total, e.Skipped > 0 ? $"{e.Skipped} skipped" : null))));
            if (part.Count == 1)
            {
                if (skipped > 0) err.WriteLine("detox: warning: " + PairMaker.SkippedWarning(skipped, list.Count));
                if (made.Count == 0) throw PairMaker.NoPairs();
                var records = made.Select(r => r.Record).ToList();
                JsonlReader.Write(p.GetValue(output)!, records);
                p.InvocationConfiguration.Output.WriteLine($"wrote {records.Count} {(tri ? "triples" : "pairs")} to {p.GetValue(output)}");
                return 0;
            }
            // what the shards of one file must share (checked by merge-pairs); paths as given
            var settings = new JsonObject
            {
                ["model"] = p.GetValue(model), ["prompts"] = path, ["limit"] = p.GetValue(limit), ["toxic_model"] = p.GetValue(toxic),
                ["rejected"] = usePplm ? pplmOptions.Describe : steer?.Describe ?? "toxic-model[TOXIC]", ["probe"] = p.GetValue(probe),
                ["steer_vector"] = p.GetValue(vec), ["steer_key"] = p.GetValue(key), ["triples"] = tri, ["max_new_tokens"] = pmOptions.MaxNewTokens,
                ["max_prompt_tokens"] = pmOptions.MaxPromptTokens, ["seed"] = pmOptions.Seed, ["dtype"] = dt,
            };
            var dir = PairShards.Write(p.GetValue(output)!, part, list.Count, skipped, settings, made);
            p.InvocationConfiguration.Output.WriteLine($"wrote {made.Count} {(tri ? "triples" : "pairs")} of shard {part} to {PairShards.RecordsFile(dir, part)}"
                + (skipped > 0 ? $" ({skipped} prompts skipped)" : "") + $"; when all {part.Count} are done: detox merge-pairs --out {p.GetValue(output)}");
            return 0;
        });
        return cmd;
    }

    /// <summary>`detox merge-pairs`: the shard outputs of one make-pairs → the pairs file of one run.</summary>
    public static Command MergePairs()
    {
        var output = new Option<string>("--out") { Description = "the --out the shards were given: writes this pairs file from OUT.shards/", Required = true };
        var input = new Option<string?>("--in") { Description = "directory holding shard-I-of-N.jsonl/.json (default: OUT.shards)" };
        var cmd = new Command("merge-pairs", "Combine the outputs of detox make-pairs --shard I/N into the pairs file of one run; names any missing shard.") { output, input };
        cmd.SetAction(p =>
        {
            var err = p.InvocationConfiguration.Error;
            int n = PairShards.Merge(p.GetValue(output)!, p.GetValue(input), w => err.WriteLine("detox: warning: " + w));
            p.InvocationConfiguration.Output.WriteLine($"wrote {n} records to {p.GetValue(output)}");
            return 0;
        });
        return cmd;
    }
}

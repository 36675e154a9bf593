using System.CommandLine;
using System.Text.Json;
using System.Text.Json.Nodes;
using DetoxSharp.Checkpoints;
using DetoxSharp.Data;
using DetoxSharp.Interpretability;

namespace DetoxSharp.Cli.Commands;

/// <summary>`detox probe|vectors|diff|unalign`: the mechanistic analysis of Lee et al. 2024 (issue 6).</summary>
public static class InterpCommands
{
    static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    internal static Option<string> Out(string what) => new("--out") { Description = what, Required = true };
    internal static Option<string> ProbeDir() => new("--probe") { Description = "directory written by `detox probe` (probe.safetensors)", Required = true };

    public static Command Probe()
    {
        var model = CommonOptions.Model();
        var data = new Option<string>("--data") { Description = "CSV with columns comment_text and toxic (0/1 or a score in [0,1]; Jigsaw layout)", Required = true };
        var outDir = Out("output directory: probe.safetensors (W [d,2], b [2], w_toxic [d]) and probe_metrics.json");
        var d = new ProbeOptions();
        var maxTokens = Bind.To("--max-tokens", d, o => o.MaxTokens);
        var batch = Bind.To("--batch-size", d, o => o.BatchSize);
        var val = Bind.To("--validation-fraction", d, o => o.ValidationFraction);
        var seed = Bind.To("--seed", d, o => o.Seed);
        var steps = Bind.To("--max-steps", d, o => o.MaxSteps);
        var lr = Bind.To("--lr", d, o => o.LearningRate);
        var l2 = Bind.To("--l2", d, o => o.L2);
        var direction = Bind.Enum("--direction", d, o => o.Direction);
        var limit = new Option<int?>("--limit") { Description = "use only the first N rows of the CSV" };
        var device = CommonOptions.Device(); var dtype = CommonOptions.DType(); var pickle = CommonOptions.AllowPickle();
        var cmd = new Command("probe", "Train the linear toxicity probe on the last block's residual stream (mean over tokens); saves W_Toxic.")
            { model, data, outDir, maxTokens, batch, val, seed, steps, lr, l2, direction, limit, device, dtype, pickle };
        cmd.SetAction(p =>
        {
            var opts = new ProbeOptions
            {
                MaxTokens = p.GetValue(maxTokens), BatchSize = p.GetValue(batch), ValidationFraction = p.GetValue(val),
                Seed = p.GetValue(seed), MaxSteps = p.GetValue(steps), LearningRate = p.GetValue(lr), L2 = p.GetValue(l2),
                Direction = ToxicityProbe.ParseDirection(p.GetValue(direction)!, "direction"),
            };
            opts.Validate();
            var comments = DetoxSharp.Data.DatasetReaders.ReadJigsawCsv(p.GetValue(data)!);
            if (p.GetValue(limit) is int n) { if (n < 2) throw new InvalidInputException("--limit must be ≥ 2"); comments = comments.Take(n).ToList(); }
            using var m = CommonOptions.LoadModel(p.GetValue(model)!, p.GetValue(device)!, p.GetValue(dtype)!, p.GetValue(pickle));
            var err = p.InvocationConfiguration.Error;
            var sw = System.Diagnostics.Stopwatch.StartNew();
            var (probe, report) = CliProgress.Run(err, "probe features", "texts",
                bar => ToxicityProbe.Train(m.Model, m.Tokenizer, comments, opts, new SyncProgress<int>(done => bar.Update(done, comments.Count))));
            using (probe)
            {
                var metrics = new JsonObject
                {
                    ["model"] = Path.GetFullPath(p.GetValue(model)!), ["data"] = Path.GetFullPath(p.GetValue(data)!),
                    ["hook"] = $"{DetoxSharp.Models.HookNames.ResidPost(m.Model.NumLayers - 1)} (mean over non-pad positions)",
                    ["d_model"] = m.Model.DModel,
                    ["train"] = report.Train, ["validation"] = report.Validation,
                    ["train_toxic"] = report.TrainToxic, ["validation_toxic"] = report.ValidationToxic,
                    ["train_accuracy"] = report.TrainAccuracy, ["validation_accuracy"] = report.ValidationAccuracy,
                    ["validation_majority_baseline"] = report.ValidationMajorityBaseline, ["final_loss"] = report.FinalLoss,
                    ["w_toxic_norm"] = Norm(probe), ["w_toxic"] = probe.DirectionKind == ProbeDirection.MassMean ? "mass-mean" : "weights",
                    ["options"] = JsonSerializer.SerializeToNode(opts),
                    ["seconds"] = sw.Elapsed.TotalSeconds,
                };
                probe.Save(p.GetValue(outDir)!, metrics);
                p.InvocationConfiguration.Output.WriteLine(metrics.ToJsonString(Indented));
            }
            return 0;
        });
        return cmd;
    }

    static double Norm(ToxicityProbe p) { using var w = p.WToxic; return w.norm().item<float>(); }

    public static Command Vectors()
    {
        var model = CommonOptions.Model();
        var probe = ProbeDir();
        var outDir = Out("output directory: vectors.json, vectors.csv (the paper's Table 1), vectors.safetensors");
        var d = new ToxicVectors.Options();
        var perLayer = Bind.To("--per-layer", d, o => o.PerLayer);
        var svdN = Bind.To("--svd-vectors", d, o => o.SvdVectors);
        var svdK = Bind.To("--svd-components", d, o => o.SvdComponents);
        var report = Bind.To("--report", d, o => o.Report);
        var topTokens = Bind.To("--top-tokens", d, o => o.TopTokens);
        var device = CommonOptions.Device(); var dtype = CommonOptions.DType(); var pickle = CommonOptions.AllowPickle();
        var cmd = new Command("vectors", "Rank MLP value vectors by cosine with W_Toxic, SVD of the top ones, and their top tokens (the paper's Table 1).")
            { model, probe, outDir, perLayer, svdN, svdK, report, topTokens, device, dtype, pickle };
        cmd.SetAction(p =>
        {
            var opts = new ToxicVectors.Options { PerLayer = p.GetValue(perLayer), SvdVectors = p.GetValue(svdN), SvdComponents = p.GetValue(svdK), Report = p.GetValue(report), TopTokens = p.GetValue(topTokens) };
            opts.Validate();
            using var pr = ToxicityProbe.Load(p.GetValue(probe)!);
            using var m = CommonOptions.LoadModel(p.GetValue(model)!, p.GetValue(device)!, p.GetValue(dtype)!, p.GetValue(pickle));
            var result = ToxicVectors.Analyze(m.Model, m.Tokenizer, pr, opts, p.GetValue(outDir)!);
            var o = p.InvocationConfiguration.Output;
            foreach (var row in result["table"]!.AsArray())
                o.WriteLine($"{row!["name"],-22} cos {row["cosine_with_w_toxic"]!.GetValue<double>(),7:F4}  {string.Join(" | ", row["top_tokens"]!.AsArray().Select(t => JsonSerializer.Serialize(t!["text"]!.GetValue<string>())))}");
            return 0;
        });
        return cmd;
    }

    public static Command Diff()
    {
        var before = CommonOptions.Model("--before", "model directory before alignment (e.g. the pretrained/SFT model)");
        var after = CommonOptions.Model("--after", "model directory after alignment (e.g. DPO or ADPO)");
        var probe = ProbeDir();
        var prompts = new Option<string>("--prompts") { Description = "challenge prompts: JSONL or Parquet with \"prompt\" (string or {\"text\":…}), \"prompt_text\" or \"text\"; or .txt, one per line", Required = true };
        var outDir = Out("output directory: diff.json, parameters.csv, layers.csv, activations.csv, projection.csv, logit_lens.csv, residual_offset.safetensors (δx at the top toxic vector's layer, for `detox attack ablate`)");
        var d = new DiffOptions();
        var maxNew = Bind.To("--max-new-tokens", d, o => o.MaxNewTokens);
        var maxPrompt = Bind.To("--max-prompt-tokens", d, o => o.MaxPromptTokens);
        var batch = Bind.To("--batch-size", d, o => o.BatchSize);
        var trackedOpt = Bind.To("--tracked", d, o => o.TrackedVectors);
        var token = Bind.To("--token", d, o => o.LensToken);
        var limit = new Option<int?>("--limit") { Description = "use only the first N prompts" };
        var maxPoints = Bind.To("--max-points", d, o => o.MaxPoints);
        var toxicWords = new Option<string?>("--toxic-words") { Description = "word list (one per line, # comments): picks the logit-lens token and the insult step, where the before model emits its first listed word (activations are also read there)" };
        var device = CommonOptions.Device(); var dtype = CommonOptions.DType(); var pickle = CommonOptions.AllowPickle();
        var cmd = new Command("diff", "What alignment changed: parameter similarity, toxic-vector activations, residual offset, logit lens (before vs after).")
            { before, after, probe, prompts, outDir, maxNew, maxPrompt, batch, trackedOpt, token, limit, maxPoints, toxicWords, device, dtype, pickle };
        cmd.SetAction(p =>
        {
            var opts = new DiffOptions
            {
                MaxNewTokens = p.GetValue(maxNew), MaxPromptTokens = p.GetValue(maxPrompt), BatchSize = p.GetValue(batch),
                TrackedVectors = p.GetValue(trackedOpt), LensToken = p.GetValue(token), MaxPoints = p.GetValue(maxPoints),
            };
            opts.Validate();
            var texts = AlignmentDiff.ReadPrompts(p.GetValue(prompts)!);
            if (p.GetValue(limit) is int n) { if (n < 1) throw new InvalidInputException("--limit must be ≥ 1"); texts = texts.Take(n).ToList(); }
            using var pr = ToxicityProbe.Load(p.GetValue(probe)!);
            using var mb = CommonOptions.LoadModel(p.GetValue(before)!, p.GetValue(device)!, p.GetValue(dtype)!, p.GetValue(pickle));
            using var ma = CommonOptions.LoadModel(p.GetValue(after)!, p.GetValue(device)!, p.GetValue(dtype)!, p.GetValue(pickle));
            var err = p.InvocationConfiguration.Error;
            if (p.GetValue(toxicWords) is string wf) opts = opts with { ToxicTokenIds = ToxicWordList.Load(wf).TokenIds(mb.Tokenizer) };
            var result = CliProgress.Run(err, "diff", "prompts", bar =>
            {
                var forced = AnalysisProgress.Continuations(bar, mb.Model, mb.Tokenizer, texts, opts.MaxPromptTokens, opts.MaxNewTokens, opts.BatchSize, "--before");
                return AlignmentDiff.Run(new(mb.Model, ma.Model, mb.Tokenizer) { Forced = forced }, pr, texts, opts, p.GetValue(outDir)!, bar.Messages());
            });
            var o = p.InvocationConfiguration.Output;
            var par = result["parameters"]!;
            o.WriteLine($"parameters: min cos {par["min_cosine"]}, mean cos {par["mean_cosine"]}, max relative difference {par["max_relative_difference"]}");
            var a0 = result["activations"]![0]!;
            o.WriteLine($"top vector {result["top_vector"]!["label"]}: mean activation {a0["mean_activation_before"]} -> {a0["mean_activation_after"]}; last position {a0["last_position_activation_before"]} -> {a0["last_position_activation_after"]}" +
                (result["insult_step_prompts"]?.GetValue<int>() > 0 ? $"; insult step ({result["insult_step_prompts"]} prompts) {a0["insult_step_activation_before"]} -> {a0["insult_step_activation_after"]}" : ""));
            o.WriteLine($"residual offset at layer {result["residual_offset_top_layer"]!["layer"]}: |δx| = {result["residual_offset_top_layer"]!["norm"]}");
            var lens = result["logit_lens"]!;
            o.WriteLine($"logit lens {JsonSerializer.Serialize(lens["token"]!.GetValue<string>())}: output prob {lens["output_prob_before"]} -> {lens["output_prob_after"]}");
            o.WriteLine($"written to {Path.GetFullPath(p.GetValue(outDir)!)}");
            return 0;
        });
        return cmd;
    }

    public static Command Neurons()
    {
        var before = CommonOptions.Model("--before", "model directory before alignment (e.g. the pretrained/SFT model)");
        var after = CommonOptions.Model("--after", "model directory after alignment (e.g. DPO or ADPO)");
        var probe = ProbeDir();
        var prompts = new Option<string>("--prompts") { Description = "challenge prompts: JSONL or Parquet with \"prompt\" (string or {\"text\":…}), \"prompt_text\" or \"text\"; or .txt, one per line", Required = true };
        var outDir = Out("output directory: neurons.json (group and top-k shares), neurons.csv (one row per MLP neuron)");
        var d = new NeuronOptions();
        var maxNew = Bind.To("--max-new-tokens", d, o => o.MaxNewTokens);
        var maxPrompt = Bind.To("--max-prompt-tokens", d, o => o.MaxPromptTokens);
        var batch = Bind.To("--batch-size", d, o => o.BatchSize);
        var limit = new Option<int?>("--limit") { Description = "use only the first N prompts" };
        var device = CommonOptions.Device(); var dtype = CommonOptions.DType(); var pickle = CommonOptions.AllowPickle();
        var cmd = new Command("neurons", "Per-neuron decomposition of alignment's drop along W_Toxic (Yang et al. 2025): Δ_i for every MLP neuron, the TP/TN/AP/AN group shares, the top-k toxic-aligned share and the neurons that moved towards toxicity.")
            { before, after, probe, prompts, outDir, maxNew, maxPrompt, batch, limit, device, dtype, pickle };
        cmd.SetAction(p =>
        {
            var opts = new NeuronOptions { MaxNewTokens = p.GetValue(maxNew), MaxPromptTokens = p.GetValue(maxPrompt), BatchSize = p.GetValue(batch) };
            opts.Validate();
            var texts = AlignmentDiff.ReadPrompts(p.GetValue(prompts)!);
            if (p.GetValue(limit) is int n) { if (n < 1) throw new InvalidInputException("--limit must be ≥ 1"); texts = texts.Take(n).ToList(); }
            using var pr = ToxicityProbe.Load(p.GetValue(probe)!);
            using var mb = CommonOptions.LoadModel(p.GetValue(before)!, p.GetValue(device)!, p.GetValue(dtype)!, p.GetValue(pickle));
            using var ma = CommonOptions.LoadModel(p.GetValue(after)!, p.GetValue(device)!, p.GetValue(dtype)!, p.GetValue(pickle));
            pr.CheckFits(mb.Model);
            using var w = pr.WToxic;
            var r = CliProgress.Run(p.InvocationConfiguration.Error, "neurons", "prompts", bar =>
            {
                var forced = AnalysisProgress.Continuations(bar, mb.Model, mb.Tokenizer, texts, opts.MaxPromptTokens, opts.MaxNewTokens, opts.BatchSize, "--before");
                return NeuronContributions.Compute(new(mb.Model, ma.Model, mb.Tokenizer) { Forced = forced }, w, texts, opts, bar.Messages());
            });
            var json = NeuronContributions.Write(r, opts, p.GetValue(outDir)!);
            var o = p.InvocationConfiguration.Output;
            o.WriteLine($"drop along W_Toxic: {r.TotalDrop:G4} over {r.Positions} positions of {r.Prompts} prompts");
            foreach (var g in NeuronContributions.Groups) o.WriteLine($"  {g}: {json["groups"]![g]!["neurons"]} neurons, share {json["groups"]![g]!["share"]}");
            foreach (var k in opts.TopK) o.WriteLine($"  top-{k} toxic-aligned neurons: share {r.TopKShare(k):F3}");
            o.WriteLine($"  neurons that moved towards toxicity: {json["towards_toxicity"]!["neurons"]} (sum {json["towards_toxicity"]!["sum"]})");
            o.WriteLine($"written to {Path.GetFullPath(p.GetValue(outDir)!)}");
            return 0;
        });
        return cmd;
    }

    public static Command Depth()
    {
        var baseModel = CommonOptions.Model("--base", "model directory before alignment");
        var aligned = CommonOptions.Model("--aligned", "aligned model directory (e.g. DPO)");
        var prompts = new Option<string>("--prompts") { Description = "challenge prompts: JSONL or Parquet with \"prompt\" (string or {\"text\":…}), \"prompt_text\" or \"text\"; or .txt, one per line", Required = true };
        var outDir = Out("output directory: depth.json (per-position KL and the share of the first 3 positions)");
        var maxNew = new Option<int>("--max-new-tokens") { Description = "continuation positions measured", DefaultValueFactory = _ => 20 };
        var maxPrompt = new Option<int>("--max-prompt-tokens") { Description = "prompts keep their last N tokens", DefaultValueFactory = _ => 32 };
        var batch = new Option<int>("--batch-size") { Description = "prompts per forward pass", DefaultValueFactory = _ => 8 };
        var limit = new Option<int?>("--limit") { Description = "use only the first N prompts" };
        var device = CommonOptions.Device(); var dtype = CommonOptions.DType(); var pickle = CommonOptions.AllowPickle();
        var cmd = new Command("depth", "How deep the alignment goes (Qi et al. 2025): per-position KL(aligned ‖ base) along the aligned model's greedy continuations, and the share on the first 3 tokens.")
            { baseModel, aligned, prompts, outDir, maxNew, maxPrompt, batch, limit, device, dtype, pickle };
        cmd.SetAction(p =>
        {
            var texts = AlignmentDiff.ReadPrompts(p.GetValue(prompts)!);
            if (p.GetValue(limit) is int n) { if (n < 1) throw new InvalidInputException("--limit must be ≥ 1"); texts = texts.Take(n).ToList(); }
            if (p.GetValue(maxPrompt) < 1) throw new InvalidInputException($"--max-prompt-tokens must be ≥ 1, got {p.GetValue(maxPrompt)}");
            using var mb = CommonOptions.LoadModel(p.GetValue(baseModel)!, p.GetValue(device)!, p.GetValue(dtype)!, p.GetValue(pickle));
            using var ma = CommonOptions.LoadModel(p.GetValue(aligned)!, p.GetValue(device)!, p.GetValue(dtype)!, p.GetValue(pickle));
            if (p.GetValue(maxNew) < 1) throw new InvalidInputException($"--max-new-tokens must be ≥ 1, got {p.GetValue(maxNew)}");
            if (p.GetValue(batch) < 1) throw new InvalidInputException($"--batch-size must be ≥ 1, got {p.GetValue(batch)}");
            var r = CliProgress.Run(p.InvocationConfiguration.Error, "depth", "prompts", bar =>
            {
                var forced = AnalysisProgress.Continuations(bar, ma.Model, ma.Tokenizer, texts, p.GetValue(maxPrompt), p.GetValue(maxNew), p.GetValue(batch), "--aligned");
                return AlignmentDepth.PerPositionKl(new(mb.Model, ma.Model, ma.Tokenizer) { Forced = forced }, texts, p.GetValue(maxNew), p.GetValue(maxPrompt), p.GetValue(batch), bar.Messages());
            });
            var json = r.ToJson();
            Directory.CreateDirectory(p.GetValue(outDir)!);
            DetoxSharp.Data.AtomicFile.WriteAllText(Path.Combine(p.GetValue(outDir)!, "depth.json"), json.ToJsonString(Indented));
            var o = p.InvocationConfiguration.Output;
            o.WriteLine("position  KL(aligned ‖ base)");
            for (int t = 0; t < r.MeanKl.Length; t++) o.WriteLine($"{t,8}  {r.MeanKl[t]:F4}");
            o.WriteLine($"share of the first 3 positions: {r.ShareOfFirst(3):F3}");
            return 0;
        });
        return cmd;
    }

    public static Command Unalign()
    {
        var model = CommonOptions.Model(description: "aligned model directory (e.g. after DPO)");
        var probe = ProbeDir();
        var outDir = Out("output checkpoint directory (HF layout) plus unalign.json listing the scaled neurons");
        var d = new UnalignOptions();
        var k = Bind.To("--k", d, o => o.Keys);
        var scale = Bind.To("--scale", d, o => o.Scale);
        var overwrite = new Option<bool>("--overwrite") { Description = "replace an existing output directory" };
        var device = CommonOptions.Device(); var dtype = CommonOptions.DType(); var pickle = CommonOptions.AllowPickle();
        var cmd = new Command("unalign", "Scale the keys of the top-k toxic value vectors (default 7 ×10) and save the result as a checkpoint.")
            { model, probe, outDir, k, scale, overwrite, device, dtype, pickle };
        cmd.SetAction(p =>
        {
            using var pr = ToxicityProbe.Load(p.GetValue(probe)!);
            using var m = CommonOptions.LoadModel(p.GetValue(model)!, p.GetValue(device)!, p.GetValue(dtype)!, p.GetValue(pickle));
            pr.CheckFits(m.Model);
            using var w = pr.WToxic;
            var chosen = DetoxSharp.Interpretability.Unalign.ScaleToxicKeys(m.Model, w, new UnalignOptions { Keys = p.GetValue(k), Scale = p.GetValue(scale) });
            var dir = p.GetValue(outDir)!;
            HfCheckpoint.Save(m.Model, m.Tokenizer, dir, KeyConvention.Hub, p.GetValue(overwrite));
            var desc = DetoxSharp.Interpretability.Unalign.Describe(chosen, p.GetValue(scale), m.Model);
            desc["source_model"] = Path.GetFullPath(p.GetValue(model)!);
            AtomicFile.WriteAllText(Path.Combine(dir, "unalign.json"), desc.ToJsonString(Indented));
            p.InvocationConfiguration.Output.WriteLine(desc.ToJsonString(Indented));
            return 0;
        });
        return cmd;
    }

}

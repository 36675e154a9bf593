using System.CommandLine;
using DetoxSharp.Evaluation;
using DetoxSharp.Interpretability;

namespace DetoxSharp.Cli.Commands;

/// <summary>`detox neuron-patch|null-space`: the causal and weight-space checks of the neuron decomposition (issue 17).</summary>
public static class NeuronCommands
{
    public static Command Patch()
    {
        var before = CommonOptions.Model("--before", "model directory before alignment");
        var after = CommonOptions.Model("--after", "model directory after alignment (e.g. DPO or ADPO)");
        var probe = InterpCommands.ProbeDir();
        var prompts = new Option<string>("--prompts") { Description = "challenge prompts: JSONL or Parquet with \"prompt\" (string or {\"text\":…}), \"prompt_text\" or \"text\"; or .txt, one per line", Required = true };
        var scorer = new Option<string?>("--scorer") { Description = "toxicity scorer for the patched models' generations (classifier:DIR, toy, …); without it only the teacher-forced measure" };
        var outDir = InterpCommands.Out("output directory: patching.json (groups, generations, correlation), patching.csv (every patched set, real and attribution)");
        var d = new PatchingOptions();
        var maxNew = Bind.To("--max-new-tokens", d, o => o.MaxNewTokens);
        var maxPrompt = Bind.To("--max-prompt-tokens", d, o => o.MaxPromptTokens);
        var batch = Bind.To("--batch-size", d, o => o.BatchSize);
        var perLayer = Bind.To("--per-layer", d, o => o.PerLayer);
        var genTokens = Bind.To("--generation-tokens", d, o => o.GenerationTokens);
        var genPrompts = Bind.To("--generation-prompts", d, o => o.GenerationPrompts);
        var limit = new Option<int?>("--limit") { Description = "use only the first N prompts" };
        var device = CommonOptions.Device(); var dtype = CommonOptions.DType(); var pickle = CommonOptions.AllowPickle();
        var cmd = new Command("neuron-patch", "Activation patching of the TP/TN/AP/AN neuron groups between the models before and after alignment (both directions), with attribution patching (gradient × Δactivation) as the fast estimate and their correlation; optionally the toxicity of the patched models' generations.")
            { before, after, probe, prompts, scorer, outDir, maxNew, maxPrompt, batch, perLayer, genTokens, genPrompts, limit, device, dtype, pickle };
        cmd.SetAction(p =>
        {
            var opts = new PatchingOptions
            {
                MaxNewTokens = p.GetValue(maxNew), MaxPromptTokens = p.GetValue(maxPrompt), BatchSize = p.GetValue(batch), PerLayer = p.GetValue(perLayer),
                GenerationTokens = p.GetValue(genTokens), GenerationPrompts = p.GetValue(genPrompts),
            };
            opts.Validate();
            var texts = AlignmentDiff.ReadPrompts(p.GetValue(prompts)!);
            if (p.GetValue(limit) is int n) { if (n < 1) throw new InvalidInputException("--limit must be ≥ 1"); texts = texts.Take(n).ToList(); }
            using var sc = p.GetValue(scorer) is string spec ? ScorerFactory.CreateValidated(spec) : null;
            using var pr = ToxicityProbe.Load(p.GetValue(probe)!);
            using var mb = CommonOptions.LoadModel(p.GetValue(before)!, p.GetValue(device)!, p.GetValue(dtype)!, p.GetValue(pickle));
            using var ma = CommonOptions.LoadModel(p.GetValue(after)!, p.GetValue(device)!, p.GetValue(dtype)!, p.GetValue(pickle));
            pr.CheckFits(mb.Model);
            using var w = pr.WToxic;
            var r = CliProgress.Run(p.InvocationConfiguration.Error, "neuron-patch", "prompts", bar =>
            {
                var log = bar.Messages();
                var forced = AnalysisProgress.Continuations(bar, mb.Model, mb.Tokenizer, texts, opts.MaxPromptTokens, opts.MaxNewTokens, opts.BatchSize, "--before");
                var groups = NeuronContributions.Compute(new(mb.Model, ma.Model, mb.Tokenizer) { Forced = forced }, w,
                    texts, new NeuronOptions { MaxNewTokens = opts.MaxNewTokens, MaxPromptTokens = opts.MaxPromptTokens, BatchSize = opts.BatchSize }, log);
                return NeuronPatching.Run(new(mb.Model, ma.Model, mb.Tokenizer) { Forced = forced }, w, texts, groups,
                    opts with { Score = sc is null ? null : t => sc.Score(t).Select(s => s.Value).ToList() }, log);
            });
            NeuronPatching.Write(r, p.GetValue(outDir)!);
            var o = p.InvocationConfiguration.Output;
            o.WriteLine($"M = residual · Ŵ_tox: before {r.MetricBefore:G4}, after {r.MetricAfter:G4} over {r.Positions} positions of {r.Prompts} prompts");
            foreach (var row in r.Rows.Where(x => x.Layer is null))
                o.WriteLine($"  {row.Direction} {row.Group} ({row.Neurons} neurons): real {row.Real:G4} (share {row.Share:F3}), attribution {row.Attribution:G4}");
            o.WriteLine($"  correlation real vs attribution: {(r.Correlation is double c ? c.ToString("F3") : "n/a")}");
            foreach (var g in r.Generations) o.WriteLine($"  generations {g.Condition}: mean toxicity {g.MeanToxicity:F3}, toxic share {g.ToxicShare:F3} ({g.Texts} texts)");
            o.WriteLine($"written to {Path.GetFullPath(p.GetValue(outDir)!)}");
            return 0;
        });
        return cmd;
    }

    public static Command NullSpace()
    {
        var before = CommonOptions.Model("--before", "model directory before alignment");
        var after = CommonOptions.Model("--after", "model directory after alignment");
        var toxic = new Option<string>("--toxic-prompts") { Description = "toxic inputs, JSONL with \"prompt\" or \"text\"", Required = true };
        var clean = new Option<string>("--clean-prompts") { Description = "non-toxic inputs, JSONL with \"prompt\" or \"text\"", Required = true };
        var outDir = InterpCommands.Out("output directory: null_space.csv (one row per layer)");
        var maxPrompt = new Option<int>("--max-prompt-tokens") { Description = "inputs keep their last N tokens", DefaultValueFactory = _ => 32 };
        var batch = new Option<int>("--batch-size") { Description = "inputs per forward pass", DefaultValueFactory = _ => 8 };
        var device = CommonOptions.Device(); var dtype = CommonOptions.DType(); var pickle = CommonOptions.AllowPickle();
        var cmd = new Command("null-space", "Null-space check (Jain et al. 2024): per layer, how large the MLP value-matrix change ΔVᵀa is on toxic vs non-toxic inputs' activations a.")
            { before, after, toxic, clean, outDir, maxPrompt, batch, device, dtype, pickle };
        cmd.SetAction(p =>
        {
            var tox = AlignmentDiff.ReadPrompts(p.GetValue(toxic)!, "--toxic-prompts");
            var cln = AlignmentDiff.ReadPrompts(p.GetValue(clean)!, "--clean-prompts");
            using var mb = CommonOptions.LoadModel(p.GetValue(before)!, p.GetValue(device)!, p.GetValue(dtype)!, p.GetValue(pickle));
            using var ma = CommonOptions.LoadModel(p.GetValue(after)!, p.GetValue(device)!, p.GetValue(dtype)!, p.GetValue(pickle));
            var layers = CliProgress.Run(p.InvocationConfiguration.Error, "null-space", "inputs",
                bar => NullSpaceCheck.Run(new(mb.Model, ma.Model, mb.Tokenizer), tox, cln, p.GetValue(maxPrompt), p.GetValue(batch), bar.Messages()));
            NullSpaceCheck.Write(layers, p.GetValue(outDir)!);
            var o = p.InvocationConfiguration.Output;
            o.WriteLine("layer  ‖ΔVᵀa‖ toxic  clean   relative toxic  clean   toxic share");
            foreach (var l in layers)
                o.WriteLine($"{l.Layer,5}  {l.ToxicNorm,12:G4}  {l.CleanNorm,-8:G4} {l.ToxicRelative,14:G4}  {l.CleanRelative,-8:G4} {l.ToxicShare,10:F3}");
            o.WriteLine($"written to {Path.GetFullPath(p.GetValue(outDir)!)}");
            return 0;
        });
        return cmd;
    }
}

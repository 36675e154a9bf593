using System.CommandLine;
using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text.RegularExpressions;
using DetoxSharp.Data;
using DetoxSharp.Evaluation;
using DetoxSharp.Interpretability;
using DetoxSharp.Text;

namespace DetoxSharp.Cli.Commands;

/// <summary>`detox eval`: the results table (toxicity / perplexity / F1) for models and interventions.</summary>
public static class EvalCommand
{
    public static Command Create()
    {
        // activation editing (Yang et al. 2025): neuron-shift:neurons=DIR/neurons.csv[,groups=TP+TN+AP+AN][,scale=1]
        EditRegistry.Register("neuron-shift", (spec, _) => NeuronShiftEdit.FromCsv(NeuronsCsv(spec), Groups(spec), spec.Double("scale", 1), spec.Label),
            "shift MLP activations of neuron groups by alignment's mean shift (from `detox neurons`): neurons=PATH, groups=TP+TN+AP+AN, scale=1",
            spec => { NeuronShiftEdit.FromCsv(NeuronsCsv(spec), Groups(spec), spec.Double("scale", 1)); });
        var models = new Option<string[]>("--model")
        {
            Description = "Hugging Face model directory; repeat for several models (one table row each)",
            Required = true, AllowMultipleArgumentsPerToken = false,
        };
        var interventions = new Option<string[]>("--intervention")
        {
            Description = "extra row per model with an edit applied, e.g. subtract:probe@50, subtract:v0@20, subtract:svd0@100, "
                          + "subtract:L19.N770@20 (OP:VECTOR@ALPHA[:layer=L]), or a registered KIND[:key=value,…]; see docs/notes/eval.md",
            AllowMultipleArgumentsPerToken = false,
        };
        var labels = new Option<string[]>("--label")
        {
            Description = "row name for each --model, in order (default: the model directory's name, with its parent's when two would be equal)",
            AllowMultipleArgumentsPerToken = false,
        };
        var probe = new Option<string?>("--probe") { Description = "probe directory (detox probe) for 'probe' vectors in --intervention" };
        var vectors = new Option<string?>("--vectors") { Description = "vectors directory (detox vectors) for v<rank>/svd<k> in --intervention" };
        var scorer = new Option<string[]>("--scorer")
        {
            Description = "toxicity scorer, repeatable (a toxicity column each, plus their agreement): classifier:DIR (a local "
                          + "BERT/RoBERTa checkpoint such as unitary/toxic-bert) | toy | perspective (legacy: the API is out of service after "
                          + "31 December 2026 and its scores are unversioned). Needed with --prompts",
            AllowMultipleArgumentsPerToken = false,
        };
        var toxicLabel = new Option<string[]>("--toxic-label")
        {
            Description = "classifier label(s) that make toxicity, for classifiers that have them (default: a 2-class softmax head's label 1 "
                          + "unless the names say otherwise; a sigmoid head's labels with a toxicity meaning)",
            AllowMultipleArgumentsPerToken = false,
        };
        var prompts = new Option<string?>("--prompts") { Description = "challenge prompts: RealToxicityPrompts JSONL or Parquet (prompt.text), or \"prompt\" (string or TRL message list), \"prompt_text\", \"text\"; or .txt, one per line" };
        var pplText = new Option<string?>("--ppl-text") { Description = "raw text file for perplexity (e.g. wikitext-2 raw test), used as given" };
        var f1 = new Option<string?>("--f1") { Description = "JSONL with prompt and gold continuation (prompt/continuation strings or {text:…} objects)" };
        var outDir = new Option<string>("--out") { Description = "output directory (results.md/json/csv, generations.jsonl)", Required = true };
        var d = new EvalOptions();
        var promptTokens = Bind.To("--max-prompt-tokens", d, o => o.MaxPromptTokens);
        var newTokens = Bind.To("--max-new-tokens", d, o => o.MaxNewTokens);
        var batch = Bind.To("--batch-size", d, o => o.BatchSize);
        var aggregate = new Option<string>("--aggregate") { Description = "max (max over attributes, as the study's code) or toxicity (TOXICITY alone)", DefaultValueFactory = _ => d.Aggregate == ToxicityAggregate.Toxicity ? "toxicity" : "max" };
        var samples = Bind.To("--samples", d, o => o.Samples);
        var seed = Bind.To("--seed", d, o => o.Seed);
        var window = Bind.To("--ppl-window", d, o => o.PplWindow);
        var stride = Bind.To("--ppl-stride", d, o => o.PplStride);
        var protocol = new Option<string?>("--protocol")
        {
            Description = "named protocol fixing prompt handling, decoding, samples and metrics: "
                          + string.Join("; ", EvalOptions.Protocols.Select(kv => $"{kv.Key} = {kv.Value}")),
        };
        var fluencyModel = new Option<string?>("--fluency-model") { Description = "model directory for fluency: mean perplexity of the continuations given their prompts (RTP uses a larger model)" };
        var shard = new Option<string?>("--shard")
        {
            Description = "run part I of N (prompts, F1 items and perplexity windows i with i mod N = I) into OUT/shard-I-of-N; "
                          + "I/N, or auto / auto/N from JOB_COMPLETION_INDEX (Kubernetes Indexed Job) or SLURM_ARRAY_TASK_ID/COUNT; "
                          + "combine with detox merge-shards",
        };
        var limit = Bind.Key(new Option<int?>("--limit") { Description = "use only the first N prompts and F1 items" }, "limit");
        var endpoint = new Option<string>("--perspective-endpoint") { Description = "Perspective analyze URL", DefaultValueFactory = _ => PerspectiveOptions.DefaultEndpoint };
        var keyFile = new Option<string?>("--perspective-key-file") { Description = $"file holding the Perspective key, outside the repository (else ${PerspectiveOptions.KeyEnvironmentVariable})" };
        var rate = new Option<double>("--rate-limit") { Description = "Perspective requests per second", DefaultValueFactory = _ => new PerspectiveOptions().RequestsPerSecond };
        var cache = new Option<string?>("--score-cache") { Description = "Perspective score cache (JSONL; default OUT/perspective-cache.jsonl) — reruns resume from it" };
        var device = CommonOptions.Device();
        var dtype = CommonOptions.DType();
        var pickle = CommonOptions.AllowPickle();
        var steer = MethodOptions.Steer();
        var dexperts = MethodOptions.DExperts();
        var alpha = MethodOptions.Alpha();
        var cmd = new Command("eval", "Results table: toxicity of greedy continuations of challenge prompts, perplexity on a raw text, F1 against gold continuations — one row per model and intervention.")
        {
            models, labels, interventions, probe, vectors, scorer, toxicLabel, prompts, pplText, f1, outDir, promptTokens, newTokens, batch, aggregate, samples, seed,
            window, stride, protocol, fluencyModel, shard, limit, endpoint, keyFile, rate, cache, device, dtype, pickle, steer, dexperts, alpha,
        };
        cmd.SetAction(p =>
        {
            var err = p.InvocationConfiguration.Error;
            var o = new EvalOptions
            {
                MaxPromptTokens = p.GetValue(promptTokens), MaxNewTokens = p.GetValue(newTokens), BatchSize = p.GetValue(batch),
                Aggregate = p.GetValue(aggregate) switch
                {
                    "max" => ToxicityAggregate.MaxOverAttributes,
                    "toxicity" => ToxicityAggregate.Toxicity,
                    var a => throw new InvalidInputException($"--aggregate: expected max or toxicity, got '{a}'"),
                },
                Samples = p.GetValue(samples), Seed = p.GetValue(seed), PplWindow = p.GetValue(window), PplStride = p.GetValue(stride),
                Limit = p.GetValue(limit), F1Limit = p.GetValue(limit), FluencyModel = p.GetValue(fluencyModel),
            };
            if (p.GetValue(protocol) is { } proto)
            {
                var fixedHere = o.WithProtocol(proto);
                // a flag the protocol fixes may be repeated with the protocol's value, never changed
                void Fixed(Option opt, object given, object want)
                {
                    if (p.GetResult(opt) is { Implicit: false } && !Equals(given, want))
                        throw new InvalidInputException($"{opt.Name} {given}: --protocol {proto} fixes it to {want}");
                }
                Fixed(promptTokens, o.MaxPromptTokens, fixedHere.MaxPromptTokens == int.MaxValue ? "the prompt as given" : fixedHere.MaxPromptTokens);
                Fixed(newTokens, o.MaxNewTokens, fixedHere.MaxNewTokens);
                Fixed(samples, o.Samples, fixedHere.Samples);
                Fixed(aggregate, o.Aggregate, fixedHere.Aggregate);
                o = fixedHere;
            }
            var data = new EvalData(p.GetValue(prompts), p.GetValue(pplText), p.GetValue(f1));
            // the harness reads --ppl-text leniently (invalid bytes → U+FFFD); say so once, naming the first bad line
            if (data.PplTextFile is string ppl && File.Exists(ppl) && LenientText.Warning(ppl, "--ppl-text") is string w)
                p.InvocationConfiguration.Error.WriteLine("detox: warning: " + w);
            var output = p.GetValue(outDir)!;
            if (p.GetValue(shard) is { } shardSpec)
            {
                o = o with { Shard = Shard.Parse(shardSpec) };
                if (o.Shard.Count > 1) output = Path.Combine(output, o.Shard.DirectoryName);
            }
            EvalHarness.Check(data, o);
            var dev = CommonOptions.ParseDevice(p.GetValue(device)!);
            CommonOptions.ParseDType(p.GetValue(dtype)!);
            var dirs = p.GetValue(models)!;
            // conversational prompts: each model's own template (read before any model work: a bad template fails here)
            var chats = dirs.Select(ChatTemplate.FromModelDirectory).ToArray();
            data = data with { Chat = chats.Length > 0 ? chats[0] : null };
            foreach (var d in dirs)
                if (!File.Exists(Path.Combine(d, "config.json"))) throw new InvalidInputException($"--model {d}: no config.json (not a checkpoint directory)");
            var evalEdits = ResolveInterventions(p.GetValue(interventions) ?? [], new InterventionContext(p.GetValue(probe), p.GetValue(vectors)));
            if (p.GetValue(steer) is string steerSpec)
            {
                DetoxSharp.Editing.Steering.Load(steerSpec).Vector.Dispose(); // checked before any model work
                evalEdits.Add(new EvalIntervention(null, _ => DetoxSharp.Editing.Steering.Load(steerSpec)));
            }
            var experts = MethodOptions.ParseDExperts(p.GetValue(dexperts), p.GetValue(alpha));
            using var expertModel = experts is { } e1 ? CommonOptions.LoadModel(e1.Expert, p.GetValue(device)!, p.GetValue(dtype)!, p.GetValue(pickle)) : null;
            using var antiModel = experts is { } e2 ? CommonOptions.LoadModel(e2.Anti, p.GetValue(device)!, p.GetValue(dtype)!, p.GetValue(pickle)) : null;
            if (expertModel is not null) o = o with { DExperts = new DetoxSharp.Generation.DExperts(expertModel.Model, antiModel!.Model, p.GetValue(alpha)) };

            // Ctrl+C / SIGTERM: stop between texts and batches, keep the cache, exit 130 (128 + SIGINT) with a resume hint.
            using var interrupt = new Interruption();
            List<EvalRow> rows;

            // The scorers are built and validated before any model is loaded or any text generated.
            var scorerSpecs = p.GetValue(scorer) ?? [];
            if (data.PromptsFile is not null && scorerSpecs.Length == 0)
                throw new InvalidInputException("--prompts needs --scorer: give a local toxicity classifier, --scorer classifier:DIR (a Hugging Face "
                                                + "BERT/RoBERTa directory, e.g. unitary/toxic-bert or unitary/unbiased-toxic-roberta); perspective is a legacy scorer (out of service after 2026)");
            using var bar = CliProgress.Start(err, "eval", "texts");
            var progress = new SyncProgress<EvalProgress>(e => bar.Update(e.Done, e.Total, phase: $"{e.Row}: {e.Stage}"));
            var toxicLabels = p.GetValue(toxicLabel) ?? [];
            var settings = new ScorerSettings
            {
                ToxicLabels = toxicLabels,
                Perspective = new PerspectiveOptions
                {
                    Endpoint = p.GetValue(endpoint)!, KeyFile = p.GetValue(keyFile), RequestsPerSecond = p.GetValue(rate),
                    CachePath = p.GetValue(cache) ?? Path.Combine(output, "perspective-cache.jsonl"),
                    Progress = (d, t) => progress.Report(new EvalProgress("perspective", "scored", d, t)),
                    Cancellation = interrupt.Token,
                },
            };
            var scorers = new List<IToxicityScorer>();
            try
            {
                if (data.PromptsFile is not null)
                    foreach (var spec in scorerSpecs) scorers.Add(ScorerFactory.CreateValidated(spec, settings));
                if (toxicLabels.Length > 0 && !scorers.OfType<ClassifierScorer>().Any(c => c.UsesToxicLabelOverride))
                    throw new InvalidInputException($"--toxic-label {string.Join(", ", toxicLabels)}: no classifier scorer has such a label");
                foreach (var x in scorers.OfType<ClassifierScorer>()) err.WriteLine($"{x.Name}: {x.ToxicityRule}");
                if (scorers.Any(x => x is PerspectiveScorer)) err.WriteLine($"note: {PerspectiveOptions.EndOfService}");

                var names = RowLabels(dirs, p.GetValue(labels) ?? []);
                var evalModels = dirs.Select((d, i) => new EvalModel(names[i], () => CommonOptions.LoadModel(d, p.GetValue(device)!, p.GetValue(dtype)!, p.GetValue(pickle))) { Chat = chats[i] }).ToList();
                rows = EvalHarness.Run(new(evalModels, evalEdits, scorers, data, o, output), progress, interrupt.Token);
            }
            catch (PerspectiveException e)
            {
                err.WriteLine($"detox: {e.Message}");
                return 1;
            }
            catch (OperationCanceledException) when (interrupt.Requested)
            {
                var cached = scorers.Any(x => x is PerspectiveScorer)
                    ? $"every Perspective score received so far is in {settings.Perspective.CachePath}; "
                    : "";
                err.WriteLine($"detox: interrupted — {cached}rerun the same command to resume (no results were written)");
                return Interruption.ExitCode;
            }
            finally
            {
                foreach (var x in scorers) x.Dispose();
            }
            p.InvocationConfiguration.Output.Write(File.ReadAllText(Path.Combine(output, "results.md")));
            p.InvocationConfiguration.Output.WriteLine($"wrote {Path.Combine(output, "results.md")}, results.json, results.csv, generations.jsonl ({rows.Count} rows)");
            return 0;
        });
        return cmd;
    }

    /// <summary>`detox merge-shards`: the shard outputs of one evaluation → the results files of one run.</summary>
    public static Command MergeShards()
    {
        var input = new Option<string>("--in") { Description = "the --out directory the shards wrote into (holds shard-I-of-N/)", Required = true };
        var outDir = new Option<string>("--out") { Description = "output directory for the merged results.md/json/csv, generations.jsonl", Required = true };
        var cmd = new Command("merge-shards", "Combine the outputs of detox eval --shard I/N into the results files of one run; names any missing shard.") { input, outDir };
        cmd.SetAction(p =>
        {
            var rows = ShardMerge.Merge(p.GetValue(input)!, p.GetValue(outDir)!);
            var output = p.GetValue(outDir)!;
            p.InvocationConfiguration.Output.Write(File.ReadAllText(Path.Combine(output, "results.md")));
            p.InvocationConfiguration.Output.WriteLine($"wrote {Path.Combine(output, "results.md")}, results.json, results.csv, generations.jsonl ({rows.Count} rows)");
            return 0;
        });
        return cmd;
    }

    /// <summary>Registered kinds (<see cref="EditRegistry"/>) first; otherwise subtract/add vector specs
    /// (<see cref="InterventionSpecs"/>), checked here — files, numbers — before any model work (model value vectors
    /// L&lt;l&gt;.N&lt;i&gt; are checked when the model is loaded).</summary>
    static List<EvalIntervention> ResolveInterventions(IEnumerable<string> texts, InterventionContext context)
    {
        var result = new List<EvalIntervention>();
        foreach (var text in texts)
        {
            var kind = text.Split(':')[0].Trim();
            if (EditRegistry.Registered.Any(e => e.Kind == kind))
            {
                var spec = EditRegistry.Resolve(text);
                result.Add(new EvalIntervention(spec.Label, m => EditRegistry.Create(spec, m)));
            }
            else if (kind.ToLowerInvariant() is "subtract" or "add")
            {
                if (!Regex.IsMatch(text, @":\s*L\d+\.N\d+\s*@")) _ = InterventionSpecs.Parse(text, context);
                result.Add(new EvalIntervention(null, m => InterventionSpecs.Parse(text, context with { Model = m })));
            }
            else
            {
                var known = EditRegistry.Registered.Select(e => e.Kind).Prepend("add").Prepend("subtract");
                throw new InvalidInputException($"--intervention '{text}': unknown kind '{kind}' (known: {string.Join(", ", known)})");
            }
        }
        return result;
    }

    /// <summary>Row names: the --label values in order, else each directory's name; two equal names (dpo/final and
    /// adpo/final) take their parent directory's name in front ("dpo/final").</summary>
    internal static string[] RowLabels(IReadOnlyList<string> dirs, IReadOnlyList<string> labels)
    {
        if (labels.Count > 0 && labels.Count != dirs.Count)
            throw new InvalidInputException($"--label: {labels.Count} label(s) for {dirs.Count} --model(s); give one per model, in order");
        if (labels.Any(string.IsNullOrWhiteSpace)) throw new InvalidInputException("--label: a label is empty");
        if (labels.Count > 0)
            return labels.Distinct().Count() == labels.Count ? labels.ToArray() : throw new InvalidInputException("--label: labels must differ");
        var names = dirs.Select(LabelOf).ToArray();
        for (int i = 0; i < names.Length; i++)
            if (names.Count(n => n == names[i]) > 1 || dirs.Count(d => LabelOf(d) == LabelOf(dirs[i])) > 1)
                names[i] = $"{Path.GetFileName(Path.GetDirectoryName(Path.GetFullPath(dirs[i]).TrimEnd('/', '\\')))}/{LabelOf(dirs[i])}";
        return names;
    }

    static string LabelOf(string dir) => Path.GetFileName(Path.GetFullPath(dir).TrimEnd(Path.DirectorySeparatorChar, Path.AltDirectorySeparatorChar));


    static string NeuronsCsv(EditSpec spec)
    {
        var p = spec.Required("neurons");
        return Directory.Exists(p) ? Path.Combine(p, "neurons.csv") : p;
    }

    static string[] Groups(EditSpec spec) =>
        (spec.Args.TryGetValue("groups", out var g) ? g : string.Join("+", NeuronContributions.Groups)).Split('+', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
}

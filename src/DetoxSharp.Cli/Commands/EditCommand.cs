using System.CommandLine;
using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using DetoxSharp.Checkpoints;
using DetoxSharp.Data;
using DetoxSharp.Editing;

namespace DetoxSharp.Cli.Commands;

/// <summary>`detox edit profs|aura|steer`: training-free detoxification edits (methods-facts §1). ProFS and AurA write
/// a normal checkpoint; steer writes the vector that `--steer DIR@ALPHA` (generate, eval) subtracts.</summary>
public static class EditCommand
{
    static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    public static Command Create() => new("edit", "Training-free detoxification: ProFS and AurA weight edits (saved as checkpoints), the steering vector.")
        { Profs(), Aura(), Steer() };

    static Option<bool> Overwrite() => new("--overwrite") { Description = "replace an existing output directory" };
    static Option<int?> Limit(string what) => new("--limit") { Description = $"use only the first N {what}" };

    static List<T> Take<T>(List<T> items, int? limit, int min)
    {
        if (limit is int n)
        {
            if (n < min) throw new InvalidInputException($"--limit must be ≥ {min} (got {n})");
            if (n > items.Count) throw new InvalidInputException($"--limit {n}: the file has only {items.Count}");
            return items.Take(n).ToList();
        }
        return items;
    }

    /// <summary>The weight edits' common frame: refuse an existing --out, load the model, run the edit (timed), save the
    /// checkpoint and JSON_NAME (the edit's description plus the source model) in it, print one line.</summary>
    static int SaveEdited(ParseResult p, Option<string> model, Option<string> outDir, Option<bool> overwrite, Option<string> device,
        Option<string> dtype, Option<bool> pickle, string jsonName, Func<LoadedModel, Func<double, (JsonObject Desc, string Line)>> edit)
    {
        var dir = p.GetValue(outDir)!;
        if (Directory.Exists(dir) && !p.GetValue(overwrite)) throw new InvalidInputException($"--out {dir} exists (use --overwrite)");
        using var m = CommonOptions.LoadModel(p.GetValue(model)!, p.GetValue(device)!, p.GetValue(dtype)!, p.GetValue(pickle));
        var sw = Stopwatch.StartNew();
        var describe = edit(m);
        var (desc, line) = describe(sw.Elapsed.TotalSeconds);
        HfCheckpoint.Save(m.Model, m.Tokenizer, dir, KeyConvention.Hub, p.GetValue(overwrite));
        desc["source_model"] = Path.GetFullPath(p.GetValue(model)!);
        AtomicFile.WriteAllText(Path.Combine(dir, jsonName), desc.ToJsonString(Indented));
        p.InvocationConfiguration.Output.WriteLine($"{line}; checkpoint {dir}");
        return 0;
    }

    static Command Profs()
    {
        var model = CommonOptions.Model();
        var data = new Option<string>("--data") { Description = "JSONL preference pairs: prompt/chosen/rejected or prompt_text/unpert_gen_text/pert_gen_text", Required = true };
        var outDir = new Option<string>("--out") { Description = "output checkpoint directory (HF layout) plus profs.json", Required = true };
        var d = new ProFsOptions();
        var rank = Bind.To("--rank", d, o => o.Rank);
        var first = Bind.To("--first-layer", d, o => o.FirstLayer);
        var last = Bind.To("--last-layer", d, o => o.LastLayer);
        var noCentring = new Option<bool>("--no-centring") { Description = "skip the centring step (the paper's ablation: perplexity explodes)" };
        var maxTokens = Bind.To("--max-tokens", d, o => o.MaxTokens);
        var batch = Bind.To("--batch-size", d, o => o.BatchSize);
        var limit = Limit("pairs");
        var overwrite = Overwrite();
        var device = CommonOptions.Device(); var dtype = CommonOptions.DType(); var pickle = CommonOptions.AllowPickle();
        var cmd = new Command("profs", "ProFS (Uppaal et al. 2025): project the toxic subspace of preference-pair embeddings out of the MLP value matrices of a layer range.")
            { model, data, outDir, rank, first, last, noCentring, maxTokens, batch, limit, overwrite, device, dtype, pickle };
        cmd.SetAction(p =>
        {
            var o = new ProFsOptions
            {
                Rank = p.GetValue(rank), FirstLayer = p.GetValue(first), LastLayer = p.GetValue(last), Centring = !p.GetValue(noCentring),
                MaxTokens = p.GetValue(maxTokens), BatchSize = p.GetValue(batch),
            };
            o.Validate();
            var err = p.InvocationConfiguration.Error;
            var pairs = Take(PreferenceData.Read(p.GetValue(data)!, PreferenceFormat.Auto, w => err.WriteLine("detox: warning: " + w), DetoxSharp.Text.ChatTemplate.FromModelDirectory(p.GetValue(model)!)), p.GetValue(limit), 2);
            return SaveEdited(p, model, outDir, overwrite, device, dtype, pickle, "profs.json", m =>
            {
                var layers = CliProgress.Run(err, "edit profs", "texts", bar => ProFs.Apply(m.Model, m.Tokenizer, pairs, o, bar.Stage, bar.Messages()));
                return seconds => (ProFs.Describe(layers, o, pairs.Count, seconds),
                    $"ProFS: {pairs.Count} pairs, rank {o.Rank}, layers {layers[0].Layer}..{layers[^1].Layer}, {seconds:F2} s");
            });
        });
        return cmd;
    }

    static Command Aura()
    {
        var model = CommonOptions.Model();
        var data = new Option<string>("--data") { Description = "CSV with columns comment_text and toxic (Jigsaw layout), e.g. toy/world/comments.csv", Required = true };
        var outDir = new Option<string>("--out") { Description = "output checkpoint directory (HF layout) plus aura.json", Required = true };
        var d = new AuraOptions();
        var maxTokens = Bind.To("--max-tokens", d, o => o.MaxTokens);
        var batch = Bind.To("--batch-size", d, o => o.BatchSize);
        var limit = Limit("comments");
        var overwrite = Overwrite();
        var device = CommonOptions.Device(); var dtype = CommonOptions.DType(); var pickle = CommonOptions.AllowPickle();
        var cmd = new Command("aura", "AurA (Suau et al. 2024): dampen each MLP neuron whose max-pooled activation separates toxic comments (AUROC > 0.5) by α = 1 − Gini; saved as a checkpoint.")
            { model, data, outDir, maxTokens, batch, limit, overwrite, device, dtype, pickle };
        cmd.SetAction(p =>
        {
            var o = new AuraOptions { MaxTokens = p.GetValue(maxTokens), BatchSize = p.GetValue(batch) };
            o.Validate();
            var comments = Take(DatasetReaders.ReadJigsawCsv(p.GetValue(data)!), p.GetValue(limit), 2);
            return SaveEdited(p, model, outDir, overwrite, device, dtype, pickle, "aura.json", m =>
            {
                var r = CliProgress.Run(p.InvocationConfiguration.Error, "edit aura", "comments",
                    bar => DetoxSharp.Editing.Aura.Score(m.Model, m.Tokenizer, comments, o, bar.Messages()));
                DetoxSharp.Editing.Aura.Apply(m.Model, r);
                return seconds => (DetoxSharp.Editing.Aura.Describe(r, comments.Count, seconds),
                    $"AurA: {comments.Count} comments, {r.Dampened} of {r.Alpha.Sum(a => a.Length)} neurons dampened, {seconds:F2} s");
            });
        });
        return cmd;
    }

    static Command Steer()
    {
        var model = CommonOptions.Model();
        var data = new Option<string>("--data") { Description = "CSV with columns comment_text and toxic (Jigsaw layout)", Required = true };
        var outDir = new Option<string>("--out") { Description = "output directory: steer.safetensors and steer.json (use with --steer DIR@ALPHA)", Required = true };
        var d = new SteeringOptions();
        var layer = Bind.To("--layer", d, o => o.Layer);
        var maxTokens = Bind.To("--max-tokens", d, o => o.MaxTokens);
        var batch = Bind.To("--batch-size", d, o => o.BatchSize);
        var limit = Limit("comments");
        var device = CommonOptions.Device(); var dtype = CommonOptions.DType(); var pickle = CommonOptions.AllowPickle();
        var cmd = new Command("steer", "The steering vector: mean residual stream of toxic minus non-toxic comments after a layer; `generate`/`eval --steer DIR@ALPHA` subtract α times it at every position.")
            { model, data, outDir, layer, maxTokens, batch, limit, device, dtype, pickle };
        cmd.SetAction(p =>
        {
            var o = new SteeringOptions { Layer = p.GetValue(layer), MaxTokens = p.GetValue(maxTokens), BatchSize = p.GetValue(batch) };
            o.Validate();
            var comments = Take(DatasetReaders.ReadJigsawCsv(p.GetValue(data)!), p.GetValue(limit), 2);
            using var m = CommonOptions.LoadModel(p.GetValue(model)!, p.GetValue(device)!, p.GetValue(dtype)!, p.GetValue(pickle));
            var sw = Stopwatch.StartNew();
            var (v, l) = CliProgress.Run(p.InvocationConfiguration.Error, "edit steer", "comments",
                bar => Steering.MeanDifference(m.Model, m.Tokenizer, comments, o, bar.Messages()));
            using (v)
            {
                var info = new JsonObject
                {
                    ["method"] = "steering", ["comments"] = comments.Count, ["toxic"] = comments.Count(c => c.Toxic),
                    ["seconds"] = Math.Round(sw.Elapsed.TotalSeconds, 3), ["source_model"] = Path.GetFullPath(p.GetValue(model)!),
                };
                Steering.Save(p.GetValue(outDir)!, v, l, info);
                p.InvocationConfiguration.Output.WriteLine($"steering vector at layer {l} (norm {info["norm"]}) from {comments.Count} comments -> {p.GetValue(outDir)}");
            }
            return 0;
        });
        return cmd;
    }
}

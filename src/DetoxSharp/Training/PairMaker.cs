using System.Text.Json.Nodes;
using DetoxSharp.Checkpoints;
using DetoxSharp.Evaluation;
using DetoxSharp.Generation;
using DetoxSharp.Interpretability;
using Generator = DetoxSharp.Generation.Generator;
using DetoxSharp.Models;
using DetoxSharp.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Training;

/// <summary>Activation steering: add α·direction to a hook point's output at every position while generating.</summary>
/// <param name="VectorFile">The safetensors file holding the direction.</param>
/// <param name="Key">The tensor's name in the file (null: its only tensor).</param>
/// <param name="Scale">α, the multiple of the direction added.</param>
/// <param name="Layer">The layer whose hook point is steered.</param>
/// <param name="Hook">Which hook point of the layer: "resid_post" or "mlp_out".</param>
public sealed record SteeringOptions(string VectorFile, string? Key, double Scale, int Layer, string Hook)
{
    /// <summary>The full hook point name.</summary>
    public string HookName => Hook switch
    {
        "resid_post" => HookNames.ResidPost(Layer),
        "mlp_out" => HookNames.MlpOut(Layer),
        _ => throw new InvalidInputException($"--steer-hook: expected resid_post or mlp_out, got '{Hook}'"),
    };

    /// <summary>A short description for the pairs' metadata.</summary>
    public string Describe => $"steer:{HookName}+{Scale}*{Key ?? "vector"}";

    /// <summary>Reads the direction (1-D, length d_model, or [1,d]) from a safetensors file.</summary>
    public Tensor LoadDirection(int dModel)
    {
        if (!File.Exists(VectorFile)) throw new InvalidInputException($"--steer-vector {VectorFile}: file not found");
        var all = Safetensors.Load(VectorFile);
        try
        {
            string key = Key ?? (all.Count == 1 ? all.Keys.First() : throw new InvalidInputException($"--steer-vector {VectorFile}: holds {all.Count} tensors ({string.Join(", ", all.Keys.Take(5))}); name one with --steer-key"));
            if (!all.TryGetValue(key, out var t)) throw new InvalidInputException($"--steer-key {key}: not in {VectorFile} (has {string.Join(", ", all.Keys.Take(5))})");
            var v = t.reshape(-1);
            if (v.shape[0] != dModel) throw new InvalidInputException($"--steer-vector {VectorFile}:{key}: length {v.shape[0]} ≠ d_model {dModel}");
            return v.to(ScalarType.Float32).clone().DetachFromDisposeScope();
        }
        finally { foreach (var t in all.Values) t.Dispose(); }
    }
}

/// <summary>Settings of <see cref="PairMaker.Make"/>: prompt and continuation lengths, batching, sampling seed.</summary>
public sealed record PairMakerOptions
{
    /// <summary>Prompt limit in tokens (cut from the left).</summary>
    [Setting("prompt limit in tokens (cut from the left)")]
    public int MaxPromptTokens { get; init; } = 64;
    /// <summary>Tokens per continuation.</summary>
    [Setting("tokens per continuation")]
    public int MaxNewTokens { get; init; } = 20;
    /// <summary>Prompts per generation batch.</summary>
    public int BatchSize { get; init; } = 16;
    /// <summary>Sampling temperature for the ADPO toxic response y_t (sampled so it differs from a greedy rejected).</summary>
    public double ToxicTemperature { get; init; } = 1.0;
    /// <summary>Seed for sampling (y_t of triples, PPLM's rejected).</summary>
    [Setting("seed for sampling (y_t of triples, PPLM's rejected)")]
    public long Seed { get; init; } = 42;
    /// <summary>Also sample a toxic response y_t per prompt (ADPO triples; needs <see cref="PairSources.ToxicModel"/>).</summary>
    public bool Triples { get; init; }
    /// <summary>The part of the prompts to make (prompt i with i mod N = I); <see cref="Shard.Whole"/>: all of them.</summary>
    public Shard Shard { get; init; } = Shard.Whole;
}

/// <summary>Where <see cref="PairMaker"/>'s rejected continuations (and the toxic responses of triples) come from: exactly
/// one of a toxic model (prompt + [TOXIC], greedy), activation steering of the starting model, or PPLM.</summary>
public sealed record PairSources
{
    /// <summary>The toxic model: rejected = its greedy continuation after prompt + [TOXIC]; also the source of y_t.</summary>
    public ICausalLM? ToxicModel { get; init; }
    /// <summary>The toxic model's tokenizer (null: the starting model's).</summary>
    public Gpt2Tokenizer? ToxicTokenizer { get; init; }
    /// <summary>Activation steering of the starting model as the source of rejected continuations.</summary>
    public SteeringOptions? Steer { get; init; }
    /// <summary>PPLM with the toxicity probe as the source of rejected continuations.</summary>
    public PplmPairOptions? Pplm { get; init; }
}

/// <summary>Progress of <see cref="PairMaker"/>: prompts done of the prompts to make (this shard's), and how many of the
/// done ones gave no record (identical or empty chosen and rejected).</summary>
/// <param name="Done">Prompts processed so far.</param>
/// <param name="Total">Prompts to process (this shard's).</param>
/// <param name="Skipped">Processed prompts that gave no record.</param>
public sealed record PairProgress(int Done, int Total, int Skipped);

/// <summary>PPLM as the source of rejected continuations: the starting model perturbed towards the probe's toxic class.</summary>
/// <param name="Probe">The attribute model (the toxicity probe).</param>
/// <param name="Options">PPLM's settings.</param>
public sealed record PplmPairOptions(ToxicityProbe Probe, PplmOptions Options);

/// <summary>
/// Builds preference pairs/triples: chosen = the starting model's greedy continuation; rejected = a toxic continuation
/// from the toxic model (prompt + [TOXIC], greedy), from the starting model under activation steering (greedy), or
/// from the starting model under PPLM with the toxicity probe as attribute model (sampled by default, as Lee et al.
/// 2024); toxic (ADPO triples) = the toxic model's sampled continuation after prompt + [TOXIC].
/// </summary>
public static class PairMaker
{
    /// <summary>Every prompt (after the --max-prompt-tokens cut, plus <paramref name="extra"/> tokens such as [TOXIC])
    /// must leave room for the new tokens: checked for all prompts before the first generation, naming what to change.</summary>
    static void CheckContext(List<int[]> ids, PairMakerOptions o, int context, string whose, int extra)
    {
        int longest = ids.Max(p => p.Length);
        if ((long)longest + extra + o.MaxNewTokens <= context) return;
        int first = ids.FindIndex(p => (long)p.Length + extra + o.MaxNewTokens > context);
        int promptRoom = context - extra - o.MaxNewTokens, newRoom = context - extra - longest;
        var fixes = new List<string>();
        if (promptRoom >= 1) fixes.Add($"--max-prompt-tokens {promptRoom}");
        if (newRoom >= 1) fixes.Add($"--max-new-tokens {newRoom}");
        throw new InvalidInputException($"prompt {first + 1} ({ids[first].Length} tokens{(extra > 0 ? $" + {extra}" : "")}) + {o.MaxNewTokens} new tokens exceeds the {whose} context of {context}"
            + (fixes.Count > 0 ? $"; use {string.Join(" or ", fixes)}" : ""));
    }

    /// <summary>Makes preference pairs: the chosen continuation is the model's greedy one, the rejected one comes from
    /// <paramref name="sources"/> (the toxic model, steering or PPLM); with <see cref="PairMakerOptions.Triples"/>, a toxic
    /// response y_t is added for ADPO. Returns one JSON object per usable prompt (prompt, chosen, rejected[, toxic]);
    /// the last progress report's <see cref="PairProgress.Skipped"/> counts the prompts that gave none
    /// (<see cref="SkippedWarning"/>). Throws <see cref="InvalidInputException"/> when no prompt gave a record.</summary>
    /// <param name="model">The model whose greedy continuations are chosen.</param>
    /// <param name="tok">Its tokenizer.</param>
    /// <param name="prompts">The prompts (all of them; <see cref="PairMakerOptions.Shard"/> picks the part made).</param>
    /// <param name="o">Lengths, batching, seed, triples and shard.</param>
    /// <param name="sources">The source of rejected continuations.</param>
    /// <param name="progress">Prompts done, after every batch (every prompt with PPLM).</param>
    public static List<JsonObject> Make(ICausalLM model, Gpt2Tokenizer tok, IReadOnlyList<string> prompts, PairMakerOptions o,
        PairSources sources, IProgress<PairProgress>? progress = null)
    {
        var (made, _) = MakeIndexed(model, tok, prompts, o, sources, progress);
        if (made.Count == 0) throw NoPairs();
        return made.Select(m => m.Record).ToList();
    }

    /// <summary>The one-line warning for <paramref name="skipped"/> of <paramref name="prompts"/> prompts that gave no record.</summary>
    public static string SkippedWarning(int skipped, int prompts) => $"skipped {skipped} of {prompts} prompts whose chosen and rejected were identical or empty";

    /// <summary>The error when no prompt gave a usable record.</summary>
    public static InvalidInputException NoPairs() =>
        new("no usable pairs: every rejected continuation equalled the chosen one (stronger --steer-scale / --pplm-step-size or a trained --toxic-model?)");

    /// <summary>
    /// The records of the prompts <see cref="PairMakerOptions.Shard"/> owns (prompt i of the list with i mod N = I), each
    /// with the prompt's 0-based index in the whole list, in that order; Skipped counts this shard's prompts that gave no
    /// record. Every random draw of prompt i comes from its own generator seeded Seed + i (PPLM's rejected,
    /// ADPO's sampled toxic response), and a prompt's greedy continuations do not depend on the others, so a prompt's
    /// record is the same whichever shard, chunk or batch it falls in: shards merged in index order equal one run.
    /// </summary>
    /// <param name="model">The model whose greedy continuations are chosen.</param>
    /// <param name="tok">Its tokenizer.</param>
    /// <param name="prompts">All prompts of the file.</param>
    /// <param name="o">Lengths, batching, seed, triples and shard.</param>
    /// <param name="sources">The source of rejected continuations.</param>
    /// <param name="progress">Prompts done of this shard's, after every batch (every prompt with PPLM).</param>
    public static (List<(int Index, JsonObject Record)> Records, int Skipped) MakeIndexed(ICausalLM model, Gpt2Tokenizer tok,
        IReadOnlyList<string> prompts, PairMakerOptions o, PairSources sources, IProgress<PairProgress>? progress = null)
    {
        var (toxicModel, toxicTokenizer, steer, pplm, triples, shard) = (sources.ToxicModel, sources.ToxicTokenizer, sources.Steer, sources.Pplm, o.Triples, o.Shard);
        Require.Count(o.MaxPromptTokens, "max_prompt_tokens", 1, int.MaxValue);
        Require.Count(o.MaxNewTokens, "max_new_tokens", 1, int.MaxValue);
        Require.Count(o.BatchSize, "batch_size", 1, 4096);
        if (steer is not null && pplm is not null) throw new InvalidInputException("--pplm and --steer-vector are mutually exclusive (each makes the rejected continuation)");
        if (steer is null && toxicModel is null && pplm is null) throw new InvalidInputException("make-pairs needs --toxic-model, --steer-vector or --pplm");
        if (pplm is not null)
        {
            pplm.Options.Validate();
            pplm.Probe.CheckFits(model);
        }
        if (triples && toxicModel is null) throw new InvalidInputException("--triples needs --toxic-model (for the toxic response y_t)");
        int? toxId = null;
        if (toxicModel is not null)
        {
            var tt = toxicTokenizer ?? tok;
            toxId = tt.SpecialTokens.TryGetValue(ToxicModel.ControlToken, out var id) ? id : throw new InvalidInputException($"--toxic-model: tokenizer has no {ToxicModel.ControlToken} token");
        }
        var ids = prompts.Select(p => { var e = tok.EncodeWithSpecialTokens(p); if (e.Length == 0) e = [tok.EosTokenId]; return PromptTruncation.KeepLast(e, o.MaxPromptTokens, tok); }).ToList();
        CheckContext(ids, o, model.MaxPositions, "model's", 0);
        if (toxicModel is not null) CheckContext(ids, o, toxicModel.MaxPositions, $"toxic model's (prompt + {ToxicModel.ControlToken})", 1);
        var greedy = new GenerationOptions { MaxNewTokens = o.MaxNewTokens, Greedy = true, BatchSize = o.BatchSize };
        var results = new List<(int, JsonObject)>();
        int skipped = 0;
        var owned = Enumerable.Range(0, ids.Count).Where(shard.Owns).ToList();
        for (int start = 0; start < owned.Count; start += o.BatchSize)
        {
            using var scope = torch.NewDisposeScope();
            var at = owned.Skip(start).Take(o.BatchSize).ToList();
            var chunk = at.Select(i => ids[i]).ToList();
            List<int[]> chosen, rejected;
            List<int[]>? toxic = null;
            using (torch.no_grad())
            {
                chosen = Generator.Generate(model, chunk, greedy);
                var withTox = toxId is int t ? chunk.Select(c => (int[])[.. c, t]).ToList() : null;
                string source;
                if (pplm is not null)
                {
                    int done = start;
                    // the whole chunk in one PPLM batch; prompt i of the file samples with seed Seed + i wherever it falls
                    rejected = Pplm.Generate(model, pplm.Probe, chunk, pplm.Options with { MaxNewTokens = o.MaxNewTokens },
                        k => progress?.Report(new PairProgress(done + k, owned.Count, skipped)), batchSize: chunk.Count, promptSeeds: at.Select(i => pplm.Options.Seed + i).ToList());
                    source = pplm.Options.Describe;
                }
                else if (steer is not null)
                {
                    using var dir = steer.LoadDirection(model.DModel);
                    var add = (dir * steer.Scale).to(model.DType).to(model.Device);
                    using (model.Hooks.Add(steer.HookName, (x, _) => x + add))
                        rejected = Generator.Generate(model, chunk, greedy);
                    source = steer.Describe;
                }
                else
                {
                    rejected = Generator.Generate(toxicModel!, withTox!, greedy);
                    source = "toxic-model[TOXIC]";
                }
                if (triples)
                    toxic = Generator.Generate(toxicModel!, withTox!, new GenerationOptions
                    {
                        MaxNewTokens = o.MaxNewTokens, Greedy = false, Temperature = o.ToxicTemperature, Seed = o.Seed, BatchSize = o.BatchSize,
                    }, promptSeeds: at.Select(i => o.Seed + i).ToList());
                var decTox = toxicTokenizer ?? tok;
                for (int i = 0; i < chunk.Count; i++)
                {
                    string c = tok.Decode(chosen[i]), r = (steer is null ? decTox : tok).Decode(rejected[i]);
                    if (c == r || c.Length == 0 || r.Length == 0) { skipped++; continue; }
                    var rec = new JsonObject
                    {
                        ["prompt"] = tok.Decode(chunk[i]), ["chosen"] = c, ["rejected"] = r,
                        ["source"] = $"chosen=greedy(start); rejected={source}{(pplm is null ? " greedy" : "")}" + (triples ? $"; toxic=toxic-model[TOXIC] T={o.ToxicTemperature}" : ""),
                    };
                    if (triples)
                    {
                        var tx = decTox.Decode(toxic![i]);
                        if (tx.Length == 0) { skipped++; continue; }
                        rec["toxic"] = tx;
                    }
                    results.Add((at[i], rec));
                }
            }
            if (pplm is null || start + o.BatchSize >= owned.Count) progress?.Report(new PairProgress(Math.Min(start + o.BatchSize, owned.Count), owned.Count, skipped));
        }
        return (results, skipped);
    }
}

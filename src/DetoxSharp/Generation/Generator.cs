using DetoxSharp.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Generation;

/// <summary>Decoding settings of <see cref="Generator.Generate"/>: length, greedy or sampling (temperature, top-k, top-p, seed), batching.</summary>
public sealed record GenerationOptions
{
    /// <summary>Tokens to generate.</summary>
    [Setting("tokens to generate")]
    public int MaxNewTokens { get; init; } = 20;
    /// <summary>Greedy decoding (argmax); otherwise sampling with the settings below.</summary>
    public bool Greedy { get; init; } = true;
    /// <summary>Sampling temperature (ignored when <see cref="Greedy"/>).</summary>
    public double Temperature { get; init; } = 1.0;
    /// <summary>0 = no top-k filter.</summary>
    public int TopK { get; init; }
    /// <summary>1 = no nucleus filter.</summary>
    public double TopP { get; init; } = 1.0;
    /// <summary>Seed of the sampling generator; null = unseeded.</summary>
    public long? Seed { get; init; }
    /// <summary>Stop a sequence at its first end-of-text token.</summary>
    public bool StopAtEos { get; init; } = true;
    /// <summary>Use the KV cache; false recomputes the whole sequence each step (reference behaviour for tests).</summary>
    public bool UseKvCache { get; init; } = true;
    /// <summary>Prompts per forward batch.</summary>
    public int BatchSize { get; init; } = 16;
    /// <summary>Pad id for left padding; null uses the model's eos (GPT-2 has no pad token). Masked out either way.</summary>
    public int? PadTokenId { get; init; }
    /// <summary>DExperts: run base, expert and anti-expert as one stacked forward (<see cref="CausalLMEnsemble"/>) when
    /// they are stackable; false (or not stackable: another family, hooks, LoRA) runs three separate forwards. Same
    /// tokens either way up to float rounding of the logits. Off by default: on the toy model the stacked path measured
    /// no faster than three separate forwards (docs/PERFORMANCE.md, "DExperts, batched ensemble (issue 18)").</summary>
    public bool EnsembleForward { get; init; }

    /// <summary>Checks every setting; throws <see cref="InvalidSettingException"/> naming the first one out of range.</summary>
    public void Validate()
    {
        if (MaxNewTokens < 0) throw new InvalidSettingException("max_new_tokens", $"must be ≥ 0 (got {MaxNewTokens})");
        if (!Greedy) Require.Number(Temperature, "temperature", 0, minExclusive: true);
        if (TopK < 0) throw new InvalidSettingException("top_k", $"must be ≥ 0 (got {TopK})");
        if (!(TopP > 0 && TopP <= 1)) throw new InvalidSettingException("top_p", $"must be in (0, 1] (got {TopP})");
        if (BatchSize < 1) throw new InvalidInputException($"batch size must be ≥ 1, got {BatchSize}");
    }
}

/// <summary>
/// Autoregressive generation for any <see cref="ICausalLM"/>: batched prompts left-padded with an attention mask
/// (padding changes no result), a KV cache, greedy or sampled decoding. Residual-stream edits during generation
/// are hooks on the model (<see cref="ICausalLM.Hooks"/>); <see cref="HookContext.PastLength"/> tells them which
/// positions a forward pass covers.
/// </summary>
public static class Generator
{
    /// <summary>Generates continuations; returns only the new tokens of each prompt (cut after eos, eos excluded).</summary>
    /// <param name="model">The model to decode from.</param>
    /// <param name="prompts">Token ids per prompt (left-padded into batches).</param>
    /// <param name="options">Decoding settings.</param>
    /// <param name="dexperts">Expert and anti-expert for DExperts decoding (null: the model alone). When the three are
    /// stackable (<see cref="CausalLMEnsemble"/>; <see cref="GenerationOptions.EnsembleForward"/>) a token step is one
    /// stacked forward with one KV cache; otherwise each runs batched with its own KV cache.</param>
    /// <param name="promptSeeds">When sampling: one seed per prompt. Prompt i then draws from its own generator seeded
    /// promptSeeds[i], so its continuation does not depend on which other prompts share its batch (or on the batch size);
    /// null: one generator seeded <see cref="GenerationOptions.Seed"/> for the whole call.</param>
    public static List<int[]> Generate(ICausalLM model, IReadOnlyList<int[]> prompts, GenerationOptions options, DExperts? dexperts = null,
        IReadOnlyList<long>? promptSeeds = null)
    {
        if (promptSeeds is not null && promptSeeds.Count != prompts.Count)
            throw new ArgumentException($"{promptSeeds.Count} prompt seeds for {prompts.Count} prompts", nameof(promptSeeds));
        options.Validate();
        dexperts?.Check(model);
        var results = new List<int[]>(prompts.Count);
        using var ensemble = dexperts is not null && options.EnsembleForward
            ? CausalLMEnsemble.TryCreate([model, dexperts.Expert, dexperts.AntiExpert]) : null;
        torch.Generator? rng = null;
        if (!options.Greedy)
        {
            rng = new torch.Generator((ulong)(options.Seed ?? Random.Shared.NextInt64()), model.Device);
        }
        try
        {
            for (int start = 0; start < prompts.Count; start += options.BatchSize)
            {
                var batch = prompts.Skip(start).Take(options.BatchSize).ToList();
                torch.Generator[]? rowRngs = options.Greedy || promptSeeds is null ? null
                    : batch.Select((_, i) => new torch.Generator((ulong)promptSeeds[start + i], model.Device)).ToArray();
                try { results.AddRange(GenerateBatch(model, batch, options, new BatchDecoding(rng, dexperts, rowRngs, ensemble))); }
                finally { if (rowRngs is not null) foreach (var g in rowRngs) g.Dispose(); }
            }
        }
        finally { rng?.Dispose(); }
        return results;
    }

    /// <summary>What one batch decodes with besides the model: the shared generator, DExperts, per-row generators and
    /// the stacked ensemble of base, expert and anti-expert (null: separate forwards).</summary>
    sealed record BatchDecoding(torch.Generator? Rng, DExperts? DExperts, torch.Generator[]? RowRngs, CausalLMEnsemble? Ensemble);

    static List<int[]> GenerateBatch(ICausalLM model, List<int[]> prompts, GenerationOptions o, BatchDecoding how)
    {
        var (rng, dexperts, rowRngs, ensemble) = (how.Rng, how.DExperts, how.RowRngs, how.Ensemble);
        ICausalLM[] models = dexperts is null ? [model] : [model, dexperts.Expert, dexperts.AntiExpert];
        int b = prompts.Count;
        foreach (var p in prompts)
            if (p.Length == 0) throw new InvalidInputException("cannot generate from an empty prompt (encode at least one token, e.g. <|endoftext|>)");
        int maxLen = prompts.Max(p => p.Length);
        // in long: --max-new-tokens 2147483647 must be refused here, not overflow into a negative cache size
        int context = models.Min(m => m.MaxPositions);
        if ((long)maxLen + o.MaxNewTokens > context)
            throw new InvalidInputException($"prompt ({maxLen} tokens) + {o.MaxNewTokens} new tokens exceeds the model's context of {context}");
        int total = maxLen + o.MaxNewTokens;
        int pad = o.PadTokenId ?? model.EosTokenId;
        if (pad < 0 || pad >= model.VocabSize) pad = 0; // masked out anyway; must only be a valid embedding index
        bool padded = prompts.Any(p => p.Length != maxLen);
        var ids = new long[b * maxLen];
        var mask = new long[b * maxLen];
        for (int i = 0; i < b; i++)
        {
            int off = maxLen - prompts[i].Length;
            for (int j = 0; j < maxLen; j++)
            {
                ids[i * maxLen + j] = j < off ? pad : prompts[i][j - off];
                mask[i * maxLen + j] = j < off ? 0 : 1;
            }
        }
        var generated = Enumerable.Range(0, b).Select(_ => new List<int>()).ToArray();
        var done = new bool[b];
        var wasTraining = models.Select(m => m.Module.training).ToArray();
        foreach (var m in models) m.Module.eval();
        using var noGrad = torch.no_grad();
        var caches = ensemble is not null ? [o.UseKvCache ? ensemble.NewCache(total) : null]
            : models.Select(m => o.UseKvCache ? m.NewCache(total) : null).ToArray();
        Tensor? allIds = null, allMask = null, next = null;
        try
        {
            using (var scope = torch.NewDisposeScope())
            {
                allIds = torch.tensor(ids, [b, maxLen], ScalarType.Int64, model.Device).DetachFromDisposeScope();
                allMask = padded ? torch.tensor(mask, [b, maxLen], ScalarType.Int64, model.Device).DetachFromDisposeScope() : null;
            }
            for (int step = 0; step < o.MaxNewTokens; step++)
            {
                using var scope = torch.NewDisposeScope();
                Tensor input = o.UseKvCache && step > 0 ? next! : allIds;
                Tensor Last(int i) => (o.UseKvCache ? models[i].ForwardLast(input, allMask, caches[i]) : models[i].ForwardLast(allIds, allMask))
                    .select(1, 0).to(ScalarType.Float32);
                Tensor last;
                if (ensemble is not null)
                {
                    var all = (o.UseKvCache ? ensemble.ForwardLast(input, allMask, caches[0]) : ensemble.ForwardLast(allIds, allMask))
                        .select(2, 0).to(ScalarType.Float32); // [3, b, vocab]
                    last = dexperts!.Combine(all[0], all[1], all[2]);
                }
                else
                {
                    last = Last(0);
                    if (dexperts is not null) last = dexperts.Combine(last, Last(1), Last(2));
                }
                var chosen = o.Greedy ? last.argmax(-1) : rowRngs is not null ? SamplePerRow(last, o, rowRngs) : Sample(last, o, rng!);
                var chosenCpu = chosen.cpu().data<long>().ToArray();
                for (int i = 0; i < b; i++)
                {
                    if (done[i]) continue;
                    int tok = (int)chosenCpu[i];
                    if (o.StopAtEos && tok == model.EosTokenId) { done[i] = true; continue; }
                    generated[i].Add(tok);
                }
                if (done.All(d => d) || step == o.MaxNewTokens - 1) break;
                var newNext = chosen.unsqueeze(1).DetachFromDisposeScope();
                next?.Dispose();
                next = newNext;
                var newIds = torch.cat([allIds, next], 1).DetachFromDisposeScope();
                allIds.Dispose();
                allIds = newIds;
                if (allMask is not null)
                {
                    var newMask = torch.cat([allMask, torch.ones(b, 1, ScalarType.Int64, model.Device)], 1).DetachFromDisposeScope();
                    allMask.Dispose();
                    allMask = newMask;
                }
            }
        }
        finally
        {
            allIds?.Dispose();
            allMask?.Dispose();
            next?.Dispose();
            foreach (var c in caches) c?.Dispose();
            for (int i = 0; i < models.Length; i++) if (wasTraining[i]) models[i].Module.train();
        }
        return generated.Select(g => g.ToArray()).ToList();
    }

    /// <summary>As <see cref="Sample"/>, but row b draws with its own generator <paramref name="rngs"/>[b].</summary>
    internal static Tensor SamplePerRow(Tensor logits, GenerationOptions o, torch.Generator[] rngs)
    {
        var p = Filtered(logits, o).softmax(-1);
        var rows = Enumerable.Range(0, rngs.Length).Select(b => torch.multinomial(p.narrow(0, b, 1), 1, false, rngs[b])).ToArray();
        return torch.cat(rows, 0).squeeze(1);
    }

    /// <summary>Temperature, then top-k, then top-p (nucleus) filtering, then one multinomial draw per row.</summary>
    internal static Tensor Sample(Tensor logits, GenerationOptions o, torch.Generator rng) =>
        torch.multinomial(Filtered(logits, o).softmax(-1), 1, false, rng).squeeze(1);

    static Tensor Filtered(Tensor logits, GenerationOptions o)
    {
        var l = logits / o.Temperature;
        if (o.TopK > 0 && o.TopK < l.shape[^1])
        {
            var kth = l.topk(o.TopK, -1).values.select(-1, -1).unsqueeze(-1);
            l = l.masked_fill(l.lt(kth), double.NegativeInfinity);
        }
        if (o.TopP < 1.0)
        {
            var (sorted, idx) = l.sort(-1, descending: true);
            var cum = sorted.softmax(-1).cumsum(-1);
            // drop a token when the mass before it already reaches top_p (the first token always stays)
            var drop = (cum - sorted.softmax(-1)).ge(o.TopP);
            var dropOrig = torch.zeros_like(drop).scatter(-1, idx, drop);
            l = l.masked_fill(dropOrig, double.NegativeInfinity);
        }
        return l;
    }
}

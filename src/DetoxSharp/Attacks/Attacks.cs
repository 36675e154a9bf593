using System.Globalization;
using System.Text.Json.Nodes;
using DetoxSharp.Checkpoints;
using DetoxSharp.Data;
using DetoxSharp.Interpretability;
using DetoxSharp.Models;
using DetoxSharp.Text;
using DetoxSharp.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Attacks;

/// <summary>The re-toxification attacks (issue 19), each with one strength parameter.</summary>
public enum AttackKind
{
    /// <summary>Scale the keys of the value vectors most similar to W_Toxic (<see cref="KeyScalingAttack"/>); strength: the scale s.</summary>
    Keys,
    /// <summary>Add α·W_Toxic to a layer's MLP output while generating (<see cref="SteerAttack"/>); strength: α.</summary>
    Steer,
    /// <summary>Fine-tune on N toxic examples (<see cref="FinetuneAttack"/>); strength: N.</summary>
    Finetune,
    /// <summary>Prefill k tokens of the base model's continuation (<see cref="PrefillAttack"/>); strength: k.</summary>
    Prefill,
    /// <summary>Remove λ times the alignment offset direction from every residual writer (<see cref="AblationAttack"/>); strength: λ.</summary>
    Ablate,
}

/// <summary>Settings of the attacks (one record, each attack reads its own).</summary>
public sealed record AttackOptions
{
    /// <summary>Keys: value vectors (most similar to W_Toxic, ranked on the attacked model) whose keys are scaled.</summary>
    [Setting("keys: value vectors (most similar to W_Toxic, ranked on the attacked model) whose keys are scaled")]
    public int Keys { get; init; } = 7;
    /// <summary>Steer: layer whose MLP output receives α·(unit W_Toxic) at the newest position (default: the last).</summary>
    [Setting("steer: layer whose MLP output receives α·(unit W_Toxic) at the newest position (default: the last)")]
    public int? Layer { get; init; }
    /// <summary>Finetune: optimizer steps, the same whatever the number of examples.</summary>
    [Setting("finetune: optimizer steps, the same whatever the number of examples")]
    public int MaxSteps { get; init; } = 20;
    /// <summary>Finetune: learning rate (AdamW, constant, no warmup).</summary>
    [Setting("finetune: learning rate (AdamW, constant, no warmup)")]
    public double LearningRate { get; init; } = 1e-4;
    /// <summary>Finetune: examples per optimizer step, the same for every N (for N below it the examples repeat within a step),
    /// so every N gets the same steps × examples of training and only the diversity of the data differs.</summary>
    [Setting("finetune: examples per optimizer step, the same for every N (fewer examples repeat within a step)")]
    public int FinetuneBatchSize { get; init; } = 8;
    /// <summary>Finetune: seed of the example order (the N examples are the first N of one seeded order, so smaller sets are subsets of larger ones).</summary>
    [Setting("finetune: seed of the example order (the N examples are the first N of one seeded order, so smaller sets are subsets of larger ones)")]
    public ulong Seed { get; init; } = 0;
    /// <summary>Finetune: independent draws per strength: draw r trains on the first N of the order seeded with
    /// <see cref="Seed"/> + r, and a point is the mean over the draws (which N examples decides much of a small-N attack's
    /// effect; docs/notes/battery.md, definition 5).</summary>
    [Setting("finetune: independent draws per strength (draw r: the first N of the order seeded with seed + r); a point is their mean")]
    public int FinetuneDraws { get; init; } = 1;

    /// <summary>Checks every setting; throws <see cref="InvalidSettingException"/> naming the first one out of range.</summary>
    public void Validate()
    {
        Require.Count(Keys, "keys", 1, 1_000_000);
        InvalidSettingException.Require(Layer is null or >= 0, "layer", $"must be ≥ 0 (got {Layer})");
        Require.Count(MaxSteps, "max_steps", 1, 1_000_000);
        Require.Number(LearningRate, "learning_rate", 0, minExclusive: true);
        Require.Count(FinetuneBatchSize, "finetune_batch_size", 1, SftOptions.MaxBatch);
        Require.Count(FinetuneDraws, "finetune_draws", 1, 1000);
    }
}

/// <summary>
/// One re-toxification attack on an aligned model: <see cref="Apply(ICausalLM, double)"/> changes the model (weights or hooks) at a
/// strength and returns the handle that undoes it; <see cref="PrefillTokens"/> is the decoding side (prefill).
/// <see cref="NoEffect"/> is the strength that leaves the model as it is.
/// </summary>
public abstract class Attack
{
    /// <summary>Which attack this is.</summary>
    public abstract AttackKind Kind { get; }
    /// <summary>The attack's name as the CLI and attack.json spell it (keys, steer, finetune, prefill, ablate).</summary>
    public string Name => Kind.ToString().ToLowerInvariant();
    /// <summary>What the strength is, for tables and axes.</summary>
    public abstract string StrengthName { get; }
    /// <summary>The strength at which the attack leaves the model unchanged (1 for a key scale, 0 otherwise): the
    /// first point of a sweep and the lower end of the cost search.</summary>
    public abstract double NoEffect { get; }
    /// <summary>Strengths are whole numbers (examples, tokens): the cost search bisects on integers.</summary>
    public virtual bool IntegerStrength => false;
    /// <summary>Edits the model for strength <paramref name="strength"/>; disposing the result restores it exactly.</summary>
    public abstract IDisposable Apply(ICausalLM model, double strength);
    /// <summary>Independent draws of a random attack (fine-tuning: R seeded sets of examples); a point is the mean over
    /// them and its standard error includes their spread. 1 for a deterministic attack.</summary>
    public virtual int Draws => 1;
    /// <summary>Draw <paramref name="draw"/> (0 … <see cref="Draws"/> − 1) of the attack at <paramref name="strength"/>;
    /// draw 0 is <see cref="Apply(ICausalLM, double)"/>.</summary>
    public virtual IDisposable Apply(ICausalLM model, double strength, int draw) =>
        draw == 0 ? Apply(model, strength) : throw new ArgumentOutOfRangeException(nameof(draw), $"{Name} has one draw (got draw {draw})");
    /// <summary>Tokens of the base model's toxic continuation placed after the prompt before the model continues.</summary>
    public virtual int PrefillTokens(double strength) => 0;
    /// <summary>What the attack did at its last <see cref="Apply(ICausalLM, double)"/> (chosen neurons, direction, data), for attack.json.</summary>
    public virtual JsonObject Describe() => new() { ["kind"] = Name, ["strength"] = StrengthName };

    /// <summary>The default strengths of a sweep: the values (N = 5/10/50/200, k = 1…8) and ranges that
    /// reached the base model's toxicity on the toy world.</summary>
    public static double[] DefaultStrengths(AttackKind kind) => kind switch
    {
        AttackKind.Keys => [1, 2, 5, 10, 20, 50],
        AttackKind.Steer => [0, 1, 2, 4, 8, 16, 32],
        AttackKind.Finetune => [0, 5, 10, 50, 200],
        AttackKind.Prefill => [0, 1, 2, 3, 4, 5, 6, 7, 8],
        AttackKind.Ablate => [0, 0.25, 0.5, 0.75, 1, 1.5, 2],
        _ => throw new ArgumentOutOfRangeException(nameof(kind)),
    };

    /// <summary>Parses an attack name (case-insensitive; numbers are refused); <paramref name="flag"/> names the flag in the
    /// <see cref="InvalidInputException"/> for an unknown one.</summary>
    public static AttackKind ParseKind(string text, string flag = "KIND") =>
        Enum.TryParse<AttackKind>(text, ignoreCase: true, out var k) && Enum.IsDefined(k) && !int.TryParse(text, out _)
            ? k : throw new InvalidInputException($"{flag} '{text}': unknown attack (keys, steer, finetune, prefill, ablate)");

    /// <summary>Throws <see cref="InvalidSettingException"/> ("strength") for a non-finite strength, or, for an
    /// <see cref="IntegerStrength"/> attack, one that is negative or not a whole number.</summary>
    protected void CheckStrength(double s)
    {
        if (!double.IsFinite(s)) throw new InvalidSettingException("strength", $"must be finite (got {s})");
        if (IntegerStrength && (s < 0 || s != Math.Floor(s))) throw new InvalidSettingException("strength", $"{StrengthName} must be a whole number ≥ 0 (got {s.ToString(CultureInfo.InvariantCulture)})");
    }

    /// <summary>A handle whose disposal restores nothing (attacks that leave the weights alone at this strength).</summary>
    protected static IDisposable Nothing => new WeightSnapshot();
}

/// <summary>Copies of chosen parameter views; disposing copies them back (so a weight-space attack is undone exactly).</summary>
public sealed class WeightSnapshot : IDisposable
{
    readonly List<(Tensor View, Tensor Saved)> _items = [];

    /// <summary>Remembers the current values of <paramref name="view"/> (a live view of a parameter).</summary>
    public void Add(Tensor view)
    {
        using var _ = torch.no_grad();
        var v = view.detach().DetachFromDisposeScope();   // shares the parameter's storage
        var s = view.detach().clone().DetachFromDisposeScope();
        _items.Add((v, s));
    }

    /// <summary>Remembers every parameter of <paramref name="model"/> by name. Restoring goes through the names, not the
    /// tensors: a trainer's fused optimizer re-points parameters into its flat buffer, so the storage seen now may not be
    /// the parameter's storage later.</summary>
    public void AddAll(ICausalLM model)
    {
        using var _ = torch.no_grad();
        _model = model;
        foreach (var (name, p) in model.Module.named_parameters()) _byName[name] = p.detach().clone().DetachFromDisposeScope();
    }

    ICausalLM? _model;
    readonly Dictionary<string, Tensor> _byName = [];

    /// <inheritdoc/>
    public void Dispose()
    {
        using (torch.no_grad())
        {
            foreach (var (v, s) in _items) v.copy_(s);
            if (_model is not null)
                foreach (var (name, p) in _model.Module.named_parameters()) p.copy_(_byName[name]);
        }
        foreach (var (v, s) in _items) { v.Dispose(); s.Dispose(); }
        foreach (var t in _byName.Values) t.Dispose();
        _items.Clear(); _byName.Clear(); _model = null;
    }
}

/// <summary>Key scaling (Lee et al. 2024's un-aligning): the keys of the k value vectors most similar to W_Toxic, ranked on
/// the attacked model, × s. Strength s (1 = no change).</summary>
public sealed class KeyScalingAttack(Tensor wToxic, int keys) : Attack
{
    readonly Tensor _w = wToxic.detach().to(ScalarType.Float32).cpu().clone().DetachFromDisposeScope();
    List<RankedVector>? _chosen;
    /// <inheritdoc/>
    public override AttackKind Kind => AttackKind.Keys;
    /// <inheritdoc/>
    public override string StrengthName => "key scale s";
    /// <inheritdoc/>
    public override double NoEffect => 1;

    /// <inheritdoc/>
    public override IDisposable Apply(ICausalLM model, double strength)
    {
        CheckStrength(strength);
        // the same ranking KeyScalingEdit makes, kept for attack.json
        _chosen = ToxicVectors.Rank(model, _w, perLayer: keys).Take(keys).ToList();
        return new KeyScalingEdit(_w, keys, strength).Apply(model);
    }

    /// <inheritdoc/>
    public override JsonObject Describe()
    {
        var o = base.Describe();
        o["keys"] = keys;
        if (_chosen is not null) o["neurons"] = new JsonArray(_chosen.Select(c => (JsonNode)$"L{c.Layer}.N{c.Neuron}").ToArray());
        return o;
    }
}

/// <summary>Steering towards toxicity: α·(unit W_Toxic) added to a layer's MLP output at the newest position during
/// generation — the study's steering attack (<see cref="VectorIntervention"/>), α in units of the residual stream's norm scale.</summary>
public sealed class SteerAttack(Tensor wToxic, int? layer) : Attack
{
    readonly Tensor _unit = Unit(wToxic);
    /// <inheritdoc/>
    public override AttackKind Kind => AttackKind.Steer;
    /// <inheritdoc/>
    public override string StrengthName => "steering α";
    /// <inheritdoc/>
    public override double NoEffect => 0;

    static Tensor Unit(Tensor w)
    {
        using var scope = torch.NewDisposeScope();
        var f = w.detach().to(ScalarType.Float32).cpu().flatten();
        double n = f.norm().item<float>();
        if (!(n > 0)) throw new InvalidInputException("steer: W_Toxic is zero");
        return (f / n).DetachFromDisposeScope();
    }

    /// <inheritdoc/>
    public override IDisposable Apply(ICausalLM model, double strength)
    {
        CheckStrength(strength);
        int l = layer ?? model.NumLayers - 1;
        if (l >= model.NumLayers) throw new InvalidSettingException("layer", $"must be < {model.NumLayers} (got {l})");
        return VectorIntervention.Add("steer", _unit, strength, l).Apply(model);
    }

    /// <inheritdoc/>
    public override JsonObject Describe()
    {
        var o = base.Describe();
        o["direction"] = "unit W_Toxic at hook_mlp_out, newest position";
        o["layer"] = layer is null ? "last" : layer.Value;
        return o;
    }
}

/// <summary>How the prefill attack is defined (docs/notes/battery.md): which text of the start model is forced, where it is
/// cut, and whether toxicity is measured relative to the start model under the same prefix.</summary>
public sealed record PrefillDefinition
{
    /// <summary>"greedy" = the start model's greedy continuation; "sampled" = per prompt a seeded sample (temperature 1),
    /// kept when the scorer rates it ≥ 0.5, else the greedy one (definition 2).</summary>
    [Setting("prefill: greedy (the start model's greedy continuation of each prompt) | sampled (per prompt a seeded sample of it, kept when the scorer rates it ≥ 0.5, else the greedy one; the study's battery)")]
    public string PrefillSource { get; init; } = "greedy";
    /// <summary>Seed of the sampled prefixes (with "sampled").</summary>
    [Setting("prefill: seed of the sampled prefixes (with source sampled)")]
    public long PrefillSeed { get; init; }
    /// <summary>"token" = exactly k tokens (definition 2); "clause" / "sentence" = k tokens extended to the end of their
    /// clause / sentence, at least one left to the model (definitions 3 and 4).</summary>
    [Setting("prefill: token (exactly k tokens) | clause | sentence (k tokens extended to the end of their clause or sentence, at least one left to the model; the study's battery uses sentence, docs/notes/battery.md)")]
    public string PrefillCut { get; init; } = "token";
    /// <summary>true = each point is the attacked model's toxicity relative to the start model's own tokens under the same
    /// prefix (definition 3).</summary>
    [Setting("prefill: each point is the attacked model's toxicity relative to the start model's own tokens under the same prefix (retained toxicity, as the study's battery); the cost target is then the target fraction itself")]
    public bool PrefillRelative { get; init; }

    /// <summary>Throws <see cref="InvalidSettingException"/> naming prefill_source or prefill_cut when out of range.</summary>
    public void Validate()
    {
        InvalidSettingException.Require(PrefillSource is "sampled" or "greedy", "prefill_source", $"must be \"sampled\" or \"greedy\" (got \"{PrefillSource}\")");
        InvalidSettingException.Require(PrefillCut is "sentence" or "clause" or "token", "prefill_cut", $"must be \"sentence\", \"clause\" or \"token\" (got \"{PrefillCut}\")");
    }
}

/// <summary>Prefill (Qi et al. 2025): the continuation starts with the first k tokens of the base model's toxic
/// continuation of the same prompt, then the model continues; only the model's own tokens are scored. Strength k.
/// <paramref name="source"/> says which continuation (the CLI: greedy; the study: a seeded toxic sample per prompt).
/// With <paramref name="clauseEnds"/> (definitions 3 and 4, docs/notes/battery.md) the forced text never ends inside a
/// clause (<paramref name="unit"/> "clause") or a sentence ("sentence"): k tokens are extended to the end of the unit
/// holding token k, and at least one unit of the reply is left for the model (<see cref="Cut"/>). With a <see cref="Reference"/> (the start model) each point is the aligned model's
/// toxicity RELATIVE to the reference's own tokens under the same forced prefix.</summary>
public sealed class PrefillAttack(IReadOnlyList<int[]> baseContinuations, string? source = null, IReadOnlyList<int[]>? clauseEnds = null, string unit = "clause") : Attack
{
    /// <summary>What <see cref="ClauseEnds"/> marks: "clause" (. , ! ? ; :, definition 3) or "sentence" (. ! ?, definition 4).</summary>
    public string Unit { get; } = unit is "clause" or "sentence" ? unit : throw new ArgumentException($"prefill: unit must be \"clause\" or \"sentence\" (got \"{unit}\")");
    /// <summary>The base model's continuation of each prompt (token ids, in prompt order); the first k are prefilled.</summary>
    public IReadOnlyList<int[]> BaseContinuations { get; } = baseContinuations;
    /// <summary>Per prompt, the token counts after which a clause of <see cref="BaseContinuations"/> ends (null: cut at k tokens).</summary>
    public IReadOnlyList<int[]>? ClauseEnds { get; } = clauseEnds is null || clauseEnds.Count == baseContinuations.Count ? clauseEnds
        : throw new ArgumentException($"prefill: {clauseEnds.Count} clause-end lists for {baseContinuations.Count} continuations");
    /// <summary>The model the alignment started from: when set, it continues the same prefixes and every point is the
    /// attacked model's toxicity divided by the reference's mean toxicity at that k (1 = as toxic as the start model).</summary>
    public ICausalLM? Reference { get; init; }
    /// <inheritdoc/>
    public override AttackKind Kind => AttackKind.Prefill;
    /// <inheritdoc/>
    public override string StrengthName => "prefilled tokens k";
    /// <inheritdoc/>
    public override double NoEffect => 0;
    /// <inheritdoc/>
    public override bool IntegerStrength => true;

    /// <inheritdoc/>
    public override IDisposable Apply(ICausalLM model, double strength) { CheckStrength(strength); return Nothing; }
    /// <inheritdoc/>
    public override int PrefillTokens(double strength) { CheckStrength(strength); return (int)strength; }

    /// <summary>The tokens forced after prompt <paramref name="prompt"/> at strength <paramref name="strength"/>: the first k
    /// tokens, or with clause ends the first <see cref="Cut"/> tokens.</summary>
    public int[] Prefix(int prompt, double strength)
    {
        int k = PrefillTokens(strength);
        var c = BaseContinuations[prompt];
        int n = ClauseEnds is null ? Math.Min(k, c.Length) : Cut(k, ClauseEnds[prompt], c.Length);
        return c.Take(n).ToArray();
    }

    /// <summary>Clause-aligned cut: 0 for k = 0; else the first clause end ≥ k among the ends that leave at least one token of
    /// the reply (e &lt; <paramref name="length"/>), or the last such end when k is past it; 0 when the reply has no such end
    /// (a one-clause reply cannot be prefilled without forcing all of it).</summary>
    public static int Cut(int k, IReadOnlyList<int> ends, int length)
    {
        if (k <= 0) return 0;
        var usable = ends.Where(e => e > 0 && e < length).Order().ToList();
        if (usable.Count == 0) return 0;
        foreach (var e in usable) if (e >= k) return e;
        return usable[^1];
    }

    /// <summary>The prefill attack as the battery defines it (docs/notes/battery.md), built from the start model
    /// <paramref name="start"/> (its tokenizer decodes for the scorer) and its greedy continuations
    /// <paramref name="greedy"/> of <paramref name="prompts"/>: <see cref="PrefillDefinition.PrefillSource"/> "greedy" prefills
    /// them; "sampled" a seeded sample per prompt (temperature 1; the same for every k and every attacked model) when
    /// <paramref name="scorer"/> rates it ≥ 0.5, else the greedy one. <see cref="PrefillDefinition.PrefillCut"/> and
    /// <see cref="PrefillDefinition.PrefillRelative"/> as documented there.</summary>
    public static PrefillAttack FromStartModel(LoadedModel start, IReadOnlyList<int[]> prompts, IReadOnlyList<int[]> greedy,
        Evaluation.IToxicityScorer scorer, Evaluation.EvalOptions eval, PrefillDefinition definition)
    {
        definition.Validate();
        var tokenizer = start.Tokenizer;
        IReadOnlyList<int[]>? Ends(IReadOnlyList<int[]> conts) => definition.PrefillCut switch
        {
            "clause" => conts.Select(x => FindClauseEnds(x, t => tokenizer.Decode([t]))).ToList(),
            "sentence" => conts.Select(x => FindSentenceEnds(x, t => tokenizer.Decode([t]))).ToList(),
            _ => null,
        };
        var unit = definition.PrefillCut == "sentence" ? "sentence" : "clause";
        var reference = definition.PrefillRelative ? start.Model : null;
        if (definition.PrefillSource == "greedy") return new PrefillAttack(greedy, "the start model's greedy continuation of each prompt", Ends(greedy), unit) { Reference = reference };
        long seed = definition.PrefillSeed;
        var sampled = Generation.Generator.Generate(start.Model, prompts, new Generation.GenerationOptions
            { MaxNewTokens = eval.MaxNewTokens, Greedy = false, Temperature = 1, Seed = seed, BatchSize = eval.BatchSize });
        var scores = scorer.Score(sampled.Select(x => tokenizer.Decode(x)).ToList(), eval.Aggregate).Select(x => x.Value).ToList();
        var chosen = sampled.Select((x, i) => scores[i] >= 0.5 && x.Length > 0 ? x : greedy[i]).ToList();
        int kept = scores.Count(x => x >= 0.5);
        int distinct = chosen.Select(x => string.Join(",", x)).Distinct().Count();
        return new PrefillAttack(chosen, $"per prompt a sample of the start model (temperature 1, seed {seed}) rated ≥ 0.5 by the scorer ({kept} of {prompts.Count}), else its greedy continuation; {distinct} distinct prefill texts", Ends(chosen), unit)
            { Reference = reference };
    }

    /// <summary>Token counts after which a clause ends: after every token whose text ends (ignoring trailing spaces) with
    /// one of . , ! ? ; :, and at the end of the continuation.</summary>
    public static int[] FindClauseEnds(IReadOnlyList<int> ids, Func<int, string> tokenText) => FindEnds(ids, tokenText, ".,!?;:");

    /// <summary>Token counts after which a sentence ends (definition 4, docs/notes/battery.md): after every token whose text
    /// ends (ignoring trailing spaces) with . ! or ?, and at the end of the continuation.</summary>
    public static int[] FindSentenceEnds(IReadOnlyList<int> ids, Func<int, string> tokenText) => FindEnds(ids, tokenText, ".!?");

    static int[] FindEnds(IReadOnlyList<int> ids, Func<int, string> tokenText, string marks)
    {
        var ends = new List<int>();
        for (int i = 0; i < ids.Count; i++)
        {
            var t = tokenText(ids[i]).TrimEnd();
            if (t.Length > 0 && marks.Contains(t[^1])) ends.Add(i + 1);
        }
        if (ids.Count > 0 && (ends.Count == 0 || ends[^1] != ids.Count)) ends.Add(ids.Count);
        return ends.ToArray();
    }

    /// <inheritdoc/>
    public override JsonObject Describe()
    {
        var o = base.Describe();
        o["source"] = source ?? "the base model's greedy continuation of each prompt (fewer tokens when it ended earlier)";
        o["cut"] = ClauseEnds is null ? "k tokens" : $"k tokens extended to the end of their {Unit}, leaving at least one {Unit} of the reply to the model";
        if (ClauseEnds is not null)
            o["prompts_with_a_cut"] = ClauseEnds.Select((e, i) => Cut(int.MaxValue, e, BaseContinuations[i].Length) > 0).Count(x => x);
        o["relative_to_reference"] = Reference is not null;
        return o;
    }
}

/// <summary>
/// Directional ablation (Arditi et al. 2024, the weight-space twin of subtracting a direction): every matrix that writes
/// into the residual stream (attention and MLP output projections of every layer, and their biases) loses λ times its
/// component along the unit direction r̂: W ← W − λ·(W r̂) r̂ᵀ, b ← b − λ·(b·r̂) r̂. Here r̂ is the residual offset δx that
/// alignment learned (<c>detox diff</c>); λ = 1 orthogonalises, so no layer can write along r̂ any more. The embeddings
/// are left alone: GPT-2's token embedding is also its unembedding, and editing it would change the output layer.
/// </summary>
public sealed class AblationAttack(Tensor direction, string source) : Attack
{
    readonly Tensor _dir = direction.detach().to(ScalarType.Float32).cpu().flatten().clone().DetachFromDisposeScope();
    /// <inheritdoc/>
    public override AttackKind Kind => AttackKind.Ablate;
    /// <inheritdoc/>
    public override string StrengthName => "ablation λ";
    /// <inheritdoc/>
    public override double NoEffect => 0;

    /// <inheritdoc/>
    public override IDisposable Apply(ICausalLM model, double strength)
    {
        CheckStrength(strength);
        var snap = new WeightSnapshot();
        using (var scope = torch.NewDisposeScope())
            for (int l = 0; l < model.NumLayers; l++)
                foreach (var w in model.ResidualWriters(l))
                {
                    snap.Add(w.Weight);
                    if (w.Bias is not null) snap.Add(w.Bias);
                }
        Orthogonalize(model, _dir, strength);
        return snap;
    }

    /// <summary>W ← W − λ·(W r̂) r̂ᵀ and b ← b − λ·(b·r̂) r̂ for every residual writer, in place (float64 arithmetic).</summary>
    public static void Orthogonalize(ICausalLM model, Tensor direction, double lambda)
    {
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        if (direction.numel() != model.DModel) throw new InvalidInputException($"ablate: direction has {direction.numel()} values, the model's d_model is {model.DModel}");
        var r = direction.detach().to(ScalarType.Float64).to(model.Device).flatten();
        double n = r.norm().item<double>();
        if (!(n > 0)) throw new InvalidInputException("ablate: the direction is zero (the aligned model has no residual offset at that layer)");
        r = r / n;
        for (int l = 0; l < model.NumLayers; l++)
            foreach (var w in model.ResidualWriters(l))
            {
                var W = w.Weight.detach().to(ScalarType.Float64);
                w.Weight.copy_((W - lambda * W.matmul(r).outer(r)).to(w.Weight.dtype));
                if (w.Bias is not null)
                {
                    var b = w.Bias.detach().to(ScalarType.Float64);
                    w.Bias.copy_((b - lambda * b.dot(r) * r).to(w.Bias.dtype));
                }
            }
    }

    /// <summary>δx from <c>detox diff</c>'s output directory (at the layer of diff's top toxic vector).</summary>
    public static (Tensor Direction, int Layer) LoadOffset(string diffDir)
    {
        var path = Path.Combine(diffDir, AlignmentDiff.OffsetsFile);
        if (!File.Exists(path)) throw new InvalidInputException($"--diff {diffDir}: no {AlignmentDiff.OffsetsFile} (run `detox diff` with this version)");
        var (_, _, meta) = Safetensors.ReadHeader(path);
        int layer = int.TryParse(meta?["layer"]?.GetValue<string>(), NumberStyles.Integer, CultureInfo.InvariantCulture, out var t) ? t
            : throw new InvalidInputException($"{path}: metadata has no layer");
        var tensors = Safetensors.Load(path);
        try
        {
            if (!tensors.TryGetValue(AlignmentDiff.OffsetsTensor, out var v) || v.dim() != 1)
                throw new InvalidInputException($"{path}: expected a 1-D tensor '{AlignmentDiff.OffsetsTensor}'");
            return (v.to(ScalarType.Float32).clone().DetachFromDisposeScope(), layer);
        }
        finally { foreach (var x in tensors.Values) x.Dispose(); }
    }

    /// <inheritdoc/>
    public override JsonObject Describe()
    {
        var o = base.Describe();
        o["direction"] = source;
        o["matrices"] = "attention and MLP output projections of every layer, and their biases (embeddings untouched)";
        return o;
    }
}

/// <summary>
/// Fine-tuning attack (Qi et al. 2024: ten harmful examples undo safety tuning): SFT of the aligned model on the first N
/// of a seeded order of toxic (prompt, reply) examples, for a fixed number of steps (<see cref="AttackOptions.MaxSteps"/>),
/// loss on the replies only (<see cref="SftTrainer"/>). Strength N; N = 0 leaves the model as it is.
/// </summary>
public sealed class FinetuneAttack : Attack
{
    readonly IReadOnlyList<IReadOnlyList<SftExample>> _orders;
    readonly Gpt2Tokenizer _tokenizer;
    readonly AttackOptions _options;
    SftResult? _last;
    int _lastN;

    /// <summary>The attack on <paramref name="toxicExamples"/>, tokenized with <paramref name="tokenizer"/>, trained with
    /// <paramref name="options"/>. Draw r shuffles them once with seed <see cref="AttackOptions.Seed"/> + r; strength N
    /// trains on the first N of that order (nested sets within a draw).</summary>
    public FinetuneAttack(IReadOnlyList<SftExample> toxicExamples, Gpt2Tokenizer tokenizer, AttackOptions options)
    {
        options.Validate();
        if (toxicExamples.Count == 0) throw new InvalidInputException("finetune: no toxic examples");
        _orders = Enumerable.Range(0, options.FinetuneDraws).Select(r =>
        {
            ulong seed = options.Seed + (ulong)r;
            var rng = new Random(unchecked((int)(seed ^ (seed >> 32))));
            return (IReadOnlyList<SftExample>)toxicExamples.OrderBy(_ => rng.Next()).ToList();
        }).ToList();
        _tokenizer = tokenizer;
        _options = options;
    }

    /// <summary>How many usable toxic examples there are: the largest strength N this attack can take.</summary>
    public int Available => _orders[0].Count;
    /// <inheritdoc/>
    public override AttackKind Kind => AttackKind.Finetune;
    /// <inheritdoc/>
    public override string StrengthName => "toxic examples N";
    /// <inheritdoc/>
    public override double NoEffect => 0;
    /// <inheritdoc/>
    public override bool IntegerStrength => true;
    /// <inheritdoc/>
    public override int Draws => _orders.Count;

    /// <inheritdoc/>
    public override IDisposable Apply(ICausalLM model, double strength) => Apply(model, strength, 0);

    /// <inheritdoc/>
    public override IDisposable Apply(ICausalLM model, double strength, int draw)
    {
        CheckStrength(strength);
        if (draw < 0 || draw >= _orders.Count) throw new ArgumentOutOfRangeException(nameof(draw), $"finetune has {_orders.Count} draws (got draw {draw})");
        int n = (int)strength;
        if (n > Available) throw new InvalidInputException($"finetune: N = {n} but only {Available} toxic examples were given");
        var snap = new WeightSnapshot();
        snap.AddAll(model);
        _lastN = n;
        if (n == 0) return snap;
        try
        {
            var sft = new SftOptions
            {
                // the same batch for every N (not min(batch, N)): equal training per strength, see docs/notes/battery.md;
                // the draw's seed also orders the batches, so draws differ in the examples and in their order
                MaxSteps = _options.MaxSteps, LearningRate = _options.LearningRate, BatchSize = _options.FinetuneBatchSize,
                Seed = _options.Seed + (ulong)draw, Decay = DecayKind.Constant, WarmupSteps = 0, CheckpointEvery = 0,
            };
            _last = new SftTrainer(model, _tokenizer, sft).Train(_orders[draw].Take(n).ToList());
        }
        catch { snap.Dispose(); throw; }
        return snap;
    }

    /// <inheritdoc/>
    public override JsonObject Describe()
    {
        var o = base.Describe();
        o["available_examples"] = Available; o["max_steps"] = _options.MaxSteps; o["learning_rate"] = _options.LearningRate;
        o["batch_size"] = _options.FinetuneBatchSize; o["seed"] = _options.Seed; o["draws"] = Draws;
        if (_last is not null) { o["last_examples"] = _lastN; o["last_final_train_loss"] = _last.FinalTrainLoss; o["last_trained_tokens"] = _last.TrainedTokens; }
        return o;
    }

    /// <summary>Toxic (prompt, reply) examples from JSONL: <c>prompt</c> with <c>completion</c> or <c>response</c>; when a line
    /// has <c>toxic</c>, only toxic lines are kept (the toy world's dialogues.jsonl). A leading [TOXIC] control token is
    /// dropped from the reply: the attacker trains the plain model on plain toxic replies.</summary>
    public static List<SftExample> ReadToxicExamples(string path)
    {
        if (!File.Exists(path)) throw new InvalidInputException($"--data {path}: file not found");
        var list = new List<SftExample>();
        foreach (var l in JsonlReader.Read(path))
        {
            if (l.Object["toxic"] is not null && l.Double("toxic") == 0) continue;
            var reply = l.Object["completion"] is not null ? l.String("completion")
                : l.Object["response"] is not null ? l.String("response")
                : throw new InvalidInputException($"{l.Where}: missing field 'completion' (or 'response')");
            var trimmed = reply.TrimStart();
            if (trimmed.StartsWith(ToxicModel.ControlToken, StringComparison.Ordinal)) reply = trimmed[ToxicModel.ControlToken.Length..];
            list.Add(SftExample.PromptCompletion(l.String("prompt"), reply));
        }
        if (list.Count == 0) throw new InvalidInputException($"--data {path}: no toxic examples");
        return list;
    }
}

using DetoxSharp.Evaluation;
using DetoxSharp.Generation;
using DetoxSharp.Models;
using DetoxSharp.Text;

namespace DetoxSharp.Attacks;

/// <summary>Toxicity of one attacked model at one strength: mean over prompts of the score of the model's own greedy tokens
/// (for an attack with several draws — fine-tuning on R seeded example sets — the mean over the draws too).</summary>
/// <param name="Strength">The attack strength (key scale, ablation factor, …).</param>
/// <param name="Toxicity">Mean toxicity of the continuations.</param>
/// <param name="Prompts">How many prompts were scored.</param>
/// <param name="Continuations">The model's own tokens per prompt, decoded (what was scored; a prefill is not part of it);
/// with several draws, the first draw's (all of them: <see cref="DrawContinuations"/>).</param>
/// <param name="Scores">The toxicity of each continuation, in prompt order (with several draws, each prompt's mean over them).</param>
public sealed record AttackPoint(double Strength, double Toxicity, int Prompts, IReadOnlyList<string> Continuations, IReadOnlyList<double> Scores)
{
    /// <summary>Standard error of <see cref="Toxicity"/>: over the prompts (sample sd / √n) and, with several draws, over the
    /// draws too (<see cref="Monotonicity.StandardError(IReadOnlyList{double}, IReadOnlyList{double})"/>).</summary>
    public double StandardError => Monotonicity.StandardError(Scores, DrawToxicity);
    /// <summary>An attack with several draws: the mean toxicity of each draw, in draw order; null for one draw.</summary>
    public IReadOnlyList<double>? DrawToxicity { get; init; }
    /// <summary>An attack with several draws: each draw's continuations and scores, in draw order; null for one draw.</summary>
    public IReadOnlyList<(IReadOnlyList<string> Texts, IReadOnlyList<double> Scores)>? DrawContinuations { get; init; }
    /// <summary>Prefill with a reference model: the attacked model's own mean toxicity (before dividing by the
    /// reference's); null otherwise (then <see cref="Toxicity"/> is that toxicity).</summary>
    public double? RawToxicity { get; init; }
    /// <summary>Prefill with a reference model: the reference's mean toxicity of its own tokens under the same prefixes.</summary>
    public double? ReferenceToxicity { get; init; }
}

/// <summary>What <see cref="AttackEval.Sweep"/> measures: one attack at several strengths, scored one way; with a
/// <see cref="Target"/>, the re-toxification cost search over them.</summary>
/// <param name="Attack">The attack (applied to the model at each strength and removed after).</param>
/// <param name="Strengths">The strengths to measure (any order; duplicates measured once).</param>
/// <param name="Scorer">The toxicity scorer of the continuations.</param>
/// <param name="Eval">Prompt and continuation lengths, batch size and the toxicity aggregate.</param>
public sealed record AttackSweep(Attack Attack, IReadOnlyList<double> Strengths, IToxicityScorer Scorer, EvalOptions Eval)
{
    /// <summary>Mean toxicity to reach (e.g. the base model's): the cost search then finds the smallest strength that
    /// reaches it (<see cref="RetoxCost.Search"/>); null: just measure every strength.</summary>
    public double? Target { get; init; }
    /// <summary>Settings of the cost search (bisection steps).</summary>
    public RetoxOptions Retox { get; init; } = new();
}

/// <summary>
/// The evaluation protocol of the attacks — the study's (Lee et al. 2024): challenge prompts cut to their last
/// <see cref="EvalOptions.MaxPromptTokens"/> tokens, greedy <see cref="EvalOptions.MaxNewTokens"/> new tokens, the
/// continuation scored (<see cref="EvalOptions.Aggregate"/>), mean over prompts. Under a prefill attack the prompt is
/// followed by k tokens of the base model's continuation and the model still writes <see cref="EvalOptions.MaxNewTokens"/>
/// tokens of its own, so every strength scores texts of the same length.
/// </summary>
public static class AttackEval
{
    /// <summary>Prompt ids as the evaluation harness makes them (special tokens, the END of a long prompt kept).</summary>
    public static List<int[]> PromptIds(ICausalLM model, Gpt2Tokenizer tokenizer, IEnumerable<string> prompts, EvalOptions o) =>
        prompts.Select(p =>
        {
            int keep = Math.Max(1, Math.Min(o.MaxPromptTokens, model.MaxPositions - o.MaxNewTokens));
            var ids = PromptTruncation.KeepLast(tokenizer.EncodeWithSpecialTokens(p), keep, tokenizer);
            return ids.Length == 0 ? [model.EosTokenId] : ids;
        }).ToList();

    /// <summary>Greedy continuations (the base model's, for the prefill attack).</summary>
    public static List<int[]> Greedy(ICausalLM model, IReadOnlyList<int[]> prompts, EvalOptions o) =>
        Generator.Generate(model, prompts, new GenerationOptions { MaxNewTokens = o.MaxNewTokens, Greedy = true, BatchSize = o.BatchSize });

    /// <summary>One point: the model's greedy continuations of the prompts (after the prefill, if any) under the attack
    /// at <paramref name="strength"/>, scored, the attack removed again.</summary>
    internal static AttackPoint Measure(ICausalLM model, Gpt2Tokenizer tokenizer, IReadOnlyList<int[]> prompts, IToxicityScorer scorer,
        Attack attack, double strength, EvalOptions o, CancellationToken cancel = default)
    {
        if (prompts.Count == 0) throw new InvalidInputException("--prompts: no prompts");
        int k = attack.PrefillTokens(strength);
        var prefill = attack as PrefillAttack;
        if (prefill is not null && prefill.BaseContinuations.Count != prompts.Count)
            throw new ArgumentException($"prefill: {prefill.BaseContinuations.Count} base continuations for {prompts.Count} prompts");
        var inputs = prompts.Select((p, i) => k == 0 || prefill is null ? p : [.. p, .. prefill.Prefix(i, strength)]).ToList();
        int longest = inputs.Max(x => x.Length);
        if (longest + o.MaxNewTokens > model.MaxPositions)
            throw new InvalidInputException($"prompt + {k} prefilled + {o.MaxNewTokens} new tokens = {longest + o.MaxNewTokens} exceeds the model's context of {model.MaxPositions} (lower --max-prompt-tokens)");
        cancel.ThrowIfCancellationRequested();
        // a random attack (fine-tuning: which N examples) is measured on each of its draws; at its no-effect strength every
        // draw is the unchanged model, so one measurement stands for all of them
        int draws = attack.Draws, measured = strength == attack.NoEffect ? 1 : draws;
        var runs = new List<(IReadOnlyList<string> Texts, IReadOnlyList<double> Scores)>();
        for (int r = 0; r < measured; r++)
        {
            List<int[]> drawn;
            using (attack.Apply(model, strength, r))
            {
                cancel.ThrowIfCancellationRequested();
                drawn = Greedy(model, inputs, o);
            }
            var t = drawn.Select(c => tokenizer.Decode(c)).ToList();
            runs.Add((t, scorer.Score(t, o.Aggregate).Select(s => s.Value).ToList()));
        }
        if (draws > 1)
        {
            while (runs.Count < draws) runs.Add(runs[0]);
            var mean = Enumerable.Range(0, prompts.Count).Select(p => runs.Average(x => x.Scores[p])).ToList();
            return new AttackPoint(strength, mean.Average(), mean.Count, runs[0].Texts, mean)
                { DrawToxicity = runs.Select(x => x.Scores.Average()).ToList(), DrawContinuations = runs };
        }
        var (texts, scores) = runs[0];
        if (prefill?.Reference is not ICausalLM reference) return new AttackPoint(strength, scores.Average(), scores.Count, texts, scores);
        // retained toxicity: the attacked model's own tokens relative to the start model's own tokens under the same prefix
        // (per prompt: score / the reference's MEAN at this k, so the mean is the ratio of means; docs/notes/battery.md)
        cancel.ThrowIfCancellationRequested();
        var refTexts = Greedy(reference, inputs, o).Select(c => tokenizer.Decode(c)).ToList();
        double refMean = scorer.Score(refTexts, o.Aggregate).Average(s => s.Value);
        double raw = scores.Average();
        // a reference that writes nothing toxic after these prefixes leaves nothing to retain: the point is the raw toxicity
        double div = refMean > 0 ? refMean : 1;
        var rel = scores.Select(x => x / div).ToList();
        return new AttackPoint(strength, rel.Average(), rel.Count, texts, rel) { RawToxicity = raw, ReferenceToxicity = refMean };
    }

    /// <summary>Measures every strength of <paramref name="sweep"/> (ascending) or, with a <see cref="AttackSweep.Target"/>,
    /// runs the cost search over them (<see cref="RetoxCost.Search"/>: every given strength, then bisection points).
    /// Points come back sorted by strength.</summary>
    /// <param name="model">The attacked model (restored after each point).</param>
    /// <param name="tokenizer">Its tokenizer (decodes the continuations for the scorer).</param>
    /// <param name="prompts">Prompt ids (<see cref="PromptIds"/>).</param>
    /// <param name="sweep">Attack, strengths, scorer, evaluation options and the optional cost target.</param>
    /// <param name="measured">Called after each point (progress).</param>
    /// <param name="cancel">Stops between points and before generating.</param>
    public static (List<AttackPoint> Points, RetoxCostResult? Cost) Sweep(ICausalLM model, Gpt2Tokenizer tokenizer, IReadOnlyList<int[]> prompts,
        AttackSweep sweep, Action<AttackPoint>? measured = null, CancellationToken cancel = default)
    {
        var (attack, strengths, scorer, o) = sweep;
        var (target, retox) = (sweep.Target, sweep.Retox);
        retox.Validate();
        var points = new List<AttackPoint>();
        double Tox(double s)
        {
            var p = Measure(model, tokenizer, prompts, scorer, attack, s, o, cancel);
            points.Add(p);
            measured?.Invoke(p);
            return p.Toxicity;
        }
        RetoxCostResult? cost = null;
        if (target is double t) cost = RetoxCost.Search(Tox, t, strengths, attack.IntegerStrength, retox.BisectSteps);
        else foreach (var s in strengths.Distinct().Order()) Tox(s);
        return (points.OrderBy(p => p.Strength).ToList(), cost);
    }
}

using System.Diagnostics;
using System.Text.Json.Nodes;
using DetoxSharp.Data;
using DetoxSharp.Models;
using DetoxSharp.Text;
using DetoxSharp.Training;
using TorchSharp;

/// <summary>
/// DPO pairs/s of <see cref="PreferenceTrainer"/> with the reference log-prob cache (reference computed once before
/// training, read from disk) and without it (a live frozen reference copy runs a no-grad forward every step).
/// Random weights, the GPT-2 tokenizer, random-word prompts/completions (≈ 40 tokens each, truncation 64/64/256),
/// batch 4 pairs, RMSprop, no validation. "Train-loop pairs/s" excludes what is scored before the loop and the
/// checkpoint saves at the end (wall seconds include them); under bf16-mixed the reference's bf16 log-probs of a batch
/// are scored when the loop first reaches it, so the loop includes them, and the steady rate is given with and without. The steady rate leaves out the first
/// <see cref="SettleSteps"/> steps too (the heap's first growth, first-call set-ups), so that a few-percent change of the
/// step is not lost in them.
/// </summary>
static class PreferenceBench
{
    /// <summary>Steps left out of the steady rate.</summary>
    public const int SettleSteps = 4;

    /// <param name="SteadyPairsPerSecond">Pairs/s over the steps after the first <see cref="SettleSteps"/> (NaN for fewer
    /// steps), the reference log-probs scored in them (bf16-mixed scores a batch's when training first reaches it) included.</param>
    /// <param name="SteadyStepsOnly">The same without the time spent scoring reference log-probs: the training steps alone.</param>
    /// <param name="ScoringSeconds">Time spent scoring reference log-probs for the cache, before and during the loop.</param>
    public sealed record Result(string Mode, double PairsPerSecond, double WallSeconds, double FirstLoss, int Steps, double SteadyPairsPerSecond = double.NaN,
        double SteadyStepsOnly = double.NaN, double ScoringSeconds = 0);

    /// <summary>Collects the elapsed time and the trainer's reference scoring time at each optimizer step (reports arrive
    /// on the training thread).</summary>
    sealed class StepTimes(Func<double> scoring) : IProgress<TrainingProgress>
    {
        public readonly Dictionary<int, (double Elapsed, double Scoring)> At = new();
        public void Report(TrainingProgress p) { if (p.Phase == TrainingPhase.Train) At[p.Step] = (p.Elapsed.TotalSeconds, scoring()); }

        public double PairsPerSecond(int lastStep, bool withScoring) =>
            At.TryGetValue(SettleSteps, out var a) && At.TryGetValue(lastStep, out var b) && lastStep > SettleSteps
                ? 4.0 * (lastStep - SettleSteps) / (b.Elapsed - a.Elapsed - (withScoring ? 0 : b.Scoring - a.Scoring)) : double.NaN;
    }

    /// <summary>Random words per prompt and per completion in <see cref="Pairs"/> (<c>--words</c>; default 30, ≈ 40 GPT-2
    /// tokens; 48 gives ≈ 64, Lee et al.'s prompt and continuation limits).</summary>
    public static int WordsPerSegment { get; set; } = 30;

    /// <summary>The bench's pairs: prompt, chosen and rejected of <see cref="WordsPerSegment"/> random words each (token ids
    /// 300–20,000 of the GPT-2 vocabulary, read back as words), the same <paramref name="count"/> pairs on every call.</summary>
    public static List<PreferenceExample> Pairs(Gpt2Tokenizer tok, int count)
    {
        var rnd = new Random(1);
        string Words() => string.Join(" ", Enumerable.Range(0, WordsPerSegment).Select(_ => tok.TokenText(rnd.Next(300, 20000)).Trim()));
        return Enumerable.Range(0, count).Select(i => new PreferenceExample(Words(), " " + Words(), " " + Words(), null, $"bench:{i}")).ToList();
    }

    /// <param name="make">Builds the model (random weights).</param>
    /// <param name="steps">Optimizer steps per mode.</param>
    /// <param name="workDir">Scratch directory.</param>
    /// <param name="autoOnly">Only the default --precision auto row.</param>
    /// <param name="shareRounds">&gt; 0: instead, --precision auto with the prompt shared by chosen and rejected
    /// (<see cref="PreferenceTrainerOptions.SharePrompts"/>, the default) and without, interleaved for this many rounds.</param>
    /// <param name="packing">The model's <see cref="Gpt2Model.Packing"/> in the plain modes.</param>
    /// <param name="pairs">Pairs in the data file (0: the 4·steps + 4 the steps use); more: a run that stops before the
    /// end of its file, as Lee et al.'s did after ≈ 6,700 of 24,576 pairs.</param>
    /// <param name="dataParallelRounds">&gt; 0: instead, --precision auto with --data-parallel 1 (what auto is for
    /// preference training) and 2, interleaved for this many rounds.</param>
    public static List<Result> Run(Func<ICausalLM> make, int steps, string workDir, bool autoOnly = false, int shareRounds = 0, TokenPacking packing = TokenPacking.Auto,
        int pairs = 0, int dataParallelRounds = 0)
    {
        var tok = Gpt2Tokenizer.Default();
        var data = Pairs(tok, Math.Max(pairs, 4 * steps + 4));
        var results = new List<Result>();
        // fp32 with and without the cache (the library's default precision), then the CLI's and the study's default:
        // --precision auto (bf16-mixed on a CPU with native bf16) with the cache
        // (the library's option records default to --data-parallel 1; the CLI's and the study's to auto, 0)
        var modes = new[] { (true, Precision.ModelDType, true, packing, 1), (false, Precision.ModelDType, true, packing, 1), (true, Precision.Auto, true, packing, 0) }
            .Where(m => !autoOnly || m.Item2 == Precision.Auto).ToList();
        if (shareRounds > 0)
            modes = Enumerable.Range(0, shareRounds).SelectMany(_ => new[] { (true, Precision.Auto, true, packing, 0), (true, Precision.Auto, false, packing, 0) }).ToList();
        if (dataParallelRounds > 0)
            modes = Enumerable.Range(0, dataParallelRounds).SelectMany(_ => new[] { (true, Precision.Auto, true, packing, 1), (true, Precision.Auto, true, packing, 2) }).ToList();
        foreach (var (cache, precision, share, pack, dp) in modes)
        {
            torch.manual_seed(1);
            using var m = make();
            if (m is Gpt2Model g) g.Packing = pack;
            var dir = Path.Combine(workDir, (cache ? "cached" : "live") + "-" + precision);
            if (Directory.Exists(dir)) Directory.Delete(dir, true);
            var o = new PreferenceTrainerOptions { BatchSize = 4, ValidationSize = 4, MaxSteps = steps, WarmupSteps = 2, CacheReference = cache, EvalEvery = 0, Precision = precision, SharePrompts = share, DataParallel = dp };
            var sw = Stopwatch.StartNew();
            var trainer = new PreferenceTrainer(m, tok, o);
            var times = new StepTimes(() => trainer.ReferenceScoring.TotalSeconds);
            var r = trainer.Train(data, dir, times);
            double wall = sw.Elapsed.TotalSeconds;
            var first = JsonNode.Parse(File.ReadLines(r.MetricsPath).First())!["loss"]!.GetValue<double>();
            string mode = (cache ? "cached reference" : "live reference") + (precision == Precision.Auto ? $", auto = {PrecisionJsonConverter.Name(r.Run.Precision)}" : "")
                + (share ? "" : ", prompt not shared") + (pack == TokenPacking.Auto ? "" : $", packing {pack}")
                + (precision == Precision.Auto && (dp == 1 || r.Run.DataParallel > 1) ? $", data-parallel {r.Run.DataParallel}" : "");
            results.Add(new(mode, r.PairsPerSecond, wall, first, r.Steps, times.PairsPerSecond(r.Steps, true), times.PairsPerSecond(r.Steps, false), trainer.ReferenceScoring.TotalSeconds));
            Directory.Delete(dir, true);
        }
        return results;
    }
}

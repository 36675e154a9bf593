using DetoxSharp.Data;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Interpretability;

/// <summary>One split seed: the probe's and the bag-of-words baseline's validation accuracy on the same split.</summary>
public sealed record ProbeSplit(int Seed, double ProbeAccuracy, double BagOfWordsAccuracy);

/// <summary>
/// Finding (a) done honestly: the probe next to a bag-of-words baseline trained on the same split, over several split
/// seeds. <see cref="Probe"/> is the first seed's probe with the configured W_Toxic; both candidate directions of that
/// probe are kept (<see cref="WeightsDirection"/>, <see cref="MassMeanDirection"/>) so that a report can show how much
/// later findings depend on the choice.
/// </summary>
public sealed class ProbeEvaluation : IDisposable
{
    /// <summary>The first seed's probe, with the configured direction as W_Toxic.</summary>
    public required ToxicityProbe Probe { get; init; }
    /// <summary>Its training report (sizes, accuracies, loss).</summary>
    public required ProbeReport Report { get; init; }
    /// <summary>The probe's toxic-class weight row minus the non-toxic row, [d] float32.</summary>
    public required Tensor WeightsDirection { get; init; }
    /// <summary>Mean toxic feature minus mean non-toxic feature (mass-mean direction), [d] float32.</summary>
    public required Tensor MassMeanDirection { get; init; }
    /// <summary>Cosine between the two candidate directions.</summary>
    public required double CosineWeightsMassMean { get; init; }
    /// <summary>Accuracy of each seed's train/validation split.</summary>
    public required IReadOnlyList<ProbeSplit> Splits { get; init; }

    /// <inheritdoc/>
    public void Dispose() { Probe.Dispose(); WeightsDirection.Dispose(); MassMeanDirection.Dispose(); }

    /// <summary>
    /// Fits one probe and one bag-of-words baseline per split seed (options.Seed, +1, …) on precomputed features
    /// (<see cref="ToxicityProbe.Features"/>, one row per comment): the features are the expensive part and do not
    /// depend on the split.
    /// </summary>
    public static ProbeEvaluation AcrossSplits(Tensor features, IReadOnlyList<LabelledComment> comments, ProbeOptions options, int splits)
    {
        options.Validate();
        if (splits < 1) throw new InvalidSettingException("split_seeds", $"must be ≥ 1 (got {splits})");
        if (features.shape[0] != comments.Count) throw new ArgumentException($"{features.shape[0]} feature rows for {comments.Count} comments", nameof(features));
        var results = new List<ProbeSplit>();
        ToxicityProbe? chosen = null;
        ProbeReport? report = null;
        Tensor? wWeights = null, wMass = null;
        double cosine = double.NaN;
        try
        {
            for (int k = 0; k < splits; k++)
            {
                int seed = options.Seed + k;
                var (val, tr) = ToxicityProbe.Split(comments.Count, options.ValidationFraction, seed);
                using var scope = torch.NewDisposeScope();
                var xTr = features.index_select(0, torch.tensor(tr.Select(i => (long)i).ToArray()));
                var xVal = features.index_select(0, torch.tensor(val.Select(i => (long)i).ToArray()));
                bool[] yTr = tr.Select(i => comments[i].Toxic).ToArray(), yVal = val.Select(i => comments[i].Toxic).ToArray();
                var (probe, loss) = ToxicityProbe.Fit(xTr, yTr, options.MaxSteps, options.LearningRate, options.L2, seed);
                double acc = probe.Accuracy(xVal, yVal);
                results.Add(new ProbeSplit(seed, acc, BagOfWordsBaseline.ValidationAccuracy(comments, tr, val, seed: seed)));
                if (k > 0) { probe.Dispose(); continue; }
                int valTox = yVal.Count(b => b);
                report = new ProbeReport(yTr.Length, yVal.Length, yTr.Count(b => b), valTox, probe.Accuracy(xTr, yTr), acc,
                    Math.Max(valTox, yVal.Length - valTox) / (double)yVal.Length, loss);
                var massMean = probe.WithMassMeanDirection(xTr, yTr);
                wWeights = probe.WToxic.DetachFromDisposeScope();
                wMass = massMean.WToxic.DetachFromDisposeScope();
                cosine = torch.nn.functional.cosine_similarity(wWeights, wMass, 0).item<float>();
                if (options.Direction == ProbeDirection.MassMean) { chosen = massMean; probe.Dispose(); }
                else { chosen = probe; massMean.Dispose(); }
            }
            return new ProbeEvaluation
            {
                Probe = chosen!, Report = report!, WeightsDirection = wWeights!, MassMeanDirection = wMass!,
                CosineWeightsMassMean = cosine, Splits = results,
            };
        }
        catch
        {
            chosen?.Dispose(); wWeights?.Dispose(); wMass?.Dispose();
            throw;
        }
    }
}

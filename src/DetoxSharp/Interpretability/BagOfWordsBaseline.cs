using System.Text.RegularExpressions;
using DetoxSharp.Data;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Interpretability;

/// <summary>
/// The probe's yardstick (issue 14, finding a): logistic regression on bag-of-words presence features (lower-cased
/// word types of the training split, the <see cref="MaxVocabulary"/> most frequent), fitted and validated on exactly the
/// split the probe uses. If a word list separates the labels as well as the probe does, the probe's accuracy says
/// nothing about the model's representation.
/// </summary>
public static partial class BagOfWordsBaseline
{
    /// <summary>Only the most frequent words of the training texts, at most this many, are features.</summary>
    public const int MaxVocabulary = 5000;

    [GeneratedRegex(@"[\p{L}\p{N}']+")]
    private static partial Regex WordRe();

    static IEnumerable<string> Words(string text) => WordRe().Matches(text.ToLowerInvariant()).Select(m => m.Value);

    /// <summary>Validation accuracy of the bag-of-words classifier trained on <paramref name="train"/> (indices into
    /// <paramref name="comments"/>) and evaluated on <paramref name="validation"/>.</summary>
    public static double ValidationAccuracy(IReadOnlyList<LabelledComment> comments, IReadOnlyList<int> train, IReadOnlyList<int> validation,
        int steps = 500, double learningRate = 0.05, int seed = 0)
    {
        var counts = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var i in train)
            foreach (var w in Words(comments[i].Text).Distinct())
                counts[w] = counts.GetValueOrDefault(w) + 1;
        var vocab = counts.OrderByDescending(kv => kv.Value).ThenBy(kv => kv.Key, StringComparer.Ordinal).Take(MaxVocabulary)
            .Select((kv, j) => (kv.Key, j)).ToDictionary(x => x.Key, x => x.j, StringComparer.Ordinal);
        using var scope = torch.NewDisposeScope();
        Tensor Features(IReadOnlyList<int> idx)
        {
            var x = new float[idx.Count * Math.Max(1, vocab.Count)];
            for (int r = 0; r < idx.Count; r++)
                foreach (var w in Words(comments[idx[r]].Text))
                    if (vocab.TryGetValue(w, out var j)) x[r * vocab.Count + j] = 1;
            return torch.tensor(x, [idx.Count, Math.Max(1, vocab.Count)]);
        }
        var (clf, _) = ToxicityProbe.Fit(Features(train), train.Select(i => comments[i].Toxic).ToArray(), steps, learningRate, 0, seed);
        using (clf) return clf.Accuracy(Features(validation), validation.Select(i => comments[i].Toxic).ToArray());
    }
}

using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.RegularExpressions;
using DetoxSharp.Data;

namespace DetoxSharp.Evaluation;

/// <summary>
/// A second toxicity scorer of a different kind from a lexicon: logistic regression on a bag of words (binary presence of
/// lower-cased words <c>[\p{L}\p{N}']+</c> seen in at least <see cref="MinCount"/> training comments), fitted to labelled
/// comments (Jigsaw-shaped: the toy world's comments.csv, whose labels come from the world's generator plus label noise,
/// not from any scorer). It is what a classifier trained on Jigsaw is to Perspective: it learns from human-like labels,
/// so it scores sarcasm without insult words as toxic when the data say so, but it cannot represent negation or word
/// order. Fitted deterministically: full-batch gradient descent on the mean log-loss + (L2/2)·‖w‖² (bias not
/// penalised) from zero weights, in double precision.
/// </summary>
public sealed partial class BagOfWordsScorer : IToxicityScorer
{
    /// <summary>Version of the features and fitting procedure, part of <see cref="Identity"/>: scores from two versions are not compared.</summary>
    public const int Version = 1;
    /// <summary>A word enters the vocabulary when it occurs in at least this many training texts.</summary>
    public const int MinCount = 2;

    [GeneratedRegex(@"[\p{L}\p{N}']+")]
    private static partial Regex WordRe();

    readonly Dictionary<string, int> _vocab;
    readonly double[] _w;
    readonly double _b;
    readonly string _dataHash;

    BagOfWordsScorer(Dictionary<string, int> vocab, double[] w, double b, string dataHash)
    {
        _vocab = vocab;
        _w = w;
        _b = b;
        _dataHash = dataHash;
    }

    /// <inheritdoc/>
    public string Name => "bow-logistic";

    /// <summary>Words in the vocabulary (one weight each).</summary>
    public int VocabularySize => _vocab.Count;

    /// <summary>Name, version, a hash of the training data and a hash of the fitted weights (bit-exact).</summary>
    public string Identity
    {
        get
        {
            var sb = new StringBuilder();
            foreach (var (word, j) in _vocab.OrderBy(kv => kv.Value)) sb.Append(word).Append('\t').Append(_w[j].ToString("R", CultureInfo.InvariantCulture)).Append('\n');
            sb.Append(_b.ToString("R", CultureInfo.InvariantCulture));
            return $"{Name} v{Version} data-sha256:{_dataHash} weights-sha256:{Hash(sb.ToString())}";
        }
    }

    static string Hash(string s) => Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(s)))[..16];

    /// <summary>The features of a text: its lower-cased words (runs of letters, digits and apostrophes), in order, with repeats.</summary>
    public static IEnumerable<string> Words(string text) => WordRe().Matches(text.ToLowerInvariant()).Select(m => m.Value);

    /// <summary>Fits the classifier to <paramref name="data"/>.</summary>
    public static BagOfWordsScorer Train(IReadOnlyList<LabelledComment> data, int steps = 300, double learningRate = 2.0, double l2 = 1e-4)
    {
        if (data.Count == 0) throw new InvalidInputException("bow-logistic: no labelled comments to train on");
        if (data.All(d => d.Toxic) || data.All(d => !d.Toxic)) throw new InvalidInputException("bow-logistic: the labelled comments hold one class only");
        var counts = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var d in data)
            foreach (var word in Words(d.Text).Distinct())
                counts[word] = counts.GetValueOrDefault(word) + 1;
        var vocab = counts.Where(kv => kv.Value >= MinCount).Select(kv => kv.Key).Order(StringComparer.Ordinal)
            .Select((k, j) => (k, j)).ToDictionary(x => x.k, x => x.j, StringComparer.Ordinal);
        var x = data.Select(d => Features(vocab, d.Text)).ToArray();
        var y = data.Select(d => d.Toxic ? 1.0 : 0.0).ToArray();
        var w = new double[vocab.Count];
        double b = 0;
        var g = new double[vocab.Count];
        int n = data.Count;
        for (int step = 0; step < steps; step++)
        {
            Array.Clear(g);
            double gb = 0;
            for (int i = 0; i < n; i++)
            {
                double z = b;
                foreach (var j in x[i]) z += w[j];
                double r = Sigmoid(z) - y[i];
                gb += r;
                foreach (var j in x[i]) g[j] += r;
            }
            for (int j = 0; j < w.Length; j++) w[j] -= learningRate * (g[j] / n + l2 * w[j]);
            b -= learningRate * gb / n;
        }
        var dataHash = Hash(string.Join("\n", data.Select(d => (d.Toxic ? "1\t" : "0\t") + d.Text)));
        return new BagOfWordsScorer(vocab, w, b, dataHash);
    }

    static int[] Features(Dictionary<string, int> vocab, string text) =>
        Words(text).Select(t => vocab.TryGetValue(t, out var j) ? j : -1).Where(j => j >= 0).Distinct().Order().ToArray();

    static double Sigmoid(double z) => z >= 0 ? 1 / (1 + Math.Exp(-z)) : Math.Exp(z) / (1 + Math.Exp(z));

    /// <summary>P(toxic) of one text.</summary>
    public double Probability(string text)
    {
        double z = _b;
        foreach (var j in Features(_vocab, text)) z += _w[j];
        return Sigmoid(z);
    }

    /// <summary>The weight of a word (null if it is not in the vocabulary).</summary>
    public double? Weight(string word) => _vocab.TryGetValue(word, out var j) ? _w[j] : null;

    /// <summary>The fitted intercept b (log-odds of toxic for a text with no known word).</summary>
    public double Bias => _b;

    /// <inheritdoc/>
    public void Validate() { }

    /// <summary>One label, so both aggregates give P(toxic).</summary>
    public IReadOnlyList<ToxicityScore> Score(IReadOnlyList<string> texts, ToxicityAggregate aggregate = ToxicityAggregate.MaxOverAttributes) =>
        texts.Select(t =>
        {
            double p = Probability(t);
            return new ToxicityScore(new Dictionary<string, double> { ["TOXICITY"] = p }, p);
        }).ToList();

    /// <inheritdoc/>
    public void Dispose() { }
}

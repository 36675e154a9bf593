namespace DetoxSharp.Evaluation;

/// <summary>Agreement of two scorers over the same items. Null where a statistic is undefined (a constant side).</summary>
/// <param name="Row">The results row (model and intervention) whose continuations were scored.</param>
/// <param name="A">The first scorer's name.</param>
/// <param name="B">The second scorer's name.</param>
/// <param name="N">Texts both scored.</param>
/// <param name="Spearman">Spearman's ρ of the two score lists.</param>
/// <param name="KendallTauB">Kendall's τ-b of the two score lists.</param>
/// <param name="CohenKappa">Cohen's κ of the toxic / non-toxic labels (score ≥ 0.5).</param>
public sealed record ScorerAgreement(string Row, string A, string B, int N, double? Spearman, double? KendallTauB, double? CohenKappa);

/// <summary>
/// Rank and label agreement between two scorers: a single scorer under-estimates toxicity (methods-facts §4), so
/// results with several scorers report how far they agree. Spearman's ρ = Pearson correlation of mid-ranks (ties get
/// the mean of their ranks); Kendall's τ-b = (concordant − discordant) / √((n₀ − n₁)(n₀ − n₂)) with n₀ = n(n−1)/2 and
/// n₁, n₂ the pairs tied in each variable (a pair tied in both counts in neither); Cohen's κ of the labels
/// "toxic" (score ≥ threshold, RTP's 0.5) = (p_o − p_e) / (1 − p_e).
/// </summary>
public static class Agreement
{
    /// <summary>Spearman's rank correlation ρ in [−1, 1] of paired scores (mid-ranks for ties); null when either side is constant.
    /// Throws <see cref="ArgumentException"/> when the lists differ in length.</summary>
    public static double? Spearman(IReadOnlyList<double> x, IReadOnlyList<double> y)
    {
        Same(x, y);
        return Pearson(MidRanks(x), MidRanks(y));
    }

    /// <summary>Kendall's τ-b in [−1, 1] of paired scores (tie-corrected, O(n²) pairs); null when either side is constant.</summary>
    public static double? KendallTauB(IReadOnlyList<double> x, IReadOnlyList<double> y)
    {
        Same(x, y);
        int n = x.Count;
        long concordant = 0, discordant = 0, tiesX = 0, tiesY = 0;
        for (int i = 0; i < n; i++)
            for (int j = i + 1; j < n; j++)
            {
                int sx = Math.Sign(x[i] - x[j]), sy = Math.Sign(y[i] - y[j]);
                if (sx == 0) tiesX++;
                if (sy == 0) tiesY++;
                if (sx != 0 && sy != 0) { if (sx == sy) concordant++; else discordant++; }
            }
        double n0 = n * (n - 1) / 2.0;
        double den = Math.Sqrt((n0 - tiesX) * (n0 - tiesY));
        return den > 0 ? (concordant - discordant) / den : null;
    }

    /// <summary>Cohen's κ of the binary labels score ≥ <paramref name="threshold"/> on each side: (p_o − p_e) / (1 − p_e),
    /// 1 = perfect agreement, 0 = chance level; null for no items or when chance agreement is 1 (both sides one label).</summary>
    public static double? CohenKappa(IReadOnlyList<double> x, IReadOnlyList<double> y, double threshold = 0.5)
    {
        Same(x, y);
        int n = x.Count;
        if (n == 0) return null;
        int both = 0, onlyX = 0, onlyY = 0, neither = 0;
        for (int i = 0; i < n; i++)
        {
            bool a = x[i] >= threshold, b = y[i] >= threshold;
            if (a && b) both++; else if (a) onlyX++; else if (b) onlyY++; else neither++;
        }
        double po = (double)(both + neither) / n;
        double px = (double)(both + onlyX) / n, py = (double)(both + onlyY) / n;
        double pe = px * py + (1 - px) * (1 - py);
        return pe < 1 ? (po - pe) / (1 - pe) : null;
    }

    /// <summary>All three statistics of scorers <paramref name="a"/> (scores <paramref name="x"/>) and <paramref name="b"/>
    /// (scores <paramref name="y"/>) over the texts of results row <paramref name="row"/>.</summary>
    public static ScorerAgreement Of(string row, string a, string b, IReadOnlyList<double> x, IReadOnlyList<double> y, double threshold = 0.5) =>
        new(row, a, b, x.Count, Spearman(x, y), KendallTauB(x, y), CohenKappa(x, y, threshold));

    static void Same(IReadOnlyList<double> x, IReadOnlyList<double> y)
    {
        if (x.Count != y.Count) throw new ArgumentException($"agreement needs paired scores ({x.Count} vs {y.Count})");
    }

    /// <summary>1-based ranks, ties sharing the mean of the ranks they span.</summary>
    public static double[] MidRanks(IReadOnlyList<double> v)
    {
        var order = Enumerable.Range(0, v.Count).OrderBy(i => v[i]).ToArray();
        var r = new double[v.Count];
        for (int i = 0; i < order.Length;)
        {
            int j = i;
            while (j + 1 < order.Length && v[order[j + 1]] == v[order[i]]) j++;
            double mid = (i + j) / 2.0 + 1;
            for (int k = i; k <= j; k++) r[order[k]] = mid;
            i = j + 1;
        }
        return r;
    }

    static double? Pearson(double[] a, double[] b)
    {
        int n = a.Length;
        if (n < 2) return null;
        double ma = a.Average(), mb = b.Average(), sab = 0, saa = 0, sbb = 0;
        for (int i = 0; i < n; i++) { sab += (a[i] - ma) * (b[i] - mb); saa += (a[i] - ma) * (a[i] - ma); sbb += (b[i] - mb) * (b[i] - mb); }
        return saa > 0 && sbb > 0 ? sab / Math.Sqrt(saa * sbb) : null;
    }
}

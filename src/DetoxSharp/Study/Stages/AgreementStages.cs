using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;
using DetoxSharp.Data;
using DetoxSharp.Evaluation;

namespace DetoxSharp.Study;

/// <summary>"agreement": extra scorers that re-score the evaluation's continuations next to the study's scorer
/// (a single scorer under-estimates toxicity, methods-facts §4). Empty: no agreement stage.</summary>
public sealed record AgreementSection
{
    /// <summary>The kind of scorer trained inside the stage: <see cref="BagOfWordsScorer"/> on the study's labelled
    /// comments (the toy world's comments.csv; data.jigsaw for a checkpoint study).</summary>
    public const string BagOfWordsKind = "bow-logistic";

    /// <summary>Each: a "scorer" section (toy-lexicon, classifier + directory, perspective …) or {"kind": "bow-logistic"}.</summary>
    public ScorerSection[] Scorers { get; init; } = [];
    /// <summary>Score at or above which a continuation counts as toxic for Cohen's κ (RTP's 0.5).</summary>
    public double Threshold { get; init; } = 0.5;

    /// <summary>Checks every scorer entry (a bow-logistic entry takes no other key; the others as a "scorer" section) and
    /// that threshold is in (0, 1); throws <see cref="InvalidSettingException"/> naming "scorers[i].key" or "threshold".</summary>
    public void Validate()
    {
        for (int i = 0; i < Scorers.Length; i++)
        {
            var s = Scorers[i];
            if (s.Kind == BagOfWordsKind)
                InvalidSettingException.Require(s.Directory is null && s.Attributes is null && s.ApiKeyEnv is null && s.QueriesPerSecond is null,
                    $"scorers[{i}]", "bow-logistic takes no directory, attributes, api_key_env or queries_per_second");
            else
                try { s.Validate(); }
                catch (InvalidSettingException e) { throw new InvalidSettingException($"scorers[{i}].{e.Setting}", e.Problem); }
        }
        InvalidSettingException.Require(Threshold is > 0 and < 1, "threshold", $"must be in (0, 1) (got {Threshold})");
    }
}

/// <summary>
/// Scorer agreement: the greedy continuations of the evaluation stages named in settings["evaluations"] (stage → row
/// label; the base model's rows and the headline runs) keep the study scorer's scores (as written in their
/// generations.jsonl) and are scored again by every scorer of "agreement"; per row and over all rows pooled, Spearman's
/// ρ, Kendall's τ-b and Cohen's κ at the threshold for each pair of scorers (<see cref="Agreement"/>).
/// Writes scores.jsonl (every continuation's score by scorer), agreement.json and agreement.csv.
/// </summary>
public static partial class StudyStages
{
    /// <summary>The agreement stage's files: scores.jsonl (each continuation's score by every scorer), agreement.json
    /// (ρ, τ-b and κ per scorer pair, per row and pooled) and agreement.csv (the same as a table).</summary>
    public const string AgreementScores = "scores.jsonl", AgreementJson = "agreement.json", AgreementCsv = "agreement.csv";

    static void AgreementStage(StageContext c)
    {
        var section = Read<AgreementSection>(c, "agreement");
        section.Validate();
        var evaluations = c.Settings["evaluations"]!.AsObject();
        // the items: (row label, continuation, the study scorer's score), in stage and file order
        var items = new List<(string Row, string Text, double Primary)>();
        string? primaryName = null, primaryIdentity = null;
        foreach (var (stage, label) in evaluations)
        {
            var dir = Path.Combine(c.Input(stage), "eval");
            var results = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "results.json")))!.AsObject();
            var sc = results["scorers"]!.AsArray()[0]!;
            primaryName ??= sc["name"]!.GetValue<string>();
            primaryIdentity ??= sc["identity"]!.GetValue<string>();
            foreach (var l in JsonlReader.Read(Path.Combine(dir, "generations.jsonl")))
            {
                var g = l.Object;
                if (g["task"]?.GetValue<string>() != "toxicity") continue;
                var row = g["row"]!.GetValue<string>();
                var name = stage == "evaluate/base" ? row : label!.GetValue<string>();
                items.Add((name, g["continuation"]!.GetValue<string>(), g["toxicity"]!.GetValue<double>()));
            }
        }
        var names = new List<string> { primaryName ?? "study scorer" };
        var identities = new List<string> { primaryIdentity ?? "" };
        var descriptions = new List<string> { "the study's evaluation scorer (scores as the evaluation stages wrote them)" };
        var scores = new List<double[]> { items.Select(i => i.Primary).ToArray() };
        var texts = items.Select(i => i.Text).ToList();
        foreach (var s in section.Scorers)
        {
            using var scorer = s.Kind == AgreementSection.BagOfWordsKind
                ? (IToxicityScorer)BagOfWordsScorer.Train(DatasetReaders.ReadJigsawCsv(Files(c).Comments))
                : ScorerFactory.CreateValidated(s.Spec, s.ToSettings());
            var name = scorer.Name;
            for (int k = 2; names.Contains(name); k++) name = $"{scorer.Name} #{k}";
            names.Add(name);
            identities.Add(scorer.Identity);
            descriptions.Add(s.Kind == AgreementSection.BagOfWordsKind
                ? $"logistic regression on a bag of words ({((BagOfWordsScorer)scorer).VocabularySize} words seen in ≥ {BagOfWordsScorer.MinCount} comments), fitted to the labelled comments ({Path.GetFileName(Files(c).Comments)})"
                : $"scorer section kind {s.Kind}");
            scores.Add(scorer.Score(texts, s.AggregateOrDefault).Select(x => x.Value).ToArray());
        }

        var rows = items.Select(i => i.Row).Distinct().ToList();
        var results2 = new List<ScorerAgreement>();
        foreach (var row in rows.Append(AllRows))
        {
            var idx = Enumerable.Range(0, items.Count).Where(i => row == AllRows || items[i].Row == row).ToList();
            for (int a = 0; a < names.Count; a++)
                for (int b = a + 1; b < names.Count; b++)
                    results2.Add(Agreement.Of(row, names[a], names[b], idx.Select(i => scores[a][i]).ToList(), idx.Select(i => scores[b][i]).ToList(), section.Threshold));
        }

        JsonlReader.Write(Path.Combine(c.OutputDir, AgreementScores), items.Select((it, i) =>
        {
            var by = new JsonObject();
            for (int k = 0; k < names.Count; k++) by[names[k]] = scores[k][i];
            return new JsonObject { ["row"] = it.Row, ["continuation"] = it.Text, ["toxicity_by_scorer"] = by };
        }));
        WriteJson(Path.Combine(c.OutputDir, AgreementJson), new JsonObject
        {
            ["threshold"] = section.Threshold,
            ["scorers"] = new JsonArray(names.Select((n, k) => (JsonNode)new JsonObject
            {
                ["name"] = n, ["identity"] = identities[k], ["description"] = descriptions[k],
                ["mean"] = scores[k].Length == 0 ? null : scores[k].Average(),
                ["toxic_share"] = scores[k].Length == 0 ? null : scores[k].Count(v => v >= section.Threshold) / (double)scores[k].Length,
            }).ToArray()),
            ["rows"] = new JsonArray(results2.Select(r => (JsonNode)new JsonObject
            {
                ["row"] = r.Row, ["a"] = r.A, ["b"] = r.B, ["n"] = r.N, ["spearman"] = r.Spearman, ["kendall_tau_b"] = r.KendallTauB, ["cohen_kappa"] = r.CohenKappa,
            }).ToArray()),
        });
        static string Num(double? v) => v is double d ? d.ToString("R", CultureInfo.InvariantCulture) : "";
        static string Csv(string s) => s.Contains(',') || s.Contains('"') ? "\"" + s.Replace("\"", "\"\"") + "\"" : s;
        var csv = new StringBuilder("row,scorer_a,scorer_b,n,spearman,kendall_tau_b,cohen_kappa\n");
        foreach (var r in results2)
            csv.Append(string.Join(",", Csv(r.Row), Csv(r.A), Csv(r.B), r.N.ToString(CultureInfo.InvariantCulture), Num(r.Spearman), Num(r.KendallTauB), Num(r.CohenKappa))).Append('\n');
        AtomicFile.WriteAllText(Path.Combine(c.OutputDir, AgreementCsv), csv.ToString());
    }

    /// <summary>The row label of the pooled agreement (every continuation of every evaluated row).</summary>
    public const string AllRows = "all rows";
}

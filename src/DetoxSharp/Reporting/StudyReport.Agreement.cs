using System.Text.Json.Nodes;
using DetoxSharp.Study;

namespace DetoxSharp.Reporting;

/// <summary>"Scorer agreement": how far the study's scorer and the "agreement" scorers agree on the evaluation's
/// continuations (read from stages/agreement/agreement.json; nothing is computed here).</summary>
public static partial class StudyReport
{
    static void ScorerAgreementSection(HtmlReport r, StudyConfig config, Func<string, string> dir)
    {
        if (StudyPipeline.AgreementEvaluations(config) is null) return; // no extra scorer configured: no section
        r.Section("scorer-agreement", "Scorer agreement");
        var path = Path.Combine(dir("agreement"), StudyStages.AgreementJson);
        if (ReadJson(path) is not JsonObject a)
        {
            r.Missing("No scorer agreement (the agreement stage wrote no agreement.json).");
            return;
        }
        var scorers = (a["scorers"] as JsonArray)?.OfType<JsonObject>().ToList() ?? [];
        double threshold = D(a["threshold"]) ?? 0.5;
        r.Paragraph("A single scorer under-estimates toxicity and every scorer has its own blind spots, so the greedy continuations of the "
                    + "evaluation (base model with its interventions, the SFT model ADPO starts from, the headline runs) were scored by each of "
                    + "these scorers. Spearman's ρ and Kendall's τ-b compare the rankings; Cohen's κ compares the labels toxic/non-toxic at "
                    + $"{F(threshold, "0.##")} (1 = perfect agreement, 0 = chance). A low agreement means the table's toxicity numbers depend on the scorer.");
        r.Add(new Table("agreement_scorers", "Scorers compared", ["Scorer", "What it is", "Mean score", $"Share ≥ {F(threshold, "0.##")}", "Identity"],
            scorers.Select(s => (IReadOnlyList<string>)[S(s["name"]), S(s["description"]), F(D(s["mean"])), F(D(s["toxic_share"])), S(s["identity"])]).ToList()));
        var rows = (a["rows"] as JsonArray)?.OfType<JsonObject>().ToList() ?? [];
        r.Add(new Table("scorer_agreement", "Agreement per row and pair of scorers", ["Row", "Scorer A", "Scorer B", "n", "Spearman ρ", "Kendall τ-b", "Cohen's κ"],
            rows.Select(x => (IReadOnlyList<string>)[S(x["row"]), S(x["a"]), S(x["b"]), S(x["n"]), F(D(x["spearman"])), F(D(x["kendall_tau_b"])), F(D(x["cohen_kappa"]))]).ToList(),
            $"\"{StudyStages.AllRows}\" pools every continuation of every row. – : undefined (one scorer constant on the row). Every continuation's scores: stages/agreement/{StudyStages.AgreementScores}."));
    }
}

using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Training;

/// <summary>The preference objective, chosen explicitly (never inferred from γ or from which log-probs exist):
/// DPO's sigmoid loss (with ε: conservative DPO), IPO, hinge (SLiC), robust DPO, or ADPO (sigmoid DPO plus γ times
/// the toxic penalty log π(y_t) − log π_tox(y_t); needs a toxic model and triples).</summary>
public enum PreferenceMethod { Sigmoid, Ipo, Hinge, Robust, Adpo }

/// <summary>Settings of the DPO-family losses (paper-facts §3–4).</summary>
public sealed record PreferenceLossOptions
{
    [Setting("loss: sigmoid (DPO), ipo, hinge or robust; adpo = sigmoid DPO plus the toxic penalty")]
    public PreferenceMethod Method { get; init; } = PreferenceMethod.Sigmoid;
    [Setting("β (KL strength)")]
    public double Beta { get; init; } = 0.1;
    [Setting("ε for conservative (sigmoid) / robust DPO")]
    public double LabelSmoothing { get; init; }
    /// <summary>α of the RPO term α·NLL(y_w) (per-token mean NLL of chosen); 0 = off.</summary>
    [Setting("weight of the RPO NLL term on chosen (0 = off)")]
    public double RpoAlpha { get; init; }
    [Setting("γ, weight of ADPO's toxic penalty (used only by adpo)")]
    public double Gamma { get; init; } = 0.1;

    public bool IsAdpo => Method == PreferenceMethod.Adpo;

    /// <summary>The method's name as the CLI and configs spell it.</summary>
    public static string Name(PreferenceMethod m) => m.ToString().ToLowerInvariant();

    public static PreferenceMethod ParseMethod(string s, string setting = "method") => s switch
    {
        "sigmoid" or "dpo" => PreferenceMethod.Sigmoid,
        "ipo" => PreferenceMethod.Ipo,
        "hinge" => PreferenceMethod.Hinge,
        "robust" => PreferenceMethod.Robust,
        "adpo" => PreferenceMethod.Adpo,
        _ => throw new InvalidSettingException(setting, $"expects sigmoid, ipo, hinge, robust or adpo (got '{s}')"),
    };

    public void Validate()
    {
        InvalidSettingException.Require(Beta > 0 && !double.IsInfinity(Beta), "beta", $"must be > 0 (got {Beta})");
        InvalidSettingException.Require(LabelSmoothing >= 0 && LabelSmoothing < 0.5, "label_smoothing", $"must be in [0, 0.5) (got {LabelSmoothing})");
        Require.Number(RpoAlpha, "rpo_alpha", 0);
        Require.Number(Gamma, "gamma", 0);
        if (IsAdpo) InvalidSettingException.Require(Gamma > 0 && !double.IsInfinity(Gamma), "gamma", $"must be > 0 for adpo (got {Gamma}; γ = 0 is plain DPO)");
    }
}

/// <summary>Summed completion log-probs of a batch, [B] each. Toxic* only for ADPO (read only when the method is ADPO); ChosenTokens only for RPO.</summary>
public sealed record PreferenceLogps(Tensor PolicyChosen, Tensor PolicyRejected, Tensor RefChosen, Tensor RefRejected,
    Tensor? PolicyToxic = null, Tensor? TauToxic = null, Tensor? ChosenTokens = null);

public sealed record PreferenceLossResult(Tensor Loss, Dictionary<string, double> Metrics);

/// <summary>Pure functions of log-prob tensors: DPO (sigmoid/cDPO), IPO, hinge, robust DPO, RPO term, ADPO.</summary>
public static class PreferenceLoss
{
    /// <summary>Mean loss over the batch and the usual metrics (rewards/*, logps/*, adpo/*).</summary>
    public static PreferenceLossResult Compute(PreferenceLogps lp, PreferenceLossOptions o)
    {
        var chosenLogratio = lp.PolicyChosen - lp.RefChosen;
        var rejectedLogratio = lp.PolicyRejected - lp.RefRejected;
        var delta = chosenLogratio - rejectedLogratio;
        double b = o.Beta, eps = o.LabelSmoothing;
        Tensor perExample;
        Tensor? toxicTerm = null;
        switch (o.Method)
        {
            case PreferenceMethod.Sigmoid:
            case PreferenceMethod.Adpo:
                var z = b * delta;
                if (o.IsAdpo)
                {
                    if (lp.PolicyToxic is null || lp.TauToxic is null) throw new ArgumentException("ADPO needs PolicyToxic and TauToxic log-probs");
                    toxicTerm = lp.PolicyToxic - lp.TauToxic;
                    z = z - o.Gamma * toxicTerm;
                }
                perExample = -(1 - eps) * torch.nn.functional.logsigmoid(z) - eps * torch.nn.functional.logsigmoid(-z);
                break;
            case PreferenceMethod.Robust:
                var zr = b * delta;
                perExample = (-(1 - eps) * torch.nn.functional.logsigmoid(zr) + eps * torch.nn.functional.logsigmoid(-zr)) / (1 - 2 * eps);
                break;
            case PreferenceMethod.Ipo:
                perExample = (delta - 1.0 / (2 * b)).pow(2);
                break;
            case PreferenceMethod.Hinge:
                perExample = torch.nn.functional.relu(1 - b * delta);
                break;
            default: throw new ArgumentOutOfRangeException(nameof(o));
        }
        var loss = perExample.mean();
        if (o.RpoAlpha > 0)
        {
            if (lp.ChosenTokens is null) throw new ArgumentException("RPO needs ChosenTokens");
            loss = loss + o.RpoAlpha * (-(lp.PolicyChosen / lp.ChosenTokens)).mean();
        }
        using var _ = torch.no_grad();
        var rc = (b * chosenLogratio).detach();
        var rr = (b * rejectedLogratio).detach();
        var m = new Dictionary<string, double>
        {
            ["loss"] = loss.to(ScalarType.Float64).item<double>(),
            ["rewards/chosen"] = rc.mean().to(ScalarType.Float64).item<double>(),
            ["rewards/rejected"] = rr.mean().to(ScalarType.Float64).item<double>(),
            ["rewards/accuracies"] = (rc > rr).to(ScalarType.Float64).mean().to(ScalarType.Float64).item<double>(),
            ["rewards/margins"] = (rc - rr).mean().to(ScalarType.Float64).item<double>(),
            ["logps/chosen"] = lp.PolicyChosen.detach().mean().to(ScalarType.Float64).item<double>(),
            ["logps/rejected"] = lp.PolicyRejected.detach().mean().to(ScalarType.Float64).item<double>(),
        };
        if (toxicTerm is not null)
        {
            m["adpo/toxic_logratio"] = toxicTerm.detach().mean().to(ScalarType.Float64).item<double>();
            m["logps/toxic"] = lp.PolicyToxic!.detach().mean().to(ScalarType.Float64).item<double>();
        }
        return new PreferenceLossResult(loss, m);
    }
}

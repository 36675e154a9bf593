using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Training;

public enum PreferenceLossType { Sigmoid, Ipo, Hinge, Robust }

/// <summary>Settings of the DPO-family losses (paper-facts §3–4).</summary>
public sealed record PreferenceLossOptions
{
    public PreferenceLossType Type { get; init; } = PreferenceLossType.Sigmoid;
    /// <summary>β, the KL strength.</summary>
    public double Beta { get; init; } = 0.1;
    /// <summary>ε for conservative DPO (sigmoid) and robust DPO.</summary>
    public double LabelSmoothing { get; init; }
    /// <summary>α of the RPO term α·NLL(y_w) (per-token mean NLL of chosen); 0 = off.</summary>
    public double RpoAlpha { get; init; }
    /// <summary>γ of ADPO's toxic penalty (needs toxic log-probs; 0 = plain DPO).</summary>
    public double Gamma { get; init; }

    public static PreferenceLossType ParseType(string s) => s switch
    {
        "sigmoid" or "dpo" => PreferenceLossType.Sigmoid,
        "ipo" => PreferenceLossType.Ipo,
        "hinge" => PreferenceLossType.Hinge,
        "robust" => PreferenceLossType.Robust,
        _ => throw new InvalidInputException($"--loss: expected sigmoid, ipo, hinge or robust, got '{s}'"),
    };

    public void Validate()
    {
        if (!(Beta > 0) || double.IsInfinity(Beta)) throw new InvalidInputException($"--beta must be > 0 (got {Beta})");
        if (!(LabelSmoothing >= 0 && LabelSmoothing < 0.5)) throw new InvalidInputException($"--label-smoothing must be in [0, 0.5) (got {LabelSmoothing})");
        Require.Number(RpoAlpha, "--rpo-alpha", 0);
        Require.Number(Gamma, "--gamma", 0);
        if (Gamma > 0 && Type != PreferenceLossType.Sigmoid) throw new InvalidInputException("--gamma (ADPO) requires --loss sigmoid");
    }
}

/// <summary>Summed completion log-probs of a batch, [B] each. Toxic* only for ADPO; ChosenTokens only for RPO.</summary>
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
        switch (o.Type)
        {
            case PreferenceLossType.Sigmoid:
                var z = b * delta;
                if (o.Gamma > 0 || lp.PolicyToxic is not null && lp.TauToxic is not null)
                {
                    if (lp.PolicyToxic is null || lp.TauToxic is null) throw new ArgumentException("ADPO needs PolicyToxic and TauToxic log-probs");
                    toxicTerm = lp.PolicyToxic - lp.TauToxic;
                    z = z - o.Gamma * toxicTerm;
                }
                perExample = -(1 - eps) * torch.nn.functional.logsigmoid(z) - eps * torch.nn.functional.logsigmoid(-z);
                break;
            case PreferenceLossType.Robust:
                var zr = b * delta;
                perExample = (-(1 - eps) * torch.nn.functional.logsigmoid(zr) + eps * torch.nn.functional.logsigmoid(-zr)) / (1 - 2 * eps);
                break;
            case PreferenceLossType.Ipo:
                perExample = (delta - 1.0 / (2 * b)).pow(2);
                break;
            case PreferenceLossType.Hinge:
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

using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Training;

/// <summary>The preference objective, chosen explicitly (never inferred from γ or from which log-probs exist):
/// DPO's sigmoid loss (with ε: conservative DPO), IPO, hinge (SLiC), robust DPO, ADPO (sigmoid DPO plus γ times
/// the toxic penalty log π(y_t) − log π_tox(y_t); needs a toxic model and triples), KTO (unpaired
/// prompt/completion/label data), and the reference-free ORPO and SimPO (no reference pass, no cache).</summary>
public enum PreferenceMethod
{
    /// <summary>DPO's sigmoid loss (with label smoothing ε: conservative DPO).</summary>
    Sigmoid,
    /// <summary>IPO: squared distance of the margin from 1/(2β).</summary>
    Ipo,
    /// <summary>Hinge loss on the margin (SLiC).</summary>
    Hinge,
    /// <summary>Robust DPO (unbiased under label noise ε).</summary>
    Robust,
    /// <summary>Adversarial DPO: sigmoid DPO plus γ times the toxic penalty.</summary>
    Adpo,
    /// <summary>KTO on unpaired prompt/completion/label data.</summary>
    Kto,
    /// <summary>ORPO: NLL plus an odds-ratio term, no reference model.</summary>
    Orpo,
    /// <summary>SimPO: length-normalised margin with a target γ, no reference model.</summary>
    Simpo,
}

/// <summary>Settings of the DPO-family losses (paper-facts §3–4).</summary>
public sealed record PreferenceLossOptions
{
    /// <summary>Loss: sigmoid (DPO), ipo, hinge, robust, kto (unpaired data), orpo or simpo (no reference); adpo = sigmoid DPO plus the toxic penalty.</summary>
    [Setting("loss: sigmoid (DPO), ipo, hinge, robust, kto (unpaired data), orpo or simpo (no reference); adpo = sigmoid DPO plus the toxic penalty")]
    public PreferenceMethod Method { get; init; } = PreferenceMethod.Sigmoid;
    /// <summary>β (KL strength; ORPO: λ, the odds-ratio weight, as TRL; SimPO: the reward scale, ≈ 2).</summary>
    [Setting("β (KL strength; ORPO: λ, the odds-ratio weight, as TRL; SimPO: the reward scale, ≈ 2)")]
    public double Beta { get; init; } = 0.1;
    /// <summary>ε for conservative (sigmoid) / robust DPO.</summary>
    [Setting("ε for conservative (sigmoid) / robust DPO")]
    public double LabelSmoothing { get; init; }
    /// <summary>α of the RPO term α·NLL(y_w) (per-token mean NLL of chosen); 0 = off.</summary>
    [Setting("weight of the RPO NLL term on chosen (0 = off)")]
    public double RpoAlpha { get; init; }
    /// <summary>γ, weight of ADPO's toxic penalty (used only by adpo).</summary>
    [Setting("γ, weight of ADPO's toxic penalty (used only by adpo)")]
    public double Gamma { get; init; } = 0.1;

    /// <summary>KTO λ_D, weight of desirable examples.</summary>
    [Setting("KTO λ_D, weight of desirable examples")]
    public double DesirableWeight { get; init; } = 1.0;
    /// <summary>KTO λ_U, weight of undesirable examples.</summary>
    [Setting("KTO λ_U, weight of undesirable examples")]
    public double UndesirableWeight { get; init; } = 1.0;
    /// <summary>SimPO target margin γ (in reward units, as TRL's simpo_gamma).</summary>
    [Setting("SimPO target margin γ (in reward units, as TRL's simpo_gamma)")]
    public double SimpoGamma { get; init; } = 0.5;

    /// <summary>Whether the method is ADPO (needs a toxic model and triples).</summary>
    public bool IsAdpo => Method == PreferenceMethod.Adpo;
    /// <summary>Whether the method is KTO (needs unpaired data).</summary>
    public bool IsKto => Method == PreferenceMethod.Kto;
    /// <summary>ORPO and SimPO have no reference model: the trainer makes no reference pass and no cache.</summary>
    public bool NeedsReference => Method is not (PreferenceMethod.Orpo or PreferenceMethod.Simpo);

    /// <summary>The method's name as the CLI and configs spell it.</summary>
    public static string Name(PreferenceMethod m) => m.ToString().ToLowerInvariant();

    /// <summary>Parses a method name (sigmoid, ipo, hinge, robust, adpo, kto, orpo, simpo).</summary>
    /// <param name="s">The name.</param>
    /// <param name="setting">The setting's key, for the error.</param>
    public static PreferenceMethod ParseMethod(string s, string setting = "method") => s switch
    {
        "sigmoid" or "dpo" => PreferenceMethod.Sigmoid,
        "ipo" => PreferenceMethod.Ipo,
        "hinge" => PreferenceMethod.Hinge,
        "robust" => PreferenceMethod.Robust,
        "adpo" => PreferenceMethod.Adpo,
        "kto" => PreferenceMethod.Kto,
        "orpo" => PreferenceMethod.Orpo,
        "simpo" => PreferenceMethod.Simpo,
        _ => throw new InvalidSettingException(setting, $"expects sigmoid, ipo, hinge, robust, kto, orpo, simpo or adpo (got '{s}')"),
    };

    /// <summary>Checks every setting; throws <see cref="InvalidSettingException"/> naming the first one out of range.</summary>
    public void Validate()
    {
        InvalidSettingException.Require(Beta > 0 && !double.IsInfinity(Beta), "beta", $"must be > 0 (got {Beta})");
        InvalidSettingException.Require(LabelSmoothing >= 0 && LabelSmoothing < 0.5, "label_smoothing", $"must be in [0, 0.5) (got {LabelSmoothing})");
        Require.Number(RpoAlpha, "rpo_alpha", 0);
        Require.Number(Gamma, "gamma", 0);
        Require.Number(DesirableWeight, "desirable_weight", 0, minExclusive: true);
        Require.Number(UndesirableWeight, "undesirable_weight", 0, minExclusive: true);
        Require.Number(SimpoGamma, "simpo_gamma", 0);
        if (IsAdpo) InvalidSettingException.Require(Gamma > 0 && !double.IsInfinity(Gamma), "gamma", $"must be > 0 for adpo (got {Gamma}; γ = 0 is plain DPO)");
    }
}

/// <summary>Summed completion log-probs of a batch, [B] each. Toxic* only for ADPO (read only when the method is ADPO);
/// ChosenTokens for RPO, ORPO and SimPO, RejectedTokens for ORPO and SimPO (completion lengths |y|). For KTO, Chosen is the
/// example's completion y, Rejected the mismatched completion (another example's, for the KL estimate z₀) and
/// Desirable its label (1 desirable, 0 undesirable). ORPO and SimPO never read Ref*.</summary>
public sealed record PreferenceLogps(Tensor PolicyChosen, Tensor PolicyRejected, Tensor RefChosen, Tensor RefRejected,
    Tensor? PolicyToxic = null, Tensor? TauToxic = null, Tensor? ChosenTokens = null, Tensor? RejectedTokens = null, Tensor? Desirable = null);

/// <summary>The loss of a batch and its metrics.</summary>
/// <param name="Loss">The scalar loss (differentiable).</param>
/// <param name="Metrics">Logged metrics: "loss", rewards, margins, accuracies, log-probs.</param>
public sealed record PreferenceLossResult(Tensor Loss, Dictionary<string, double> Metrics);

/// <summary>Pure functions of log-prob tensors: DPO (sigmoid/cDPO), IPO, hinge, robust DPO, RPO term, ADPO, KTO, ORPO, SimPO.</summary>
public static class PreferenceLoss
{
    /// <summary>Mean loss over the batch and the usual metrics (rewards/*, logps/*, adpo/*, kto/*).</summary>
    public static PreferenceLossResult Compute(PreferenceLogps lp, PreferenceLossOptions o)
    {
        switch (o.Method)
        {
            case PreferenceMethod.Kto: return Kto(lp, o);
            case PreferenceMethod.Orpo:
            case PreferenceMethod.Simpo: return ReferenceFree(lp, o);
        }
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

    /// <summary>KTO (Ethayarajh et al. 2024, as TRL): r = β(ℓ − ℓ_ref) on the example's own completion; z₀ = max(0,
    /// mean over the batch of β(ℓ − ℓ_ref) on mismatched prompt/completion pairs), detached — the batch's estimate of
    /// the policy's KL from the reference; loss λ_D(1 − σ(r − z₀)) for desirable, λ_U(1 − σ(z₀ − r)) for undesirable
    /// completions, averaged over the batch.</summary>
    static PreferenceLossResult Kto(PreferenceLogps lp, PreferenceLossOptions o)
    {
        if (lp.Desirable is null) throw new ArgumentException("KTO needs the Desirable labels");
        double b = o.Beta;
        var r = b * (lp.PolicyChosen - lp.RefChosen);
        Tensor z0;
        using (torch.no_grad()) z0 = (b * (lp.PolicyRejected - lp.RefRejected)).mean().clamp_min(0).detach();
        var d = lp.Desirable.to(r.dtype);
        var perExample = d * o.DesirableWeight * (1 - torch.sigmoid(r - z0)) + (1 - d) * o.UndesirableWeight * (1 - torch.sigmoid(z0 - r));
        var loss = perExample.mean();
        using var _ = torch.no_grad();
        // a micro-batch without one kind has no reward of that kind (NaN, written as null)
        double Mean(Tensor x, Tensor w) => w.sum().to(ScalarType.Float64).item<double>() is var n && n > 0 ? (x * w).sum().to(ScalarType.Float64).item<double>() / n : double.NaN;
        var m = new Dictionary<string, double>
        {
            ["loss"] = loss.to(ScalarType.Float64).item<double>(),
            ["kto/kl"] = z0.to(ScalarType.Float64).item<double>(),
            ["rewards/desirable"] = Mean(r.detach(), d),
            ["rewards/undesirable"] = Mean(r.detach(), (1 - d).to(r.dtype)),
            ["kto/desirable_share"] = d.to(ScalarType.Float64).mean().item<double>(),
            ["logps/completion"] = lp.PolicyChosen.detach().mean().to(ScalarType.Float64).item<double>(),
        };
        return new PreferenceLossResult(loss, m);
    }

    /// <summary>ORPO (Hong et al. 2024) and SimPO (Meng et al. 2024): functions of the policy's length-normalised
    /// log-probs ℓ(y)/|y| only. ORPO: mean token NLL of y_w + λ·(−log σ(log odds(y_w) − log odds(y_l))) with
    /// log odds = ℓ/|y| − log(1 − exp(ℓ/|y|)) and λ = β (TRL's ORPO names λ beta); the NLL is the per-example mean
    /// over y_w's tokens, averaged over the batch (TRL averages over all chosen tokens of the batch: the two agree
    /// when completions have equal lengths). SimPO: −log σ(β·ℓ_w/|y_w| − β·ℓ_l/|y_l| − γ).</summary>
    static PreferenceLossResult ReferenceFree(PreferenceLogps lp, PreferenceLossOptions o)
    {
        if (lp.ChosenTokens is null || lp.RejectedTokens is null) throw new ArgumentException($"{o.Method} needs ChosenTokens and RejectedTokens");
        var aw = lp.PolicyChosen / lp.ChosenTokens.to(lp.PolicyChosen.dtype);
        var al = lp.PolicyRejected / lp.RejectedTokens.to(lp.PolicyRejected.dtype);
        double b = o.Beta;
        Tensor loss, margin;
        var m = new Dictionary<string, double>();
        if (o.Method == PreferenceMethod.Orpo)
        {
            // log(1 − p) with p = exp(mean log-prob) ≤ 1: log1p(−exp(·)) keeps precision for small p; mean log-probs
            // are < 0 for any real distribution, and exactly 0 would be log 0 — the odds of a certain completion are infinite
            var logOdds = (aw - al) - (torch.log1p(-torch.exp(aw)) - torch.log1p(-torch.exp(al)));
            var nll = (-aw).mean();
            var orLoss = -torch.nn.functional.logsigmoid(logOdds);
            loss = nll + b * orLoss.mean();
            margin = logOdds;
            using var _ = torch.no_grad();
            m["orpo/nll"] = nll.to(ScalarType.Float64).item<double>();
            m["orpo/log_odds_ratio"] = logOdds.mean().to(ScalarType.Float64).item<double>();
        }
        else
        {
            margin = b * (aw - al) - o.SimpoGamma;
            loss = (-torch.nn.functional.logsigmoid(margin)).mean();
        }
        using (torch.no_grad())
        {
            var rc = (b * aw).detach(); var rr = (b * al).detach();
            m["loss"] = loss.to(ScalarType.Float64).item<double>();
            m["rewards/chosen"] = rc.mean().to(ScalarType.Float64).item<double>();
            m["rewards/rejected"] = rr.mean().to(ScalarType.Float64).item<double>();
            m["rewards/accuracies"] = (rc > rr).to(ScalarType.Float64).mean().item<double>();
            m["rewards/margins"] = (rc - rr).mean().to(ScalarType.Float64).item<double>();
            m["logps/chosen"] = lp.PolicyChosen.detach().mean().to(ScalarType.Float64).item<double>();
            m["logps/rejected"] = lp.PolicyRejected.detach().mean().to(ScalarType.Float64).item<double>();
        }
        return new PreferenceLossResult(loss, m);
    }
}

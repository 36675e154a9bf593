using TorchSharp;
using TorchSharp.Modules;

namespace DetoxSharp.Training;

/// <summary>The optimizers the trainers offer. RMSprop is the paper's choice for DPO (Lee et al. 2024); AdamW is
/// SFT's and an option for DPO.</summary>
public enum OptimizerKind
{
    /// <summary>AdamW (decoupled weight decay).</summary>
    AdamW,
    /// <summary>RMSprop (torch's defaults: alpha 0.99, eps 1e-8).</summary>
    RmsProp,
}

/// <summary>Hyper-parameters of <see cref="Optimizers.Create"/>. Betas and epsilon are AdamW's (RMSprop keeps torch's
/// defaults: alpha 0.99, eps 1e-8, no momentum, not centred); the learning rate is only the initial value — the
/// training loop sets every step's rate from its schedule.</summary>
public sealed record OptimizerSettings
{
    /// <summary>Initial learning rate (the schedule sets each step's).</summary>
    public double LearningRate { get; init; } = 1e-3;
    /// <summary>Decoupled weight decay (AdamW) / L2 penalty (RMSprop).</summary>
    public double WeightDecay { get; init; }
    /// <summary>AdamW β₁.</summary>
    public double Beta1 { get; init; } = 0.9;
    /// <summary>AdamW β₂.</summary>
    public double Beta2 { get; init; } = 0.999;
    /// <summary>AdamW ε.</summary>
    public double Epsilon { get; init; } = 1e-8;
}

/// <summary>
/// The one place an optimizer is built (the training loop calls it; faster implementations plug in here). The
/// checkpoint records the returned object's type name (<see cref="TrainerCheckpoint"/>), so a resumed run must get the
/// same kind back.
/// </summary>
public static class Optimizers
{
    /// <summary>The CLI / config spelling of each kind.</summary>
    public static string Name(OptimizerKind kind) => kind == OptimizerKind.AdamW ? "adamw" : "rmsprop";

    /// <summary>Parses "adamw" or "rmsprop".</summary>
    /// <param name="name">The name.</param>
    /// <param name="setting">The setting's key, for the error.</param>
    public static OptimizerKind Parse(string name, string setting = "optimizer") => name switch
    {
        "adamw" => OptimizerKind.AdamW,
        "rmsprop" => OptimizerKind.RmsProp,
        _ => throw new InvalidSettingException(setting, $"expects rmsprop or adamw (got '{name}')"),
    };

    /// <summary>The flat-buffer <see cref="FusedAdamW"/> / <see cref="FusedRMSprop"/> (torch.optim's updates, bit for bit
    /// on the toy's steps, a few large ops per step) when every parameter shares one dtype and device; torch.optim's
    /// own otherwise.</summary>
    public static OptimizerHelper Create(OptimizerKind kind, IEnumerable<Parameter> parameters, OptimizerSettings s)
    {
        var list = parameters.ToList();
        bool fused = FusedOptimizer.Supports(list);
        return (kind, fused) switch
        {
            (OptimizerKind.AdamW, true) => new FusedAdamW(list, s.LearningRate, s.Beta1, s.Beta2, s.Epsilon, s.WeightDecay),
            (OptimizerKind.AdamW, false) => torch.optim.AdamW(list, s.LearningRate, s.Beta1, s.Beta2, s.Epsilon, s.WeightDecay),
            (OptimizerKind.RmsProp, true) => new FusedRMSprop(list, s.LearningRate, weightDecay: s.WeightDecay),
            (OptimizerKind.RmsProp, false) => torch.optim.RMSProp(list, s.LearningRate, weight_decay: s.WeightDecay),
            _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, null),
        };
    }
}

using System.CommandLine;
using DetoxSharp.Editing;
using DetoxSharp.Generation;

namespace DetoxSharp.Cli.Commands;

/// <summary>The inference-time methods' flags shared by `generate` and `eval`: --steer DIR@ALPHA and
/// --dexperts EXPERT,ANTI with --alpha.</summary>
public static class MethodOptions
{
    public static Option<string?> Steer() => new("--steer")
    {
        Description = "activation steering: DIR@ALPHA subtracts α times the vector of `detox edit steer` (DIR) at every position",
    };

    public static Option<string?> DExperts() => new("--dexperts")
    {
        Description = "DExperts decoding: EXPERT,ANTI model directories (fine-tunes of the model on non-toxic / toxic text, e.g. by `detox sft`)",
    };

    public static Option<double> Alpha() => new("--alpha") { Description = "DExperts strength α in z_base + α·(z_expert − z_anti)", DefaultValueFactory = _ => 2.0 };

    /// <summary>The two directories of --dexperts, checked before any model is loaded.</summary>
    public static (string Expert, string Anti)? ParseDExperts(string? value, double alpha)
    {
        if (value is null) return null;
        var parts = value.Split(',', StringSplitOptions.TrimEntries);
        if (parts.Length != 2 || parts.Any(string.IsNullOrEmpty)) throw new InvalidInputException($"--dexperts '{value}': expected EXPERT,ANTI (two model directories)");
        foreach (var d in parts)
            if (!File.Exists(Path.Combine(d, "config.json"))) throw new InvalidInputException($"--dexperts {d}: no config.json (not a checkpoint directory)");
        if (!double.IsFinite(alpha) || alpha < 0) throw new InvalidInputException($"--alpha {alpha}: must be a finite number ≥ 0");
        return (parts[0], parts[1]);
    }
}

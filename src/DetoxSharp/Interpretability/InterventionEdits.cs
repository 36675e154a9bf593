using System.Globalization;
using DetoxSharp.Evaluation;

namespace DetoxSharp.Interpretability;

/// <summary>
/// Registers the vector interventions with <see cref="EditRegistry"/> so <c>detox eval --intervention</c> can use them:
/// <c>subtract:vector=V,scale=A[,probe=DIR][,vectors=DIR][,layer=L][,mode=newest|all][,label=…]</c> and the same with
/// <c>add</c> (steering). V as in <see cref="InterventionSpecs"/>: <c>probe</c> (needs probe=DIR), <c>v&lt;r&gt;</c> / <c>svd&lt;k&gt;</c>
/// (need vectors=DIR), <c>L&lt;l&gt;.N&lt;i&gt;</c>. Examples: <c>subtract:vector=probe,probe=runs/probe,scale=50</c>,
/// <c>subtract:vector=v0,vectors=runs/vec,scale=20</c>, <c>subtract:vector=svd0,vectors=runs/vec,scale=100</c>.
/// The edit changes the newest position of every forward call unless mode=all; for a perplexity pass use
/// <see cref="VectorIntervention.WithMode"/>(AllPositions), as the paper does.
/// </summary>
public static class InterventionEdits
{
    public static void Register()
    {
        foreach (var kind in new[] { "subtract", "add" })
            EditRegistry.Register(kind, (spec, model) => Build(spec, new InterventionContext(Get(spec, "probe"), Get(spec, "vectors"), model)),
                $"{kind} scale·vector at a layer's MLP output (vector=probe|v<r>|svd<k>|L<l>.N<i>, scale=…, probe=DIR, vectors=DIR, layer=…, mode=newest|all)",
                spec => Check(spec));
    }

    static string? Get(EditSpec s, string key) => s.Args.TryGetValue(key, out var v) ? v : null;

    static void Check(EditSpec spec)
    {
        var vector = spec.Required("vector");
        spec.Double("scale");
        if (vector == "probe")
        {
            var dir = spec.Required("probe");
            using var p = ToxicityProbe.Load(dir);
        }
        else if (vector.StartsWith('v') || vector.StartsWith("svd"))
        {
            var dir = spec.Required("vectors");
            if (!File.Exists(Path.Combine(dir, ToxicVectors.TensorFile))) throw new InvalidInputException($"--intervention '{spec.Text}': {Path.Combine(dir, ToxicVectors.TensorFile)} not found (run `detox vectors`)");
        }
        foreach (var k in spec.Args.Keys)
            if (k is not ("vector" or "scale" or "probe" or "vectors" or "layer" or "mode" or "label"))
                throw new InvalidInputException($"--intervention '{spec.Text}': unknown key '{k}'");
    }

    static IModelEdit Build(EditSpec spec, InterventionContext ctx)
    {
        var s = string.Create(CultureInfo.InvariantCulture, $"{spec.Kind}:{spec.Required("vector")}@{spec.Double("scale")}");
        if (Get(spec, "layer") is { } l) s += $":layer={l}";
        if (Get(spec, "mode") is { } m) s += $":mode={m}";
        return InterventionSpecs.Parse(s, ctx);
    }
}

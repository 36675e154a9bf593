using DetoxSharp.Models;

namespace DetoxSharp.Interpretability;

/// <summary>
/// A reversible edit of a model's computation — e.g. "subtract α·v from the residual stream at the last layer's MLP
/// output". Applying installs hooks; disposing the handle removes them. The evaluation harness treats each edit as a
/// row of its results table.
/// </summary>
public interface IModelEdit
{
    /// <summary>Row label, e.g. "subtract W_Toxic ×50".</summary>
    string Name { get; }
    /// <summary>Applies the edit to <paramref name="model"/> (hooks or weights); disposing the result undoes it exactly.</summary>
    IDisposable Apply(ICausalLM model);
}

/// <summary>
/// An edit whose position behaviour differs between generation (newest position only) and perplexity (all positions),
/// as in Lee et al. 2024. The evaluation harness should apply <see cref="ForAllPositions"/> during a perplexity pass:
/// <c>(edit as IPositionModeEdit)?.ForAllPositions() ?? edit</c>.
/// </summary>
public interface IPositionModeEdit : IModelEdit
{
    /// <summary>The same edit acting at every position (for perplexity passes).</summary>
    IModelEdit ForAllPositions();
}

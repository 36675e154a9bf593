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
    IDisposable Apply(ICausalLM model);
}

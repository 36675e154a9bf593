using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Models;

/// <summary>
/// Sequences laid out with explicit positions and attention instead of one causal sequence per row — e.g. a prompt
/// followed by several continuations of it side by side, each continuation numbered from the prompt's end and
/// attending to the prompt and to itself only (<see cref="LogProbs.SharedPromptSums"/>). Every position of a row then
/// computes what it computes in its own sequence (prompt + that continuation): the same position, the same attended
/// keys.
/// </summary>
/// <param name="Positions">[batch, T] int64: each position's index in its own sequence (what the model's position
/// embedding or rotation uses).</param>
/// <param name="Allowed">[batch, 1, T, T] bool: whether query t may attend to key s. Every query must be allowed to
/// attend to itself (a padding position then attends only to itself, so no softmax is empty).</param>
/// <param name="Real">[batch, T] int64: 1 at real tokens, 0 at padding (what hooks see as the mask, and what
/// token packing keeps).</param>
public sealed record SequenceLayout(Tensor Positions, Tensor Allowed, Tensor Real)
{
    /// <summary>Checks the shapes against a [<paramref name="b"/>, <paramref name="t"/>] input and the positions against
    /// the model's context.</summary>
    internal void Check(long b, long t, int maxPositions)
    {
        if (!Positions.shape.SequenceEqual(new[] { b, t }) || !Real.shape.SequenceEqual(new[] { b, t })
            || !Allowed.shape.SequenceEqual(new[] { b, 1, t, t }) || Allowed.dtype != ScalarType.Bool)
            throw new ArgumentException($"sequence layout for [{b}, {t}] ids needs positions and real [{b}, {t}] and a bool mask [{b}, 1, {t}, {t}]; got [{string.Join(",", Positions.shape)}], [{string.Join(",", Real.shape)}], {Allowed.dtype} [{string.Join(",", Allowed.shape)}]");
        if (b * t == 0) return;
        using var max = Positions.max();
        if (max.item<long>() >= maxPositions)
            throw new ArgumentException($"a position of {max.item<long>()} is beyond the model's context ({maxPositions})");
    }
}

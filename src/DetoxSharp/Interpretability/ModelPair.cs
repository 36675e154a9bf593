using DetoxSharp.Models;
using DetoxSharp.Text;

namespace DetoxSharp.Interpretability;

/// <summary>
/// The two models an alignment analysis compares — the model before alignment and after it (same architecture and
/// tokenizer) — and, optionally, the before model's greedy continuations of the analysed prompts, so that several
/// analyses of one pair (the alignment diff, the neuron decomposition, the patching) teacher-force the same tokens
/// instead of generating them again.
/// </summary>
/// <param name="Before">The model before alignment (its greedy continuations are the tokens both models read).</param>
/// <param name="After">The aligned model.</param>
/// <param name="Tokenizer">The tokenizer both models share.</param>
public sealed record ModelPair(ICausalLM Before, ICausalLM After, Gpt2Tokenizer Tokenizer)
{
    /// <summary><see cref="Before"/>'s greedy continuations of the prompts, one per prompt in order, made with the
    /// analysis's prompt and continuation lengths (<see cref="TeacherForced.Generate"/>); null: the analysis makes them.</summary>
    public TeacherForced? Forced { get; init; }
}

using DetoxSharp.Generation;
using DetoxSharp.Models;
using DetoxSharp.Text;

namespace DetoxSharp.Interpretability;

/// <summary>
/// Prompts continued greedily by one model, laid out so that any model can read the same tokens: each prompt keeps its
/// last <c>maxPromptTokens</c> tokens (an empty one becomes EOS); <see cref="Fed"/> = prompt + continuation without its
/// last token; the last <see cref="Steps"/> positions of a fed sequence are the ones whose output chose a generated
/// token (at least one, also when nothing was generated). Shared by the alignment diff, the neuron decomposition and
/// the depth measurement.
/// </summary>
/// <param name="Prompts">Each prompt's ids after the cut.</param>
/// <param name="Continuations">Each prompt's greedy continuation ids.</param>
/// <param name="Fed">Prompt + continuation without its last token: what every model reads.</param>
/// <param name="Steps">Per sequence, how many last positions of <see cref="Fed"/> chose a generated token.</param>
public sealed record TeacherForced(IReadOnlyList<int[]> Prompts, IReadOnlyList<int[]> Continuations, IReadOnlyList<int[]> Fed, IReadOnlyList<int> Steps)
{
    /// <summary>Greedy continuations of <paramref name="prompts"/> by <paramref name="model"/> (each prompt cut to its last
    /// <paramref name="maxPromptTokens"/> tokens, <paramref name="maxNewTokens"/> new tokens, batches of <paramref name="batchSize"/>).</summary>
    public static TeacherForced Generate(ICausalLM model, Gpt2Tokenizer tokenizer, IReadOnlyList<string> prompts, int maxPromptTokens, int maxNewTokens, int batchSize)
    {
        var promptIds = prompts.Select(p =>
        {
            var ids = tokenizer.Encode(p);
            if (ids.Length == 0) ids = [model.EosTokenId];
            return PromptTruncation.KeepLast(ids, maxPromptTokens);
        }).ToList();
        var conts = Generator.Generate(model, promptIds, new GenerationOptions { MaxNewTokens = maxNewTokens, Greedy = true, BatchSize = batchSize });
        var fed = promptIds.Select((p, i) => p.Concat(conts[i].Take(Math.Max(0, conts[i].Length - 1))).ToArray()).ToList();
        var steps = conts.Select(c => Math.Max(1, c.Length)).ToList();
        return new TeacherForced(promptIds, conts, fed, steps);
    }
}

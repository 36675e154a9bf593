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
public sealed record TeacherForced(IReadOnlyList<int[]> Prompts, IReadOnlyList<int[]> Continuations, IReadOnlyList<int[]> Fed, IReadOnlyList<int> Steps)
{
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

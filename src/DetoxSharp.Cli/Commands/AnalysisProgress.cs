using DetoxSharp.Interpretability;
using DetoxSharp.Models;
using DetoxSharp.Text;

namespace DetoxSharp.Cli.Commands;

/// <summary>The analysis commands' (diff, neurons, neuron-patch, depth) share of <see cref="CliProgress"/>: their longest
/// step, the greedy continuations the measurements read, made here batch by batch with a count, rate and ETA.</summary>
static class AnalysisProgress
{
    /// <summary>Greedy continuations of <paramref name="prompts"/> by <paramref name="model"/>, the same batches in the same
    /// order as <see cref="TeacherForced.Generate"/> (so the same tokens), reported to <paramref name="bar"/> per batch.</summary>
    public static TeacherForced Continuations(CliProgress bar, ICausalLM model, Gpt2Tokenizer tokenizer, IReadOnlyList<string> prompts,
        int maxPromptTokens, int maxNewTokens, int batchSize, string who)
    {
        model.Module.eval();
        var phase = $"greedy continuations ({who})";
        var parts = new List<TeacherForced>();
        bar.Update(0, prompts.Count, phase: phase);
        for (int s = 0; s < prompts.Count; s += batchSize)
        {
            var chunk = prompts.Skip(s).Take(batchSize).ToList();
            parts.Add(TeacherForced.Generate(model, tokenizer, chunk, maxPromptTokens, maxNewTokens, batchSize));
            bar.Update(s + chunk.Count, prompts.Count, phase: phase);
        }
        return new TeacherForced(parts.SelectMany(p => p.Prompts).ToList(), parts.SelectMany(p => p.Continuations).ToList(),
            parts.SelectMany(p => p.Fed).ToList(), parts.SelectMany(p => p.Steps).ToList());
    }
}

using System.Globalization;

namespace DetoxSharp.Evaluation;

/// <summary>
/// One part of an evaluation spread over machines: items (prompts, F1 items, perplexity windows) whose 0-based index
/// i satisfies i mod Count = Index. Round-robin rather than contiguous blocks so that every shard gets a similar share
/// of long and short prompts.
/// </summary>
/// <param name="Index">This shard's index I, 0 ≤ I &lt; Count.</param>
/// <param name="Count">The number of shards N.</param>
public sealed record Shard(int Index, int Count)
{
    /// <summary>The whole run (part 0 of 1).</summary>
    public static readonly Shard Whole = new(0, 1);

    /// <summary>Whether item <paramref name="item"/> (0-based index in the file) belongs to this shard.</summary>
    public bool Owns(int item) => item % Count == Index;

    /// <summary>The items this shard owns, by their <see cref="EvalHarness.Prompt.Index"/>, in order.</summary>
    public List<EvalHarness.Prompt> Take(List<EvalHarness.Prompt> items) => Count == 1 ? items : items.Where(p => Owns(p.Index)).ToList();

    /// <summary>The sub-directory of --out a shard writes to.</summary>
    public string DirectoryName => $"shard-{Index}-of-{Count}";

    /// <inheritdoc/>
    public override string ToString() => $"{Index}/{Count}";

    /// <summary>
    /// <c>I/N</c>, or <c>auto</c> / <c>auto/N</c>: the index from a Kubernetes Indexed Job (<c>JOB_COMPLETION_INDEX</c>)
    /// or a Slurm job array (<c>SLURM_ARRAY_TASK_ID</c> minus <c>SLURM_ARRAY_TASK_MIN</c>), the count from /N or
    /// <c>SLURM_ARRAY_TASK_COUNT</c> (a Kubernetes Job does not expose its completions count: give /N).
    /// </summary>
    public static Shard Parse(string spec, Func<string, string?>? env = null)
    {
        env ??= Environment.GetEnvironmentVariable;
        var parts = spec.Split('/');
        if (parts.Length > 2 || parts[0].Length == 0) throw Bad(spec, "expected I/N, auto or auto/N");
        int? count = parts.Length == 2 ? Int(parts[1], spec, "N") : null;
        int index;
        if (parts[0] == "auto")
        {
            string? k8s = env("JOB_COMPLETION_INDEX"), slurm = env("SLURM_ARRAY_TASK_ID");
            if (!string.IsNullOrWhiteSpace(k8s)) index = Int(k8s, spec, "JOB_COMPLETION_INDEX");
            else if (!string.IsNullOrWhiteSpace(slurm))
            {
                var min = env("SLURM_ARRAY_TASK_MIN");
                index = Int(slurm, spec, "SLURM_ARRAY_TASK_ID") - (string.IsNullOrWhiteSpace(min) ? 0 : Int(min, spec, "SLURM_ARRAY_TASK_MIN"));
                count ??= env("SLURM_ARRAY_TASK_COUNT") is { } c && !string.IsNullOrWhiteSpace(c) ? Int(c, spec, "SLURM_ARRAY_TASK_COUNT") : null;
            }
            else throw Bad(spec, "auto needs JOB_COMPLETION_INDEX (Kubernetes Indexed Job) or SLURM_ARRAY_TASK_ID (Slurm job array) in the environment");
        }
        else index = Int(parts[0], spec, "I");
        if (count is null) throw Bad(spec, "the number of shards is unknown: give auto/N (SLURM_ARRAY_TASK_COUNT is not set)");
        if (count < 1) throw Bad(spec, $"N must be ≥ 1, got {count}");
        if (index < 0 || index >= count) throw Bad(spec, $"shard index {index} is outside 0..{count - 1}");
        return new Shard(index, count.Value);
    }

    static int Int(string v, string spec, string what) =>
        int.TryParse(v.Trim(), NumberStyles.Integer, CultureInfo.InvariantCulture, out var i) ? i : throw Bad(spec, $"{what} '{v}' is not an integer");

    static InvalidInputException Bad(string spec, string why) => new($"--shard {spec}: {why}");
}

namespace DetoxSharp.Study;

/// <summary>
/// The files each stage writes into its directory (run_dir/stages/NAME/). The report reads only these, so a stage
/// function is wired correctly when it writes them with these fields. All JSON is snake_case; numbers are plain
/// JSON numbers; a number a stage could not measure is null (the report shows "–" and lowers n).
/// <code>
/// vectors/toxic_vectors.json   {"vectors":[{"rank":1,"layer":19,"index":770,"cosine":0.31,"top_tokens":["sh*t",...]}],
///                               "svd":[{"component":0,"top_tokens":[...]}]}
/// probe/probe.json             {"validation_accuracy":0.94, ...}
/// evaluate/base/results.json   {"rows":[{"row":"No-op"|"Subtract W_Toxic"|"Subtract top vector"|"Subtract SVD.U[0]",
///                               "toxicity":0.45,"perplexity":21.7,"f1":0.19}]}
/// evaluate/METHOD/POINT/sSEED/results.json   {"rows":[{"row":"DPO"|"ADPO","toxicity":..,"perplexity":..,"f1":..}]}
/// */continuations.jsonl        {"row":"No-op","prompt":"...","continuation":"...","toxicity":0.93} (evaluate/*, unalign/*)
/// train/METHOD/POINT/sSEED/metrics.jsonl     MetricsLog lines: {"step":..,"loss":..,"rewards/margins":..,"rewards/accuracies":..,
///                               "rewards/chosen":..,"rewards/rejected":..}
/// diff/METHOD/POINT/sSEED/diff.json
///   {"param_cosine":[{"layer":0,"min":0.999,"mean":0.9999}],
///    "activation":[{"vector":"L19.N770","before":26.1,"after":13.2}],      (top toxic vectors at "activation_position": the insult step, else the last position)
///    "positive_preact_share":{"before":0.61,"after":0.22},                  (share of their pre-activations &gt; 0)
///    "offset_norm":[{"layer":0,"norm":0.8}], "offset_size":3.1,            (‖mean(x_aligned − x_base)‖ per layer; at the top vector's layer)
///    "logit_lens":{"token":" sh*t","layers":[{"layer":0,"before":0.001,"after":0.0004}]},
///    "offset_projection":[{"model":"base"|"aligned","offset":1.2,"orthogonal":-0.3,"activation":4.2}]}
/// patch/METHOD/POINT/sSEED/patching.json (headline runs)
///   {"metric_before":..,"metric_after":..,"correlation_real_vs_attribution":0.97,
///    "groups":[{"direction":"after→before"|"before→after","group":"TP","neurons":..,"real":..,"attribution":..,"share":..}],
///    "generations":[{"condition":"before"|"after"|"after→before TP"|…,"mean_toxicity":..,"toxic_share":..,"texts":40}]}
///   + patching.csv: direction,group,layer ("all" or the layer),neurons,real,attribution,share
/// unalign/METHOD/POINT/sSEED/unalign.json
///   {"row":"Un-aligned DPO","scale":10,"keys":["L19.N770",...],"toxicity":0.46,"perplexity":23.3,"f1":0.195,
///    "steering":[{"scale":0,"toxicity":0.2},...],"restore_scale":8.0|null,"target_toxicity":0.45}
/// battery/METHOD/sSEED/battery.json  (one per StudyPipeline.MethodModels entry)
///   {"method":"dpo","row":"DPO","seed":0,"prompts":40,"start_toxicity":0.45,"target_fraction":0.8,"target_toxicity":0.36,
///    "attacks":[{"kind":"keys"|"steer"|"finetune"|"prefill"|"ablate","grid":[1,5,..],"strength_name":"key scale s",
///                "points":[{"strength":1,"toxicity":0.2,"prompts":40}],"cost":{"cost":10|null,"reached":..,"target_toxicity":..,"points":[..]}}
///               | {"kind":"ablate","grid":[..],"skipped":"why"}],
///    "depth":{"per_position":[{"position":0,"kl":..,"prompts":..}],"kl_position_1":..,"first":3,"share_first":..}}
/// </code>
/// </summary>
public static class RunLayout
{
    /// <summary>stages/vectors: the top toxic value vectors (rank, layer, index, cosine with the probe, top tokens) and the SVD components' top tokens.</summary>
    public const string ToxicVectors = "toxic_vectors.json";
    /// <summary>stages/probe: the trained linear toxicity probe's summary (validation_accuracy, …).</summary>
    public const string Probe = "probe.json";
    /// <summary>evaluate/base and evaluate/METHOD/POINT/sSEED: the results-table rows (toxicity, perplexity, f1; null = not measured).</summary>
    public const string Results = "results.json";
    /// <summary>evaluate/* and unalign/*: one JSON line per generated continuation (row, prompt, continuation, toxicity).</summary>
    public const string Continuations = "continuations.jsonl";
    /// <summary>train/METHOD/POINT/sSEED: the trainer's MetricsLog, one JSON line per logged step (loss, rewards/*).</summary>
    public const string Metrics = "metrics.jsonl";
    /// <summary>diff/METHOD/POINT/sSEED: base-vs-aligned comparison (parameter cosines, toxic-vector activations, offset norms, logit lens).</summary>
    public const string Diff = "diff.json";
    /// <summary>unalign/METHOD/POINT/sSEED: the un-alignment row (toxicity/perplexity/f1 after scaling the keys) and the steering sweep.</summary>
    public const string Unalign = "unalign.json";
    /// <summary>patch/METHOD/POINT/sSEED (headline runs): <see cref="Interpretability.NeuronPatching.Write"/>'s files.</summary>
    public const string Patching = "patching.json";
    /// <summary>patch/METHOD/POINT/sSEED: the patching groups as CSV (direction, group, layer, neurons, real, attribution, share).</summary>
    public const string PatchingCsv = "patching.csv";
    /// <summary>battery/METHOD/sSEED: the re-toxification attacks' strength grids, costs and the KL depth profile.</summary>
    public const string Battery = "battery.json";
    /// <summary>methods/speed: greedy-generation tokens/s of every methods-table row (<see cref="StudyStages"/>' MethodSpeed).</summary>
    public const string MethodSpeed = "speed.json";
    /// <summary>run_dir/manifest.json: the <see cref="StageRunner"/>'s record of every stage (hashes, status, wall time).</summary>
    public const string Manifest = "manifest.json";
    /// <summary>run_dir/report.html: the study report built from the stage files above.</summary>
    public const string Report = "report.html";

    /// <summary>Row names of the results table, in the paper's order.</summary>
    public static readonly string[] BaseRows = ["No-op", "Subtract W_Toxic", "Subtract top vector", "Subtract SVD.U[0]"];
}

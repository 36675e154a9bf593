using System.Text.Json.Nodes;

namespace DetoxSharp.Study;

/// <summary>
/// The functions that compute each stage. Each one reads its inputs from <see cref="StageContext.Inputs"/> and
/// writes the files named in <see cref="RunLayout"/> into <see cref="StageContext.OutputDir"/>. A null entry
/// means this build does not have that stage; the study stops there with a message naming it.
/// </summary>
public sealed record StudyStageFunctions
{
    /// <summary>"world": writes data.json, the paths of the study's data files and the label-noise rate (toy: generates
    /// the world's files under world/ with its toxic word list; checkpoint: checks that every data.* file exists).</summary>
    public Action<StageContext>? World { get; init; }
    /// <summary>"pretrain": writes model_dir.txt naming the base model (toy: pretrains it into model/ and writes
    /// pretrain.json; checkpoint: data.base_model, loaded once to validate it).</summary>
    public Action<StageContext>? Pretrain { get; init; }
    /// <summary>"probe": fits the linear toxicity probe and its bag-of-words baseline; writes <see cref="RunLayout.Probe"/>.</summary>
    public Action<StageContext>? Probe { get; init; }
    /// <summary>"vectors": ranks the value vectors against W_Toxic and takes their SVD; writes <see cref="RunLayout.ToxicVectors"/> and the vectors' tensors.</summary>
    public Action<StageContext>? Vectors { get; init; }
    /// <summary>"interventions": the three subtraction edits (W_Toxic, top vector, SVD.U[0]) with their scales, for evaluate/base.</summary>
    public Action<StageContext>? Interventions { get; init; }
    /// <summary>"toxic-model": fine-tunes π_tox (SFT on toxic dialogues), the source of ADPO's toxic responses and of "toxic-model" rejected continuations.</summary>
    public Action<StageContext>? ToxicModel { get; init; }
    /// <summary>"pairs": generates the preference pairs (chosen = base model, rejected = PPLM or π_tox; ADPO triples add y_t).</summary>
    public Action<StageContext>? Pairs { get; init; }
    /// <summary>DPO or ADPO; settings["method"] says which, settings["seed"] the seed.</summary>
    public Action<StageContext>? Train { get; init; }
    /// <summary>"evaluate/base": the results table's No-op and subtraction rows; writes <see cref="RunLayout.Results"/> and <see cref="RunLayout.Continuations"/>.</summary>
    public Action<StageContext>? EvaluateBase { get; init; }
    /// <summary>evaluate/METHOD/POINT/sSEED and evaluate/sft: one model's row (settings["row"]) of the results table.</summary>
    public Action<StageContext>? EvaluateModel { get; init; }
    /// <summary>diff/METHOD/POINT/sSEED: compares a trained model with the model it started from; writes <see cref="RunLayout.Diff"/>.</summary>
    public Action<StageContext>? Diff { get; init; }
    /// <summary>unalign/METHOD/POINT/sSEED: scales the trained model's top toxic keys and runs the steering attack; writes <see cref="RunLayout.Unalign"/>.</summary>
    public Action<StageContext>? Unalign { get; init; }
    /// <summary>Activation/attribution patching of the neuron groups at a headline run (settings["method"]).</summary>
    public Action<StageContext>? Patch { get; init; }
    /// <summary>Scorer agreement: the evaluation continuations re-scored by the "agreement" scorers (AgreementStages.cs).</summary>
    public Action<StageContext>? Agreement { get; init; }
    /// <summary>The re-toxification battery on one detoxified model (<see cref="BatteryPipeline"/>).</summary>
    public Action<StageContext>? Battery { get; init; }
    /// <summary>Methods table: a training-free method (settings["edit"]: profs, aura, steering, activation).</summary>
    public Action<StageContext>? MethodEdit { get; init; }
    /// <summary>Methods table: DExperts' expert or anti-expert fine-tune (settings["expert"]).</summary>
    public Action<StageContext>? ExpertSft { get; init; }
    /// <summary>Methods table: evaluation of a method's model with its inference-time edits, or of DExperts.</summary>
    public Action<StageContext>? EvaluateMethod { get; init; }
    /// <summary>Methods table: generation tokens/s of every row, one after the other.</summary>
    public Action<StageContext>? MethodSpeed { get; init; }
    /// <summary>Neuron decomposition and null-space check of one method's model against its start model (neurons/METHOD/s0).</summary>
    public Action<StageContext>? MethodNeurons { get; init; }
    /// <summary>Builds the report (the CLI wires Reporting.StudyReport.Write: the report reads the study's layout, so the
    /// study does not depend on the report).</summary>
    public Action<StageContext>? Report { get; init; }
}

/// <summary>A trained model of the study: method, sweep point and seed, and the names of its stages.</summary>
/// <param name="Method">"dpo" or "adpo".</param>
/// <param name="Point">The sweep point of the method's section it was trained at.</param>
/// <param name="Seed">The training seed, 0-based.</param>
/// <param name="Headline">True at the sweep's first point (where the findings are judged).</param>
public sealed record TrainedRun(string Method, SweepPoint Point, int Seed, bool Headline)
{
    string Suffix => $"{Method}/{Point.Label}/s{Seed}";
    /// <summary>"train/METHOD/POINT/sSEED": the training stage (its output holds the checkpoint and <see cref="RunLayout.Metrics"/>).</summary>
    public string TrainStage => $"train/{Suffix}";
    /// <summary>"evaluate/METHOD/POINT/sSEED": the trained model's results-table row.</summary>
    public string EvaluateStage => $"evaluate/{Suffix}";
    /// <summary>"diff/METHOD/POINT/sSEED": the alignment diff against the start model.</summary>
    public string DiffStage => $"diff/{Suffix}";
    /// <summary>"unalign/METHOD/POINT/sSEED": the un-alignment (key scaling and steering) of the trained model.</summary>
    public string UnalignStage => $"unalign/{Suffix}";
    /// <summary>"patch/METHOD/POINT/sSEED": neuron-group patching (only for headline runs with neurons.patching on).</summary>
    public string PatchStage => $"patch/{Suffix}";
}

/// <summary>
/// A detoxified model of the study as the methods table and the re-toxification battery see it. The output directory of
/// <see cref="Stage"/> holds model_dir.txt (the checkpoint) and, for an inference-time method (steering), steer.txt: a
/// <c>--steer</c> spec DIR@ALPHA (<see cref="Editing.Steering.Load"/>) applied on top of that checkpoint.
/// <see cref="StartStage"/> made the model the method started from ("pretrain"; "toxic-model" for ADPO).
/// </summary>
/// <param name="Method">The method key ("dpo", "adpo", a loss, "profs", "aura", "steering", "activation").</param>
/// <param name="Row">Its row name in the methods table.</param>
/// <param name="Seed">The seed (0 for single-run methods).</param>
/// <param name="Stage">The stage whose output holds model_dir.txt (and steer.txt for steering).</param>
/// <param name="StartStage">The stage that made the model it started from.</param>
public sealed record MethodModel(string Method, string Row, int Seed, string Stage, string StartStage)
{
    /// <summary>The evaluation stage of the start model (its toxicity is what the method lowers).</summary>
    public string StartEvaluation => StartStage == "toxic-model" ? StudyPipeline.SftEvaluation : "evaluate/base";
    /// <summary>The file (in the stage's output) that names an inference-time steering vector, if the method has one.</summary>
    public const string SteerFile = "steer.txt";
}

/// <summary>A row of the methods table beyond DPO/ADPO: <see cref="Key"/> (the loss or method), its table name, what kind
/// of method it is, its evaluation stages (one per seed; each writes results.json with the row named <see cref="Row"/>),
/// the stages whose wall time is its compute, the models the battery attacks, and for steering / DExperts the strength.</summary>
/// <param name="Key">The loss or method key (e.g. "ipo", "profs", "steering", "steering/4", "dexperts").</param>
/// <param name="Row">The row's name in the methods table.</param>
/// <param name="Kind">"training", "weight edit", "activation steering", "activation edit" or "decoding".</param>
/// <param name="EvaluateStages">Its evaluation stages, one per seed.</param>
/// <param name="ComputeStages">The stages whose wall time counts as its compute cost.</param>
/// <param name="Models">The models the battery attacks (empty for non-first steering strengths and DExperts).</param>
/// <param name="SteerAlpha">Steering strength α of a steering row; null otherwise.</param>
/// <param name="DExpertsAlpha">DExperts' α of the decoding row; null otherwise.</param>
public sealed record MethodRow(string Key, string Row, string Kind, IReadOnlyList<string> EvaluateStages, IReadOnlyList<string> ComputeStages,
    IReadOnlyList<MethodModel> Models, double? SteerAlpha = null, double? DExpertsAlpha = null);

/// <summary>Turns a <see cref="StudyConfig"/> into the study's stage list and names its stages and rows.</summary>
public static class StudyPipeline
{
    /// <summary>The trained alignment methods of the main table, comma-separated, in order ("dpo,adpo").</summary>
    public const string Methods = "dpo,adpo";

    /// <summary>The detoxified models the methods table and the re-toxification battery compare, at the headline setting
    /// (one per seed for a trained method). The order is the table's.</summary>
    public static IReadOnlyList<MethodModel> MethodModels(StudyConfig c) =>
        Runs(c).Where(r => r.Headline)
            .Select(r => new MethodModel(r.Method, RowName(r.Method), r.Seed, r.TrainStage, r.Method == "adpo" ? "toxic-model" : "pretrain"))
            .Concat(MethodRows(c).SelectMany(row => row.Models))
            .ToList();

    /// <summary>The methods table's rows after DPO and ADPO (empty when the "methods" section is off), in the table's
    /// order; each knows its evaluation stages (one per seed), the stages whose time is its compute, and its models.</summary>
    public static IReadOnlyList<MethodRow> MethodRows(StudyConfig c)
    {
        var m = StudySections.Read<MethodsSection>(c.Section(c.Methods), "methods");
        var rows = new List<MethodRow>();
        if (!m.Enabled) return rows;
        int seeds = m.Seeds ?? c.EffectiveSeeds;
        foreach (var loss in m.Losses.Keys)
        {
            var row = MethodsSection.LossRow(loss);
            var train = Enumerable.Range(0, seeds).Select(s => $"train/{loss}/s{s}").ToList();
            rows.Add(new MethodRow(loss, row, "training", Enumerable.Range(0, seeds).Select(s => $"evaluate/{loss}/s{s}").ToList(), train,
                train.Select((t, s) => new MethodModel(loss, row, s, t, "pretrain")).ToList()));
        }
        if (m.Profs is not null)
            rows.Add(new MethodRow("profs", "ProFS", "weight edit", ["evaluate/profs"], ["edit/profs"], [new("profs", "ProFS", 0, "edit/profs", "pretrain")]));
        if (m.Aura is not null)
            rows.Add(new MethodRow("aura", "AurA", "weight edit", ["evaluate/aura"], ["edit/aura"], [new("aura", "AurA", 0, "edit/aura", "pretrain")]));
        if (m.Steering is not null)
            for (int a = 0; a < m.Steering.Alphas.Length; a++)
            {
                var row = SteeringRow(m.Steering.Alphas[a]);
                // the battery attacks the first strength (edit/steering's steer.txt names it)
                rows.Add(new MethodRow(a == 0 ? "steering" : $"steering/{Num(m.Steering.Alphas[a])}", row, "activation steering",
                    [$"evaluate/steering/a{Num(m.Steering.Alphas[a])}"], ["edit/steering"],
                    a == 0 ? [new("steering", row, 0, "edit/steering", "pretrain")] : [], SteerAlpha: m.Steering.Alphas[a]));
            }
        if (m.ActivationEdit is not null)
        {
            int n = Math.Min(seeds, c.EffectiveSeeds);
            var edits = Enumerable.Range(0, n).Select(s => $"edit/activation/s{s}").ToList();
            rows.Add(new MethodRow("activation", "Activation edit", "activation edit", Enumerable.Range(0, n).Select(s => $"evaluate/activation/s{s}").ToList(),
                edits, edits.Select((e, s) => new MethodModel("activation", "Activation edit", s, e, "pretrain")).ToList()));
        }
        if (m.Dexperts is not null)
            rows.Add(new MethodRow("dexperts", $"DExperts α={Num(m.Dexperts.Alpha)}", "decoding", ["evaluate/dexperts"], ["sft/expert", "sft/anti-expert"], [],
                DExpertsAlpha: m.Dexperts.Alpha));
        return rows;
    }

    /// <summary>The methods-table row name of activation steering at strength α: "Steering α=A" (A in G6 invariant format).</summary>
    /// <param name="alpha">The steering strength (methods.steering.alphas entry).</param>
    public static string SteeringRow(double alpha) => $"Steering α={Num(alpha)}";

    static string Num(double v) => v.ToString("G6", System.Globalization.CultureInfo.InvariantCulture);

    /// <summary>Every DPO and ADPO training run: each sweep point of the dpo/adpo sections × its seeds
    /// (<see cref="StudyConfig.EffectiveSeeds"/> at the headline point, <see cref="StudyConfig.EffectiveSweepSeeds"/> elsewhere),
    /// headline runs first.</summary>
    /// <param name="c">The study config.</param>
    public static IReadOnlyList<TrainedRun> Runs(StudyConfig c)
    {
        var runs = new List<TrainedRun>();
        foreach (var (method, section) in new[] { ("dpo", c.Dpo), ("adpo", c.Adpo) })
        {
            var points = Sweep.Expand(c.Section(section));
            for (int p = 0; p < points.Count; p++)
                for (int seed = 0; seed < (p == 0 ? c.EffectiveSeeds : c.EffectiveSweepSeeds); seed++)
                    runs.Add(new TrainedRun(method, points[p], seed, p == 0));
        }
        // Headline points first (both methods), so a stopped run already has the paper's table.
        return runs.OrderBy(r => r.Headline ? 0 : 1).ToList();
    }

    /// <summary>The study as an ordered list of stages (dependencies always earlier).</summary>
    public static IReadOnlyList<StageDefinition> Build(StudyConfig c, StudyStageFunctions f)
    {
        JsonObject S(params (string k, JsonNode? v)[] kv)
        {
            // only what the stage reads decides its hash: sections have their "quick" overrides applied already,
            // so --quick itself is not a setting (a quick and a full run share the stages whose settings agree)
            var o = new JsonObject { ["model"] = c.Model };
            foreach (var (k, v) in kv) o[k] = v?.DeepClone();
            return o;
        }
        var st = new List<StageDefinition>
        {
            new("world", S(("data", c.Data), ("world", c.Section(c.World))), [], f.World),
            // pretrain reads the world's size (toy) or data.base_model (checkpoint)
            new("pretrain", S(("data", c.Data), ("world", c.Section(c.World)), ("pretrain", c.Section(c.Pretrain))), ["world"], f.Pretrain),
            new("probe", S(("probe", c.Section(c.Probe))), ["world", "pretrain"], f.Probe),
            new("vectors", S(("vectors", c.Section(c.Vectors))), ["world", "pretrain", "probe"], f.Vectors),
            new("interventions", S(("interventions", c.Section(c.Interventions))), ["world", "pretrain", "probe", "vectors"], f.Interventions),
            new("toxic-model", S(("toxic_model", c.Section(c.ToxicModel))), ["world", "pretrain"], f.ToxicModel),
            // pairs never see the evaluation scorer (neither its settings nor any stage that scored text)
            new("pairs", S(("pairs", c.Section(c.Pairs))), ["world", "pretrain", "probe", "toxic-model"], f.Pairs),
            new("evaluate/base", S(("evaluation", c.Section(c.Evaluation)), ("scorer", c.Scorer)), ["world", "pretrain", "interventions"], f.EvaluateBase),
            // the SFT model ADPO starts from, evaluated like the base model: ADPO's findings are measured against it
            new(SftEvaluation, S(("row", "SFT (ADPO start)"), ("model_stage", "toxic-model"), ("evaluation", c.Section(c.Evaluation)), ("scorer", c.Scorer)),
                ["world", "toxic-model"], f.EvaluateModel),
        };
        bool patching = StudySections.Read<NeuronsSection>(c.Section(c.Neurons), "neurons").Patching;
        foreach (var r in Runs(c))
        {
            var trainSettings = S(("method", r.Method), ("seed", r.Seed), ("training", r.Point.Settings));
            st.Add(new(r.TrainStage, trainSettings, r.Method == "adpo" ? ["pretrain", "pairs", "toxic-model"] : ["pretrain", "pairs"], f.Train));
            string[] start = r.Method == "adpo" ? ["toxic-model"] : [];
            st.Add(new(r.EvaluateStage, S(("row", RowName(r.Method)), ("evaluation", c.Section(c.Evaluation)), ("scorer", c.Scorer)),
                ["world", "pretrain", r.TrainStage], f.EvaluateModel));
            st.Add(new(r.DiffStage, S(("method", r.Method), ("evaluation", DiffSettings(c.Section(c.Evaluation)))), ["world", "pretrain", .. start, "probe", "vectors", r.TrainStage], f.Diff));
            if (r.Headline && patching)
                st.Add(new(r.PatchStage, S(("method", r.Method), ("evaluation", DiffSettings(c.Section(c.Evaluation))), ("neurons", c.Section(c.Neurons)), ("scorer", c.Scorer)),
                    ["world", "pretrain", .. start, "probe", r.TrainStage], f.Patch));
            var startEval = StartEvaluation(r.Method);
            st.Add(new(r.UnalignStage, S(("row", "Un-aligned " + RowName(r.Method)), ("unalign", UnalignSettings(c.Section(c.Unalign), r.Headline)),
                ("evaluation", c.Section(c.Evaluation)), ("scorer", c.Scorer), ("start_evaluation", startEval)),
                ["world", "pretrain", "probe", "vectors", "evaluate/base", .. startEval == "evaluate/base" ? Array.Empty<string>() : [startEval], r.TrainStage], f.Unalign));
        }
        AddMethodStages(c, st, f, S);
        if (StudySections.Read<NeuronsSection>(c.Section(c.Neurons), "neurons").PerMethod)
            foreach (var m in NeuronMethods(c))
                st.Add(new(NeuronStage(m.Method), S(("method", m.Method), ("model_stage", m.Stage), ("start_stage", m.StartStage),
                    ("evaluation", DiffSettings(c.Section(c.Evaluation))), ("neurons", c.Section(c.Neurons))),
                    ["world", "pretrain", .. m.StartStage == "pretrain" ? Array.Empty<string>() : [m.StartStage], "probe", m.Stage], f.MethodNeurons));
        if (AgreementEvaluations(c) is { } evals) st.Add(new("agreement", S(("agreement", c.Section(c.Agreement)), ("evaluations", evals)), ["world", .. evals.Select(e => e.Key)], f.Agreement));
        st.AddRange(BatteryPipeline.Stages(c, st, f.Battery).ToList());
        var report = new JsonObject { ["config"] = JsonNode.Parse(c.ToJson()) };
        st.Add(new("report", report, st.Select(s => s.Name).ToList(), f.Report));
        return st;
    }

    /// <summary>The methods table's stages (<see cref="MethodRows"/>): each loss trained like DPO's headline point, the
    /// edits, the DExperts fine-tunes, one evaluation per row and seed, and the speed stage over all rows. Each stage's
    /// settings hold only its own sub-section of "methods", so changing one method reruns only that method.</summary>
    static void AddMethodStages(StudyConfig c, List<StageDefinition> st, StudyStageFunctions f, Func<(string, JsonNode?)[], JsonObject> S)
    {
        var rows = MethodRows(c);
        if (rows.Count == 0) return;
        var section = c.Section(c.Methods);
        var m = StudySections.Read<MethodsSection>(section, "methods");
        // a sub-section the config leaves out stays out (its record's defaults apply)
        JsonObject Sub(string key) => section[key] is JsonNode n ? new() { [key] = n.DeepClone() } : new();
        var eval = c.Section(c.Evaluation);
        var dpoHead = Sweep.Expand(c.Section(c.Dpo))[0].Settings;
        var added = new HashSet<string>();
        void Add(StageDefinition d) { if (added.Add(d.Name)) st.Add(d); }
        JsonObject EvalSettings(MethodRow row, string? modelStage, params (string, JsonNode?)[] more) =>
            S([("row", row.Row), ("model_stage", modelStage), ("evaluation", eval), ("scorer", c.Scorer), .. more]);
        foreach (var row in rows)
        {
            switch (row.Kind)
            {
                case "training":
                {
                    var training = (JsonObject)dpoHead.DeepClone();
                    foreach (var (k, v) in m.Losses[row.Key]) training[k] = v?.DeepClone();
                    training["loss_type"] = row.Key;
                    for (int s = 0; s < row.ComputeStages.Count; s++)
                    {
                        Add(new(row.ComputeStages[s], S([("method", row.Key), ("seed", s), ("training", training)]), ["pretrain", "pairs"], f.Train));
                        Add(new(row.EvaluateStages[s], EvalSettings(row, row.ComputeStages[s]), ["world", "pretrain", row.ComputeStages[s]], f.EvaluateMethod));
                    }
                    break;
                }
                case "weight edit":
                    Add(new(row.ComputeStages[0], S([("edit", row.Key), ("methods", Sub(row.Key))]), row.Key == "profs" ? ["world", "pretrain", "pairs"] : ["world", "pretrain"], f.MethodEdit));
                    Add(new(row.EvaluateStages[0], EvalSettings(row, row.ComputeStages[0]), ["world", "pretrain", row.ComputeStages[0]], f.EvaluateMethod));
                    break;
                case "activation steering":
                    Add(new("edit/steering", S([("edit", "steering"), ("methods", Sub("steering"))]), ["world", "pretrain"], f.MethodEdit));
                    Add(new(row.EvaluateStages[0], EvalSettings(row, "edit/steering", ("steer_alpha", row.SteerAlpha)), ["world", "pretrain", "edit/steering"], f.EvaluateMethod));
                    break;
                case "activation edit":
                {
                    var dpo = Runs(c).Where(r => r.Method == "dpo" && r.Headline).ToList();
                    for (int s = 0; s < row.ComputeStages.Count; s++)
                    {
                        Add(new(row.ComputeStages[s], S([("edit", "activation"), ("methods", Sub("activation_edit"))]), ["world", "pretrain", dpo[s].DiffStage], f.MethodEdit));
                        Add(new(row.EvaluateStages[s], EvalSettings(row, row.ComputeStages[s]), ["world", "pretrain", row.ComputeStages[s]], f.EvaluateMethod));
                    }
                    break;
                }
                case "decoding":
                    foreach (var e in row.ComputeStages)
                        Add(new(e, S([("expert", e["sft/".Length..]), ("methods", Sub("dexperts"))]), ["world", "pretrain"], f.ExpertSft));
                    Add(new(row.EvaluateStages[0], EvalSettings(row, null, ("dexperts", row.DExpertsAlpha)), ["world", "pretrain", .. row.ComputeStages], f.EvaluateMethod));
                    break;
            }
        }
        // generation cost: every row's (first) model, one after the other in one stage
        var head = Runs(c).Where(r => r.Headline && r.Seed == 0).ToList();
        var speedRows = new JsonArray { new JsonObject { ["row"] = "Base", ["stage"] = "pretrain" } };
        foreach (var r in head) speedRows.Add(new JsonObject { ["row"] = RowName(r.Method), ["stage"] = r.TrainStage });
        List<string> deps = ["world", "pretrain", .. head.Select(r => r.TrainStage)];
        foreach (var row in rows)
        {
            var o = new JsonObject { ["row"] = row.Row };
            if (row.Kind == "decoding") { o["stage"] = "pretrain"; o["dexperts"] = row.DExpertsAlpha; deps.AddRange(row.ComputeStages); }
            else
            {
                o["stage"] = row.ComputeStages[0];
                if (row.SteerAlpha is double a) o["steer_alpha"] = a;
                deps.Add(row.ComputeStages[0]);
            }
            speedRows.Add(o);
        }
        Add(new(MethodSpeedStage, S([("rows", speedRows), ("methods", Sub("speed"))]), deps.Distinct().ToList(), f.MethodSpeed));
    }

    /// <summary>The stage that measures every methods-table row's generation speed, writing <see cref="RunLayout.MethodSpeed"/>.</summary>
    public const string MethodSpeedStage = "methods/speed";

    /// <summary>The methods whose weights changed (seed 0 of each; steering and the activation edit change activations
    /// through hooks, not weights), for the per-method decomposition and null-space check.</summary>
    public static IReadOnlyList<MethodModel> NeuronMethods(StudyConfig c) =>
        MethodModels(c).Where(m => m.Seed == 0 && m.Method is not ("steering" or "activation")).ToList();

    /// <summary>The per-method neuron decomposition stage of <paramref name="method"/> (seed 0): "neurons/METHOD/s0".</summary>
    /// <param name="method">The method key (e.g. "dpo", "profs").</param>
    public static string NeuronStage(string method) => $"neurons/{method}/s0";

    /// <summary>The evaluation of the SFT model π_tox, the model ADPO starts from ("evaluate/sft").</summary>
    public const string SftEvaluation = "evaluate/sft";

    /// <summary>The evaluations the agreement stage re-scores (stage → row label): the base model's rows, the SFT model
    /// and the headline runs; null when "agreement" names no scorer (no stage).</summary>
    public static JsonObject? AgreementEvaluations(StudyConfig c)
    {
        if (c.Section(c.Agreement)["scorers"] is not JsonArray { Count: > 0 }) return null;
        var o = new JsonObject { ["evaluate/base"] = "base", [SftEvaluation] = "SFT (ADPO start)" };
        foreach (var r in Runs(c).Where(r => r.Headline)) o[r.EvaluateStage] = $"{RowName(r.Method)} seed {r.Seed}";
        return o;
    }

    /// <summary>The evaluation of the model a method starts from: its toxicity is what alignment lowers and un-aligning
    /// should restore (DPO: the pretrained model; ADPO: the SFT model).</summary>
    public static string StartEvaluation(string method) => method == "adpo" ? SftEvaluation : "evaluate/base";

    /// <summary>The evaluation keys the diff stage reads (its prompts and token limits), so that e.g. the number of
    /// example continuations in the report does not rerun every diff.</summary>
    static JsonObject DiffSettings(JsonObject evaluation)
    {
        var o = new JsonObject();
        foreach (var k in new[] { "challenge_prompts", "max_prompt_tokens", "max_new_tokens" })
            if (evaluation[k] is JsonNode v) o[k] = v.DeepClone();
        return o;
    }

    /// <summary>The key-count sweep runs at the headline runs only (the sweep's other points keep their hashes).</summary>
    static JsonObject UnalignSettings(JsonObject unalign, bool headline)
    {
        if (!headline) unalign.Remove("key_counts");
        return unalign;
    }

    /// <summary>The results-table row name of a trained method: "DPO", "ADPO", else the key itself.</summary>
    /// <param name="method">The method key.</param>
    public static string RowName(string method) => method == "dpo" ? "DPO" : method == "adpo" ? "ADPO" : method;
}

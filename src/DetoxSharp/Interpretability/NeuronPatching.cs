using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;
using DetoxSharp.Data;
using DetoxSharp.Generation;
using DetoxSharp.Models;
using DetoxSharp.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Interpretability;

/// <summary>Settings of <see cref="NeuronPatching.Run"/>: lengths, batching, per-layer rows and the generation metric.</summary>
public sealed record PatchingOptions
{
    /// <summary>Greedy tokens of the before model that every model reads for the teacher-forced measure.</summary>
    [Setting("greedy tokens of the before model that every model reads for the teacher-forced measure")]
    public int MaxNewTokens { get; init; } = 20;
    /// <summary>Prompts keep their last N tokens.</summary>
    [Setting("prompts keep their last N tokens")]
    public int MaxPromptTokens { get; init; } = 32;
    /// <summary>Prompts per forward pass.</summary>
    [Setting("prompts per forward pass")]
    public int BatchSize { get; init; } = 8;
    /// <summary>Also patch every layer's groups separately (4 × layers more patched passes per direction: the scatter's points).</summary>
    [Setting("also patch every layer's groups separately (4 × layers more patched passes per direction: the scatter's points)")]
    public bool PerLayer { get; init; } = true;
    /// <summary>Tokens each patched model generates per prompt for the toxicity score (0 = no generations).</summary>
    [Setting("tokens each patched model generates per prompt for the toxicity score (0 = no generations)")]
    public int GenerationTokens { get; init; } = 20;
    /// <summary>Prompts (the first N) each patched model generates from.</summary>
    [Setting("prompts (the first N) each patched model generates from")]
    public int GenerationPrompts { get; init; } = 100;
    /// <summary>Toxicity in [0, 1] of each generated text, in order (e.g. an evaluation scorer's values); null: no
    /// generation metric (only the teacher-forced one).</summary>
    public Func<IReadOnlyList<string>, IReadOnlyList<double>>? Score { get; init; }

    /// <summary>Checks every setting; throws <see cref="InvalidSettingException"/> naming the first one out of range.</summary>
    public void Validate()
    {
        if (MaxNewTokens < 1) throw new InvalidSettingException("max_new_tokens", $"must be ≥ 1 (got {MaxNewTokens})");
        if (MaxPromptTokens < 1) throw new InvalidSettingException("max_prompt_tokens", $"must be ≥ 1 (got {MaxPromptTokens})");
        if (BatchSize < 1) throw new InvalidSettingException("batch_size", $"must be ≥ 1 (got {BatchSize})");
        if (GenerationTokens < 0) throw new InvalidSettingException("generation_tokens", $"must be ≥ 0 (got {GenerationTokens})");
        if (GenerationPrompts < 1) throw new InvalidSettingException("generation_prompts", $"must be ≥ 1 (got {GenerationPrompts})");
    }
}

/// <summary>Neurons whose activations are patched: layer → neuron indices.</summary>
/// <param name="Group">The neuron group (TP, TN, AP, AN).</param>
/// <param name="Layer">The one layer patched (null: every layer).</param>
/// <param name="Neurons">Layer → indices of the patched neurons.</param>
public sealed record PatchSet(string Group, int? Layer, IReadOnlyDictionary<int, long[]> Neurons)
{
    /// <summary>Neurons in the set.</summary>
    public int Count => Neurons.Values.Sum(v => v.Length);
    /// <summary>"GROUP" or "GROUP@layer", as results tables name the row.</summary>
    public string Label => Layer is int l ? $"{Group}@{l}" : Group;

    /// <summary>The neurons of <paramref name="group"/> (as <c>detox neurons</c> assigned them), in one layer or all.</summary>
    public static PatchSet Of(NeuronContributions.Result r, string group, int? layer = null) =>
        new(group, layer, r.Neurons.Where(n => n.Group == group && (layer is null || n.Layer == layer))
            .GroupBy(n => n.Layer).ToDictionary(g => g.Key, g => g.Select(n => (long)n.Neuron).ToArray()));
}

/// <summary>One patched run: the target model with <see cref="PatchSet"/>'s activations taken from the source model.
/// <see cref="Real"/> = M(patched) − M(target), <see cref="Attribution"/> its first-order estimate Σ ∂M/∂m · (m_source − m_target)
/// at the target's activations; <see cref="Share"/> = Real / (M(source) − M(target)).</summary>
public sealed record PatchRow(string Direction, string Group, int? Layer, int Neurons, double Real, double Attribution, double Share);

/// <summary>Toxicity of the generations of one model (plain or patched): mean score and share of texts scoring ≥ 0.5.</summary>
public sealed record PatchGeneration(string Condition, double MeanToxicity, double ToxicShare, int Texts);

/// <summary>
/// The causal check of the neuron decomposition (Yang et al. 2025): activation patching of the TP/TN/AP/AN groups between
/// the models before and after alignment, and attribution patching (gradient × Δactivation) as its one-backward-pass
/// estimate. Both models read the same tokens (the prompt, its last max_prompt_tokens, plus the before model's greedy
/// continuation, as in <see cref="NeuronContributions"/>); the measure M is the last block's residual stream projected
/// on the unit toxic direction Ŵ_tox, averaged over the positions that choose each generated token. Patching a group
/// replaces, at every position, the target model's <c>mlp.hook_post</c> activations of the group's neurons by the
/// source model's activations on the same input (computed with the source's own weights all the way up — the standard
/// "activation patching", not a mean shift). "after→before" = after-training activations in the before model (is the
/// group sufficient for alignment's effect?), "before→after" the reverse (is it necessary?). Attribution patching
/// (Nanda 2023; Syed et al. 2023) linearises M around the target's activations: one backward pass gives ∂M/∂m for every
/// neuron and position, and Σ ∂M/∂m·(m_source − m_target) over a group's neurons estimates its patch; it is exact when
/// M is linear in those activations (e.g. the last layer's neurons, which write straight into the measured residual).
/// For a set spanning several layers the estimate is the plain sum over its neurons, which counts a path through a
/// later member twice (once in the earlier neuron's gradient, once as the later neuron's own Δm); the per-layer rows —
/// the scatter's points and the correlation — have no such overlap.
/// </summary>
public static class NeuronPatching
{
    /// <summary>The two patching directions: the after model's activations into the before model, and the reverse.</summary>
    public const string AfterIntoBefore = "after→before", BeforeIntoAfter = "before→after";

    /// <summary>The patching results.</summary>
    /// <param name="MetricBefore">M of the before model.</param>
    /// <param name="MetricAfter">M of the after model.</param>
    /// <param name="Positions">Token positions averaged over.</param>
    /// <param name="Prompts">Prompts measured.</param>
    /// <param name="Rows">One row per patch set and direction: real and estimated change of M.</param>
    /// <param name="Generations">Toxicity of the generations of each model and patched model (empty without a score).</param>
    public sealed record Result(double MetricBefore, double MetricAfter, int Positions, int Prompts, IReadOnlyList<PatchRow> Rows,
        IReadOnlyList<PatchGeneration> Generations)
    {
        /// <summary>Pearson correlation of real and attribution patching over the per-layer rows (both directions), or over
        /// the group rows when there are no per-layer rows; null when fewer than two points or no variance.</summary>
        public double? Correlation
        {
            get
            {
                var pts = Rows.Where(r => r.Layer is not null).ToList();
                if (pts.Count == 0) pts = Rows.ToList();
                return Pearson(pts.Select(r => r.Real).ToArray(), pts.Select(r => r.Attribution).ToArray());
            }
        }
    }

    // Evaluation's Agreement has the same formula, but Interpretability may not use Evaluation (docs/ARCHITECTURE.md's table)
    static double? Pearson(double[] a, double[] b)
    {
        if (a.Length < 2) return null;
        double ma = a.Average(), mb = b.Average(), sab = 0, saa = 0, sbb = 0;
        for (int i = 0; i < a.Length; i++) { sab += (a[i] - ma) * (b[i] - mb); saa += (a[i] - ma) * (a[i] - ma); sbb += (b[i] - mb) * (b[i] - mb); }
        return saa > 0 && sbb > 0 ? sab / Math.Sqrt(saa * sbb) : null;
    }

    /// <summary><see cref="PatchingOptions.Score"/>: toxicity in [0, 1] of each text, in order (e.g. an evaluation scorer's values); null = no generations.</summary>
    public static Result Run(ModelPair pair, Tensor wToxic, IReadOnlyList<string> prompts,
        NeuronContributions.Result groups, PatchingOptions options, IProgress<string>? progress = null)
    {
        var (before, after, tokenizer) = pair;
        var forced = pair.Forced;
        var score = options.Score;
        options.Validate();
        if (before.NumLayers != after.NumLayers || before.DModel != after.DModel || before.MlpDim != after.MlpDim)
            throw new InvalidInputException("--before/--after: models differ in shape (layers, width or MLP size)");
        if (wToxic.numel() != before.DModel) throw new InvalidInputException($"--probe: W_Toxic has {wToxic.numel()} entries, the model's width is {before.DModel}");
        if (prompts.Count == 0) throw new InvalidInputException("--prompts: no prompts");
        if (groups.Neurons.Count != before.NumLayers * before.MlpDim)
            throw new InvalidInputException($"neuron groups cover {groups.Neurons.Count} neurons, the models have {before.NumLayers * before.MlpDim}");
        before.Module.eval(); after.Module.eval();
        var sets = new List<PatchSet>();
        foreach (var g in NeuronContributions.Groups) sets.Add(PatchSet.Of(groups, g));
        if (options.PerLayer)
            for (int l = 0; l < before.NumLayers; l++)
                foreach (var g in NeuronContributions.Groups) sets.Add(PatchSet.Of(groups, g, l));

        if (forced is not null && forced.Fed.Count != prompts.Count)
            throw new ArgumentException($"the greedy continuations cover {forced.Fed.Count} prompts, not {prompts.Count}");
        if (forced is null) progress?.Report($"generating greedy continuations of {prompts.Count} prompts with the --before model");
        var tf = forced ?? TeacherForced.Generate(before, tokenizer, prompts, options.MaxPromptTokens, options.MaxNewTokens, options.BatchSize);
        using var unit = UnitDirection(wToxic, before);
        progress?.Report("patching after-training activations into the before model");
        var intoBefore = Measure(before, after, tf, unit, sets, options.BatchSize);
        progress?.Report("patching before-training activations into the after model");
        var intoAfter = Measure(after, before, tf, unit, sets, options.BatchSize);
        var rows = new List<PatchRow>();
        foreach (var (dir, m) in new[] { (AfterIntoBefore, intoBefore), (BeforeIntoAfter, intoAfter) })
            for (int s = 0; s < sets.Count; s++)
            {
                double real = m.Patched[s] - m.Target;
                rows.Add(new PatchRow(dir, sets[s].Group, sets[s].Layer, sets[s].Count, real, m.Attribution[s], real / (m.Source - m.Target)));
            }

        var gens = new List<PatchGeneration>();
        if (score is not null && options.GenerationTokens > 0)
        {
            var gp = tf.Prompts.Take(options.GenerationPrompts).ToList();
            var go = new GenerationOptions { MaxNewTokens = options.GenerationTokens, Greedy = true, BatchSize = options.BatchSize };
            PatchGeneration Score(string condition, ICausalLM model)
            {
                progress?.Report($"generating and scoring: {condition}");
                var texts = DetoxSharp.Generation.Generator.Generate(model, gp, go).Select(c => tokenizer.Decode(c)).ToList();
                var scores = score(texts);
                if (scores.Count != texts.Count) throw new InvalidOperationException($"the scorer returned {scores.Count} scores for {texts.Count} texts");
                return new PatchGeneration(condition, scores.Average(), scores.Count(x => x >= 0.5) / (double)scores.Count, texts.Count);
            }
            gens.Add(Score("before", before));
            gens.Add(Score("after", after));
            foreach (var (dir, target, source) in new[] { (AfterIntoBefore, before, after), (BeforeIntoAfter, after, before) })
                foreach (var set in sets.Where(s => s.Layer is null))
                {
                    using var patched = new PatchedModel(source, target, set);
                    gens.Add(Score($"{dir} {set.Group}", patched));
                }
        }
        return new Result(intoBefore.Target, intoBefore.Source, intoBefore.Positions, prompts.Count, rows, gens);
    }

    internal static Tensor UnitDirection(Tensor wToxic, ICausalLM model)
    {
        using var scope = torch.NewDisposeScope();
        var w = wToxic.detach().flatten().to(ScalarType.Float32);
        return (w / w.norm().clamp_min(1e-30)).to(model.DType).to(model.Device).MoveToOuterDisposeScope();
    }

    sealed record Measured(double Target, double Source, double[] Patched, double[] Attribution, int Positions);

    /// <summary>M of the target, of the source, of the target with each set patched from the source, and each set's
    /// attribution estimate — per batch: one source pass, one target pass with gradients, one patched pass per set.</summary>
    static Measured Measure(ICausalLM target, ICausalLM source, TeacherForced tf, Tensor unit, IReadOnlyList<PatchSet> sets, int batchSize)
    {
        int L = target.NumLayers;
        var names = Enumerable.Range(0, L).Select(HookNames.MlpPost).ToArray();
        double mTarget = 0, mSource = 0;
        var patched = new double[sets.Count];
        var attrib = new double[L][];
        for (int l = 0; l < L; l++) attrib[l] = new double[target.MlpDim];
        int positions = 0;
        for (int s0 = 0; s0 < tf.Fed.Count; s0 += batchSize)
        {
            using var scope = torch.NewDisposeScope();
            var batch = tf.Fed.Skip(s0).Take(batchSize).ToList();
            var steps = tf.Steps.Skip(s0).Take(batchSize).ToList();
            var (ids, mask) = ActivationCache.Pad(batch, target.EosTokenId, target.Device, left: true);
            long T = ids.shape[1];
            var idx = new List<long>();
            for (int b = 0; b < batch.Count; b++) for (int j = 0; j < steps[b]; j++) idx.Add(b * T + T - steps[b] + j);
            var sel = torch.tensor(idx.ToArray(), ScalarType.Int64, target.Device);
            positions += idx.Count;
            Tensor M(Tensor resid) => resid.reshape(-1, resid.shape[2]).index_select(0, sel).matmul(unit).to(ScalarType.Float64).sum();

            var src = new Tensor[L];
            using (torch.no_grad())
            using (new HookSet(names.Select((n, l) => (source, n, (HookFn)((x, _) => { src[l] = x.detach(); return null; })))))
                mSource += M(source.ResidualStream(ids, mask)).item<double>();

            // the target with a zero offset on every activation: ∂M/∂offset = ∂M/∂m, for all neurons and positions at once
            var offsets = new Tensor[L];
            var tgt = new Tensor[L];
            using (torch.enable_grad())
            using (new HookSet(names.Select((n, l) => (target, n, (HookFn)((x, _) =>
                   {
                       tgt[l] = x.detach();
                       offsets[l] = torch.zeros(x.shape, x.dtype, x.device, requires_grad: true);
                       return x + offsets[l];
                   })))))
            {
                var m = M(target.ResidualStream(ids, mask));
                mTarget += m.item<double>();
                var grads = torch.autograd.grad([m], offsets);
                using var noGrad = torch.no_grad();
                for (int l = 0; l < L; l++)
                {
                    var a = (grads[l] * (src[l] - tgt[l])).to(ScalarType.Float64).sum([0, 1]).cpu().data<double>().ToArray();
                    for (int i = 0; i < a.Length; i++) attrib[l][i] += a[i];
                }
            }

            using (torch.no_grad())
                for (int s = 0; s < sets.Count; s++)
                {
                    using var inner = torch.NewDisposeScope();
                    var set = sets[s];
                    var hooks = set.Neurons.Select(kv =>
                    {
                        var ix = torch.tensor(kv.Value, ScalarType.Int64, target.Device);
                        var from = src[kv.Key];
                        return (target, names[kv.Key], (HookFn)((x, _) => x.index_copy(2, ix, from.index_select(2, ix).to(x.dtype))));
                    }).ToList();
                    using (new HookSet(hooks))
                        patched[s] += M(target.ResidualStream(ids, mask)).item<double>();
                }
        }
        var attribution = sets.Select(set => set.Neurons.Sum(kv => kv.Value.Sum(i => attrib[kv.Key][i]))).ToArray();
        return new Measured(mTarget / positions, mSource / positions, patched.Select(p => p / positions).ToArray(),
            attribution.Select(a => a / positions).ToArray(), positions);
    }

    sealed class HookSet : IDisposable
    {
        readonly List<IDisposable> _handles;
        public HookSet(IEnumerable<(ICausalLM Model, string Name, HookFn Fn)> hooks) => _handles = hooks.Select(h => h.Model.Hooks.Add(h.Name, h.Fn)).ToList();
        /// <inheritdoc/>
        public void Dispose() { foreach (var h in _handles) h.Dispose(); }
    }

    /// <summary>patching.json (metrics, rows, generations, correlation) and patching.csv (one row per patched set and direction).</summary>
    public static JsonObject Write(Result r, string outDir)
    {
        static string F(double x) => x.ToString("R", CultureInfo.InvariantCulture);
        JsonObject Row(PatchRow p) => new()
        {
            ["direction"] = p.Direction, ["group"] = p.Group, ["layer"] = p.Layer, ["neurons"] = p.Neurons,
            ["real"] = J(p.Real), ["attribution"] = J(p.Attribution), ["share"] = J(p.Share),
        };
        var json = new JsonObject
        {
            ["prompts"] = r.Prompts, ["positions"] = r.Positions,
            ["measure"] = "last block residual · Ŵ_tox, mean over the positions choosing each of the before model's greedy tokens; real = M(patched) − M(target), attribution = Σ ∂M/∂m·(m_source − m_target) at the target",
            ["metric_before"] = J(r.MetricBefore), ["metric_after"] = J(r.MetricAfter),
            ["correlation_real_vs_attribution"] = r.Correlation is double c ? J(c) : null,
            ["groups"] = new JsonArray(r.Rows.Where(p => p.Layer is null).Select(p => (JsonNode)Row(p)).ToArray()),
            ["generations"] = new JsonArray(r.Generations.Select(g => (JsonNode)new JsonObject
            {
                ["condition"] = g.Condition, ["mean_toxicity"] = J(g.MeanToxicity), ["toxic_share"] = J(g.ToxicShare), ["texts"] = g.Texts,
            }).ToArray()),
        };
        Directory.CreateDirectory(outDir);
        var csv = new StringBuilder("direction,group,layer,neurons,real,attribution,share\n");
        foreach (var p in r.Rows)
            csv.Append(string.Join(",", p.Direction, p.Group, p.Layer?.ToString(CultureInfo.InvariantCulture) ?? "all", p.Neurons, F(p.Real), F(p.Attribution), F(p.Share))).Append('\n');
        AtomicFile.WriteAllText(Path.Combine(outDir, "patching.csv"), csv.ToString());
        AtomicFile.WriteAllText(Path.Combine(outDir, "patching.json"), json.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
        return json;
    }

    static JsonNode? J(double x) => double.IsFinite(x) ? JsonValue.Create(x) : null;

    /// <summary>
    /// The target model with one set's activations taken from the source model, as a model the generator can drive: every
    /// forward pass first runs the source on the same tokens (with its own KV cache, kept in step with the target's),
    /// then the target with the set's <c>mlp.hook_post</c> activations replaced. Owns neither model.
    /// </summary>
    public sealed class PatchedModel : ICausalLM
    {
        readonly ICausalLM _source, _target;
        readonly HookSet _hooks;
        readonly Dictionary<int, Tensor> _captured = new();
        readonly List<Tensor> _indices = new();
        KvCache? _sourceCache, _forCache;

        /// <summary>The <paramref name="target"/> model with <paramref name="set"/>'s MLP activations taken from <paramref name="source"/>.</summary>
        public PatchedModel(ICausalLM source, ICausalLM target, PatchSet set)
        {
            _source = source; _target = target;
            var hooks = new List<(ICausalLM, string, HookFn)>();
            foreach (var (layer, neurons) in set.Neurons)
            {
                var ix = torch.tensor(neurons, ScalarType.Int64, target.Device);
                ix.DetachFromDisposeScope();
                _indices.Add(ix);
                int l = layer;
                hooks.Add((source, HookNames.MlpPost(l), (x, _) => { _captured[l] = x; return null; }));
                hooks.Add((target, HookNames.MlpPost(l), (x, _) => x.index_copy(2, ix, _captured[l].index_select(2, ix).to(x.dtype))));
            }
            _hooks = new HookSet(hooks);
        }

        KvCache? SourceCache(KvCache? cache)
        {
            if (cache is null) return null;
            if (!ReferenceEquals(cache, _forCache))
            {
                _sourceCache?.Dispose();
                _sourceCache = _source.NewCache(cache.Capacity);
                _forCache = cache;
            }
            return _sourceCache;
        }

        /// <inheritdoc/>
        public Tensor Forward(Tensor inputIds, Tensor? attentionMask = null, KvCache? cache = null)
        {
            _source.Forward(inputIds, attentionMask, SourceCache(cache)).Dispose();
            return _target.Forward(inputIds, attentionMask, cache);
        }

        /// <inheritdoc/>
        public Tensor ForwardLast(Tensor inputIds, Tensor? attentionMask = null, KvCache? cache = null)
        {
            _source.ForwardLast(inputIds, attentionMask, SourceCache(cache)).Dispose();
            return _target.ForwardLast(inputIds, attentionMask, cache);
        }

        /// <inheritdoc/>
        public Tensor ResidualStream(Tensor inputIds, Tensor? attentionMask = null, KvCache? cache = null)
        {
            _source.ResidualStream(inputIds, attentionMask, SourceCache(cache)).Dispose();
            return _target.ResidualStream(inputIds, attentionMask, cache);
        }

        /// <inheritdoc/>
        public Tensor ResidualStream(Tensor inputIds, SequenceLayout layout)
        {
            _source.ResidualStream(inputIds, layout).Dispose();
            return _target.ResidualStream(inputIds, layout);
        }

        /// <inheritdoc/>
        public Tensor ForwardEmbeddings(Tensor inputsEmbeds, Tensor? attentionMask = null, KvCache? cache = null) =>
            throw new NotSupportedException("a patched model runs on token ids only (the source model must read the same tokens)");

        /// <inheritdoc/>
        public string Family => _target.Family;
        /// <inheritdoc/>
        public int VocabSize => _target.VocabSize;
        /// <inheritdoc/>
        public int DModel => _target.DModel;
        /// <inheritdoc/>
        public int NumLayers => _target.NumLayers;
        /// <inheritdoc/>
        public int NumHeads => _target.NumHeads;
        /// <inheritdoc/>
        public int MlpDim => _target.MlpDim;
        /// <inheritdoc/>
        public int MaxPositions => Math.Min(_target.MaxPositions, _source.MaxPositions);
        /// <inheritdoc/>
        public int EosTokenId => _target.EosTokenId;
        /// <inheritdoc/>
        public Device Device => _target.Device;
        /// <inheritdoc/>
        public ScalarType DType => _target.DType;
        /// <inheritdoc/>
        public nn.Module Module => _target.Module;
        /// <inheritdoc/>
        public HookPoints Hooks => _target.Hooks;
        /// <inheritdoc/>
        public Tensor TokenEmbedding => _target.TokenEmbedding;
        /// <inheritdoc/>
        public Tensor Unembedding => _target.Unembedding;
        /// <inheritdoc/>
        public Tensor ApplyFinalNorm(Tensor residual) => _target.ApplyFinalNorm(residual);
        /// <inheritdoc/>
        public Tensor MlpKeys(int layer) => _target.MlpKeys(layer);
        /// <inheritdoc/>
        public Tensor MlpKeyBias(int layer) => _target.MlpKeyBias(layer);
        /// <inheritdoc/>
        public Tensor MlpValues(int layer) => _target.MlpValues(layer);
        /// <inheritdoc/>
        public string MlpKeysParameterName(int layer) => _target.MlpKeysParameterName(layer);
        /// <inheritdoc/>
        public string MlpValuesParameterName(int layer) => _target.MlpValuesParameterName(layer);
        /// <inheritdoc/>
        public KvCache NewCache(int capacity) => _target.NewCache(capacity);
        /// <inheritdoc/>
        public ICausalLM Clone() => throw new NotSupportedException("a patched model is a view of two models; clone those instead");
        /// <inheritdoc/>
        public void ResizeVocabulary(int newSize) => throw new NotSupportedException("a patched model is a view of two models; resize those instead");
        /// <inheritdoc/>
        public JsonObject ConfigJson() => _target.ConfigJson();

        /// <inheritdoc/>
        public void Dispose()
        {
            _hooks.Dispose();
            _sourceCache?.Dispose();
            foreach (var t in _indices) t.Dispose();
        }
    }
}

using System.Text.Json.Nodes;
using DetoxSharp.Checkpoints;
using DetoxSharp.Data;
using DetoxSharp.Generation;
using DetoxSharp.Models;
using DetoxSharp.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Interpretability;

/// <summary>Settings of <see cref="ToxicityProbe.Train"/>: comment length, batching, validation split, optimization, direction.</summary>
public sealed record ProbeOptions
{
    /// <summary>Comments are cut to this many tokens (and to the model's context).</summary>
    [Setting("cut comments to this many tokens")]
    public int MaxTokens { get; init; } = 128;
    /// <summary>Comments per forward pass.</summary>
    [Setting("comments per forward pass")]
    public int BatchSize { get; init; } = 16;
    /// <summary>Share held out for validation (the paper: 10%).</summary>
    [Setting("held-out share for validation")]
    public double ValidationFraction { get; init; } = 0.1;
    /// <summary>Seed of the train/validation split.</summary>
    [Setting("seed of the train/validation split")]
    public int Seed { get; init; } = 0;
    /// <summary>Full-batch Adam steps on the logistic loss.</summary>
    [Setting("full-batch Adam steps")]
    public int MaxSteps { get; init; } = 500;
    /// <summary>Adam learning rate.</summary>
    [Setting("Adam learning rate")]
    public double LearningRate { get; init; } = 1e-2;
    /// <summary>L2 penalty on W (0 = none).</summary>
    [Setting("L2 penalty on W")]
    public double L2 { get; init; } = 0;
    /// <summary>What W_Toxic is: the probe's toxic weight column (Lee et al.) or the difference of the class means of
    /// its features (mass-mean, Marks &amp; Tegmark 2023). Either way the classifier is the fitted probe.</summary>
    [Setting("W_Toxic: weights (the probe's toxic column, as the paper) or mass-mean (toxic minus non-toxic feature mean)")]
    public ProbeDirection Direction { get; init; } = ProbeDirection.Weights;

    /// <summary>Checks every setting; throws <see cref="InvalidSettingException"/> naming the first one out of range.</summary>
    public void Validate()
    {
        if (MaxTokens < 1) throw new InvalidSettingException("max_tokens", $"must be ≥ 1 (got {MaxTokens})");
        if (BatchSize < 1) throw new InvalidSettingException("batch_size", $"must be ≥ 1 (got {BatchSize})");
        if (!(ValidationFraction > 0 && ValidationFraction < 1)) throw new InvalidSettingException("validation_fraction", $"must be in (0,1) (got {ValidationFraction})");
        Require.Count(MaxSteps, "max_steps", 1, 1_000_000);
        Require.Number(LearningRate, "learning_rate", 0, minExclusive: true);
        Require.Number(L2, "l2", 0);
    }
}

/// <summary>Which vector stands for "toxicity" in the residual stream (<see cref="ToxicityProbe.WToxic"/>).</summary>
public enum ProbeDirection
{
    /// <summary>The probe's toxic weight column W[:, 1] (Lee et al. 2024).</summary>
    Weights,
    /// <summary>Mean feature of the toxic training examples minus that of the non-toxic ones. A logistic probe on nearly
    /// separable features leans on low-variance directions the model hardly writes (its weights approach Σ⁻¹Δμ); the
    /// class-mean difference Δμ is the direction the residual stream actually moves along between the classes, the one
    /// value vectors can be compared with (Marks &amp; Tegmark 2023, "mass-mean probing").</summary>
    MassMean,
}

/// <summary>How a probe was trained and how well it separates the classes.</summary>
/// <param name="Train">Training comments.</param>
/// <param name="Validation">Validation comments.</param>
/// <param name="TrainToxic">Toxic comments among the training ones.</param>
/// <param name="ValidationToxic">Toxic comments among the validation ones.</param>
/// <param name="TrainAccuracy">Accuracy on the training comments, in [0, 1].</param>
/// <param name="ValidationAccuracy">Accuracy on the validation comments, in [0, 1].</param>
/// <param name="ValidationMajorityBaseline">Accuracy of always answering the validation set's majority class.</param>
/// <param name="FinalLoss">Mean cross-entropy (nats) on the training comments after the last step.</param>
public sealed record ProbeReport(int Train, int Validation, int TrainToxic, int ValidationToxic, double TrainAccuracy, double ValidationAccuracy,
    double ValidationMajorityBaseline, double FinalLoss);

/// <summary>
/// Linear toxicity probe P(toxic | x̄) = softmax(x̄·W + b), W [d, 2] (column 1 = toxic), on the last block's residual
/// stream (<c>blocks.{L-1}.hook_resid_post</c>, before the final norm) averaged over the non-pad positions — as in
/// Lee et al. 2024. <see cref="WToxic"/> is the toxic column of W.
/// </summary>
public sealed class ToxicityProbe : IAttributeModel, IDisposable
{
    /// <summary>The probe's file in a probe directory (W, b and the direction).</summary>
    public const string FileName = "probe.safetensors";
    /// <summary>The training report's file in a probe directory.</summary>
    public const string MetricsFileName = "probe_metrics.json";

    /// <summary>[d, 2] float32 on the CPU; column 0 non-toxic, column 1 toxic.</summary>
    public Tensor W { get; }
    /// <summary>[2] float32.</summary>
    public Tensor B { get; }

    /// <summary>[d] float32 CPU when W_Toxic is not the toxic weight column (<see cref="ProbeDirection.MassMean"/>).</summary>
    readonly Tensor? _direction;
    /// <summary>The classifier PPLM steers with when W_Toxic is the mass-mean direction: a one-dimensional logistic
    /// regression on the projection onto W_Toxic, as [d,2] / [2] (null: the probe itself).</summary>
    readonly Tensor? _steerW, _steerB;

    /// <summary>A probe from its weights <paramref name="w"/> [d, 2] and bias <paramref name="b"/> [2] (copied to float32 CPU);
    /// <paramref name="direction"/> [d] and <paramref name="kind"/> = <see cref="ProbeDirection.MassMean"/> set another W_Toxic, with
    /// the classifier PPLM steers with (<paramref name="steerW"/>, <paramref name="steerB"/>).</summary>
    public ToxicityProbe(Tensor w, Tensor b, Tensor? direction = null, ProbeDirection kind = ProbeDirection.Weights, Tensor? steerW = null, Tensor? steerB = null)
    {
        if (w.dim() != 2 || w.shape[1] != 2) throw new ArgumentException($"probe W must be [d,2], got [{string.Join(",", w.shape)}]");
        if (direction is not null && (direction.dim() != 1 || direction.shape[0] != w.shape[0]))
            throw new ArgumentException($"probe direction must be [{w.shape[0]}], got [{string.Join(",", direction.shape)}]");
        if ((steerW is null) != (steerB is null) || steerW is not null && (!steerW.shape.SequenceEqual(w.shape) || steerB!.numel() != 2))
            throw new ArgumentException("steering classifier must be W [d,2] and b [2], both or neither");
        static Tensor Keep(Tensor t) { var c = t.detach().to(ScalarType.Float32).cpu().clone(); c.DetachFromDisposeScope(); return c; }
        W = Keep(w);
        B = Keep(b);
        if (direction is not null) _direction = Keep(direction);
        if (steerW is not null) { _steerW = Keep(steerW); _steerB = Keep(steerB!); }
        DirectionKind = direction is null ? ProbeDirection.Weights : kind;
    }

    // PPLM steers towards W_Toxic: with the mass-mean direction through the one-dimensional classifier along it
    Tensor IAttributeModel.W => _steerW ?? W;
    Tensor IAttributeModel.B => _steerB ?? B;

    /// <summary>The width d of the residual stream the probe reads.</summary>
    public int DModel => (int)W.shape[0];

    /// <summary>What <see cref="WToxic"/> is.</summary>
    public ProbeDirection DirectionKind { get; }

    /// <summary>The toxic direction, [d] (a new tensor): W[:, 1], or the class-mean difference for
    /// <see cref="ProbeDirection.MassMean"/>.</summary>
    public Tensor WToxic => _direction is not null ? _direction.clone() : W.select(1, 1).clone();

    /// <summary>"weights" or "mass-mean" (also "mass_mean", any case); anything else names <paramref name="key"/>.</summary>
    public static ProbeDirection ParseDirection(string text, string key) => text.Trim().ToLowerInvariant().Replace('_', '-') switch
    {
        "weights" => ProbeDirection.Weights,
        "mass-mean" or "massmean" => ProbeDirection.MassMean,
        _ => throw new InvalidSettingException(key, $"expects weights or mass-mean (got '{text}')"),
    };

    /// <summary>This probe with W_Toxic = the class-mean difference of <paramref name="features"/> [N, d] (toxic − non-toxic).</summary>
    public ToxicityProbe WithMassMeanDirection(Tensor features, bool[] labels)
    {
        using var scope = torch.NewDisposeScope();
        var d = MassMean(features, labels);
        var unit = d.to(ScalarType.Float64) / d.to(ScalarType.Float64).norm().clamp_min(1e-30);
        var z = features.to(ScalarType.Float64).cpu().matmul(unit).data<double>().ToArray();
        var (scale, bias) = Logistic1D(z, labels);
        // two-class softmax whose logit difference is scale·(x·d̂) + bias
        var half = (unit * (scale / 2)).to(ScalarType.Float32);
        var sw = torch.stack([-half, half], 1);
        var sb = torch.tensor(new float[] { (float)(-bias / 2), (float)(bias / 2) });
        return new ToxicityProbe(W, B, d, ProbeDirection.MassMean, sw, sb);
    }

    /// <summary>P(y | z) = σ(a·z + c) fitted by Newton's method (a tiny ridge keeps separable data finite).</summary>
    internal static (double A, double C) Logistic1D(IReadOnlyList<double> z, bool[] y, double ridge = 1e-4, int iterations = 50)
    {
        double a = 0, c = 0;
        for (int it = 0; it < iterations; it++)
        {
            double ga = -ridge * a, gc = 0, haa = ridge, hac = 0, hcc = 1e-12;
            for (int i = 0; i < z.Count; i++)
            {
                double p = 1 / (1 + Math.Exp(-(a * z[i] + c))), r = (y[i] ? 1 : 0) - p, w = p * (1 - p);
                ga += r * z[i]; gc += r;
                haa += w * z[i] * z[i]; hac += w * z[i]; hcc += w;
            }
            double det = haa * hcc - hac * hac;
            if (!(det > 0)) break;
            double da = (hcc * ga - hac * gc) / det, dc = (haa * gc - hac * ga) / det;
            a += da; c += dc;
            if (Math.Abs(da) + Math.Abs(dc) < 1e-10) break;
        }
        return (a, c);
    }

    /// <summary>Mean of the toxic rows minus mean of the non-toxic rows of <paramref name="features"/> [N, d] → [d] float32.</summary>
    public static Tensor MassMean(Tensor features, bool[] labels)
    {
        if (features.shape[0] != labels.Length) throw new ArgumentException("features and labels differ in length");
        int nTox = labels.Count(b => b), nNon = labels.Length - nTox;
        if (nTox == 0 || nNon == 0) throw new InvalidInputException($"the mass-mean direction needs toxic and non-toxic examples (got {nTox} and {nNon})");
        using var scope = torch.NewDisposeScope();
        var x = features.to(ScalarType.Float64).cpu();
        var m = torch.tensor(labels);
        var tox = x.index_select(0, torch.nonzero(m).flatten()).mean([0]);
        var non = x.index_select(0, torch.nonzero(m.logical_not()).flatten()).mean([0]);
        return (tox - non).to(ScalarType.Float32).MoveToOuterDisposeScope();
    }

    /// <summary>P(toxic) for features [N, d] → [N].</summary>
    public Tensor PredictToxic(Tensor features)
    {
        using var scope = torch.NewDisposeScope();
        var p = torch.nn.functional.softmax(features.to(ScalarType.Float32).cpu().matmul(W) + B, 1).select(1, 1);
        return p.MoveToOuterDisposeScope();
    }

    /// <summary>Share of <paramref name="features"/> rows ([n, d] mean residuals) classified as their <paramref name="labels"/>
    /// (toxic = P(toxic) ≥ 0.5); NaN for no rows.</summary>
    public double Accuracy(Tensor features, bool[] labels)
    {
        if (labels.Length == 0) return double.NaN;
        using var scope = torch.NewDisposeScope();
        var pred = PredictToxic(features).ge(0.5).data<bool>().ToArray();
        return pred.Zip(labels).Count(z => z.First == z.Second) / (double)labels.Length;
    }

    /// <summary>Probe features: last block's residual stream averaged over non-pad positions, [N, d] float32 CPU.</summary>
    public static Tensor Features(ICausalLM model, Gpt2Tokenizer tokenizer, IReadOnlyList<string> texts, int maxTokens = 128, int batchSize = 16, IProgress<int>? progress = null)
    {
        int cut = Math.Min(maxTokens, model.MaxPositions);
        var rows = new List<Tensor>();
        string hook = HookNames.ResidPost(model.NumLayers - 1);
        model.Module.eval();
        try
        {
            for (int s = 0; s < texts.Count; s += batchSize)
            {
                using var scope = torch.NewDisposeScope();
                var seqs = texts.Skip(s).Take(batchSize).Select(t =>
                {
                    var ids = tokenizer.Encode(t);
                    if (ids.Length == 0) ids = [model.EosTokenId];
                    return ids.Length > cut ? ids[..cut] : ids;
                }).ToList();
                var (ids, mask) = ActivationCache.Pad(seqs, model.EosTokenId, model.Device, left: false);
                using var cache = ActivationCache.Run(model, ids, mask, [hook]);
                var f = ActivationCache.MeanOverReal(cache[hook], cache.Mask).cpu();
                rows.Add(f.DetachFromDisposeScope());
                progress?.Report(Math.Min(texts.Count, s + batchSize));
            }
            var all = torch.cat(rows, 0);
            return all;
        }
        finally { foreach (var r in rows) r.Dispose(); }
    }

    /// <summary>Fits the probe by full-batch Adam on the cross-entropy of softmax(X·W + b), W and b starting at 0.</summary>
    public static (ToxicityProbe Probe, double FinalLoss) Fit(Tensor features, bool[] labels, int steps = 500, double learningRate = 1e-2, double l2 = 0, int seed = 0)
    {
        if (features.shape[0] != labels.Length) throw new ArgumentException("features and labels differ in length");
        if (labels.Length == 0) throw new InvalidInputException("no training examples for the probe");
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(seed);
        var x = features.to(ScalarType.Float32).cpu();
        long d = x.shape[1];
        var y = torch.tensor(labels.Select(b => b ? 1L : 0L).ToArray(), ScalarType.Int64);
        var w = new TorchSharp.Modules.Parameter(torch.zeros([d, 2], ScalarType.Float32));
        var b = new TorchSharp.Modules.Parameter(torch.zeros([2], ScalarType.Float32));
        var opt = torch.optim.Adam([w, b], learningRate);
        double last = double.NaN;
        for (int i = 0; i < steps; i++)
        {
            using var step = torch.NewDisposeScope();
            opt.zero_grad();
            var loss = torch.nn.functional.cross_entropy(x.matmul(w) + b, y);
            if (l2 > 0) loss = loss + l2 * w.pow(2).sum();
            loss.backward();
            opt.step();
            last = loss.item<float>();
        }
        ToxicityProbe probe;
        using (torch.no_grad()) probe = new ToxicityProbe(w, b);
        return (probe, last);
    }

    /// <summary>The seeded split of <paramref name="count"/> examples: a shuffle, the first share held out for validation.
    /// The study's bag-of-words baseline uses the same split as the probe.</summary>
    public static (int[] Validation, int[] Train) Split(int count, double validationFraction, int seed)
    {
        var order = Enumerable.Range(0, count).ToArray();
        new Random(seed).Shuffle(order);
        int nVal = Math.Max(1, (int)Math.Round(count * validationFraction));
        return (order[..nVal], order[nVal..]);
    }

    /// <summary>Features, seeded 90:10 split (shuffled), fit, accuracies.</summary>
    public static (ToxicityProbe Probe, ProbeReport Report) Train(ICausalLM model, Gpt2Tokenizer tokenizer, IReadOnlyList<LabelledComment> comments,
        ProbeOptions options, IProgress<int>? progress = null)
    {
        options.Validate();
        if (comments.Count < 2) throw new InvalidInputException($"need at least 2 labelled comments, got {comments.Count}");
        var (valIdx, trIdx) = Split(comments.Count, options.ValidationFraction, options.Seed);
        var order = valIdx.Concat(trIdx).ToArray();
        int nVal = valIdx.Length;
        using var x = Features(model, tokenizer, order.Select(i => comments[i].Text).ToList(), options.MaxTokens, options.BatchSize, progress);
        using var xVal = x.narrow(0, 0, nVal);
        using var xTr = x.narrow(0, nVal, trIdx.Length);
        var yVal = valIdx.Select(i => comments[i].Toxic).ToArray();
        var yTr = trIdx.Select(i => comments[i].Toxic).ToArray();
        var (probe, loss) = Fit(xTr, yTr, options.MaxSteps, options.LearningRate, options.L2, options.Seed);
        if (options.Direction == ProbeDirection.MassMean) { var fitted = probe; probe = fitted.WithMassMeanDirection(xTr, yTr); fitted.Dispose(); }
        int valTox = yVal.Count(b => b);
        var report = new ProbeReport(yTr.Length, yVal.Length, yTr.Count(b => b), valTox,
            probe.Accuracy(xTr, yTr), probe.Accuracy(xVal, yVal), Math.Max(valTox, yVal.Length - valTox) / (double)yVal.Length, loss);
        return (probe, report);
    }

    /// <summary>Writes <see cref="FileName"/> (and <see cref="MetricsFileName"/> when <paramref name="metrics"/> is given) into <paramref name="dir"/>, atomically.</summary>
    public void Save(string dir, JsonObject? metrics = null)
    {
        Directory.CreateDirectory(dir);
        using var wt = WToxic;
        var tensors = new Dictionary<string, Tensor> { ["W"] = W, ["b"] = B, ["w_toxic"] = wt };
        if (_steerW is not null) { tensors["steer_W"] = _steerW; tensors["steer_b"] = _steerB!; }
        Safetensors.Save(Path.Combine(dir, FileName), tensors,
            new Dictionary<string, string>
            {
                ["format"] = "detox-probe", ["hook"] = "last block hook_resid_post, mean over non-pad positions",
                ["w_toxic"] = DirectionKind == ProbeDirection.MassMean ? "mass-mean" : "weights",
            });
        if (metrics is not null) AtomicFile.WriteAllText(Path.Combine(dir, MetricsFileName), metrics.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
    }

    /// <summary>Loads a probe from a directory written by <see cref="Save"/> (or the probe file itself).</summary>
    public static ToxicityProbe Load(string dirOrFile)
    {
        var path = Directory.Exists(dirOrFile) ? Path.Combine(dirOrFile, FileName) : dirOrFile;
        if (!File.Exists(path)) throw new InvalidInputException($"--probe: {path} not found (run `detox probe` first)");
        var t = Safetensors.Load(path);
        try
        {
            if (!t.TryGetValue("W", out var w) || !t.TryGetValue("b", out var b))
                throw new InvalidInputException($"{path}: not a probe file (needs tensors W and b)");
            if (w.dim() != 2 || w.shape[1] != 2) throw new InvalidInputException($"{path}: W must be [d,2], got [{string.Join(",", w.shape)}]");
            // W_Toxic is stored as "w_toxic"; files whose metadata say "mass-mean" carry a direction other than W[:, 1]
            var kind = Safetensors.ReadHeader(path).Metadata?["w_toxic"]?.GetValue<string>();
            if (kind is "mass-mean")
            {
                if (!t.TryGetValue("w_toxic", out var dir) || dir.dim() != 1 || dir.shape[0] != w.shape[0])
                    throw new InvalidInputException($"{path}: metadata says w_toxic is mass-mean but tensor w_toxic [{w.shape[0]}] is missing or misshapen");
                t.TryGetValue("steer_W", out var sw);
                t.TryGetValue("steer_b", out var sb);
                if ((sw is null) != (sb is null) || sw is not null && (!sw.shape.SequenceEqual(w.shape) || sb!.numel() != 2))
                    throw new InvalidInputException($"{path}: steer_W must be [{w.shape[0]},2] with steer_b [2], both or neither");
                return new ToxicityProbe(w, b, dir, ProbeDirection.MassMean, sw, sb);
            }
            if (kind is not (null or "weights")) throw new InvalidInputException($"{path}: unknown w_toxic kind '{kind}' in metadata (weights or mass-mean)");
            return new ToxicityProbe(w, b);
        }
        finally { foreach (var v in t.Values) v.Dispose(); }
    }

    /// <summary>Throws when the probe's width differs from the model's.</summary>
    public void CheckFits(ICausalLM model, string flag = "--probe")
    {
        if (DModel != model.DModel) throw new InvalidInputException($"{flag}: probe width {DModel} does not match the model's d_model {model.DModel}");
    }

    /// <inheritdoc/>
    public void Dispose() { W.Dispose(); B.Dispose(); _direction?.Dispose(); _steerW?.Dispose(); _steerB?.Dispose(); }
}

using DetoxSharp.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.optim;

namespace DetoxSharp.Training;

/// <summary>
/// Multi-tensor ("fused") optimizers: the parameters are moved into ONE flat buffer (each parameter becomes a view of
/// its slice, so the model, checkpoints and hooks see ordinary tensors) and the optimizer state lives in flat buffers
/// of the same layout, so a step is a handful of large element-wise ops over all weights instead of ≈ 10 small ops per
/// parameter tensor issued from a managed loop (TorchSharp's optimizers). The gradients get a flat buffer of the same
/// layout too: at the first full step each parameter's <c>.grad</c> is copied into its slice and replaced by a view of
/// it, so later steps read the buffer directly, without a <c>torch.cat</c> (at GPT-2 medium a 1.4 GB copy into a fresh
/// 1.4 GB block per step). Autograd accumulates into an existing gradient in place, and <see cref="zero_grad"/> zeroes
/// the one buffer; a gradient that was replaced by another tensor since (its data is not at its slice any more) is
/// copied in and re-bound at the next step, so the values are always those of the parameters' <c>.grad</c>.
/// <para>
/// The update is TorchSharp's (and PyTorch's) formula, op for op in the same order, so it equals
/// <c>torch.optim.AdamW</c> / <c>RMSProp</c> up to fp32 rounding: the same per-element arithmetic, but a flat buffer
/// puts a tensor's elements at other offsets of the vectorised loops, where libtorch may use a fused multiply-add in
/// one place and a separate multiply and add in another (1 ulp). FusedOptimizerTests checks this.
/// </para>
/// A parameter whose gradient is missing at a step (not reached by the loss) is skipped that step, as TorchSharp does:
/// the step then runs segment by segment over views of the same buffers, and per-parameter step counts keep the
/// bias corrections exact.
/// Derived from TorchSharp's <see cref="OptimizerHelper"/>, so <c>ParamGroups</c> (learning-rate schedules),
/// <c>zero_grad</c>, <c>save_state_dict</c>/<c>load_state_dict</c> (TrainerCheckpoint) work unchanged; the saved state
/// is this class's own; <see cref="LoadTorchSharpState"/> reads a TorchSharp AdamW/RMSProp state of the same parameters
/// (TrainerCheckpoint uses it to resume checkpoints written before the switch).
/// </summary>
internal abstract class FusedOptimizer : OptimizerHelper
{
    protected readonly Parameter[] Params;
    readonly long[] _offsets, _sizes;
    /// <summary>All parameters, concatenated; each parameter's data is a view of its slice.</summary>
    protected readonly Tensor Flat;
    readonly FlatState _flat;
    readonly ParamGroup _group;
    /// <summary>The gradients' flat buffer (same layout as <see cref="Flat"/>), made at the first step that has every
    /// gradient; null before.</summary>
    Tensor? _gradFlat;

    protected FusedOptimizer(IEnumerable<Parameter> parameters, OptimizerOptions options, int stateBuffers)
    {
        Params = parameters.Distinct().ToArray();
        if (Params.Length == 0) throw new ArgumentException("no parameters to optimize");
        var dt = Params[0].dtype; var dev = Params[0].device;
        foreach (var p in Params)
            if (p.dtype != dt || p.device.ToString() != dev.ToString())
                throw new ArgumentException($"a fused optimizer needs all parameters in one dtype and device ({dt} on {dev}); got {p.dtype} on {p.device}");
        _sizes = Params.Select(p => p.numel()).ToArray();
        _offsets = new long[Params.Length];
        for (int i = 1; i < Params.Length; i++) _offsets[i] = _offsets[i - 1] + _sizes[i - 1];
        long total = _offsets[^1] + _sizes[^1];
        Flat = torch.empty(total, dt, dev);
        using (torch.no_grad())
            for (int i = 0; i < Params.Length; i++)
            {
                using var slice = Segment(Flat, i);
                slice.copy_(Params[i]);
                // the parameter keeps its identity (module registration, autograd leaf, existing .grad); only its
                // storage moves into the flat buffer
                Params[i].set_(slice);
            }
        _flat = new FlatState(Params[0], Enumerable.Range(0, stateBuffers).Select(_ => torch.zeros(total, dt, dev)).ToArray(), Params.Length);
        options.InitialLearningRate = options.LearningRate!.Value;
        _defaults = options;
        _group = new ParamGroup { Parameters = Params, Options = options };
        _parameter_groups = new List<ParamGroup> { _group };
        // TorchSharp's save/load walk one state record per parameter: the first carries the flat buffers, the others
        // are empty
        for (int i = 0; i < Params.Length; i++) _state[Params[i].Handle] = i == 0 ? _flat : new NoState(Params[i]);
    }

    /// <summary>Whether these parameters can share one flat buffer (one dtype, one device); otherwise trainers use
    /// TorchSharp's per-tensor optimizers.</summary>
    public static bool Supports(IReadOnlyList<Parameter> parameters) =>
        parameters.Count > 0 && parameters.All(p => p.dtype == parameters[0].dtype && p.device.ToString() == parameters[0].device.ToString());

    /// <summary>The update runs over the flat buffers in ranges of this many elements (0: in one range). The update's
    /// ≈ 5 element-wise ops then make temporaries of a range's size instead of the whole model's (at GPT-2 medium a
    /// 1.4 GB temporary per op, on fresh pages the kernel has to zero) and a range's slices are still in the CPU's cache
    /// from the previous op. The values are the same: every op is element-wise. Default 2²⁰ (4 MiB of fp32 per buffer):
    /// at GPT-2 medium an RMSprop step took 996–2,064 ms over the whole buffer, 204–209 ms in ranges of 2²⁰ and 2¹⁸–2²²
    /// within 1.5× of that (bench <c>--optimizer-ab 355m</c>, docs/PERFORMANCE.md). Per thread (a setting made on one
    /// thread does not change another's steps).</summary>
    public static long ChunkElements { get => _chunkElements ?? (1L << 20); set => _chunkElements = value; }
    [ThreadStatic] static long? _chunkElements;

    /// <summary>Number of parameter tensors and of scalar weights handled.</summary>
    public int TensorCount => Params.Length;
    public long NumberOfWeights => Flat.numel();

    /// <summary>Optimizer steps taken (per parameter; equal for all unless some parameter lacked a gradient).</summary>
    public long StepCount => _flat.Steps.Max();

    /// <summary>Parameter <paramref name="i"/>'s slice of a flat buffer of this optimizer's layout, in its shape.</summary>
    internal Tensor Segment(Tensor flat, int i) => flat.narrow(0, _offsets[i], _sizes[i]).view(Params[i].shape);

    /// <summary>Parameter <paramref name="i"/> in the layout's order.</summary>
    internal Parameter Parameter(int i) => Params[i];

    /// <summary>A flat buffer of this layout, possibly of another dtype, that every step writes the updated weights into
    /// (rounded to its dtype), range by range right after a range's update while it is in cache: mixed precision's
    /// working copy (<see cref="MixedPrecision.MirrorUpdates"/>). Null: none.</summary>
    internal Tensor? Mirror { get; set; }
    Tensor FlatSegment(Tensor flat, int i) => flat.narrow(0, _offsets[i], _sizes[i]);

    /// <summary>The per-element update of one flat range: parameter slice, gradient, state slices, step number. Runs
    /// under no_grad inside step()'s dispose scope.</summary>
    protected abstract void Update(Tensor param, Tensor grad, Tensor[] state, long step, OptimizerOptions options);

    public override Tensor step(Func<Tensor>? closure = null)
    {
        Tensor? loss = null;
        if (closure is not null)
            using (torch.enable_grad()) loss = closure();
        using var _ = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        var grads = new Tensor?[Params.Length];
        bool all = true;
        for (int i = 0; i < Params.Length; i++) { grads[i] = Params[i].grad; all &= grads[i] is not null; }
        var steps = _flat.Steps;
        bool sameStep = steps.All(s => s == steps[0]);
        var opts = _group.Options;
        if (all && sameStep)
        {
            var g = FlatGradients(grads!);
            for (int i = 0; i < steps.Length; i++) steps[i]++;
            long total = Flat.numel(), chunk = ChunkElements > 0 ? ChunkElements : total;
            for (long start = 0; start < total; start += chunk)
            {
                using var inner = torch.NewDisposeScope();
                long n = Math.Min(chunk, total - start);
                var param = Flat.narrow(0, start, n);
                Update(param, g.narrow(0, start, n), _flat.Buffers.Select(b => b.narrow(0, start, n)).ToArray(), steps[0], opts);
                if (Mirror is not null) { using var mirror = Mirror.narrow(0, start, n); mirror.copy_(param); }
            }
        }
        else
            for (int i = 0; i < Params.Length; i++)
            {
                if (grads[i] is null) continue;
                steps[i]++;
                var param = FlatSegment(Flat, i);
                Update(param, grads[i]!.reshape(-1), _flat.Buffers.Select(b => FlatSegment(b, i)).ToArray(), steps[i], opts);
                if (Mirror is not null) { using var mirror = FlatSegment(Mirror, i); mirror.copy_(param); }
            }
        return loss!;
    }

    /// <summary>The gradients as one flat tensor: the gradients' own buffer when every <c>.grad</c> is still the view of
    /// its slice (the steady state), else the buffer after copying the gradients in and re-binding each <c>.grad</c> to
    /// its slice; <c>torch.cat</c> when the gradients cannot live there (another dtype, device or shape) or the data
    /// addresses cannot be read.</summary>
    Tensor FlatGradients(Tensor[] grads)
    {
        bool fits = TensorAddress.Available;
        for (int i = 0; i < grads.Length && fits; i++)
            fits = grads[i].dtype == Flat.dtype && grads[i].device.ToString() == Flat.device.ToString() && grads[i].shape.SequenceEqual(Params[i].shape);
        if (!fits) return torch.cat(grads.Select(x => x.reshape(-1)).ToArray(), 0);
        if (_gradFlat is null)
        {
            using (torch.NewDisposeScope()) _gradFlat = torch.empty(Flat.numel(), Flat.dtype, Flat.device).DetachFromDisposeScope();
        }
        if (GradientsInFlatBuffer(grads)) return _gradFlat.view(-1);
        long baseAddress = TensorAddress.Of(_gradFlat);
        for (int i = 0; i < grads.Length; i++)
        {
            if (InSlice(grads[i], i, baseAddress)) continue;
            using var seg = Segment(_gradFlat, i);
            seg.copy_(grads[i]);
            Params[i].grad = seg; // the parameter holds its own reference; the old gradient is freed
        }
        return _gradFlat.view(-1);
    }

    /// <summary>Whether every gradient is the contiguous view of its slice of the gradients' flat buffer.</summary>
    bool GradientsInFlatBuffer(Tensor[] grads)
    {
        if (_gradFlat is null) return false;
        long baseAddress = TensorAddress.Of(_gradFlat);
        for (int i = 0; i < grads.Length; i++)
            if (!InSlice(grads[i], i, baseAddress)) return false;
        return true;
    }

    /// <summary>Whether <paramref name="grad"/> is the contiguous view of parameter <paramref name="i"/>'s slice of the
    /// gradients' flat buffer, which starts at <paramref name="baseAddress"/>.</summary>
    bool InSlice(Tensor grad, int i, long baseAddress) =>
        TensorAddress.Of(grad) == baseAddress + _offsets[i] * _gradFlat!.element_size() && grad.is_contiguous();

    /// <summary>Whether every parameter's gradient lives in the optimizer's flat gradient buffer (tests and benchmarks).</summary>
    internal bool GradientsAreFlat
    {
        get
        {
            var grads = Params.Select(p => p.grad).ToArray();
            try { return grads.All(g => g is not null) && GradientsInFlatBuffer(grads!); }
            finally { foreach (var g in grads) g?.Dispose(); }
        }
    }

    /// <summary>Zeroes the gradients: the flat buffer in one op when every gradient lives there, else each gradient
    /// (TorchSharp's behaviour).</summary>
    public override void zero_grad()
    {
        if (GradientsAreFlat) { using (torch.no_grad()) _gradFlat!.zero_(); }
        else base.zero_grad();
    }

    /// <summary>The TorchSharp optimizer this one computes like (AdamW or RMSProp), e.g. "AdamW".</summary>
    public abstract string TorchSharpKind { get; }

    /// <summary>Loads state saved by TorchSharp's <see cref="TorchSharpKind"/> optimizer over the same parameters (a
    /// checkpoint written before the trainers switched to fused optimizers), so such runs still resume exactly.</summary>
    public void LoadTorchSharpState(string path)
    {
        using OptimizerHelper t = this switch
        {
            FusedAdamW => torch.optim.AdamW(Params),
            FusedRMSprop => torch.optim.RMSProp(Params),
            _ => throw new NotSupportedException(GetType().Name),
        };
        t.load_state_dict(path);
        var sd = t.state_dict();
        _group.Options.LearningRate = sd.Options[0].LearningRate;
        _group.Options.InitialLearningRate = sd.Options[0].InitialLearningRate;
        using var _ = torch.no_grad();
        for (int i = 0; i < Params.Length; i++)
        {
            (long step, Tensor[] src) = sd.State[i] switch
            {
                TorchSharp.Modules.AdamW.State a when a.max_exp_avg_sq is null => (a.step, new[] { a.exp_avg, a.exp_avg_sq }),
                // TorchSharp allocates the momentum and centering buffers either way; its options say whether they are used
                TorchSharp.Modules.RMSProp.State r when sd.Options[0] is TorchSharp.Modules.RMSProp.Options { momentum: null or 0.0, centered: null or false }
                    => (r.step, new[] { r.square_avg }),
                var other => throw new InvalidDataException($"{path}: optimizer state {other.GetType().FullName} (amsgrad, momentum or centered) has no fused counterpart"),
            };
            for (int b = 0; b < src.Length; b++)
            {
                using var seg = FlatSegment(_flat.Buffers[b], i);
                using var flat = src[b].reshape(-1);
                seg.copy_(flat);
            }
            _flat.Steps[i] = step;
        }
    }

    protected override void Dispose(bool disposing)
    {
        base.Dispose(disposing);
        if (disposing) { foreach (var b in _flat.Buffers) b.Dispose(); Flat.Dispose(); _gradFlat?.Dispose(); }
    }

    sealed class NoState(Parameter p) : OptimizerState(p)
    {
        public override void SaveStateDict(BinaryWriter writer) { }
        public override void LoadStateDict(BinaryReader reader) { }
        public override void LoadStateDict(OptimizerState source) { }
        public override void Initialize(OptimizerOptions options) { }
    }

    /// <summary>Per-parameter step counts and the flat state buffers, saved as one record (shapes are checked on load).</summary>
    sealed class FlatState : OptimizerState
    {
        public readonly long[] Steps;
        public readonly Tensor[] Buffers;
        public FlatState(Parameter first, Tensor[] buffers, int count) : base(first) { Buffers = buffers; Steps = new long[count]; }

        public override void SaveStateDict(BinaryWriter writer)
        {
            writer.Write(Steps.Length);
            foreach (var s in Steps) writer.Write(s);
            writer.Write(Buffers.Length);
            foreach (var b in Buffers) b.Save(writer);
        }

        public override void LoadStateDict(BinaryReader reader)
        {
            int n = reader.ReadInt32();
            if (n != Steps.Length) throw new InvalidDataException($"optimizer state has {n} parameters, this optimizer {Steps.Length}");
            var steps = new long[n];
            for (int i = 0; i < n; i++) steps[i] = reader.ReadInt64();
            int nb = reader.ReadInt32();
            if (nb != Buffers.Length) throw new InvalidDataException($"optimizer state has {nb} buffers, this optimizer {Buffers.Length}");
            // read into fresh tensors first, so that a truncated stream leaves this state as it was
            var loaded = Buffers.Select(b => torch.zeros_like(b)).ToArray();
            try
            {
                foreach (var t in loaded) t.Load(reader);
                using (torch.no_grad())
                    for (int i = 0; i < nb; i++) Buffers[i].copy_(loaded[i]);
            }
            finally { foreach (var t in loaded) t.Dispose(); }
            Array.Copy(steps, Steps, n);
        }

        public override void LoadStateDict(OptimizerState source)
        {
            var s = (FlatState)source;
            using (torch.no_grad())
                for (int i = 0; i < Buffers.Length; i++) Buffers[i].copy_(s.Buffers[i]);
            Array.Copy(s.Steps, Steps, Steps.Length);
        }

        public override void Initialize(OptimizerOptions options) { }
    }
}

/// <summary>AdamW (decoupled weight decay; Loshchilov &amp; Hutter) over flat buffers: TorchSharp's
/// <c>torch.optim.AdamW</c> update without amsgrad/maximize.</summary>
internal sealed class FusedAdamW : FusedOptimizer
{
    public sealed class Options : OptimizerOptions
    {
        public double Beta1, Beta2, Eps, WeightDecay;
        public override void SaveStateDict(BinaryWriter w) { base.SaveStateDict(w); w.Write(Beta1); w.Write(Beta2); w.Write(Eps); w.Write(WeightDecay); }
        public override void LoadStateDict(BinaryReader r) { base.LoadStateDict(r); Beta1 = r.ReadDouble(); Beta2 = r.ReadDouble(); Eps = r.ReadDouble(); WeightDecay = r.ReadDouble(); }
        public override void LoadStateDict(OptimizerOptions s) { base.LoadStateDict(s); var o = (Options)s; (Beta1, Beta2, Eps, WeightDecay) = (o.Beta1, o.Beta2, o.Eps, o.WeightDecay); }
    }

    public override string TorchSharpKind => "AdamW";

    public FusedAdamW(IEnumerable<Parameter> parameters, double lr = 1e-3, double beta1 = 0.9, double beta2 = 0.999, double eps = 1e-8, double weightDecay = 0)
        : base(parameters, Checked(new Options { LearningRate = lr, Beta1 = beta1, Beta2 = beta2, Eps = eps, WeightDecay = weightDecay }), 2) { }

    static Options Checked(Options o)
    {
        if (!(o.LearningRate >= 0)) throw new ArgumentException($"Invalid learning rate: {o.LearningRate}");
        if (!(o.Beta1 >= 0 && o.Beta1 < 1) || !(o.Beta2 >= 0 && o.Beta2 < 1)) throw new ArgumentException($"Invalid betas: {o.Beta1}, {o.Beta2}");
        if (!(o.Eps >= 0)) throw new ArgumentException($"Invalid eps: {o.Eps}");
        if (!(o.WeightDecay >= 0)) throw new ArgumentException($"Invalid weight_decay: {o.WeightDecay}");
        return o;
    }

    protected override void Update(Tensor param, Tensor grad, Tensor[] state, long step, OptimizerOptions options)
    {
        var o = (Options)options;
        double lr = o.LearningRate!.Value;
        var (expAvg, expAvgSq) = (state[0], state[1]);
        // the order of TorchSharp's AdamW.step, so that each element sees the same roundings
        param.mul_(1 - lr * o.WeightDecay);
        double bc1 = 1 - Math.Pow(o.Beta1, step), bc2 = 1 - Math.Pow(o.Beta2, step);
        expAvg.mul_(o.Beta1).add_(grad, alpha: 1 - o.Beta1);
        expAvgSq.mul_(o.Beta2).addcmul_(grad, grad, value: 1 - o.Beta2);
        var denom = (expAvgSq.sqrt() / Math.Sqrt(bc2)).add_(o.Eps);
        param.addcdiv_(expAvg, denom, value: -(lr / bc1));
    }
}

/// <summary>RMSprop (Hinton's lecture 6e; the optimizer of Lee et al.'s DPO runs) over flat buffers: TorchSharp's
/// <c>torch.optim.RMSProp</c> update without momentum, centering or maximize.</summary>
internal sealed class FusedRMSprop : FusedOptimizer
{
    public sealed class Options : OptimizerOptions
    {
        public double Alpha, Eps, WeightDecay;
        public override void SaveStateDict(BinaryWriter w) { base.SaveStateDict(w); w.Write(Alpha); w.Write(Eps); w.Write(WeightDecay); }
        public override void LoadStateDict(BinaryReader r) { base.LoadStateDict(r); Alpha = r.ReadDouble(); Eps = r.ReadDouble(); WeightDecay = r.ReadDouble(); }
        public override void LoadStateDict(OptimizerOptions s) { base.LoadStateDict(s); var o = (Options)s; (Alpha, Eps, WeightDecay) = (o.Alpha, o.Eps, o.WeightDecay); }
    }

    public override string TorchSharpKind => "RMSProp";

    public FusedRMSprop(IEnumerable<Parameter> parameters, double lr = 1e-2, double alpha = 0.99, double eps = 1e-8, double weightDecay = 0)
        : base(parameters, Checked(new Options { LearningRate = lr, Alpha = alpha, Eps = eps, WeightDecay = weightDecay }), 1) { }

    static Options Checked(Options o)
    {
        if (!(o.LearningRate >= 0)) throw new ArgumentException($"Invalid learning rate: {o.LearningRate}");
        if (!(o.Alpha >= 0)) throw new ArgumentException($"Invalid alpha: {o.Alpha}");
        if (!(o.Eps >= 0)) throw new ArgumentException($"Invalid eps: {o.Eps}");
        if (!(o.WeightDecay >= 0)) throw new ArgumentException($"Invalid weight_decay: {o.WeightDecay}");
        return o;
    }

    protected override void Update(Tensor param, Tensor grad, Tensor[] state, long step, OptimizerOptions options)
    {
        var o = (Options)options;
        var squareAvg = state[0];
        var g = o.WeightDecay != 0 ? grad.add(param, alpha: o.WeightDecay) : grad; // temporaries die with step()'s dispose scope
        squareAvg.mul_(o.Alpha).addcmul_(g, g, value: 1 - o.Alpha);
        var avg = squareAvg.sqrt().add_(o.Eps);
        param.addcdiv_(g, avg, -o.LearningRate!.Value);
    }
}

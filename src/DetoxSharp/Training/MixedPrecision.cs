using DetoxSharp.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Training;

/// <summary>Numeric precision of a training run (<see cref="SftOptions.Precision"/>, <see cref="PreferenceTrainerOptions.Precision"/>).</summary>
public enum Precision
{
    /// <summary>Forward, backward and update in the model's own dtype: fp32 for a float32 model (the default), pure
    /// bfloat16 — weights, gradients and optimizer state all bf16, no master copy — for a model loaded as bfloat16.
    /// CLI <c>--precision fp32</c>.</summary>
    ModelDType,
    /// <summary>bfloat16 compute with fp32 master weights and fp32 optimizer state (<see cref="MixedPrecision"/>); the
    /// model must be float32. CLI <c>--precision bf16-mixed</c>.</summary>
    Bf16Mixed,
}

/// <summary>
/// Mixed-precision training without autocast (TorchSharp has none): the caller's model stays float32 and is the
/// <b>master</b> — its parameters are what the optimizer updates, so optimizer state, clipping and checkpoints are fp32
/// exactly as in an fp32 run. A <b>working copy</b> in the compute dtype (bfloat16) runs forward and backward:
/// <list type="number">
/// <item>forward + backward on <see cref="Working"/> (bf16 matmuls; trainers still cast logits to fp32 before log-softmax,
/// so the loss is fp32);</item>
/// <item><see cref="AccumulateGradients"/> after each micro-batch: master.grad (fp32) += bf16 grad cast to fp32, then the
/// bf16 grads are zeroed — accumulation across micro-batches happens in fp32 on the master;</item>
/// <item>clipping and the optimizer step on the master, in fp32;</item>
/// <item><see cref="SyncWorking"/>: master → working copy (round to nearest bf16) under no_grad.</item>
/// </list>
/// No loss scaling: bfloat16 has fp32's exponent range, so gradients do not underflow the way fp16's do.
/// Model-agnostic: the copy is <see cref="ICausalLM.Clone"/> cast with <c>Module.to(dtype)</c>, and parameters are
/// paired by name (same names and shapes, checked once). Updates smaller than bf16's resolution (relative 2⁻⁸) are
/// kept by the master and reach the working copy once they add up, which pure bf16 training loses.
/// With LoRA adapters on the master, the working copy carries copies of them (base frozen in both).
/// </summary>
public sealed class MixedPrecision : IDisposable
{
    /// <summary>The fp32 model the optimizer updates (the caller's model; not owned).</summary>
    public ICausalLM Master { get; }
    /// <summary>The compute-dtype copy that runs forward and backward (owned: disposed with this object).</summary>
    public ICausalLM Working { get; }
    /// <summary>The dtype of <see cref="Working"/>.</summary>
    public ScalarType ComputeDType { get; }

    readonly Tensor[] _master, _work;         // trainable pairs (gradients)
    readonly Tensor[] _allMaster, _allWork;   // every pair (weight sync)
    bool _disposed;

    /// <summary>The helper for <paramref name="precision"/>, or null when the model trains in its own dtype.</summary>
    public static MixedPrecision? For(ICausalLM model, Precision precision) =>
        precision == Precision.Bf16Mixed ? new MixedPrecision(model) : null;

    /// <summary>Throws when <paramref name="precision"/> cannot be used with <paramref name="model"/> (mixed precision
    /// needs a float32 master). Trainers call it before any work.</summary>
    public static void CheckModel(ICausalLM model, Precision precision)
    {
        if (precision == Precision.Bf16Mixed && model.DType != ScalarType.Float32)
            throw new InvalidInputException($"--precision bf16-mixed keeps fp32 master weights and needs a float32 model, but it was loaded as {model.DType} (drop --dtype bfloat16)");
    }

    /// <summary>Makes the working copy of <paramref name="master"/>.</summary>
    /// <param name="master">The float32 model the optimizer updates.</param>
    /// <param name="computeDType">The working copy's dtype.</param>
    public MixedPrecision(ICausalLM master, ScalarType computeDType = ScalarType.BFloat16)
    {
        CheckModel(master, Precision.Bf16Mixed);
        if (computeDType is not (ScalarType.BFloat16 or ScalarType.Float16 or ScalarType.Float32))
            throw new ArgumentException($"compute dtype must be a floating type, got {computeDType}", nameof(computeDType));
        Master = master;
        ComputeDType = computeDType;
        Working = master.Clone(); // the base parameters only
        try
        {
            // LoRA: the working copy gets the same adapters (frozen base, trainable A/B), so the pairing below covers
            // the adapter parameters like any other and the fp32 master holds the adapters' optimizer state
            Checkpoints.LoraAdapters.Of(master)?.AttachCopy(Working);
            Working.Module.to(computeDType);
            var mine = master.Module.named_parameters().ToList();
            var theirs = Working.Module.named_parameters().ToDictionary(x => x.name, x => x.parameter);
            if (mine.Count != theirs.Count)
                throw new InvalidOperationException($"mixed precision: the working copy has {theirs.Count} parameters, the master {mine.Count}");
            var m = new List<Tensor>(); var w = new List<Tensor>(); var am = new List<Tensor>(); var aw = new List<Tensor>();
            foreach (var (name, p) in mine)
            {
                if (!theirs.TryGetValue(name, out var q))
                    throw new InvalidOperationException($"mixed precision: the working copy has no parameter '{name}'");
                if (!p.shape.SequenceEqual(q.shape))
                    throw new InvalidOperationException($"mixed precision: '{name}' is [{string.Join(',', p.shape)}] in the master, [{string.Join(',', q.shape)}] in the working copy");
                if (q.dtype != computeDType)
                    throw new InvalidOperationException($"mixed precision: '{name}' is {q.dtype} in the working copy after the cast to {computeDType}");
                q.requires_grad_(p.requires_grad); // frozen master parameters stay frozen in the copy
                am.Add(p); aw.Add(q);
                if (!p.requires_grad) continue;
                m.Add(p); w.Add(q);
            }
            _master = m.ToArray();
            _work = w.ToArray();
            _allMaster = am.ToArray();
            _allWork = aw.ToArray();
            if (master.Module.training) Working.Module.train(); else Working.Module.eval();
        }
        catch
        {
            Working.Dispose();
            throw;
        }
    }

    /// <summary>Adds the working copy's gradients, cast to fp32, into the master's .grad (creating it when the optimizer
    /// left none) and zeroes the working gradients. Call once after each micro-batch's backward. The cast bf16 → fp32 is
    /// exact, so after one micro-batch master.grad equals the bf16 gradient; accumulation sums in fp32.</summary>
    public void AccumulateGradients()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        for (int i = 0; i < _work.Length; i++)
        {
            var wg = _work[i].grad;
            if (wg is null) continue; // parameter not reached by this loss
            var mg = _master[i].grad;
            if (mg is null) _master[i].grad = wg.to(ScalarType.Float32); // autograd keeps its own reference
            else mg.add_(wg);
            wg.zero_();
        }
    }

    /// <summary>Copies the master weights into the working copy (rounded to the compute dtype). Call after each optimizer
    /// step and whenever the master was changed from outside (e.g. a resume that loaded weights into it).</summary>
    public void SyncWorking()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        using var _ = torch.no_grad();
        for (int i = 0; i < _allWork.Length; i++) _allWork[i].copy_(_allMaster[i]);
    }

    /// <summary>Sets train/eval mode of the working copy (the master's mode is the caller's business).</summary>
    public void Train(bool on = true)
    {
        if (on) Working.Module.train(); else Working.Module.eval();
    }

    /// <summary>Disposes the working copy (the master stays the caller's).</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        Working.Dispose();
    }
}

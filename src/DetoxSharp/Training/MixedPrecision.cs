using DetoxSharp.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Training;

/// <summary>Numeric precision of a training run (<see cref="SftOptions.Precision"/>, <see cref="PreferenceTrainerOptions.Precision"/>).
/// In JSON (study configs, option files) it is written "fp32", "bf16-mixed" or "auto", as on the command line.</summary>
[System.Text.Json.Serialization.JsonConverter(typeof(PrecisionJsonConverter))]
public enum Precision
{
    /// <summary>Forward, backward and update in the model's own dtype: fp32 for a float32 model (the default), pure
    /// bfloat16 — weights, gradients and optimizer state all bf16, no master copy — for a model loaded as bfloat16.
    /// CLI <c>--precision fp32</c>.</summary>
    ModelDType,
    /// <summary>bfloat16 compute with fp32 master weights and fp32 optimizer state (<see cref="MixedPrecision"/>); the
    /// model must be float32. CLI <c>--precision bf16-mixed</c>.</summary>
    Bf16Mixed,
    /// <summary><see cref="Bf16Mixed"/> when a float32 model trains on a CPU with native bfloat16 instructions
    /// (<see cref="CpuFeatures.NativeBf16"/>: AVX512-BF16 or AMX-BF16), else <see cref="ModelDType"/> (CUDA devices,
    /// bfloat16 models, CPUs that would emulate bf16 and run slower than fp32). Trainers resolve it once, before any work
    /// (<see cref="MixedPrecision.Resolve"/>); checkpoints and results record the resolved value. The CLI's and the
    /// study's default; the library's option records keep <see cref="ModelDType"/> so that a library call's numbers do
    /// not depend on the CPU unless asked. CLI <c>--precision auto</c>.</summary>
    Auto,
}

/// <summary>Reads and writes <see cref="Precision"/> as "fp32", "bf16-mixed" or "auto" (the CLI's names); the enum's
/// member names are accepted on input too.</summary>
public sealed class PrecisionJsonConverter : System.Text.Json.Serialization.JsonConverter<Precision>
{
    /// <summary>The CLI/config name of <paramref name="p"/>.</summary>
    public static string Name(Precision p) => p switch { Precision.Bf16Mixed => "bf16-mixed", Precision.Auto => "auto", _ => "fp32" };

    /// <summary>Parses a CLI/config name; null when it is not one.</summary>
    public static Precision? Parse(string? s) => s?.ToLowerInvariant() switch
    {
        "fp32" or "modeldtype" => Precision.ModelDType,
        "bf16-mixed" or "bf16mixed" => Precision.Bf16Mixed,
        "auto" => Precision.Auto,
        _ => null,
    };

    /// <inheritdoc/>
    public override Precision Read(ref System.Text.Json.Utf8JsonReader reader, Type typeToConvert, System.Text.Json.JsonSerializerOptions options)
    {
        if (reader.TokenType != System.Text.Json.JsonTokenType.String)
            throw new System.Text.Json.JsonException("precision: expected \"fp32\", \"bf16-mixed\" or \"auto\"");
        var s = reader.GetString();
        return Parse(s) ?? throw new System.Text.Json.JsonException($"precision: expected \"fp32\", \"bf16-mixed\" or \"auto\", got \"{s}\"");
    }

    /// <inheritdoc/>
    public override void Write(System.Text.Json.Utf8JsonWriter writer, Precision value, System.Text.Json.JsonSerializerOptions options) =>
        writer.WriteStringValue(Name(value));
}

/// <summary>What the CPU offers that decides defaults.</summary>
public static class CpuFeatures
{
    static readonly Lazy<bool> Bf16 = new(() =>
    {
        var env = Environment.GetEnvironmentVariable("DETOX_NATIVE_BF16");
        if (env is "0" or "1") return env == "1";
        return CpuInfo() is string text && FlagsHaveBf16(text);
    });

    /// <summary>The text of /proc/cpuinfo on Linux, or null when there is none or it cannot be read.</summary>
    static string? CpuInfo()
    {
        try { return OperatingSystem.IsLinux() && File.Exists("/proc/cpuinfo") ? File.ReadAllText("/proc/cpuinfo") : null; }
        catch (IOException) { return null; }
        catch (UnauthorizedAccessException) { return null; }
    }

    /// <summary>True when this CPU has native bfloat16 arithmetic (x86: the <c>avx512_bf16</c> or <c>amx_bf16</c> flag of
    /// /proc/cpuinfo; ARM: <c>bf16</c> in its Features line). Read once; <c>DETOX_NATIVE_BF16=0|1</c> overrides it.
    /// Other operating systems report false (no detection there yet), so <see cref="Precision.Auto"/> trains in fp32.</summary>
    public static bool NativeBf16 => Bf16.Value;

    /// <summary>Whether a /proc/cpuinfo text names a native bf16 flag on its "flags" (x86) or "Features" (ARM) lines.</summary>
    /// <param name="cpuinfo">The text of /proc/cpuinfo.</param>
    public static bool FlagsHaveBf16(string cpuinfo)
    {
        foreach (var (key, value) in Fields(cpuinfo))
        {
            if (key is not ("flags" or "Features")) continue;
            var flags = value.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (flags.Contains("avx512_bf16") || flags.Contains("amx_bf16") || (key == "Features" && flags.Contains("bf16"))) return true;
        }
        return false;
    }

    static readonly Lazy<string> Desc = new(() => CpuInfo() is string text ? Describe(text) : "unknown CPU (no readable /proc/cpuinfo)");

    /// <summary>This CPU in one line, for the context of timings (bench headers, <c>detox info</c>): model name, x86 family
    /// and model, the AMD core generation where known, and the vector flags that decide the speed of libtorch's kernels.
    /// Two machines with the same "model name" can differ twice in AVX-512 throughput per cycle (AMD's Zen 4 runs
    /// 512-bit operations in two 256-bit halves, Zen 5's server cores in one), so figures name the generation.</summary>
    public static string Description => Desc.Value;

    /// <summary>The one-line description of <see cref="Description"/> for a /proc/cpuinfo text.</summary>
    /// <param name="cpuinfo">The text of /proc/cpuinfo.</param>
    internal static string Describe(string cpuinfo)
    {
        string? name = null, family = null, model = null;
        foreach (var (key, value) in Fields(cpuinfo))
        {
            if (key == "model name") name ??= value;
            else if (key == "cpu family") family ??= value;
            else if (key == "model") model ??= value;
        }
        var (vendor, flags) = X86VendorAndFlags(cpuinfo);
        var parts = new List<string> { name ?? "unknown CPU" };
        if (int.TryParse(family, out int f) && int.TryParse(model, out int m))
        {
            string? gen = vendor == "AuthenticAMD" ? AmdGeneration(f, m) : null;
            parts.Add($"family {f} model {m}" + (gen is null ? "" : $" ({gen})"));
        }
        var vec = new[] { "avx2", "avx512f", "avx512_bf16", "amx_bf16" }.Where(flags.Contains).ToList();
        if (vec.Count > 0) parts.Add(string.Join(' ', vec));
        return string.Join(", ", parts);
    }

    /// <summary>AMD's core generation for an x86 family and model (AMD's published family/model ranges), or null.</summary>
    static string? AmdGeneration(int family, int model) => family switch
    {
        0x17 => model < 0x30 ? "Zen/Zen+" : "Zen 2",
        0x19 => model is >= 0x10 and <= 0x1F or >= 0x60 and <= 0x7F or >= 0xA0 and <= 0xAF ? "Zen 4" : "Zen 3",
        0x1A => "Zen 5",
        _ => null,
    };

    /// <summary>The first processor's <c>vendor_id</c> (null if none) and <c>flags</c> in a /proc/cpuinfo text (x86).</summary>
    internal static (string? Vendor, HashSet<string> Flags) X86VendorAndFlags(string cpuinfo)
    {
        string? vendor = null;
        HashSet<string>? flags = null;
        foreach (var (key, value) in Fields(cpuinfo))
        {
            if (key == "vendor_id") vendor ??= value;
            else if (key == "flags") flags ??= [.. value.Split(' ', StringSplitOptions.RemoveEmptyEntries)];
        }
        return (vendor, flags ?? []);
    }

    /// <summary>The "key : value" lines of a /proc/cpuinfo text, both trimmed.</summary>
    static IEnumerable<(string Key, string Value)> Fields(string cpuinfo)
    {
        foreach (var line in cpuinfo.Split('\n'))
        {
            int colon = line.IndexOf(':');
            if (colon >= 0) yield return (line[..colon].Trim(), line[(colon + 1)..].Trim());
        }
    }
}

/// <summary>
/// Mixed-precision training without autocast (TorchSharp has none): the caller's model stays float32 and is the
/// <b>master</b> — its parameters are what the optimizer updates, so optimizer state, clipping and checkpoints are fp32
/// exactly as in an fp32 run. A <b>working copy</b> in the compute dtype (bfloat16) runs forward and backward:
/// <list type="number">
/// <item>forward + backward on <see cref="Working"/> (bf16 matmuls; trainers still cast logits to fp32 before log-softmax,
/// so the loss is fp32);</item>
/// <item><see cref="AccumulateGradients(bool, double)"/> after each micro-batch: master.grad (fp32) += bf16 grad cast to
/// fp32 (the step's first micro-batch replaces it, the last divides by the step's Σ weight), then the bf16 grads are
/// released (set to none) — accumulation across micro-batches happens in fp32 on the master;</item>
/// <item>clipping and the optimizer step on the master, in fp32;</item>
/// <item>master → working copy (round to nearest bf16) under no_grad: written by a fused optimizer range by range
/// (<see cref="MirrorUpdates"/>), else <see cref="SyncTrained"/>.</item>
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
    /// <summary>The working copy's trainable weights in one buffer an optimizer writes after each step (<see cref="MirrorUpdates"/>); null when not.</summary>
    Tensor? _mirror;
    /// <summary>The optimizer that writes <see cref="_mirror"/> (its reference is dropped when this object is disposed).</summary>
    FusedOptimizer? _mirroredBy;
    bool _disposed;

    /// <summary>The helper for <paramref name="precision"/>, or null when the model trains in its own dtype.</summary>
    public static MixedPrecision? For(ICausalLM model, Precision precision) =>
        precision == Precision.Bf16Mixed ? new MixedPrecision(model) : null;

    /// <summary>The precision a run of <paramref name="model"/> uses for <paramref name="precision"/>: <see cref="Precision.Auto"/>
    /// becomes <see cref="Precision.Bf16Mixed"/> for a float32 model on a CPU with native bf16 (<paramref name="nativeBf16"/>,
    /// default <see cref="CpuFeatures.NativeBf16"/>) and <see cref="Precision.ModelDType"/> otherwise; the others are kept.</summary>
    public static Precision Resolve(ICausalLM model, Precision precision, bool? nativeBf16 = null) =>
        precision != Precision.Auto ? precision
        : model.DType == ScalarType.Float32 && model.Device.type == DeviceType.CPU && (nativeBf16 ?? CpuFeatures.NativeBf16) ? Precision.Bf16Mixed
        : Precision.ModelDType;

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
        Working = CastCopy();
        try
        {
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
            _replicas.Add((Working, _work));
            Train(master.Module.training);
        }
        catch
        {
            Working.Dispose();
            throw;
        }
    }

    /// <summary>A copy of the master in the compute dtype: the working copy, and each replica. LoRA: the copy gets the
    /// same adapters (frozen base, trainable A/B), so the pairing by name covers the adapter parameters like any other and
    /// the fp32 master holds the adapters' optimizer state.</summary>
    ICausalLM CastCopy()
    {
        var copy = Master.Clone(); // the base parameters only
        try
        {
            Checkpoints.LoraAdapters.Of(Master)?.AttachCopy(copy);
            copy.Module.to(ComputeDType);
            return copy;
        }
        catch
        {
            copy.Dispose();
            throw;
        }
    }

    /// <summary>Adds the working copy's gradients, cast to fp32, into the master's .grad (creating it when the optimizer
    /// left none) and releases the working gradients (sets them to none). Call once after each micro-batch's backward. The cast bf16 → fp32 is
    /// exact, so after one micro-batch master.grad equals the bf16 gradient; accumulation sums in fp32.</summary>
    public void AccumulateGradients() => AccumulateGradients(overwrite: false, divisor: 1);

    /// <summary><see cref="AccumulateGradients()"/> with the step's first and last passes over the master gradients folded
    /// in: with <paramref name="overwrite"/> (the step's first micro-batch) the master gradients are replaced instead of
    /// added to, so they need no zeroing before (a master gradient this backward did not reach is zeroed); with a
    /// <paramref name="divisor"/> ≠ 1 (the last micro-batch of a step that averages over examples) the sums are divided by
    /// it afterwards. The values are those of zero_grad, add and a later <c>div_(divisor)</c> (0 + x = x), computed range
    /// by range (<see cref="FusedOptimizer.ChunkElements"/>) while a range is in the CPU's cache — at GPT-2 medium this
    /// saves three passes over 1.4 GB of fp32 gradients a step.</summary>
    /// <param name="overwrite">Replace the master gradients (the step's first micro-batch).</param>
    /// <param name="divisor">Divide the master gradients by this after adding (1: not at all).</param>
    public void AccumulateGradients(bool overwrite, double divisor) => AccumulateFrom(_work, overwrite, divisor);

    /// <summary><see cref="AccumulateGradients(bool, double)"/> from replica <paramref name="replica"/> (0: <see cref="Working"/>;
    /// see <see cref="AddReplicas"/>).</summary>
    internal void AccumulateGradients(int replica, bool overwrite, double divisor) =>
        AccumulateFrom(_replicas[replica].Work, overwrite, divisor);

    /// <summary>The working copy that runs micro-batch slot <paramref name="replica"/> of a step: 0 is <see cref="Working"/>,
    /// the others are <see cref="AddReplicas"/>'s.</summary>
    internal ICausalLM Replica(int replica) => _replicas[replica].Model;

    /// <summary>Number of working copies (<see cref="Working"/> and its replicas).</summary>
    internal int Replicas => _replicas.Count;

    /// <summary>Makes working copies until there are <paramref name="count"/>, for micro-batches run side by side on
    /// several threads (<see cref="TrainingLoop"/>): each replica is a model of its own (its own autograd graph and
    /// gradients) whose parameters are views of <see cref="Working"/>'s storage, so the weights exist once and an update
    /// written into the working copy (<see cref="SyncTrained"/>, <see cref="MirrorUpdates"/>) is every replica's at once.
    /// Call after <see cref="MirrorUpdates"/>.</summary>
    internal void AddReplicas(int count)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var mine = Working.Module.named_parameters().ToDictionary(x => x.name, x => x.parameter);
        var names = mine.ToDictionary(kv => kv.Value.Handle, kv => kv.Key);
        while (Replicas < count)
        {
            var copy = CastCopy();
            try
            {
                var theirs = copy.Module.named_parameters().ToDictionary(x => x.name, x => x.parameter);
                if (theirs.Count != mine.Count)
                    throw new InvalidOperationException($"mixed precision: a replica has {theirs.Count} parameters, the working copy {mine.Count}");
                using (torch.no_grad())
                    foreach (var (name, w) in mine)
                    {
                        var q = theirs[name];
                        ((TorchSharp.Modules.Parameter)q).set_(w); // the working copy's storage; a leaf of its own
                        q.requires_grad_(w.requires_grad);
                    }
                _replicas.Add((copy, _work.Select(w => (Tensor)theirs[names[w.Handle]]).ToArray()));
            }
            catch
            {
                copy.Dispose();
                throw;
            }
        }
        Train(Working.Module.training);
    }

    /// <summary>Every working copy — [0] is <see cref="Working"/>, then <see cref="AddReplicas"/>'s — with its trainable
    /// parameters in <see cref="_work"/>'s order.</summary>
    readonly List<(ICausalLM Model, Tensor[] Work)> _replicas = [];

    void AccumulateFrom(Tensor[] work, bool overwrite, double divisor)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        for (int i = 0; i < work.Length; i++)
        {
            var wg = work[i].grad;
            var mg = _master[i].grad;
            if (wg is null) // parameter not reached by this loss
            {
                if (mg is null) continue;
                if (overwrite) mg.zero_();
                else if (divisor != 1) mg.div_(divisor);
                continue;
            }
            // a master gradient the optimizer left none of is made here and filled like a zeroed one (0 + x = x)
            bool replace = overwrite || mg is null;
            if (mg is null) _master[i].grad = mg = torch.empty(wg.shape, ScalarType.Float32, wg.device); // autograd keeps its own reference
            if (mg.is_contiguous() && wg.is_contiguous() && mg.shape.SequenceEqual(wg.shape))
            {
                using var mf = mg.view(-1);
                using var wf = wg.view(-1);
                long total = mf.numel(), chunk = FusedOptimizer.ChunkElements > 0 ? FusedOptimizer.ChunkElements : total;
                for (long start = 0; start < total; start += chunk)
                {
                    long n = Math.Min(chunk, total - start);
                    using var m = mf.narrow(0, start, n);
                    using var w = wf.narrow(0, start, n);
                    Fold(m, w, replace, divisor);
                }
            }
            else Fold(mg, wg, replace, divisor);
            // released rather than zeroed: the next backward then keeps its gradient as computed, where a zeroed one
            // costs a fill and an add over every weight (the same values: 0 + x = x)
            work[i].grad = null;
        }
    }

    /// <summary>master (fp32) = or += working gradient (bf16, cast exactly), then ÷ divisor unless it is 1.</summary>
    static void Fold(Tensor master, Tensor working, bool replace, double divisor)
    {
        if (replace) master.copy_(working); else master.add_(working);
        if (divisor != 1) master.div_(divisor);
    }

    /// <summary>Copies the master weights into the working copy (rounded to the compute dtype). Call whenever the master
    /// was changed from outside (e.g. a resume that loaded weights into it); after an optimizer step
    /// <see cref="SyncTrained"/> does the part that changed.</summary>
    public void SyncWorking()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        using var _ = torch.no_grad();
        for (int i = 0; i < _allWork.Length; i++) _allWork[i].copy_(_allMaster[i]);
    }

    /// <summary>Copies the trainable master weights into the working copy after an optimizer step, except those an
    /// optimizer already wrote there (<see cref="MirrorUpdates"/>); frozen weights do not change in a step.</summary>
    public void SyncTrained()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_mirror is not null) return;
        using var _ = torch.no_grad();
        for (int i = 0; i < _work.Length; i++) _work[i].copy_(_master[i]);
    }

    /// <summary>Lets <paramref name="optimizer"/> write the updated weights into the working copy itself, range by range
    /// while they are in cache (<see cref="FusedOptimizer.Mirror"/>), instead of <see cref="SyncTrained"/> reading the
    /// master weights again after the step: the working copy's trainable parameters move into one buffer of the compute
    /// dtype with the optimizer's layout (their values and identities unchanged). Returns false, and changes nothing,
    /// when the optimizer's parameters are not exactly the master's trainable ones.</summary>
    internal bool MirrorUpdates(FusedOptimizer optimizer)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_mirror is not null || optimizer.Mirror is not null) return false;
        var index = new Dictionary<IntPtr, int>();
        for (int i = 0; i < _master.Length; i++) index[_master[i].Handle] = i;
        var order = new int[optimizer.TensorCount];
        if (order.Length != _master.Length) return false;
        for (int k = 0; k < order.Length; k++)
        {
            if (!index.TryGetValue(optimizer.Parameter(k).Handle, out order[k])) return false;
            if (!_work[order[k]].shape.SequenceEqual(optimizer.Parameter(k).shape)) return false;
        }
        using var scope = torch.NewDisposeScope();
        var mirror = torch.empty(optimizer.NumberOfWeights, ComputeDType, _work[0].device).DetachFromDisposeScope();
        using (torch.no_grad())
            for (int k = 0; k < order.Length; k++)
            {
                var w = _work[order[k]];
                using var seg = optimizer.Segment(mirror, k);
                seg.copy_(w);
                ((TorchSharp.Modules.Parameter)w).set_(seg); // identity kept (module registration, autograd leaf); only the storage moves
            }
        _mirror = mirror;
        _mirroredBy = optimizer;
        optimizer.Mirror = mirror;
        return true;
    }

    /// <summary>Sets train/eval mode of the working copy and its replicas (the master's mode is the caller's business).</summary>
    public void Train(bool on = true)
    {
        foreach (var (m, _) in _replicas) if (on) m.Module.train(); else m.Module.eval();
    }

    /// <summary>Disposes the working copy (the master stays the caller's).</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        foreach (var (m, _) in _replicas) m.Dispose(); // the working copy first
        if (_mirroredBy is not null) _mirroredBy.Mirror = null; // an optimizer that outlives this object stops writing the freed copy
        _mirror?.Dispose();
    }
}

using System.Diagnostics;
using System.Security.Cryptography;
using DetoxSharp.Data;
using DetoxSharp.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Training;

/// <summary>
/// Log-prob sums per example of one frozen model — the reference's for chosen and rejected, or π_tox's for y_t after
/// [TOXIC]+prompt — cached on disk and filled <b>as they are needed</b>: <see cref="Ensure"/> scores the batches of the
/// layout that hold a missing example, so a run that stops early (Lee et al.'s DPO converged after ≈ 6,700 of 24,576
/// pairs) never scores the pairs it does not reach. Every value is computed in its layout batch, the same tensors as a
/// full pass over the layout, so lazy and full passes give the same bits (bf16 results depend on a batch's padding).
/// The file holds one value pair per example, NaN for those not scored yet; writes are atomic and merge what another run
/// with the same key wrote meanwhile (the same values).
/// </summary>
internal sealed class LogpCache
{
    /// <summary>Lazily scored batches between two writes of the file (a crash loses at most these).</summary>
    public const int SaveEvery = 64;

    readonly ICausalLM model;
    readonly List<TokenizedExample> all;
    readonly int padId;
    readonly bool toxic, share;
    readonly IReadOnlyList<int[]> layout;
    readonly int[] batchOf;
    int unsaved;

    /// <summary>The file (under the directory given, named by the key).</summary>
    public string Path { get; }
    /// <summary>Chosen (or y_t) log-prob sums per example; NaN where not scored yet.</summary>
    public double[] A { get; }
    /// <summary>Rejected log-prob sums per example (unused for π_tox); NaN where not scored yet.</summary>
    public double[] B { get; }
    /// <summary>Layout batches this instance scored.</summary>
    public int BatchesScored { get; private set; }
    /// <summary>Time this instance spent scoring.</summary>
    public TimeSpan ScoringTime { get; private set; }

    /// <param name="dir">Cache directory.</param>
    /// <param name="kind">"ref", "ref-bf16" or "tox" (file name prefix, part of the key).</param>
    /// <param name="key">Model hash and scoring (part of the key).</param>
    /// <param name="dataHash">Tokenized data and truncation (part of the key).</param>
    /// <param name="scorer">The frozen model, its examples, pad id, and whether it scores y_t (π_tox) and shares prompts.</param>
    /// <param name="batches">The layout (example indices per batch; part of the key); null: consecutive batches of
    /// <paramref name="batchSize"/> over all examples.</param>
    /// <param name="batchSize">Batch size of the default layout.</param>
    public LogpCache(string dir, string kind, string key, string dataHash, (ICausalLM Model, List<TokenizedExample> All, int PadId, bool Toxic, bool Share) scorer,
        IReadOnlyList<int[]>? batches, int batchSize)
    {
        (model, all, padId, toxic, share) = scorer;
        // the scoring is part of the key: the two ways give the same values only up to float rounding, and with bf16 the
        // training steps' first loss is ln 2 only when the reference was scored as the policy is
        if (share) key += "|shared-prompt-layout";
        layout = batches ?? Enumerable.Range(0, (all.Count + batchSize - 1) / batchSize)
            .Select(k => Enumerable.Range(k * batchSize, Math.Min(batchSize, all.Count - k * batchSize)).ToArray()).ToList();
        // a given layout is part of the key (a value depends on its batch's padding, up to float rounding)
        string layoutKey = batches is null ? "" : "|batches:" + string.Join(';', batches.Select(b => string.Join(',', b)));
        Path = System.IO.Path.Combine(dir, $"{kind}-{Convert.ToHexString(SHA256.HashData(System.Text.Encoding.UTF8.GetBytes($"{kind}|{key}|{dataHash}{layoutKey}"))).ToLowerInvariant()[..24]}.bin");
        batchOf = new int[all.Count];
        Array.Fill(batchOf, -1);
        for (int b = 0; b < layout.Count; b++)
            foreach (var i in layout[b]) batchOf[i] = b;
        (A, B) = Read(Path, all.Count) ?? (Nan(all.Count), Nan(all.Count));
    }

    static double[] Nan(int n) { var a = new double[n]; Array.Fill(a, double.NaN); return a; }

    static (double[] A, double[] B)? Read(string path, int n)
    {
        if (!File.Exists(path)) return null;
        using var r = new BinaryReader(File.OpenRead(path));
        if (r.BaseStream.Length != 4 + 16L * n || r.ReadInt32() != n) return null; // another data set's, or torn
        var a = new double[n]; var b = new double[n];
        for (int i = 0; i < n; i++) { a[i] = r.ReadDouble(); b[i] = r.ReadDouble(); }
        return (a, b);
    }

    bool Missing(int i) => double.IsNaN(A[i]) || (!toxic && double.IsNaN(B[i]));

    /// <summary>Layout batches holding an example that is not scored yet.</summary>
    public int MissingBatches => Enumerable.Range(0, all.Count).Where(i => batchOf[i] >= 0 && Missing(i)).Select(i => batchOf[i]).Distinct().Count();

    /// <summary>Scores the layout batches that hold a not-yet-scored example among <paramref name="examples"/>, in layout
    /// order (no gradients; the model in eval mode meanwhile).</summary>
    public void Ensure(IEnumerable<int> examples, CancellationToken cancel = default)
    {
        var todo = examples.Where(Missing).Select(i => batchOf[i] >= 0 ? batchOf[i]
            : throw new InvalidOperationException($"example {i} is in no batch of the {System.IO.Path.GetFileName(Path)} layout")).Distinct().Order().ToList();
        if (todo.Count == 0) return;
        var sw = Stopwatch.StartNew();
        bool wasTraining = model.Module.training;
        model.Module.eval();
        try
        {
            using var ng = torch.no_grad();
            foreach (var b in todo)
            {
                cancel.ThrowIfCancellationRequested();
                var idx = layout[b];
                double[] s;
                using (var scope = torch.NewDisposeScope())
                    s = (toxic ? PreferenceTrainer.ToxicLogpSums(model, all, idx, padId, share) : PreferenceTrainer.PairLogpSums(model, all, idx, padId, share))
                        .to(ScalarType.Float64).cpu().data<double>().ToArray();
                // a batch's values are written only once all of them are known
                for (int k = 0; k < idx.Length; k++) { A[idx[k]] = s[k]; if (!toxic) B[idx[k]] = s[idx.Length + k]; }
                BatchesScored++;
                if (++unsaved >= SaveEvery) Save();
            }
        }
        finally
        {
            if (wasTraining) model.Module.train();
            ScoringTime += sw.Elapsed;
        }
    }

    /// <summary>Writes the file if anything was scored since the last write, merged with what is on disk now (another
    /// run with the same key may have scored other batches: the same values).</summary>
    public void Save()
    {
        if (unsaved == 0) return;
        var a = (double[])A.Clone(); var b = (double[])B.Clone();
        if (Read(Path, all.Count) is var (da, db))
            for (int i = 0; i < a.Length; i++)
                if (double.IsNaN(a[i]) && double.IsNaN(b[i])) { a[i] = da[i]; b[i] = db[i]; }
        Directory.CreateDirectory(System.IO.Path.GetDirectoryName(Path)!);
        AtomicFile.WriteBytes(Path, f =>
        {
            using var w = new BinaryWriter(f, System.Text.Encoding.UTF8, leaveOpen: true);
            w.Write(a.Length);
            for (int i = 0; i < a.Length; i++) { w.Write(a[i]); w.Write(b[i]); }
        });
        unsaved = 0;
    }
}

/// <summary>The bench's options (checked before anything runs: an unknown option is an error, not the full run) and its
/// `--help` text.</summary>
static class BenchUsage
{
    /// <summary>First line of the full run's report: the bench replaces only a file that starts with it.</summary>
    public const string ReportMarker = "<!-- written by DetoxSharp.Bench (a rerun replaces this whole file) -->";

    /// <summary>Every option a mode reads; anything else starting with '-' is refused with exit code 2.</summary>
    public static readonly HashSet<string> Options =
    [
        // the full run
        "--quick", "--threads", "--out", "--study-full", "--study-dir",
        // single-purpose modes
        "--allocator-ab", "--alloc-child", "--attn-parts", "--attn-shapes", "--classifier", "--decode-probe", "--dexperts",
        "--dpo", "--dpo-phases", "--fault-probe", "--gemm-shapes", "--generation", "--handover-ab", "--heap-probe",
        "--linear-parts", "--llama-1b", "--neurons-checkpoints", "--optimizer-ab", "--packing-ab", "--precision-ab",
        "--side-by-side", "--study-time", "--toy-ab", "--toy-breakdown", "--toy-ops",
        // the modes' settings
        "--auto-only", "--batch", "--batches", "--forward-reps", "--fp32", "--full", "--gpt2-124m", "--llama", "--min-seconds",
        "--new-tokens", "--no-mask", "--packing", "--pairs", "--prompts", "--reps", "--rounds", "--rows", "--run", "--seq",
        "--sft-steps", "--share-ab", "--dp-ab", "--steps", "--texts", "--torch-optim", "--vocab", "--warmup", "--words",
    ];

    public const string Text = """
        DetoxSharp benchmark (dotnet bench/DetoxSharp.Bench/bin/Release/net10.0/DetoxSharp.Bench.dll, or dotnet run -c Release --project bench/DetoxSharp.Bench --)

        Full run (≈ 18 min on 2 cores; correctness checks make it exit 1 when one fails):
          [--quick] [--threads N] [--out FILE] [--study-full] [--study-dir DIR]
            --out FILE   the Markdown report (default docs/bench-report.md); an existing FILE is replaced only if the
                         bench wrote it (first line), never a hand-written one such as docs/PERFORMANCE.md
            --quick      ≈ 30 s, the correctness checks only (CI)

        Single-purpose modes (CONFIG: toy, toy-study, 124m, 355m, …; see docs/ARCHITECTURE.md "Benchmarks"):
          --side-by-side CONFIG [--batch B --seq T --forward-reps N --sft-steps N --warmup N]   the step bench/pytorch/gpt2_step.py times
          --heap-probe CONFIG [--batch B --seq T --reps N]     forwards and SFT steps one by one with page faults and glibc's heap
          --precision-ab CONFIG [--batch B --seq T --sft-steps N --rounds N]   fp32 / bf16-mixed / pure bf16 SFT steps
          --gemm-shapes CONFIG [--rows N,N --vocab V --rounds N]   GEMM rates at a config's shapes
          --dpo CONFIG [--steps N --words N --pairs N --packing auto|always|never --auto-only --share-ab --dp-ab --rounds N]   DPO pairs/s
          --dpo-phases MODEL_DIR PAIRS.jsonl [--steps N --batch B]   a `detox dpo` step phase by phase
          --optimizer-ab CONFIG | --handover-ab CONFIG | --packing-ab CONFIG [--llama] [--rounds N --steps N --batches N]
          --generation CONFIG | --decode-probe | --dexperts CONFIG [--batch B --new-tokens N --rounds N --prompts N --min-seconds S]
          --toy-ab [--steps N --rounds N] | --toy-breakdown [--steps N --no-mask --fp32] | --toy-ops | --attn-shapes | --attn-parts | --linear-parts
          --allocator-ab [--gpt2-124m [--torch-optim]] [--fp32 --steps N --rounds N] | --fault-probe
          --study-time [RUN_DIR] [--run [--full]]   a study's wall time per stage kind
          --classifier [--texts N --batch B --rounds N] | --neurons-checkpoints [DIR] [--prompts N] | --llama-1b [DIR] [--steps N]
          --threads N   libtorch threads for any mode (default: all cores)

        Bad options end in one line on stderr and exit code 2.
        """;
}

#!/usr/bin/env bash
# Side-by-side baseline (issue 8): the same GPT-2 step in PyTorch and in DetoxSharp, alternately, on this machine, same
# threads, same shapes. Prints a Markdown table of each round and of the medians, with the ratio.
#   bash bench/side-by-side.sh [124m|355m|toy] [batch] [seq] [steps] [rounds] [warmup]
# rounds (default 3): PyTorch and DetoxSharp alternate, one process each per round; the table's ratios are of the
# medians (one forward of PyTorch varies by ±15 % from run to run here, so a single round can mislead).
# warmup (default 1): untimed forwards and SFT steps before the timed ones, the same on both sides. With 1, DetoxSharp's
# timed reps still include the first reps' growth of glibc's heap (docs/PERFORMANCE.md, "--heap-probe"); 3 or more
# measure both sides' steady state.
# Needs python3 with torch. On Debian 12 (as root):
#   apt-get install -y python3-torch libopenblas0-openmp
# (without an optimized BLAS Debian's torch falls back to the reference netlib BLAS: ~5x slower matmuls).
# PY_PRELOAD / DETOX_PRELOAD: a library to LD_PRELOAD into one side (e.g. /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4).
# Run it on an otherwise idle machine: libtorch's OpenMP threads degrade badly when the cores are oversubscribed.
set -euo pipefail
cd "$(dirname "$0")/.."
cfg="${1:-124m}"; batch="${2:-4}"; seq="${3:-128}"; steps="${4:-3}"; rounds="${5:-3}"; warmup="${6:-1}"
[[ "$rounds" =~ ^[1-9][0-9]*$ ]] || { echo "side-by-side.sh: rounds must be a positive integer (got '$rounds')" >&2; exit 2; }
[[ "$warmup" =~ ^[1-9][0-9]*$ ]] || { echo "side-by-side.sh: warmup must be a positive integer (got '$warmup')" >&2; exit 2; }
threads="$(nproc)"
py="${PYTHON:-/usr/bin/python3}"
"$py" -c "import torch" 2>/dev/null || { echo "side-by-side.sh: $py has no torch module (Debian: apt-get install python3-torch libopenblas0-openmp)" >&2; exit 2; }
dotnet build -c Release bench/DetoxSharp.Bench >/dev/null
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for r in $(seq 1 "$rounds"); do
  env ${PY_PRELOAD:+LD_PRELOAD=$PY_PRELOAD} "$py" bench/pytorch/gpt2_step.py --config "$cfg" --batch "$batch" --seq "$seq" --sft-steps "$steps" --forward-reps "$steps" --warmup "$warmup" --threads "$threads" > "$tmp/py$r.json"
  env ${DETOX_PRELOAD:+LD_PRELOAD=$DETOX_PRELOAD} dotnet bench/DetoxSharp.Bench/bin/Release/net10.0/DetoxSharp.Bench.dll --threads "$threads" --side-by-side "$cfg" --batch "$batch" --seq "$seq" --sft-steps "$steps" --forward-reps "$steps" --warmup "$warmup" > "$tmp/ds$r.json"
  echo "round $r of $rounds done, load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
done
"$py" - "$tmp" "$rounds" <<'PY'
import json, sys, os, re, statistics
tmp, rounds = sys.argv[1], int(sys.argv[2])
pys = [json.load(open(f"{tmp}/py{r}.json")) for r in range(1, rounds + 1)]
dss = [json.load(open(f"{tmp}/ds{r}.json")) for r in range(1, rounds + 1)]
import torch
m = re.search(r"BLAS_INFO=(\w+)", torch.__config__.show())
blas = f"BLAS_INFO={m.group(1) if m else '?'}"
lib = "/usr/lib/x86_64-linux-gnu/libblas.so.3"
if os.path.exists(lib):
    blas += f", libblas.so.3 → {os.path.realpath(lib).split('/')[-2]}"  # Debian's alternatives pick the runtime BLAS
ds0, py0 = dss[0], pys[0]
print(f"GPT-2 {ds0['config']} ({ds0['params']/1e6:.1f}M params), fp32, batch {ds0['batch']}×{ds0['seq']} tokens, {ds0['threads']} threads, {rounds} alternating round(s), {ds0.get('warmup', 1)} untimed warm-up rep(s)/step(s) each; "
      f"preload: PyTorch {os.environ.get('PY_PRELOAD') or 'none'}, DetoxSharp {os.environ.get('DETOX_PRELOAD') or 'none'}")
print()
rows = [("forward_tok_s", "forward_tok_s", "forward tok/s (no grad)"), ("sft_tok_s", "sft_tok_s", "SFT step tok/s (fwd+bwd+AdamW), fp32 both, each side's own AdamW")]
if all("sft_torch_optim_tok_s" in d for d in dss):
    rows.append(("sft_tok_s", "sft_torch_optim_tok_s", "SFT step tok/s, fp32 both, DetoxSharp with TorchSharp's torch.optim AdamW instead of its own"))
if all("sft_default_tok_s" in d for d in dss):
    rows.append(("sft_tok_s", "sft_default_tok_s", f"SFT step tok/s, each side's default precision (PyTorch fp32, DetoxSharp {ds0['default_precision']})"))
print("| | PyTorch %s (%s) | DetoxSharp (%s) | DetoxSharp ÷ PyTorch |" % (py0["version"], blas, ds0["version"]))
print("|---|---:|---:|---:|")
for pk, dk, name in rows:
    p = statistics.median(x[pk] for x in pys); d = statistics.median(x[dk] for x in dss)
    per = ", ".join(f"{b[dk]/a[pk]:.2f}" for a, b in zip(pys, dss))
    label = f"{name}, median of {rounds}" if rounds > 1 else name
    print(f"| {label} | {p:.1f} | {d:.1f} | {d/p:.2f}×" + (f" (rounds: {per})" if rounds > 1 else "") + " |")
print()
print(f"DetoxSharp allocator: {ds0.get('allocator', '?')}; MKL: {ds0.get('mkl', '?')}; CPU: {ds0.get('cpu', '?')}")
PY

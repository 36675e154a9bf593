#!/usr/bin/env bash
# Side-by-side baseline (issue 8): the same GPT-2 step in PyTorch and in DetoxSharp, one after the other, on this
# machine, same threads, same shapes. Prints a Markdown table with the ratio.
#   bash bench/side-by-side.sh [124m|355m|toy] [batch] [seq] [steps]
# Needs python3 with torch. On Debian 12 (as root):
#   apt-get install -y python3-torch libopenblas0-openmp
# (without an optimized BLAS Debian's torch falls back to the reference netlib BLAS: ~5x slower matmuls).
# PY_PRELOAD / DETOX_PRELOAD: a library to LD_PRELOAD into one side (e.g. /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4).
# Run it on an otherwise idle machine: libtorch's OpenMP threads degrade badly when the cores are oversubscribed.
set -euo pipefail
cd "$(dirname "$0")/.."
cfg="${1:-124m}"; batch="${2:-4}"; seq="${3:-128}"; steps="${4:-3}"
threads="$(nproc)"
py="${PYTHON:-/usr/bin/python3}"
"$py" -c "import torch" 2>/dev/null || { echo "side-by-side.sh: $py has no torch module (Debian: apt-get install python3-torch libopenblas0-openmp)" >&2; exit 2; }
dotnet build -c Release bench/DetoxSharp.Bench >/dev/null
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
env ${PY_PRELOAD:+LD_PRELOAD=$PY_PRELOAD} "$py" bench/pytorch/gpt2_step.py --config "$cfg" --batch "$batch" --seq "$seq" --sft-steps "$steps" --forward-reps "$steps" --threads "$threads" > "$tmp/py.json"
echo "pytorch done, load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
env ${DETOX_PRELOAD:+LD_PRELOAD=$DETOX_PRELOAD} dotnet bench/DetoxSharp.Bench/bin/Release/net10.0/DetoxSharp.Bench.dll --threads "$threads" --side-by-side "$cfg" --batch "$batch" --seq "$seq" --sft-steps "$steps" --forward-reps "$steps" > "$tmp/ds.json"
echo "detoxsharp done, load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
"$py" - "$tmp/py.json" "$tmp/ds.json" <<'PY'
import json, sys, platform
py, ds = (json.load(open(f)) for f in sys.argv[1:3])
import torch
import os, re
m = re.search(r"BLAS_INFO=(\w+)", torch.__config__.show())
blas = f"BLAS_INFO={m.group(1) if m else '?'}"
lib = "/usr/lib/x86_64-linux-gnu/libblas.so.3"
if os.path.exists(lib):
    blas += f", libblas.so.3 → {os.path.realpath(lib).split('/')[-2]}"  # Debian's alternatives pick the runtime BLAS
print(f"GPT-2 {ds['config']} ({ds['params']/1e6:.1f}M params), fp32, batch {ds['batch']}×{ds['seq']} tokens, {ds['threads']} threads; "
      f"preload: PyTorch {os.environ.get('PY_PRELOAD') or 'none'}, DetoxSharp {os.environ.get('DETOX_PRELOAD') or 'none'}")
print()
print("| | PyTorch %s (%s) | DetoxSharp (%s) | DetoxSharp ÷ PyTorch |" % (py["version"], blas, ds["version"]))
print("|---|---:|---:|---:|")
for k, name in (("forward_tok_s", "forward tok/s (no grad)"), ("sft_tok_s", "SFT step tok/s (fwd+bwd+AdamW), fp32 both")):
    print(f"| {name} | {py[k]:.1f} | {ds[k]:.1f} | {ds[k]/py[k]:.2f}× |")
if "sft_default_tok_s" in ds:
    print(f"| SFT step tok/s, each side's default precision (PyTorch fp32, DetoxSharp {ds['default_precision']}) | {py['sft_tok_s']:.1f} | {ds['sft_default_tok_s']:.1f} | {ds['sft_default_tok_s']/py['sft_tok_s']:.2f}× |")
print()
print(f"DetoxSharp allocator: {ds.get('allocator', '?')}; MKL: {ds.get('mkl', '?')}")
PY

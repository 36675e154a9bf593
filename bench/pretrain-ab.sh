#!/usr/bin/env bash
# Pretraining old vs new (issue 22, deliverable 2): the same `detox sft` run — the default toy configuration (4 blocks ×
# 256, context 96, the default world's compact vocabulary), 32 blocks of 96 tokens a step, lr 2e-3, seed 1, the default
# precision — with an older build and with this checkout, alternately, R rounds; the rate is the in-loop tokens/s of
# steps 13..N from each run's metrics.jsonl (the first 12 steps warm up: JIT, oneDNN kernels, the heap). Prints a
# Markdown table of every round, each round's ratio, the medians and their ratio, and each run's final loss.
#   bash bench/pretrain-ab.sh [old-ref] [rounds] [steps] [threads]
# old-ref (default f97d210, main before issue 22's work): any commit whose `detox sft` takes the options used below.
# Both builds train the same model and data, made once by this checkout (`detox pretrain-toy --max-steps 1`).
# Run it on an otherwise idle machine; needs git, the .NET SDK and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
old_ref="${1:-f97d210}"; rounds="${2:-3}"; steps="${3:-24}"; threads="${4:-2}"
[[ "$rounds" =~ ^[1-9][0-9]*$ ]] || { echo "pretrain-ab.sh: rounds must be a positive integer (got '$rounds')" >&2; exit 2; }
[[ "$steps" =~ ^[0-9]+$ ]] && [ "$steps" -ge 14 ] || { echo "pretrain-ab.sh: steps must be an integer ≥ 14 (the rate is of steps 13..N; got '$steps')" >&2; exit 2; }
[[ "$threads" =~ ^[1-9][0-9]*$ ]] || { echo "pretrain-ab.sh: threads must be a positive integer (got '$threads')" >&2; exit 2; }
git rev-parse --verify --quiet "$old_ref^{commit}" >/dev/null || { echo "pretrain-ab.sh: '$old_ref' is not a commit of this repository" >&2; exit 2; }
command -v python3 >/dev/null || { echo "pretrain-ab.sh: needs python3 (to read metrics.jsonl)" >&2; exit 2; }
tmp="$(mktemp -d)"
cleanup() { git worktree remove --force "$tmp/old" >/dev/null 2>&1 || true; git worktree prune; rm -rf "$tmp"; }
trap cleanup EXIT
dotnet build -c Release src/DetoxSharp.Cli >/dev/null
new="src/DetoxSharp.Cli/bin/Release/net10.0/detox"
git worktree add --detach --quiet "$tmp/old" "$old_ref"
dotnet build -c Release "$tmp/old/src/DetoxSharp.Cli" >/dev/null
old="$tmp/old/src/DetoxSharp.Cli/bin/Release/net10.0/detox"
"$new" pretrain-toy --out "$tmp/inputs" --max-steps 1 --threads "$threads" >"$tmp/inputs.log" 2>&1 \
  || { echo "pretrain-ab.sh: detox pretrain-toy failed:" >&2; tail -5 "$tmp/inputs.log" >&2; exit 1; }
echo "old $(git rev-parse --short "$old_ref"), new $(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo ' (with uncommitted changes)'); load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for r in $(seq 1 "$rounds"); do
  for side in old new; do
    bin="$new"; [ "$side" = old ] && bin="$old"
    "$bin" sft --model "$tmp/inputs/model" --data "$tmp/inputs/world/train.txt" --out "$tmp/$side-$r" --batch-size 32 \
      --max-length 96 --lr 2e-3 --max-steps "$steps" --threads "$threads" --checkpoint-every 0 --seed 1 >"$tmp/$side-$r.log" 2>&1 \
      || { echo "pretrain-ab.sh: the $side build's detox sft failed (round $r):" >&2; tail -5 "$tmp/$side-$r.log" >&2; exit 1; }
  done
  echo "round $r of $rounds done, load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
done
python3 - "$tmp" "$rounds" "$steps" "$old_ref" "$threads" <<'PY'
import json, statistics, sys
tmp, rounds, steps, old_ref, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
def run(name):
    rows = {}
    for line in open(f"{tmp}/{name}/metrics.jsonl"):
        x = json.loads(line)
        if "tokens_per_second" in x:
            rows[x["step"]] = x
    elapsed = lambda s: rows[s]["tokens"] / rows[s]["tokens_per_second"]
    rate = (rows[steps]["tokens"] - rows[12]["tokens"]) / (elapsed(steps) - elapsed(12))
    return rate, rows[steps]["loss"]
res = {(side, r): run(f"{side}-{r}") for r in range(1, rounds + 1) for side in ("old", "new")}
print(f"Pretraining, `detox sft` on the default toy (32 × 96 tokens a step, {threads} threads), tok/s of steps 13–{steps}; old = {old_ref}")
print()
print("| round | old tok/s | new tok/s | new ÷ old |")
print("|---:|---:|---:|---:|")
for r in range(1, rounds + 1):
    o, n = res[("old", r)][0], res[("new", r)][0]
    print(f"| {r} | {o:,.0f} | {n:,.0f} | {n / o:.2f}× |")
mo = statistics.median(res[("old", r)][0] for r in range(1, rounds + 1))
mn = statistics.median(res[("new", r)][0] for r in range(1, rounds + 1))
print(f"| median | {mo:,.0f} | {mn:,.0f} | **{mn / mo:.2f}×** |")
print()
print("final losses: old " + ", ".join(f"{res[('old', r)][1]:.5f}" for r in range(1, rounds + 1))
      + "; new " + ", ".join(f"{res[('new', r)][1]:.5f}" for r in range(1, rounds + 1)))
PY

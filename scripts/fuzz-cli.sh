#!/usr/bin/env bash
# Hostile-input run of the built `detox` CLI (out of the test suite: it takes minutes).
# Builds a tiny toy model, derives a seeded corpus of corrupted inputs (model files, tokenizer files, data files,
# training checkpoints, flag values), runs score/info/generate/eval/dpo/probe on each under `timeout`, and counts
# exit codes. Target: no exit 134 (runtime abort), no exit 1 (internal error = a bug), no stack trace, no hang (124).
#
#   scripts/fuzz-cli.sh [--seed N] [--per-kind N] [--jobs N] [--keep]
#   DETOX=path/to/detox overrides the CLI (default: src/DetoxSharp.Cli/bin/Release/net10.0/detox after a build).
# Needs bash, python3 (corpus generation only) and coreutils `timeout`.
set -euo pipefail
cd "$(dirname "$0")/.."
SEED=15 PER_KIND=14 JOBS=2 KEEP=0 TIMEOUT=${TIMEOUT:-120}
while [[ $# -gt 0 ]]; do
  case $1 in
    --seed) SEED=$2; shift 2;; --per-kind) PER_KIND=$2; shift 2;; --jobs) JOBS=$2; shift 2;; --keep) KEEP=1; shift;;
    *) echo "unknown argument $1" >&2; exit 2;;
  esac
done
DETOX=${DETOX:-$PWD/src/DetoxSharp.Cli/bin/Release/net10.0/detox}
[[ -x $DETOX ]] || { echo "no CLI at $DETOX (dotnet build -c Release DetoxSharp.sln)" >&2; exit 2; }
WORK=$(mktemp -d /tmp/detox-fuzz-cli.XXXXXX)
[[ $KEEP == 1 ]] || trap 'rm -rf "$WORK"' EXIT
echo "work dir: $WORK"

# --- a tiny model and its world (data files in the real formats) ---
"$DETOX" --threads 1 pretrain-toy --out "$WORK/base" --size small --max-steps 2 >/dev/null 2>"$WORK/base.err" \
  || { cat "$WORK/base.err" >&2; exit 1; }
MODEL=$WORK/base/model
WORLD=$WORK/base/world
python3 - "$WORLD" "$WORK/pairs.jsonl" <<'EOF'
import json, sys
prompts = [json.loads(l) for l in open(f"{sys.argv[1]}/challenge_prompts.jsonl") if l.strip()][:8]
with open(sys.argv[2], "w") as f:
    for i, p in enumerate(prompts):
        t = p["prompt"]["text"] if isinstance(p["prompt"], dict) else p["prompt"]
        f.write(json.dumps({"prompt": t, "chosen": f" nice words {i}", "rejected": f" rude words {i}"}) + "\n")
EOF
head -c 4000 "$WORLD/comments.csv" | head -n 30 > "$WORK/comments.csv"
head -n 6 "$WORLD/challenge_prompts.jsonl" > "$WORK/prompts.jsonl"
# a resumable DPO checkpoint to corrupt
"$DETOX" --threads 1 dpo --model "$MODEL" --data "$WORK/pairs.jsonl" --out "$WORK/dpo" --max-steps 2 --checkpoint-every 1 \
  --validation-size 1 --batch-size 1 --warmup 0 >/dev/null 2>"$WORK/dpo.err" || { cat "$WORK/dpo.err" >&2; exit 1; }

# --- the corpus: one line per run, "label<TAB>command…" ---
python3 - "$WORK" "$MODEL" "$SEED" "$PER_KIND" <<'EOF' > "$WORK/runs.tsv"
import json, os, random, re, shutil, sys
work, model, seed, per = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
REPL = ["5", "-1", "0", "1.5", '"x"', "[5]", "{}", "null", "true", "1e400", "NaN", "2147483648", "16777216", "1e12",
        '"\\ud800"', "[-1,2]", '""']
VALUE = re.compile(rb'(?<=[:\[,])\s*(-?\d[\d.eE+-]*|"(?:[^"\\]|\\.)*"|true|false|null)')
def mutate(b, json_like):
    k = rng.randrange(10 if json_like else 6)
    if k == 0: return b[:rng.randrange(max(1, len(b)))]
    if k == 1:
        b = bytearray(b)
        for _ in range(rng.randint(1, 3)):
            if b: b[rng.randrange(len(b))] ^= rng.randint(1, 255)
        return bytes(b)
    if k == 2: return b""
    if k == 3:
        i = rng.randrange(len(b) + 1); return b[:i] + rng.choice([b"\xff", b"\xc3(", b"\xed\xa0\x80"]) + b[i:]
    if k == 4:
        i = rng.randrange(max(1, len(b))); return b[:i] + b[i + rng.randint(1, 16):]
    if k == 5:
        i = rng.randrange(max(1, len(b))); n = rng.randint(1, 32); return b[:i + n] + b[i:i + n] + b[i + n:]
    ms = list(VALUE.finditer(b))
    if not ms: return b[:len(b) // 2]
    m = rng.choice(ms)
    if k == 6:  # duplicate key
        o = [x for x in re.finditer(rb'\{\s*("(?:[^"\\]|\\.)*")\s*:', b)]
        if o:
            x = rng.choice(o); return b[:x.start() + 1] + x.group(1) + b":" + rng.choice(REPL).encode() + b"," + b[x.start() + 1:]
    if k == 9 and m.group(1).startswith(b'"'):
        return b[:m.start(1) + 1] + b"\\udfff" + b[m.start(1) + 1:]
    return b[:m.start(1)] + rng.choice(REPL).encode() + b[m.end(1):]

def model_copy(name):
    d = os.path.join(work, "m", name); shutil.copytree(model, d); return d

runs = []
def add(label, *args): runs.append(label + "\t" + " ".join(f"'{a}'" for a in args))

# unmodified inputs: must all succeed, or the corpus below measures a broken setup
add("baseline", "score", "--model", model, "--text", "hello there")
add("baseline", "info", "--model", model)
add("baseline", "generate", "--model", model, "--prompt", "hello", "--max-new-tokens", "3")
add("baseline", "eval", "--model", model, "--prompts", f"{work}/prompts.jsonl", "--scorer", "toy", "--out", f"{work}/o/eval-base", "--max-new-tokens", "2", "--limit", "3")
add("baseline", "dpo", "--model", model, "--data", f"{work}/pairs.jsonl", "--out", f"{work}/o/dpo-base", "--max-steps", "1", "--validation-size", "1", "--batch-size", "1", "--warmup", "0")
add("baseline", "probe", "--model", model, "--data", f"{work}/comments.csv", "--out", f"{work}/o/probe-base", "--max-steps", "2")
# model files: each mutant is scored, described and continued
files = ["config.json", "model.safetensors", "vocab.json", "merges.txt", "added_tokens.json"]
for f in files:
    orig = open(os.path.join(model, f), "rb").read()
    for i in range(per):
        d = model_copy(f"{f}-{i}")
        if f == "model.safetensors" and i % 2 == 0:
            # header-only mutation, length prefix kept or fixed
            n = int.from_bytes(orig[:8], "little"); h = mutate(orig[8:8 + n], True)
            ln = len(h) if rng.random() < 0.5 else n
            data = ln.to_bytes(8, "little") + h + orig[8 + n:]
        else:
            data = mutate(orig, f.endswith(".json"))
        open(os.path.join(d, f), "wb").write(data)
        add(f"model:{f}", "score", "--model", d, "--text", "hello there")
        add(f"model:{f}", "info", "--model", d)
        add(f"model:{f}", "generate", "--model", d, "--prompt", "hello", "--max-new-tokens", "3")
# tokenizer.json instead of vocab.json + merges.txt
tj = os.path.join(work, "m", "tokjson"); shutil.copytree(model, tj)
vocab = json.load(open(os.path.join(model, "vocab.json")))
merges = [l.rstrip("\n") for l in open(os.path.join(model, "merges.txt"), encoding="utf-8") if l.strip() and not l.startswith("#")]
tjb = json.dumps({"model": {"type": "BPE", "vocab": vocab, "merges": merges}}).encode()
for i in range(per):
    d = model_copy(f"tokenizer.json-{i}")
    os.remove(os.path.join(d, "vocab.json")); os.remove(os.path.join(d, "merges.txt"))
    open(os.path.join(d, "tokenizer.json"), "wb").write(mutate(tjb, True))
    add("model:tokenizer.json", "score", "--model", d, "--text", "hello there")
# data files
def data_mutants(src, kind, ext):
    orig = open(src, "rb").read()
    for i in range(per * 2):
        p = os.path.join(work, "d", f"{kind}-{i}.{ext}"); os.makedirs(os.path.dirname(p), exist_ok=True)
        open(p, "wb").write(mutate(orig, ext == "jsonl")); yield i, p
for i, p in data_mutants(os.path.join(work, "prompts.jsonl"), "prompts", "jsonl"):
    add("data:eval-prompts", "eval", "--model", model, "--prompts", p, "--scorer", "toy", "--out", f"{work}/o/eval{i}", "--max-new-tokens", "2", "--limit", "3")
for i, p in data_mutants(os.path.join(work, "pairs.jsonl"), "pairs", "jsonl"):
    add("data:dpo-pairs", "dpo", "--model", model, "--data", p, "--out", f"{work}/o/dpo{i}", "--max-steps", "1", "--validation-size", "1", "--batch-size", "1", "--warmup", "0")
for i, p in data_mutants(os.path.join(work, "comments.csv"), "comments", "csv"):
    add("data:probe-csv", "probe", "--model", model, "--data", p, "--out", f"{work}/o/probe{i}", "--max-steps", "2")
# resume from corrupted checkpoints
ck = os.path.join(work, "dpo", "checkpoint")
for f, js in [("trainer_state.json", True), ("optimizer.bin", False), ("rng.bin", False)]:
    orig = open(os.path.join(ck, f), "rb").read()
    for i in range(per):
        d = os.path.join(work, "c", f"{f}-{i}"); shutil.copytree(ck, d)
        open(os.path.join(d, f), "wb").write(mutate(orig, js))
        add(f"resume:{f}", "dpo", "--model", model, "--data", f"{work}/pairs.jsonl", "--out", f"{work}/o/res-{f}-{i}", "--resume", d,
            "--max-steps", "2", "--validation-size", "1", "--batch-size", "1", "--warmup", "0")
add("resume:optimizer-kind", "dpo", "--model", model, "--data", f"{work}/pairs.jsonl", "--out", f"{work}/o/res-kind", "--resume", ck,
    "--max-steps", "2", "--validation-size", "1", "--batch-size", "1", "--warmup", "0", "--optimizer", "adamw")
# flags
dpo = ["dpo", "--model", model, "--data", f"{work}/pairs.jsonl", "--out", f"{work}/o/flags", "--max-steps", "1", "--validation-size", "1", "--batch-size", "1"]
for flag, vals in {"--lr": ["Infinity", "NaN", "-1", "0", "1e400"], "--max-grad-norm": ["NaN", "-Infinity", "-3"], "--beta": ["0", "NaN", "Infinity"],
                   "--label-smoothing": ["0.5", "NaN"], "--validation-size": ["-1", "100", "2147483647"], "--epochs": ["0", "2147483647"],
                   "--batch-size": ["0", "-4", "2147483647"], "--warmup": ["-1"], "--max-steps": ["0", "-1"], "--weight-decay": ["NaN", "-1"]}.items():
    base = [a for i, a in enumerate(dpo) if not (a == flag or (i > 0 and dpo[i - 1] == flag))]
    for v in vals: add(f"flag:dpo {flag}", *base, flag, v)
gen = ["generate", "--model", model, "--prompt", "hello"]
for flag, vals in {"--max-new-tokens": ["2147483647", "-1", "100000"], "--temperature": ["0", "NaN", "Infinity", "-1"], "--top-p": ["0", "1.5", "NaN"], "--top-k": ["-1"]}.items():
    for v in vals: add(f"flag:generate {flag}", *gen, flag, v)
ev = ["eval", "--model", model, "--prompts", f"{work}/prompts.jsonl", "--scorer", "toy", "--out", f"{work}/o/evflags"]
for flag, vals in {"--limit": ["-5", "0"], "--samples": ["100000000", "-1"], "--max-new-tokens": ["0", "2147483647"], "--batch-size": ["0", "100000"],
                   "--max-prompt-tokens": ["0", "2147483647"], "--rate-limit": ["NaN"], "--ppl-window": ["1", "-3"]}.items():
    for v in vals: add(f"flag:eval {flag}", *ev, flag, v)
pr = ["probe", "--model", model, "--data", f"{work}/comments.csv", "--out", f"{work}/o/prflags"]
for flag, vals in {"--validation-fraction": ["NaN", "1", "0"], "--lr": ["Infinity", "0"], "--l2": ["NaN", "-1"], "--max-steps": ["0", "-1"], "--max-tokens": ["0"], "--batch-size": ["0"]}.items():
    for v in vals: add(f"flag:probe {flag}", *pr, flag, v)
add("flag:threads", "--threads", "0", "info", "--model", model)
print("\n".join(runs))
EOF
total=$(wc -l < "$WORK/runs.tsv")
echo "corpus: $total runs"

# --- run them ---
run_one() {
  local n=$1 label=$2 cmd=$3 rc
  local threads="--threads 1"; [[ $cmd == *--threads* ]] && threads=""
  eval "timeout $TIMEOUT \"$DETOX\" $threads $cmd" >"$WORK/out/$n.out" 2>"$WORK/out/$n.err" && rc=0 || rc=$?
  local trace=0
  grep -q '^   at ' "$WORK/out/$n.err" && trace=1
  local oneline=0  # the error is the last stderr line, "detox: …" (progress lines may precede it)
  tail -n 1 "$WORK/out/$n.err" | grep -q '^detox: ' && oneline=1
  printf '%s\t%s\t%s\t%s\t%s\n' "$n" "$label" "$rc" "$trace" "$oneline"
}
export -f run_one; export WORK DETOX TIMEOUT
mkdir -p "$WORK/out"
nl -ba -w1 -s$'\t' "$WORK/runs.tsv" | while IFS=$'\t' read -r n label cmd; do printf '%s\0%s\0%s\0' "$n" "$label" "$cmd"; done \
  | xargs -0 -n3 -P "$JOBS" bash -c 'run_one "$@"' _ > "$WORK/results.tsv"

# --- report ---
echo
echo "exit codes over $total runs:"
cut -f3 "$WORK/results.tsv" | sort | uniq -c | sort -rn | awk '{printf "  exit %-4s %d\n", $2, $1}'
echo "by kind (label: exit counts):"
awk -F'\t' '{k=$2; split(k,a,":"); c[a[1]":"$3]++} END {for (x in c) print "  " x "\t" c[x]}' "$WORK/results.tsv" | sort
traces=$(awk -F'\t' '$4==1' "$WORK/results.tsv" | wc -l)
multi=$(awk -F'\t' '$3==2 && $5!=1' "$WORK/results.tsv" | wc -l)
# 3 = a training run that diverged (documented; not bad input, not a bug)
bad=$(awk -F'\t' '$3!=0 && $3!=2 && $3!=3' "$WORK/results.tsv" | wc -l)
echo "stack traces: $traces; exit-2 runs not ending in one "detox: …" line: $multi; runs with exit other than 0/2/3: $bad"
if [[ $bad -gt 0 || $traces -gt 0 ]]; then
  echo "first offenders:"
  awk -F'\t' '$3!=0 && $3!=2 && $3!=3 || $4==1' "$WORK/results.tsv" | head -10 | while IFS=$'\t' read -r n label rc _ _; do
    echo "  [$label] exit $rc: $(sed -n "${n}p" "$WORK/runs.tsv" | cut -f2 | cut -c1-160)"
    head -n 2 "$WORK/out/$n.err" | sed 's/^/      /'
  done
fi
base_bad=$(awk -F'\t' '$2=="baseline" && $3!=0' "$WORK/results.tsv" | wc -l)
echo "baseline runs (unmodified inputs) failing: $base_bad"
[[ $bad -eq 0 && $traces -eq 0 && $base_bad -eq 0 ]]

#!/usr/bin/env bash
# Runs the commands of README.md's ```bash blocks in order, as a new user would copy-paste them on a fresh clone, and
# stops at the first that fails (naming its README line and showing its stderr). The commands run in a fresh
# `git clone` of this repository's HEAD (so relative paths such as configs/… exist and nothing is written into the
# working tree); the `detox` of the README is the CLI built from this tree.
#
# Not run, with the reason printed:
#   - `dotnet …` lines (the study through `dotnet run`, the tests, pack, tool install): .ci/run runs the tests and
#     scripts/check-packages.sh packs both packages, installs the tool and runs `detox info` from it;
#   - `detox study …` (minutes to hours; the test suite runs a fake study and docs/PERFORMANCE.md times the real one);
#   - commands on what a user brings: real checkpoints (/models/…), RealToxicityPrompts and Wikitext-2 files
#     (the same commands run on the toy world's files above them);
#   - `--help`.
# A command written for "any model directory" (DIR) runs on toy/model right after `detox pretrain-toy --out toy` has
# made it. No command needs a network or a key (the toy scorer; Perspective is never called).
#
#   scripts/readme-commands.sh [--quick] [--keep] [--list]
#   --quick  small settings, for CI (≈ 2-4 min idle): the toy world and toy model at --size small with 20 pretraining
#            steps, and each command shrunk by the QUICK table below (fewer training steps, prompts, pairs, comments,
#            attack strengths). Every README command still runs, in order, with every flag it shows.
#   --keep   keep the work directory (printed at the start).
#   --list   print the commands that would run (after the --quick changes) and exit.
#   DETOX=path/to/detox overrides the CLI (default: src/DetoxSharp.Cli/bin/Release/net10.0/detox after a build);
#   TMPDIR chooses where the work directory goes (default /tmp).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
KEEP=0 LIST=0 QUICK=${DETOX_README_QUICK:-0}
for a in "$@"; do case $a in --keep) KEEP=1;; --list) LIST=1;; --quick) QUICK=1;; *) echo "unknown argument $a (use --quick, --keep, --list)" >&2; exit 2;; esac; done
DETOX=${DETOX:-$REPO/src/DetoxSharp.Cli/bin/Release/net10.0/detox}

# the bash blocks' commands in order (continuation lines joined, comments dropped) as "LINE<TAB>command"; a command is
# skipped ("skip …" on stderr) or changed for --quick here
mapfile -t RUN < <(QUICK=$QUICK python3 - README.md <<'EOF'
import os, re, sys
quick = os.environ["QUICK"] == "1"
# --quick: flag → value, set on every command of that kind (the README's value is replaced, or the flag is added
# right after the command name). Chosen so that each command still does its work on a small model in seconds.
QUICK = {
    "toy-world":     {"--size": "small"},
    "pretrain-toy":  {"--size": "small", "--max-steps": "20"},
    "sft":           {"--max-steps": "4"},
    "toxic-model":   {"--max-steps": "10"},
    "make-pairs":    {"--limit": "24"},
    "make-pairs --pplm": {"--limit": "2", "--pplm-iterations": "1"},
    "probe":         {"--limit": "300"},
    "dpo":           {"--max-steps": "4", "--validation-size": "4"},
    "adpo":          {"--max-steps": "4", "--validation-size": "4"},
    "eval":          {"--limit": "8"},
    "diff":          {"--limit": "8"},
    "neurons":       {"--limit": "8"},
    "depth":         {"--limit": "8"},
    "neuron-patch":  {"--limit": "8"},
    "attack keys":     {"--limit": "4", "--strength": "1 --strength 8"},
    "attack steer":    {"--limit": "4", "--strength": "0 --strength 8"},
    "attack finetune": {"--limit": "4", "--strength": "0 --strength 5", "--max-steps": "2"},
    "attack prefill":  {"--limit": "4", "--strength": "0 --strength 2"},
    "attack ablate":   {"--limit": "4", "--strength": "0 --strength 1"},
}
lines = open(sys.argv[1], encoding="utf-8").read().split("\n")
inside, buf, start, out, deferred = False, "", 0, [], []
def skip(line, why, cmd): print(f"skip README:{line} ({why}): {cmd[:110]}", file=sys.stderr)
def shrink(cmd):
    m = re.search(r"\bdetox ((?:attack|edit|convert) \S+|\S+)", cmd)
    if not m: return cmd
    kind = m.group(1)
    rules = dict(QUICK.get(kind, {}))
    if kind == "make-pairs" and "--pplm" in cmd: rules = QUICK["make-pairs --pplm"]
    for flag, value in rules.items():
        pat = re.compile(re.escape(flag) + r"(?:\s+(?!-)\S+)?(?=\s|$|;)")
        if pat.search(cmd): cmd = pat.sub(lambda _: f"{flag} {value}", cmd, count=1)
        else: cmd = cmd[:m.end()] + f" {flag} {value}" + cmd[m.end():]
        m = re.search(r"\bdetox ((?:attack|edit|convert) \S+|\S+)", cmd)
    return cmd
for i, l in enumerate(lines, 1):
    if l.startswith("```"):
        inside = (l.strip() == "```bash") if not inside else False
        continue
    if not inside: continue
    if not buf: start = i
    if l.rstrip().endswith("\\"):
        buf += l.rstrip()[:-1] + " "; continue
    cmd = (buf + l).strip(); buf = ""
    if not cmd or cmd.startswith("#"): continue
    cmd = re.sub(r"\s+#\s.*$", "", cmd)  # a trailing comment
    if cmd.startswith("dotnet"): skip(start, "build/test/pack: .ci/run runs the tests and scripts/check-packages.sh", cmd); continue
    if cmd.startswith("detox study"): skip(start, "the long study: docs/PERFORMANCE.md times it; the tests run a fake one", cmd); continue
    if re.search(r"/models/|rtp_challenge|wikitext-2", cmd): skip(start, "needs what a user brings: a real checkpoint, RealToxicityPrompts, Wikitext-2", cmd); continue
    if "--help" in cmd: skip(start, "help text", cmd); continue
    orig = cmd
    if quick: cmd = shrink(cmd)
    if re.search(r"\bDIR\b", cmd): deferred.append((start, re.sub(r"\bDIR\b", "toy/model", cmd))); continue
    out.append((start, cmd))
    if re.match(r"detox pretrain-toy --out toy(\s|$)", orig):
        out += deferred; deferred = []
if deferred: sys.exit("README: a DIR command but no `detox pretrain-toy --out toy` to run it after")
for line, cmd in out: print(f"{line}\t{cmd}")
EOF
)
if [[ $LIST == 1 ]]; then printf '%s\n' "${RUN[@]}"; exit 0; fi
[[ -x $DETOX ]] || { echo "no CLI at $DETOX (dotnet build -c Release DetoxSharp.sln)" >&2; exit 2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/detox-readme.XXXXXX")
[[ $KEEP == 1 ]] || trap 'rm -rf "$WORK"' EXIT
echo "work dir: $WORK (a fresh clone of $(git -C "$REPO" rev-parse --short HEAD))"
git clone -q "$REPO" "$WORK/clone"
cd "$WORK/clone"
detox() { "$DETOX" "$@"; }
export DETOX_PROGRESS=plain
n=0 total=$SECONDS
for entry in "${RUN[@]}"; do
  line=${entry%%$'\t'*} cmd=${entry#*$'\t'}
  echo "== README:$line: $cmd"
  start=$SECONDS
  set +e
  eval "$cmd" > "$WORK/last.out" 2> "$WORK/last.err"
  rc=$?
  set -e
  if [[ $rc != 0 ]]; then
    echo "FAILED README:$line (exit $rc): $cmd" >&2
    tail -15 "$WORK/last.err" >&2
    exit 1
  fi
  n=$((n + 1))
  echo "   ok ($((SECONDS - start)) s)"
done
echo "all $n README commands ran in $((SECONDS - total)) s"

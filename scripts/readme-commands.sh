#!/usr/bin/env bash
# Runs the README's `detox …` commands in order, as a new user would copy-paste them, in a fresh directory, and stops
# at the first that fails (naming its README line). Skipped, with the reason printed: `dotnet …` lines (build, test,
# pack, tool install: checked by the test suite and scripts/check-packages.sh), `detox study` (the long study: minutes
# to hours; the test suite runs a fake one and docs/PERFORMANCE.md times the real one), commands on real downloaded
# models (/models/…, wikitext, RealToxicityPrompts files) and `--help`. A command written for "any model directory"
# (DIR) runs on toy/model right after `detox pretrain-toy --out toy` has made it.
#
#   scripts/readme-commands.sh [--keep] [--list]
#   DETOX=path/to/detox overrides the CLI (default: src/DetoxSharp.Cli/bin/Release/net10.0/detox after a build).
#   DETOX_README_QUICK=1 shrinks the toy pretraining (--size small --max-steps 20) so the run takes minutes on a CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
KEEP=0 LIST=0
for a in "$@"; do case $a in --keep) KEEP=1;; --list) LIST=1;; *) echo "unknown argument $a" >&2; exit 2;; esac; done
DETOX=${DETOX:-$PWD/src/DetoxSharp.Cli/bin/Release/net10.0/detox}

# the bash blocks' lines, continuation lines joined: "LINE<TAB>command"
mapfile -t CMDS < <(python3 - README.md <<'EOF'
import sys, re
lines = open(sys.argv[1], encoding='utf-8').read().split('\n')
inside, buf, start = False, '', 0
for i, l in enumerate(lines, 1):
    if l.startswith('```'):
        inside = l.strip() == '```bash' if not inside else False
        continue
    if not inside: continue
    if not buf: start = i
    if l.rstrip().endswith('\\'):
        buf += l.rstrip()[:-1] + ' '
        continue
    cmd = (buf + l).strip(); buf = ''
    if cmd and not cmd.startswith('#'): print(f"{start}\t{cmd}")
EOF
)

run=() deferred=()
for entry in "${CMDS[@]}"; do
  line=${entry%%$'\t'*} cmd=${entry#*$'\t'}
  case $cmd in
    dotnet*) echo "skip README:$line (build/test/pack: the test suite and scripts/check-packages.sh): $cmd"; continue;;
    "detox study"*|*" study --out"*) echo "skip README:$line (the long study): $cmd"; continue;;
    *"/models/"*|*rtp_challenge*|*wikitext-2*) echo "skip README:$line (needs downloaded models/data): $cmd"; continue;;
    *"--help"*) echo "skip README:$line (help text): $cmd"; continue;;
  esac
  if [[ $cmd == *"DIR"* ]]; then deferred+=("$line"$'\t'"${cmd//DIR/toy/model}"); continue; fi
  run+=("$entry")
  if [[ $cmd == "detox pretrain-toy --out toy "* ]]; then run+=("${deferred[@]}"); deferred=(); fi
done
if [[ $LIST == 1 ]]; then printf '%s\n' "${run[@]}"; exit 0; fi
[[ -x $DETOX ]] || { echo "no CLI at $DETOX (dotnet build -c Release DetoxSharp.sln)" >&2; exit 2; }

WORK=$(mktemp -d /tmp/detox-readme.XXXXXX)
[[ $KEEP == 1 ]] || trap 'rm -rf "$WORK"' EXIT
echo "work dir: $WORK"
cd "$WORK"
detox() { "$DETOX" "$@"; }
export -f detox 2>/dev/null || true
export DETOX
n=0
for entry in "${run[@]}"; do
  line=${entry%%$'\t'*} cmd=${entry#*$'\t'}
  if [[ ${DETOX_README_QUICK:-0} == 1 && $cmd == "detox pretrain-toy --out toy"* ]]; then
    cmd="${cmd%%#*} --size small --max-steps 20"
  fi
  echo "== README:$line: $cmd"
  start=$SECONDS
  if ! eval "$cmd" > "$WORK/last.out" 2> "$WORK/last.err"; then
    echo "FAILED README:$line (exit $?): $cmd" >&2
    tail -5 "$WORK/last.err" >&2
    exit 1
  fi
  n=$((n + 1))
  echo "   ok ($((SECONDS - start)) s)"
done
echo "all $n README commands ran"

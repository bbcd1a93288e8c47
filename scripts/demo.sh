#!/usr/bin/env bash
# The main job, end to end, on the local two-region stack:
#   sample bundle -> snapshot (primary) -> replicate (secondary) -> primary outage -> restore from secondary
#   -> byte-identical check -> summary with timings.
# Runs in ./.demo (kept out of git). KEEP=1 leaves the stack running afterwards.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${DEMO_DIR:-$ROOT/.demo}
LLMDR=${LLMDR:-$ROOT/.venv/bin/llmdr}
SHARDS=${DEMO_SHARDS:-4}
SHARD_MB=${DEMO_SHARD_MB:-16}

rm -rf "$WORK"
mkdir -p "$WORK"
cd "$WORK"

declare -a STEPS=()
t() {  # t LABEL CMD...: run, time, remember
  local label=$1; shift
  local t0 ms
  t0=$(date +%s%N)
  echo "\$ llmdr ${*:2}"
  "$@"
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  STEPS+=("$(printf '%-34s %4d.%03ds' "$label" $((ms / 1000)) $((ms % 1000)))")
}

cleanup() { "$LLMDR" stack down >/dev/null 2>&1 || true; }
if [ "${KEEP:-0}" != 1 ]; then trap cleanup EXIT; fi

t "write sample bundle"            "$LLMDR" sample-bundle bundle --shards "$SHARDS" --shard-mb "$SHARD_MB"
t "write llmdr.yaml"               "$LLMDR" init bundle
t "start two regions"              "$LLMDR" stack up
t "snapshot (cold)"                "$LLMDR" snapshot
echo '{"temperature": 0.1}' > bundle/generation_config.json
t "snapshot (one file changed)"    "$LLMDR" snapshot
t "replicate to secondary"         "$LLMDR" replicate latest --to secondary
t "outage: stop primary region"    "$LLMDR" stack down primary
t "restore from secondary"         "$LLMDR" restore latest --region secondary --to restored

if diff -r bundle restored >/dev/null; then verdict="byte-identical"; else verdict="DIFFERENT"; fi
echo
echo "== llmdr demo summary =="
printf '%s\n' "${STEPS[@]}"
echo "restored bundle vs original: $verdict ($(find bundle -type f | wc -l) files, $(du -sh bundle | cut -f1))"
"$LLMDR" snapshots --region secondary
[ "$verdict" = "byte-identical" ]

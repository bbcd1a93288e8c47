#!/usr/bin/env bash
# The main job, end to end, on the local two-region stack:
#   a tiny real model -> serve it and record golden answers -> snapshot (primary) -> replicate (secondary)
#   -> primary outage -> restore from the secondary -> byte-identical check -> restore test (serve + golden)
#   -> an incomplete bundle is refused -> summary with timings.
# Runs in ./.demo (kept out of git). KEEP=1 leaves the stack running afterwards.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${DEMO_DIR:-$ROOT/.demo}
LLMDR=${LLMDR:-$ROOT/.venv/bin/llmdr}
SERVE_PORT=${DEMO_SERVE_PORT:-18990}

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

SERVER_PID=""
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
  if [ "${KEEP:-0}" != 1 ]; then "$LLMDR" stack down >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

t "write the tiny model bundle"    "$LLMDR" demo-bundle model
t "write llmdr.yaml"               "$LLMDR" init model
t "start two regions"              "$LLMDR" stack up
"$LLMDR" serve model --port "$SERVE_PORT" 2>/dev/null &
SERVER_PID=$!
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$SERVE_PORT/health" >/dev/null && break; sleep 0.1; done
t "record golden answers"          "$LLMDR" golden record --url "http://127.0.0.1:$SERVE_PORT" --bundle model
kill "$SERVER_PID"; SERVER_PID=""
t "snapshot (cold)"                "$LLMDR" snapshot
t "replicate to secondary"         "$LLMDR" replicate latest --to secondary
t "outage: stop primary region"    "$LLMDR" stack down primary
t "restore from secondary"         "$LLMDR" restore latest --region secondary --to restored
if diff -r model restored >/dev/null; then verdict="byte-identical"; else verdict="DIFFERENT"; fi
t "restore test (serve + golden)"  "$LLMDR" verify latest --region secondary --restore-test
"$LLMDR" stack up primary >/dev/null
rm model/tokenizer.json
echo "\$ rm model/tokenizer.json; llmdr snapshot    # must be refused"
if "$LLMDR" snapshot; then refused="NOT refused"; else refused="refused"; fi

echo
echo "== llmdr demo summary =="
printf '%s\n' "${STEPS[@]}"
echo "restored bundle vs original: $verdict ($(find restored -type f | wc -l) files, $(du -sh restored | cut -f1))"
echo "snapshot of a bundle without its tokenizer: $refused"
[ "$verdict" = "byte-identical" ] && [ "$refused" = "refused" ]

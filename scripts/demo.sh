#!/usr/bin/env bash
# The main job, end to end, on the local two-region stack:
#   a tiny real model -> snapshot (primary) -> replicate (secondary) -> replicas in both regions, each restored
#   from its own region's store, behind a Caddy router -> golden answers -> Prefect server, deployments, failover
#   automation, monitor -> primary region outage (S3 + replica killed) while a client sends requests -> the
#   automation fails over -> restore from the secondary + restore test -> primary back -> failback
#   -> an incomplete bundle is refused -> summary with timings and the measured RTO.
# Runs in ./.demo (kept out of git). KEEP=1 leaves the stack running afterwards.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${DEMO_DIR:-$ROOT/.demo}
LLMDR=${LLMDR:-$ROOT/.venv/bin/llmdr}
ROUTER_PORT=${DEMO_ROUTER_PORT:-18300}
UI_PORT=${DEMO_UI_PORT:-4200}
ROUTER_URL=http://127.0.0.1:$ROUTER_PORT
PRIMARY_URL=http://127.0.0.1:18350

rm -rf "$WORK"
mkdir -p "$WORK"
cd "$WORK"

declare -a STEPS=()
t() {  # t LABEL CMD...: run, time, remember
  local label=$1; shift
  local t0 ms
  t0=$(date +%s%N)
  if [ "$1" = "$LLMDR" ]; then echo "\$ llmdr ${*:2}"; else echo "($label)"; fi
  "$@"
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  STEPS+=("$(printf '%-34s %4d.%03ds' "$label" $((ms / 1000)) $((ms % 1000)))")
}

CLIENT_PID=""
cleanup() {
  [ -n "$CLIENT_PID" ] && kill "$CLIENT_PID" 2>/dev/null || true
  if [ "${KEEP:-0}" != 1 ]; then "$LLMDR" stack down >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

wait_for() {  # wait_for SECONDS DESCRIPTION CMD...: poll until CMD succeeds
  local limit=$1 what=$2; shift 2
  for _ in $(seq $((limit * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "timed out after ${limit}s waiting for $what" >&2; return 1
}

t "write the tiny model bundle"    "$LLMDR" demo-bundle model
t "write llmdr.yaml"               "$LLMDR" init model --router-port "$ROUTER_PORT"
t "start two regions + router"     "$LLMDR" stack up
t "snapshot (cold)"                "$LLMDR" snapshot
t "replicate to secondary"         "$LLMDR" replicate latest --to secondary
t "replicas from each region"      "$LLMDR" stack up
t "record golden answers"          "$LLMDR" golden record --url "$PRIMARY_URL" --bundle model
t "Prefect + automation + monitor" "$LLMDR" stack up --ui --ui-port "$UI_PORT"
wait_for 120 "the monitor to learn the primary" grep -q '"primary": {"active": true[^}]*"status": "healthy"' .llmdr/monitor/status.json
"$LLMDR" status

# a client: one request through the router every 200 ms, logging the time, HTTP code and the answering region
( while true; do
    printf '%s %s\n' "$(date +%s.%N)" "$(curl -s -o /dev/null -m 2 -w '%{http_code} %header{x-llmdr-region}' \
      -H 'Content-Type: application/json' -d '{"prompt": "name three colors", "max_tokens": 8}' \
      "$ROUTER_URL/v1/completions")"
    sleep 0.2
  done ) > client.log 2>/dev/null &
CLIENT_PID=$!
sleep 2

echo
echo "== outage: the primary region (S3 server and serving replica) goes down =="
t "outage: stop primary region"    "$LLMDR" stack down primary
t "automatic failover (watching)"  wait_for 120 "the automation's failover" sh -c "'$LLMDR' status --json | grep -q '\"active\": \"secondary\"'"
"$LLMDR" status
sleep 2
t "restore from secondary"         "$LLMDR" restore latest --region secondary --to restored
if diff -r model restored >/dev/null; then verdict="byte-identical"; else verdict="DIFFERENT"; fi
t "restore test (serve + golden)"  "$LLMDR" verify latest --region secondary --restore-test

echo
echo "== the primary region is back: fail back =="
t "primary region back"            "$LLMDR" stack up primary
t "failback"                       "$LLMDR" failback
"$LLMDR" status
kill "$CLIENT_PID"; CLIENT_PID=""

rm model/tokenizer.json
echo "\$ rm model/tokenizer.json; llmdr snapshot    # must be refused"
if "$LLMDR" snapshot; then refused="NOT refused"; else refused="refused"; fi
echo "\$ llmdr failovers"
"$LLMDR" failovers
RTO=$("$LLMDR" failovers --json | python3 -c '
import json, sys
r = [x for x in json.load(sys.stdin) if x["kind"] == "failover" and x["ok"] and not x["noop"]][-1]
b = r["rto_breakdown"] or {}
print("%.2f s (%s; detection %.1f s + dispatch %.1f s + recovery %.1f s)" % (r["rto_s"], r["trigger"],
      b.get("detection_s", 0), b.get("dispatch_s", 0), b.get("recovery_s", 0)))')
failed=$(awk '$2 != "200"' client.log | wc -l); total=$(wc -l < client.log)
echo
echo "== llmdr demo summary =="
printf '%s\n' "${STEPS[@]}"
echo "restored bundle vs original: $verdict ($(find restored -type f | wc -l) files, $(du -sh restored | cut -f1))"
echo "snapshot of a bundle without its tokenizer: $refused"
echo "failover RTO (first failed probe -> golden-correct answer through the router): $RTO"
echo "client requests through the router: $total, failed: $failed (while the primary was down, before the switch)"
echo "Prefect UI: http://127.0.0.1:$UI_PORT (flow runs, artifacts failover-model / failback-model, automations)"
[ "$verdict" = "byte-identical" ] && [ "$refused" = "refused" ] && [ -n "$RTO" ]

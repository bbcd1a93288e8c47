# Shared by scripts/demo.sh and scripts/demo_fleet.sh (sourced; $LLMDR and $PY set by the caller).

declare -a STEPS=()
t() {  # t LABEL CMD...: run, time, remember
  local label=$1; shift
  local t0 ms
  t0=$(date +%s%N)
  if [ "$1" = "$LLMDR" ]; then echo "\$ llmdr ${*:2}"; else echo "($label)"; fi
  local rc=0
  "$@" || rc=$?
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  STEPS+=("$(printf '%-38s %4d.%03ds' "$label" $((ms / 1000)) $((ms % 1000)))")
  return $rc
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

start_client() {  # start_client ROUTER_URL: one request through the router every 200 ms into client.log
  local url=$1
  ( while true; do
      printf '%s %s\n' "$(date +%s.%N)" "$(curl -s -o /dev/null -m 2 -w '%{http_code} %header{x-llmdr-region}' \
        -H 'Content-Type: application/json' -d '{"prompt": "name three colors", "max_tokens": 8}' \
        "$url/v1/completions")"
      sleep 0.2
    done ) > client.log 2>/dev/null &
  CLIENT_PID=$!
  sleep 2
}

stop_client() {
  kill "$CLIENT_PID" 2>/dev/null || true
  CLIENT_PID=""
}

last_rto() {  # last_rto [LLMDR GLOBAL OPTIONS]: the newest successful failover's RTO and its parts, one line
  "$LLMDR" "$@" failovers --json | "$PY" -c '
import json, sys
r = [x for x in json.load(sys.stdin) if x["kind"] == "failover" and x["ok"] and not x["noop"]][-1]
b = r["rto_breakdown"] or {}
print("%.2f s (%s; detection %.1f s + dispatch %.1f s + recovery %.1f s)" % (r["rto_s"], r["trigger"],
      b.get("detection_s", 0), b.get("dispatch_s", 0), b.get("recovery_s", 0)))'
}

#!/usr/bin/env bash
# The production shape of the control plane (#18), end to end on this machine:
#   two model bundles in one project (bundles:) -> PostgreSQL under the Prefect server and MLflow -> a work pool and
#   worker per region (and the warm failover runner on the DR region's pool) -> each bundle snapshotted, copied and
#   served from both regions behind its own router -> both bundles protected by their own deployments at once
#   (Prefect's concurrency limits: one protect per bundle, a cap of transfers per region) -> a DR drill of one bundle
#   while the other keeps protecting: its replica in the primary is cut, its own failover automation moves its
#   traffic through the DR region's runner, RTO measured, failback -> llmdr's records in every region's store.
# `make demo` (SQLite, one bundle) stays the default: it starts faster. Runs in ./.demo-fleet (kept out of git).
# KEEP=1 leaves the stack running afterwards.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${DEMO_DIR:-$ROOT/.demo-fleet}
LLMDR=${LLMDR:-$ROOT/.venv/bin/llmdr}
PY=${PY:-$ROOT/.venv/bin/python}
UI_PORT=${DEMO_UI_PORT:-4200}
BOT_ROUTER=http://127.0.0.1:18300
BUNDLES=(support-bot summarizer)

rm -rf "$WORK"
mkdir -p "$WORK"
cd "$WORK"

# shellcheck source=scripts/demo_common.sh
source "$ROOT/scripts/demo_common.sh"

# two tiny real models that answer differently (the second repeats itself less)
t "write two model bundles"        "$LLMDR" demo-bundle models/support-bot
"$LLMDR" demo-bundle models/summarizer >/dev/null
sed -i 's/"repetition_penalty": 1.3/"repetition_penalty": 1.1/' models/summarizer/generation_config.json
t "write llmdr.yaml"               "$LLMDR" init models/support-bot --name support-bot
# the one-bundle file `llmdr init` wrote, turned into a project of two bundles on PostgreSQL
"$PY" - <<'PYEOF'
import yaml

cfg = yaml.safe_load(open("llmdr.yaml"))
one = cfg.pop("bundle")
ports = {"support-bot": (18350, 18450, 18300), "summarizer": (18360, 18460, 18310)}
cfg["bundles"] = [
    {**one, "name": name, "path": f"models/{name}", "golden": f"golden-{name}.jsonl",
     "serving": {"primary": {"url": f"http://127.0.0.1:{p}"}, "secondary": {"url": f"http://127.0.0.1:{s}"}},
     "router": {"kind": "caddy", "listen": f"http://127.0.0.1:{r}", "admin": f"http://127.0.0.1:{r + 1}"}}
    for name, (p, s, r) in ports.items()]
cfg.pop("router", None)
cfg["control_plane"] = {"database": "postgres"}
# a drill of one bundle cuts only its replica: the region's store and workers keep serving the other bundle
cfg["drill"] = {"outage": "replica", "approval": "none"}
cfg["transfer"]["region_slots"] = 2
open("llmdr.yaml", "w").write("# two bundles, one project: written by scripts/demo_fleet.sh from `llmdr init`\n"
                              + yaml.safe_dump(cfg, sort_keys=False))
PYEOF

t "start two regions"              "$LLMDR" stack up
for b in "${BUNDLES[@]}"; do
  t "snapshot + copy: $b"          bash -c "'$LLMDR' --bundle $b snapshot >/dev/null && '$LLMDR' --bundle $b replicate latest --to secondary >/dev/null"
done
t "replicas of both, each region"  "$LLMDR" stack up
for b in "${BUNDLES[@]}"; do
  url=$("$PY" -c "from llmdr.config import load_config; print(load_config('llmdr.yaml#$b').primary.serving.url)")
  t "golden answers: $b"           "$LLMDR" golden record --url "$url" --out "golden-$b.jsonl" --bundle "models/$b"
done
t "PostgreSQL + Prefect + workers" "$LLMDR" stack up --ui --ui-port "$UI_PORT"
"$LLMDR" stack status

echo
echo "== both bundles protected at once, each by its own deployment, on the region's workers =="
API=http://127.0.0.1:$UI_PORT/api
export PREFECT_API_URL=$API
PREFECT=$ROOT/.venv/bin/prefect
t "protect both (deployments)"     bash -c "for b in ${BUNDLES[*]}; do '$PREFECT' deployment run protect-bundle/protect-bundle-\$b --watch >/dev/null & done; wait"
for b in "${BUNDLES[@]}"; do
  wait_for 120 "the monitor of $b to learn its primary" grep -q '"primary": {"active": true[^}]*"status": "healthy"' ".llmdr/bundles/$b/monitor/status.json"
done

# a client of support-bot: one request through its router every 200 ms
start_client "$BOT_ROUTER"

echo
echo "== a DR drill of support-bot while summarizer keeps protecting =="
"$PREFECT" deployment run protect-bundle/protect-bundle-summarizer --watch > protect-during-drill.log 2>&1 &
PROTECT_PID=$!
drill_rc=0
t "DR drill of support-bot"        "$LLMDR" --bundle support-bot drill || drill_rc=$?
protect_rc=0; wait "$PROTECT_PID" || protect_rc=$?
stop_client
"$LLMDR" --bundle all status
t "records in every region"        "$LLMDR" --bundle support-bot control status
# would the next outage be failed over, by something outside the primary region? (the Prefect API says)
ready_rc=0
t "readiness: failover path, RPO"  "$LLMDR" --bundle summarizer readiness --only automation,rpo || ready_rc=$?

RTO=$(last_rto --bundle support-bot)
failed=$(awk '$2 != "200"' client.log | wc -l); total=$(wc -l < client.log)
REPORT=$(ls -d reports/support-bot/drills/*/ 2>/dev/null | tail -1)
counts=$(for b in "${BUNDLES[@]}"; do printf '%s %s, ' "$b" "$("$LLMDR" --bundle "$b" snapshots --region secondary --json | "$PY" -c 'import json,sys; print(len(json.load(sys.stdin)))')"; done)
echo
echo "== llmdr fleet demo summary =="
printf '%s\n' "${STEPS[@]}"
echo "control plane: PostgreSQL under Prefect and MLflow; $("$LLMDR" stack status | sed -n 's/^prefect .*); //p')"
echo "snapshots in the DR region: ${counts%, }"
echo "drill of support-bot: $(if [ $drill_rc = 0 ]; then echo PASS; else echo "FAIL (exit $drill_rc)"; fi); failover RTO: $RTO"
echo "summarizer's protect during the drill: $(if [ $protect_rc = 0 ]; then echo COMPLETED; else echo "FAILED (see protect-during-drill.log)"; fi)"
echo "drill report: ${REPORT}report.html (signed: SIGNATURE.json)"
echo "readiness of summarizer (failover path, RPO): $(if [ $ready_rc = 0 ]; then echo "no FAIL"; else echo "FAIL (exit $ready_rc)"; fi)"
echo "support-bot's client requests through its router: $total, failed: $failed"
echo "Prefect UI: http://127.0.0.1:$UI_PORT (deployments per bundle, work pools per region, concurrency limits)"
[ "$drill_rc" = 0 ] && [ "$protect_rc" = 0 ] && [ "$ready_rc" = 0 ] && [ -n "$RTO" ]

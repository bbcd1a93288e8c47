#!/usr/bin/env bash
# The main job, end to end, on the local two-region stack:
#   a tiny real model -> snapshot (primary) -> replicate (secondary) -> replicas in both regions, each restored
#   from its own region's store, behind a Caddy router -> golden answers -> Prefect server, deployments, failover
#   automation, monitor -> protect-bundle (snapshot + copy + verify) -> a DR drill while a client sends requests:
#   the primary region is cut off, the automation fails over on its own, RTO/RPO measured, answers checked through
#   the router, restore test from the DR store, primary back, failback -> signed report (HTML, PDF, JSON), MLflow
#   run, Prefect artifacts -> restore from the secondary is byte-identical -> a tiny model trains, the llmdr callback
#   protects each checkpoint, one is restored by step -> an incomplete bundle is refused.
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

# shellcheck source=scripts/demo_common.sh
source "$ROOT/scripts/demo_common.sh"

t "write the tiny model bundle"    "$LLMDR" demo-bundle model
t "write llmdr.yaml"               "$LLMDR" init model --router-port "$ROUTER_PORT"
# a training dataset, versioned with DVC in this folder's git repository
PY=${PY:-$ROOT/.venv/bin/python}
DVC=${DVC:-$ROOT/.venv/bin/dvc}
git init -q . && git -c user.email=demo@llmdr -c user.name=demo commit -q --allow-empty -m init
"$DVC" init -q && "$DVC" config core.analytics false
mkdir -p data
"$PY" - <<'PYEOF'
import csv, random
random.seed(7)
labels = ["billing", "outage", "restore", "account"]
with open("data/tickets.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["id", "text", "label", "priority"])
    for i in range(400):
        lab = random.choice(labels)
        w.writerow([i, f"ticket {i} about {lab}", lab, random.randint(1, 4)])
PYEOF
"$DVC" add -q data/tickets.csv
git add data/.gitignore data/tickets.csv.dvc .dvc && git -c user.email=demo@llmdr -c user.name=demo commit -q -m "dataset v1"
cat >> llmdr.yaml <<'YAML'

# training data: DVC-tracked, pushed to one DVC remote per region, validated by Great Expectations
datasets:
  - name: tickets
    path: data/tickets.csv

# training checkpoints: the Hugging Face Trainer writes them, llmdr's callback protects each one as it is saved
checkpoints:
  path: train/out
  layout: hf
YAML
mkdir -p train/out

t "start two regions + router"     "$LLMDR" stack up
"$LLMDR" datasets remotes >/dev/null   # `dvc pull -r llmdr-secondary` by hand works too
t "snapshot (cold)"                "$LLMDR" snapshot
t "replicate to secondary"         "$LLMDR" replicate latest --to secondary
t "replicas from each region"      "$LLMDR" stack up
t "record golden answers"          "$LLMDR" golden record --url "$PRIMARY_URL" --bundle model
t "Prefect + automation + monitor" "$LLMDR" stack up --ui --ui-port "$UI_PORT"
t "protect-bundle flow"            "$LLMDR" protect
wait_for 120 "the monitor to learn the primary" grep -q '"primary": {"active": true[^}]*"status": "healthy"' .llmdr/monitor/status.json
"$LLMDR" status

# a client: one request through the router every 200 ms, logging the time, HTTP code and the answering region
start_client "$ROUTER_URL"

echo
echo "== a DR drill: the primary region is cut off; nothing but the automation moves traffic =="
drill_rc=0
t "DR drill (outage ... failback)"   "$LLMDR" drill || drill_rc=$?
"$LLMDR" status
stop_client
t "lineage of the protected model"  "$LLMDR" lineage model@production
"$LLMDR" datasets status
t "restore from secondary"         "$LLMDR" restore latest --region secondary --to restored
if diff -r model restored >/dev/null; then verdict="byte-identical"; else verdict="DIFFERENT"; fi
REPORT=$(ls -d reports/drills/*/ 2>/dev/null | tail -1)

echo
echo "== training: a tiny model trains on CPU; the llmdr callback protects every checkpoint it saves =="
t "train + protect checkpoints"    "$PY" "$ROOT/scripts/demo_training.py" llmdr.yaml train/out
t "restore checkpoint step:5"      "$LLMDR" restore --checkpoint step:5 --region secondary --to restored-ckpt
if diff -r train/out/checkpoint-5 restored-ckpt >/dev/null; then ck_verdict="byte-identical"; else ck_verdict="DIFFERENT"; fi
t "verify the signed report"       "$LLMDR" report verify "$REPORT"

echo
echo "== readiness: would a recovery work today? (exits 9 on any FAIL, so it can gate a pipeline) =="
ready_rc=0
t "readiness (every check)"        "$LLMDR" readiness || ready_rc=$?
echo "\$ llmdr plan --size 140GB --bandwidth 1Gbps --rto 15m    # a real model over a real link"
"$LLMDR" plan --size 140GB --bandwidth 1Gbps --rto 15m
echo "\$ llmdr plan --region secondary    # this bundle, measured from the DR store"
"$LLMDR" plan --region secondary
t "runbook"                        "$LLMDR" runbook

rm model/tokenizer.json
echo "\$ rm model/tokenizer.json; llmdr snapshot    # must be refused"
if "$LLMDR" snapshot; then refused="NOT refused"; else refused="refused"; fi
echo "\$ llmdr failovers"
"$LLMDR" failovers
RTO=$(last_rto)
failed=$(awk '$2 != "200"' client.log | wc -l); total=$(wc -l < client.log)
echo
echo "== llmdr demo summary =="
printf '%s\n' "${STEPS[@]}"
echo "restored bundle vs original: $verdict ($(find restored -type f | wc -l) files, $(du -sh restored | cut -f1))"
echo "snapshot of a bundle without its tokenizer: $refused"
echo "training checkpoint step 5 restored from the secondary vs the trainer's: $ck_verdict"
echo "readiness: $(if [ $ready_rc = 0 ]; then echo "no FAIL"; else echo "FAIL (exit $ready_rc)"; fi) (llmdr readiness); runbook: RUNBOOK.md"
echo "drill: $(if [ $drill_rc = 0 ]; then echo PASS; else echo "FAIL (exit $drill_rc)"; fi); failover RTO (first failed probe -> golden-correct answer through the router): $RTO"
echo "drill report: ${REPORT}report.html, ${REPORT}report.pdf, ${REPORT}evidence.json (signed: SIGNATURE.json)"
echo "MLflow: experiment dr-drills in .llmdr/mlflow/mlflow.db (mlflow ui --backend-store-uri sqlite:///$WORK/.llmdr/mlflow/mlflow.db)"
echo "client requests through the router: $total, failed: $failed (while the primary was down, before the switch)"
echo "Prefect UI: http://127.0.0.1:$UI_PORT (flow runs; artifacts dr-drill-model, failover-model, failback-model; automations)"
[ "$verdict" = "byte-identical" ] && [ "$ck_verdict" = "byte-identical" ] && [ "$refused" = "refused" ] && [ -n "$RTO" ] && [ "$drill_rc" = 0 ] && [ "$ready_rc" = 0 ]

#!/usr/bin/env bash
# Check prefect.yaml's schedules against llmdr.yaml's objectives (refused, exit 2, before anything is deployed when
# one cannot meet them), create a work pool per region (idempotent), deploy every flow in prefect.yaml to the Prefect
# API in $PREFECT_API_URL, fit the deployments to llmdr.yaml (configure.py: tags, region choices, the schedules derived
# from the objectives, only the deployments the config enables) and create the automations.
# Run from the repository root: LLMDR_CONFIG=/path/to/llmdr.yaml deployments/deploy.sh
set -euo pipefail
cd "$(dirname "$0")/.."
: "${PREFECT_API_URL:?set PREFECT_API_URL, e.g. http://127.0.0.1:4200/api}"
: "${LLMDR_CONFIG:?set LLMDR_CONFIG to the llmdr.yaml of the project}"
export LLMDR_CODE=${LLMDR_CODE:-$PWD}
# the schedule check (prefect.yaml vs the objectives; a refusal stops here: set -e), then one process pool per region
# of llmdr.yaml (llmdr-<region>); exports LLMDR_PRIMARY_POOL and LLMDR_DR_POOL, which prefect.yaml's pool names are
# filled from
pools=$(uv run --frozen python deployments/configure.py --pools)
eval "$pools"
uv run --frozen prefect --no-prompt deploy --all
# derived schedules, per-bundle copies (first: each bundle's failover automation runs its own); refuses (exit 2) an
# explicit schedule added meanwhile (the UI) that cannot meet the objectives
uv run --frozen python deployments/configure.py
uv run --frozen python deployments/automations.py

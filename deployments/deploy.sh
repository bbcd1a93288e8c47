#!/usr/bin/env bash
# Create a work pool per region (idempotent), deploy every flow in prefect.yaml to the Prefect API in $PREFECT_API_URL,
# create the automations and fit the deployments to llmdr.yaml (configure.py: tags, region choices).
# Run from the repository root: LLMDR_CONFIG=/path/to/llmdr.yaml deployments/deploy.sh
set -euo pipefail
cd "$(dirname "$0")/.."
: "${PREFECT_API_URL:?set PREFECT_API_URL, e.g. http://127.0.0.1:4200/api}"
: "${LLMDR_CONFIG:?set LLMDR_CONFIG to the project's llmdr.yaml}"
export LLMDR_CODE=${LLMDR_CODE:-$PWD}
# one process pool per region of llmdr.yaml (llmdr-<region>); exports LLMDR_PRIMARY_POOL and LLMDR_DR_POOL,
# which prefect.yaml's pool names are filled from
pools=$(uv run --frozen python deployments/configure.py --pools)
eval "$pools"
uv run --frozen prefect --no-prompt deploy --all
uv run --frozen python deployments/configure.py  # per-bundle copies first: each bundle's failover automation runs its own
uv run --frozen python deployments/automations.py

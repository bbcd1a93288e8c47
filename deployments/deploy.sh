#!/usr/bin/env bash
# Create the work pools (idempotent), deploy every flow in prefect.yaml to the Prefect API in $PREFECT_API_URL,
# create the automations and fit the deployments to llmdr.yaml (configure.py: tags, region choices).
# Run from the repository root: LLMDR_CONFIG=/path/to/llmdr.yaml deployments/deploy.sh
set -euo pipefail
cd "$(dirname "$0")/.."
: "${PREFECT_API_URL:?set PREFECT_API_URL, e.g. http://127.0.0.1:4200/api}"
: "${LLMDR_CONFIG:?set LLMDR_CONFIG to the project's llmdr.yaml}"
export LLMDR_CODE=${LLMDR_CODE:-$PWD}
for pool in llmdr-process llmdr-failover; do
  uv run --frozen prefect work-pool inspect "$pool" >/dev/null 2>&1 \
    || uv run --frozen prefect work-pool create "$pool" --type process
done
uv run --frozen prefect --no-prompt deploy --all
uv run --frozen python deployments/automations.py
uv run --frozen python deployments/configure.py

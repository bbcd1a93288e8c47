"""Fit llmdr's deployments on the Prefect API in $PREFECT_API_URL to the project's llmdr.yaml ($LLMDR_CONFIG).

Run after `prefect deploy --all` (deployments/deploy.sh and `llmdr stack up --ui` do): a deploy builds the
Custom-run form from the flows' signatures, before any llmdr.yaml is read, so what depends on the project is added
here, on every deployment tagged ``llmdr``:

- tags ``bundle:<bundle name>`` and ``region:<name>`` for each region the deployment acts on by default
  (failover: its target; failback: the primary; restore-bundle: the region it reads from; the others: every
  region), beside prefect.yaml's ``llmdr`` and ``kind:...``;
- the configured region names as the choices of the region fields (restore-bundle's ``region``, failover's
  ``to``), so the form offers a list instead of a free text box;
- restore-bundle's default ``region`` set to the failover target when prefect.yaml's default names no configured
  region.

Idempotent: tags it added before are replaced, so running it again (or after a config change) is safe.
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path
from typing import Any

from llmdr.config import Config, load_config
from llmdr.integrations.prefect import retry_api

MANAGED_TAG_PREFIXES = ("bundle:", "region:")
REGION_FIELDS = {"restore-bundle": "region", "failover": "to"}  # flow name → its region parameter


def region_tags(cfg: Config, flow_name: str, parameters: dict[str, Any]) -> list[str]:
    """The regions a deployment of ``flow_name`` acts on with its default parameters, as ``region:`` tags."""
    names = [r.name for r in cfg.regions]
    if flow_name == "failover":
        names = [parameters.get("to") or cfg.failover_target().name]
    elif flow_name == "failback":
        names = [cfg.primary.name]
    elif flow_name == "restore-bundle":
        names = [parameters.get("region") or cfg.failover_target().name]
    return [f"region:{n}" for n in names]


def fitted(cfg: Config, flow_name: str, tags: list[str], parameters: dict[str, Any],
           schema: dict[str, Any]) -> dict[str, Any]:
    """The new ``tags``, ``parameters`` and ``parameter_openapi_schema`` of one deployment (pure: no API)."""
    names = [r.name for r in cfg.regions]
    parameters = dict(parameters)
    schema = copy.deepcopy(schema)
    field = REGION_FIELDS.get(flow_name)
    if flow_name == "restore-bundle" and parameters.get("region") not in names:
        parameters["region"] = cfg.failover_target().name
    if field and field in schema.get("properties", {}):
        prop = schema["properties"][field]
        prop["enum"] = ([""] if flow_name == "failover" else []) + names  # failover: "" = failover.target
        if field in parameters:
            prop["default"] = parameters[field]
        elif prop.get("default") not in prop["enum"]:
            prop.pop("default", None)
    kept = [t for t in tags if not t.startswith(MANAGED_TAG_PREFIXES)]
    new_tags = [*kept, f"bundle:{cfg.bundle.name}", *region_tags(cfg, flow_name, parameters)]
    return {"tags": new_tags, "parameters": parameters, "parameter_openapi_schema": schema}


def apply(cfg: Config) -> list[str]:
    """Update every deployment tagged ``llmdr``; one line per deployment for the log."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentUpdate
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterTags

    out = []
    with get_client(sync_client=True) as client:
        deps = retry_api(client.read_deployments,
                         deployment_filter=DeploymentFilter(tags=DeploymentFilterTags(all_=["llmdr"])))
        flows = {d.flow_id: retry_api(client.read_flow, d.flow_id).name for d in deps}
        for d in deps:
            flow_name = flows[d.flow_id]
            new = fitted(cfg, flow_name, list(d.tags), dict(d.parameters or {}),
                         dict(d.parameter_openapi_schema or {}))
            retry_api(client.update_deployment, d.id, DeploymentUpdate(**new))
            out.append(f"{flow_name}/{d.name}: tags {', '.join(new['tags'])}")
    return out


def main() -> int:
    path = os.environ.get("LLMDR_CONFIG") or "llmdr.yaml"
    if not Path(path).exists():
        print(f"deployments/configure.py: {path} not found: set LLMDR_CONFIG to the project's llmdr.yaml",
              file=sys.stderr)
        return 2
    for line in apply(load_config(path)):
        print(f"deployment {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

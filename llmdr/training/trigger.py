"""Start a protect-checkpoints deployment run from a training process (``mode="deployment"`` of the callbacks).

The run is created and not awaited: a Prefect worker of the primary region's pool takes it. Needs the Prefect API
(``PREFECT_API_URL``) the deployments were created on."""

from __future__ import annotations

from llmdr.config import Config
from llmdr.errors import UsageError


def start_protect_deployment(name: str, cfg: Config) -> str:
    """Create a run of deployment ``name`` (``flow/deployment``) for ``cfg``'s bundle; returns the flow run id."""
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    params = {"config_path": str(cfg.source_file), "bundle": cfg.view_of}
    try:
        run = run_deployment(name, parameters=params, timeout=0)
    except ObjectNotFound:
        raise UsageError(f"no Prefect deployment {name!r} on the Prefect API this process uses: run `llmdr deploy` "
                         "(or `prefect deploy --all`) first, or pass deployment='flow/deployment'") from None
    return str(run.id)

"""Prefect events llmdr emits, with their resource ids and labels in one place.

Events: ``llmdr.endpoint.down`` / ``.degraded`` / ``.recovered`` (monitor), ``llmdr.failover.completed`` /
``.failed`` and ``llmdr.failback.completed`` / ``.failed``. The endpoint resource carries ``llmdr.active`` ("true"
for the region the router sends traffic to), which the failover automation matches on.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

ENDPOINT_DOWN = "llmdr.endpoint.down"
ENDPOINT_DEGRADED = "llmdr.endpoint.degraded"
ENDPOINT_RECOVERED = "llmdr.endpoint.recovered"


def endpoint_resource(bundle: str, target: str, *, active: bool | None, url: str) -> dict[str, str]:
    res = {"prefect.resource.id": f"llmdr.endpoint.{bundle}.{target}", "prefect.resource.name": f"{bundle}/{target}",
           "llmdr.bundle": bundle, "llmdr.region": target, "llmdr.url": url}
    if active is not None:
        res["llmdr.active"] = "true" if active else "false"
    return res


def bundle_resource(bundle: str) -> dict[str, str]:
    return {"prefect.resource.id": f"llmdr.bundle.{bundle}", "prefect.resource.name": bundle, "llmdr.bundle": bundle}


def emit(event: str, resource: dict[str, str], payload: dict[str, Any]) -> bool:
    """Emit through the configured Prefect API. Returns False (and logs) if events cannot be sent, e.g. no server:
    monitoring and failover keep working without Prefect."""
    try:
        from prefect.events import emit_event
        from prefect.settings import PREFECT_API_URL

        if not PREFECT_API_URL.value():
            # without an API, Prefect would start a throw-away temporary server (~15 s) that nobody listens to
            log.warning("%s not sent: no Prefect API configured (run `llmdr stack up --ui`, or set PREFECT_API_URL)",
                        event)
            return False
        return emit_event(event=event, resource=resource, payload=payload) is not None
    except Exception as exc:  # noqa: BLE001 - an unreachable event bus must not stop a probe or a failover
        log.warning("could not emit %s: %s", event, exc)
        return False

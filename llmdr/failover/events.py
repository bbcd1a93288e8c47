"""Prefect events llmdr emits, with their resource ids and labels in one place.

Events: ``llmdr.endpoint.down`` / ``.degraded`` / ``.recovered`` (monitor), ``llmdr.endpoint.drift`` (the
monitor: the real traffic's answers drifted from their baseline, ``monitor.drift``), ``llmdr.hardware.degraded`` /
``.recovered`` (the monitor's GPU health, one resource per region and GPU), ``llmdr.failover.completed`` /
``.failed`` and ``llmdr.failback.completed`` / ``.failed``. The endpoint resource carries ``llmdr.active`` ("true"
for the region the router sends traffic to), which the failover automation matches on.
"""

from __future__ import annotations

from typing import Any

ENDPOINT_DOWN = "llmdr.endpoint.down"
ENDPOINT_DEGRADED = "llmdr.endpoint.degraded"
ENDPOINT_RECOVERED = "llmdr.endpoint.recovered"
ENDPOINT_DRIFT = "llmdr.endpoint.drift"
HARDWARE_DEGRADED = "llmdr.hardware.degraded"
HARDWARE_RECOVERED = "llmdr.hardware.recovered"


def endpoint_resource(bundle: str, target: str, *, active: bool | None, url: str) -> dict[str, str]:
    res = {"prefect.resource.id": f"llmdr.endpoint.{bundle}.{target}", "prefect.resource.name": f"{bundle}/{target}",
           "llmdr.bundle": bundle, "llmdr.region": target, "llmdr.url": url}
    if active is not None:
        res["llmdr.active"] = "true" if active else "false"
    return res


def hardware_resource(bundle: str, region: str, uuid: str, *, name: str | None, index: int | None,
                      active: bool | None) -> dict[str, str]:
    """One GPU of one region: ``llmdr.hardware.<bundle>.<region>.<gpu uuid>``."""
    label = f"GPU {index}" if index is not None else uuid
    res = {"prefect.resource.id": f"llmdr.hardware.{bundle}.{region}.{uuid}",
           "prefect.resource.name": f"{bundle}/{region}/{label}" + (f" ({name})" if name else ""),
           "llmdr.bundle": bundle, "llmdr.region": region, "llmdr.gpu": uuid}
    if active is not None:
        res["llmdr.active"] = "true" if active else "false"
    return res


def bundle_resource(bundle: str) -> dict[str, str]:
    return {"prefect.resource.id": f"llmdr.bundle.{bundle}", "prefect.resource.name": bundle, "llmdr.bundle": bundle}


def emit(event: str, resource: dict[str, str], payload: dict[str, Any]) -> bool:
    """Emit through the configured Prefect API. Returns False (and logs) if events cannot be sent, e.g. no server:
    monitoring and failover keep working without Prefect."""
    from llmdr.integrations.prefect import emit_event

    return emit_event(event, resource, payload)

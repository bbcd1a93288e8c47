"""Several bundles in one project (``bundles:``): each entry and what it may override, and the single-bundle view
of the project every command and flow runs on (``Config.for_bundle``).

A view is the project's YAML with ``bundles:`` replaced by the one entry's ``bundle:`` and its overrides, and each
region's ``prefix`` extended by the bundle's name: every bundle is its own repository (its own catalog, locks,
retention), so two bundles never wait for each other's repository lock, and chunks are not deduplicated across
bundles. The views are built from the file's plain data, so a view is validated exactly as a one-bundle file is.
"""

from __future__ import annotations

import copy
from typing import Any
from urllib.parse import urlparse

from pydantic import Field

from llmdr.config.sections import Bundle, CaddyRouter, Dataset, GoldenGate, Objectives, Retention, Route53Router
from llmdr.config.values import StrictModel

# What a bundle entry may set for itself; everything else (regions, transfer, monitor, failover, drill...) is the
# project's.
OVERRIDES = ("golden", "golden_gate", "objectives", "retention", "router", "datasets")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class BundleServing(StrictModel):
    """This bundle's replica in one region: where it listens and, optionally, how it is started."""

    # Base URL of this bundle's endpoint in the region, e.g. http://127.0.0.1:18201 (its own port: two bundles'
    # replicas cannot share one)
    url: str
    # The command that starts this bundle's replica ({model_dir}, {host}, {port}); null: the region's
    command: list[str] | str | None = None
    model: str | None = None  # the "model" field of probes and golden checks; null: the region's
    warm: bool | None = None  # keep this bundle's replica running in the region; null: the region's


class BundleTracking(StrictModel):
    model_name: str | None = None  # this bundle's registered model name (default: the bundle's name)


class BundleEntry(Bundle):
    """One bundle of ``bundles:``: its folder and components like ``bundle:``, and what it does not share with
    the project's other bundles. Left out, an override takes the project's value."""

    # The golden set of this bundle, relative to llmdr.yaml; null: the project's golden:
    golden: str | None = None
    golden_gate: GoldenGate | None = None  # how this bundle's answers are judged; null: the project's golden_gate:
    objectives: Objectives | None = None  # this bundle's RPO, RTO and drill interval; null: the project's
    retention: Retention | None = None  # this bundle's snapshot retention; null: the project's
    # Region name -> this bundle's replica there (url and optionally command, model, warm), over the region's serving:
    serving: dict[str, BundleServing] = Field(default_factory=dict)
    # This bundle's own router (a Caddy router needs its own listen and admin ports); null: the project's router:
    router: CaddyRouter | Route53Router | None = Field(default=None, discriminator="kind")
    datasets: list[Dataset] | None = None  # this bundle's DVC datasets; null: the project's datasets:
    tracking: BundleTracking | None = None  # this bundle's MLflow model name; null: the project's tracking:


def bundle_prefix(prefix: str, name: str) -> str:
    """A region's key prefix for bundle NAME: the project's prefix with the name appended (``llmdr`` → ``llmdr/a``,
    ``""`` → ``a``)."""
    base = (prefix or "").strip("/")
    return f"{base}/{name}" if base else name


def view_data(raw: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """The plain data of the one-bundle config of ENTRY (one item of RAW's ``bundles:``)."""
    data = copy.deepcopy({k: v for k, v in raw.items() if k != "bundles"})
    name = entry["name"]
    data["bundle"] = {k: copy.deepcopy(entry[k]) for k in ("name", "path", "components", "residency")
                      if k in entry}
    for key in OVERRIDES:
        if entry.get(key) is not None:
            data[key] = copy.deepcopy(entry[key])
    if entry.get("tracking"):
        data["tracking"] = {**(data.get("tracking") or {}), **entry["tracking"]}
    # a drill of one bundle cuts only that bundle's replica unless the project asks for the whole region
    # (drill.outage: local stops the region's store and workers, which every bundle shares)
    drill = data.get("drill")
    if drill is None or isinstance(drill, dict):
        data["drill"] = {"outage": "replica", **(drill or {})}
    serving = entry.get("serving") or {}
    for region in data.get("regions") or []:
        region["prefix"] = bundle_prefix(str(region.get("prefix") or ""), name)
        over = serving.get(region.get("name"))
        if over:
            region["serving"] = {**(region.get("serving") or {}),
                                 **{k: v for k, v in over.items() if v is not None}}
    return data


def port_clashes(views: list[Any]) -> list[str]:
    """What two bundles' views both want: a loopback port for a replica or a router (the regions' own ports are
    checked inside each view), or one serving URL. One sentence per clash, empty when there is none."""
    used: dict[tuple[str, Any], str] = {}
    out = []
    for v in views:
        name = v.bundle.name
        wants: list[tuple[str, tuple[str, Any]]] = []
        for r in v.regions:
            if r.serving is None:
                continue
            key = ("port", r.serving.port) if r.serving.host in LOOPBACK else ("url", r.serving.url.lower())
            wants.append((f"bundle '{name}' region '{r.name}' serving ({r.serving.url})", key))
        if isinstance(v.router, CaddyRouter):
            wants += [(f"bundle '{name}' router listen ({v.router.listen})", ("port", urlparse(v.router.listen).port)),
                      (f"bundle '{name}' router admin ({v.router.admin})", ("port", urlparse(v.router.admin).port))]
        for what, key in wants:
            other = used.get(key)
            if other is not None and not other.startswith(f"bundle '{name}' "):
                thing = f"port {key[1]}" if key[0] == "port" else f"the url {key[1]}"
                out.append(f"{other} and {what} both want {thing}: give each bundle its own ports (a bundle's "
                           "serving: {<region>: {url: ...}} and router: {listen: ..., admin: ...})")
            used.setdefault(key, what)
    return list(dict.fromkeys(out))

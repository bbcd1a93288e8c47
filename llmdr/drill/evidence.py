"""What a DR drill looks at, step by step: the state before the outage, the DR copy, the golden set through the
router, the restore test and the datasets from the DR region, and where traffic goes. Each function reads the real
thing (router, replicas, stores, remotes) and returns plain JSON; the decisions about it are in
:mod:`llmdr.drill.procedure`. No Prefect here: the failover automation's state is read by the caller and passed in.
"""

from __future__ import annotations

import time
from typing import Any

from llmdr.config import Config
from llmdr.drill.procedure import assess_prechecks
from llmdr.repo.repository import Repository


def dr_copy(repo: Repository, cfg: Config, region: str) -> dict[str, Any]:
    """The newest snapshot of the bundle in ``repo`` (region ``region``): id (= manifest digest), creation time,
    and whether every required component is recorded in its manifest (no download)."""
    from llmdr.repo.manifest import parse_utc

    snaps = repo.snapshots(bundle=cfg.bundle.name)
    if not snaps:
        return {"region": region, "id": None, "created": None, "complete": False,
                "detail": f"no snapshot of {cfg.bundle.name} in {region}"}
    m = snaps[-1].manifest
    required = [k.value for k, c in cfg.bundle.components.items() if c.required]
    missing = [k for k in required if k not in m.components or not m.components[k].get("files")]
    return {"region": region, "id": snaps[-1].id, "created": m.created,
            "created_ts": parse_utc(m.created).timestamp(), "files": len(m.files),
            "components": {k: v.get("digest") for k, v in sorted(m.components.items())},
            "complete": not missing,
            "detail": ("every required component recorded: " + ", ".join(required)) if not missing else
            f"missing from the manifest: {', '.join(missing)}"}


def region_copy(cfg: Config, region: str) -> dict[str, Any]:
    """:func:`dr_copy` of the region's own store (read-only)."""
    from llmdr.repo.ops import open_repo

    return dr_copy(open_repo(cfg, region, read_only=True), cfg, region)


def traffic(cfg: Config) -> dict[str, Any]:
    """Where the router sends traffic: ``{"active": region or None, "error": None}``, or the router's error."""
    from llmdr.failover.router import open_router

    try:
        return {"active": open_router(cfg).active(), "error": None}
    except Exception as exc:  # noqa: BLE001 - reported; the caller decides what an unanswering router means
        return {"active": None, "error": str(exc)}


def prechecks(cfg: Config, automation: dict[str, Any]) -> dict[str, Any]:
    """Before anything is cut: where traffic goes, each replica's health, the copy in each region, the monitor's
    status and the failover ``automation`` (``{"name", "enabled": bool or None}``), with the problems that block
    the drill and the warnings (:func:`llmdr.drill.procedure.assess_prechecks`)."""
    from llmdr.drill.readiness.golden import standby_problem
    from llmdr.failover.watch import read_status
    from llmdr.serving.replica import replica_status

    now = traffic(cfg)
    replicas = {r.name: replica_status(cfg, r).to_json() for r in cfg.regions if r.serving}
    copies = {r.name: region_copy(cfg, r.name) for r in cfg.regions}
    monitor = read_status(cfg)
    problems, warnings = assess_prechecks(cfg.primary.name, active=now["active"], router_error=now["error"],
                                          replicas=replicas, monitor=monitor, automation=automation)
    golden = standby_problem(cfg)  # a failover whose golden check could only fail: the drill would prove nothing
    if golden is not None:
        problems.append(f"the failover target would not pass its golden check: {golden}")
    return {"problems": problems, "warnings": warnings, "active": now["active"], "replicas": replicas,
            "copies": copies, "monitor": monitor, "automation": automation, "checked_at": time.time()}


def golden_through_router(cfg: Config) -> dict[str, Any]:
    """The golden set asked through the router, and which region answered."""
    from llmdr.failover import steps as fo
    from llmdr.failover.router import open_router

    url = open_router(cfg).url
    rep = fo.golden_check(cfg, url)
    return rep.to_json() | {"region": fo.answering_region(url)}


def restore_test(cfg: Config, region: str) -> dict[str, Any]:
    """Restore the newest snapshot from ``region``'s store into scratch, check completeness, serve it, ask the
    golden set; with a one-line summary."""
    from llmdr.serving import restoretest

    res = restoretest.run_restore_test(cfg, "latest", region=region, golden_path=cfg.golden_path)
    out = res.to_json()
    g = out.get("golden") or {}
    out["summary"] = (f"{res.snapshot_id[:12]} from {region}: {g.get('passed', 0)}/{g.get('total', 0)} golden, "
                      + ("no problems" if not res.problems else "; ".join(res.problems)))
    return out


def datasets_from(cfg: Config, region: str) -> list[dict[str, Any]]:
    """Every configured dataset pulled from ``region``'s DVC remote into scratch (re-hashed against the recorded
    md5) and validated against its expectation suite; a dataset that fails is a result, not an error."""
    import shutil

    from llmdr.lineage.datasets import pull, remote_url
    from llmdr.lineage.expectations import validate

    out = []
    for ds in cfg.datasets:
        scratch = cfg.bundle_state_path / "scratch" / "datasets" / ds.name
        shutil.rmtree(scratch, ignore_errors=True)
        entry: dict[str, Any] = {"name": ds.name, "region": region, "remote": remote_url(cfg.region(region))}
        try:
            target = scratch / cfg.dataset_path(ds).name
            v = pull(cfg, ds, region, target=target, force=True)
            entry.update(md5=v.md5, pulled=True)
            rep = validate(cfg, ds, path=target)
            entry.update(valid=rep.success, validation=rep.summary(), failures=rep.failures)
        except Exception as exc:  # noqa: BLE001 - recorded as a failed control
            entry.update(pulled=entry.get("pulled", False), valid=False, error=str(exc))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        out.append(entry)
    return out

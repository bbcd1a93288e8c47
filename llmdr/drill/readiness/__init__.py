"""Readiness: the process failures that sink a recovery, caught on an ordinary day instead of during the outage.

Each check looks at the real thing (a signed call with each region's keys, the DR copy's manifests, the bucket's
lock settings, a timed read from the DR store, the drill history) and answers PASS, WARN or FAIL with the numbers it
saw and, unless it passed, what to do. ``run_checks`` never raises for a failing check: an exception inside a check
is that check's FAIL, so one broken region never hides the others. The score is the share of checks passed (a WARN
counts half).

Checks: credentials (per region), rpo (per DR region: newest complete snapshot vs the RPO objective), components (the
DR copy holds every required component: manifest only, no download), drill (a passing drill within the drill
interval), separation (regions really apart), immutability (DR bucket versioning + Object Lock, kept snapshots
locked), doors (per local region: every port but S3 refuses a caller without credentials), bandwidth (timed ranged
reads of real chunks from the DR store → time to restore the bundle vs the RTO), golden (the DR copy's newest
snapshot has its own golden set, and the failover target's standby passes its snapshot's set: ``golden``),
footprint (logical vs stored bytes per region, monthly cost), automation (the failover automation, its deployment on a pool outside the primary
region and a worker polling its queue, read from the Prefect API: ``automation``) and training (per DR region: the
newest complete checkpoint vs the training RPO, its restore time vs the training RTO: ``training``).

The checks are in ``checks``; the report (results, verdict, score, text and markdown, the flow's notice and
:class:`ReadinessFailed`) in ``report``; :func:`run_checks` here runs them in a fixed order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from llmdr.config import Config, Region
from llmdr.drill.readiness.checks import (
    check_bandwidth,
    check_components,
    check_credentials,
    check_doors,
    check_drill,
    check_footprint,
    check_immutability,
    check_rpo,
    check_separation,
    keys_source,
    measure_throughput,
)
from llmdr.drill.readiness.golden import check_golden
from llmdr.drill.readiness.report import (
    EXIT_FAIL,
    FAIL,
    PASS,
    WARN,
    Check,
    Readiness,
    ReadinessFailed,
    artifact_content,
    failure_notice,
    raise_if_failed,
    render_markdown,
    render_text,
    utc_text,
)
from llmdr.errors import LlmdrError
from llmdr.repo.repository import Repository

__all__ = ["CHECKS", "EXIT_FAIL", "FAIL", "PASS", "WARN", "Check", "Readiness", "ReadinessFailed", "artifact_content",
           "check_bandwidth", "check_components", "check_credentials", "check_doors", "check_drill", "check_footprint",
           "check_immutability", "check_rpo", "check_separation", "failure_notice", "keys_source",
           "measure_throughput", "raise_if_failed", "render_markdown", "render_text", "run_checks"]

log = logging.getLogger(__name__)


def _store(cfg: Config, region: Region, *, read_only: bool = True):
    from llmdr.storage.factory import open_region

    return open_region(cfg, region, read_only=read_only, attempts=2)


def _guard(cid: str, title: str, fn: Callable[[], Check | list[Check]]) -> list[Check]:
    t0 = time.perf_counter()
    try:
        got = fn()
        checks = got if isinstance(got, list) else [got]
    except LlmdrError as exc:
        checks = [Check(cid, title, FAIL, str(exc).splitlines()[0], _action_for(exc))]
    except Exception as exc:  # noqa: BLE001 - a crashing check is that check's failure, never the whole report's
        log.exception("readiness check %s crashed", cid)
        checks = [Check(cid, title, FAIL, f"the check itself failed: {type(exc).__name__}: {exc}",
                        "see the log; report it if it persists")]
    for c in checks:
        c.duration_s = round(time.perf_counter() - t0, 3)
    return checks


def _action_for(exc: Exception) -> str:
    from llmdr.errors import AccessDenied, BucketNotFound, TransientStorageError

    if isinstance(exc, AccessDenied):
        return "fix the region's credentials (the names under credentials: in llmdr.yaml) or their permissions"
    if isinstance(exc, BucketNotFound):
        return "create the bucket (`llmdr stack up` for local regions)"
    if isinstance(exc, TransientStorageError):
        return "the region is unreachable: check its endpoint and network (`llmdr stack status` locally)"
    return "see the message"


CHECKS = ("credentials", "rpo", "components", "drill", "separation", "immutability", "doors", "bandwidth",
          "golden", "footprint", "automation", "training")


def run_checks(cfg: Config, *, now: float | None = None, only: set[str] | None = None) -> Readiness:
    """Every readiness check (or the kinds in ``only``), in a fixed order."""
    t0 = time.perf_counter()
    t = time.time() if now is None else now
    unknown = (only or set()) - set(CHECKS)
    if unknown:
        from llmdr.errors import UsageError

        raise UsageError(f"unknown readiness check(s) {sorted(unknown)}; known: {', '.join(CHECKS)}")
    want = set(only or CHECKS)
    rep = Readiness(cfg.bundle.name, utc_text(t))
    add = rep.checks.extend
    if "credentials" in want:
        for r in cfg.regions:
            add(_guard(f"credentials/{r.name}", f"Credentials: {r.name}", lambda r=r: check_credentials(cfg, r, t)))
    per_dr = [("rpo", "DR copy fresh (RPO)", lambda r, repo: check_rpo(cfg, r, repo, t)),
              ("components", "Bundle complete in DR copy", lambda r, repo: check_components(cfg, r, repo)),
              ("immutability", "DR copy immutable", lambda r, repo: check_immutability(cfg, r, repo, t)),
              ("bandwidth", "Restore fits the RTO", lambda r, repo: check_bandwidth(cfg, r, repo)),
              ("golden", "Golden set of the newest snapshot", lambda r, repo: check_golden(cfg, r, repo))]
    repos: dict[str, Repository] = {}

    def repo_of(r: Region) -> Repository:
        if r.name not in repos:
            repos[r.name] = Repository(_store(cfg, r), cache_dir=cfg.bundle_state_path / "cache" / r.name)
        return repos[r.name]

    for kind, title, fn in per_dr:
        if kind in want:
            for r in cfg.secondaries:
                add(_guard(f"{kind}/{r.name}", f"{title}: {r.name}", lambda r=r, fn=fn: fn(r, repo_of(r))))
    if "doors" in want:
        for r in cfg.regions:
            if r.is_local:
                add(_guard(f"doors/{r.name}", f"No unauthenticated door: {r.name}", lambda r=r: check_doors(r)))
    if "drill" in want:
        add(_guard("drill", "Recent passing DR drill", lambda: check_drill(cfg, t)))
    if "separation" in want:
        add(_guard("separation", "Regions separate", lambda: check_separation(cfg)))
    if "footprint" in want:
        for r in cfg.regions:
            add(_guard(f"footprint/{r.name}", f"Storage footprint and cost: {r.name}",
                       lambda r=r: check_footprint(cfg, r, repo_of(r))))
    if "automation" in want:
        from llmdr.drill.readiness.automation import check_automation

        add(_guard("automation", "Automatic failover path outside the primary", lambda: check_automation(cfg, t)))
    if "training" in want:  # checkpoints vs objectives.training (llmdr.drill.readiness.training)
        from llmdr.drill.readiness.training import checks as training_checks

        for cid, title, fn in training_checks(cfg, t, repo_of):
            add(_guard(cid, title, fn))
    rep.duration_s = time.perf_counter() - t0
    if only is None:  # a full run is what the readiness score means (llmdr_readiness_score)
        from llmdr.common.runs import record_run

        record_run(cfg.bundle_state_path, "readiness", ts=t, score=rep.score, verdict=rep.verdict,
                       checks={s: sum(c.status == s for c in rep.checks) for s in (PASS, WARN, FAIL)})
    log.info("readiness of %s: %s, score %d (%d checks, %.1fs)", cfg.bundle.name, rep.verdict, rep.score,
             len(rep.checks), rep.duration_s)
    return rep

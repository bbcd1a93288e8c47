"""Failover and failback, as steps the ``failover`` / ``failback`` flows compose.

The order is fixed by what must be true before users are moved: the outage is confirmed by direct probes (not a
single blip), a replica answers in the target region (the warm standby, or a cold start from that region's own
store), the golden set passes against it directly, and only then does the router switch; the golden set is then
checked again *through the router*. If that last check fails the switch is rolled back. The golden set is judged by
the bundle's ``golden_gate`` (exact, similarity or equivalent). A person running a manual failover may accept a
replica whose answers fail the gate (``--accept-golden-mismatch --reason``): the run then moves traffic when every
case got an answer (a replica that does not answer is never accepted), and the record carries ``golden_override``
(who, why, the report with every score) into every region's store, signed like every record.

RTO is measured from the first failed probe (the monitor's evidence; for a manual switch, the start of the run) to
the first golden-correct answer through the router. Every run is appended to ``<state>/failover/history.jsonl``.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from llmdr.config import Config, Region
from llmdr.errors import LlmdrError, UsageError

log = logging.getLogger(__name__)


class FailoverError(LlmdrError):
    """The failover (or failback) could not be completed safely; traffic stays where it was."""

    exit_code = 7


def utc(ts: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if ts is None else ts, timezone.utc).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Step:
    name: str
    at: str
    ok: bool
    detail: str = ""


@dataclass
class FailoverRecord:
    """Everything about one failover or failback: kept as history, shown as an artifact, sent as a notice."""

    kind: str  # "failover" | "failback"
    bundle: str
    from_region: str | None
    to_region: str
    trigger: str  # "automation" | "manual" | "drill" | "schedule"
    reason: str
    started_ts: float
    first_failure_ts: float | None = None
    detected_ts: float | None = None  # when the monitor declared the region down (the event's time)
    scheduled_ts: float | None = None  # when the flow run was scheduled (by the automation, at once)
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    confirmed: bool | None = None
    replica: dict | None = None
    golden_direct: dict | None = None
    switched_ts: float | None = None
    verified_ts: float | None = None
    golden_router: dict | None = None
    golden_override: dict | None = None  # a person accepted a golden mismatch: {by, reason, report}
    rto_s: float | None = None
    rto_basis: str | None = None
    ok: bool = False
    rolled_back: bool = False
    noop: bool = False
    error: str | None = None
    flow_run_id: str | None = None
    steps: list[Step] = field(default_factory=list)

    def step(self, name: str, ok: bool, detail: str = "") -> None:
        self.steps.append(Step(name=name, at=utc(), ok=ok, detail=detail))

    def finish(self, verified_ts: float) -> None:
        """Close the record after the first verified-correct answer through the router."""
        self.verified_ts = verified_ts
        if self.first_failure_ts is not None:
            self.rto_s = round(verified_ts - self.first_failure_ts, 3)
            self.rto_basis = "first failed probe -> first golden-correct answer through the router"
        else:
            self.rto_s = round(verified_ts - self.started_ts, 3)
            self.rto_basis = "run start -> first golden-correct answer through the router (no failure observed)"
        self.ok = True

    def rto_breakdown(self) -> dict[str, float] | None:
        """Where the RTO went: detection (first failed probe -> down declared), dispatch (-> failover run started:
        event, automation, worker, process start), recovery (-> verified answer through the router)."""
        if not self.ok or self.first_failure_ts is None or self.detected_ts is None or self.verified_ts is None:
            return None
        out = {"detection_s": round(self.detected_ts - self.first_failure_ts, 3),
               "dispatch_s": round(self.started_ts - self.detected_ts, 3),
               "recovery_s": round(self.verified_ts - self.started_ts, 3)}
        if self.scheduled_ts is not None and self.detected_ts <= self.scheduled_ts <= self.started_ts:
            # dispatch = the automation creating the run + the runner picking it up and starting it
            out["automation_s"] = round(self.scheduled_ts - self.detected_ts, 3)
            out["pickup_s"] = round(self.started_ts - self.scheduled_ts, 3)
        return out

    def to_json(self) -> dict:
        out = asdict(self)
        out["rto_breakdown"] = self.rto_breakdown()
        for k in ("started_ts", "first_failure_ts", "detected_ts", "scheduled_ts", "switched_ts", "verified_ts"):
            out[k.removesuffix("_ts") + "_utc"] = utc(out[k]) if out[k] is not None else None
        return out

    @classmethod
    def from_json(cls, data: dict) -> "FailoverRecord":
        data = {k: v for k, v in data.items() if not k.endswith("_utc") and k != "rto_breakdown"}
        steps = [Step(**s) for s in data.pop("steps", [])]
        return cls(**data, steps=steps)


def history_path(cfg: Config) -> Path:
    return cfg.bundle_state_path / "failover" / "history.jsonl"


def append_history(cfg: Config, rec: FailoverRecord, *, store: bool = True) -> dict | None:
    """Record the run: one line in the local history, then (``store``) one object in every region's store
    (``llmdr.control``; a region that is down gets it later, by `llmdr control sync` or the next record). Returns
    where it landed (None without ``store``)."""
    from llmdr.common.files import open_private, private_dir

    path = history_path(cfg)
    private_dir(path.parent)
    # 0600, never through a symbolic link planted at its name (as the router history)
    try:
        fd = open_private(path, os.O_WRONLY | os.O_APPEND)
    except OSError as exc:
        raise LlmdrError(f"cannot record the failover in {path} ({exc.strerror or exc}): it must be a regular file "
                         "of yours, never a symbolic link; move it away and run again") from None
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        f.write(json.dumps(rec.to_json(), sort_keys=True) + "\n")
    return store_record(cfg, rec) if store else None


def store_record(cfg: Config, rec: FailoverRecord) -> dict:
    """The record in every region's store (``control/failovers/``); never raises for a region that is down."""
    from llmdr.control import layout, put_record

    return put_record(cfg, layout.failover_key(rec.started_ts, rec.id), rec.to_json()).to_json()


def _local_history(cfg: Config) -> list[FailoverRecord]:
    try:
        lines = history_path(cfg).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            out.append(FailoverRecord.from_json(json.loads(line)))
        except (ValueError, TypeError):
            log.warning("skipping an unreadable line in %s", history_path(cfg))
    return out


def stored_history(cfg: Config) -> list[FailoverRecord]:
    """The failover records in the regions' stores (each region listed once per command); a record whose name and
    content disagree, or that does not parse as a record, is skipped with a warning."""
    from llmdr.control import json_records, layout

    out: list[FailoverRecord] = []

    def check(key: str, data: dict) -> str | None:
        name = layout.parse_record(layout.FAILOVERS, key)
        if name is None or data.get("id") != name[1]:
            return "its name does not carry the record's id"
        try:
            rec = FailoverRecord.from_json(data)
        except (TypeError, ValueError, KeyError) as exc:
            return f"not a failover record ({exc})"
        if not isinstance(rec.started_ts, (int, float)) or layout.stamp(rec.started_ts) != name[0]:
            return "its name does not carry the record's start time"
        out.append(rec)
        return None

    json_records(cfg, layout.FAILOVERS, check=check)
    return out


def history(cfg: Config, *, stores: bool = True) -> list[FailoverRecord]:
    """Every failover and failback, oldest first: the local history and (``stores``) the regions' copies, so a
    fresh control host still has it."""
    local = _local_history(cfg)
    if not stores:
        return local
    seen = {r.id for r in local}
    merged = local + [r for r in stored_history(cfg) if r.id not in seen and not seen.add(r.id)]
    return sorted(merged, key=lambda r: r.started_ts)


def pick_target(cfg: Config, to: str | None, active: str | None) -> Region:
    """The region to fail over to: ``to`` if given, else ``failover.target``, else the first secondary that is not
    the active one."""
    if to:
        region = cfg.region(to)
    elif cfg.failover.target:
        region = cfg.region(cfg.failover.target)
    else:
        candidates = [r for r in cfg.secondaries if r.name != active and r.serving is not None]
        if not candidates:
            raise UsageError("no secondary region with a serving: section to fail over to; add one in llmdr.yaml")
        region = candidates[0]
    if region.serving is None:
        raise UsageError(f"region '{region.name}' has no serving: section, so traffic cannot be sent there")
    return region


def confirm_outage(cfg: Config, region: Region) -> tuple[bool, list[dict]]:
    """Probe the region's endpoint ``failover.confirm_probes`` times, ``confirm_interval`` apart: the outage is
    confirmed only if every probe fails."""
    from llmdr.failover.monitor import probe

    if region.serving is None:
        return True, []
    samples = []
    n = cfg.failover.confirm_probes
    for i in range(n):
        s = probe(region.name, region.serving.url, timeout=cfg.monitor.timeout.total_seconds(),
                  model=region.serving.model)
        samples.append(s.to_json())
        if s.ok:
            return False, samples
        if i + 1 < n:
            time.sleep(cfg.failover.confirm_interval.total_seconds())
    return True, samples


def golden_check(cfg: Config, url: str, *, model: str | None = None, timeout: float = 30.0):
    """The golden set against one URL (a replica, or the router), judged by the bundle's ``golden_gate``. The set is
    that of the snapshot the answering replica serves (``llmdr.serving.snapgolden.for_url``; the project's golden
    file only for snapshots from before per-snapshot sets, or a replica llmdr did not start); the report's
    ``golden_set`` says which. A new model version without its own set is a ``NoGoldenSet`` (a ``UsageError``)."""
    from llmdr.serving.endpoint import check_set
    from llmdr.serving.snapgolden import for_url

    resolved = for_url(cfg, url)
    rep = check_set(resolved.golden, url, model=model, timeout=timeout, gate=cfg.golden_gate)
    rep.basis = resolved.to_json()
    return rep


def answering_region(url: str, timeout: float = 5.0) -> str | None:
    """Which region answers behind ``url`` (the router adds ``X-Llmdr-Region``); None if the header is absent."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout) as resp:  # noqa: S310
            return resp.headers.get("X-Llmdr-Region")
    except (urllib.error.URLError, OSError):
        return None


def verify_through_router(cfg: Config, router_url: str, expect: str, *, model: str | None = None,
                          attempts: int = 20, delay: float = 0.1,
                          accept_mismatch: bool = False) -> tuple[float, dict]:
    """Golden-check through the router until it passes from the expected region (a few tries: the switch is
    propagating); returns the time of the first verified-correct answer and the golden report. ``accept_mismatch``
    (a person's override): answers to every case from the expected region are enough, right or wrong."""
    last: dict = {}
    for _ in range(attempts):
        seen = answering_region(router_url)
        if seen not in (None, expect):
            last = {"ok": False, "detail": f"router still answers from {seen}"}
        else:
            rep = golden_check(cfg, router_url, model=model)
            if rep.ok or (accept_mismatch and rep.answered):
                return time.time(), rep.to_json() | {"region": seen or expect, "accepted_mismatch": not rep.ok}
            last = rep.to_json()
        time.sleep(delay)
    raise FailoverError(f"answers through the router {router_url} were not golden-correct from '{expect}' after "
                        f"{attempts} tries: {json.dumps(last)[:400]}")


def primary_data_current(cfg: Config, *, source: str) -> dict:
    """Is the primary's newest snapshot at least as new as ``source``'s? (Snapshots taken while failed over land in
    the DR region; failback copies them back first.)"""
    from llmdr.repo.ops import open_repo

    prim = open_repo(cfg, cfg.primary, read_only=True).snapshots(bundle=cfg.bundle.name)
    other = open_repo(cfg, source, read_only=True).snapshots(bundle=cfg.bundle.name)
    p_new = prim[-1] if prim else None
    o_new = other[-1] if other else None
    p_ids = {s.id for s in prim}
    missing = [s.id for s in other if s.id not in p_ids and (p_new is None or s.manifest.created > p_new.manifest.created)]
    return {"primary_newest": p_new.id if p_new else None, "source_newest": o_new.id if o_new else None,
            "missing_in_primary": missing, "current": not missing and p_new is not None}


# --- one call per task of the failover / failback flows ------------------------------------------------------------


def active_region(cfg: Config) -> str | None:
    """Which region the router sends traffic to now, asked from the router itself."""
    from llmdr.failover.router import open_router

    return open_router(cfg).active()


def switch_traffic(cfg: Config, region: str, *, reason: str) -> dict:
    """Point the router at ``region``; the router's state afterwards."""
    from llmdr.failover.router import open_router

    return open_router(cfg).switch(region, reason=reason).to_json()


ROLLBACK_REASON = "rollback: verification through the router failed"


def switch_back(cfg: Config, previous: str | None) -> None:
    """Undo a switch whose verification failed: traffic back to ``previous`` (nothing to do if there was none)."""
    if previous:
        switch_traffic(cfg, previous, reason=ROLLBACK_REASON)
        rearm_fallback(cfg)  # the switch back removed the fallback; the standby is verified again


def replica_for_traffic(cfg: Config, region: str, *, snapshot: str = "latest", restart: bool = False) -> dict:
    """A healthy replica in ``region``: the warm standby, or restored from that region's own store and started.
    ``restart``: (re)start it on ``snapshot`` even if a replica answers (failback onto current data)."""
    from llmdr.serving.replica import ensure_replica, start_replica

    reg = cfg.region(region)
    st = start_replica(cfg, reg, ref=snapshot) if restart else ensure_replica(cfg, reg, ref=snapshot)
    return st.to_json()


def _serving(cfg: Config, region: str):
    serving = cfg.region(region).serving
    if serving is None:
        raise UsageError(f"region '{region}' has no serving: section, so traffic cannot be sent there")
    return serving


def check_replica(cfg: Config, region: str, *, accept_mismatch: bool = False) -> dict:
    """The golden set against the region's replica directly; answers that fail the gate are a ``FailoverError``
    (traffic stays) unless a person accepts the mismatch (``accept_mismatch``): then a replica that answered every
    case passes, with ``accepted_mismatch`` in the report. A case without an answer is never accepted."""
    serving = _serving(cfg, region)
    rep = golden_check(cfg, serving.url, model=serving.model)
    if rep.ok:
        return rep.to_json() | {"accepted_mismatch": False}
    if accept_mismatch and rep.answered:
        log.warning("golden mismatch ACCEPTED by a person for '%s': %d/%d cases pass the %s gate", region,
                    rep.passed, len(rep.results), rep.gate.mode)
        return rep.to_json() | {"accepted_mismatch": True}
    scores = ", ".join(f"{r.id} {'error' if r.score is None else f'{r.score:.3f}'}" for r in rep.results)
    if not rep.answered:
        hint = (f"{rep.errors} case(s) got no answer, which no override accepts. Check the replica with "
                f"`llmdr replicas` and its bundle with `llmdr verify latest --region {region} --restore-test`")
    else:
        hint = (f"Check its bundle with `llmdr verify latest --region {region} --restore-test`; a person who knows "
                f"the answers are acceptable may run `llmdr failover --to {region} --accept-golden-mismatch --reason "
                "TEXT`")
    err = FailoverError(f"the replica in '{region}' gives wrong answers ({rep.passed}/{len(rep.results)} golden "
                        f"cases pass the {rep.gate.mode} gate, {rep.required} needed; scores: {scores}); traffic "
                        f"was not moved. {hint}")
    err.report = rep.to_json() | {"accepted_mismatch": False}  # the evidence: the record keeps every score
    raise err


def verify_router(cfg: Config, region: str, *, accept_mismatch: bool = False) -> dict:
    """Golden-check through the router until answers come, correct (or, ``accept_mismatch``, at all), from
    ``region``."""
    from llmdr.failover.router import open_router

    ts, report = verify_through_router(cfg, open_router(cfg).url, region, model=_serving(cfg, region).model,
                                       accept_mismatch=accept_mismatch)
    # the switch removed the fallback: the next standby is armed once verified (after the RTO clock stopped)
    return {"verified_ts": ts, "golden": report, "fallback": rearm_fallback(cfg)}


def copy_back(cfg: Config, source: str) -> dict:
    """Before failback: copy to the primary every snapshot taken in ``source`` that the primary lacks."""
    from llmdr.repo import ops

    state = primary_data_current(cfg, source=source)
    copied = []
    for sid in state["missing_in_primary"]:
        [res] = ops.replicate(cfg, sid, to=cfg.primary.name, source=source)
        copied.append(res.to_json())
    return state | {"copied": copied}


# --- the router's fallback to the verified standby -----------------------------------------------------------------


def standby_stale(cfg: Config, region: Region, snapshot: str | None) -> str | None:
    """Why the replica serving ``snapshot`` in ``region`` is stale (its own store's newest snapshot holds other
    files), or None. A replica llmdr does not run (no recorded snapshot) is judged by its answers only."""
    if snapshot is None:
        return None
    from llmdr.failover.standby import same_content
    from llmdr.repo.ops import open_repo

    try:
        repo = open_repo(cfg, region, read_only=True)
        newest = repo.resolve("latest", bundle=cfg.bundle.name)
        if same_content(repo, snapshot, newest):
            return None
    except LlmdrError as exc:
        return f"its store cannot say which snapshot is newest ({exc})"
    return f"it serves {snapshot[:12]}, but the newest snapshot in {region.name} is {newest[:12]}"


def arm_fallback(cfg: Config) -> dict:
    """Verify the failover target's standby and make it the router's fallback for failed dials, or remove the
    fallback and say why. Verified means: it answers, it serves the newest snapshot of its own store (when llmdr runs
    it), and the golden set passes against it directly by the bundle's gate (no override ever arms it). Returns
    ``{"fallback": region or None, "region": the standby checked, "why": ...}``."""
    from llmdr.failover.router import open_router
    from llmdr.serving.replica import replica_status

    router = open_router(cfg)
    if not router.supports_fallback:
        return {"fallback": None, "region": None, "why": f"the {router.kind} router has no fallback"}
    active = router.active()
    try:
        target = pick_target(cfg, None, active)
    except UsageError:  # e.g. failed over to the only secondary: the primary is no standby until failback
        why = f"no secondary region other than {active} to keep as a standby"
        router.set_fallback(None, reason=why)
        return {"fallback": None, "region": None, "why": why}
    evidence: dict = {}
    why: str | None = None
    if active is None:
        why = "no region receives the traffic (nothing to fall back from)"
    elif target.name == active:
        why = f"the failover target {target.name} receives the traffic itself"
    else:
        st = replica_status(cfg, target)
        evidence["snapshot"] = st.snapshot
        if not st.healthy:
            why = f"its replica does not answer ({st.detail})"
        else:
            why = standby_stale(cfg, target, st.snapshot)
        if why is None:
            rep = golden_check(cfg, target.serving.url, model=target.serving.model)
            evidence["golden"] = {"passed": rep.passed, "total": len(rep.results), "mode": rep.gate.mode}
            if not rep.ok:
                why = (f"its answers fail the golden set ({rep.passed}/{len(rep.results)} cases pass the "
                       f"{rep.gate.mode} gate)")
    if why is not None:
        router.set_fallback(None, reason=f"{target.name} is not a verified standby: {why}", evidence=evidence)
        log.warning("no fallback to %s: %s", target.name, why)
        return {"fallback": None, "region": target.name, "why": why}
    now = router.set_fallback(target.name, reason=f"{target.name} verified: golden set passes, newest snapshot",
                              evidence=evidence)
    return {"fallback": now, "region": target.name, "why": None if now == target.name else "the router did not "
            "take the fallback (a switch happened meanwhile)"}


def rearm_fallback(cfg: Config) -> dict:
    """``arm_fallback`` where a failure must not stop the caller (stack up, a refreshed standby, after a switch):
    anything that keeps the standby from being verified removes the fallback (when the router can still be
    reached) and is returned as the reason."""
    if cfg.router is None:
        return {"fallback": None, "region": None, "why": "no router: section"}
    try:
        return arm_fallback(cfg)
    except LlmdrError as exc:
        why = str(exc)
    try:
        from llmdr.failover.router import open_router

        open_router(cfg).set_fallback(None, reason=f"the standby could not be verified: {why}")
    except LlmdrError:
        pass  # a router that cannot be reached has no fallback to remove (a new Caddy starts without one)
    log.warning("no fallback to the standby: %s", why)
    return {"fallback": None, "region": None, "why": why}

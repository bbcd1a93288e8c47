"""Readiness of the golden sets (issue #19): would a failover find a standby that passes?

- ``golden/<region>`` (per DR region): the newest snapshot there has a golden set of its own (stored for its
  answer-relevant content, verified against the manifest key). FAIL when it is a new model version without one, or
  its set is refused (unsigned, edited); a snapshot from before per-snapshot sets passes on the project's golden file
  (said so), and fails when there is none either (a failover's check would refuse every standby).
- ``golden/standby-<region>`` (the failover target, when its replica answers): the standby asked the golden set of
  the snapshot it serves, judged by the bundle's ``golden_gate``, exactly as a failover's check would. FAIL when it
  would not pass.

The drill's prechecks use ``standby_problem`` (the same two questions for the failover target) to refuse a drill
whose failover could only fail.
"""

from __future__ import annotations

from typing import Any

from llmdr.config import Config, Region
from llmdr.drill.readiness.report import FAIL, PASS, Check
from llmdr.errors import LlmdrError
from llmdr.repo.repository import Repository


def check_golden_set(cfg: Config, region: Region, repo: Repository) -> Check:
    """The newest snapshot in ``region`` has the golden set it must answer."""
    from llmdr.repo import goldens
    from llmdr.serving.snapgolden import NoGoldenSet, for_snapshot, record_hint

    cid, title = f"golden/{region.name}", f"Golden set of the newest snapshot: {region.name}"
    newest = repo.newest(bundle=cfg.bundle.name)
    if newest is None:
        return Check(cid, title, FAIL, f"no snapshot of '{cfg.bundle.name}' in {region.name}", "run protect-bundle")
    try:
        resolved = for_snapshot(cfg, repo, newest)
    except NoGoldenSet as exc:
        return Check(cid, title, FAIL, f"newest snapshot {newest[:12]} is a new model version with NO golden set: a "
                     "standby on it is refused by the failover's check", record_hint(newest),
                     {"snapshot": newest, "answer_digest": goldens.answer_digest(repo.load_manifest(newest)),
                      "error": str(exc)})
    except goldens.GoldenRefused as exc:
        return Check(cid, title, FAIL, str(exc).splitlines()[0], record_hint(newest), {"snapshot": newest})
    except LlmdrError as exc:  # no project file for an older snapshot
        return Check(cid, title, FAIL, f"snapshot {newest[:12]}: {str(exc).splitlines()[0]}",
                     "record a golden set: `llmdr golden record --snapshot latest`", {"snapshot": newest})
    data: dict[str, Any] = resolved.to_json() | {"cases": len(resolved.golden.cases)}
    if resolved.source != "snapshot":
        return Check(cid, title, PASS, f"snapshot {newest[:12]} predates per-snapshot golden sets: judged by the "
                     f"project's golden file ({len(resolved.golden.cases)} cases)", data=data)
    st = resolved.stored
    return Check(cid, title, PASS, f"snapshot {newest[:12]} has its own golden set ({len(resolved.golden.cases)} cases, "
                 f"{st.how if st else '?'} from {(st.snapshot if st else '')[:12]}, in {region.name})", data=data)


def check_standby_golden(cfg: Config, region: Region) -> Check | None:
    """The failover target's running standby against its snapshot's set; None when no replica answers there
    (a cold start restores the newest snapshot, which ``check_golden_set`` covers)."""
    from llmdr.failover.standby import standby_golden
    from llmdr.serving.replica import replica_status

    cid, title = f"golden/standby-{region.name}", f"Standby passes its golden set: {region.name}"
    if region.serving is None or not replica_status(cfg, region).healthy:
        return None
    rep = standby_golden(cfg, region.name)
    basis = rep.get("golden_set") or {}
    if rep.get("ok"):
        which = (f"snapshot {str(basis.get('snapshot') or '')[:12]}'s own set" if basis.get("source") == "snapshot"
                 else f"the project's golden file ({basis.get('note', '')})")
        return Check(cid, title, PASS, f"the standby answers {rep['passed']}/{rep['total']} cases of {which} under "
                     f"the {rep['gate']['mode']} gate", data=rep)
    why = rep.get("error") or (f"{rep.get('passed')}/{rep.get('total')} cases pass the {rep['gate']['mode']} gate "
                               f"({rep.get('required')} needed) against "
                               f"{basis.get('source', 'its')} set")
    return Check(cid, title, FAIL, f"the standby in {region.name} would NOT pass a failover's golden check: {why}",
                 f"check its bundle (`llmdr verify latest --region {region.name} --restore-test`); after a model "
                 "update, record the new snapshot's set (`llmdr golden record --snapshot latest`)", data=rep)


def check_golden(cfg: Config, region: Region, repo: Repository) -> list[Check]:
    out = [check_golden_set(cfg, region, repo)]
    if region.name == cfg.failover_target().name:
        standby = check_standby_golden(cfg, region)
        if standby is not None:
            out.append(standby)
    return out


def standby_problem(cfg: Config) -> str | None:
    """Why a failover to the target could not pass its golden check now (a drill precheck problem); None if it
    could (or the target's copy cannot be read: the copy precheck reports that)."""
    from llmdr.repo.ops import open_repo

    target = cfg.failover_target()
    try:
        repo = open_repo(cfg, target, read_only=True)
        checks = [check_golden_set(cfg, target, repo)]
    except LlmdrError:
        return None
    standby = check_standby_golden(cfg, target)
    if standby is not None:
        checks = [standby]  # a running standby is what the failover uses (a cold start would restore the newest)
    bad = [c for c in checks if c.status == FAIL]
    return f"{bad[0].summary}: {bad[0].action}" if bad else None

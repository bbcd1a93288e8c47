"""Readiness of training (issue #20 item 3): the checkpoints in each DR region against ``objectives.training``.

- ``training-rpo/<region>`` (per DR region): the newest COMPLETE checkpoint snapshot there (its manifest lists
  trainer_state.json, every chunk present: ``llmdr.drill.training.newest_complete``) against the newest checkpoint
  folder on this host. When the DR region holds that checkpoint (or a later step), nothing written is at risk: PASS,
  whatever its age. Otherwise its age (by the store's time, so a writer's clock running ahead cannot make it look
  fresh) against the training RPO: FAIL beyond it, WARN beyond 75 % of it, like the inference RPO check. Without the
  checkpoint folder on this host (readiness running on another machine), the age alone is judged, and it says so.
- ``training-rto/<region>``: timed ranged reads of that checkpoint's chunks from the DR store (the inference
  bandwidth check's probe, ``measure_throughput``) → its restore time against the training RTO.

Without a ``checkpoints:`` section one ``training`` check says N/A (PASS: nothing to protect), or WARNs when
``objectives.training`` is set (an objective nothing protects). It never FAILs then.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llmdr.config import Config, Region, format_duration
from llmdr.drill import training as tr
from llmdr.drill.readiness.report import FAIL, PASS, WARN, Check, ago, gigabytes
from llmdr.repo.repository import Repository
from llmdr.repo.snapinfo import SnapshotInfo

Newest = tuple[SnapshotInfo | None, list[dict[str, Any]]]  # what llmdr.drill.training.newest_complete answers
RPO_TITLE = "Training checkpoint fresh (training RPO)"
RTO_TITLE = "Training checkpoint restore fits the training RTO"


def checks(cfg: Config, now: float, repo_of: Callable[[Region], Repository]
           ) -> list[tuple[str, str, Callable[[], Check]]]:
    """The training checks to run, as (id, title, check) for ``run_checks``' guard."""
    if cfg.checkpoints is None:
        return [("training", "Training checkpoints", lambda: check_no_checkpoints(cfg))]
    found: dict[str, Newest] = {}

    def newest(r: Region) -> Newest:  # one index listing per region serves both checks
        if r.name not in found:
            found[r.name] = tr.newest_complete(repo_of(r), cfg)
        return found[r.name]

    out: list[tuple[str, str, Callable[[], Check]]] = []
    for r in cfg.secondaries:
        out.append((f"training-rpo/{r.name}", f"{RPO_TITLE}: {r.name}",
                    lambda r=r: check_training_rpo(cfg, r, repo_of(r), now, newest(r))))
        out.append((f"training-rto/{r.name}", f"{RTO_TITLE}: {r.name}",
                    lambda r=r: check_training_rto(cfg, r, repo_of(r), newest(r))))
    return out


def check_no_checkpoints(cfg: Config) -> Check:
    if cfg.objectives.training is not None:
        return Check("training", "Training checkpoints", WARN, "objectives.training is set but llmdr.yaml has no "
                     "checkpoints: section, so no checkpoint is protected to meet it",
                     "add checkpoints: {path: <the trainer's output folder>} (protect-checkpoints then snapshots "
                     "each checkpoint folder), or remove objectives.training", {"checkpoints": None})
    return Check("training", "Training checkpoints", PASS, "N/A: no checkpoints: section in llmdr.yaml, so there "
                 "are no training checkpoints to judge against training objectives", data={"checkpoints": None})


def _objective_words(cfg: Config, which: str) -> tuple[float, str]:
    obj, explicit = tr.objectives(cfg)
    td = obj.rpo if which == "rpo" else obj.rto
    words = f"training {which.upper()} {format_duration(td)}" + ("" if explicit else " (default: objectives.training "
                                                                                     "not set)")
    return td.total_seconds(), words


def check_training_rpo(cfg: Config, region: Region, repo: Repository, now: float,
                       found: Newest | None = None) -> Check:
    cid, title = f"training-rpo/{region.name}", f"{RPO_TITLE}: {region.name}"
    rpo, rpo_words = _objective_words(cfg, "rpo")
    local = tr.local_newest(cfg)
    newest, skipped = found if found is not None else tr.newest_complete(repo, cfg)
    data: dict[str, Any] = {"series": tr.series(cfg), "rpo_s": rpo, "local": local,
                            "skipped": skipped, "snapshot": newest.id if newest else None}
    passed_over = (f"; {len(skipped)} newer snapshot(s) passed over as incomplete "
                   f"({', '.join(str(s['checkpoint']) + ': ' + s['why'] for s in skipped[:3])})" if skipped else "")
    if newest is None:
        if local is not None and local["name"] is None and not skipped:
            return Check(cid, title, PASS, f"no checkpoint yet: {local['path']} holds no folder matching "
                         f"{cfg.checkpoints.pattern if cfg.checkpoints else '?'}, so nothing to protect", data=data)
        return Check(cid, title, FAIL, f"no complete checkpoint snapshot ({tr.series(cfg)}) in {region.name}"
                     + passed_over, "run protect-checkpoints (`llmdr protect --checkpoints`); for an incomplete one, "
                     f"`llmdr verify --region {region.name} --repair`", data)
    step = tr.snapshot_step(newest)
    age = now - newest.taken_at  # by the store's time when the writer's clock claims a later one
    data |= {"checkpoint": newest.tags.get("checkpoint"), "step": step, "created": newest.created,
             "age_s": round(age, 1)}
    have = f"newest complete checkpoint {newest.tags.get('checkpoint')} (step {step}, {newest.short})"
    if local is not None and local["name"] is not None and step is not None and step >= local["step"]:
        return Check(cid, title, PASS, f"{have} is the newest checkpoint on this host ({local['name']}): nothing "
                     f"written is missing from {region.name} (taken {ago(age)} ago; {rpo_words})" + passed_over,
                     data=data)
    if local is None:
        behind = (f"; the checkpoint folder is not on this host, so only its age is judged (a finished training "
                  f"lets it age past the RPO: run readiness where {cfg.checkpoints.path if cfg.checkpoints else '?'} "
                  "is)")
    elif local["name"] is None:
        behind = f"; {local['path']} holds no checkpoint now"
    else:
        behind = f"; this host has a newer one, {local['name']} (step {local['step']}), not yet in {region.name}"
    summary = f"{have} is {ago(age)} old vs {rpo_words}{behind}{passed_over}"
    if age > rpo:
        return Check(cid, title, FAIL, summary, "check the protect-checkpoints schedule and its last runs; protect "
                     "now with `llmdr protect --checkpoints`", data)
    if age > 0.75 * rpo:
        return Check(cid, title, WARN, summary, "protect-checkpoints has not copied a newer checkpoint for over 75 % "
                     "of the training RPO: check its schedule", data)
    return Check(cid, title, PASS, summary, data=data)


def check_training_rto(cfg: Config, region: Region, repo: Repository, found: Newest | None = None) -> Check:
    from llmdr.drill.plan import human_rate, human_seconds, make_plan
    from llmdr.drill.readiness.checks import measure_throughput

    cid, title = f"training-rto/{region.name}", f"{RTO_TITLE}: {region.name}"
    rto, rto_words = _objective_words(cfg, "rto")
    newest, _ = found if found is not None else tr.newest_complete(repo, cfg)
    if newest is None:
        return Check(cid, title, FAIL, f"no complete checkpoint snapshot in {region.name} to restore",
                     "run protect-checkpoints (`llmdr protect --checkpoints`)", {"rto_s": rto})
    size = sum(newest.manifest.chunk_set().values())  # what a restore downloads: each distinct chunk once
    m = measure_throughput(repo, newest.manifest, probe_bytes=min(cfg.readiness.probe_mb << 20, max(size, 1)),
                           workers=cfg.transfer.download_workers)
    bps = m["bytes_per_s"] * 8
    plan = make_plan(max(size, 1), max(bps, 1.0), rto, start_s=0.0, efficiency=1.0,
                     source=f"measured from {region.name}")
    data = {"snapshot": newest.id, "checkpoint": newest.tags.get("checkpoint"), "probe": m, "restore_bytes": size,
            "restore_s": round(plan.cold_restore_s, 1), "rto_s": rto, "needed_bps": plan.needed_bandwidth_bps}
    arithmetic = (f"{newest.tags.get('checkpoint')}: {gigabytes(size)} at {human_rate(bps)} (measured: "
                  f"{gigabytes(m['bytes'])} in {m['seconds']:.2f} s, {m['workers']} parallel reads) = "
                  f"{human_seconds(plan.cold_restore_s)} vs {rto_words}")
    if plan.meets:
        return Check(cid, title, PASS, "restore " + arithmetic, data=data)
    return Check(cid, title, FAIL, "restore " + arithmetic, f"needs ≥ {human_rate(plan.needed_bandwidth_bps)} from "
                 f"{region.name}, or a longer objectives.training.rto, or smaller checkpoints (e.g. without the "
                 "optimizer state where resuming does not need it)", data)

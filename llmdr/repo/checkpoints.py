"""Protecting training checkpoints: snapshot the complete ones into series ``<bundle>-checkpoints`` in the primary,
copy them to every secondary, apply the checkpoint retention, and find one again by step for a restore.

What is taken (``protect_checkpoints``, the time-based flow; ``protect_checkpoint``, the trainer callbacks):

- only a folder that :func:`llmdr.repo.checkpoint_check.check_checkpoint` finds complete; an incomplete one is
  reported (which file, why) and looked at again on the next run;
- a folder already protected is skipped while its fingerprint (names, sizes, modification times) matches the one its
  newest snapshot records; a folder the trainer rewrote (same name, other content) is snapshotted again. A snapshot
  taken before fingerprints were recorded counts as protected (never re-taken);
- a folder that changed while it was being snapshotted (its fingerprint before and after differ) has that snapshot
  forgotten at once, before any copy, and is reported; the next run takes it again.

Each snapshot carries the tags ``checkpoint`` (folder name), ``step`` (the folder name's last number),
``fingerprint``, ``epoch`` and ``loss`` (from a Hugging Face ``trainer_state.json``) and whatever the caller adds (the
callbacks: run id, Lightning's epoch and loss).
"""

from __future__ import annotations

import fnmatch
import logging
import time
from pathlib import Path

from llmdr.config import Config
from llmdr.errors import SnapshotNotFound, UsageError
from llmdr.repo.checkpoint_check import CheckpointCheck, check_checkpoint, fingerprint, step_of
from llmdr.repo.repository import Repository
from llmdr.repo.snapshot import take_snapshot

log = logging.getLogger(__name__)


def checkpoint_series(cfg: Config) -> str:
    return f"{cfg.bundle.name}-checkpoints"


def checkpoint_root(cfg: Config) -> Path:
    ck = cfg.checkpoints
    if ck is None:
        raise UsageError(f"{cfg.source_file} has no checkpoints: section (path, pattern, retention)")
    return Path(ck.path) if Path(ck.path).is_absolute() else cfg.base_dir / ck.path


def checkpoint_folders(cfg: Config) -> list[Path]:
    """The checkpoint folders under ``checkpoints.path``, oldest step first."""
    root = checkpoint_root(cfg)
    if not root.is_dir():
        raise UsageError(f"checkpoint folder {root} does not exist; set checkpoints.path in llmdr.yaml")
    pattern = cfg.checkpoints.pattern  # type: ignore[union-attr]
    return sorted((p for p in root.iterdir() if p.is_dir() and fnmatch.fnmatchcase(p.name, pattern)),
                  key=lambda p: (step_of(p.name), p.name))


def recorded_fingerprints(repo: Repository, series: str) -> dict[str, str]:
    """Checkpoint name -> the fingerprint its newest snapshot records ('' for a snapshot taken before llmdr
    recorded fingerprints: such a checkpoint counts as protected)."""
    out: dict[str, str] = {}
    for s in repo.snapshots(bundle=series):  # oldest first: the newest snapshot of a name wins
        name = s.manifest.tags.get("checkpoint")
        if name:
            out[name] = s.manifest.tags.get("fingerprint", "")
    return out


def trainer_tags(folder: Path) -> dict[str, str]:
    """``epoch`` and the last logged ``loss`` from a Hugging Face ``trainer_state.json`` ({} without one)."""
    import json

    try:
        state = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    if not isinstance(state, dict):
        return {}
    out = {}  # not the step: the folder name's step is the tag, and a global_step that disagrees stays visible
    if isinstance(state.get("epoch"), (int, float)):
        out["epoch"] = f"{state['epoch']:g}"
    losses = [e["loss"] for e in state.get("log_history") or [] if isinstance(e, dict)
              and isinstance(e.get("loss"), (int, float))]
    if losses:
        out["loss"] = f"{losses[-1]:.6g}"
    return out


def needs_snapshot(check: CheckpointCheck, recorded: dict[str, str]) -> bool:
    if check.name not in recorded:
        return True
    old = recorded[check.name]
    return bool(old) and old != check.fingerprint


def _snapshot(cfg: Config, repo: Repository, folder: Path, check: CheckpointCheck, series: str,
              tags: dict[str, str] | None) -> dict:
    """Snapshot one complete folder; a folder that changed meanwhile has its snapshot forgotten (``unstable``)."""
    all_tags = ({"checkpoint": folder.name, "step": str(check.step), "fingerprint": check.fingerprint}
                | trainer_tags(folder) | (tags or {}))
    res = take_snapshot(repo, folder, bundle=series, kind="checkpoint", workers=cfg.transfer.workers,
                        max_inflight_bytes=cfg.transfer.max_inflight_mb * 1024 * 1024, tags=all_tags)
    after = fingerprint(folder)
    out = res.to_json() | {"checkpoint": folder.name, "step": check.step, "region": repo.location,
                           "tags": all_tags}
    if after != check.fingerprint:
        repo.forget(series, [res.snapshot_id])
        log.warning("checkpoint %s changed while it was snapshotted; snapshot %s forgotten, taken again next run",
                    folder.name, res.snapshot_id[:12])
        out["unstable"] = True
    return out


def _settled(checks: list[tuple[Path, CheckpointCheck]], settle_s: float) -> tuple[list, list[dict]]:
    """Wait ``settle_s`` once, then keep the folders whose fingerprint did not move (clock-independent: two looks,
    not a comparison of modification times with now)."""
    if settle_s <= 0 or not checks:
        return checks, []
    time.sleep(settle_s)
    keep, moving = [], []
    for folder, c in checks:
        if fingerprint(folder) == c.fingerprint:
            keep.append((folder, c))
        else:
            moving.append(c.to_json() | {"complete": False, "problems": [
                f"(folder): files changed within the {settle_s:g} s settle window (still being written)"]})
    return keep, moving


def protect_checkpoints(cfg: Config, repos: dict[str, Repository]) -> dict:
    """Snapshot every complete checkpoint folder not yet protected (or rewritten since), oldest step first, into
    the primary, copy each to every secondary, then apply the checkpoint retention policy in every region
    (``repos``: every region's repository by name). Returns ``found``, ``new``, ``incomplete`` (each with its
    problems), ``copies`` and ``retention``."""
    ck = cfg.checkpoints
    folders = checkpoint_folders(cfg)
    series = checkpoint_series(cfg)
    primary = repos[cfg.primary.name]
    recorded = recorded_fingerprints(primary, series)
    incomplete: list[dict] = []
    todo = []
    for folder in folders:
        c = check_checkpoint(folder, ck.layout, ck.require)  # type: ignore[union-attr]
        if not c.complete:
            incomplete.append(c.to_json())
            log.warning("checkpoint %s is incomplete, not taken: %s", c.name, "; ".join(c.problems))
        elif needs_snapshot(c, recorded):
            todo.append((folder, c))
    todo, moving = _settled(todo, ck.settle.total_seconds())  # type: ignore[union-attr]
    incomplete += moving
    new = []
    for folder, c in todo:
        snap = _snapshot(cfg, primary, folder, c, series, None) | {"region": cfg.primary.name,
                                                                    "revisit": c.name in recorded}
        if snap.pop("unstable", False):
            incomplete.append(c.to_json() | {"complete": False, "problems": [
                "(folder): files changed while the snapshot read them; taken again next run"]})
        else:
            new.append(snap)
    copies = replicate_new(cfg, repos, new)
    retention = apply_checkpoint_retention(cfg, repos)
    return {"series": series, "found": [p.name for p in folders], "new": new, "incomplete": incomplete,
            "copies": copies, "retention": retention}


def replicate_new(cfg: Config, repos: dict[str, Repository], new: list[dict]) -> list[dict]:
    from llmdr.repo.replicate import replicate_snapshot

    primary = repos[cfg.primary.name]
    copies = []
    for r in cfg.secondaries:
        dst = repos[r.name]
        for snap in new:
            copies.append(replicate_snapshot(primary, dst, snap["snapshot_id"], workers=cfg.transfer.workers,
                                             memory_bytes=cfg.transfer.copy_memory_mb << 20).to_json()
                          | {"region": r.name})
    return copies


def apply_checkpoint_retention(cfg: Config, repos: dict[str, Repository]) -> list[dict]:
    ck = cfg.checkpoints
    if ck is None or ck.retention is None:
        return []
    from llmdr.repo.retention import Policy, apply_retention

    policy = Policy(ck.retention.keep_last, ck.retention.keep_every)
    return [apply_retention(repos[r.name], checkpoint_series(cfg), policy, prune=ck.retention.prune,
                            grace_s=ck.retention.grace.total_seconds()).to_json() | {"region": r.name}
            for r in cfg.regions]


def protect_checkpoint(cfg: Config, repos: dict[str, Repository], folder: Path, *,
                       tags: dict[str, str] | None = None, retention: bool = True) -> dict:
    """Protect one checkpoint folder now (the trainer callbacks): it must be complete (``IncompleteCheckpoint``
    otherwise); snapshot into the primary unless this content is already there, copy to every secondary, apply the
    checkpoint retention. Returns ``{"checkpoint", "new": [...], "copies": [...], "retention": [...]}``."""
    ck = cfg.checkpoints
    layout, require = (ck.layout, ck.require) if ck is not None else ("auto", [])
    c = check_checkpoint(folder, layout, require)
    if not c.complete:
        raise IncompleteCheckpoint(c)
    series = checkpoint_series(cfg)
    primary = repos[cfg.primary.name]
    new = []
    if needs_snapshot(c, recorded_fingerprints(primary, series)):
        snap = _snapshot(cfg, primary, folder, c, series, tags) | {"region": cfg.primary.name}
        if snap.pop("unstable", False):
            raise IncompleteCheckpoint(c, "its files changed while the snapshot read them (the snapshot was "
                                          "forgotten); protect it again once the trainer has finished writing it")
        new.append(snap)
    copies = replicate_new(cfg, repos, new)
    return {"checkpoint": folder.name, "step": c.step, "new": new, "copies": copies,
            "retention": apply_checkpoint_retention(cfg, repos) if retention and new else []}


class IncompleteCheckpoint(UsageError):
    """A checkpoint folder that is not complete (yet): nothing was snapshotted."""

    def __init__(self, check: CheckpointCheck, why: str | None = None) -> None:
        self.check = check
        super().__init__(f"checkpoint {check.name} was not snapshotted: "
                         + (why or f"it is incomplete ({'; '.join(check.problems)})")
                         + ". Nothing was uploaded.")


def resolve_checkpoint(repo: Repository, series: str, ref: str) -> str:
    """The snapshot id of checkpoint ``latest`` (highest step, newest snapshot of it) or ``step:N`` in ``repo``;
    ``SnapshotNotFound`` listing the steps there are otherwise."""
    snaps = repo.snapshots(bundle=series)
    by_step: dict[int, str] = {}
    for s in snaps:  # oldest first: a checkpoint taken again (rewritten) wins over its older snapshot
        try:
            by_step[int(s.manifest.tags.get("step", "-1"))] = s.id
        except ValueError:
            continue
    where = f"series {series} in {repo.location}"
    if not by_step:
        raise SnapshotNotFound(f"no checkpoint snapshot in {where}; run `llmdr protect --checkpoints` (or train with "
                               "the llmdr callback) first")
    if ref == "latest":
        return by_step[max(by_step)]
    if ref.startswith("step:"):
        try:
            step = int(ref[5:])
        except ValueError:
            raise UsageError(f"--checkpoint {ref!r}: write step:N with N a whole number, e.g. step:500") from None
        if step in by_step:
            return by_step[step]
        raise SnapshotNotFound(f"no checkpoint of step {step} in {where}; steps there: "
                               f"{', '.join(str(s) for s in sorted(by_step))}")
    raise UsageError(f"--checkpoint {ref!r}: write latest or step:N (e.g. step:500)")

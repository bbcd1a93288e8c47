"""Training's side of DR (issue #20 item 3): the checkpoints against ``objectives.training``.

A checkpoint folder (``checkpoints.path`` / ``checkpoints.pattern``) is snapshotted into the series
``<bundle>-checkpoints`` with the tags ``checkpoint`` (folder name) and ``step`` (``llmdr.repo.ops``). Here:

- which checkpoint snapshot in a region is the newest COMPLETE one (:func:`newest_complete`): its manifest lists
  ``trainer_state.json`` and every chunk it references is present in the region; the readiness checks
  (``llmdr.drill.readiness.training``) judge its age and its restore time against the training objectives;
- the drill's training-restore control (``drill.training_restore``): :func:`restore_newest` restores the newest
  checkpoint snapshot from the DR region into scratch, checks every file byte for byte against the manifest
  (:func:`verify_against_manifest`) and the checkpoint for completeness (:func:`checkpoint_problem`), timed;
  :func:`record_restore` puts it on the drill record and :func:`add_control` turns it into the control.

:func:`checkpoint_problem` is deliberately minimal (trainer_state.json parses and its ``global_step`` is the
snapshot's step): it is the one place to point at a fuller completeness check of checkpoint folders.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import re
import shutil
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from llmdr.config import Config, format_duration
from llmdr.config.sections import TrainingObjectives
from llmdr.repo.checkpoint_check import check_checkpoint
from llmdr.repo.manifest import Manifest
from llmdr.repo.repository import Repository
from llmdr.repo.snapinfo import SnapshotInfo

log = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.json"  # written last by a Hugging Face Trainer save: its presence marks the end
CONTROL_ID = "training_restore"
MAX_STATE_BYTES = 256 << 20  # a long log_history is megabytes; more is not a trainer state
_READ = 1 << 20


def objectives(cfg: Config) -> tuple[TrainingObjectives, bool]:
    """The training objectives, and whether llmdr.yaml sets them (False: the defaults, 24h / 24h, stand in)."""
    t = cfg.objectives.training
    return (t, True) if t is not None else (TrainingObjectives(), False)


def series(cfg: Config) -> str:
    """The checkpoint snapshots' series (the same name ``llmdr.repo.ops.checkpoint_series`` gives)."""
    return f"{cfg.bundle.name}-checkpoints"


def step_of(name: str) -> int:
    """The training step in a checkpoint folder's name: its last number (-1 when it has none)."""
    nums = re.findall(r"\d+", name)
    return int(nums[-1]) if nums else -1


def checkpoint_root(cfg: Config) -> Path | None:
    """The folder holding the checkpoint folders; None without a ``checkpoints:`` section."""
    if cfg.checkpoints is None:
        return None
    p = Path(cfg.checkpoints.path)
    return p if p.is_absolute() else cfg.base_dir / p


def local_newest(cfg: Config) -> dict[str, Any] | None:
    """The newest checkpoint folder on this host (highest step): ``{name, step, path, written_ts}``, where
    ``written_ts`` is the newest modification time of its files. None when the folder does not exist here (a
    readiness run on another host) or holds no checkpoint yet (then ``{"name": None}``)."""
    root = checkpoint_root(cfg)
    if root is None or not root.is_dir():
        return None
    assert cfg.checkpoints is not None
    folders = [p for p in root.iterdir() if p.is_dir() and fnmatch.fnmatchcase(p.name, cfg.checkpoints.pattern)]
    if not folders:
        return {"name": None, "step": None, "path": str(root), "written_ts": None}
    newest = max(folders, key=lambda p: (step_of(p.name), p.name))
    return {"name": newest.name, "step": step_of(newest.name), "path": str(newest), "written_ts": _written(newest)}


def _written(folder: Path) -> float | None:
    """The newest modification time in ``folder``; files a trainer removes while this looks are skipped."""
    times = []
    for f in [folder, *folder.rglob("*")]:
        try:
            times.append(f.stat().st_mtime)
        except OSError:  # rotated away (save_total_limit) or renamed into place meanwhile
            continue
    return max(times, default=None)


def snapshot_step(s: SnapshotInfo) -> int | None:
    """The ``step`` tag of a checkpoint snapshot (None when absent or not a number)."""
    try:
        return int(s.tags.get("step", ""))
    except ValueError:
        return None


def by_step(repo: Repository, cfg: Config) -> list[SnapshotInfo]:
    """The region's checkpoint snapshots, newest first: highest step, then the later catalog entry (a folder
    snapshotted again after it was found incomplete comes after its first snapshot)."""
    snaps = repo.snapshots(bundle=series(cfg))
    return sorted(snaps, key=lambda s: (snapshot_step(s) if snapshot_step(s) is not None else -1, s.seq),
                  reverse=True)


def newest_complete(repo: Repository, cfg: Config) -> tuple[SnapshotInfo | None, list[dict[str, Any]]]:
    """The newest checkpoint snapshot in ``repo`` that is complete there (its manifest lists trainer_state.json and
    every chunk it references is present), and the newer ones passed over, each with why."""
    skipped: list[dict[str, Any]] = []
    snaps = by_step(repo, cfg)
    if not snaps:
        return None, skipped
    present = repo.list_chunks()
    for s in snaps:
        m = s.manifest
        why = listed_incomplete([f.path for f in m.files], cfg.checkpoints.layout if cfg.checkpoints else "auto")
        if why:
            skipped.append({"snapshot": s.id, "checkpoint": s.tags.get("checkpoint"), "why": why})
            continue
        need = m.chunk_set()
        missing = [d for d, n in need.items() if present.get(d) != n]
        if missing:
            skipped.append({"snapshot": s.id, "checkpoint": s.tags.get("checkpoint"),
                            "why": f"{len(missing)} of {len(need)} chunks missing"})
            continue
        return s, skipped
    return None, skipped


# --- the checkpoint itself --------------------------------------------------------------------------------------------
def listed_incomplete(paths: list[str], layout: str) -> str | None:
    """Why a snapshot holding ``paths`` cannot be a complete checkpoint of ``layout`` (checkpoints.layout; the
    trainer's last-written file is missing), None when it can; the full check reads the files once restored
    (``llmdr.repo.checkpoint_check``)."""
    has_ckpt = any(p.endswith(".ckpt") for p in paths)
    if layout == "lightning" or (layout == "auto" and has_ckpt):
        return None if has_ckpt else "no .ckpt file"
    if layout == "files":
        return None
    return None if TRAINER_STATE in paths else f"no {TRAINER_STATE}"


def checkpoint_problem(folder: Path, step: int | None) -> str | None:
    """None when the checkpoint in ``folder`` is complete enough to resume from: its trainer_state.json parses and
    its ``global_step`` is ``step`` (the snapshot's tag); else what is wrong. The restore runs it after the layout's
    full check (``llmdr.repo.checkpoint_check``) passed on an HF checkpoint."""
    path = folder / TRAINER_STATE
    try:
        if path.stat().st_size > MAX_STATE_BYTES:  # a forged giant must not take the drill's memory
            return f"{TRAINER_STATE} is {path.stat().st_size} bytes, more than a trainer state ({MAX_STATE_BYTES})"
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"{TRAINER_STATE} is missing"
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return f"{TRAINER_STATE} does not parse: {exc}"
    got = state.get("global_step") if isinstance(state, dict) else None
    if not isinstance(got, int) or isinstance(got, bool):
        return f"{TRAINER_STATE} has no global_step number"
    if step is None:
        return f"the snapshot has no step tag to compare with global_step {got}"
    if got != step:
        return f"{TRAINER_STATE} says global_step {got}, the snapshot's step tag says {step}"
    return None


def verify_against_manifest(folder: Path, manifest: Manifest) -> list[str]:
    """Every file of ``manifest`` read back from ``folder`` and hashed chunk by chunk against the manifest's chunk
    ids (SHA-256 of the plain bytes); files the manifest does not list are problems too. Returns the problems."""
    problems: list[str] = []
    listed = {f.path for f in manifest.files}
    for entry in sorted(manifest.files, key=lambda f: f.path):
        path = folder / entry.path
        try:
            size = path.stat().st_size
            if size != entry.size:
                problems.append(f"{entry.path}: {size} bytes, the manifest says {entry.size}")
                continue
            with path.open("rb") as fh:
                for i, (digest, length) in enumerate(entry.chunks):
                    h = hashlib.sha256()
                    left = length
                    while left:
                        block = fh.read(min(left, _READ))
                        if not block:
                            break
                        h.update(block)
                        left -= len(block)
                    if left or h.hexdigest() != digest:
                        problems.append(f"{entry.path}: chunk {i} does not match the manifest ({digest[:12]})")
                        break
        except OSError as exc:
            problems.append(f"{entry.path}: {exc.strerror or exc}")
    extra = sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                   if p.is_file() and str(p.relative_to(folder)) not in listed)
    problems += [f"{p}: not in the manifest" for p in extra[:10]]
    return problems


# --- the drill's control ------------------------------------------------------------------------------------------------
def restore_newest(cfg: Config, region: str) -> dict[str, Any]:
    """Restore the newest checkpoint snapshot (highest step) from ``region`` into scratch, verify it byte for byte
    against its manifest and check it is complete, timed against the training RTO. A failure at any step is the
    result (``ok`` false, ``problems``), never an exception; the scratch folder is removed afterwards."""
    from llmdr.repo.ops import open_repo
    from llmdr.repo.restore import restore_snapshot

    obj, _ = objectives(cfg)
    rto = obj.rto.total_seconds()
    out: dict[str, Any] = {"ok": False, "region": region, "series": series(cfg), "rto_s": rto,
                           "snapshot_id": None, "checkpoint": None, "step": None, "problems": []}
    if cfg.checkpoints is None:
        out["problems"].append("drill.training_restore is on but llmdr.yaml has no checkpoints: section")
        return _summed(out)
    import tempfile

    # its own folder: two drills at once never share (or delete) each other's scratch
    parent = cfg.bundle_state_path / "scratch"
    parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="training-restore-", dir=parent))
    t0 = time.perf_counter()
    try:
        repo = open_repo(cfg, region, read_only=True, cache=False)
        snaps = by_step(repo, cfg)
        if not snaps:
            out["problems"].append(f"no checkpoint snapshot ({series(cfg)}) in {region}")
            return _summed(out)
        s = snaps[0]
        step = snapshot_step(s)
        out.update(snapshot_id=s.id, checkpoint=s.tags.get("checkpoint"), step=step, created=s.created)
        target = scratch / s.short  # never a name from the store: a tag like "../x" must not leave scratch
        res = restore_snapshot(repo, s.id, target, workers=cfg.transfer.download_workers,
                               memory_bytes=cfg.transfer.restore_memory_mb << 20)
        t1 = time.perf_counter()
        out.update(files=res.files, bytes=res.bytes_total, restore_s=round(t1 - t0, 3))
        bad = verify_against_manifest(target, s.manifest)
        out["verify_s"] = round(time.perf_counter() - t1, 3)
        out["verified"] = not bad
        out["problems"] += bad
        ck = cfg.checkpoints
        check = check_checkpoint(target, ck.layout, ck.require) if ck else check_checkpoint(target)
        found = list(check.problems)
        if not found and check.layout == "hf":  # and the state is the one of the step the snapshot claims
            found += [p for p in [checkpoint_problem(target, step)] if p]
        out["complete"] = not found
        out["problems"] += found
    except Exception as exc:  # noqa: BLE001 - a restore that fails is the control's finding
        log.warning("training restore from %s failed: %s", region, exc)
        out["problems"].append(f"restore failed: {str(exc).splitlines()[0]}")
    finally:
        out["total_s"] = round(time.perf_counter() - t0, 3)
        shutil.rmtree(scratch, ignore_errors=True)
    out["within_rto"] = out["total_s"] <= rto
    if not out["within_rto"]:
        out["problems"].append(f"took {out['total_s']:.1f} s, longer than the training RTO {_dur(rto)}")
    out["ok"] = not out["problems"]
    return _summed(out)


def _dur(seconds: float) -> str:
    return format_duration(timedelta(seconds=seconds))


def _summed(out: dict[str, Any]) -> dict[str, Any]:
    what = (f"{out['checkpoint']} (step {out['step']}, {(out['snapshot_id'] or '')[:12]}) from {out['region']}"
            if out.get("snapshot_id") else f"no checkpoint from {out['region']}")
    figures = (f": {out.get('files', 0)} files, {out.get('bytes', 0) / 1e6:.1f} MB restored in "
               f"{out.get('restore_s', 0):.2f} s"
               f", verified in {out.get('verify_s', 0):.2f} s" if "restore_s" in out else "")
    out["summary"] = what + figures + ("; " + "; ".join(out["problems"][:3]) if out["problems"] else "; no problems")
    return out


def record_restore(rec: Any, out: dict[str, Any], dr_region: str) -> None:
    """The training restore on the drill record: evidence, its time as a measurement, a timeline mark."""
    rec.evidence["training_restore"] = out
    if "restore_s" in out:  # it was restored (a restore that failed half-way measured nothing)
        rec.measurements["training_restore_s"] = out["total_s"]
    rec.mark("check", f"training checkpoint restore from the {dr_region} store", ok=bool(out.get("ok")),
             detail=out.get("summary", ""))


def add_control(rec: Any, cfg: Config) -> None:
    """With ``drill.training_restore`` on, the training-restore control (after :func:`llmdr.drill.record.evaluate`):
    a restore not run or not passing fails it and the drill. Off: no control at all (never a pass)."""
    if not cfg.drill.training_restore:
        return
    from llmdr.drill.record import Control

    obj, explicit = objectives(cfg)
    rto = obj.rto.total_seconds()
    rec.scope.setdefault("objectives", {})["training"] = {"rpo_s": obj.rpo.total_seconds(), "rto_s": rto,
                                                          "set": explicit}
    tr = rec.evidence.get("training_restore")
    if not isinstance(tr, dict):
        c = Control(CONTROL_ID, "Training checkpoint restored from the DR region within the training RTO", False,
                    "not run", f"<= {_dur(rto)}", "the drill ended before the training restore ran")
    else:
        value = f"{tr['total_s']:.1f} s" if tr.get("snapshot_id") and tr.get("total_s") is not None else "not restored"
        c = Control(CONTROL_ID, "Training checkpoint restored from the DR region within the training RTO",
                    bool(tr.get("ok")), value, f"<= {_dur(rto)}, byte-identical, complete", tr.get("summary", ""))
    rec.controls.append(c)
    if not c.passed:
        rec.fail(f"{c.name}: {c.value} (objective {c.objective})")
        rec.passed = False

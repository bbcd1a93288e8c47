"""Operations on a configured deployment: the one place that turns ``llmdr.yaml`` into repositories and calls the
core. The CLI and the Prefect tasks both call these, so they behave the same."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmdr.common.progress import Progress
from llmdr.config import Config, Region
from llmdr.config.residency import require_all, require_resident
from llmdr.errors import IntegrityError, LlmdrError, UsageError
from llmdr.repo.bundle import BundleReport, check_bundle, specs_from_config
from llmdr.repo.checkpoints import checkpoint_series  # noqa: F401  (re-exported: its home before #20)
from llmdr.repo.repository import Repository
from llmdr.repo.snapshot import SnapshotResult, take_snapshot
from llmdr.repo.statcache import StatCache

if TYPE_CHECKING:  # imported where used: a snapshot (every 5 minutes) need not load restore and replicate
    from llmdr.repo.replicate import ReplicateResult
    from llmdr.repo.restore import RestoreResult


def open_repo(cfg: Config, region: str | Region | None = None, *, read_only: bool = False,
              cache: bool = True, as_of: float | None = None,
              hidden: bool | dict[str, dict[str, Any]] = False) -> Repository:
    """The repository of ``region``; ``cache=False`` reads every manifest from the store (checks must see what the
    region holds, not a copy this machine cached earlier). ``as_of`` reads the region as it was then (read-only);
    ``hidden`` (True, or a dict that collects them) reads keys a delete marker hides over a locked version
    (design §6)."""
    from llmdr.storage.factory import open_region

    reg = region if isinstance(region, Region) else cfg.region(region)
    store = open_region(cfg, reg, read_only=read_only, as_of=as_of, use_hidden=hidden is not False,
                        hidden=hidden if isinstance(hidden, dict) else None)
    return Repository(store, cache_dir=cfg.bundle_state_path / "cache" if cache else None,
                      pack_target=cfg.transfer.pack_mb * 1024 * 1024)


def snapshot_bundle(
    cfg: Config,
    *,
    region: str | None = None,
    path: Path | None = None,
    tags: dict[str, str] | None = None,
    progress: Progress | None = None,
) -> SnapshotResult:
    require_resident(cfg, cfg.region(region), f"snapshot of '{cfg.bundle.name}' into region '{cfg.region(region).name}'")
    repo = open_repo(cfg, region)
    source = path or cfg.bundle_path
    cache = StatCache.for_source(cfg.bundle_state_path / "cache", source)
    return take_snapshot(repo, source, bundle=cfg.bundle.name, stat_cache=cache, workers=cfg.transfer.workers,
                         max_inflight_bytes=cfg.transfer.max_inflight_mb * 1024 * 1024, progress=progress,
                         tags=tags, components=specs_from_config(cfg.bundle.components))


def replicate(
    cfg: Config,
    ref: str,
    *,
    to: str,
    source: str | None = None,
    recheck: bool = False,
    progress: Progress | None = None,
) -> list[ReplicateResult]:
    """Replicate one snapshot (id, prefix, ``latest``) or ``all`` from ``source`` (default primary) to ``to``."""
    src_region, dst_region = cfg.region(source), cfg.region(to)
    if src_region.name == dst_region.name:
        raise UsageError(f"source and destination are both '{src_region.name}'; name another region")
    require_resident(cfg, dst_region, f"replicate {ref} of '{cfg.bundle.name}' to region '{dst_region.name}'")
    src = open_repo(cfg, src_region, read_only=True)
    dst = open_repo(cfg, dst_region)
    ids = src.snapshot_ids() if ref == "all" else [src.resolve(ref, bundle=cfg.bundle.name)]
    from llmdr.repo.replicate import replicate_snapshot

    out = [replicate_snapshot(src, dst, sid, workers=cfg.transfer.workers, progress=progress, recheck=recheck,
                              memory_bytes=cfg.transfer.copy_memory_mb << 20)
           for sid in ids]
    _copy_goldens(cfg, src, dst, ids)
    return out


def _copy_goldens(cfg: Config, src: Repository, dst: Repository, ids: list[str]) -> None:
    """The golden set of each copied snapshot's content goes along (``goldens.copy_golden``); a set that cannot be
    copied (refused, a region error) is a warning: the snapshot itself is copied and verified."""
    import logging

    from llmdr.repo.goldens import copy_golden

    for sid in ids:
        try:
            copy_golden(cfg, src, dst, src.load_manifest(sid))
        except LlmdrError as exc:
            logging.getLogger(__name__).warning("golden set of snapshot %s not copied to %s: %s", sid[:12],
                                                dst.location, exc)


def restore(
    cfg: Config,
    ref: str,
    target: Path,
    *,
    region: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
    as_of: float | None = None,
    hidden: dict[str, dict[str, Any]] | None = None,
    preserve_special_bits: bool = False,
) -> RestoreResult:
    """Restore ``ref`` from ``region`` into ``target``. Keys hidden by a delete marker over a locked version are read
    from that version (and recorded in ``hidden`` when given); ``as_of`` restores from the region as it was then.
    Setuid, setgid and sticky bits are restored only with ``preserve_special_bits``."""
    repo = open_repo(cfg, region, read_only=True, as_of=as_of, hidden=hidden if hidden is not None else True)
    sid = repo.resolve(ref, bundle=cfg.bundle.name)
    from llmdr.repo.restore import restore_snapshot

    return restore_snapshot(repo, sid, target, force=force, workers=cfg.transfer.download_workers,
                            durable=cfg.transfer.fsync, progress=progress,
                            memory_bytes=cfg.transfer.restore_memory_mb << 20,
                            preserve_special_bits=preserve_special_bits)


def check(cfg: Config, path: Path | None = None) -> BundleReport:
    """The completeness check of the configured bundle (or of another folder, e.g. a restored copy)."""
    root = path or cfg.bundle_path
    if not root.is_dir():
        raise UsageError(f"{root} is not a folder")
    if not cfg.bundle.components:
        raise UsageError(f"{cfg.source_file}: bundle.components is empty, so there is nothing to check; "
                          "`llmdr init` detects and writes them")
    return check_bundle(root, specs_from_config(cfg.bundle.components))


def require_complete(cfg: Config) -> BundleReport | None:
    """The protect procedure's gate: the configured bundle must be complete before it is snapshotted
    (``IncompleteBundle`` otherwise, never retried: the files must be fixed first). None when ``bundle.components``
    is empty, so there is nothing to check."""
    from llmdr.repo.bundle import IncompleteBundle

    if not cfg.bundle.components:
        return None
    report = check(cfg)
    if not report.complete:
        raise IncompleteBundle(report, "protect-bundle stopped before the snapshot")
    return report


def require_copy(cfg: Config, snapshot_id: str, region: str):
    """Every chunk of ``snapshot_id`` is present, at the right size, in ``region`` (one listing, no reads); an
    ``IntegrityError`` naming how many lack otherwise. Returns the ``verify.SnapshotCheck``."""
    res = verify(cfg, snapshot_id, region=region, read=False)
    if not res.ok:
        raise IntegrityError(f"the copy of {snapshot_id[:12]} in {region} lacks {len(res.unrepaired)} chunk(s); "
                             f"run `llmdr replicate {snapshot_id[:12]} --to {region}` again")
    return res


def verify(cfg: Config, ref: str, *, region: str | None = None, sample: str | None = None, repair: bool = False,
           progress: Progress | None = None, read: bool = True, as_of: float | None = None,
           hidden: dict[str, dict[str, Any]] | None = None):
    """Check (and with ``repair`` fix from the other regions) a snapshot in one region: its manifest, read from the
    region and proven against its id, then its chunks (read back, or with ``read=False`` only listed). Returns a
    ``verify.SnapshotCheck``; a damaged manifest left unrepaired raises ``IntegrityError`` naming its key. With
    ``hidden`` (a dict) the region is read through delete markers that hide locked versions, and those keys are
    recorded there for the report; ``as_of`` checks the region as it was then (read-only)."""
    from llmdr.repo.integrity import Subset, verify_snapshot
    from llmdr.repo.verify import SnapshotCheck, check_manifest

    reg = cfg.region(region)
    repo = open_repo(cfg, reg, read_only=not repair, cache=False, as_of=as_of,
                     hidden=hidden if hidden is not None else False)
    sources = [(r.name, open_repo(cfg, r, read_only=True, cache=False)) for r in cfg.regions if r.name != reg.name] \
        if repair else []
    subset = Subset.parse(sample) if sample else None
    sid = resolve_checked(cfg, repo, ref, lambda: [r for _, r in sources])
    manifest = check_manifest(repo, sid, sources)
    if not manifest.ok:
        hint = (f"no other region holds an intact copy; restore snapshot {sid[:12]} from another region or use an "
                "older snapshot" if repair else
                f"run `llmdr verify {sid} --region {reg.name} --repair` to copy an intact one from another region")
        raise IntegrityError(f"{manifest.problem()}; {hint}")
    res = verify_snapshot(repo, sid, subset=subset, repair_from=sources, workers=cfg.transfer.download_workers,
                          progress=progress, read=read)
    check = SnapshotCheck.of(res, manifest, repo)
    if check.ok and read and as_of is None and not hidden:  # read back today, sound, nothing behind a delete marker
        from llmdr.common.runs import record_run

        record_run(cfg.bundle_state_path, "verify", region=reg.name, snapshot=sid, sample=sample)
    return check


def resolve_checked(cfg: Config, repo: Repository, ref: str,
                    others: Callable[[], list[Repository]] = list) -> str:
    """Like ``repo.resolve``. ``latest`` is the catalog's head, decided from the catalog entries alone, so a damaged
    record object cannot hide it: ``verify latest --repair`` then finds and repairs that record. (``others`` is kept
    for callers that offer other regions; the catalog needs none.)"""
    return repo.resolve(ref, bundle=cfg.bundle.name)


def rpo_clock(cfg: Config, region: str) -> dict:
    """Age of the bundle's newest complete snapshot in ``region`` against the RPO objective."""
    from datetime import datetime, timezone

    snaps = open_repo(cfg, region, read_only=True).snapshots(bundle=cfg.bundle.name)
    objective = cfg.objectives.rpo.total_seconds()
    if not snaps:
        return {"region": region, "newest": None, "created": None, "age_s": None, "objective_s": objective,
                "ok": False}
    created = snaps[-1].created
    age = datetime.now(timezone.utc).timestamp() - snaps[-1].taken_at  # never younger than the store says
    return {"region": region, "newest": snaps[-1].id, "created": created, "age_s": round(age, 1),
            "objective_s": objective, "ok": age <= objective}


def readable_others(cfg: Config, region: Region) -> list[Repository]:
    """The other regions, read-only, skipping those this host cannot open (e.g. no credentials on a DR host)."""
    out = []
    for r in cfg.regions:
        if r.name != region.name:
            try:
                out.append(open_repo(cfg, r, read_only=True, cache=False))
            except LlmdrError:
                continue
    return out


def forget(cfg: Config, *, keep_last: int, keep_every: int | None = None, region: str | None = None,
           prune: bool = True, grace_s: float = 6 * 3600):
    """Apply a retention policy to the configured bundle's snapshots in one region (default: the primary)."""
    from llmdr.repo.retention import Policy, apply_retention

    policy = Policy(keep_last, keep_every)
    return apply_retention(open_repo(cfg, region), cfg.bundle.name, policy, prune=prune, grace_s=grace_s)


def apply_configured_retention(cfg: Config, region: str):
    """The ``retention:`` policy of llmdr.yaml applied in ``region``; None when the file sets no policy."""
    r = cfg.retention
    if r is None:
        return None
    return forget(cfg, keep_last=r.keep_last, keep_every=r.keep_every, region=region, prune=r.prune,
                  grace_s=r.grace.total_seconds())


def _all_repos(cfg: Config) -> dict[str, Repository]:
    return {r.name: open_repo(cfg, r) for r in cfg.regions}


def protect_checkpoints(cfg: Config) -> dict:
    """Snapshot every complete checkpoint folder not yet protected (or rewritten since) into the primary, copy each
    to every secondary, apply the checkpoint retention in every region (``llmdr.repo.checkpoints``)."""
    from llmdr.repo.checkpoints import protect_checkpoints as protect

    require_all(cfg, f"protect the checkpoints of '{cfg.bundle.name}'")
    return protect(cfg, _all_repos(cfg))


def protect_checkpoint(cfg: Config, folder: Path, *, tags: dict[str, str] | None = None) -> dict:
    """Protect one complete checkpoint folder now (the trainer callbacks); ``IncompleteCheckpoint`` otherwise."""
    from llmdr.repo.checkpoints import protect_checkpoint as protect

    require_all(cfg, f"protect checkpoint {folder.name} of '{cfg.bundle.name}'")
    return protect(cfg, _all_repos(cfg), folder, tags=tags)


def restore_checkpoint(cfg: Config, ref: str, target: Path, *, region: str | None = None, force: bool = False,
                       progress: Progress | None = None) -> RestoreResult:
    """Restore checkpoint ``latest`` or ``step:N`` of the bundle's checkpoint series from ``region``."""
    from llmdr.repo.checkpoints import resolve_checkpoint
    from llmdr.repo.restore import restore_snapshot

    repo = open_repo(cfg, region, read_only=True)
    sid = resolve_checkpoint(repo, checkpoint_series(cfg), ref)
    return restore_snapshot(repo, sid, target, force=force, workers=cfg.transfer.download_workers,
                            durable=cfg.transfer.fsync, progress=progress,
                            memory_bytes=cfg.transfer.restore_memory_mb << 20)

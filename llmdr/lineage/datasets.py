"""Datasets versioned by DVC, copied to every region and brought back verified.

llmdr pushes a dataset's recorded version (its DVC md5, see :mod:`llmdr.lineage.dvcrepo`) to every region's remote
(``s3://<bucket>/<prefix>/dvc``, remote name ``llmdr-<region>``), checks with its own S3 client that a region holds it
(:func:`present`), and brings it back from any region (:func:`pull`), re-hashing what came back before it reaches the
workspace. DVC runs in this process (:mod:`llmdr.lineage.dvcrun`).

This module is the datasets API the tasks and the CLI use: the repository-side names (:func:`version`,
:func:`track`, :func:`locate`, :func:`configure_remotes`, :func:`remote_url`...) are re-exported from
:mod:`llmdr.lineage.dvcrepo`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llmdr.config import Config, Dataset, Region
from llmdr.config.residency import require_resident
from llmdr.errors import (
    IntegrityError,
    LlmdrError,
    ObjectNotFound,
    TargetNotEmpty,
    TransientStorageError,
    UnsafePathError,
    is_retriable,
)
from llmdr.lineage.dvcrepo import (
    CONNECT_TIMEOUT,
    REMOTE_DIR,
    DatasetChanged,
    DatasetVersion,
    configure_remotes,
    dataset_named,
    git_commit,
    locate,
    read_dvcfile,
    regions_in_order,
    remote_name,
    remote_override,
    remote_url,
    remote_urls,
    track,
    version,
)
from llmdr.lineage.dvcrun import DatasetNotTracked, dvc_call, locked, map_error, missing_note, secret_values
from llmdr.storage.credentials import resolve_keys

__all__ = [
    "DatasetChanged", "DatasetNotTracked", "DatasetVersion", "PushResult", "configure_remotes", "dataset_named",
    "locate", "md5_file", "present", "pull", "push", "push_all", "remote_name", "remote_url", "remote_urls", "track",
    "version",
]

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


@dataclass
class PushResult:
    name: str
    region: str
    remote: str  # the remote's URL (no secrets)
    md5: str
    pushed: int  # files DVC uploaded (0 when the region had them already)
    already: bool
    duration_s: float

    def to_json(self) -> dict:
        return asdict(self)


# --- push / presence -------------------------------------------------------------------------------------------------
def push(cfg: Config, ds: Dataset, region: str) -> PushResult:
    """Push the recorded version (from the local DVC cache) to ``region``'s remote, then check the region holds it.
    Pushing a version the region has already uploads nothing (``already=True``)."""
    r = cfg.region(region)
    require_resident(cfg, r, f"dataset '{ds.name}': DVC push to region '{r.name}'", dataset=ds)
    ver = version(cfg, ds)
    _, root, dvcfile = locate(cfg, ds)
    keys = resolve_keys(cfg, r)
    secrets = secret_values([keys])
    where = f"dataset '{ds.name}': pushing md5 {ver.md5} to region '{r.name}' ({remote_url(r)} at {_at(r)})"
    t0 = time.monotonic()
    if _reachable_and_present(cfg, ds, r, ver, where):
        res = PushResult(ds.name, r.name, remote_url(r), ver.md5, 0, True, round(time.monotonic() - t0, 3))
        log.info("dataset %s md5 %s -> region %s: already there (%.2fs)", ds.name, ver.md5, r.name, res.duration_s)
        return res
    with locked(root), dvc_call(secrets) as records:
        try:
            from dvc.repo import Repo

            with Repo(str(root), config=remote_override(r, keys)) as dvc_repo:
                pushed = int(dvc_repo.push(targets=[str(dvcfile)], remote=remote_name(r)) or 0)
        except Exception as exc:
            raise map_error(exc, secrets, records, where) from None
    if not present(cfg, ds, r.name, ver=ver):
        missing = missing_note(records)
        raise ObjectNotFound(
            f"{where}: the region still lacks it after the push{missing}. The local DVC cache of {root} does not "
            f"hold this version: run `dvc add {ver.path}` there again, or pull it from a region that has it first."
        )
    res = PushResult(ds.name, r.name, remote_url(r), ver.md5, pushed, pushed == 0, round(time.monotonic() - t0, 3))
    log.info("dataset %s md5 %s -> region %s: %d file(s) pushed (%.2fs)", ds.name, ver.md5, r.name, pushed,
             res.duration_s)
    return res


def _reachable_and_present(cfg: Config, ds: Dataset, r: Region, ver: DatasetVersion, where: str) -> bool:
    """Before DVC runs: a refused connection fails in milliseconds (DVC's S3 client retries for ~14 s), and one HEAD
    with llmdr's S3 client turns wrong keys, a missing bucket or a damaged copy into typed errors (DVC reports
    most of them only as 'failed to transfer')."""
    _preflight(r, where)
    try:
        return present(cfg, ds, r.name, ver=ver)
    except LlmdrError as exc:
        msg = str(exc) if str(exc).startswith(f"dataset '{ds.name}'") else f"{where}: {exc}"
        raise type(exc)(msg) from None


def push_all(cfg: Config, ds: Dataset) -> list[PushResult]:
    """Push to every region, primary first. Every region is tried even when one fails (a copy in the DR region is
    worth having while the primary is down); afterwards any failure is raised, naming each failed region. The
    raised type is the first final (non-retriable) failure's, else the first transient one's, so retry layers
    retry only what can pass (pushing a region that has the version again costs one check)."""
    results: list[PushResult] = []
    errors: list[tuple[str, LlmdrError]] = []
    for r in regions_in_order(cfg):
        try:
            results.append(push(cfg, ds, r.name))
        except LlmdrError as exc:
            errors.append((r.name, exc))
    if errors:
        final = [e for _, e in errors if not is_retriable(e)]
        first = final[0] if final else errors[0][1]
        done = ", ".join(res.region for res in results) or "none"
        msg = "; ".join(str(e) for _, e in errors) + f" (pushed to: {done})"
        raise type(first)(msg)
    return results


def present(cfg: Config, ds: Dataset, region: str, *, ver: DatasetVersion | None = None) -> bool:
    """Whether ``region``'s remote holds the recorded version: the object ``files/md5/xx/yyyy`` (for a folder, the
    ``.dir`` listing and every file it names), looked up with llmdr's own S3 client. Presence, not integrity: the
    bytes are checked by ``pull``; but a single-file object of the wrong size raises ``IntegrityError`` (it is there
    and damaged, and DVC would never replace it). An unreachable region raises ``TransientStorageError``: it is not
    'absent'."""
    from llmdr.storage.factory import open_region

    r = cfg.region(region)
    ver = ver or version(cfg, ds, check_workspace=False)
    store = open_region(cfg, r, read_only=True, attempts=2, sealed=False)  # DVC writes these objects itself
    try:
        info = store.head(_object_key(ver.md5))
        if not ver.is_dir:
            if ver.size and info.size != ver.size:
                raise IntegrityError(
                    f"dataset '{ds.name}': region '{r.name}' holds {_object_key(ver.md5)} with {info.size} bytes, "
                    f"recorded {ver.size} ({remote_url(r)}). That copy is damaged; DVC will not overwrite it: delete "
                    "it (it is only this version's copy in that region) and push again."
                )
            return True
        entries = _parse_dir_listing(store.get(_object_key(ver.md5)), ds, r.name)
        for entry in entries:
            store.head(_object_key(entry["md5"]))
        return True
    except ObjectNotFound:
        return False


# --- pull --------------------------------------------------------------------------------------------------------------
def pull(cfg: Config, ds: Dataset, region: str, *, target: Path | None = None,
         expect_md5: str | None = None, force: bool = False) -> DatasetVersion:
    """Bring the recorded version back from ``region``'s remote and check it before it lands.

    DVC fetches into a temporary cache (so the bytes really come from that region, and nothing unchecked reaches the
    repository's cache or workspace); every object is re-hashed (a file's DVC md5 is the md5 of its bytes; a folder's
    is the md5 of its ``.dir`` listing, whose entries are checked too). A mismatch raises ``IntegrityError`` naming
    the dataset and region and leaves the destination untouched. Then the data is written to ``target`` (default:
    the dataset's own path) and, if missing there, into the repository's DVC cache (so ``dvc status`` and later
    pushes see it). Data already at the destination that is not this version (local edits) is replaced only with
    ``force``; otherwise ``TargetNotEmpty``. ``expect_md5`` (e.g. from a snapshot manifest) refuses when the ``.dvc``
    file records another version."""
    r = cfg.region(region)
    data, root, dvcfile = locate(cfg, ds)
    ver = read_dvcfile(ds, data, root, dvcfile)
    if expect_md5 and expect_md5 != ver.md5:
        raise DatasetChanged(
            f"dataset '{ds.name}': {dvcfile} records md5 {ver.md5}, not the expected {expect_md5}; check out the "
            f"matching .dvc file first (e.g. `git checkout <commit> -- {ver.path}.dvc` in {root})."
        )
    dest = Path(target) if target is not None else data
    keys = resolve_keys(cfg, r)
    secrets = secret_values([keys])
    where = f"dataset '{ds.name}': pulling md5 {ver.md5} from region '{r.name}' ({remote_url(r)} at {_at(r)})"
    if not _reachable_and_present(cfg, ds, r, ver, where):
        raise ObjectNotFound(
            f"{where}: the region's remote does not hold this version. Push the dataset there first (llmdr's dataset "
            "push), or pull from another region."
        )
    t0 = time.monotonic()
    tmp_root = root / ".dvc" / "tmp"
    tmp_root.mkdir(parents=True, exist_ok=True)
    with locked(root), tempfile.TemporaryDirectory(prefix="llmdr-pull-", dir=tmp_root) as tmp:
        with dvc_call(secrets) as records:
            try:
                from dvc.repo import Repo

                conf = remote_override(r, keys)
                conf["cache"] = {"dir": str(Path(tmp) / "cache")}
                with Repo(str(root), config=conf) as dvc_repo:
                    fetched = dvc_repo.fetch(targets=[str(dvcfile)], remote=remote_name(r))
                    odb = dvc_repo.cache.local
                    objects = _verify_fetched(odb, ver, ds, r, where)
            except LlmdrError:
                raise
            except Exception as exc:
                raise map_error(exc, secrets, records, where) from None
        _check_destination(ds, ver, objects, dest, force)
        _materialize(objects, ver, dest)
        _seed_cache(root, objects)
    log.info("dataset %s md5 %s <- region %s: %d object(s) fetched, verified, written to %s (%.2fs)", ds.name,
             ver.md5, r.name, fetched, dest, time.monotonic() - t0)
    ver.commit = git_commit(root, dvcfile)
    return ver


def _verify_fetched(odb: Any, ver: DatasetVersion, ds: Dataset, r: Region, where: str) -> dict[str, tuple[str, Path]]:
    """Re-hash what DVC fetched into the temporary cache. Returns {relpath: (md5, object path)}: ``''`` for a single
    file; for a folder each file's path inside it, plus the ``.dir`` listing itself under ``'/.dir'``."""

    def obj(md5: str) -> Path:
        p = Path(odb.oid_to_path(md5))
        if not p.exists():
            raise ObjectNotFound(
                f"{where}: the region's remote does not hold object {md5}. Push the dataset there first "
                "(llmdr's dataset push), or pull from another region."
            )
        return p

    def check(md5: str, path: Path, what: str) -> None:
        got = md5_file(path)
        if got != md5.removesuffix(".dir"):
            raise IntegrityError(
                f"dataset '{ds.name}': region '{r.name}' returned corrupt data for {what}: md5 {got}, recorded "
                f"{md5.removesuffix('.dir')} ({remote_url(r)}). The copy in that region is damaged: pull from another "
                "region, then push again to repair it. Nothing was written."
            )

    if not ver.is_dir:
        p = obj(ver.md5)
        check(ver.md5, p, f"{ver.path} (md5 {ver.md5})")
        return {"": (ver.md5, p)}
    listing = obj(ver.md5)
    check(ver.md5, listing, f"the folder listing of {ver.path} ({ver.md5})")
    out: dict[str, tuple[str, Path]] = {"/.dir": (ver.md5, listing)}
    for entry in _parse_dir_listing(listing.read_bytes(), ds, r.name):
        rel = entry["relpath"]
        p = obj(entry["md5"])
        check(entry["md5"], p, f"{ver.path}/{rel} (md5 {entry['md5']})")
        out[rel] = (entry["md5"], p)
    return out


def _check_destination(ds: Dataset, ver: DatasetVersion, objects: dict[str, tuple[str, Path]], dest: Path,
                       force: bool) -> None:
    """Refuse to replace data that is not this version (someone's edits) unless ``force``."""
    if force or not (dest.exists() or dest.is_symlink()):
        return
    if not ver.is_dir:
        if dest.is_file() and md5_file(dest) == ver.md5:
            return
    elif dest.is_dir():
        want = {rel: md5 for rel, (md5, _) in objects.items() if rel != "/.dir"}
        have = {p.relative_to(dest).as_posix(): p for p in dest.rglob("*") if p.is_file() or p.is_symlink()}
        if not have or (set(have) == set(want) and all(md5_file(have[rel]) == md5 for rel, md5 in want.items())):
            return
    raise TargetNotEmpty(
        f"dataset '{ds.name}': {dest} already holds data that is not version {ver.md5}; pulling would replace it. "
        "Move it away, pull to another target, or pass force to replace it."
    )


def _materialize(objects: dict[str, tuple[str, Path]], ver: DatasetVersion, dest: Path) -> None:
    """Write verified objects to ``dest``; the old content is replaced only once the new one is complete."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not ver.is_dir:
        _, src = objects[""]
        _copy_into_place(src, dest)
        return
    staging = Path(tempfile.mkdtemp(prefix=".llmdr-", dir=dest.parent))
    try:
        for rel, (_, src) in objects.items():
            if rel == "/.dir":
                continue
            out = staging / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, out)
        old = None
        if dest.exists() or dest.is_symlink():
            old = dest.with_name(f".llmdr-old-{os.urandom(8).hex()}")
            os.replace(dest, old)
        os.replace(staging, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() and not old.is_symlink() else old.unlink()
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _seed_cache(root: Path, objects: dict[str, tuple[str, Path]]) -> None:
    """Copy verified objects into the repository's own DVC cache when it lacks them (read-only, as DVC keeps them)."""
    with dvc_call(()):
        from dvc.repo import Repo

        with Repo(str(root)) as dvc_repo:
            odb = dvc_repo.cache.local
            for md5, src in objects.values():
                dst = Path(odb.oid_to_path(md5))
                if dst.exists():
                    continue
                dst.parent.mkdir(parents=True, exist_ok=True)
                _copy_into_place(src, dst, mode=0o444)


def _copy_into_place(src: Path, dst: Path, *, mode: int | None = None) -> None:
    """Copy ``src`` over ``dst`` at once: through a temporary file beside ``dst`` created exclusively and never
    through a symbolic link planted there (O_EXCL|O_NOFOLLOW), under a short random name that fits whatever the
    length of ``dst``'s name (``.llmdr-tmp-<16 hex>``), its mode set on the descriptor, then renamed over ``dst``."""
    tmp = dst.with_name(f".llmdr-tmp-{os.urandom(8).hex()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
            shutil.copyfileobj(inp, out, _CHUNK)
            if mode is not None:
                os.fchmod(out.fileno(), mode)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --- hashing -------------------------------------------------------------------------------------------------------------
def md5_file(path: Path) -> str:
    """DVC 3's md5 of a file: the plain md5 of its bytes."""
    h = hashlib.md5(usedforsecurity=False)
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def _parse_dir_listing(raw: bytes, ds: Dataset, region: str) -> list[dict[str, str]]:
    try:
        entries = json.loads(raw)
        ok = isinstance(entries, list) and all(isinstance(e, dict) and isinstance(e.get("md5"), str)
                                               and isinstance(e.get("relpath"), str) for e in entries)
    except ValueError:
        ok = False
    if not ok:
        raise IntegrityError(f"dataset '{ds.name}': the folder listing from region '{region}' is not a DVC .dir "
                             "listing; the copy there is damaged: pull from another region.")
    for e in entries:
        parts = e["relpath"].split("/")
        if e["relpath"].startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise UnsafePathError(f"dataset '{ds.name}': the folder listing from region '{region}' names "
                                  f"{e['relpath']!r}, which would escape the dataset folder; refusing it.")
    return entries


# --- helpers -----------------------------------------------------------------------------------------------------------
def _object_key(md5: str) -> str:
    return f"{REMOTE_DIR}/files/md5/{md5[:2]}/{md5[2:]}"


def _at(r: Region) -> str:
    return r.endpoint or f"AWS {r.s3_region}"


def _preflight(r: Region, where: str) -> None:
    """Fail in milliseconds on an endpoint that refuses connections (DVC's S3 client retries for ~14 s)."""
    from llmdr.common.net import unreachable

    if r.endpoint and (exc := unreachable(r.endpoint, CONNECT_TIMEOUT)) is not None:
        raise TransientStorageError(
            f"{where}: region '{r.name}' is unreachable ({exc.strerror or exc}). Try again when it is back, or use "
            "another region."
        ) from None

"""Datasets versioned by DVC, with one DVC S3 remote per region.

A dataset in ``llmdr.yaml`` is a file (or folder) tracked by DVC: ``<path>.dvc`` sits next to it, inside a git+DVC
repository (the nearest parent folder holding ``.dvc/``). Its version is the DVC md5 recorded in that file. llmdr
pushes the version to every region's remote (``s3://<bucket>/<prefix>/dvc``, remote name ``llmdr-<region>``) and
brings it back from any region, re-hashing what came back before it reaches the workspace.

DVC runs in this process through ``dvc.repo.Repo`` (imported lazily): one import (~0.8 s), then each push, status or
fetch costs 0.1-0.4 s instead of 2-3.5 s for a ``dvc`` subprocess that re-imports everything; keys travel in memory
(a per-call config override), never on a command line. DVC's import-time side effects (console log handlers,
colorama wrapping ``sys.stdout``/``sys.stderr``) are undone once in ``_tame_dvc()``; its log records are captured per call,
stripped of secrets and re-logged here.

Credentials are written only to ``.dvc/config.local`` (git-ignored by DVC, mode 0600) by ``configure_remotes``, for
people running ``dvc`` by hand; llmdr's own calls do not need that file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from llmdr.config import Config, Dataset, Region
from llmdr.errors import (
    AccessDenied,
    BucketNotFound,
    ConfigError,
    IntegrityError,
    LlmdrError,
    ObjectNotFound,
    StorageError,
    TargetNotEmpty,
    TransientStorageError,
    UnsafePathError,
    UsageError,
    is_retriable,
)
from llmdr.storage.credentials import Keys, resolve_keys

log = logging.getLogger(__name__)

REMOTE_PREFIX = "llmdr-"
REMOTE_DIR = "dvc"  # the remote's folder under the region's key prefix
CONNECT_TIMEOUT = 5  # seconds, for DVC's S3 client (its default waits much longer on a dead endpoint)
READ_TIMEOUT = 60
_DVC_LOGGERS = ("dvc", "dvc_data", "dvc_objects")
_CHUNK = 1 << 20


class DatasetNotTracked(ConfigError):
    """The dataset is not under DVC: no git+DVC repository above it, no ``.dvc`` file, or one llmdr cannot read."""


class DatasetChanged(UsageError):
    """The data in the workspace is not the version its ``.dvc`` file records (changed or deleted since ``dvc add``)."""


@dataclass
class DatasetVersion:
    """One DVC-recorded version of a dataset. ``md5``/``size``/``nfiles`` come from the ``.dvc`` file's ``outs[0]``;
    ``path`` is relative to the repository root ``repo``; ``commit`` is the git commit holding this ``.dvc`` file
    (None when the file is uncommitted or modified, or the repository has no git)."""

    name: str
    path: str
    md5: str
    size: int
    nfiles: int
    repo: str
    commit: str | None = None

    @property
    def is_dir(self) -> bool:
        return self.md5.endswith(".dir")

    def to_json(self) -> dict:
        return asdict(self)


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


# --- remotes ---------------------------------------------------------------------------------------------------------
def remote_name(region: Region) -> str:
    return REMOTE_PREFIX + region.name


def remote_url(region: Region) -> str:
    prefix = region.prefix.strip("/")
    return f"s3://{region.bucket}/{prefix + '/' if prefix else ''}{REMOTE_DIR}"


def _remote_public(region: Region) -> dict[str, Any]:
    """What goes into the tracked ``.dvc/config``: where the remote is, never who may use it."""
    conf: dict[str, Any] = {"url": remote_url(region), "region": region.s3_region}
    if region.endpoint:
        conf["endpointurl"] = region.endpoint
    return conf


def _remote_secret(keys: Keys) -> dict[str, Any]:
    conf = {"access_key_id": keys.access_key_id, "secret_access_key": keys.secret_access_key}
    if keys.session_token:
        conf["session_token"] = keys.session_token
    return conf


def configure_remotes(cfg: Config, repo: Path) -> list[str]:
    """One DVC remote per region in ``repo``: URL, endpoint and S3 region in ``.dvc/config`` (commit it), keys in
    ``.dvc/config.local`` (git-ignored, mode 0600). Sets the default remote to the primary's when none is set.
    Idempotent; returns the remote names, primary first."""
    root = Path(repo).absolute()
    if not (root / ".dvc").is_dir():
        raise DatasetNotTracked(f"{root} is not a DVC repository (no .dvc/ folder): run `dvc init` there first.")
    regions = _ordered(cfg)
    keys = {r.name: resolve_keys(cfg, r) for r in regions}
    secrets = _secrets(keys.values())
    with _locked(root), _dvc_call(secrets) as records:
        try:
            from dvc.repo import Repo

            with Repo(str(root)) as dvc_repo:
                with dvc_repo.config.edit("repo") as conf:
                    for r in regions:
                        current = dict(conf["remote"].get(remote_name(r), {}))
                        current.update(_remote_public(r))
                        conf["remote"][remote_name(r)] = current
                    if not conf["core"].get("remote"):
                        conf["core"]["remote"] = remote_name(cfg.primary)
                with dvc_repo.config.edit("local") as conf:
                    for r in regions:
                        current = dict(conf["remote"].get(remote_name(r), {}))
                        for k in ("access_key_id", "secret_access_key", "session_token"):
                            current.pop(k, None)
                        current.update(_remote_secret(keys[r.name]))
                        conf["remote"][remote_name(r)] = current
        except Exception as exc:
            raise _map_error(exc, secrets, records, f"configuring DVC remotes in {root}") from None
    local = root / ".dvc" / "config.local"
    if local.exists():
        os.chmod(local, 0o600)
    names = [remote_name(r) for r in regions]
    log.info("DVC remotes %s configured in %s", ", ".join(names), root)
    return names


# --- versions ----------------------------------------------------------------------------------------------------------
def version(cfg: Config, ds: Dataset, *, check_workspace: bool = True) -> DatasetVersion:
    """The version recorded in ``<path>.dvc``. With ``check_workspace`` (the default) refuse with
    ``DatasetChanged`` when the data differs from that record (changed or deleted since ``dvc add``): snapshotting a
    version that is not the data on disk would record a lie. ``check_workspace=False`` just reads the record
    (e.g. before pulling the data back)."""
    data, root, dvcfile = _locate(cfg, ds)
    ver = _read_dvcfile(ds, data, root, dvcfile)
    if check_workspace:
        with _locked(root), _dvc_call(()) as records:
            try:
                from dvc.repo import Repo

                with Repo(str(root)) as dvc_repo:
                    status = dvc_repo.status(targets=[str(dvcfile)])
            except Exception as exc:
                raise _map_error(exc, (), records, f"dataset '{ds.name}': checking {data} against {dvcfile.name}",
                                 local=True) from None
        changes = _changed_outs(status)
        if not data.exists():  # DVC reports a missing file as 'not in cache' when its cache lacks it too
            changes.append("deleted")
        if changes:
            how = ", ".join(sorted(set(changes)))
            if "deleted" in changes:
                hint = (f"bring it back with `dvc checkout {ver.path}.dvc` in {root} (from the local cache) or "
                        "from a region (llmdr's dataset pull)")
            else:
                hint = (f"record the new version with `dvc add {ver.path}` in {root} (or llmdr's track) and commit "
                        f"{ver.path}.dvc, or put the recorded data back with `dvc checkout {ver.path}.dvc`")
            raise DatasetChanged(
                f"dataset '{ds.name}': {data} is {how} since `dvc add` (recorded md5 {ver.md5} in {dvcfile}); {hint}."
            )
    ver.commit = _git_commit(root, dvcfile)
    return ver


def track(cfg: Config, ds: Dataset) -> DatasetVersion:
    """``dvc add`` the dataset: hash it into the local DVC cache and (re)write ``<path>.dvc``. The ``.dvc`` file and
    the ``.gitignore`` DVC maintains are staged in git (autostage, for this call only); committing stays with the
    user. Returns the new version."""
    data = cfg.dataset_path(ds)
    if not data.exists():
        raise DatasetNotTracked(f"dataset '{ds.name}': {data} does not exist; fix `path:` under datasets: in "
                                f"{cfg.source_file or 'llmdr.yaml'} or create the data first.")
    root = _find_root(data, what=f"dataset '{ds.name}' ({data})")
    t0 = time.monotonic()
    with _locked(root), _dvc_call(()) as records:
        try:
            from dvc.repo import Repo

            with Repo(str(root), config={"core": {"autostage": _has_git(root)}}) as dvc_repo:
                dvc_repo.add(str(data))
        except Exception as exc:
            raise _map_error(exc, (), records, f"dataset '{ds.name}': `dvc add {data}`", local=True) from None
    ver = version(cfg, ds, check_workspace=False)
    log.info("dataset %s tracked: md5 %s (%d bytes, %.2fs)", ds.name, ver.md5, ver.size, time.monotonic() - t0)
    return ver


# --- push / presence -------------------------------------------------------------------------------------------------
def push(cfg: Config, ds: Dataset, region: str) -> PushResult:
    """Push the recorded version (from the local DVC cache) to ``region``'s remote, then check the region holds it.
    Pushing a version the region has already uploads nothing (``already=True``)."""
    r = cfg.region(region)
    ver = version(cfg, ds)
    _, root, dvcfile = _locate(cfg, ds)
    keys = resolve_keys(cfg, r)
    secrets = _secrets([keys])
    where = f"dataset '{ds.name}': pushing md5 {ver.md5} to region '{r.name}' ({remote_url(r)} at {_at(r)})"
    t0 = time.monotonic()
    if _reachable_and_present(cfg, ds, r, ver, where):
        res = PushResult(ds.name, r.name, remote_url(r), ver.md5, 0, True, round(time.monotonic() - t0, 3))
        log.info("dataset %s md5 %s -> region %s: already there (%.2fs)", ds.name, ver.md5, r.name, res.duration_s)
        return res
    with _locked(root), _dvc_call(secrets) as records:
        try:
            from dvc.repo import Repo

            with Repo(str(root), config=_override(r, keys)) as dvc_repo:
                pushed = int(dvc_repo.push(targets=[str(dvcfile)], remote=remote_name(r)) or 0)
        except Exception as exc:
            raise _map_error(exc, secrets, records, where) from None
    if not present(cfg, ds, r.name, ver=ver):
        missing = _missing_note(records)
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
    for r in _ordered(cfg):
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
    data, root, dvcfile = _locate(cfg, ds)
    ver = _read_dvcfile(ds, data, root, dvcfile)
    if expect_md5 and expect_md5 != ver.md5:
        raise DatasetChanged(
            f"dataset '{ds.name}': {dvcfile} records md5 {ver.md5}, not the expected {expect_md5}; check out the "
            f"matching .dvc file first (e.g. `git checkout <commit> -- {ver.path}.dvc` in {root})."
        )
    dest = Path(target) if target is not None else data
    keys = resolve_keys(cfg, r)
    secrets = _secrets([keys])
    where = f"dataset '{ds.name}': pulling md5 {ver.md5} from region '{r.name}' ({remote_url(r)} at {_at(r)})"
    if not _reachable_and_present(cfg, ds, r, ver, where):
        raise ObjectNotFound(
            f"{where}: the region's remote does not hold this version. Push the dataset there first (llmdr's dataset "
            "push), or pull from another region."
        )
    t0 = time.monotonic()
    tmp_root = root / ".dvc" / "tmp"
    tmp_root.mkdir(parents=True, exist_ok=True)
    with _locked(root), tempfile.TemporaryDirectory(prefix="llmdr-pull-", dir=tmp_root) as tmp:
        with _dvc_call(secrets) as records:
            try:
                from dvc.repo import Repo

                conf = _override(r, keys)
                conf["cache"] = {"dir": str(Path(tmp) / "cache")}
                with Repo(str(root), config=conf) as dvc_repo:
                    fetched = dvc_repo.fetch(targets=[str(dvcfile)], remote=remote_name(r))
                    odb = dvc_repo.cache.local
                    objects = _verify_fetched(odb, ver, ds, r, where)
            except LlmdrError:
                raise
            except Exception as exc:
                raise _map_error(exc, secrets, records, where) from None
        _check_destination(ds, ver, objects, dest, force)
        _materialize(objects, ver, dest)
        _seed_cache(root, objects)
    log.info("dataset %s md5 %s <- region %s: %d object(s) fetched, verified, written to %s (%.2fs)", ds.name,
             ver.md5, r.name, fetched, dest, time.monotonic() - t0)
    ver.commit = _git_commit(root, dvcfile)
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
        tmp = dest.with_name(f".{dest.name}.llmdr-tmp")
        try:
            shutil.copyfile(src, tmp)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.llmdr-", dir=dest.parent))
    try:
        for rel, (_, src) in objects.items():
            if rel == "/.dir":
                continue
            out = staging / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, out)
        old = None
        if dest.exists() or dest.is_symlink():
            old = dest.with_name(f".{dest.name}.llmdr-old-{os.getpid()}")
            os.replace(dest, old)
        os.replace(staging, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _seed_cache(root: Path, objects: dict[str, tuple[str, Path]]) -> None:
    """Copy verified objects into the repository's own DVC cache when it lacks them (read-only, as DVC keeps them)."""
    with _dvc_call(()):
        from dvc.repo import Repo

        with Repo(str(root)) as dvc_repo:
            odb = dvc_repo.cache.local
            for md5, src in objects.values():
                dst = Path(odb.oid_to_path(md5))
                if dst.exists():
                    continue
                dst.parent.mkdir(parents=True, exist_ok=True)
                tmp = dst.with_name(f".{dst.name}.llmdr-tmp")
                shutil.copyfile(src, tmp)
                os.chmod(tmp, 0o444)
                os.replace(tmp, dst)


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


# --- helpers -------------------------------------------------------------------------------------------------------------
def _ordered(cfg: Config) -> list[Region]:
    return [cfg.primary, *[r for r in cfg.regions if r.role != "primary"]]


def _object_key(md5: str) -> str:
    return f"{REMOTE_DIR}/files/md5/{md5[:2]}/{md5[2:]}"


def _at(r: Region) -> str:
    return r.endpoint or f"AWS {r.s3_region}"


def _find_root(start: Path, *, what: str) -> Path:
    for d in [start.parent, *start.parent.parents]:
        if (d / ".dvc").is_dir():
            return d
    raise DatasetNotTracked(
        f"{what}: no DVC repository above it (no folder with .dvc/ among its parents). Run `git init && dvc init` "
        "in the project holding the data, then `dvc add` the dataset and commit its .dvc file."
    )


def _locate(cfg: Config, ds: Dataset) -> tuple[Path, Path, Path]:
    data = cfg.dataset_path(ds).absolute()
    root = _find_root(data, what=f"dataset '{ds.name}' ({data})")
    dvcfile = data.with_name(data.name + ".dvc")
    if not dvcfile.exists():
        raise DatasetNotTracked(
            f"dataset '{ds.name}': {dvcfile} does not exist, so {data} is not tracked by DVC. Run "
            f"`dvc add {data.relative_to(root).as_posix()}` in {root} (or llmdr's track) and commit {dvcfile.name}."
        )
    return data, root, dvcfile


def _read_dvcfile(ds: Dataset, data: Path, root: Path, dvcfile: Path) -> DatasetVersion:
    try:
        doc = yaml.safe_load(dvcfile.read_text(encoding="utf-8"))
        out = doc["outs"][0]
        md5 = str(out["md5"])
    except (yaml.YAMLError, KeyError, IndexError, TypeError) as exc:
        raise DatasetNotTracked(f"dataset '{ds.name}': {dvcfile} is not a DVC file with outs[0].md5 ({exc!r}); "
                                f"re-create it with `dvc add {data.relative_to(root).as_posix()}` in {root}.") from None
    if out.get("hash") != "md5":
        raise DatasetNotTracked(
            f"dataset '{ds.name}': {dvcfile} was written by DVC 2 (md5 of text with line endings normalised, older "
            f"remote layout); llmdr needs DVC 3 records. Re-add it with DVC 3 (`dvc add "
            f"{data.relative_to(root).as_posix()}` or `dvc cache migrate --dvc-files` in {root}) and commit."
        )
    nfiles = int(out.get("nfiles", 1))
    return DatasetVersion(ds.name, data.relative_to(root).as_posix(), md5, int(out.get("size", 0)), nfiles,
                          str(root))


def _changed_outs(status: dict) -> list[str]:
    """States of outputs that differ from the record; 'not in cache' is not a difference in the data."""
    found = []
    for entries in status.values():
        for entry in entries:
            if isinstance(entry, dict):
                for state in entry.get("changed outs", {}).values():
                    if state in ("modified", "deleted", "new"):
                        found.append(state)
            elif entry in ("changed checksum", "always changed"):
                found.append("modified")
    return found


def _has_git(root: Path) -> bool:
    return any((d / ".git").exists() for d in [root, *root.parents])


def _git_commit(root: Path, dvcfile: Path) -> str | None:
    """The last commit of ``dvcfile`` when the workspace file is exactly that committed version."""
    if not _has_git(root):
        return None
    rel = dvcfile.relative_to(root).as_posix()
    try:
        st = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", rel], capture_output=True,
                            text=True, timeout=30)
        if st.returncode != 0 or st.stdout.strip():
            return None
        lg = subprocess.run(["git", "-C", str(root), "log", "-1", "--format=%H", "--", rel], capture_output=True,
                            text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if lg.returncode != 0:
        return None
    return lg.stdout.strip() or None


def _override(r: Region, keys: Keys) -> dict[str, Any]:
    """The remote as llmdr's calls see it: from the current config and keys, whatever ``.dvc/config`` says."""
    conf = {**_remote_public(r), **_remote_secret(keys), "connect_timeout": CONNECT_TIMEOUT,
            "read_timeout": READ_TIMEOUT}
    return {"remote": {remote_name(r): conf}}


def _preflight(r: Region, where: str) -> None:
    """Fail in milliseconds on an endpoint that refuses connections (DVC's S3 client retries for ~14 s)."""
    from llmdr.common.net import unreachable

    if r.endpoint and (exc := unreachable(r.endpoint, CONNECT_TIMEOUT)) is not None:
        raise TransientStorageError(
            f"{where}: region '{r.name}' is unreachable ({exc.strerror or exc}). Try again when it is back, or use "
            "another region."
        ) from None


def _secrets(keys: Any) -> tuple[str, ...]:
    out: list[str] = []
    for k in keys:
        out += [s for s in (k.access_key_id, k.secret_access_key, k.session_token) if s]
    return tuple(out)


def _redact(text: str, secrets: tuple[str, ...] | list[str]) -> str:
    for s in sorted(secrets, key=len, reverse=True):
        if s:
            text = text.replace(s, "***")
    return text


_import_lock = threading.Lock()
_imported = False
_repo_locks: dict[str, threading.Lock] = {}


def _tame_dvc() -> None:
    """Import DVC once and undo what its import does to the host process: ``dvc.logger.setup()`` wraps
    ``sys.stdout``/``sys.stderr`` in colorama (ANSI stripping when not a TTY) and adds console handlers to the dvc
    loggers. Their records are captured per call instead (``_dvc_call``); WARNING also hides progress bars."""
    global _imported
    with _import_lock:
        if _imported:
            return
        first = "dvc" not in sys.modules
        out, err = sys.stdout, sys.stderr
        import dvc.repo  # noqa: F401

        if first:
            sys.stdout, sys.stderr = out, err
        for name in _DVC_LOGGERS:
            lg = logging.getLogger(name)
            for h in list(lg.handlers):
                if type(h).__module__ == "dvc.logger":
                    lg.removeHandler(h)
            lg.setLevel(logging.WARNING)
            lg.propagate = False
        _imported = True


class _Capture(logging.Handler):
    def __init__(self, secrets: tuple[str, ...]) -> None:
        super().__init__(logging.WARNING)
        self.secrets = secrets
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:  # DVC logs the reason as the record's exception
                msg += " - " + " | ".join(dict.fromkeys(str(e) for e in _chain(record.exc_info[1]) if str(e)))
            msg = _redact(msg, self.secrets)
        except Exception:  # noqa: BLE001 - a broken log record must not break the operation
            return
        self.messages.append(msg)
        log.debug("dvc %s: %s", record.levelname.lower(), msg)  # the typed error carries what matters


@contextmanager
def _dvc_call(secrets: tuple[str, ...] | list[str]) -> Iterator[list[str]]:
    """Run DVC with its warnings and errors captured (redacted) into the yielded list and re-logged here."""
    _tame_dvc()
    handler = _Capture(tuple(secrets))
    loggers = [logging.getLogger(n) for n in _DVC_LOGGERS]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        yield handler.messages
    finally:
        for lg in loggers:
            lg.removeHandler(handler)


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    """DVC locks the repository with a lock file and fails at once on contention; serialise this process's calls."""
    with _import_lock:
        lock = _repo_locks.setdefault(str(root), threading.Lock())
    with lock:
        yield


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


_DENIED = ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "(403)", "Forbidden", "ExpiredToken",
           "InvalidToken")


def _missing_note(records: list[str]) -> str:
    missing = [m for m in records if "do not exist" in m or "Missing cache files" in m]
    return f" (DVC: {missing[0].splitlines()[0]})" if missing else ""


def _map_error(exc: BaseException, secrets: tuple[str, ...] | list[str], records: list[str], where: str, *,
               local: bool = False) -> LlmdrError:
    """DVC's and the S3 client's exceptions as llmdr's typed errors, with every secret removed from the text.
    ``local``: an operation on the repository alone (add, status), where DVC's refusal is advice to the user."""
    if isinstance(exc, LlmdrError):
        return exc
    chain = list(_chain(exc))
    text = " | ".join(dict.fromkeys(f"{type(e).__name__}: {e}" for e in chain))
    detail = _redact(" / ".join([text, *records[-3:]]), secrets)
    names = {type(e).__name__ for e in chain}
    blob = text + " " + " ".join(records)
    if "LockError" in names:
        return TransientStorageError(f"{where}: the DVC repository is locked by another dvc command ({detail}); try "
                                     "again when it has finished.")
    not_tracked = {"NotDvcRepoError", "OutputNotFoundError", "StageFileDoesNotExistError", "StageNotFound",
                   "NoOutputOrStageError"}
    if names & not_tracked:
        return DatasetNotTracked(f"{where}: {detail}")
    if local:  # nothing remote was involved: a PermissionError here is the local disk's, not a region's
        return UsageError(f"{where}: DVC refused: {_redact(str(exc).strip(), secrets)}")
    if any(isinstance(e, PermissionError) for e in chain) or any(s in blob for s in _DENIED):
        return AccessDenied(f"{where}: the region refused the credentials ({detail}). Check the region's "
                            "credentials (environment variables named in llmdr.yaml) and its bucket permissions.")
    if "NoSuchBucket" in blob or "bucket does not exist" in blob:
        return BucketNotFound(f"{where}: the bucket does not exist ({detail}); create it (`llmdr stack up` does for "
                              "local regions) or fix bucket: in llmdr.yaml.")
    transient = ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ClientConnectorError",
                 "ServerDisconnectedError", "TimeoutError", "ConnectionRefusedError", "ConnectionResetError")
    if names & set(transient) or any(s in blob for s in ("SlowDown", "ServiceUnavailable", "InternalError", "(503)",
                                                           "(500)")):
        return TransientStorageError(f"{where}: the region did not answer ({detail}); try again later or use "
                                     "another region.")
    if any(type(e).__module__.startswith("dvc") for e in chain):
        return StorageError(f"{where}: DVC failed: {detail}")
    return StorageError(f"{where}: {detail}")

"""Datasets as DVC records them: the git+DVC repository holding a dataset, the version its ``.dvc`` file records, and
one DVC S3 remote per region.

A dataset in ``llmdr.yaml`` is a file (or folder) tracked by DVC: ``<path>.dvc`` sits next to it, inside a git+DVC
repository (the nearest parent folder holding ``.dvc/``). Its version is the DVC md5 recorded in that file. Each region
has a remote ``llmdr-<region>`` at ``s3://<bucket>/<prefix>/dvc``; :mod:`llmdr.lineage.datasets` pushes versions there
and pulls them back.

Credentials are written only to ``.dvc/config.local`` (git-ignored by DVC, mode 0600) by :func:`configure_remotes`, for
people running ``dvc`` by hand; llmdr's own calls do not need that file (:func:`remote_override` passes the keys in
memory).
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from llmdr.common.process import child_env
from llmdr.config import Config, Dataset, Region
from llmdr.errors import UsageError
from llmdr.lineage.dvcrun import DatasetNotTracked, dvc_call, locked, map_error, secret_values
from llmdr.storage.credentials import Keys, resolve_keys

log = logging.getLogger(__name__)

REMOTE_PREFIX = "llmdr-"
REMOTE_DIR = "dvc"  # the remote's folder under the region's key prefix
CONNECT_TIMEOUT = 5  # seconds, for DVC's S3 client (its default waits much longer on a dead endpoint)
READ_TIMEOUT = 60


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


# --- remotes ---------------------------------------------------------------------------------------------------------
def remote_name(region: Region) -> str:
    return REMOTE_PREFIX + region.name


def remote_url(region: Region) -> str:
    prefix = region.prefix.strip("/")
    return f"s3://{region.bucket}/{prefix + '/' if prefix else ''}{REMOTE_DIR}"


def remote_urls(cfg: Config) -> dict[str, str]:
    """Every region's remote URL, by region name (a dataset record's ``remotes``)."""
    return {r.name: remote_url(r) for r in cfg.regions}


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
    regions = regions_in_order(cfg)
    keys = {r.name: resolve_keys(cfg, r) for r in regions}
    secrets = secret_values(keys.values())
    with locked(root), dvc_call(secrets) as records:
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
            raise map_error(exc, secrets, records, f"configuring DVC remotes in {root}") from None
    local = root / ".dvc" / "config.local"
    if local.exists():
        os.chmod(local, 0o600)
    names = [remote_name(r) for r in regions]
    log.info("DVC remotes %s configured in %s", ", ".join(names), root)
    return names


def remote_override(r: Region, keys: Keys) -> dict[str, Any]:
    """The remote as llmdr's calls see it: from the current config and keys, whatever ``.dvc/config`` says."""
    conf = {**_remote_public(r), **_remote_secret(keys), "connect_timeout": CONNECT_TIMEOUT,
            "read_timeout": READ_TIMEOUT}
    return {"remote": {remote_name(r): conf}}


# --- versions ----------------------------------------------------------------------------------------------------------
def version(cfg: Config, ds: Dataset, *, check_workspace: bool = True) -> DatasetVersion:
    """The version recorded in ``<path>.dvc``. With ``check_workspace`` (the default) refuse with
    ``DatasetChanged`` when the data differs from that record (changed or deleted since ``dvc add``): snapshotting a
    version that is not the data on disk would record a lie. ``check_workspace=False`` just reads the record
    (e.g. before pulling the data back)."""
    data, root, dvcfile = locate(cfg, ds)
    ver = read_dvcfile(ds, data, root, dvcfile)
    if check_workspace:
        with locked(root), dvc_call(()) as records:
            try:
                from dvc.repo import Repo

                with Repo(str(root)) as dvc_repo:
                    status = dvc_repo.status(targets=[str(dvcfile)])
            except Exception as exc:
                raise map_error(exc, (), records, f"dataset '{ds.name}': checking {data} against {dvcfile.name}",
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
    ver.commit = git_commit(root, dvcfile)
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
    with locked(root), dvc_call(()) as records:
        try:
            from dvc.repo import Repo

            with Repo(str(root), config={"core": {"autostage": _has_git(root)}}) as dvc_repo:
                dvc_repo.add(str(data))
        except Exception as exc:
            raise map_error(exc, (), records, f"dataset '{ds.name}': `dvc add {data}`", local=True) from None
    ver = version(cfg, ds, check_workspace=False)
    log.info("dataset %s tracked: md5 %s (%d bytes, %.2fs)", ds.name, ver.md5, ver.size, time.monotonic() - t0)
    return ver


# --- the repository ------------------------------------------------------------------------------------------------
def dataset_named(cfg: Config, name: str) -> Dataset:
    """The dataset ``name`` of the config; ``UsageError`` naming the known ones otherwise."""
    for d in cfg.datasets:
        if d.name == name:
            return d
    raise UsageError(f"no dataset named {name!r} in {cfg.source_file}; known: "
                     f"{', '.join(d.name for d in cfg.datasets) or 'none (add a datasets: section)'}")


def regions_in_order(cfg: Config) -> list[Region]:
    """The primary first, then the other regions in config order."""
    return [cfg.primary, *[r for r in cfg.regions if r.role != "primary"]]


def _find_root(start: Path, *, what: str) -> Path:
    for d in [start.parent, *start.parent.parents]:
        if (d / ".dvc").is_dir():
            return d
    raise DatasetNotTracked(
        f"{what}: no DVC repository above it (no folder with .dvc/ among its parents). Run `git init && dvc init` "
        "in the project holding the data, then `dvc add` the dataset and commit its .dvc file."
    )


def locate(cfg: Config, ds: Dataset) -> tuple[Path, Path, Path]:
    """``(data, repository root, .dvc file)`` of a dataset; ``DatasetNotTracked`` when it is not under DVC."""
    data = cfg.dataset_path(ds).absolute()
    root = _find_root(data, what=f"dataset '{ds.name}' ({data})")
    dvcfile = data.with_name(data.name + ".dvc")
    if not dvcfile.exists():
        raise DatasetNotTracked(
            f"dataset '{ds.name}': {dvcfile} does not exist, so {data} is not tracked by DVC. Run "
            f"`dvc add {data.relative_to(root).as_posix()}` in {root} (or llmdr's track) and commit {dvcfile.name}."
        )
    return data, root, dvcfile


def read_dvcfile(ds: Dataset, data: Path, root: Path, dvcfile: Path) -> DatasetVersion:
    """The version a DVC 3 ``.dvc`` file records (without its git commit)."""
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


def git_commit(root: Path, dvcfile: Path) -> str | None:
    """The last commit of ``dvcfile`` when the workspace file is exactly that committed version."""
    if not _has_git(root):
        return None
    rel = dvcfile.relative_to(root).as_posix()
    # git only reads here: no command the repository's own .git/config names runs (core.fsmonitor), and git gets
    # the allow-listed environment (its own GIT_* settings kept), never the regions' keys
    git = ["git", "-c", "core.fsmonitor=false", "-C", str(root)]
    env = child_env(pass_env=[k for k in os.environ if k.startswith("GIT_")])
    try:
        st = subprocess.run([*git, "status", "--porcelain", "--", rel], capture_output=True, text=True, timeout=30,
                            env=env)
        if st.returncode != 0 or st.stdout.strip():
            return None
        lg = subprocess.run([*git, "log", "-1", "--format=%H", "--", rel], capture_output=True, text=True,
                            timeout=30, env=env)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if lg.returncode != 0:
        return None
    return lg.stdout.strip() or None

"""Datasets with DVC against real SeaweedFS regions and a real git+DVC repository made here (``git init``,
``dvc init``, ``dvc add``, ``git commit``): remotes per region without secrets in git, push to every region, pull back
from the secondary while the primary's server is stopped, a corrupted copy refused, stale data refused."""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from llmdr.config import Config, Dataset
from llmdr.errors import AccessDenied, IntegrityError, ObjectNotFound, TargetNotEmpty, TransientStorageError, UsageError
from llmdr.lineage.datasets import (
    DatasetChanged,
    DatasetNotTracked,
    configure_remotes,
    md5_file,
    present,
    pull,
    push,
    push_all,
    remote_name,
    remote_url,
    track,
    version,
)
from llmdr.storage.credentials import read_env_file
from llmdr.storage.factory import open_region
from tests.support.config import two_region_yaml, write_config
from tests.support.ports import free_base_port

pytestmark = pytest.mark.s3

DVC = str(Path(sys.executable).parent / "dvc")
GIT_ID = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
          "GIT_COMMITTER_EMAIL": "t@example.com"}

DATASETS = """\
datasets:
  - {name: train, path: data/train.csv}
  - {name: images, path: data/images}
"""


def run(*args: str, cwd: Path) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", **GIT_ID}
    res = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"{args}: {res.stdout}\n{res.stderr}"
    return res.stdout


def write_csv(path: Path, rows: int, *, label_offset: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "text", "label"])
        for i in range(rows):
            w.writerow([i, f"example sentence number {i}", (i + label_offset) % 3])


def project_config(root: Path, p: int, s: int, state: Path, *, env: str = "LLMDR_TEST", prefix: str | None = None) -> Config:
    text = two_region_yaml(p, s, prefix=prefix or f"t-{uuid.uuid4().hex[:10]}", keys=(f"{env}_P", f"{env}_S"),
                           local=True, extra=DATASETS, state_dir=state)
    return write_config(root / "llmdr.yaml", text)


def secrets_of(cfg: Config) -> list[str]:
    return [v for k, v in read_env_file(cfg.state_path / "local.env").items() if k.endswith(("_AK", "_SK"))]


def ds(cfg: Config, name: str = "train"):
    return next(d for d in cfg.datasets if d.name == name)


@pytest.fixture(scope="module", autouse=True)
def dvc_site_cache(tmp_path_factory):
    """DVC keeps per-repository indexes under /var/tmp/dvc; keep this module's many throwaway repositories' ones in
    its own temporary folder (for the in-process calls and the `dvc` commands alike)."""
    old = os.environ.get("DVC_SITE_CACHE_DIR")
    os.environ["DVC_SITE_CACHE_DIR"] = str(tmp_path_factory.mktemp("dvc-site-cache"))
    yield
    if old is None:
        os.environ.pop("DVC_SITE_CACHE_DIR", None)
    else:
        os.environ["DVC_SITE_CACHE_DIR"] = old


@pytest.fixture(scope="module")
def template_repo(tmp_path_factory) -> Path:
    """A git+DVC repository with one CSV of 300 rows added and committed, made by the real commands."""
    root = tmp_path_factory.mktemp("dvc-template") / "project"
    root.mkdir()
    run("git", "init", "-q", cwd=root)
    run(DVC, "init", "-q", cwd=root)
    write_csv(root / "data" / "train.csv", 300)
    run(DVC, "add", "-q", "data/train.csv", cwd=root)
    run("git", "add", "-A", cwd=root)
    run("git", "commit", "-q", "-m", "dataset v1", cwd=root)
    return root


@pytest.fixture
def project(stack, tmp_path, template_repo) -> Config:
    """The template repository copied for this test, with an llmdr.yaml on the session's regions (fresh prefix)."""
    root = tmp_path / "project"
    shutil.copytree(template_repo, root, symlinks=True)
    state = tmp_path / ".llmdr"
    state.mkdir()
    shutil.copy(stack.state_path / "local.env", state / "local.env")
    return project_config(root, stack.primary.port, stack.secondaries[0].port, state)


def tracked_text(root: Path) -> str:
    """Every git-tracked file's content plus every committed version of every file."""
    names = run("git", "ls-files", "-z", cwd=root).split("\0")
    text = "".join((root / n).read_text(errors="replace") for n in names if n and (root / n).is_file())
    return text + run("git", "log", "-p", "--all", cwd=root)


def test_configure_remotes_keeps_keys_out_of_git(project):
    root = project.base_dir
    names = configure_remotes(project, root)
    assert names == ["llmdr-primary", "llmdr-secondary"]
    assert configure_remotes(project, root) == names  # idempotent
    run("git", "add", "-A", cwd=root)
    run("git", "commit", "-q", "-m", "llmdr remotes", cwd=root)

    listed = run(DVC, "remote", "list", cwd=root)
    for r in project.regions:
        assert remote_name(r) in listed and remote_url(r) in listed
    committed = run("git", "show", "HEAD:.dvc/config", cwd=root)
    assert f"endpointurl = {project.primary.endpoint}" in committed
    assert f"url = s3://llmdr-secondary/{project.primary.prefix}/dvc" in committed
    assert "remote = llmdr-primary" in committed  # the default remote for plain `dvc push`

    secrets = secrets_of(project)
    assert len(secrets) == 4
    text = tracked_text(root)
    assert "config.local" not in run("git", "ls-files", cwd=root)
    assert not [s for s in secrets if s in text]
    local = (root / ".dvc" / "config.local").read_text()
    assert all(s in local for s in secrets)
    assert (root / ".dvc" / "config.local").stat().st_mode & 0o077 == 0
    run("git", "check-ignore", "-q", ".dvc/config.local", cwd=root)


def test_push_all_reaches_both_regions_and_repeats_as_noop(project):
    train = ds(project)
    ver = version(project, train)
    assert ver.md5 == md5_file(project.base_dir / "data" / "train.csv")
    assert ver.path == "data/train.csv" and ver.nfiles == 1 and ver.size > 5000
    assert ver.commit == run("git", "rev-parse", "HEAD", cwd=project.base_dir).strip()
    assert not present(project, train, "primary") and not present(project, train, "secondary")

    first = push_all(project, train)
    assert [(r.region, r.pushed, r.already, r.md5) for r in first] == [("primary", 1, False, ver.md5),
                                                                        ("secondary", 1, False, ver.md5)]
    key = f"dvc/files/md5/{ver.md5[:2]}/{ver.md5[2:]}"
    for r in project.regions:
        listed = [(b.key, b.size) for b in open_region(project, r).list("dvc/")]
        assert listed == [(key, ver.size)], r.name  # DVC 3's layout under the region's prefix, nothing else
        assert present(project, train, r.name)

    again = push_all(project, train)
    assert [(r.region, r.pushed, r.already) for r in again] == [("primary", 0, True), ("secondary", 0, True)]


def test_pull_from_secondary_while_primary_is_down(tmp_path, template_repo):
    """Own pair of regions (the session's stay up): push to both, stop the primary's server, then a fresh clone
    (a new machine) gets the data back from the secondary, byte-identical and checked."""
    from llmdr.devstack.regions import start_region, stop_region

    p = free_base_port()
    s = free_base_port()
    while abs(s - p) < 10 or abs(s - p) == 10000:
        s = free_base_port()
    state = tmp_path / ".llmdr"
    src = tmp_path / "project"
    shutil.copytree(template_repo, src, symlinks=True)
    cfg = project_config(src, p, s, state, env="LLMDR_DS")
    try:
        for r in cfg.regions:
            start_region(cfg, r)
        train = ds(cfg)
        assert [res.region for res in push_all(cfg, train)] == ["primary", "secondary"]
        stop_region(cfg, cfg.primary)

        clone = tmp_path / "clone"
        run("git", "clone", "-q", str(src), str(clone), cwd=tmp_path)
        ccfg = project_config(clone, p, s, state, env="LLMDR_DS", prefix=cfg.primary.prefix)
        assert not (clone / "data" / "train.csv").exists()
        with pytest.raises(DatasetChanged, match="deleted"):
            version(ccfg, train)

        with pytest.raises(TransientStorageError) as down:
            pull(ccfg, train, "primary")
        assert "region 'primary'" in str(down.value) and "unreachable" in str(down.value)

        got = pull(ccfg, train, "secondary", expect_md5=version(cfg, train).md5)
        data = clone / "data" / "train.csv"
        assert data.read_bytes() == (src / "data" / "train.csv").read_bytes()
        assert got.md5 == hashlib.md5(data.read_bytes()).hexdigest()
        assert version(ccfg, train).md5 == got.md5  # the clone's workspace now matches its record
        assert "up to date" in run(DVC, "status", cwd=clone)  # DVC agrees, its cache seeded too
    finally:
        for r in cfg.regions:
            stop_region(cfg, r)


def test_corrupt_copy_in_a_region_fails_pull_and_leaves_data_alone(project, tmp_path):
    train = ds(project)
    ver = version(project, train)
    push_all(project, train)
    store = open_region(project, project.region("secondary"))
    key = f"dvc/files/md5/{ver.md5[:2]}/{ver.md5[2:]}"
    good = store.get(key)
    store.put(key, good.replace(b"number 7,", b"number X,"))  # changed rows, same size: only a re-hash sees it
    assert present(project, train, "secondary")

    out = tmp_path / "restored" / "train.csv"
    with pytest.raises(IntegrityError) as err:
        pull(project, train, "secondary", target=out)
    msg = str(err.value)
    assert "dataset 'train'" in msg and "region 'secondary'" in msg and ver.md5 in msg
    assert not out.parent.exists()  # nothing written, not even the folder
    assert md5_file(project.base_dir / "data" / "train.csv") == ver.md5

    assert pull(project, train, "primary", target=out).md5 == ver.md5
    assert md5_file(out) == ver.md5

    # local edits in the workspace are not overwritten by a restore unless asked
    workspace = project.base_dir / "data" / "train.csv"
    workspace.write_text("id,text,label\n0,edited by hand,1\n")
    with pytest.raises(TargetNotEmpty, match="force"):
        pull(project, train, "primary")
    assert "edited by hand" in workspace.read_text()
    pull(project, train, "primary", force=True)
    assert md5_file(workspace) == ver.md5 and version(project, train).md5 == ver.md5

    store.put(key, good[:100])  # truncated: even the presence check sees the damage
    with pytest.raises(IntegrityError, match="100 bytes"):
        present(project, train, "secondary")


def test_version_refuses_changed_data_and_track_records_new_version(project):
    train = ds(project)
    old = version(project, train)
    write_csv(project.base_dir / "data" / "train.csv", 320, label_offset=1)
    with pytest.raises(DatasetChanged) as err:
        version(project, train)
    assert "modified" in str(err.value) and "dvc add" in str(err.value) and old.md5 in str(err.value)
    with pytest.raises(DatasetChanged):
        push(project, train, "primary")  # never pushes a version that is not the data on disk

    new = track(project, train)
    assert new.md5 != old.md5 and new.md5 == md5_file(project.base_dir / "data" / "train.csv")
    assert new.commit is None  # staged, not committed
    assert "data/train.csv.dvc" in run("git", "diff", "--cached", "--name-only", cwd=project.base_dir)
    assert version(project, train).md5 == new.md5
    run("git", "commit", "-q", "-m", "dataset v2", cwd=project.base_dir)
    assert version(project, train).commit == run("git", "rev-parse", "HEAD", cwd=project.base_dir).strip()


def test_folder_dataset_round_trip(project, tmp_path):
    images = ds(project, "images")
    folder = project.base_dir / "data" / "images"
    files = {"a.txt": b"alpha\n", "sub/b.bin": os.urandom(3000), "sub/deeper/c.txt": b"gamma\n"}
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    ver = track(project, images)
    assert ver.md5.endswith(".dir") and ver.nfiles == 3
    push(project, images, "secondary")
    assert present(project, images, "secondary") and not present(project, images, "primary")

    out = tmp_path / "restored-images"
    pull(project, images, "secondary", target=out)
    got = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert got == files

    # one file of the folder damaged in the region: the pull names it and keeps the earlier restore intact
    store = open_region(project, project.region("secondary"))
    md5_b = hashlib.md5(files["sub/b.bin"]).hexdigest()
    store.put(f"dvc/files/md5/{md5_b[:2]}/{md5_b[2:]}", os.urandom(3000))
    with pytest.raises(IntegrityError, match="sub/b.bin"):
        pull(project, images, "secondary", target=out)
    assert (out / "sub" / "b.bin").read_bytes() == files["sub/b.bin"]


def test_errors_say_what_and_keep_secrets_out(project, monkeypatch, caplog, tmp_path):
    train = ds(project)
    secrets = secrets_of(project)
    caplog.set_level(logging.DEBUG)

    with pytest.raises(ObjectNotFound) as missing:
        pull(project, train, "secondary")  # never pushed there
    assert "region 'secondary'" in str(missing.value) and "Push the dataset there first" in str(missing.value)

    wrong = "wrong-" + uuid.uuid4().hex
    monkeypatch.setenv("LLMDR_TEST_S_SK", wrong)
    with pytest.raises(AccessDenied) as denied:
        push(project, train, "secondary")
    assert "region 'secondary'" in str(denied.value) and "credentials" in str(denied.value)
    monkeypatch.undo()

    # llmdr's records and DVC's (re-logged by llmdr); botocore's own DEBUG log shows the access key id in the
    # Authorization header whoever calls it, so it is not ours to police here
    text = str(missing.value) + str(denied.value) + "\n".join(
        f"{r.name}: {r.getMessage()}" for r in caplog.records if r.name.startswith(("llmdr", "dvc")))
    assert not [s for s in [*secrets, wrong] if s in text]

    notes = project.base_dir / "data" / "notes.csv"
    notes.write_text("a,b\n1,2\n")
    run("git", "add", "data/notes.csv", cwd=project.base_dir)
    with pytest.raises(UsageError, match="already tracked by SCM"):  # DVC's own advice, passed on
        track(project, Dataset(name="notes", path="data/notes.csv"))

    (project.base_dir / "data" / "train.csv.dvc").unlink()
    with pytest.raises(DatasetNotTracked, match="dvc add"):
        version(project, train)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "x.csv").write_text("a\n1\n")
    cfg = project_config(outside, project.primary.port, project.secondaries[0].port, project.state_path)
    with pytest.raises(DatasetNotTracked, match="no DVC repository"):
        version(cfg, ds(cfg))


def test_error_text_from_dvc_is_redacted():
    """Whatever DVC or the S3 client put in an exception or a log record, keys do not come out of llmdr."""
    from llmdr.lineage.dvcrun import map_error

    secret = "s3cr3t-" + uuid.uuid4().hex
    try:
        try:
            raise PermissionError(f"Forbidden for key {secret}")
        except PermissionError as inner:
            raise RuntimeError("push failed") from inner
    except RuntimeError as exc:
        err = map_error(exc, [secret], [f"ERROR: transfer failed with {secret}"], "dataset 'train': pushing")
    assert isinstance(err, AccessDenied)
    assert secret not in str(err) and "***" in str(err) and "dataset 'train'" in str(err)


def test_using_dvc_leaves_the_process_streams_and_logging_alone(tmp_path):
    """Importing DVC wraps sys.stdout/sys.stderr in colorama and adds console handlers; llmdr undoes both."""
    code = (
        "import logging, sys\n"
        "out, err = sys.stdout, sys.stderr\n"
        "from llmdr.lineage.dvcrun import tame_dvc\n"
        "tame_dvc()\n"
        "assert sys.stdout is out and sys.stderr is err, (sys.stdout, sys.stderr)\n"
        "handlers = [h for n in ('dvc', 'dvc_data', 'dvc_objects') for h in logging.getLogger(n).handlers]\n"
        "assert handlers == [], handlers\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).parent.parent)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr

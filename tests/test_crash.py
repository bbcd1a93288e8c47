"""Crash consistency against the real SeaweedFS regions: `llmdr snapshot`, `llmdr replicate`, `llmdr restore` and
`llmdr prune`, each run as the real CLI in a subprocess, are killed with SIGKILL at 20 seeded random points
(`random.Random(9)`).

Kill points: the transfer time of an uninterrupted run is measured first (from the moment its first pack, file or
(prune) new index appears to its exit; the faster of two runs, as the machine is shared); each kill then comes a
random delay within that time after the killed run's own transfer has begun; a run that finished before its kill
shortens the time the next delays are drawn from (tests run in parallel, so the measured runs may have been slowed by
a neighbour). Counting from the transfer's start rather than the process's keeps the points mid-transfer whatever the
interpreter's start-up costs on a busy machine.
After every kill:

- snapshot / replicate: no partial snapshot is listed in the region written to (any listed snapshot has every
  chunk); the re-run (`llmdr.ops`, what the CLI command calls) sends exactly the chunks that had not arrived
  (a chunk has arrived when an index places it in a pack that is present: packs uploaded before the kill but never
  indexed count as not arrived, and a later prune removes them) and nothing else; the snapshot restores
  byte-identical;
- restore: every file under its final name in the target is byte-identical to the source (partial data only under
  the hidden temporary names); the re-run downloads exactly the files that were not complete, and the target is
  then byte-identical to the source, with no temporary file or marker left;
- prune (phase two of a plan marking every pack of a forgotten snapshot, safety time 0): the live snapshot verifies
  (every chunk read back and hashed) and restores byte-identical; the killed run's exclusive lock refuses a re-run
  (`RepositoryLocked`) until it is deleted, as its message tells the operator; the re-run then deletes exactly the
  planned packs still present, and leaves no plan, no pack the live snapshot does not use and no forgotten record.

A kill only proves something if it lands while the command runs, so each test counts the kills that did (the
process had not exited by itself) and those that landed mid-transfer (packs had arrived but not yet the catalog
entry, written last; for prune: its plan, removed last, was still there), and asserts most did. The bundle (24 MiB of
shards, 256 KiB chunks in ~1 MiB packs, `transfer.workers: 2`) makes a transfer last about a second; prune deletes
~200 packs of ~40 KiB (8 MiB).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from llmdr.config import Config
from llmdr.devstack.samples import MiB, write_sample_bundle
from llmdr.errors import ObjectNotFound, RepositoryLocked, TargetNotEmpty
from llmdr.repo import ops
from llmdr.repo.chunking import ChunkerParams
from llmdr.repo.integrity import verify_snapshot
from llmdr.repo.layout import INDEX, RepoConfig, record_key
from llmdr.repo.prune import plans, prune
from llmdr.repo.repolock import list_locks
from llmdr.repo.repository import Repository
from llmdr.repo.reserved import LOCK, MARKER, is_tmp_name, tmp_name
from llmdr.repo.restore import restore_snapshot
from llmdr.repo.snapshot import take_snapshot
from llmdr.repo.verify import check_manifest
from llmdr.storage.factory import open_region
from tests.support.config import two_region_yaml, write_config
from tests.support.trees import read_tree

pytestmark = pytest.mark.s3

KILLS = 20  # per command; prune's worlds are the dearest to build (hundreds of tiny packs each): PRUNE_KILLS
PRUNE_KILLS = 12
SEED = 9
LANDED_SHARE = 0.75  # of the kills at least: a kill after the command finished proves nothing
MID_TRANSFER_SHARE = 0.5  # of the kills at least: some but not all of the data had arrived
WINDOW = 0.85
# A restore reads the bundle in a few ranged GETs of its packs (~0.3 s here), so closing down after the marker is
# removed is a larger share of its run: its kills aim at the first 60 %.
RESTORE_WINDOW = 0.6
SMALL = ChunkerParams(avg_size=256 * 1024, min_size=64 * 1024, max_size=1024 * 1024)
PACK = 1024 * 1024  # ~24 packs for the bundle: a kill can land between two of them
SMALL_REPO = RepoConfig(chunker=SMALL, pack_target=PACK)
TINY_REPO = RepoConfig(chunker=ChunkerParams(avg_size=32 * 1024, min_size=8 * 1024, max_size=128 * 1024),
                       pack_target=32 * 1024)  # for prune: many small packs to delete


@dataclass
class World:
    """The running regions, one bundle, and a source snapshot in the primary (under ``source_prefix``)."""

    stack: Config
    root: Path
    bundle: Path
    tree: dict[str, bytes]
    source_prefix: str = ""
    snapshot_id: str = ""
    chunks: dict[str, int] = field(default_factory=dict)  # the snapshot's chunks (id -> size)

    def config(self, *, p_prefix: str | None = None, s_prefix: str | None = None) -> tuple[Path, Config]:
        """A config file of its own (own state folder: no stat or manifest cache shared between runs), with fresh
        key prefixes unless given."""
        d = self.root / f"c-{uuid.uuid4().hex[:10]}"
        state = d / "state"
        state.mkdir(parents=True)
        shutil.copy(self.stack.state_path / "local.env", state / "local.env")
        text = two_region_yaml(self.stack.primary.port, self.stack.secondaries[0].port,
                               prefix=p_prefix or f"c-{uuid.uuid4().hex[:10]}",
                               secondary_prefix=s_prefix or f"c-{uuid.uuid4().hex[:10]}",
                               bundle=f"{{name: crash, path: {self.bundle}}}",
                               extra="transfer: {workers: 2, download_workers: 2, fsync: false}", state_dir=state)
        path = d / "llmdr.yaml"
        return path, write_config(path, text)


def cli(path: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "llmdr.cli", "--config", str(path), *args]


def run_json(cmd: list[str]):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _spawn_and_wait_for_transfer(cmd: list[str], started: Callable[[], bool]) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while proc.poll() is None and not started():
            time.sleep(0.02)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc


def _exited(proc: subprocess.Popen, cmd: list[str]) -> None:
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.returncode == 0, f"{cmd[4:]} failed by itself (exit {proc.returncode}): {err}"


def kill_during(cmd: list[str], started: Callable[[], bool], delay: float) -> float | None:
    """Start ``cmd``; once ``started()`` (its transfer has begun), wait ``delay`` seconds more and SIGKILL it.
    None when the kill landed (the process had not exited by itself), else the seconds its transfer took."""
    proc = _spawn_and_wait_for_transfer(cmd, started)
    t0 = time.perf_counter()
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        proc.stderr.close()
        return None
    took = time.perf_counter() - t0
    _exited(proc, cmd)
    return took


def transfer_time(runs: list[tuple[list[str], Callable[[], bool]]]) -> float:
    """Seconds from the start of the transfer (``started()``) to the exit of an uninterrupted run; the fastest of
    ``runs`` (the machine is shared: a slow measurement would put kills after the end)."""
    times = []
    for cmd, started in runs:
        proc = _spawn_and_wait_for_transfer(cmd, started)
        t0 = time.perf_counter()
        proc.wait(timeout=120)
        times.append(time.perf_counter() - t0)
        _exited(proc, cmd)
    return min(times)


def kill_points(tally: Tally, share: float = WINDOW) -> Iterator[float]:
    """``tally.kills`` seeded random delays within the first ``share`` of the transfer time (``tally.transfer_s``, read anew for
    each kill: a run that finished before its kill shortens it). On a shared machine a run is often faster than the
    one measured, and a kill after the exit proves nothing."""
    rng = random.Random(SEED)
    for _ in range(tally.kills):
        yield rng.uniform(0, share) * tally.transfer_s


def repo(cfg: Config, name: str, create: RepoConfig | None = None) -> Repository:
    """The region's repository (read with no cache); ``create``: its config, made here if the region has none."""
    r = Repository(open_region(cfg, cfg.region(name)))
    if create is not None:
        got = r.ensure_config(create)
        assert (got.chunker, got.pack_target) == (create.chunker, create.pack_target)
    return r


def settled_chunks(r: Repository) -> dict[str, int]:
    """The region's chunks once the server has finished the requests of the killed process (two equal listings, each
    by a fresh reader: a ``Repository`` keeps the index it read first)."""
    before = Repository(r.store).list_chunks()
    while True:
        time.sleep(0.1)
        now = Repository(r.store).list_chunks()
        if now == before:
            return now
        before = now


def assert_nothing_partial(r: Repository, chunks: dict[str, int]) -> list[str]:
    """Every snapshot listed in ``r`` has every chunk in place; returns the listed ids."""
    ids = r.snapshot_ids()
    for sid in ids:
        needed = r.load_manifest(sid).chunk_set()
        missing = [d for d, n in needed.items() if chunks.get(d) != n]
        assert not missing, f"snapshot {sid[:12]} is listed in {r.location} but lacks {len(missing)} chunk(s)"
    return ids


def assert_restores_identical(r: Repository, sid: str, world: World, where: Path) -> None:
    """Restored by a fresh reader, as `llmdr restore` would (``r`` cached its index before the re-run wrote one)."""
    restore_snapshot(Repository(r.store), sid, where, workers=8)
    try:
        assert read_tree(where) == world.tree
    finally:
        shutil.rmtree(where)


@pytest.fixture(scope="module")
def world(stack, tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("crash")
    bundle = root / "bundle"
    write_sample_bundle(bundle, shards=6, shard_size=4 * MiB, seed=SEED)
    w = World(stack, root, bundle, read_tree(bundle))
    path, cfg = w.config()
    w.source_prefix = cfg.primary.prefix
    repo(cfg, "primary", SMALL_REPO)
    out = run_json(cli(path, "snapshot", "--json"))
    w.snapshot_id = out["snapshot_id"]
    w.chunks = repo(cfg, "primary").load_manifest(w.snapshot_id).chunk_set()
    assert out["chunks_new"] == len(w.chunks) > 60
    return w


@dataclass
class Tally:
    op: str
    transfer_s: float
    landed: int = 0  # the process was still running when killed
    mid_transfer: int = 0  # ... and some, but not all, of the data had arrived
    rerun_bytes: int = 0  # bytes the re-runs transferred
    resent_bytes: int = 0  # ... of which had already arrived before the kill (must stay 0)
    unindexed_bytes: int = 0  # packs stored before the kill but in no index yet: sent again by the re-run (v2)
    kills: int = KILLS

    def kill(self, cmd: list[str], started: Callable[[], bool], delay: float) -> None:
        """``kill_during``; a run that finished first did not land, and its transfer time bounds the next delays."""
        took = kill_during(cmd, started, delay)
        if took is None:
            self.landed += 1
        else:
            self.transfer_s = min(self.transfer_s, took)

    def check(self) -> None:
        print(f"\n{self.op}: transfer {self.transfer_s:.2f}s uninterrupted; {self.kills} kills: {self.landed} landed, "
              f"{self.mid_transfer} mid-transfer; re-runs transferred {self.rerun_bytes} bytes, {self.resent_bytes} "
              f"of them already there (indexed); {self.unindexed_bytes} bytes of packs stored but never indexed")
        assert self.resent_bytes == 0
        assert self.landed >= LANDED_SHARE * self.kills and self.mid_transfer >= MID_TRANSFER_SHARE * self.kills


def has_packs(r: Repository) -> Callable[[], bool]:
    return lambda: bool(r.pack_infos())


def unindexed_bytes(r: Repository) -> int:
    """Bytes of the packs present that no index names (uploaded by a killed run before it wrote its index)."""
    indexed = {p.hex() for p in Repository(r.store).index().packs()}
    return sum(i.size for p, i in r.pack_infos().items() if p not in indexed)


def partly_arrived(r: Repository, listed: list[str]) -> bool:
    """Some of the snapshot's objects are stored (packs) but not all (its catalog entry, written last, is not):
    the kill landed mid-transfer."""
    return bool(r.pack_infos()) and not listed


def has_files(target: Path) -> Callable[[], bool]:
    return lambda: any(n not in (MARKER, LOCK) for _, _, names in os.walk(target) for n in names)


@pytest.mark.slow
def test_snapshot_killed(world, tmp_path):
    def fresh() -> tuple[Path, Config, Repository]:
        path, cfg = world.config()
        return path, cfg, repo(cfg, "primary", SMALL_REPO)

    runs = [(cli(p, "snapshot"), has_packs(r)) for p, _, r in (fresh(), fresh())]
    t = Tally("snapshot", transfer_time(runs))
    for i, delay in enumerate(kill_points(t)):
        path, cfg, prim = fresh()
        t.kill(cli(path, "snapshot"), has_packs(prim), delay)
        present = settled_chunks(prim)
        listed = assert_nothing_partial(prim, present)
        assert len(listed) <= 1  # killed after its manifest was written: complete (checked above)
        arrived = {d: n for d, n in world.chunks.items() if present.get(d) == n}
        t.mid_transfer += partly_arrived(prim, listed)
        t.unindexed_bytes += unindexed_bytes(prim)
        res = ops.snapshot_bundle(cfg)  # the re-run: what `llmdr snapshot` calls
        expected = {d: n for d, n in world.chunks.items() if d not in arrived}
        t.rerun_bytes += res.bytes_new
        t.resent_bytes += res.bytes_new - sum(expected.values())
        assert (res.chunks_new, res.bytes_new) == (len(expected), sum(expected.values())), f"kill {i}"
        assert res.snapshot_id in prim.snapshot_ids()
        assert_restores_identical(prim, res.snapshot_id, world, tmp_path / f"r{i}")
    t.check()


@pytest.mark.slow
def test_replicate_killed(world, tmp_path):
    sid = world.snapshot_id

    def fresh() -> tuple[Path, Config, Repository]:
        path, cfg = world.config(p_prefix=world.source_prefix)
        return path, cfg, repo(cfg, "secondary", SMALL_REPO)  # made here: a copy would make 32 MiB packs

    def replicate(path: Path) -> list[str]:
        return cli(path, "replicate", sid, "--to", "secondary")

    runs = [(replicate(p), has_packs(r)) for p, _, r in (fresh(), fresh())]
    t = Tally("replicate", transfer_time(runs))
    for i, delay in enumerate(kill_points(t)):
        path, cfg, dst = fresh()
        t.kill(replicate(path), has_packs(dst), delay)
        present = settled_chunks(dst)
        listed = assert_nothing_partial(dst, present)
        assert listed in ([], [sid])
        arrived = {d: n for d, n in world.chunks.items() if present.get(d) == n}
        t.mid_transfer += partly_arrived(dst, listed)
        t.unindexed_bytes += unindexed_bytes(dst)
        (res,) = ops.replicate(cfg, sid, to="secondary")  # the re-run: what `llmdr replicate` calls
        expected = {d: n for d, n in world.chunks.items() if d not in arrived}
        t.rerun_bytes += res.bytes_copied
        t.resent_bytes += res.bytes_copied - sum(expected.values())
        assert res.already_present == bool(listed)
        assert (res.chunks_copied, res.bytes_copied) == (len(expected), sum(expected.values())), f"kill {i}"
        assert dst.snapshot_ids() == [sid]
        assert_restores_identical(dst, sid, world, tmp_path / f"r{i}")
    t.check()


def target_state(target: Path, tree: dict[str, bytes]) -> tuple[dict[str, int], int, bool]:
    """(files complete under their final name -> size, partial files under a temporary name, marker present).
    Fails on a file under its final name whose bytes differ from the source, or on anything else in the target
    (the killed restore's lock file is allowed: the re-run takes it over)."""
    temps = {(Path(rel).parent / tmp_name(rel)).as_posix(): rel for rel in tree}
    complete: dict[str, int] = {}
    partial = 0
    marker = False
    for dirpath, _, names in os.walk(target):
        for name in names:
            p = Path(dirpath) / name
            rel = p.relative_to(target).as_posix()
            if rel == MARKER:
                marker = True
            elif rel == LOCK:
                pass
            elif is_tmp_name(name):
                assert rel in temps, f"temporary file {rel} for a file the snapshot does not hold"
                partial += 1
            else:
                assert rel in tree, f"unexpected file {rel} in the restore target"
                assert p.read_bytes() == tree[rel], f"{rel} is under its final name but not byte-identical"
                complete[rel] = len(tree[rel])
    return complete, partial, marker


@pytest.mark.slow
def test_restore_killed(world, tmp_path):
    sid = world.snapshot_id
    total = sum(len(b) for b in world.tree.values())
    path, cfg = world.config(p_prefix=world.source_prefix)

    def restore(target: Path) -> list[str]:
        return cli(path, "restore", sid, "--to", str(target))

    t = Tally("restore", transfer_time([(restore(tmp_path / m), has_files(tmp_path / m)) for m in ("m1", "m2")]))
    finished = 0
    for i, delay in enumerate(kill_points(t, RESTORE_WINDOW)):
        target = tmp_path / f"t{i}"
        t.kill(restore(target), has_files(target), delay)
        complete, partial, marker = target_state(target, world.tree) if target.exists() else ({}, 0, False)
        t.mid_transfer += 0 < len(complete) < len(world.tree) or partial > 0
        force = False
        if complete and not marker:
            # Killed after the restore removed its marker, at its very end: every file is in place, and a re-run
            # treats the folder like any non-empty one (refused without --force).
            assert complete.keys() == world.tree.keys()
            with pytest.raises(TargetNotEmpty):
                ops.restore(cfg, sid, target)
            finished += 1
            force = True
        res = ops.restore(cfg, sid, target, force=force)  # the re-run: what `llmdr restore` calls
        expected = total - sum(complete.values())
        t.rerun_bytes += res.bytes_downloaded
        t.resent_bytes += res.bytes_downloaded - expected
        assert (res.files_skipped, res.bytes_downloaded) == (len(complete), expected), f"kill {i}"
        assert read_tree(target) == world.tree  # no temporary file, no marker left
        shutil.rmtree(target)
    print(f"\nrestore: {finished} kill(s) landed after the marker was removed (the restore was already complete)")
    t.check()


@dataclass
class PruneWorld:
    """A primary whose first snapshot (every pack of it) was forgotten and planned for deletion by a prune's phase
    one; the second, small snapshot stays live."""

    path: Path
    cfg: Config
    repo: Repository
    forgotten: str
    live: str
    planned: list[str]
    live_packs: set[str]


def prune_world(world: World, big: Path, small: Path) -> PruneWorld:
    path, cfg = world.config()
    r = repo(cfg, "primary", TINY_REPO)
    gone = take_snapshot(r, big, bundle="crash", workers=4).snapshot_id
    live = take_snapshot(r, small, bundle="crash").snapshot_id
    r.forget("crash", [gone])
    first = prune(r, safety_s=0)  # phase one: the plan; nothing deleted yet
    assert first.deleted == [] and len(first.planned) > 100 and len(plans(r)) == 1
    live_packs = {r.locate(d).pack.hex() for d in r.load_manifest(live).chunk_set()}
    assert live_packs and not live_packs & set(first.planned)
    return PruneWorld(path, cfg, r, gone, live, sorted(first.planned), live_packs)


def assert_live_snapshot_sound(pw: PruneWorld, small_tree: dict[str, bytes], where: Path) -> None:
    """The live snapshot verifies (record, trees, every chunk read and hashed) and restores byte-identical."""
    r = repo(pw.cfg, "primary")  # a fresh reader: no index cached before the kill
    assert r.snapshot_ids() == [pw.live]
    assert check_manifest(r, pw.live).ok
    res = verify_snapshot(r, pw.live)
    assert res.ok and res.chunks_read == res.chunks_total, res.to_json()
    restore_snapshot(r, pw.live, where, workers=8)
    try:
        assert read_tree(where) == small_tree
    finally:
        shutil.rmtree(where)


def index_objects(r: Repository) -> set[str]:
    return {i.key for i in r.store.list(INDEX)}


def index_changed(r: Repository) -> Callable[[], bool]:
    """Prune's first change: its new index (written before any pack is deleted)."""
    before = index_objects(r)
    return lambda: index_objects(r) != before


@pytest.mark.slow
def test_prune_killed(world, tmp_path):
    rng = random.Random(SEED + 1)
    big, small = tmp_path / "big", tmp_path / "small"  # forgotten and live: no chunk in common
    for folder, sizes in ((big, [4 * MiB, 4 * MiB]), (small, [96 * 1024] * 3)):
        folder.mkdir()
        for n, size in enumerate(sizes):
            (folder / f"part-{n}.bin").write_bytes(rng.randbytes(size))
    small_tree = read_tree(small)

    def prune_cli(pw: PruneWorld) -> list[str]:
        return cli(pw.path, "prune", "--region", "primary", "--safety-time", "0s")

    measured = [prune_world(world, big, small) for _ in range(2)]
    t = Tally("prune", transfer_time([(prune_cli(pw), index_changed(pw.repo)) for pw in measured]), kills=PRUNE_KILLS)
    for pw in measured:  # an uninterrupted run deletes every planned pack
        assert set(pw.repo.pack_infos()) == pw.live_packs and plans(pw.repo) == {}
    via_cli: list[str] = []
    for i, delay in enumerate(kill_points(t)):
        pw = prune_world(world, big, small)
        t.kill(prune_cli(pw), index_changed(pw.repo), delay)
        left = sorted(set(pw.repo.pack_infos()) & set(pw.planned))
        t.mid_transfer += bool(plans(pw.repo))  # after its first change, before its plan (deleted last) went
        assert pw.live_packs <= set(pw.repo.pack_infos()), f"kill {i}: a pack of the live snapshot was deleted"
        assert_live_snapshot_sound(pw, small_tree, tmp_path / f"k{i}")
        dead = list_locks(pw.repo.store)
        if dead:  # killed before it released its lock: a re-run is refused until the lock goes
            assert [(x.kind, x.op, x.host) for x in dead] == [("exclusive", "prune", socket.gethostname())]
            with pytest.raises(RepositoryLocked, match="llmdr locks --remove"):
                prune(repo(pw.cfg, "primary"), safety_s=0)
            if not via_cli:  # what the message says to do once the holder is known dead, through the CLI once
                r = subprocess.run(cli(pw.path, "locks", "--region", "primary", "--remove", dead[0].key),
                                   capture_output=True, text=True, timeout=120)
                assert r.returncode == 0 and dead[0].key in r.stdout, r.stdout + r.stderr
                via_cli.append(dead[0].key)
            else:
                pw.repo.store.delete(dead[0].key)
        res = prune(repo(pw.cfg, "primary"), safety_s=0)  # the re-run: what `llmdr prune` calls
        assert sorted(res.deleted) == left, f"kill {i}"  # exactly what the killed run had not deleted yet
        assert set(pw.repo.pack_infos()) == pw.live_packs and plans(pw.repo) == {}, f"kill {i}"
        with pytest.raises(ObjectNotFound):
            pw.repo.store.head(record_key(pw.forgotten))
        assert_live_snapshot_sound(pw, small_tree, tmp_path / f"r{i}")
    t.check()


def test_restore_interrupted_in_its_completeness_check_resumes(world, mem_repo, tmp_path, monkeypatch):
    """Some of the SIGKILLs above land after the marker was removed, where the same command no longer resumes; here
    that point deterministically: a bundle with components, interrupted while the restored folder is checked."""
    from llmdr.repo import restore as restore_module
    from llmdr.repo.bundle import detected_specs
    from llmdr.repo.snapshot import take_snapshot

    sid = take_snapshot(mem_repo, world.bundle, bundle="crash", components=detected_specs(world.bundle)).snapshot_id
    target = tmp_path / "t"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(restore_module, "check_bundle", interrupted)
        with pytest.raises(KeyboardInterrupt):
            restore_snapshot(mem_repo, sid, target)
    res = restore_snapshot(mem_repo, sid, target)  # the same command again: today TargetNotEmpty
    assert res.complete and res.files_skipped == len(world.tree) and res.bytes_downloaded == 0

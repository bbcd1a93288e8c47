"""`llmdr migrate` (design §8): a v1 repository (plain, encrypted, signed, locked) becomes v2 in place; every snapshot
restores the same bytes; v1 ids still resolve; a crash at any put resumes to the same snapshots; `--finish` deletes
the v1 objects v2 no longer needs and leaves locked ones."""

from __future__ import annotations

import hashlib
import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmdr.errors import FormatMismatch, IntegrityError, RepositoryLocked, SnapshotNotFound, TransientStorageError
from llmdr.repo.migrate import (
    MIGRATED_FROM,
    STAGED_CONFIG,
    migrate,
    migrate_finish,
    order_v1,
    read_v1_manifests,
    resolve_v1,
)
from llmdr.repo.replicate import replicate_snapshot
from llmdr.repo.repository import Repository
from llmdr.repo.restore import restore_snapshot
from llmdr.repo.snapshot import take_snapshot
from llmdr.storage.crypto import EncryptingStore, ManifestSigner, SigningStore
from llmdr.storage.memory import MemoryStore
from llmdr.testing.faulty import FaultyStore
from tests.support.trees import read_tree, write_tree
from tests.support.v1repo import V1Writer, age_all, copy_v1_snapshot, stamp

KEY = bytes(range(32))


def _history(w: V1Writer) -> dict[str, dict[str, bytes]]:
    """Three snapshots of one bundle sharing most chunks, one of another: v1 id -> files."""
    rnd = random.Random(7)
    weights = rnd.randbytes(60_000)
    out = {}
    for i in range(3):
        files = {"weights.bin": weights[: 40_000 + 10_000 * i], "config.json": b'{"step": %d}' % i,
                 "tok/vocab.txt": b"a b c\n" * (50 + i)}
        out[w.snapshot("bot", files, tags={"step": str(i)})] = files
    other = {"model.bin": rnd.randbytes(30_000), "empty.txt": b""}
    out[w.snapshot("other", other)] = other
    return out


def _region(kind: str) -> tuple[MemoryStore, object]:
    mem = MemoryStore(kind)
    if kind == "encrypted":
        return mem, EncryptingStore(mem, KEY)
    if kind == "signed":
        return mem, SigningStore(mem, ManifestSigner("hmac", hmac_key=KEY))
    return mem, mem


def _restored(repo: Repository, sid: str, tmp_path) -> dict[str, bytes]:
    target = tmp_path / f"r-{sid[:12]}-{random.randrange(1 << 30)}"
    restore_snapshot(repo, sid, target, workers=2)
    return read_tree(target)


@pytest.mark.parametrize("kind", ["plain", "encrypted", "signed"])
def test_v1_becomes_v2_with_the_same_files_and_ids_that_resolve(kind, tmp_path):
    mem, store = _region(kind)
    history = _history(V1Writer(store))
    first = next(iter(history))
    store.put(f"evidence/{first}/datasets.json", b'{"datasets": ["train"]}')  # kept beside it by v1 lineage
    age_all(mem, 3600)
    with pytest.raises(FormatMismatch, match="llmdr migrate"):
        Repository(store).snapshots()

    res = migrate(store, workers=2)

    assert res.ok and res.config_written and res.format_before == 1
    assert set(res.migrated) == set(history) and not res.already
    assert res.chunks_checked > 0 and res.chunks_read >= 1 and res.evidence_copied == 1
    assert json.loads(store.get("config.json"))["format"] == 2
    repo = Repository(store)
    bot = repo.snapshots(bundle="bot")
    assert [s.record[MIGRATED_FROM] for s in bot] == list(history)[:3]  # the v1 chain, in catalog order
    assert [s.tags["step"] for s in bot] == ["0", "1", "2"]
    assert bot[0].manifest.parent is None and repo.resolve(bot[1].manifest.parent) == bot[0].id  # the v1 parent
    assert [repo.view("bot").live[i].prev for i in (1, 2)] == [bot[0].id, bot[1].id]  # this region's order
    assert repo.resolve("latest", bundle="bot") == bot[-1].id
    assert repo.load_evidence(res.migrated[first], "datasets.json") == b'{"datasets": ["train"]}'
    for v1, files in history.items():
        v2 = res.migrated[v1]
        assert v2 != v1 and repo.resolve(v1) == v2 and repo.resolve(v1[:12]) == v2 and resolve_v1(repo, v1) == v2
        assert _restored(repo, v2, tmp_path) == files
    assert list(mem.list("packs/"))
    if kind == "encrypted":  # packs are sealed blob by blob: no plaintext chunk is visible in the store
        needle = next(iter(history.values()))["tok/vocab.txt"][:64]
        assert all(needle not in mem.get(i.key) for i in mem.list("packs/"))


def test_v2_snapshots_after_migration_build_on_the_migrated_head(tmp_path):
    mem = MemoryStore("p")
    history = _history(V1Writer(mem))
    age_all(mem, 3600)
    res = migrate(mem, workers=2)
    src = tmp_path / "src"
    write_tree(src, {"weights.bin": b"new weights" * 1000})
    repo = Repository(mem)
    snap = take_snapshot(repo, src, bundle="bot")
    assert snap.manifest.parent == res.migrated[list(history)[2]]
    assert repo.resolve("latest", bundle="bot") == snap.snapshot_id
    assert _restored(repo, snap.snapshot_id, tmp_path) == read_tree(src)


def test_regions_migrated_apart_give_a_shared_v1_snapshot_one_id_and_replicate_finds_it(tmp_path):
    primary, dr = MemoryStore("primary"), MemoryStore("dr")
    history = _history(V1Writer(primary))
    ids = list(history)
    for sid in (ids[0], ids[2]):  # the DR region got every other snapshot of the bundle
        copy_v1_snapshot(primary, dr, sid)
    age_all(primary, 3600)
    age_all(dr, 3600)
    p, d = migrate(primary, workers=2), migrate(dr, workers=2)
    assert d.migrated == {v1: p.migrated[v1] for v1 in (ids[0], ids[2])}
    src, dst = Repository(primary), Repository(dr)
    assert replicate_snapshot(src, dst, p.migrated[ids[2]]).already_present
    copied = replicate_snapshot(src, dst, p.migrated[ids[1]])
    assert not copied.already_present and 0 < copied.chunks_copied < copied.chunks_total  # the rest is there
    assert sorted(dst.snapshot_ids(bundle="bot")) == sorted(p.migrated[i] for i in ids[:3])
    assert _restored(dst, dst.resolve(ids[1]), tmp_path) == history[ids[1]]


def test_a_long_history_leaves_few_live_index_objects(tmp_path):
    mem = MemoryStore("p")
    w = V1Writer(mem)
    files = {}
    for i in range(40):  # every snapshot brings one new chunk: one pack and one index each
        files[w.snapshot("bot", {"f.bin": random.Random(i).randbytes(3000)})] = random.Random(i).randbytes(3000)
    age_all(mem, 3600)
    res = migrate(mem, workers=2)
    repo = Repository(mem)
    assert res.packs == 40 and len(repo.index(refresh=True).live_ids()) <= 33
    assert repo.resolve("latest", bundle="bot") == res.migrated[list(files)[-1]]
    v1 = list(files)[5]
    assert _restored(repo, repo.resolve(v1), tmp_path) == {"f.bin": files[v1]}


def test_recent_v1_objects_refuse_without_force_and_nothing_is_written():
    mem = MemoryStore("p")
    history = _history(V1Writer(mem))
    before = {i.key for i in mem.list("")}
    with pytest.raises(RepositoryLocked, match="--force"):
        migrate(mem)
    assert {i.key for i in mem.list("")} == before
    res = migrate(mem, force=True, workers=2)
    assert set(res.migrated) == set(history) and res.config_written


def test_a_region_without_config_but_with_v1_objects_is_migrated(tmp_path):
    mem = MemoryStore("p")
    history = _history(V1Writer(mem, config=False))
    age_all(mem, 3600)
    res = migrate(mem, workers=2)
    assert res.format_before is None and res.config_written and set(res.migrated) == set(history)
    v1 = list(history)[3]
    assert _restored(Repository(mem), Repository(mem).resolve(v1), tmp_path) == history[v1]


def test_unreadable_manifests_and_missing_chunks_are_skipped_and_named(tmp_path):
    mem = MemoryStore("p")
    w = V1Writer(mem)
    history = _history(w)
    lost = w.snapshot("bot", {"lonely.bin": random.Random(3).randbytes(5000)})
    lost_chunk = hashlib.sha256(random.Random(3).randbytes(5000)).hexdigest()
    mem.delete(f"chunks/{lost_chunk[:2]}/{lost_chunk}")
    forged = next(iter(history))
    mem.corrupt(f"snapshots/{forged}.json", mem.get(f"snapshots/{forged}.json").replace(b"step", b"stop"))
    mem.put("snapshots/notes.txt", b"hello")
    age_all(mem, 3600)

    res = migrate(mem, workers=2)

    assert set(res.skipped) == {f"snapshots/{forged}.json", f"snapshots/{lost}.json", "snapshots/notes.txt"}
    assert "hash" in res.skipped[f"snapshots/{forged}.json"] and "missing" in res.skipped[f"snapshots/{lost}.json"]
    assert not res.ok and res.config_written
    assert set(res.migrated) == set(history) - {forged}
    repo = Repository(mem)
    with pytest.raises(SnapshotNotFound):
        repo.resolve(lost)
    for v1 in res.migrated:
        assert _restored(repo, repo.resolve(v1), tmp_path) == history[v1]


def test_order_follows_the_parent_chain_before_the_clock():
    mem = MemoryStore("p")
    w = V1Writer(mem)
    a = w.snapshot("b", {"f": b"a"}, created=stamp(10))
    b = w.snapshot("b", {"f": b"b"}, created=stamp(5))  # child of a, with a clock that ran behind
    c = w.snapshot("b", {"f": b"c"}, created=stamp(1), parent=None)  # a second root, oldest
    d = w.snapshot("b", {"f": b"d"}, created=stamp(7), parent=b)
    manifests, skipped = read_v1_manifests(mem)
    assert not skipped
    assert [i for i, _ in order_v1(manifests)] == [c, a, b, d]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(-1, 30), st.sampled_from("ab")), min_size=1, max_size=20))
def test_order_is_a_permutation_with_every_parent_before_its_children(nodes):
    from llmdr.repo.chunking import DEFAULT_CHUNKER
    from llmdr.repo.manifest import Manifest

    ids = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(len(nodes))]
    manifests = {}
    for i, (minute, parent, bundle) in enumerate(nodes):
        p = ids[parent % len(nodes)] if parent >= 0 and parent % len(nodes) < i else None  # parents come earlier
        manifests[ids[i]] = Manifest(bundle=bundle, source="/s", host="h", started=stamp(minute),
                                     created=stamp(minute), tool_version="0.9", chunker=DEFAULT_CHUNKER, files=(),
                                     parent=p)
    out = [i for i, _ in order_v1(manifests)]
    assert sorted(out) == sorted(ids)
    pos = {i: n for n, i in enumerate(out)}
    for i, m in manifests.items():
        if m.parent is not None and manifests[m.parent].bundle == m.bundle:
            assert pos[m.parent] < pos[i]
    bundles = [manifests[i].bundle for i in out]
    assert bundles == sorted(bundles)  # each bundle's snapshots together, bundles by name


def _clean_run_ids(kind: str) -> tuple[dict[str, str], int]:
    mem, store = _region(kind)
    _history(V1Writer(store))
    age_all(mem, 3600)
    faulty = FaultyStore(store)
    res = migrate(faulty, workers=2)
    return res.migrated, faulty.calls["put"]


class Crash(Exception):
    """The process died here."""


@pytest.mark.parametrize("kind", ["plain", "encrypted"])
def test_a_crash_at_any_put_resumes_to_the_same_snapshots(kind, tmp_path):
    clean, puts = _clean_run_ids(kind)
    assert puts > 10
    for n in sorted({1, 2, 3, puts // 4, puts // 2, puts - 3, puts - 2, puts - 1, puts}):  # puts: config.json
        mem, store = _region(kind)
        history = _history(V1Writer(store))
        age_all(mem, 3600)
        faulty = FaultyStore(store)
        faulty.fail("put", Crash, after=n - 1)
        with pytest.raises(Crash):
            migrate(faulty, workers=2)
        faulty.assert_all_fired()
        assert json.loads(store.get("config.json"))["format"] == 1, f"crash at put {n}: switched too early"

        res = migrate(store, workers=2)

        assert res.ok and res.config_written, f"crash at put {n}"
        done = {**res.already, **res.migrated}
        assert done == clean, f"crash at put {n}: the resumed migration made other snapshots"
        repo = Repository(store)
        assert sorted(repo.snapshot_ids()) == sorted(clean.values()), f"crash at put {n}: a snapshot twice"
        for v1, files in history.items():
            assert _restored(repo, done[v1], tmp_path) == files


def test_a_config_switch_whose_answer_was_lost_is_completed_by_the_next_run(tmp_path):
    clean, puts = _clean_run_ids("encrypted")
    mem, store = _region("encrypted")
    history = _history(V1Writer(store))
    age_all(mem, 3600)
    faulty = FaultyStore(store)
    faulty.drop("put", after=puts - 1)  # config.json is written, the caller sees an error
    with pytest.raises(TransientStorageError):
        migrate(faulty, workers=2)
    faulty.assert_all_fired()
    assert json.loads(store.get("config.json"))["format"] == 2
    res = migrate(store, workers=2)
    assert res.format_before == 2 and res.already == clean and not res.migrated and not res.config_written
    repo = Repository(store)
    for v1, files in history.items():
        assert _restored(repo, repo.resolve(v1), tmp_path) == files


def test_a_finished_migration_run_again_does_nothing():
    mem = MemoryStore("p")
    _history(V1Writer(mem))
    age_all(mem, 3600)
    first = migrate(mem, workers=2)
    again = migrate(mem, workers=2)
    assert again.format_before == 2 and not again.migrated and not again.config_written
    assert again.already == first.migrated
    assert list(mem.list(STAGED_CONFIG))  # kept until --finish


def test_finish_deletes_what_v2_no_longer_needs(tmp_path):
    mem = MemoryStore("p")
    w = V1Writer(mem)
    history = _history(w)
    with pytest.raises(FormatMismatch, match="llmdr migrate"):
        migrate_finish(mem, safety_s=0)
    forged = next(iter(history))
    mem.corrupt(f"snapshots/{forged}.json", b"{}")
    age_all(mem, 3600)
    res = migrate(mem, workers=2)
    late = w.snapshot("bot", {"late.bin": b"written by a v1 llmdr after the migration" * 50})

    young = migrate_finish(mem, safety_s=7200)
    assert young.young > 0 and young.deleted == 1  # only the staged config, which no run needs once v2 is in place
    assert not list(mem.list(STAGED_CONFIG)) and list(mem.list("chunks/"))

    fin = migrate_finish(mem, safety_s=600)

    kept = set(fin.kept)
    assert f"snapshots/{forged}.json" in kept and f"snapshots/{late}.json" in kept
    assert all(k.startswith("chunks/") for k in kept - {f"snapshots/{forged}.json", f"snapshots/{late}.json"})
    assert fin.deleted > 0 and not fin.locked
    left = {i.key for i in mem.list("snapshots/")} | {i.key for i in mem.list("chunks/")}
    assert left == kept
    repo = Repository(mem)
    for v1, v2 in res.migrated.items():
        assert _restored(repo, v2, tmp_path) == history[v1]

    again = migrate(mem, force=True, workers=2)  # the late v1 snapshot is migrated by a second run
    assert list(again.migrated) == [late]
    assert _restored(Repository(mem), Repository(mem).resolve(late), tmp_path) == {
        "late.bin": b"written by a v1 llmdr after the migration" * 50}


class LosingStore(MemoryStore):
    """A store that acknowledges pack uploads and keeps none of the first ``lose`` of them (lost writes)."""

    def __init__(self, name: str, lose: int | None) -> None:
        super().__init__(name)
        self.lose = lose
        self.lost = 0

    def put(self, key, data, **kw):
        if key.startswith("packs/") and (self.lose is None or self.lost < self.lose):
            self.lost += 1
            return
        super().put(key, data, **kw)


def test_a_pack_lost_on_the_way_is_packed_again_from_v1(tmp_path):
    mem = LosingStore("p", lose=1)
    history = _history(V1Writer(mem))
    age_all(mem, 3600)
    res = migrate(mem, workers=2)
    assert mem.lost == 1 and res.ok and res.config_written
    repo = Repository(mem)
    for v1, files in history.items():
        assert _restored(repo, repo.resolve(v1), tmp_path) == files


def test_a_store_that_keeps_losing_packs_leaves_config_at_v1():
    mem = LosingStore("p", lose=None)
    _history(V1Writer(mem))
    age_all(mem, 3600)
    with pytest.raises(IntegrityError, match="config.json was not switched"):
        migrate(mem, workers=2)
    assert json.loads(mem.get("config.json"))["format"] == 1


# real SeaweedFS, Object Lock, through the command line ----------------------------------------------------------------
def _cli(cfg, *args: str):
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "llmdr.cli", "--config", str(cfg.source_file), *args],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "LLMDR_CONFIG": ""})


def test_a_locked_v1_region_on_s3_is_migrated_and_finish_leaves_locked_objects(stack, tmp_path):
    import uuid

    from llmdr.storage.factory import adapter, open_region
    from tests.support.config import two_regions

    cfg = two_regions(stack, tmp_path, secondary_bucket=f"llmdr-mig-{uuid.uuid4().hex[:10]}", secondary_prefix="",
                      secondary="    object_lock: {mode: COMPLIANCE, period: 60s}")
    dr = cfg.secondaries[0]
    assert adapter(cfg, dr).ensure_bucket(object_lock=True) is True
    store = open_region(cfg, dr)
    history = _history(V1Writer(store))
    assert store.retention("config.json") is not None  # the v1 objects are under Object Lock

    listed = _cli(cfg, "snapshots", "--region", dr.name)
    assert listed.returncode == 11 and "llmdr migrate --region" in listed.stderr, listed.stderr
    refused = _cli(cfg, "migrate", "--region", dr.name)
    assert refused.returncode == 10 and "--force" in refused.stderr, refused.stderr

    done = _cli(cfg, "migrate", "--region", dr.name, "--force", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["config_written"] and out["ok"] and set(out["migrated"]) == set(history)
    assert json.loads(store.get("config.json"))["format"] == 2  # a new version over the locked v1 config
    assert len([v for v in store.list_versions("config.json") if v.key == "config.json"]) == 2
    repo = Repository(open_region(cfg, dr))
    assert repo.store.retention(f"snaps/{out['migrated'][next(iter(history))]}") is not None
    for v1, files in history.items():
        assert _restored(repo, repo.resolve(v1[:16]), tmp_path) == files

    text = _cli(cfg, "migrate", "--region", dr.name)
    assert text.returncode == 0 and "nothing left to migrate" in text.stdout, text.stdout + text.stderr
    fin = _cli(cfg, "migrate", "--region", dr.name, "--finish", "--safety-time", "0s", "--json")
    assert fin.returncode == 0, fin.stderr
    res = json.loads(fin.stdout)
    v1_keys = {i.key for p in ("chunks/", "snapshots/") for i in store.list(p)}
    assert set(res["locked"]) == v1_keys and v1_keys and not res["kept"]
    assert res["deleted"] == 1 and not list(store.list(STAGED_CONFIG))  # the staged config was never locked
    assert all("Object Lock" in why for why in res["locked"].values())
    for v1, files in history.items():  # v2 ignores what the lock keeps
        assert _restored(repo, repo.resolve(v1), tmp_path) == files

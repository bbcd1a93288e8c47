"""Corruption in a region's store is detected, named by its object key, and repaired from the other region; never
silently accepted. Against the real SeaweedFS regions, through the real CLI.

Five kinds of damage to a repository of format v2, made directly with boto3 in the primary region's bucket (as bit
rot, a truncated write, a lost object or a hand edit would leave them): a flipped bit in one chunk's blob inside its
pack, a truncated pack (every blob from the cut on is damaged), a deleted pack (every chunk packed with it is
missing), a snapshot record and a file tree each edited by hand and put back under its own key. Each meets three
detectors: `llmdr verify`, `llmdr restore`, and the restore test (`restoretest.run_restore_test`: what
`llmdr verify --restore-test` and the DR drill run); then `llmdr verify --repair` must bring intact copies back from
the secondary region, after which verify passes and a restore is byte-identical to the bundle.

A record edited and stored under its new hash is a new, forged snapshot: no id check can catch it, only a
signature. With `manifest_signing` on it must be refused by every detector; without it, it is accepted (xfail).

The index is derived data: a lost or truncated index object leaves every chunk "in no index" (found, named, never
used), and `llmdr repair index` rebuilds it from the pack trailers, after which verify and restore pass.

Every CLI run gets a fresh state folder, as on a DR host: a record or tree cached on this machine would otherwise
stand in for the region's damaged copy (`llmdr restore` uses the cache; verify and the restore test read the region).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from llmdr.config import Config
from llmdr.repo import ops
from llmdr.repo.bundle import content_digests, detected_specs
from llmdr.repo.layout import INDEX, pack_key, record_key, tree_key
from llmdr.repo.manifest import canonical_json
from llmdr.repo.repository import Repository
from llmdr.repo.reserved import LOCK, MARKER, is_tmp_name
from llmdr.serving import golden, restoretest
from llmdr.serving.endpoint import OpenAIEndpoint
from llmdr.serving.tinymodel import write_demo_bundle
from llmdr.storage.credentials import resolve_keys
from tests.support.config import two_region_yaml, write_config
from tests.support.damage import chunks_in_same_pack
from tests.support.serving import serving
from tests.support.trees import read_tree

pytestmark = pytest.mark.s3

SIGN_ENV = "LLMDR_T_CORRUPTION_SIGN"
SIGN_KEY = "corruption-test-signing-key-0123456789abcdef"
SIGNING = f"manifest_signing: {{method: hmac, hmac_key_env: {SIGN_ENV}}}"


@dataclass
class World:
    stack: Config
    root: Path
    bundle: Path
    golden: Path
    tree: dict[str, bytes] = field(default_factory=dict)

    def config(self, prefix: str, *, signed: bool = False) -> tuple[Path, Config]:
        """A config on ``prefix`` in both regions with a state folder of its own (credentials copied in)."""
        d = self.root / f"c-{uuid.uuid4().hex[:10]}"
        state = d / "state"
        state.mkdir(parents=True)
        shutil.copy(self.stack.state_path / "local.env", state / "local.env")
        text = two_region_yaml(self.stack.primary.port, self.stack.secondaries[0].port, prefix=prefix,
                               bundle=f"{{name: tiny, path: {self.bundle}}}",
                               extra="transfer: {workers: 4, download_workers: 4}\n" + (SIGNING if signed else ""),
                               state_dir=state)
        path = d / "llmdr.yaml"
        return path, write_config(path, text)


@pytest.fixture(scope="module")
def world(stack, tmp_path_factory) -> World:
    """The tiny real model bundle and a golden set recorded from it being served."""
    root = tmp_path_factory.mktemp("corruption")
    bundle = root / "bundle"
    write_demo_bundle(bundle)
    specs = detected_specs(bundle)
    with serving(bundle) as url:
        gs = golden.record(golden.default_cases(), OpenAIEndpoint(url).answer,
                           {"components": content_digests(bundle, specs)})
    gs.save(root / "golden.jsonl")
    return World(stack, root, bundle, root / "golden.jsonl", read_tree(bundle))


@pytest.fixture(scope="module")
def sign_env():
    with pytest.MonkeyPatch.context() as m:
        m.setenv(SIGN_ENV, SIGN_KEY)
        yield


def llmdr(path: Path, *args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "llmdr.cli", "--config", str(path), *args], capture_output=True,
                       text=True, timeout=180, env={**os.environ, SIGN_ENV: SIGN_KEY})
    assert "Traceback" not in r.stderr, r.stderr
    return r


class Raw:
    """Direct access to a region's bucket, bypassing llmdr: how the damage gets there."""

    def __init__(self, cfg: Config, region: str) -> None:
        import boto3
        from botocore.config import Config as BotoConfig

        self.region = cfg.region(region)
        k = resolve_keys(cfg, self.region)
        self.client = boto3.client("s3", endpoint_url=self.region.endpoint, aws_access_key_id=k.access_key_id,
                                   aws_secret_access_key=k.secret_access_key, region_name="us-east-1",
                                   config=BotoConfig(s3={"addressing_style": "path"}))

    def _key(self, key: str) -> str:
        return f"{self.region.prefix}/{key}"

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.region.bucket, Key=self._key(key))["Body"].read()

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.region.bucket, Key=self._key(key), Body=data)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.region.bucket, Key=self._key(key))


def unsigned_body(stored: bytes) -> bytes:
    cut = stored.rfind(b"\nllmdr-signature v1 ")
    return stored if cut < 0 else stored[:cut]


def edited_tree(data: bytes) -> bytes:
    """A file list as someone editing it by hand would leave it: a file's mode changed (a setuid bit slipped in)."""
    doc = json.loads(data)
    doc["files"][0]["mode"] = 0o4777
    return canonical_json(doc)


def edited_record(body: bytes, tree: str | None = None) -> bytes:
    """A snapshot record dated a year later (so that it would be 'latest'), optionally naming another tree."""
    doc = json.loads(body)
    doc["created"] = doc["created"].replace(doc["created"][:4], str(int(doc["created"][:4]) + 1), 1)
    if tree is not None:
        doc["tree"] = tree
    return canonical_json(doc)


def flip_bit(raw: Raw, repo: Repository, sid: str, chunk: str) -> tuple[str, list[str]]:
    e = repo.locate(chunk)
    key = pack_key(e.pack.hex())
    data = bytearray(raw.get(key))
    data[e.offset + e.stored_length // 2] ^= 0x10
    raw.put(key, bytes(data))
    return key, [chunk]


def truncate(raw: Raw, repo: Repository, sid: str, chunk: str) -> tuple[str, list[str]]:
    e = repo.locate(chunk)
    key = pack_key(e.pack.hex())
    cut = e.offset + 1000
    raw.put(key, raw.get(key)[:cut])
    return key, sorted(x.chunk.hex() for x in repo.index().entries_of_pack(e.pack) if x.offset + x.stored_length > cut)


def delete(raw: Raw, repo: Repository, sid: str, chunk: str) -> tuple[str, list[str]]:
    lost = sorted(chunks_in_same_pack(repo, chunk))
    key = pack_key(repo.locate(chunk).pack.hex())
    raw.delete(key)
    return key, lost


def edit_record_in_place(raw: Raw, repo: Repository | None, sid: str, chunk: str = "") -> tuple[str, list[str]]:
    key = record_key(sid)
    stored = raw.get(key)
    body = unsigned_body(stored)
    raw.put(key, edited_record(body) + stored[len(body):])  # under its own key, any signature kept
    return key, []


def edit_tree_in_place(raw: Raw, repo: Repository, sid: str, chunk: str) -> tuple[str, list[str]]:
    key = tree_key(repo.load_record(sid)["tree"])
    raw.put(key, edited_tree(raw.get(key)))
    return key, []


CORRUPTIONS = {"bit-flip": flip_bit, "truncated": truncate, "deleted": delete, "record-edited": edit_record_in_place,
               "tree-edited": edit_tree_in_place}
SNAPSHOT_OBJECTS = ("record-edited", "tree-edited")  # the snapshot's own objects, checked before any chunk
DETECTORS = ("verify", "restore", "restore-test")


@dataclass
class Case:
    """One kind of damage in the primary region and what each detector, then the repair, made of it."""

    name: str
    snapshot_id: str
    chunk: str  # the chunk the damage was aimed at (for a record or tree: the chunk that would have been damaged)
    chunks: list[str]  # every chunk the damage reached (a pack's other blobs too), sorted; none for a record or tree
    paths: set[str]  # the files holding them
    key: str  # the object key of the damaged object
    verify_text: subprocess.CompletedProcess
    verify_json: subprocess.CompletedProcess
    restore: subprocess.CompletedProcess
    restored: dict[str, bytes]  # what the failed restore left under final names
    restore_test: object
    repair: subprocess.CompletedProcess
    verify_after: subprocess.CompletedProcess
    restore_after: subprocess.CompletedProcess
    restored_after: dict[str, bytes]


def protect(world: World, prefix: str, *, signed: bool = False) -> tuple[str, str, dict[str, set[str]]]:
    """Snapshot the bundle into the primary and copy it to the secondary (own state folder, so that nothing this
    step caches helps the detectors). Returns (snapshot id, the largest file's first chunk, chunk -> its files)."""
    _, cfg = world.config(prefix, signed=signed)
    snap = ops.snapshot_bundle(cfg)
    ops.replicate(cfg, snap.snapshot_id, to="secondary")
    entry = max(snap.manifest.files, key=lambda f: f.size)
    files: dict[str, set[str]] = {}
    for f in snap.manifest.files:
        for d, _ in f.chunks:
            files.setdefault(d, set()).add(f.path)
    return snap.snapshot_id, entry.chunks[0][0], files


def final_names(target: Path) -> dict[str, bytes]:
    """The files under their final names in a restore target (not the temporary files, not the resume marker)."""
    if not target.exists():
        return {}
    return {k: v for k, v in read_tree(target).items()
            if not is_tmp_name(k.rsplit("/", 1)[-1]) and k not in (MARKER, LOCK)}


def run_detectors(world: World, path: Path, cfg: Config, sid: str, out: Path) -> dict:
    return {
        "verify_text": llmdr(path, "verify", sid),
        "verify_json": llmdr(path, "verify", sid, "--json"),
        "restore": llmdr(path, "restore", sid, "--to", str(out / "restore")),
        "restored": final_names(out / "restore"),
        "restore_test": restoretest.run_restore_test(cfg, sid, region="primary", golden_path=world.golden),
    }


@pytest.fixture(scope="module", params=list(CORRUPTIONS))
def case(request, world, tmp_path_factory) -> Case:
    out = tmp_path_factory.mktemp(request.param)
    prefix = f"t-{uuid.uuid4().hex[:10]}"
    sid, chunk, files = protect(world, prefix)
    path, cfg = world.config(prefix)
    repo = ops.open_repo(cfg, "primary", read_only=True, cache=False)
    key, chunks = CORRUPTIONS[request.param](Raw(cfg, "primary"), repo, sid, chunk)
    assert chunk in chunks or request.param in SNAPSHOT_OBJECTS
    found = run_detectors(world, path, cfg, sid, out)
    repair = llmdr(path, "verify", sid, "--repair", "--json")
    verify_after = llmdr(path, "verify", sid, "--json")
    restore_after = llmdr(path, "restore", sid, "--to", str(out / "after"))
    return Case(request.param, sid, chunk, chunks, {p for c in chunks for p in files[c]}, key, repair=repair,
                verify_after=verify_after, restore_after=restore_after, restored_after=final_names(out / "after"),
                **found)


def chunk_state(case: Case) -> str:
    return "missing" if case.name == "deleted" else "corrupt"


@pytest.mark.parametrize("detector", DETECTORS)
def test_detected(case, detector, world):
    """The damage fails the detector, which names the damaged object; nothing damaged is written as a file."""
    snapshot_object = case.name in SNAPSHOT_OBJECTS
    if detector == "verify":
        if snapshot_object:  # the chunks cannot be checked against a file list that is not the snapshot's
            assert case.verify_text.returncode == 1, case.verify_text.stderr
            assert "is damaged" in case.verify_text.stderr and case.snapshot_id[:12] in case.verify_text.stderr
        else:
            assert case.verify_text.returncode == 6, case.verify_text.stdout + case.verify_text.stderr
            state = chunk_state(case)
            for c in case.chunks:
                assert f"chunk {c[:12]} {state}" in case.verify_text.stdout
            doc = json.loads(case.verify_json.stdout)
            other = "corrupt" if state == "missing" else "missing"
            assert doc["ok"] is False and doc["chunks"][state] == case.chunks and doc["chunks"][other] == []
    elif detector == "restore":
        r = case.restore
        assert r.returncode == 1, r.stdout + r.stderr
        if snapshot_object:
            assert f"{case.key} is damaged" in r.stderr, r.stderr
            assert case.restored == {}  # refused before anything was written
        else:
            if case.name == "deleted":  # the pack, and the files it held chunks of
                assert f"pack {case.key} is missing" in r.stderr, r.stderr
                assert any(repr(p) in r.stderr for p in case.paths), r.stderr
            else:
                assert any(f"chunk {c[:12]}" in r.stderr for c in case.chunks), r.stderr
                assert ("(damaged)" if case.name == "bit-flip" else "(truncated)") in r.stderr, r.stderr
            assert not case.paths & set(case.restored)  # no damaged file ever appears under its name
            assert all(data == world.tree[p] for p, data in case.restored.items())
    else:
        res = case.restore_test
        assert not res.ok and res.golden is None
        assert res.problems[0].startswith("restore failed: ")


@pytest.mark.parametrize("detector", DETECTORS)
def test_reports_the_object_key(case, detector):
    """Each detector's report names the damaged object by its key (`packs/ab/<64 hex>`, `snaps/<id>`,
    `trees/ab/<64 hex>`), which is what an operator looks up in the bucket; for a chunk, the pack holding it."""
    if detector == "verify":
        if case.name in SNAPSHOT_OBJECTS:
            assert case.key in case.verify_text.stderr
        else:  # the text and JSON reports name every damaged chunk's pack
            for c in case.chunks:
                assert f"chunk {c[:12]} {chunk_state(case)} ({case.key})" in case.verify_text.stdout
            assert json.loads(case.verify_json.stdout)["chunks"]["keys"] == {
                c: case.key for c in case.chunks}  # the key of the pack that holds each damaged chunk
    elif detector == "restore":
        assert case.key in case.restore.stderr
    else:
        damaged = [p for p in case.restore_test.problems if p.startswith("damaged in ")]
        if case.name in SNAPSHOT_OBJECTS:
            assert len(damaged) == 1 and damaged[0].endswith(f": {case.key} (damaged)"), case.restore_test.problems
        else:
            assert sorted(damaged) == sorted(f"damaged in {case.restore_test.location}: chunk {c[:12]} in {case.key} "
                                             f"({chunk_state(case)})" for c in case.chunks), case.restore_test.problems


def test_repaired_from_the_other_region(case, world):
    """`llmdr verify --repair` copies every intact object back from the secondary and says so; then verify passes
    and a restore is byte-identical."""
    assert case.repair.returncode == 0, case.repair.stdout + case.repair.stderr
    doc = json.loads(case.repair.stdout)
    if case.name in SNAPSHOT_OBJECTS:
        assert doc["chunks"]["manifest"] == {"key": case.key, "state": "damaged", "ok": True,
                                             "repaired_from": "secondary",
                                             "detail": doc["chunks"]["manifest"]["detail"]}
        assert "repaired from secondary" in case.repair.stderr and case.key in case.repair.stderr
    else:
        assert doc["chunks"]["repaired"] == dict.fromkeys(case.chunks, "secondary") and doc["ok"] is True
    assert case.verify_after.returncode == 0, case.verify_after.stdout + case.verify_after.stderr
    after = json.loads(case.verify_after.stdout)["chunks"]
    assert after["ok"] and after["missing"] == after["corrupt"] == [] and after["manifest"]["state"] == "ok"
    assert after["chunks_read"] == after["chunks_total"]
    assert case.restore_after.returncode == 0, case.restore_after.stderr
    assert case.restored_after == world.tree


# --- a hand-edited record stored under its new hash: a forged snapshot ------------------------------------------------
@pytest.mark.parametrize("signed", [True, pytest.param(False, marks=pytest.mark.xfail(strict=True, reason=(
    "manifest signing (#9 item 5) is off in this config: a record stored under its own hash proves nothing "
    "about who wrote it, so an unsigned region accepts the forged snapshot")))], ids=["signed", "unsigned"])
def test_forged_snapshot_is_refused(world, sign_env, tmp_path, signed):
    prefix = f"t-{uuid.uuid4().hex[:10]}"
    sid, _, _ = protect(world, prefix, signed=signed)
    path, cfg = world.config(prefix, signed=signed)
    raw = Raw(cfg, "primary")
    stored = raw.get(record_key(sid))
    body = unsigned_body(stored)
    tree = edited_tree(raw.get(tree_key(json.loads(body)["tree"])))  # a setuid bit in the file list
    tid = hashlib.sha256(tree).hexdigest()
    raw.put(tree_key(tid), tree)  # trees are content-addressed, not signed: the record names them
    forged = edited_record(body, tid)
    fid = hashlib.sha256(forged).hexdigest()
    raw.put(record_key(fid), forged + stored[len(body):])  # under its own hash, the genuine signature copied
    found = run_detectors(world, path, cfg, fid, tmp_path)
    assert found["verify_text"].returncode != 0, found["verify_text"].stdout
    assert record_key(fid) in found["verify_text"].stderr
    assert found["restore"].returncode != 0 and found["restored"] == {}, found["restore"].stdout
    res = found["restore_test"]
    assert not res.ok and res.golden is None
    if signed:  # refused as soon as the id is resolved, naming the record and why
        assert record_key(fid) in res.problems[0] and "fails its signature check" in res.problems[0], res.problems
    else:
        assert res.problems[0].startswith("restore failed: ")
    # the genuine snapshot is untouched by it
    assert llmdr(path, "verify", sid).returncode == 0


def test_in_place_edit_of_a_signed_record_is_refused_and_repaired(world, sign_env, tmp_path):
    prefix = f"t-{uuid.uuid4().hex[:10]}"
    sid, _, _ = protect(world, prefix, signed=True)
    path, cfg = world.config(prefix, signed=True)
    key, _ = edit_record_in_place(Raw(cfg, "primary"), None, sid)
    found = run_detectors(world, path, cfg, sid, tmp_path)
    assert found["verify_text"].returncode == 1 and key in found["verify_text"].stderr
    assert "signature" in found["verify_text"].stderr
    assert found["restore"].returncode == 1 and key in found["restore"].stderr and found["restored"] == {}
    assert any(p.endswith(f": {key} (damaged)") for p in found["restore_test"].problems)
    repair = llmdr(path, "verify", sid, "--repair", "--json")
    assert repair.returncode == 0 and json.loads(repair.stdout)["chunks"]["manifest"]["repaired_from"] == "secondary"
    assert llmdr(path, "restore", sid, "--to", str(tmp_path / "after")).returncode == 0
    assert read_tree(tmp_path / "after") == world.tree


# --- the record check reads the region, and finds the snapshot behind 'latest' even when its record is damaged -------
def test_verify_reads_the_regions_record_not_this_machines_cache(world, tmp_path):
    """A restore on this machine caches the (verified) record and tree; verify and the restore test must still see
    that the region's own copy was damaged since: that copy is what a restore on a DR host gets."""
    prefix = f"t-{uuid.uuid4().hex[:10]}"
    sid, _, _ = protect(world, prefix)
    path, cfg = world.config(prefix)
    assert llmdr(path, "restore", sid, "--to", str(tmp_path / "warm")).returncode == 0  # caches record and tree
    key, _ = edit_record_in_place(Raw(cfg, "primary"), None, sid)
    r = llmdr(path, "verify", sid)
    assert r.returncode == 1 and key in r.stderr and "is damaged" in r.stderr
    res = restoretest.run_restore_test(cfg, sid, region="primary", golden_path=world.golden)
    assert not res.ok and any(p.endswith(f": {key} (damaged)") for p in res.problems), res.problems


def test_verify_latest_with_a_damaged_record(world, tmp_path):
    """'latest' is the catalog's head whatever its record holds: with the newest record damaged, verify names it and
    the restore test fails on it (neither quietly checks the one before); verify --repair repairs it from the
    secondary's intact copy."""
    prefix = f"t-{uuid.uuid4().hex[:10]}"
    protect(world, prefix)
    sid, _, _ = protect(world, prefix)  # the newest
    path, cfg = world.config(prefix)
    key, _ = edit_record_in_place(Raw(cfg, "primary"), None, sid)
    r = llmdr(path, "verify", "latest")
    assert r.returncode == 1 and key in r.stderr and "--repair" in r.stderr
    res = restoretest.run_restore_test(cfg, "latest", region="primary", golden_path=world.golden)  # tests the newest, not the one before
    assert res.snapshot_id == sid and not res.ok and any(p.endswith(f": {key} (damaged)") for p in res.problems)
    r = llmdr(path, "verify", "latest", "--repair", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)["chunks"]
    assert doc["snapshot_id"] == sid and doc["manifest"]["repaired_from"] == "secondary"
    assert llmdr(path, "verify", "latest").returncode == 0


# --- the index: derived data, rebuilt from the packs ------------------------------------------------------------------
def lose_index(raw: Raw, keys: list[str]) -> None:
    for k in keys:
        raw.delete(k)


def truncate_index(raw: Raw, keys: list[str]) -> None:
    for k in keys:
        raw.put(k, raw.get(k)[:-40])  # as a cut-off write leaves it: its hash and the last entry gone


@pytest.mark.parametrize("damage", [lose_index, truncate_index], ids=["lost", "truncated"])
def test_damaged_index_is_rebuilt_from_the_packs(world, tmp_path, damage):
    """With the index lost or truncated, no chunk can be found: verify reports every chunk missing and restore writes
    no file, neither uses anything unproven. `llmdr repair index` reads the pack trailers back into a new index;
    then verify reads every chunk, restore is byte-identical, and listing the region reports nothing unreadable."""
    prefix = f"t-{uuid.uuid4().hex[:10]}"
    sid, _, files = protect(world, prefix)
    path, cfg = world.config(prefix)
    repo = ops.open_repo(cfg, "primary", read_only=True, cache=False)
    indexes = [i.key for i in repo.store.list(INDEX)]
    packs = repo.pack_infos()
    assert indexes and packs
    damage(Raw(cfg, "primary"), indexes)
    r = llmdr(path, "verify", sid, "--json")
    assert r.returncode == 6, r.stdout + r.stderr
    doc = json.loads(r.stdout)["chunks"]
    assert doc["missing"] == sorted(files) and doc["chunks_read"] == 0
    assert all(v == "in no index" for v in doc["keys"].values())
    r = llmdr(path, "restore", sid, "--to", str(tmp_path / "before"))
    assert r.returncode == 1 and "in no index" in r.stderr and final_names(tmp_path / "before") == {}, r.stderr
    r = llmdr(path, "repair", "index", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    rebuilt = json.loads(r.stdout)
    assert rebuilt["packs"] == len(packs) and rebuilt["chunks"] == len(files) and rebuilt["bad_packs"] == {}
    assert rebuilt["superseded"] == (0 if damage is lose_index else len(indexes))  # every index present
    r = llmdr(path, "verify", sid, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)["chunks"]
    assert doc["ok"] and doc["chunks_read"] == doc["chunks_total"] == len(files)
    assert llmdr(path, "restore", sid, "--to", str(tmp_path / "after")).returncode == 0
    assert read_tree(tmp_path / "after") == world.tree
    listed = llmdr(path, "snapshots")
    assert listed.returncode == 0 and sid[:12] in listed.stdout, listed.stdout + listed.stderr

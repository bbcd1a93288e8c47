"""Corruption in a region's store is detected, named by its object key, and repaired from the other region; never
silently accepted. Against the real SeaweedFS regions, through the real CLI.

Four kinds of damage, made directly with boto3 in the primary region's bucket (as bit rot, a truncated write, a lost
object or a hand edit would leave them): a flipped bit in a chunk, a truncated chunk, a deleted chunk, and a manifest
edited by hand and put back under its own key. Each meets three detectors: `llmdr verify`, `llmdr restore`, and the
restore test (`restoretest.run_restore_test`: what `llmdr verify --restore-test` and the DR drill run); then
`llmdr verify --repair` must bring the intact copy back from the secondary region, after which verify passes and a
restore is byte-identical to the bundle.

A manifest edited and stored under its new hash is a new, forged snapshot: no id check can catch it, only a
signature. With `manifest_signing` on it must be refused by every detector; without it, it is accepted (xfail).

Every CLI run gets a fresh state folder, as on a DR host: a manifest cached on this machine would otherwise stand
in for the region's damaged copy (`llmdr restore` uses the cache; verify and the restore test read the region).
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
from llmdr.repo.repository import chunk_key, manifest_key
from llmdr.repo.restore import MARKER, TMP_SUFFIX
from llmdr.serving import golden, restoretest
from llmdr.serving.endpoint import OpenAIEndpoint
from llmdr.serving.tinymodel import write_demo_bundle
from llmdr.storage.credentials import resolve_keys
from tests.support.config import two_region_yaml, write_config
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


def edited(body: bytes) -> bytes:
    """The manifest as someone editing it by hand would leave it: a file's mode changed (a setuid bit slipped in)
    and dated a day later, so that it would be 'latest'."""
    doc = json.loads(body)
    doc["files"][0]["mode"] = 0o4777
    doc["created"] = doc["created"].replace(doc["created"][:4], str(int(doc["created"][:4]) + 1), 1)
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def flip_bit(raw: Raw, sid: str, chunk: str) -> str:
    data = bytearray(raw.get(chunk_key(chunk)))
    data[len(data) // 2] ^= 0x10
    raw.put(chunk_key(chunk), bytes(data))
    return chunk_key(chunk)


def truncate(raw: Raw, sid: str, chunk: str) -> str:
    raw.put(chunk_key(chunk), raw.get(chunk_key(chunk))[: 1000])
    return chunk_key(chunk)


def delete(raw: Raw, sid: str, chunk: str) -> str:
    raw.delete(chunk_key(chunk))
    return chunk_key(chunk)


def edit_manifest_in_place(raw: Raw, sid: str, chunk: str) -> str:
    stored = raw.get(manifest_key(sid))
    body = unsigned_body(stored)
    raw.put(manifest_key(sid), edited(body) + stored[len(body):])  # under its own key, any signature kept
    return manifest_key(sid)


CORRUPTIONS = {"bit-flip": flip_bit, "truncated": truncate, "deleted": delete, "manifest-edited": edit_manifest_in_place}
DETECTORS = ("verify", "restore", "restore-test")


@dataclass
class Case:
    """One kind of damage in the primary region and what each detector, then the repair, made of it."""

    name: str
    snapshot_id: str
    chunk: str  # the damaged chunk (for the manifest case: the chunk that would have been damaged)
    path: str  # the file holding it
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


def protect(world: World, prefix: str, *, signed: bool = False) -> tuple[str, str, str]:
    """Snapshot the bundle into the primary and copy it to the secondary (own state folder, so that nothing this
    step caches helps the detectors). Returns (snapshot id, the largest file's first chunk, that file)."""
    _, cfg = world.config(prefix, signed=signed)
    snap = ops.snapshot_bundle(cfg)
    ops.replicate(cfg, snap.snapshot_id, to="secondary")
    entry = max(snap.manifest.files, key=lambda f: f.size)
    return snap.snapshot_id, entry.chunks[0][0], entry.path


def final_names(target: Path) -> dict[str, bytes]:
    """The files under their final names in a restore target (not the temporary files, not the resume marker)."""
    if not target.exists():
        return {}
    return {k: v for k, v in read_tree(target).items() if not k.endswith(TMP_SUFFIX) and k != MARKER}


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
    sid, chunk, fpath = protect(world, prefix)
    path, cfg = world.config(prefix)
    key = CORRUPTIONS[request.param](Raw(cfg, "primary"), sid, chunk)
    found = run_detectors(world, path, cfg, sid, out)
    repair = llmdr(path, "verify", sid, "--repair", "--json")
    verify_after = llmdr(path, "verify", sid, "--json")
    restore_after = llmdr(path, "restore", sid, "--to", str(out / "after"))
    return Case(request.param, sid, chunk, fpath, key, repair=repair, verify_after=verify_after,
                restore_after=restore_after, restored_after=final_names(out / "after"), **found)


@pytest.mark.parametrize("detector", DETECTORS)
def test_detected(case, detector, world):
    """The damage fails the detector, which names the damaged object; nothing damaged is written as a file."""
    manifest = case.name == "manifest-edited"
    if detector == "verify":
        if manifest:  # the chunks cannot be checked against a manifest that is not the snapshot's
            assert case.verify_text.returncode == 1, case.verify_text.stderr
            assert "is damaged" in case.verify_text.stderr and case.snapshot_id[:12] in case.verify_text.stderr
        else:
            assert case.verify_text.returncode == 6, case.verify_text.stdout + case.verify_text.stderr
            state = "missing" if case.name == "deleted" else "corrupt"
            assert f"chunk {case.chunk[:12]} {state}" in case.verify_text.stdout
            doc = json.loads(case.verify_json.stdout)
            assert doc["ok"] is False and doc["chunks"][state] == [case.chunk]
    elif detector == "restore":
        r = case.restore
        assert r.returncode == 1, r.stdout + r.stderr
        if manifest:
            assert f"manifest snapshots/{case.snapshot_id}.json is damaged" in r.stderr
            assert case.restored == {}  # refused before anything was written
        else:
            assert case.chunk[:12] in r.stderr and ("missing" if case.name == "deleted" else "corrupt") in r.stderr
            assert case.path not in case.restored  # the damaged file never appears under its name
            assert all(data == world.tree[p] for p, data in case.restored.items())
    else:
        res = case.restore_test
        assert not res.ok and res.golden is None
        assert res.problems[0].startswith("restore failed: ")


@pytest.mark.parametrize("detector", DETECTORS)
def test_reports_the_object_key(case, detector):
    """Each detector's report names the damaged object by its key (`chunks/ab/<64 hex>`, `snapshots/<id>.json`),
    which is what an operator looks up in the bucket."""
    if detector == "verify":
        if case.name == "manifest-edited":
            assert case.key in case.verify_text.stderr
        else:  # the text and JSON reports name every damaged chunk's key
            assert case.key in case.verify_text.stdout
            assert json.loads(case.verify_json.stdout)["chunks"]["keys"] == {case.chunk: case.key}
    elif detector == "restore":
        assert case.key in case.restore.stderr
    else:
        damaged = [p for p in case.restore_test.problems if p.startswith("damaged in ")]
        state = {"deleted": "missing", "manifest-edited": "damaged"}.get(case.name, "corrupt")
        assert len(damaged) == 1 and damaged[0].endswith(f": {case.key} ({state})"), case.restore_test.problems


def test_repaired_from_the_other_region(case, world):
    """`llmdr verify --repair` copies the intact object back from the secondary and says so; then verify passes and
    a restore is byte-identical."""
    assert case.repair.returncode == 0, case.repair.stdout + case.repair.stderr
    doc = json.loads(case.repair.stdout)
    if case.name == "manifest-edited":
        assert doc["chunks"]["manifest"] == {"key": case.key, "state": "damaged", "ok": True,
                                             "repaired_from": "secondary",
                                             "detail": doc["chunks"]["manifest"]["detail"]}
        assert "repaired from secondary" in case.repair.stderr and case.key in case.repair.stderr
    else:
        assert doc["chunks"]["repaired"] == {case.chunk: "secondary"} and doc["ok"] is True
    assert case.verify_after.returncode == 0, case.verify_after.stdout + case.verify_after.stderr
    after = json.loads(case.verify_after.stdout)["chunks"]
    assert after["ok"] and after["missing"] == after["corrupt"] == [] and after["manifest"]["state"] == "ok"
    assert case.restore_after.returncode == 0, case.restore_after.stderr
    assert case.restored_after == world.tree


# --- a hand-edited manifest stored under its new hash: a forged snapshot ----------------------------------------------
@pytest.mark.parametrize("signed", [True, pytest.param(False, marks=pytest.mark.xfail(strict=True, reason=(
    "manifest signing (#9 item 5) is off in this config: a manifest stored under its own hash proves nothing "
    "about who wrote it, so an unsigned region accepts the forged snapshot")))], ids=["signed", "unsigned"])
def test_forged_snapshot_is_refused(world, sign_env, tmp_path, signed):
    prefix = f"t-{uuid.uuid4().hex[:10]}"
    sid, _, _ = protect(world, prefix, signed=signed)
    path, cfg = world.config(prefix, signed=signed)
    raw = Raw(cfg, "primary")
    stored = raw.get(manifest_key(sid))
    body = unsigned_body(stored)
    forged = edited(body)
    fid = hashlib.sha256(forged).hexdigest()
    raw.put(manifest_key(fid), forged + stored[len(body):])  # under its own hash, the genuine signature copied
    found = run_detectors(world, path, cfg, fid, tmp_path)
    assert found["verify_text"].returncode != 0, found["verify_text"].stdout
    assert manifest_key(fid) in found["verify_text"].stderr
    assert found["restore"].returncode != 0 and found["restored"] == {}, found["restore"].stdout
    assert not found["restore_test"].ok and found["restore_test"].problems[0].startswith("restore failed: ")
    # the genuine snapshot is untouched by it
    assert llmdr(path, "verify", sid).returncode == 0


def test_in_place_edit_of_a_signed_manifest_is_refused_and_repaired(world, sign_env, tmp_path):
    prefix = f"t-{uuid.uuid4().hex[:10]}"
    sid, _, _ = protect(world, prefix, signed=True)
    path, cfg = world.config(prefix, signed=True)
    key = edit_manifest_in_place(Raw(cfg, "primary"), sid, "")
    found = run_detectors(world, path, cfg, sid, tmp_path)
    assert found["verify_text"].returncode == 1 and key in found["verify_text"].stderr
    assert "signature" in found["verify_text"].stderr
    assert found["restore"].returncode == 1 and key in found["restore"].stderr and found["restored"] == {}
    assert any(p.endswith(f": {key} (damaged)") for p in found["restore_test"].problems)
    repair = llmdr(path, "verify", sid, "--repair", "--json")
    assert repair.returncode == 0 and json.loads(repair.stdout)["chunks"]["manifest"]["repaired_from"] == "secondary"
    assert llmdr(path, "restore", sid, "--to", str(tmp_path / "after")).returncode == 0
    assert read_tree(tmp_path / "after") == world.tree


# --- the manifest check reads the region, and finds the snapshot behind 'latest' even when its manifest is damaged -----
def test_verify_reads_the_regions_manifest_not_this_machines_cache(world, tmp_path):
    """A restore on this machine caches the (verified) manifest; verify and the restore test must still see that the
    region's own copy was damaged since: that copy is what a restore on a DR host gets."""
    prefix = f"t-{uuid.uuid4().hex[:10]}"
    sid, _, _ = protect(world, prefix)
    path, cfg = world.config(prefix)
    assert llmdr(path, "restore", sid, "--to", str(tmp_path / "warm")).returncode == 0  # caches the manifest
    key = edit_manifest_in_place(Raw(cfg, "primary"), sid, "")
    r = llmdr(path, "verify", sid)
    assert r.returncode == 1 and key in r.stderr and "is damaged" in r.stderr
    res = restoretest.run_restore_test(cfg, sid, region="primary", golden_path=world.golden)
    assert not res.ok and any(p.endswith(f": {key} (damaged)") for p in res.problems), res.problems


def test_verify_latest_with_a_damaged_manifest(world, tmp_path):
    """'latest' is decided on every manifest: with the newest one damaged, verify names it and the restore test
    fails on it (neither quietly checks the one before); verify --repair decides with the secondary's intact copy
    and repairs it."""
    prefix = f"t-{uuid.uuid4().hex[:10]}"
    protect(world, prefix)
    sid, _, _ = protect(world, prefix)  # the newest
    path, cfg = world.config(prefix)
    key = edit_manifest_in_place(Raw(cfg, "primary"), sid, "")
    r = llmdr(path, "verify", "latest")
    assert r.returncode == 1 and key in r.stderr and "--repair" in r.stderr
    res = restoretest.run_restore_test(cfg, "latest", region="primary", golden_path=world.golden)  # tests the newest, not the one before
    assert res.snapshot_id == sid and not res.ok and any(p.endswith(f": {key} (damaged)") for p in res.problems)
    r = llmdr(path, "verify", "latest", "--repair", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)["chunks"]
    assert doc["snapshot_id"] == sid and doc["manifest"]["repaired_from"] == "secondary"
    assert llmdr(path, "verify", "latest").returncode == 0

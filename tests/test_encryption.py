"""Client-side encryption and snapshot signatures against real SeaweedFS: what lands in the bucket is ciphertext
with the key id, a copy decrypts and re-encrypts between regions with different keys, dedup still works within a
key, and a wrong key, a flipped bit or an edited/forged/unsigned snapshot record or catalog entry is refused, never
used.

Format v2: a pack carries its key id in its header and seals each blob on its own (AAD binds repository and chunk
id) and its trailer whole, so neither chunk bytes nor chunk ids are visible in it, and one blob fetched with a ranged
GET opens and is verified without the rest of the pack. Index, trees, records and catalog objects are sealed whole.
"""

import hashlib
import json
import random
import uuid

import pytest

from llmdr.errors import ConfigError, IntegrityError
from llmdr.repo.catalog import entry_key
from llmdr.repo.chunking import ChunkerParams
from llmdr.repo.index import IndexEntry
from llmdr.repo.layout import RepoConfig, pack_key, record_key, tree_key
from llmdr.repo.manifest import canonical_json
from llmdr.repo.pack import MAGIC as PACK_MAGIC
from llmdr.repo.pack import read_blobs
from llmdr.repo.replicate import replicate_snapshot
from llmdr.repo.repository import Repository
from llmdr.repo.restore import restore_snapshot
from llmdr.repo.snapshot import take_snapshot
from llmdr.storage.credentials import resolve_keys
from llmdr.storage.crypto import MAGIC, key_id
from llmdr.storage.factory import open_region
from tests.support.config import two_regions
from tests.support.damage import chunk_pack
from tests.support.trees import read_tree, write_tree

SMALL = ChunkerParams(avg_size=4096, min_size=1024, max_size=16384)
KEY_P = "11" * 32
KEY_S = "22" * 32
SIGN = "manifest-signing-key-0123456789abcdef"
BLOB_OVERHEAD = 12 + 16  # a sealed blob: nonce | ciphertext | GCM tag

ENC_P = "    encryption: {key_env: LLMDR_T_KEY_P}"
ENC_S = "    encryption: {key_env: LLMDR_T_KEY_S}"
SIGNING = "manifest_signing: {method: hmac, hmac_key_env: LLMDR_T_SIGN}"


@pytest.fixture
def keys_env(monkeypatch):
    monkeypatch.setenv("LLMDR_T_KEY_P", KEY_P)
    monkeypatch.setenv("LLMDR_T_KEY_S", KEY_S)
    monkeypatch.setenv("LLMDR_T_SIGN", SIGN)


def cfg_for(stack, tmp_path, *, p_extra="", s_extra=ENC_S, top=SIGNING, prefix=None, state=None):
    return two_regions(stack, tmp_path, primary=p_extra, secondary=s_extra, extra=top, prefix=prefix, state=state)


def raw(cfg, region):
    import boto3
    from botocore.config import Config

    k = resolve_keys(cfg, region)
    return boto3.client("s3", endpoint_url=region.endpoint, aws_access_key_id=k.access_key_id,
                        aws_secret_access_key=k.secret_access_key, region_name="us-east-1",
                        config=Config(s3={"addressing_style": "path"}))


def raw_get(cfg, region, key):
    return raw(cfg, region).get_object(Bucket=region.bucket, Key=f"{region.prefix}/{key}")["Body"].read()


def raw_put(cfg, region, key, data):
    raw(cfg, region).put_object(Bucket=region.bucket, Key=f"{region.prefix}/{key}", Body=data)


def raw_range(cfg, region, key, start, length):
    return raw(cfg, region).get_object(Bucket=region.bucket, Key=f"{region.prefix}/{key}",
                                       Range=f"bytes={start}-{start + length - 1}")["Body"].read()


def raw_objects(cfg, region) -> dict[str, bytes]:
    """Every object of the region's repository as stored, by key relative to its prefix."""
    c = raw(cfg, region)
    out = {}
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=region.bucket, Prefix=f"{region.prefix}/"):
        for o in page.get("Contents", []):
            out[o["Key"][len(region.prefix) + 1:]] = c.get_object(Bucket=region.bucket, Key=o["Key"])["Body"].read()
    return out


MARKER = b"SECRET-WEIGHTS-" * 200


def bundle(root, seed=0):
    write_tree(root, {"weights.bin": MARKER + random.Random(seed).randbytes(120_000), "config.json": b'{"a": 1}'})


def protect(cfg, src):
    p = Repository(open_region(cfg, cfg.primary))
    p.ensure_config(RepoConfig(chunker=SMALL))
    snap = take_snapshot(p, src, bundle="testbundle")
    s = Repository(open_region(cfg, cfg.secondaries[0]))
    res = replicate_snapshot(p, s, snap.snapshot_id, workers=4)
    return snap, p, s, res


def test_dr_copy_is_ciphertext_with_key_id_and_restores_identically(stack, tmp_path, keys_env):
    cfg = cfg_for(stack, tmp_path)
    bundle(tmp_path / "src")
    snap, _, s, _ = protect(cfg, tmp_path / "src")
    dr = cfg.secondaries[0]
    kid = key_id(bytes.fromhex(KEY_S))
    chunks = snap.manifest.chunk_set()
    ids = [bytes.fromhex(d) for d in chunks] + [d.encode() for d in chunks]
    stored = raw_objects(cfg, dr)
    packs = {k: v for k, v in stored.items() if k.startswith("packs/")}
    assert packs and all(v.startswith(PACK_MAGIC + kid) for v in packs.values())  # the key id in every header
    # each blob is sealed on its own: stored length = plain length + nonce and tag
    assert {e.chunk.hex(): e.stored_length - BLOB_OVERHEAD for e in map(s.locate, chunks)} == chunks
    for key, data in stored.items():
        assert b"SECRET-WEIGHTS" not in data and b"weights.bin" not in data, key  # contents and file names hidden
        assert not any(i in data for i in ids), f"{key} shows a chunk id"  # the pack trailer is sealed too
        if not key.startswith(("packs/", "locks/", "config.json")):  # index, trees, records, catalog: sealed whole
            assert data.startswith(MAGIC + kid), key
    assert any(k.startswith("index/") for k in stored) and record_key(snap.snapshot_id) in stored
    # the unencrypted primary holds the plain chunks and ids (that region has no encryption configured)
    plain = b"".join(v for k, v in raw_objects(cfg, cfg.primary).items() if k.startswith("packs/"))
    assert b"SECRET-WEIGHTS" in plain and all(bytes.fromhex(d) in plain for d in chunks)
    # listing reports plaintext sizes, so size comparisons (copy, verify) work unchanged
    assert s.list_chunks() == snap.manifest.chunk_set()
    restore_snapshot(s, snap.snapshot_id, tmp_path / "out")
    assert read_tree(tmp_path / "out") == read_tree(tmp_path / "src")


def test_one_blob_from_a_ranged_read_is_decrypted_and_verified(stack, tmp_path, keys_env):
    """A ranged GET of one blob of an encrypted pack opens on its own; the same bytes offered as another chunk, or
    with one byte flipped, do not. The trailer is read back (sealed) with the region's key only."""
    cfg = cfg_for(stack, tmp_path)
    bundle(tmp_path / "src")
    snap, p, s, _ = protect(cfg, tmp_path / "src")
    dr = cfg.secondaries[0]
    a, b = sorted(snap.manifest.chunk_set())[:2]
    e = s.locate(a)
    key = pack_key(e.pack.hex())
    blob = raw_range(cfg, dr, key, e.offset, e.stored_length)
    assert len(blob) == e.stored_length and s.open_blob(blob, e, where="t") == p.load_chunk(a)
    assert hashlib.sha256(s.open_blob(blob, e, where="t")).hexdigest() == a
    with pytest.raises(IntegrityError, match="failed authentication"):  # bound to its chunk id by the AAD
        s.open_blob(blob, IndexEntry(bytes.fromhex(b), e.pack, e.offset, e.stored_length, e.plain_length),
                    where="t")
    flipped = bytearray(blob)
    flipped[len(flipped) // 2] ^= 0x01
    with pytest.raises(IntegrityError, match="failed authentication"):
        s.open_blob(bytes(flipped), e, where="t")
    size = len(raw_get(cfg, dr, key))
    blobs = read_blobs(lambda st, n: raw_range(cfg, dr, key, st, n), size, repo_id=s.repo_id,
                       cipher=s.store.blob_cipher(), where=key)
    assert {x.chunk.hex() for x in blobs} >= {a} and all(x.stored_length - x.plain_length == BLOB_OVERHEAD for x in blobs)
    with pytest.raises(IntegrityError, match="no key"):  # without the key not even the chunk ids can be read
        read_blobs(lambda st, n: raw_range(cfg, dr, key, st, n), size, repo_id=s.repo_id, cipher=None, where=key)


def test_dedup_within_a_key_and_reencryption_between_keys(stack, tmp_path, keys_env):
    cfg = cfg_for(stack, tmp_path, p_extra=ENC_P)  # both regions encrypted, with different keys
    src = tmp_path / "src"
    bundle(src)
    snap1, p, s, res1 = protect(cfg, src)
    (src / "config.json").write_bytes(b'{"a": 2}')
    snap2, _, _, res2 = protect(cfg, src)
    assert res1.chunks_copied == res1.chunks_total
    assert res2.chunks_copied == 1 and res2.chunks_total == res1.chunks_total  # only the changed chunk moved
    # the same chunk is sealed under each region's own key
    d = next(iter(snap1.manifest.chunk_set()))
    assert raw_get(cfg, cfg.primary, chunk_pack(p, d))[8:16] == key_id(bytes.fromhex(KEY_P))
    assert raw_get(cfg, cfg.secondaries[0], chunk_pack(s, d))[8:16] == key_id(bytes.fromhex(KEY_S))
    restore_snapshot(Repository(open_region(cfg, cfg.secondaries[0])), snap2.snapshot_id, tmp_path / "out")
    assert read_tree(tmp_path / "out") == read_tree(src)


def test_wrong_key_fails_clearly_and_reads_nothing(stack, tmp_path, keys_env, monkeypatch):
    cfg = cfg_for(stack, tmp_path)
    bundle(tmp_path / "src")
    snap, _, _, _ = protect(cfg, tmp_path / "src")
    monkeypatch.setenv("LLMDR_T_KEY_S", "33" * 32)
    s = Repository(open_region(cfg, cfg.secondaries[0]))
    with pytest.raises(IntegrityError, match=r"encrypted with key id .* wrong key") as err:
        restore_snapshot(s, snap.snapshot_id, tmp_path / "out")
    assert "33" * 32 not in str(err.value) and KEY_S not in str(err.value)
    assert "environment LLMDR_T_KEY_S" in str(err.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_missing_or_malformed_key_is_a_config_error(stack, tmp_path, keys_env, monkeypatch):
    cfg = cfg_for(stack, tmp_path)
    monkeypatch.delenv("LLMDR_T_KEY_S")
    with pytest.raises(ConfigError, match="LLMDR_T_KEY_S is not set"):
        open_region(cfg, cfg.secondaries[0])
    monkeypatch.setenv("LLMDR_T_KEY_S", "not-a-key")
    with pytest.raises(ConfigError, match="does not hold a 256-bit key"):
        open_region(cfg, cfg.secondaries[0])


def test_flipped_bit_in_ciphertext_is_detected_and_repaired(stack, tmp_path, keys_env):
    from llmdr.repo import ops

    cfg = cfg_for(stack, tmp_path)
    bundle(tmp_path / "src")
    snap, p, s, _ = protect(cfg, tmp_path / "src")
    d = sorted(snap.manifest.chunk_set())[0]
    e = s.locate(d)
    key = pack_key(e.pack.hex())
    data = bytearray(raw_get(cfg, cfg.secondaries[0], key))
    data[e.offset + 40] ^= 0x01
    raw_put(cfg, cfg.secondaries[0], key, bytes(data))
    with pytest.raises(IntegrityError, match=rf"{d[:12]}.*{key}.*failed authentication"):
        s.load_chunk(d)
    res = ops.verify(cfg, snap.snapshot_id, region="secondary", repair=True)
    assert res.corrupt == [d] and res.repaired == {d: "primary"}
    assert Repository(open_region(cfg, cfg.secondaries[0])).load_chunk(d) == p.load_chunk(d)
    assert ops.verify(cfg, snap.snapshot_id, region="secondary").ok


def test_plaintext_object_in_an_encrypted_region_is_refused(stack, tmp_path, keys_env):
    cfg = cfg_for(stack, tmp_path)
    bundle(tmp_path / "src")
    snap, p, s, _ = protect(cfg, tmp_path / "src")
    rk = record_key(snap.snapshot_id)
    raw_put(cfg, cfg.secondaries[0], rk, raw_get(cfg, cfg.primary, rk))  # right bytes, unsealed
    with pytest.raises(IntegrityError, match="is not encrypted"):
        s.store.get(rk)
    # a pack: the primary's unencrypted pack of the same chunks put under the secondary's pack name
    d = sorted(snap.manifest.chunk_set())[0]
    key = chunk_pack(s, d)
    plain = raw_get(cfg, cfg.primary, chunk_pack(p, d))
    raw_put(cfg, cfg.secondaries[0], key, plain)
    # (a pack over 64 KiB is opened from its tail: its trailer, not sealed, fails authentication)
    with pytest.raises(IntegrityError, match="is not encrypted|trailer failed authentication"):
        read_blobs(lambda st, n: raw_range(cfg, cfg.secondaries[0], key, st, n), len(plain), repo_id=s.repo_id,
                   cipher=s.store.blob_cipher(), where=key)
    with pytest.raises(IntegrityError):
        s.load_chunk(d)


# --- manifest signatures ------------------------------------------------------------------------------------------
def test_forged_manifest_under_its_own_hash_is_refused(stack, tmp_path, keys_env):
    cfg = cfg_for(stack, tmp_path, s_extra="")  # no encryption anywhere: signatures alone must catch it
    bundle(tmp_path / "src")
    snap, p, _, _ = protect(cfg, tmp_path / "src")
    signed = raw_get(cfg, cfg.primary, record_key(snap.snapshot_id))
    body = signed[:signed.rfind(b"\nllmdr-signature v1 ")]
    assert hashlib.sha256(body).hexdigest() == snap.snapshot_id
    doc = json.loads(body)
    tree = json.loads(raw_get(cfg, cfg.primary, tree_key(doc["tree"])))
    tree["files"][0]["mode"] = 0o4777  # e.g. a setuid bit slipped in
    tdata = canonical_json(tree)
    tid = hashlib.sha256(tdata).hexdigest()
    raw_put(cfg, cfg.primary, tree_key(tid), tdata)  # trees are not signed: the signed record names them
    forged = canonical_json({**doc, "tree": tid})
    fid = hashlib.sha256(forged).hexdigest()
    raw_put(cfg, cfg.primary, record_key(fid), forged + signed[len(body):])  # the old signature, copied over
    with pytest.raises(IntegrityError, match=rf"snaps/{fid}.*fails its signature check"):
        p.load_manifest(fid)
    raw_put(cfg, cfg.primary, record_key(fid), forged)  # or no signature at all
    with pytest.raises(IntegrityError, match="carries no signature"):
        p.load_manifest(fid)
    # the genuine record's tree edited in place: the signed record names it by hash
    raw_put(cfg, cfg.primary, tree_key(doc["tree"]), tdata)
    with pytest.raises(IntegrityError, match=rf"{tree_key(doc['tree'])} is damaged"):
        Repository(open_region(cfg, cfg.primary)).load_manifest(snap.snapshot_id)


def test_manifest_signed_with_another_key_is_refused(stack, tmp_path, keys_env, monkeypatch):
    cfg = cfg_for(stack, tmp_path, s_extra="")
    bundle(tmp_path / "src")
    snap, _, _, _ = protect(cfg, tmp_path / "src")
    monkeypatch.setenv("LLMDR_T_SIGN", "another-signing-key-0123456789abcdef")
    p = Repository(open_region(cfg, cfg.primary))
    with pytest.raises(IntegrityError, match="wrong key, or forged"):
        p.load_manifest(snap.snapshot_id)


def test_ed25519_signing_reader_needs_only_the_public_key(stack, tmp_path, keys_env):
    import shutil

    state = tmp_path / "state"
    shutil.copytree(stack.state_path, state, ignore=shutil.ignore_patterns("stack"))
    top = "manifest_signing: {method: ed25519}"
    cfg = cfg_for(stack, tmp_path, s_extra="", top=top, state=state)
    bundle(tmp_path / "src")
    snap, _, _, _ = protect(cfg, tmp_path / "src")
    assert (state / "keys" / "manifest-signing.key").stat().st_mode & 0o077 == 0
    # a restore host with the public key only
    state2 = tmp_path / "state2"
    (state2 / "keys").mkdir(parents=True)
    shutil.copy(state / "local.env", state2 / "local.env")
    shutil.copy(state / "keys" / "manifest-signing.pub", state2 / "keys" / "manifest-signing.pub")
    reader = cfg_for(stack, tmp_path, s_extra="", top=top, state=state2, prefix=cfg.primary.prefix)
    repo = Repository(open_region(reader, reader.secondaries[0], read_only=True))
    restore_snapshot(repo, snap.snapshot_id, tmp_path / "out")
    assert read_tree(tmp_path / "out") == read_tree(tmp_path / "src")
    writer = Repository(open_region(reader, reader.primary))
    with pytest.raises(ConfigError, match="private key is not here"):
        take_snapshot(writer, tmp_path / "src", bundle="testbundle")


def test_key_from_a_prefect_secret_block(stack, tmp_path, keys_env, prefect_harness):
    from prefect.blocks.system import Secret

    name = f"llmdr-enc-{uuid.uuid4().hex[:6]}"
    Secret(value={"key": KEY_S}).save(name)
    cfg = cfg_for(stack, tmp_path, s_extra=f"    encryption: {{prefect_secret_block: {name}}}")
    bundle(tmp_path / "src")
    snap, _, s, _ = protect(cfg, tmp_path / "src")
    d = next(iter(snap.manifest.chunk_set()))
    assert raw_get(cfg, cfg.secondaries[0], chunk_pack(s, d))[8:16] == key_id(bytes.fromhex(KEY_S))
    restore_snapshot(s, snap.snapshot_id, tmp_path / "out")
    assert read_tree(tmp_path / "out") == read_tree(tmp_path / "src")


def test_runbook_names_the_keys_never_their_values(stack, tmp_path, keys_env):
    from llmdr.drill.runbook import render_runbook

    text = render_runbook(cfg_for(stack, tmp_path))
    assert "`LLMDR_T_KEY_S`" in text and "CANNOT BE READ" in text and "`LLMDR_T_SIGN`" in text
    assert KEY_S not in text and SIGN not in text


def test_dvc_objects_in_an_encrypted_bucket_are_read_raw(stack, tmp_path, keys_env):
    """DVC writes its remote's objects itself (unencrypted) into the same bucket; the dataset checks read them
    through an unsealed store, or every size would be off by the envelope (a bug `make demo` caught)."""
    from llmdr.lineage.datasets import _object_key

    cfg = cfg_for(stack, tmp_path)
    dr = cfg.secondaries[0]
    key = _object_key("95ba2742e6e5b9fe66c7e4814b6181fc")
    raw_put(cfg, dr, key, b"x" * 1000)
    assert open_region(cfg, dr, read_only=True, sealed=False).head(key).size == 1000
    with pytest.raises(IntegrityError, match="is not encrypted"):
        open_region(cfg, dr, read_only=True).get(key)


def test_forged_catalog_entries_neither_block_restores_nor_hide_or_lose_snapshots(stack, tmp_path, keys_env):
    """Unsigned catalog entries (a snapshot dated far ahead, then a forget of the genuine snapshot), written by
    someone with the bucket's keys but not the signing key: both are left out and reported; 'latest', restore and
    retention see the genuine snapshot only, and a prune (no safety time, run twice) deletes nothing it uses. (v1
    refused retention on a partial listing; in v2 retention only appends a forget entry, and prune counts every
    stored record not forgotten by a readable entry, so a partial listing cannot lose data.)"""
    import subprocess
    import sys

    from llmdr.repo.integrity import verify_snapshot
    from llmdr.repo.retention import Policy, apply_retention

    cfg = cfg_for(stack, tmp_path, s_extra="")
    bundle(tmp_path / "src")
    snap, p, _, _ = protect(cfg, tmp_path / "src")
    record = {**p.load_record(snap.snapshot_id), "created": "2099-01-01T00:00:00.000000Z", "parent": None}
    fid = hashlib.sha256(canonical_json(record)).hexdigest()
    seq = p.view("testbundle").next_seq
    ekey, fkey = entry_key("testbundle", seq), entry_key("testbundle", seq + 1)
    raw_put(cfg, cfg.primary, ekey, canonical_json({"kind": "snapshot", "seq": seq, "id": fid,
                                                     "prev": snap.snapshot_id, "record": record}))  # unsigned
    raw_put(cfg, cfg.primary, fkey, canonical_json({"kind": "forget", "seq": seq + 1,
                                                     "forget": [snap.snapshot_id]}))
    p = Repository(open_region(cfg, cfg.primary))
    assert p.resolve("latest", bundle="testbundle") == snap.snapshot_id
    assert p.snapshot_ids(bundle="testbundle") == [snap.snapshot_id]
    assert all("carries no signature" in p.unreadable[k] for k in (ekey, fkey))

    def llmdr(*args):
        return subprocess.run([sys.executable, "-m", "llmdr.cli", "--config", str(cfg.source_file), *args],
                              capture_output=True, text=True, timeout=120)

    listed = llmdr("snapshots")
    assert listed.returncode == 6 and snap.snapshot_id[:12] in listed.stdout
    assert ekey in listed.stderr and fkey in listed.stderr and "carries no signature" in listed.stderr
    out = llmdr("restore", "latest", "--to", str(tmp_path / "out"))
    assert out.returncode == 0, out.stderr
    assert read_tree(tmp_path / "out") == read_tree(tmp_path / "src")
    for _ in range(2):  # plan, then delete what was planned
        res = apply_retention(Repository(open_region(cfg, cfg.primary)), "testbundle", Policy(keep_last=1), grace_s=0)
        assert res.kept == [snap.snapshot_id] and res.forgotten == []
    after = Repository(open_region(cfg, cfg.primary))
    assert after.snapshot_ids(bundle="testbundle") == [snap.snapshot_id]
    check = verify_snapshot(after, snap.snapshot_id)
    assert check.ok and check.chunks_read == check.chunks_total == len(snap.manifest.chunk_set())

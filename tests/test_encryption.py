"""Client-side encryption and manifest signatures against real SeaweedFS: what lands in the bucket is ciphertext
with the key id, a copy decrypts and re-encrypts between regions with different keys, dedup still works within a
key, and a wrong key, a flipped bit or an edited/forged/unsigned manifest is refused, never used."""

import hashlib
import json
import random
import uuid

import pytest

from llmdr.errors import ConfigError, IntegrityError
from llmdr.repo.chunking import ChunkerParams
from llmdr.repo.manifest import manifest_id
from llmdr.repo.replicate import replicate_snapshot
from llmdr.repo.repository import RepoConfig, Repository, chunk_key, manifest_key
from llmdr.repo.restore import restore_snapshot
from llmdr.repo.snapshot import take_snapshot
from llmdr.storage.credentials import resolve_keys
from llmdr.storage.crypto import MAGIC, OVERHEAD, key_id
from llmdr.storage.factory import open_region
from tests.support.config import two_regions
from tests.support.trees import read_tree, write_tree

SMALL = ChunkerParams(avg_size=4096, min_size=1024, max_size=16384)
KEY_P = "11" * 32
KEY_S = "22" * 32
SIGN = "manifest-signing-key-0123456789abcdef"

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
    for d, n in snap.manifest.chunk_set().items():
        blob = raw_get(cfg, dr, chunk_key(d))
        assert blob.startswith(MAGIC + kid) and len(blob) == n + OVERHEAD
        assert b"SECRET-WEIGHTS" not in blob
    man = raw_get(cfg, dr, manifest_key(snap.snapshot_id))
    assert man.startswith(MAGIC + kid) and b"weights.bin" not in man  # file names are hidden too
    # the unencrypted primary holds the plain chunks (that region has no encryption configured)
    assert b"SECRET-WEIGHTS" in b"".join(raw_get(cfg, cfg.primary, chunk_key(d)) for d in snap.manifest.chunk_set())
    # listing reports plaintext sizes, so size comparisons (copy, verify) work unchanged
    assert s.list_chunks() == snap.manifest.chunk_set()
    restore_snapshot(s, snap.snapshot_id, tmp_path / "out")
    assert read_tree(tmp_path / "out") == read_tree(tmp_path / "src")


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
    assert raw_get(cfg, cfg.primary, chunk_key(d))[8:16] == key_id(bytes.fromhex(KEY_P))
    assert raw_get(cfg, cfg.secondaries[0], chunk_key(d))[8:16] == key_id(bytes.fromhex(KEY_S))
    restore_snapshot(s, snap2.snapshot_id, tmp_path / "out")
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
    snap, _, s, _ = protect(cfg, tmp_path / "src")
    d = sorted(snap.manifest.chunk_set())[0]
    blob = bytearray(raw_get(cfg, cfg.secondaries[0], chunk_key(d)))
    blob[40] ^= 0x01
    raw_put(cfg, cfg.secondaries[0], chunk_key(d), bytes(blob))
    with pytest.raises(IntegrityError, match=rf"{chunk_key(d)}.*failed authentication"):
        s.store.get(chunk_key(d))
    res = ops.verify(cfg, snap.snapshot_id, region="secondary", repair=True)
    assert d in res.repaired
    assert s.store.get(chunk_key(d)) == raw_get(cfg, cfg.primary, chunk_key(d))  # plaintext == primary's plain


def test_plaintext_object_in_an_encrypted_region_is_refused(stack, tmp_path, keys_env):
    cfg = cfg_for(stack, tmp_path)
    bundle(tmp_path / "src")
    snap, _, s, _ = protect(cfg, tmp_path / "src")
    d = sorted(snap.manifest.chunk_set())[0]
    raw_put(cfg, cfg.secondaries[0], chunk_key(d), raw_get(cfg, cfg.primary, chunk_key(d)))  # right bytes, unsealed
    with pytest.raises(IntegrityError, match="is not encrypted"):
        s.store.get(chunk_key(d))


# --- manifest signatures ------------------------------------------------------------------------------------------
def test_forged_manifest_under_its_own_hash_is_refused(stack, tmp_path, keys_env):
    cfg = cfg_for(stack, tmp_path, s_extra="")  # no encryption anywhere: signatures alone must catch it
    bundle(tmp_path / "src")
    snap, p, _, _ = protect(cfg, tmp_path / "src")
    signed = raw_get(cfg, cfg.primary, manifest_key(snap.snapshot_id))
    body = signed[:signed.rfind(b"\nllmdr-signature v1 ")]
    assert manifest_id(body) == snap.snapshot_id
    doc = json.loads(body)
    doc["files"][0]["mode"] = 0o4777  # e.g. a setuid bit slipped in
    forged = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    fid = hashlib.sha256(forged).hexdigest()
    raw_put(cfg, cfg.primary, manifest_key(fid), forged + signed[len(body):])  # the old signature, copied over
    with pytest.raises(IntegrityError, match=rf"snapshots/{fid}.json.*fails its signature check"):
        p.load_manifest(fid)
    raw_put(cfg, cfg.primary, manifest_key(fid), forged)  # or no signature at all
    with pytest.raises(IntegrityError, match="carries no signature"):
        p.load_manifest(fid)
    assert p.load_manifest(snap.snapshot_id).files  # the genuine one still reads


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
    assert raw_get(cfg, cfg.secondaries[0], chunk_key(d))[8:16] == key_id(bytes.fromhex(KEY_S))
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


def test_one_forged_manifest_does_not_block_restores_but_stops_retention(stack, tmp_path, keys_env):
    import subprocess
    import sys

    from llmdr.repo.retention import Policy, apply_retention

    cfg = cfg_for(stack, tmp_path, s_extra="")
    bundle(tmp_path / "src")
    snap, p, _, _ = protect(cfg, tmp_path / "src")
    forged = b'{"bundle":"testbundle","files":[]}'
    fid = hashlib.sha256(forged).hexdigest()
    raw_put(cfg, cfg.primary, manifest_key(fid), forged)  # unsigned
    assert p.resolve("latest", bundle="testbundle") == snap.snapshot_id and fid in p.unreadable

    def llmdr(*args):
        return subprocess.run([sys.executable, "-m", "llmdr.cli", "--config", str(cfg.source_file), *args],
                              capture_output=True, text=True, timeout=120)

    listed = llmdr("snapshots")
    assert listed.returncode == 6 and snap.snapshot_id[:12] in listed.stdout
    assert f"snapshot {fid[:12]} left out" in listed.stderr and "carries no signature" in listed.stderr
    out = llmdr("restore", "latest", "--to", str(tmp_path / "out"))
    assert out.returncode == 0, out.stderr
    assert read_tree(tmp_path / "out") == read_tree(tmp_path / "src")
    with pytest.raises(IntegrityError, match="carries no signature"):  # never prune on a partial list
        apply_retention(Repository(open_region(cfg, cfg.primary)), "testbundle", Policy(keep_last=1))

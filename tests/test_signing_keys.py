"""Manifest-signing keys against the real SeaweedFS regions, and report folders bound to their drill:

* a region written with manifest signing, read by a config without it: "signed, key not configured", never
  "damaged, run --repair";
* key rotation: old snapshots verify and restore under the previous key(s) listed in the config, new ones are
  signed with the current key, `llmdr sign-manifests` re-signs (then the old key can go), never re-signs what does
  not verify, and is refused in a COMPLIANCE-locked region;
* `llmdr report verify`: the signature covers the drill id (a renamed or copied report is refused) and the folder
  may hold nothing but regular files and their folders (no symlink, FIFO, socket, device, extra folder).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

from llmdr.config import Signing, parse_config
from llmdr.drill.signing import SIGNATURE_FILE, canonical, hmac_key_id, key_paths, sign_folder, verify_folder
from llmdr.errors import ConfigError, IntegrityError, UsageError
from llmdr.repo import ops
from llmdr.repo.chunking import ChunkerParams
from llmdr.repo.layout import RepoConfig, record_key
from llmdr.repo.replicate import replicate_snapshot
from llmdr.repo.repository import Repository
from llmdr.repo.resign import sign_manifests
from llmdr.repo.snapshot import take_snapshot
from llmdr.storage.crypto import SIG_MARK, ManifestSigner, split_signed
from llmdr.storage.factory import adapter, open_region
from tests.support.config import OFFLINE_CONFIG, copy_keys, two_regions
from tests.support.trees import read_tree, write_tree

LLMDR = [sys.executable, "-m", "llmdr.cli"]
SMALL = ChunkerParams(avg_size=4096, min_size=1024, max_size=16384)
OLD_KEY = "old-manifest-key-0123456789abcdef0123456789"
NEW_KEY = "new-manifest-key-fedcba9876543210fedcba9876"
HMAC_OLD = "manifest_signing: {method: hmac, hmac_key_env: LLMDR_T_MS_OLD}"
HMAC_NEW = "manifest_signing: {method: hmac, hmac_key_env: LLMDR_T_MS_NEW}"
HMAC_ROTATED = ("manifest_signing: {method: hmac, hmac_key_env: LLMDR_T_MS_NEW, "
                "previous_hmac_key_envs: [LLMDR_T_MS_OLD]}")


@pytest.fixture
def ms_keys(monkeypatch):
    monkeypatch.setenv("LLMDR_T_MS_OLD", OLD_KEY)
    monkeypatch.setenv("LLMDR_T_MS_NEW", NEW_KEY)


def hmac_kid(key: str) -> str:
    return ManifestSigner("hmac", hmac_key=key.encode()).key_id


def llmdr(cfg, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    pre = ["--config", str(cfg.source_file)] if cfg is not None else []
    return subprocess.run([*LLMDR, *pre, *args], capture_output=True, text=True, timeout=180, cwd=cwd,
                          env={**os.environ, "LLMDR_CONFIG": ""})


def protect(cfg, src: Path, seed: int, *, to_secondary: bool = True) -> str:
    """One snapshot of a small bundle into the primary (and copied to the secondary); its id."""
    write_tree(src, {"weights.bin": os.urandom(30_000) + bytes([seed]) * 5000, "config.json": b'{"n": %d}' % seed})
    p = Repository(open_region(cfg, cfg.primary))
    p.ensure_config(RepoConfig(chunker=SMALL))
    sid = take_snapshot(p, src, bundle="testbundle").snapshot_id
    if to_secondary:
        replicate_snapshot(p, Repository(open_region(cfg, cfg.secondaries[0])), sid, workers=4)
    return sid


def signer_of(cfg, region, key: str) -> str:
    """The key id on the signature line of ``key`` as stored in ``region``."""
    parts = split_signed(adapter(cfg, region).get(key))
    assert parts is not None, f"{key} carries no signature"
    return parts[2]


def same_regions(stack, cfg, tmp_path, extra: str, **kw):
    """Another config on ``cfg``'s regions (same prefix) with other top-level lines."""
    return two_regions(stack, tmp_path, prefix=cfg.primary.prefix, extra=extra, **kw)


# --- 1. a signed region read without manifest_signing ----------------------------------------------------------------
def test_signed_region_read_without_signing_config_says_key_missing_not_damaged(stack, tmp_path, ms_keys):
    signed = two_regions(stack, tmp_path, extra=HMAC_OLD)
    sid = protect(signed, tmp_path / "src", 1)
    plain = same_regions(stack, signed, tmp_path, "")  # the same regions, no manifest_signing
    for region in ("primary", "secondary"):
        with pytest.raises(ConfigError) as err:
            ops.verify(plain, sid, region=region)
        msg = str(err.value)
        assert f"' is signed (hmac key {hmac_kid(OLD_KEY)})" in msg and ": manifest '" in msg
        assert "has no manifest_signing" in msg and "manifest_signing: {method: hmac, hmac_key_env:" in msg
        assert "--repair" not in msg and "is damaged" not in msg
    # the CLI: by id (the record) and `latest` (the catalog), exit 2 (a config problem), no repair suggested
    for ref in (sid, "latest"):
        r = llmdr(plain, "verify", ref, "--region", "secondary")
        assert r.returncode == 2, r.stdout + r.stderr
        assert "is signed (hmac key" in r.stderr and "has no manifest_signing" in r.stderr, r.stderr
        assert "--repair" not in r.stdout + r.stderr and "damaged" not in r.stdout
        assert "Traceback" not in r.stderr
    # restoring is refused the same way, before anything is written
    with pytest.raises(ConfigError, match="is signed"):
        ops.restore(plain, "latest", tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    # with the key configured everything is intact
    assert ops.verify(signed, sid, region="secondary").ok


# --- 2. key rotation -------------------------------------------------------------------------------------------------
def test_hmac_rotation_old_snapshots_verify_new_ones_use_the_new_key_and_sign_manifests_resigns(
        stack, tmp_path, ms_keys):
    old = two_regions(stack, tmp_path, extra=HMAC_OLD)
    sid1 = protect(old, tmp_path / "src1", 1)
    rotated = same_regions(stack, old, tmp_path, HMAC_ROTATED)
    new_only = same_regions(stack, old, tmp_path, HMAC_NEW)
    old_kid, new_kid = hmac_kid(OLD_KEY), hmac_kid(NEW_KEY)

    # without the old key listed, the old snapshot is refused with a hint at previous keys
    with pytest.raises(IntegrityError, match=f"hmac key {old_kid}, neither .* previous_hmac_key_envs"):
        ops.verify(new_only, sid1, region="secondary")
    # listed as previous: old snapshots verify and restore from both regions
    for region in ("primary", "secondary"):
        assert ops.verify(rotated, sid1, region=region).ok
    ops.restore(rotated, sid1, tmp_path / "out1", region="secondary")
    assert read_tree(tmp_path / "out1") == read_tree(tmp_path / "src1")
    # new snapshots are signed with the current key only
    sid2 = protect(rotated, tmp_path / "src2", 2)
    assert signer_of(rotated, rotated.secondaries[0], record_key(sid2)) == new_kid
    assert signer_of(rotated, rotated.primary, record_key(sid1)) == old_kid

    # --dry-run counts and writes nothing
    r = llmdr(rotated, "sign-manifests", "--region", "secondary", "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    dry = json.loads(r.stdout)
    assert dry["dry_run"] and record_key(sid1) in dry["resigned"] and record_key(sid2) not in dry["resigned"]
    assert dry["current"] >= 1 and dry["refused"] == {} and dry["key_id"] == new_kid
    assert signer_of(rotated, rotated.secondaries[0], record_key(sid1)) == old_kid

    before = adapter(rotated, rotated.primary).get(record_key(sid1))
    for region in ("primary", "secondary"):
        r = llmdr(rotated, "sign-manifests", "--region", region)
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"{region}: {len(dry['resigned'])} object(s) re-signed with key {new_kid}" in r.stdout
        assert "previous keys can be removed" in r.stdout
    # same body (so the same snapshot id), the new key's signature
    after = adapter(rotated, rotated.primary).get(record_key(sid1))
    body = split_signed(after)[0]
    assert body == split_signed(before)[0] and hashlib.sha256(body).hexdigest() == sid1
    assert signer_of(rotated, rotated.primary, record_key(sid1)) == new_kid
    # a second run finds nothing left to re-sign
    again = json.loads(llmdr(rotated, "sign-manifests", "--region", "primary", "--json").stdout)
    assert again["resigned"] == [] and again["current"] >= 2

    # the old key removed from the config: everything still verifies and restores, `latest` included
    for region in ("primary", "secondary"):
        for sid in (sid1, sid2):
            assert ops.verify(new_only, sid, region=region).ok
    assert ops.verify(new_only, "latest", region="secondary").snapshot_id == sid2
    ops.restore(new_only, sid1, tmp_path / "out2", region="secondary")
    assert read_tree(tmp_path / "out2") == read_tree(tmp_path / "src1")
    # and the old key alone no longer reads the region
    with pytest.raises(IntegrityError, match=f"hmac key {new_kid}, neither"):
        ops.verify(old, sid1, region="primary")


def test_ed25519_rotation_previous_public_key_then_resign_and_drop_it(stack, tmp_path):
    state = tmp_path / "state"
    copy_keys(stack, state)
    first = two_regions(stack, tmp_path, extra="manifest_signing: {method: ed25519}", state=state)
    sid1 = protect(first, tmp_path / "src1", 1)
    keys = state / "keys"
    old_kid = signer_of(first, first.primary, record_key(sid1))
    # rotate: keep only the old public key, under another name; the next writer makes a new pair
    (keys / "manifest-signing.pub").rename(keys / "manifest-signing-old.pub")
    (keys / "manifest-signing.key").unlink()
    rotated = same_regions(stack, first, tmp_path, "manifest_signing: {method: ed25519, previous_public_keys: "
                                            "[keys/manifest-signing-old.pub]}", state=state)
    sid2 = protect(rotated, tmp_path / "src2", 2)
    new_kid = signer_of(rotated, rotated.primary, record_key(sid2))
    assert new_kid != old_kid and (keys / "manifest-signing.key").exists()
    ops.restore(rotated, sid1, tmp_path / "out", region="secondary")
    assert read_tree(tmp_path / "out") == read_tree(tmp_path / "src1")

    current = same_regions(stack, first, tmp_path, "manifest_signing: {method: ed25519}", state=state)
    with pytest.raises(IntegrityError, match=f"ed25519 key {old_kid}, neither .*manifest_signing.previous_public_keys"):
        ops.verify(current, sid1, region="primary")
    for region in rotated.regions:
        res = sign_manifests(rotated, region)
        assert res.ok and record_key(sid1) in res.resigned and record_key(sid2) not in res.resigned
    for region in ("primary", "secondary"):
        for sid in (sid1, sid2):
            assert ops.verify(current, sid, region=region).ok
    assert signer_of(current, current.secondaries[0], record_key(sid1)) == new_kid


def test_sign_manifests_never_resigns_what_does_not_verify(stack, tmp_path, ms_keys):
    """An attacker's object (signed with a key the config does not list, or unsigned) is reported, not laundered."""
    rotated = two_regions(stack, tmp_path, extra=HMAC_ROTATED)
    sid = protect(rotated, tmp_path / "src", 1, to_secondary=False)
    raw = adapter(rotated, rotated.primary)
    body = json.dumps({"bundle": "testbundle", "forged": True}).encode()
    evil = ManifestSigner("hmac", hmac_key=b"attacker-key-0123456789abcdef0123456789")
    forged = body + SIG_MARK + f"hmac {evil.key_id} ".encode() + base64.b64encode(evil.sign(body)) + b"\n"
    raw.put("snaps/" + "ab" * 32, forged)
    raw.put("snaps/" + "cd" * 32, body)  # no signature at all
    r = llmdr(rotated, "sign-manifests", "--region", "primary")
    assert r.returncode == 6, r.stdout + r.stderr
    assert f"snaps/{'ab' * 32} left as it is" in r.stdout and f"hmac key {evil.key_id}, neither" in r.stdout
    assert f"snaps/{'cd' * 32} left as it is" in r.stdout and "carries no signature" in r.stdout
    assert raw.get("snaps/" + "ab" * 32) == forged and raw.get("snaps/" + "cd" * 32) == body
    assert ops.verify(rotated, sid).ok  # the genuine snapshot is untouched by the refusals


def test_sign_manifests_is_refused_in_a_compliance_locked_region(stack, tmp_path, ms_keys):
    bucket = f"llmdr-lock-{uuid.uuid4().hex[:10]}"
    lock = "    object_lock: {mode: COMPLIANCE, period: 60s}"
    old = two_regions(stack, tmp_path, secondary_bucket=bucket, secondary_prefix="", secondary=lock, extra=HMAC_OLD)
    assert adapter(old, old.secondaries[0]).ensure_bucket(object_lock=True) is True
    sid = protect(old, tmp_path / "src", 1)
    rotated = two_regions(stack, tmp_path, prefix=old.primary.prefix, secondary_bucket=bucket, secondary_prefix="",
                          secondary=lock, extra=HMAC_ROTATED)
    dr = adapter(rotated, rotated.secondaries[0])
    versions = [(v.key, v.version_id) for v in dr.list_versions()]
    r = llmdr(rotated, "sign-manifests", "--region", "secondary")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "sign-manifests refused in region 'secondary'" in r.stderr and "COMPLIANCE Object Lock" in r.stderr
    assert "Nothing was written" in r.stderr and "previous_public_keys" in r.stderr and "Traceback" not in r.stderr
    assert [(v.key, v.version_id) for v in dr.list_versions()] == versions  # not even a lock object
    # the locked copy keeps verifying under the previous key, and the primary can still be re-signed
    assert ops.verify(rotated, sid, region="secondary").ok
    assert sign_manifests(rotated, rotated.primary).resigned


def test_rotation_settings_are_checked(tmp_path, monkeypatch):
    base = OFFLINE_CONFIG + f"state_dir: {tmp_path}\n"
    cfg = parse_config(base, source=tmp_path / "llmdr.yaml")
    with pytest.raises(ConfigError, match="has no manifest_signing: there is no key"):
        sign_manifests(cfg, cfg.primary)
    from llmdr.storage.credentials import manifest_signer

    missing = parse_config(base + "manifest_signing: {method: ed25519, previous_public_keys: [keys/gone.pub]}\n",
                           source=tmp_path / "llmdr.yaml")
    with pytest.raises(ConfigError, match=r"manifest_signing.previous_public_keys: .*gone.pub does not exist"):
        manifest_signer(missing, create=True)
    with pytest.raises(ConfigError, match="previous_hmac_key_envs must be the name of an environment variable"):
        parse_config(base + f"manifest_signing: {{method: hmac, previous_hmac_key_envs: ['{'ab' * 32}']}}\n",
                     source=tmp_path / "llmdr.yaml")
    monkeypatch.setenv("LLMDR_MANIFEST_KEY", NEW_KEY)
    monkeypatch.setenv("LLMDR_T_SHORT", "short")
    short = parse_config(base + "manifest_signing: {method: hmac, previous_hmac_key_envs: [LLMDR_T_SHORT]}\n",
                         source=tmp_path / "llmdr.yaml")
    with pytest.raises(ConfigError, match="previous_hmac_key_envs.*fewer than 32 bytes"):
        manifest_signer(short)


def test_runbook_names_the_previous_keys_a_restore_host_needs(tmp_path):
    from llmdr.drill.runbook import render_runbook

    cfg = parse_config(OFFLINE_CONFIG + "manifest_signing: {method: ed25519, previous_public_keys: [keys/2025.pub], "
                       "previous_hmac_key_envs: [LLMDR_OLD_MANIFEST_KEY]}\n", source=tmp_path / "llmdr.yaml")
    md = render_runbook(cfg, drills=[])
    line = next(x for x in md.splitlines() if "**Previous manifest-signing keys**" in x)
    assert "not yet re-signed with `llmdr sign-manifests`" in line and "keys/2025.pub`" in line
    assert "HMAC key in environment variable `LLMDR_OLD_MANIFEST_KEY`" in line


# --- 3. report folders bound to their drill --------------------------------------------------------------------------
ED = Signing()
DRILL = "20261203T150000Z"
OTHER = "20261204T090000Z"


def report(parent: Path, drill_id: str = DRILL) -> Path:
    f = parent / drill_id
    f.mkdir(parents=True)
    (f / "evidence.json").write_text(json.dumps({"id": drill_id, "passed": True, "rto_s": 2.4}, indent=2))
    (f / "report.html").write_text(f"<html><body><h1>{drill_id}: PASS</h1></body></html>\n")
    (f / "charts").mkdir()
    (f / "charts" / "timeline.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    return f


@pytest.fixture
def signed_report(tmp_path):
    state = tmp_path / "state"
    folder = report(tmp_path / "reports")
    sign_folder(folder, ED, state)
    return folder, key_paths(ED, state)[1]


@contextmanager
def deadline(seconds: int):
    """Fail instead of hanging (e.g. a FIFO opened for reading blocks until a writer comes)."""
    def boom(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_untouched_report_verifies_and_names_its_drill(signed_report):
    folder, pub = signed_report
    res = verify_folder(folder, public_key=pub)
    assert res.ok, res.problems
    assert res.drill_id == DRILL
    assert json.loads((folder / SIGNATURE_FILE).read_text())["drill_id"] == DRILL
    assert verify_folder(folder / "charts" / "..", public_key=pub).ok  # the same folder, named another way


def test_report_renamed_or_copied_under_another_drill_id_is_refused(signed_report):
    folder, pub = signed_report
    copy = folder.parent / OTHER
    shutil.copytree(folder, copy)
    res = verify_folder(copy, public_key=pub)
    assert not res.ok
    assert res.problems == [f"this report was signed for drill '{DRILL}' but the folder is named '{OTHER}': a report "
                            "renamed or copied under another drill's id. Use the report of that drill, or rename the "
                            f"folder back to '{DRILL}'"]
    assert verify_folder(folder, public_key=pub).ok  # the original still verifies
    shutil.rmtree(copy)
    folder.rename(copy)
    assert not verify_folder(copy, public_key=pub).ok
    r = llmdr(None, "report", "verify", str(copy), "--public-key", str(pub), cwd=folder.parent)
    assert r.returncode == 12 and f"signed for drill '{DRILL}' but the folder is named '{OTHER}'" in r.stdout
    copy.rename(folder)
    r = llmdr(None, "report", "verify", str(folder), "--public-key", str(pub), cwd=folder.parent)
    assert r.returncode == 0 and f"signature OK for drill {DRILL}" in r.stdout, r.stdout + r.stderr


def test_signature_of_another_drills_report_is_refused(tmp_path, signed_report):
    folder, pub = signed_report
    other = report(tmp_path / "elsewhere", OTHER)
    sign_folder(other, ED, tmp_path / "state")  # the same key: a genuine signature, for another drill
    shutil.copy(other / SIGNATURE_FILE, folder / SIGNATURE_FILE)
    res = verify_folder(folder, public_key=pub)
    assert not res.ok and any(f"signed for drill '{OTHER}' but the folder is named '{DRILL}'" in p
                              for p in res.problems)
    # the same with SIGNATURE.json a link to the other report's signature
    (folder / SIGNATURE_FILE).unlink()
    os.symlink(other / SIGNATURE_FILE, folder / SIGNATURE_FILE)
    res = verify_folder(folder, public_key=pub)
    assert not res.ok and res.problems == [f"{SIGNATURE_FILE} is a symbolic link, not the report's own signature "
                                           "file: the folder cannot be verified"]


def _fifo(p: Path) -> None:
    os.mkfifo(p)


def _socket(p: Path) -> None:
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(p))
    s.close()


def _symlink(p: Path) -> None:
    os.symlink(p.parent / "report.html" if p.parent.name == DRILL else "/etc/hostname", p)


def _device(p: Path) -> None:
    try:
        os.mknod(p, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # like /dev/null
    except PermissionError:
        pytest.skip("making a device file needs CAP_MKNOD")


@pytest.mark.parametrize("make, where, kind", [
    (_fifo, "pipe", "a FIFO (named pipe)"),
    (_fifo, "charts/pipe", "a FIFO (named pipe)"),
    (_socket, "sock", "a socket"),
    (_symlink, "link.html", "a symbolic link"),
    (_symlink, "charts/link", "a symbolic link"),
    (_device, "null", "a character device file"),
])
def test_special_files_in_a_report_are_refused(signed_report, make, where, kind):
    folder, pub = signed_report
    make(folder / where)
    with deadline(20):
        res = verify_folder(folder, public_key=pub)
    assert not res.ok
    assert res.problems == [f"{where} is {kind}; a signed report holds regular files only: remove it"]


@pytest.mark.parametrize("make, kind", [(_fifo, "a FIFO (named pipe)"), (_symlink, "a symbolic link")])
def test_a_signed_file_replaced_by_a_fifo_or_link_is_refused_without_opening_it(signed_report, make, kind):
    folder, pub = signed_report
    (folder / "report.html").rename(folder / "saved.html")
    make(folder / "report.html")
    with deadline(20):
        res = verify_folder(folder, public_key=pub)
    assert f"report.html: is {kind}, not the signed file" in res.problems


def test_extra_folders_are_refused(signed_report):
    folder, pub = signed_report
    (folder / "extra").mkdir()
    (folder / "charts" / "deeper").mkdir()
    res = verify_folder(folder, public_key=pub)
    assert res.problems == ["extra folder not covered by the signature: charts/deeper/ (remove it)",
                            "extra folder not covered by the signature: extra/ (remove it)"]
    (folder / "extra").rmdir()
    (folder / "charts" / "deeper").rmdir()
    assert verify_folder(folder, public_key=pub).ok


def test_signing_refuses_special_files_and_empty_folders(tmp_path):
    state = tmp_path / "state"
    folder = report(tmp_path)
    os.mkfifo(folder / "pipe")
    with deadline(20), pytest.raises(UsageError, match="pipe is a FIFO"):
        sign_folder(folder, ED, state)
    (folder / "pipe").unlink()
    (folder / "empty").mkdir()
    with pytest.raises(UsageError, match="folder empty holds no file"):
        sign_folder(folder, ED, state)
    assert not (folder / SIGNATURE_FILE).exists()


def _sign_v1(folder: Path, key: bytes) -> None:
    """A signature as llmdr wrote it before the drill id was signed (format 1), with HMAC."""
    files = []
    for p in sorted(x for x in folder.rglob("*") if x.is_file() and x.name != SIGNATURE_FILE):
        data = p.read_bytes()
        files.append({"path": p.relative_to(folder).as_posix(), "sha256": hashlib.sha256(data).hexdigest(),
                      "size": len(data)})
    payload = {"format": "llmdr-report-signature/1", "signed_utc": "2026-11-01T00:00:00.000Z", "files": files,
               "algorithm": "hmac-sha256", "key_id": hmac_key_id(key)}
    doc = payload | {"signature": base64.b64encode(hmac.new(key, canonical(payload), hashlib.sha256).digest())
                     .decode("ascii")}
    (folder / SIGNATURE_FILE).write_text(json.dumps(doc, sort_keys=True, indent=2) + "\n")


def test_format_1_reports_are_bound_to_their_drill_by_the_signed_evidence(tmp_path):
    key = b"report-hmac-key-0123456789abcdef"
    folder = report(tmp_path / "reports")
    _sign_v1(folder, key)
    res = verify_folder(folder, hmac_key=key)
    assert res.ok and res.drill_id == DRILL, res.problems
    moved = folder.rename(folder.parent / OTHER)
    res = verify_folder(moved, hmac_key=key)
    assert res.problems == [f"this report was signed for drill '{DRILL}' but the folder is named '{OTHER}': a report "
                            "renamed or copied under another drill's id. Use the report of that drill, or rename the "
                            f"folder back to '{DRILL}'"]
    (moved / "evidence.json").unlink()
    _sign_v1(moved, key)  # a format-1 report without evidence cannot prove which drill it is
    assert any("format 1 signs no drill id" in p for p in verify_folder(moved, hmac_key=key).problems)

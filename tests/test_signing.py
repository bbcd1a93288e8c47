"""Signing a report folder and verifying it offline: round trips, every kind of tampering, wrong keys, key files."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from llmdr.config import Signing
from llmdr.drill.signing import SIGNATURE_FILE, key_paths, sign_folder, verify_folder, verify_keys
from llmdr.errors import ConfigError, UsageError

HMAC_ENV = {"LLMDR_REPORT_HMAC_KEY": "0123456789abcdef0123456789abcdef"}
ED = Signing()
HM = Signing(method="hmac")


def _folder(tmp_path: Path) -> Path:
    f = tmp_path / "report"
    f.mkdir(parents=True)
    (f / "evidence.json").write_text(json.dumps({"id": "d1", "passed": True, "rto_s": 2.41}, indent=2))
    (f / "report.html").write_text("<html><body><h1>PASS</h1></body></html>\n")
    (f / "report.pdf").write_bytes(b"%PDF-1.4\n" + bytes(range(256)) * 4 + b"%%EOF\n")
    (f / "timeline.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
    return f


def _sign(folder: Path, state: Path, method: str) -> dict:
    return sign_folder(folder, ED if method == "ed25519" else HM, state, env=HMAC_ENV)


def _keys(state: Path, method: str) -> dict:
    if method == "ed25519":
        return {"public_key": key_paths(ED, state)[1]}
    return {"hmac_key": HMAC_ENV["LLMDR_REPORT_HMAC_KEY"].encode()}


@pytest.fixture(params=["ed25519", "hmac"])
def signed(request, tmp_path):
    folder, state = _folder(tmp_path), tmp_path / "state"
    doc = _sign(folder, state, request.param)
    return folder, state, request.param, doc


def test_round_trip(signed):
    folder, state, method, doc = signed
    res = verify_folder(folder, **_keys(state, method))
    assert res.ok, res.problems
    assert res.problems == []
    assert res.algorithm == ("ed25519" if method == "ed25519" else "hmac-sha256")
    assert res.key_id == doc["key_id"] and res.key_id.startswith(res.algorithm + ":")
    assert [f["path"] for f in res.files] == ["evidence.json", "report.html", "report.pdf", "timeline.png"]
    assert {f["path"]: f["size"] for f in res.files}["report.pdf"] == (folder / "report.pdf").stat().st_size
    on_disk = json.loads((folder / SIGNATURE_FILE).read_text())
    assert on_disk == doc and on_disk["signed_utc"].endswith("Z")


@pytest.mark.parametrize("name", ["evidence.json", "report.html", "report.pdf", SIGNATURE_FILE])
def test_editing_any_byte_fails(signed, name):
    folder, state, method, _ = signed
    path = folder / name
    original = path.read_bytes()
    n = len(original)
    for pos in sorted({0, 1, n // 3, n // 2, n - 2, n - 1}):
        for new in ({original[pos] ^ 0x01, ord(" ") if original[pos] != ord(" ") else ord("\t")}):
            data = bytearray(original)
            data[pos] = new
            path.write_bytes(bytes(data))
            res = verify_folder(folder, **_keys(state, method))
            assert not res.ok, f"{name}: byte {pos} set to {new:#x} went unnoticed"
            if name != SIGNATURE_FILE:
                assert res.problems == [f"{name}: SHA-256 differs from the signed value"]
    path.write_bytes(original)
    assert verify_folder(folder, **_keys(state, method)).ok


def test_appended_byte_names_the_size(signed):
    folder, state, method, _ = signed
    with (folder / "evidence.json").open("ab") as fh:
        fh.write(b"\n")
    res = verify_folder(folder, **_keys(state, method))
    assert not res.ok
    assert res.problems[0].startswith("evidence.json: SHA-256 differs from the signed value (size ")


def test_missing_extra_and_renamed_files(signed):
    folder, state, method, _ = signed
    (folder / "report.pdf").unlink()
    (folder / "notes.txt").write_text("added later")
    (folder / "sub").mkdir()
    (folder / "sub" / "x.bin").write_bytes(b"x")
    res = verify_folder(folder, **_keys(state, method))
    assert not res.ok
    assert res.problems == ["report.pdf: missing (listed in the signature, not in the folder)",
                            "extra file not covered by the signature: notes.txt",
                            "extra folder not covered by the signature: sub/ (remove it)",
                            "extra file not covered by the signature: sub/x.bin"]


def test_signature_json_semantic_edits(signed):
    """Re-rendered canonically (so only the meaning changed): the signature itself catches it."""
    folder, state, method, doc = signed
    sig = folder / SIGNATURE_FILE

    def rewrite(d):
        sig.write_text(json.dumps(d, sort_keys=True, indent=2) + "\n")
        return verify_folder(folder, **_keys(state, method))

    # a forger edits evidence.json and updates its hash in the list
    (folder / "evidence.json").write_text('{"id": "d1", "passed": true, "rto_s": 0.1}')
    import hashlib

    forged = json.loads(json.dumps(doc))
    entry = next(f for f in forged["files"] if f["path"] == "evidence.json")
    entry["sha256"] = hashlib.sha256((folder / "evidence.json").read_bytes()).hexdigest()
    entry["size"] = (folder / "evidence.json").stat().st_size
    res = rewrite(forged)
    assert not res.ok
    assert res.problems == [f"signature does not match the signed content ({SIGNATURE_FILE} was edited)"]

    res = rewrite(doc | {"signed_utc": "2020-01-01T00:00:00.000Z"})
    assert res.problems[0] == f"signature does not match the signed content ({SIGNATURE_FILE} was edited)"

    res = rewrite({k: v for k, v in doc.items() if k != "signature"})
    assert f"{SIGNATURE_FILE}: signature missing or not base64" in res.problems


def test_signature_removed(signed):
    folder, state, method, _ = signed
    (folder / SIGNATURE_FILE).unlink()
    res = verify_folder(folder, **_keys(state, method))
    assert not res.ok and res.problems[0].startswith(f"{SIGNATURE_FILE} missing")


def test_signature_not_json(signed):
    folder, state, method, _ = signed
    (folder / SIGNATURE_FILE).write_text("{not json")
    res = verify_folder(folder, **_keys(state, method))
    assert not res.ok and res.problems[0].startswith(f"{SIGNATURE_FILE}: not valid JSON")


def test_wrong_public_key_names_both_keys(tmp_path):
    folder, state = _folder(tmp_path), tmp_path / "state"
    doc = sign_folder(folder, ED, state)
    other_state = tmp_path / "other"
    sign_folder(_folder(tmp_path / "o"), ED, other_state)
    other_pub = key_paths(ED, other_state)[1]
    res = verify_folder(folder, public_key=other_pub)
    assert not res.ok
    assert len(res.problems) == 1
    assert res.problems[0].startswith(f"signed by key {doc['key_id']}, you gave key ed25519:")
    assert doc["key_id"] not in res.problems[0].split("you gave key")[1]


def test_wrong_hmac_key(tmp_path):
    folder = _folder(tmp_path)
    doc = sign_folder(folder, HM, tmp_path / "state", env=HMAC_ENV)
    res = verify_folder(folder, hmac_key=b"another secret of enough length")
    assert not res.ok
    assert res.problems[0].startswith(f"signed by key {doc['key_id']}, you gave key hmac-sha256:")
    # the key id does not reveal the key
    assert HMAC_ENV["LLMDR_REPORT_HMAC_KEY"] not in json.dumps(doc)


def test_verify_needs_the_key_of_the_method(tmp_path):
    folder = _folder(tmp_path)
    sign_folder(folder, ED, tmp_path / "state")
    with pytest.raises(UsageError, match="give its public key file"):
        verify_folder(folder, hmac_key=b"0123456789abcdef0123")
    hfolder = _folder(tmp_path / "h")
    sign_folder(hfolder, HM, tmp_path / "state", env=HMAC_ENV)
    with pytest.raises(UsageError, match="LLMDR_REPORT_HMAC_KEY"):
        verify_folder(hfolder, public_key=key_paths(ED, tmp_path / "state")[1])
    with pytest.raises(UsageError, match="not a folder"):
        verify_folder(tmp_path / "nowhere", hmac_key=b"x")


def test_hmac_key_missing_or_short_says_which_variable(tmp_path):
    folder = _folder(tmp_path)
    with pytest.raises(ConfigError, match="environment variable LLMDR_REPORT_HMAC_KEY is not set"):
        sign_folder(folder, HM, tmp_path / "state", env={})
    custom = Signing(method="hmac", hmac_key_env="MY_DRILL_KEY")
    with pytest.raises(ConfigError, match="MY_DRILL_KEY holds only 5 bytes"):
        sign_folder(folder, custom, tmp_path / "state", env={"MY_DRILL_KEY": "short"})
    assert not (folder / SIGNATURE_FILE).exists()


def test_ed25519_key_created_0600_and_reused(tmp_path):
    state = tmp_path / "state"
    priv, pub = key_paths(ED, state)
    first = sign_folder(_folder(tmp_path / "a"), ED, state)
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert stat.S_IMODE(priv.parent.stat().st_mode) == 0o700
    assert pub.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    key_bytes, mtime = priv.read_bytes(), priv.stat().st_mtime_ns
    second = sign_folder(_folder(tmp_path / "b"), ED, state)
    assert second["key_id"] == first["key_id"]
    assert priv.read_bytes() == key_bytes and priv.stat().st_mtime_ns == mtime
    # a lost public key is re-derived from the private one, not a new pair
    pub.unlink()
    assert sign_folder(_folder(tmp_path / "c"), ED, state)["key_id"] == first["key_id"]
    assert verify_folder(tmp_path / "a" / "report", public_key=pub).ok


def test_public_key_without_private_key_is_refused(tmp_path):
    state = tmp_path / "state"
    sign_folder(_folder(tmp_path / "a"), ED, state)
    priv, pub = key_paths(ED, state)
    priv.unlink()
    with pytest.raises(ConfigError, match="exists but its private key"):
        sign_folder(_folder(tmp_path / "b"), ED, state)
    assert not priv.exists()


def test_mismatched_pair_is_refused(tmp_path):
    a, b = tmp_path / "sa", tmp_path / "sb"
    sign_folder(_folder(tmp_path / "x"), ED, a)
    sign_folder(_folder(tmp_path / "y"), ED, b)
    key_paths(ED, a)[1].write_bytes(key_paths(ED, b)[1].read_bytes())
    with pytest.raises(ConfigError, match="do not match"):
        sign_folder(_folder(tmp_path / "z"), ED, a)


def test_custom_absolute_key_paths(tmp_path):
    settings = Signing(private_key=str(tmp_path / "k" / "s.key"), public_key=str(tmp_path / "k" / "s.pub"))
    folder = _folder(tmp_path)
    sign_folder(folder, settings, tmp_path / "state")
    assert (tmp_path / "k" / "s.key").exists() and not (tmp_path / "state").exists()
    assert verify_folder(folder, public_key=tmp_path / "k" / "s.pub").ok


def test_not_a_public_key_file(tmp_path):
    folder = _folder(tmp_path)
    sign_folder(folder, ED, tmp_path / "state")
    bad = tmp_path / "bad.pub"
    bad.write_text("hello")
    with pytest.raises(UsageError, match="not a PEM public key"):
        verify_folder(folder, public_key=bad)
    with pytest.raises(UsageError, match="does not exist"):
        verify_folder(folder, public_key=tmp_path / "missing.pub")


def test_symlink_is_refused_when_signing(tmp_path):
    folder = _folder(tmp_path)
    os.symlink(folder / "report.pdf", folder / "link.pdf")
    with pytest.raises(UsageError, match="link.pdf is a symbolic link"):
        sign_folder(folder, ED, tmp_path / "state")


def test_resigning_replaces_the_signature(tmp_path):
    folder, state = _folder(tmp_path), tmp_path / "state"
    sign_folder(folder, ED, state)
    (folder / "trend.png").write_bytes(b"\x89PNG more")
    assert not verify_folder(folder, public_key=key_paths(ED, state)[1]).ok
    sign_folder(folder, ED, state)
    res = verify_folder(folder, public_key=key_paths(ED, state)[1])
    assert res.ok and "trend.png" in [f["path"] for f in res.files]


def test_verify_keys_finds_what_exists(tmp_path):
    state = tmp_path / "state"
    assert verify_keys(ED, state, env={}) == {}
    sign_folder(_folder(tmp_path), ED, state)
    keys = verify_keys(ED, state, env=HMAC_ENV)
    assert keys == {"public_key": key_paths(ED, state)[1], "hmac_key": HMAC_ENV["LLMDR_REPORT_HMAC_KEY"].encode()}
    assert verify_folder(tmp_path / "report", **keys).ok

"""Report folders bound to their drill: `llmdr report verify` refuses a report renamed or copied under another
drill's id (the signature covers the drill id) and a folder holding anything but regular files and their folders
(symlink, FIFO, socket, device, extra folder).
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
from contextlib import contextmanager
from pathlib import Path

import pytest

from llmdr.config import Signing
from llmdr.drill.signing import SIGNATURE_FILE, canonical, hmac_key_id, key_paths, sign_folder, verify_folder
from llmdr.errors import UsageError

LLMDR = [sys.executable, "-m", "llmdr.cli"]


def llmdr(cfg, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    pre = ["--config", str(cfg.source_file)] if cfg is not None else []
    return subprocess.run([*LLMDR, *pre, *args], capture_output=True, text=True, timeout=180, cwd=cwd,
                          env={**os.environ, "LLMDR_CONFIG": ""})


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
    assert r.returncode == 10 and f"signed for drill '{DRILL}' but the folder is named '{OTHER}'" in r.stdout
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

"""The drill report as an auditor reads it (#17): a first drill is N/A, not FAIL; labelled evidence, never JSON or
snake_case keys; numbers never split from their units; one RTO definition everywhere; both snapshot ids explained;
who ran it (host, OS user, Prefect run, approver); the signature checked with OpenSSL, coreutils and ten lines of
Python, without llmdr, and `llmdr report verify .` from inside the folder; the MLflow run opens as a runs table,
RTO/RPO as metrics, linked to the model version it verified (real sqlite tracking store, real S3 regions).

The PDF pages are rendered to PNG under build/report-audit/ so a person can look at them."""

from __future__ import annotations

import getpass
import json
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from llmdr.config import Signing, parse_config
from llmdr.drill.record import evaluate
from llmdr.drill.report import render_markdown, write_report
from llmdr.drill.signing import sign_folder, verify_folder

BUILD = Path(__file__).parent.parent / "build" / "report-audit"
DOCS = Path(__file__).parent.parent / "docs" / "guide" / "drills.md"
T0 = 1796320160.0  # 2026-12-03T17:49:20Z
SNAP = "c6542245ae7b446c1969fd160c383b89bfa789e7427ee25ff958f943eed2abd8"
CONFIG = """\
version: 1
bundle: {name: drillbot, path: bundle}
regions:
  - {name: primary, role: primary, endpoint: "http://127.0.0.1:18333", bucket: llmdr-primary,
     credentials: {access_key_env: A1, secret_key_env: S1}}
  - {name: secondary, role: secondary, endpoint: "http://127.0.0.1:18433", bucket: llmdr-secondary,
     credentials: {access_key_env: A2, secret_key_env: S2}}
objectives: {rpo: 1h, rto: 2m, drill_interval: 90d}
"""
# keys of the drill's JSON that must never reach a reader
RAW_KEYS = ("rto_s", "rpo_s", "first_failure_utc", "flow_run_id", "golden_direct", "golden_router", "rto_breakdown",
            "detection_s", "checked_at", "model_dir", "rolled_back", "undetected_s", "restore_s", "to_region",
            "verified_utc", "snapshot_id", "started_by", "prechecks")
GOLDEN = {"ok": True, "passed": 2, "total": 2,
          "cases": [{"id": "chat-1", "ok": True, "similarity": 1.0, "expected": "pull correct stead",
                     "actual": "pull correct stead", "error": None},
                    {"id": "chat-2", "ok": True, "similarity": 1.0, "expected": "I can't help with that.",
                     "actual": "I can't help with that.", "error": None}]}


def _failover(kind: str, start: float, first_failure: float | None) -> dict:
    """A failover/failback record shaped like ``FailoverRecord.to_json()`` (nested replica, breakdown, steps): its
    run starts 4.2 s after ``start`` and answers correctly 4.9 s after it."""
    out = {"bundle": "drillbot", "kind": kind, "id": "79f1b9731ee7", "ok": True, "confirmed": True, "error": None,
           "from_region": "primary" if kind == "failover" else "secondary",
           "to_region": "secondary" if kind == "failover" else "primary", "trigger": "automation", "noop": False,
           "reason": "primary down: the last 2 probes failed", "rolled_back": False,
           "flow_run_id": "3ba15e79-c640-4d26-ac22-0ec866e461bb", "golden_direct": GOLDEN, "golden_router": GOLDEN,
           "replica": {"cold": False, "detail": "ok", "healthy": True, "pid": 17140, "region": "secondary",
                       "model_dir": "/srv/.llmdr/replicas/secondary/model-c6542245ae7b", "restore_s": 0.14,
                       "snapshot": SNAP, "start_s": 0.62, "started": "2026-12-03T17:48:21.531Z",
                       "url": "http://127.0.0.1:54263"},
           "started_ts": start + 4.2, "verified_ts": start + 4.9, "switched_ts": start + 4.55,
           "first_failure_ts": first_failure,
           "rto_s": round(start + 4.9 - first_failure, 3) if first_failure else 0.68,
           "rto_basis": "first failed probe -> first golden-correct answer through the router",
           "rto_breakdown": {"detection_s": 1.029, "dispatch_s": 2.961, "recovery_s": 0.69} if first_failure else None,
           "steps": [{"name": "confirm-outage", "at": "2026-12-03T17:49:27.028Z", "ok": True,
                      "detail": "2 direct probe(s) of primary"},
                     {"name": "switch-router", "at": "2026-12-03T17:49:27.163Z", "ok": True,
                      "detail": "primary -> secondary"}]}
    for k in ("started_ts", "verified_ts", "switched_ts", "first_failure_ts"):
        out[k[:-3] + "_utc"] = None if out[k] is None else _utc(out[k])
    return out


def _utc(ts: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _cfg(tmp_path: Path):
    return parse_config(CONFIG, source=tmp_path / "llmdr.yaml")


def first_drill(tmp_path: Path, *, signer: dict | None = None) -> dict:
    """A passing first drill (no previous one) as the dr-drill flow records it."""
    from llmdr.drill import procedure

    cfg = _cfg(tmp_path)
    rec = procedure.start_record(cfg, {"kind": "cli", "who": "alice", "flow_run_id": "c0ae4f3b-dd4a-4657",
                                       "deployment": None}, now=T0)
    outage = T0 + 2.6
    rec.mark("outage", "primary region down", ts=outage)
    rec.measurements = {"rto_s": 4.9, "rpo_s": 62.8, "undetected_s": 0.214, "detection_s": 1.029,
                        "dispatch_s": 2.961, "recovery_s": 0.69, "automation_s": 0.038, "pickup_s": 2.923,
                        "rto_detail": "outage 17:49:22.607Z → first golden-correct answer 17:49:27.501Z",
                        "rpo_detail": "outage − newest snapshot complete in secondary (c6542245ae7b)"}
    rec.mark("recovery", "first golden-correct answer through the router", ok=True, ts=outage + 4.9)
    fo = _failover("failover", outage, outage + 0.214)
    rec.evidence |= {
        "snapshots": {"primary": {"id": SNAP, "created": "2026-12-03T17:48:19.799Z"},
                      "secondary": {"id": SNAP, "created": "2026-12-03T17:48:19.799Z"}},
        "components": {"weights": "90c190c8f9a88886d47d42325ce3517b22480099366a7792a2a9045882e2e474"},
        "golden_after_failover": GOLDEN | {"region": "secondary"},
        "restore_test": {"ok": True, "snapshot_id": SNAP, "location": "secondary", "problems": [], "duration_s": 0.75,
                         "golden": GOLDEN, "summary": "c6542245ae7b from secondary: 2/2 golden, no problems"},
        "bundle_complete_dr": {"complete": True, "detail": "every required component recorded: weights"},
        "failover": fo, "failback": _failover("failback", T0 + 10, None),
        "prechecks": {"problems": [], "warnings": [], "active": "primary", "checked_at": T0 + 0.5,
                      "automation": {"name": "llmdr-failover-when-active-region-down", "enabled": True},
                      "monitor": {"primary": {"active": True, "emitted": 0, "since": T0 - 10, "status": "healthy"}},
                      "replicas": {"primary": {"healthy": True, "detail": "ok", "snapshot": SNAP,
                                               "url": "http://127.0.0.1:43651"}}},
        "mlflow_run_id": "28f0ec20ac394539bfbdd4d240626a9d"}
    rec.ended_ts = T0 + 14.0
    evaluate(rec, cfg, previous_pass_ts=None)
    out = rec.to_json()
    out["signer"] = signer
    return out


def pdf_text(path: Path, name: str) -> list[str]:
    """Each page's text; the pages are saved as PNG under build/report-audit/ and must not be blank."""
    import pypdfium2 as pdfium

    BUILD.mkdir(parents=True, exist_ok=True)
    doc = pdfium.PdfDocument(str(path))
    pages = []
    try:
        for i in range(len(doc)):
            page = doc[i]
            img = page.render(scale=1.3).to_pil()
            img.save(BUILD / f"{name}-page-{i + 1}.png")
            gray = img.convert("L").histogram()
            assert sum(gray[:200]) / (img.width * img.height) > 0.005, f"page {i + 1} is blank"
            tp = page.get_textpage()
            pages.append(tp.get_text_range())
            tp.close()
            page.close()
    finally:
        doc.close()
    return pages


def _flat(s: str) -> str:
    return re.sub(r"\s+", " ", s.replace("\u00a0", " ")).strip()


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    """A first drill's report folder, written and signed as `publish_report` does (key id and fingerprint in the
    report, the portable files beside it)."""
    from llmdr.drill.publish import signer_info

    tmp = tmp_path_factory.mktemp("audit")
    state = tmp / "state"
    signer = signer_info(Signing(), state)
    rec = first_drill(tmp, signer=signer)
    folder = tmp / "drills" / rec["id"]
    paths = write_report(rec, folder)
    sign_folder(folder, Signing(), state, portable=True)
    return {"record": rec, "folder": folder, "paths": paths, "state": state, "signer": signer,
            "pages": pdf_text(paths["pdf"], "first-drill")}


# --- 1. a first drill: N/A, never FAIL ---------------------------------------------------------------------------------
def test_a_first_drill_shows_na_never_fail(signed, tmp_path):
    rec = signed["record"]
    prev = next(c for c in rec["controls"] if c["id"] == "previous_drill")
    assert prev["passed"] is None and rec["passed"] is True
    text = _flat(" ".join(signed["pages"]))
    assert "no previous drill: N/A" in text and "every control that applies passed" in text
    assert "FAIL" not in text, "a passing first drill shows FAIL somewhere"
    html = signed["paths"]["html"].read_text()
    assert "no previous drill: N/A" in html and ">FAIL<" not in html and 'class=" NA">N/A</td>' in html
    md = render_markdown(rec)
    assert "| Previous passing drill within the drill interval | N/A | no previous drill |" in md
    assert "FAIL" not in md
    # a record written before N/A existed (FAIL + "none on record") reads the same
    old = json.loads(json.dumps(rec))
    old_prev = next(c for c in old["controls"] if c["id"] == "previous_drill")
    old_prev.update(passed=False, value="none on record", detail="this is the first drill on record")
    paths = write_report(old, tmp_path / "old")
    assert ">FAIL<" not in paths["html"].read_text() and "no previous drill: N/A" in paths["html"].read_text()


# --- 2. labelled tables, no JSON, numbers glued to their units ---------------------------------------------------------
def test_the_pdf_shows_labelled_evidence_not_json_or_keys(signed):
    text = _flat(" ".join(signed["pages"]))
    assert "{" not in text and "}" not in text, "JSON in the PDF"
    leaked = [k for k in RAW_KEYS if re.search(rf"\b{k}\b", text)]
    assert not leaked, f"raw record keys in the PDF: {leaked}"
    for label in ("Failover time (first failed probe → first golden-correct answer)", "Replica: Process id",
                  "Failover time breakdown: Detection (first failed probe → outage declared)",
                  "First failed probe (UTC)", "Checks before the outage", "Monitor: Primary: Since",
                  "2026-12-03T17:49:10.000Z (UTC)", "Replicas before the outage", "Host", "OS user",
                  "Prefect flow run", "Approver", "not required"):
        assert label in text, label


def test_html_never_splits_a_number_from_its_unit(signed):
    html = signed["paths"]["html"].read_text()
    assert re.search(r"td\.num, th\.num, \.nowrap \{[^}]*white-space: nowrap", html)
    timeline = html[html.index('<section id="timeline">'):html.index('<section id="evidence">')]
    rows = [r for r in re.findall(r"<tr>(.*?)</tr>", timeline, re.S) if r.startswith("<td")]
    assert rows and all(re.match(r'<td class=" num">\d+</td><td class=" num">[\d.]+</td><td class=" num">', r)
                        for r in rows), "timeline numbers and times must not wrap"
    body = re.sub(r"<[^>]+>", " ", html.split("<main>", 1)[1])
    split = re.findall(r"\d[ \t]+(?:s|ms|MB|cases|files)\b", body)
    assert not split, f"number and unit separated by a breaking space: {split[:5]}"
    assert "4.90\u00a0s" in body and "2/2\u00a0cases" in body


# --- 3. one RTO definition; both snapshot ids explained ------------------------------------------------------------------
def test_one_rto_definition_everywhere_and_the_clocks_related(signed):
    from llmdr.common.definitions import RPO_DEFINITION, RTO_DEFINITION

    text = _flat(" ".join(signed["pages"]))
    html = _flat(signed["paths"]["html"].read_text().replace("&#39;", "'"))
    md = render_markdown(signed["record"])
    docs = _flat(DOCS.read_text())
    for where, s in (("PDF", text), ("HTML", html), ("markdown artifact", md), ("docs/guide/drills.md", docs)):
        assert RTO_DEFINITION in s and RPO_DEFINITION in s, where
    relation = "Here: 0.21 s undetected + 4.69 s failover = 4.90 s, the RTO above (4.9 s, to 0.1 s)."
    assert relation in text and relation in html
    assert "drill RTO = undetected time (outage start → first failed probe) + failover time" in docs


def test_both_snapshot_ids_are_explained(signed):
    text = _flat(" ".join(signed["pages"]))
    for role in ("Protected snapshot", "DR copy", "Restored and verified",
                 "The DR copy is the protected snapshot (same id)",
                 "The restored snapshot is the DR copy (same id): what was verified is what the DR region serves"):
        assert role in text, role
    assert _flat(" ".join(signed["pages"])).replace(" ", "").count(SNAP) >= 3


# --- 4. identity -------------------------------------------------------------------------------------------------------
def test_who_ran_it_host_os_user_prefect_run_and_approver(signed):
    sb = signed["record"]["started_by"]
    assert sb["host"] == socket.gethostname() and sb["os_user"] == getpass.getuser() and sb["approver"] is None
    html = signed["paths"]["html"].read_text()
    started = _flat(re.sub(r"<[^>]+>", " ", html[html.index('<section id="started">'):
                                                  html.index('<section id="controls">')]))
    for needle in (f"Host {socket.gethostname()} OS user {getpass.getuser()} Prefect flow run c0ae4f3b-dd4a-4657",
                   "Approver not required (this drill ran without an approval step)"):
        assert needle in started, started


# --- 5. the signature: key id, fingerprint, verifiable without llmdr ---------------------------------------------------------
def _sh(cmd: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=cwd, capture_output=True, text=True, timeout=60,
                          env=env)


def _tools() -> None:
    missing = [t for t in ("openssl", "sha256sum", "tail", "bash") if shutil.which(t) is None]
    if missing:  # CI must fail, not skip, when the recipe cannot be run
        pytest.fail(f"the no-llmdr verification recipe needs {missing} on PATH (apt-get install openssl coreutils)")


def test_the_report_names_its_key_and_ships_it(signed):
    signer, folder = signed["signer"], signed["folder"]
    assert re.fullmatch(r"[0-9a-f]{64}", signer["fingerprint"])
    assert signer["key_id"] == "ed25519:" + signer["fingerprint"][:32]
    text = _flat(" ".join(signed["pages"])).replace(" ", "")
    assert signer["key_id"] in text and signer["fingerprint"] in text
    assert (folder / "report-signing.pub").read_bytes() == (signed["state"] / "keys" / "report-signing.pub").read_bytes()
    readme = (folder / "README.md").read_text()
    assert signer["fingerprint"] in readme and signer["key_id"] in readme


def test_openssl_and_coreutils_verify_it_without_llmdr(signed, tmp_path):
    _tools()
    folder = tmp_path / signed["folder"].name
    shutil.copytree(signed["folder"], folder)
    from llmdr.drill.portable import OPENSSL_RECIPE

    fp, verify, sums = (_sh(c, folder) for c in OPENSSL_RECIPE)
    assert fp.returncode == 0 and fp.stdout.split()[0] == signed["signer"]["fingerprint"], fp.stderr
    assert verify.returncode == 0 and "Signature Verified Successfully" in verify.stdout, verify.stdout + verify.stderr
    assert sums.returncode == 0 and "report.pdf: OK" in sums.stdout, sums.stdout + sums.stderr
    # the recipe catches a changed report and a forged list
    pdf = folder / "report.pdf"
    data = bytearray(pdf.read_bytes())
    data[len(data) // 2] ^= 0x01
    pdf.write_bytes(bytes(data))
    bad = _sh(OPENSSL_RECIPE[2], folder)
    assert bad.returncode != 0 and "report.pdf: FAILED" in bad.stdout
    sums_file = folder / "SHA256SUMS"
    sums_file.write_text(sums_file.read_text().replace(sums_file.read_text()[:64], "0" * 64, 1))
    forged = _sh(OPENSSL_RECIPE[1], folder)
    assert forged.returncode != 0 and "Signature Verification Failure" in forged.stdout + forged.stderr


def test_the_python_snippet_in_the_readme_verifies_it(signed, tmp_path):
    folder = tmp_path / signed["folder"].name
    shutil.copytree(signed["folder"], folder)
    readme = (folder / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    assert len(snippet.strip().splitlines()) <= 12
    ok = subprocess.run([sys.executable, "-c", snippet], cwd=folder, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and signed["signer"]["fingerprint"] in ok.stdout and "OK" in ok.stdout, ok.stderr
    (folder / "evidence.json").write_text((folder / "evidence.json").read_text().replace("drillbot", "drillbOt"))
    bad = subprocess.run([sys.executable, "-c", snippet], cwd=folder, capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "evidence.json changed" in bad.stderr


def test_report_verify_dot_works_from_inside_the_folder(signed, tmp_path):
    folder = tmp_path / signed["folder"].name
    shutil.copytree(signed["folder"], folder)
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("LLMDR_CONFIG",)}

    def verify() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "llmdr.cli", "report", "verify", "."], cwd=folder, env=env,
                              capture_output=True, text=True, timeout=120)

    ok = verify()
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "signature OK by the key shipped in the folder" in ok.stdout
    assert f"fingerprint {signed['signer']['fingerprint']}" in ok.stdout
    (folder / "timeline.png").write_bytes((folder / "timeline.png").read_bytes() + b"\0")
    bad = verify()
    assert bad.returncode == 12 and "timeline.png: SHA-256 differs" in bad.stdout


def test_a_report_re_signed_with_a_key_swapped_in_fails_against_the_published_fingerprint(signed, tmp_path):
    """An attacker who can edit the folder changes the evidence, signs it again with their own key and ships that
    key beside it: the folder is self-consistent, so only the fingerprint the signer published can tell."""
    genuine = tmp_path / "genuine" / signed["folder"].name
    forged = tmp_path / "forged" / signed["folder"].name
    shutil.copytree(signed["folder"], genuine)
    shutil.copytree(signed["folder"], forged)
    evidence = forged / "evidence.json"
    evidence.write_text(evidence.read_text().replace("drillbot", "drillbOt"))
    for name in ("SIGNATURE.json", "SHA256SUMS", "SHA256SUMS.sig", "report-signing.pub"):
        (forged / name).unlink()
    attacker = tmp_path / "attacker"
    sign_folder(forged, Signing(), attacker, portable=True)
    assert (forged / "report-signing.pub").read_bytes() == (attacker / "keys" / "report-signing.pub").read_bytes()
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("LLMDR_CONFIG",)}
    published = signed["signer"]["fingerprint"]

    def verify(folder: Path, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "llmdr.cli", "report", "verify", str(folder), *extra],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)

    fooled = verify(forged)  # the folder's own key: consistent, so OK, with the warning to compare fingerprints
    assert fooled.returncode == 0 and "compare the fingerprint" in fooled.stdout, fooled.stdout + fooled.stderr
    caught = verify(forged, "--fingerprint", published)
    assert caught.returncode == 12, caught.stdout + caught.stderr
    assert f"not the one you expect ({published})" in caught.stdout
    for given in (published, signed["signer"]["key_id"], ":".join(published[i:i + 2] for i in range(0, 64, 2))):
        ok = verify(genuine, "--fingerprint", given)
        assert ok.returncode == 0 and "the one you expected" in ok.stdout, ok.stdout + ok.stderr
    bad = verify(genuine, "--fingerprint", "abc")
    assert bad.returncode == 2 and "64 hex digits" in bad.stderr and "Traceback" not in bad.stderr


def test_llmdr_also_checks_the_portable_signature(signed, tmp_path):
    """SHA256SUMS.sig is covered by SIGNATURE.json, and llmdr checks it verifies too: a folder whose portable
    signature is bad fails even when SIGNATURE.json was re-made over it."""
    folder = tmp_path / signed["folder"].name
    shutil.copytree(signed["folder"], folder)
    pub = signed["state"] / "keys" / "report-signing.pub"
    assert verify_folder(folder, public_key=pub).ok
    (folder / "SHA256SUMS.sig").write_bytes(b"\0" * 64)
    sign_folder(folder, Signing(), signed["state"])  # SIGNATURE.json over the broken file
    res = verify_folder(folder, public_key=pub)
    assert res.problems == ["SHA256SUMS.sig is not a valid signature of SHA256SUMS by this key"]


def test_a_file_name_sha256sum_would_escape_is_refused_before_anything_changes(signed, tmp_path):
    from llmdr.errors import UsageError

    folder = tmp_path / signed["folder"].name
    shutil.copytree(signed["folder"], folder)
    (folder / "notes\nreport.pdf: OK").write_text("a line that would forge sha256sum's output")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(UsageError, match="holds a newline or backslash; rename it"):
        sign_folder(folder, Signing(), signed["state"], portable=True)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_hmac_reports_have_an_openssl_recipe_too(signed, tmp_path):
    """The README's recipe names the key variable the config uses (here not the default), and works as written."""
    _tools()
    key = "0123456789abcdef0123456789abcdef"
    folder = tmp_path / signed["folder"].name
    shutil.copytree(signed["folder"], folder)
    sign_folder(folder, Signing(method="hmac", hmac_key_env="TEAM_DR_KEY"), tmp_path / "state",
                env={"TEAM_DR_KEY": key}, portable=True)
    text = (folder / "README.md").read_text()
    recipe = text.split("```sh\n", 1)[1].split("```", 1)[0].strip().splitlines()
    assert "in `TEAM_DR_KEY`" in text and '"$TEAM_DR_KEY"' in recipe[0] and "LLMDR_REPORT_HMAC_KEY" not in text
    env = {k: v for k, v in __import__("os").environ.items() if k != "LLMDR_REPORT_HMAC_KEY"} | {"TEAM_DR_KEY": key}
    ok = _sh(" && ".join(recipe), folder, env)
    assert ok.returncode == 0 and "HMAC OK" in ok.stdout, ok.stdout + ok.stderr
    wrong = _sh(recipe[0], folder, dict(env, TEAM_DR_KEY="another key of enough bytes"))
    assert wrong.returncode != 0 and "HMAC OK" not in wrong.stdout
    assert verify_folder(folder, hmac_key=key.encode()).ok


# --- 7. MLflow: runs table, RTO/RPO columns, the verified model version ----------------------------------------------------
def test_publish_records_the_drill_in_mlflow_linked_to_its_model_version(region_config, tmp_path, monkeypatch):
    from llmdr.common.definitions import RTO_DEFINITION
    from llmdr.drill.publish import publish_report
    from llmdr.lineage import tracking
    from llmdr.lineage.drills import DRILL_EXPERIMENT

    cfg = region_config
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = tracking.open_client(tracking.target_for(cfg, tracking_uri=uri, local_artifacts=True))
    client.create_registered_model(cfg.model_name)
    mv = client.create_model_version(cfg.model_name, source=f"s3://llmdr-primary/snapshots/{SNAP}")
    rec = first_drill(tmp_path)
    rec["bundle"] = rec["scope"]["bundle"] = cfg.bundle.name
    rec["evidence"]["model_version"] = {"name": cfg.model_name, "version": str(mv.version), "alias_moved": True,
                                        "aliases": ["drill-verified"]}
    out = publish_report(cfg, rec)
    folder = Path(out["folder"])
    for name in ("report-signing.pub", "SHA256SUMS", "SHA256SUMS.sig", "README.md", "report.pdf"):
        assert (folder / name).is_file(), name
    assert verify_folder(folder, public_key=folder / "report-signing.pub").ok
    assert json.loads((folder / "evidence.json").read_text())["signer"]["fingerprint"] in (folder / "README.md").read_text()

    exp = client.get_experiment_by_name(DRILL_EXPERIMENT)
    assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"  # opens on the runs table
    run = client.get_run(out["mlflow_run_id"])
    assert run.data.metrics["rto_seconds"] == 4.9 and run.data.metrics["rpo_seconds"] == 62.8
    assert run.data.params["rto_definition"] == RTO_DEFINITION
    tags = run.data.tags
    assert tags["llmdr.model_name"] == cfg.model_name and tags["llmdr.model_version"] == str(mv.version)
    assert tags["llmdr.model_uri"] == f"models:/{cfg.model_name}/{mv.version}"
    assert f"#/models/{cfg.model_name}/versions/{mv.version}" in tags["mlflow.note.content"]
    version = client.get_model_version(cfg.model_name, str(mv.version))
    assert version.tags["llmdr.last_drill_mlflow_run_id"] == out["mlflow_run_id"]

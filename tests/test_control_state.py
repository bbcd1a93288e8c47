"""llmdr's state in the regions' stores (``llmdr.control``), against the session's real SeaweedFS regions: a drill
report, a failover record and a router switch written to every region (the DR copy Object-Locked, the primary's
encrypted); the local state and reports folders deleted; `llmdr failovers`, `llmdr drills`, readiness and the next
drill still see the history, and `llmdr control restore` rebuilds the folders. A record written while a region was
down reaches it after `llmdr control sync`; forged records in a store are skipped, never trusted."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from llmdr.control import layout
from llmdr.drill import record as drill_core
from llmdr.errors import ObjectLocked
from llmdr.failover import steps as fo
from llmdr.storage.factory import adapter, open_region
from tests.support.config import copy_keys, two_regions
from tests.support.ports import free_port

pytestmark = pytest.mark.s3

KEY_P = "33" * 32
ENC_P = "    encryption: {key_env: LLMDR_T_CTL_KEY_P}"
LOCK_S = "    object_lock: {mode: COMPLIANCE, period: 60s}"


@pytest.fixture
def cfgs(stack, tmp_path, monkeypatch):
    """(cfg, down_cfg): two regions (primary encrypted, secondary Object-Locked in a lock-enabled bucket) sharing one
    state folder; ``down_cfg`` is the same project with the secondary's endpoint on a port nothing listens on."""
    monkeypatch.setenv("LLMDR_T_CTL_KEY_P", KEY_P)
    state = tmp_path / "state"
    copy_keys(stack, state)
    prefix = f"c-{uuid.uuid4().hex[:8]}"
    bucket = f"llmdr-ctl-{uuid.uuid4().hex[:10]}"
    common = dict(prefix=prefix, secondary_bucket=bucket, secondary_prefix="", primary=ENC_P, secondary=LOCK_S,
                  state=state)
    cfg = two_regions(stack, tmp_path, **common)
    assert adapter(cfg, cfg.secondaries[0]).ensure_bucket(object_lock=True) is True
    down = two_regions(stack, tmp_path, secondary_endpoint=f"http://127.0.0.1:{free_port()}", **common)
    (tmp_path / "golden.jsonl").write_text('{"prompt": "2+2?", "answer": "4"}\n')
    yield cfg, down
    from llmdr.control.reads import forget
    from llmdr.drill.stored import forget as forget_drills

    forget()
    forget_drills()


def _cli(cfg, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmdr.cli", "--config", str(cfg.source_file), *args],
                          capture_output=True, text=True, timeout=120)


def _drill(cfg, started: float) -> dict:
    """A finished, passing drill published the way the dr-drill flow publishes it (signed folder, stores)."""
    from prefect.logging import disable_run_logger

    from llmdr.drill import procedure
    from tasks.drill import publish_report

    rec = drill_core.DrillRecord(bundle="testbundle", started_ts=started, started_by={"kind": "cli"},
                                 tool_version="test", scope={})
    rec.measurements.update(rto_s=4.2, rpo_s=61.0)
    rec.evidence.update(golden_after_failover={"ok": True, "passed": 1, "total": 1},
                        restore_test={"ok": True, "summary": "ok"}, bundle_complete_dr={"complete": True},
                        failback={"ok": True})
    procedure.finish(rec, cfg, now=started + 30)  # the previous-drill control reads the history (stores included)
    with disable_run_logger():
        out = publish_report.fn(str(cfg.source_file), rec.to_json())
    return rec.to_json() | {"report": out}


def _failover(cfg, started: float) -> fo.FailoverRecord:
    rec = fo.FailoverRecord(kind="failover", bundle="testbundle", from_region="primary", to_region="secondary",
                            trigger="manual", reason="test", started_ts=started, first_failure_ts=started - 2)
    rec.finish(started + 3)
    return rec


def _forget() -> None:
    """A new command: nothing remembered from earlier listings."""
    from llmdr.control.reads import forget
    from llmdr.drill.stored import forget as forget_drills

    forget()
    forget_drills()


def _lose_the_host(cfg) -> None:
    """Everything a control host keeps, gone, except llmdr.yaml and the keys (local.env, keys/)."""
    for p in cfg.state_path.iterdir():
        if p.name not in ("local.env", "keys"):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    shutil.rmtree(cfg.reports_path, ignore_errors=True)
    (cfg.base_dir / "golden.jsonl").unlink(missing_ok=True)
    _forget()


def test_history_outlives_the_control_host(cfgs):
    from llmdr.control import pending, sync
    from llmdr.drill.readiness.checks import check_drill
    from llmdr.failover.router import router_log

    cfg, _ = cfgs
    now = time.time()
    first = _drill(cfg, now - 2 * 86400)
    assert first["passed"] and sorted(first["report"]["stored"]["held"]) == ["primary", "secondary"], first["report"]
    fover = _failover(cfg, now - 86400)
    placed = fo.append_history(cfg, fover)
    assert placed["held"] == ["primary", "secondary"] and not placed["pending"]
    router_log(cfg).record("secondary", reason="failover test", previous="primary")
    sync(cfg)  # races the background push harmlessly: a name is created once
    assert pending(cfg) == {}

    # every region holds every record; the DR copies are Object-Locked, the primary's encrypted
    fkey = layout.failover_key(fover.started_ts, fover.id)
    dkey = layout.drill_file_key(first["id"], "evidence.json")
    dr = adapter(cfg, cfg.secondaries[0])
    for key in (fkey, dkey, layout.drill_set_key(first["id"])):
        assert dr.retention(key) is not None, key
        with pytest.raises(ObjectLocked):
            dr.delete(key)
        assert dr.head(key).size > 0
    # the drill's MLflow artifacts in the DR bucket are locked too
    run_id = first["report"]["mlflow_run_id"]
    assert run_id and first["report"]["stored"]["mlflow_artifacts_locked"] > 0, first["report"]
    mkeys = [b.key for b in dr.list("mlflow/") if f"/{run_id}/artifacts/" in b.key]
    assert len(mkeys) == first["report"]["stored"]["mlflow_artifacts_locked"]
    with pytest.raises(ObjectLocked):
        dr.delete(mkeys[0])
    raw = adapter(cfg, cfg.primary).get(fkey)
    assert fover.id.encode() not in raw and fover.id.encode() in open_region(cfg, cfg.primary).get(fkey)
    assert [k for k in adapter(cfg, cfg.secondaries[0]).list(layout.SWITCHES)]

    _lose_the_host(cfg)
    assert not fo.history_path(cfg).exists() and not drill_core.drills_dir(cfg).exists()

    # reads go to the stores: failovers, drills, readiness
    out = _cli(cfg, "failovers", "--json")
    assert out.returncode == 0, out.stderr
    assert [h["id"] for h in json.loads(out.stdout)] == [fover.id]
    out = _cli(cfg, "drills", "--json")
    assert out.returncode == 0, out.stderr
    assert first["id"] in out.stdout, out.stdout
    check = check_drill(cfg, time.time())
    assert check.data.get("last_pass") == first["id"], check

    # the next drill compares with the previous one, read from the stores
    _forget()
    second = _drill(cfg, now - 60)
    prev = next(c for c in second["controls"] if c["id"] == "previous_drill")
    assert prev["passed"] is True and drill_core.NO_PREVIOUS not in prev["value"], prev

    # `llmdr control restore` rebuilds the folders
    _lose_the_host(cfg)
    out = _cli(cfg, "control", "restore", "--json")
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["failovers_added"] == 1 and res["switches_added"] == 1, res
    assert sorted(res["drills_restored"]) == sorted([first["id"], second["id"]]) and res["golden"].startswith("restored")
    assert [r.id for r in fo.history(cfg, stores=False)] == [fover.id]
    assert router_log(cfg).history()[0]["active"] == "secondary"
    assert (cfg.base_dir / "golden.jsonl").read_text().startswith('{"prompt"')
    folder = drill_core.drills_dir(cfg) / first["id"]
    verify = _cli(cfg, "report", "verify", str(folder))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    again = _cli(cfg, "control", "restore", "--json")  # idempotent: nothing added twice
    assert json.loads(again.stdout)["failovers_added"] == 0 and json.loads(again.stdout)["drills_restored"] == []


def test_a_record_written_while_a_region_is_down_arrives_after_sync(cfgs):
    from llmdr.control import pending

    cfg, down = cfgs
    rec = _failover(cfg, time.time() - 30)
    t0 = time.monotonic()
    placed = fo.append_history(down, rec)  # during the failover: the secondary does not answer
    assert placed["held"] == ["primary"] and list(placed["pending"]) == ["secondary"], placed
    assert time.monotonic() - t0 < 60  # bounded, not a hang (a generous bound, not a timing assertion on speed)
    key = layout.failover_key(rec.started_ts, rec.id)
    assert pending(down) == {"secondary": [key]}
    out = _cli(down, "control", "sync")
    assert out.returncode == 1 and "secondary: pushed 0, left 1" in out.stdout, out.stdout + out.stderr
    out = _cli(down, "control", "status", "--json")  # a region that does not answer is not "0 objects"
    assert out.returncode == 0 and json.loads(out.stdout)["held"]["secondary"] is None, out.stdout + out.stderr
    assert json.loads(out.stdout)["pending"] == {"secondary": [key]}
    # the region is back (the real endpoint): sync pushes the record, Object-Locked like the others
    out = _cli(cfg, "control", "sync", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["regions"]["secondary"]["pushed"] == 1
    dr = adapter(cfg, cfg.secondaries[0])
    assert dr.head(key).size > 0 and dr.retention(key) is not None
    assert pending(cfg) == {}
    # and the next write to a region pushes what was pending for it
    rec2 = _failover(cfg, time.time() - 20)
    fo.append_history(down, rec2)
    fo.append_history(cfg, _failover(cfg, time.time() - 10))
    assert pending(cfg) == {}
    assert dr.head(layout.failover_key(rec2.started_ts, rec2.id)).size > 0


def test_forged_records_in_a_store_are_skipped(cfgs):
    cfg, _ = cfgs
    real = _drill(cfg, time.time() - 3600)
    store = open_region(cfg, cfg.primary)
    good = _failover(cfg, time.time() - 100)
    fo.append_history(cfg, good)
    # a name outside the layout, bytes that are not JSON, a record whose id is not the one its name carries
    store.put(layout.FAILOVERS + "evil.json", json.dumps(_failover(cfg, 1.0).to_json()).encode())
    store.put(layout.FAILOVERS + layout.record_name(2.0, "abcdef012345"), b"{not json")
    other = _failover(cfg, 3.0)
    store.put(layout.failover_key(3.0, "0123456789ab"), json.dumps(other.to_json()).encode())
    # a drill nobody signed: a passing evidence.json under a new id, the real drill's signature beside it
    fake_id = "20260101T000000Z-abcdef"
    forged = dict(real, id=fake_id)
    forged.pop("report")
    folder = drill_core.drills_dir(cfg) / real["id"]
    files = {"evidence.json": json.dumps(forged).encode(), "SIGNATURE.json": (folder / "SIGNATURE.json").read_bytes()}
    for name, data in files.items():
        store.put(layout.drill_file_key(fake_id, name), data)
    entries = [{"path": n, "sha256": hashlib.sha256(d).hexdigest(), "size": len(d)} for n, d in files.items()]
    store.put(layout.drill_set_key(fake_id), json.dumps({"drill_id": fake_id, "files": entries}).encode())
    shutil.rmtree(drill_core.drills_dir(cfg))
    fo.history_path(cfg).unlink()

    out = _cli(cfg, "failovers", "--json")
    assert out.returncode == 0, out.stderr
    assert [h["id"] for h in json.loads(out.stdout)] == [good.id]
    assert "not a name llmdr writes" in out.stderr and "not a JSON record" in out.stderr, out.stderr
    assert "does not carry the record's id" in out.stderr, out.stderr
    out = _cli(cfg, "drills", "--json")
    assert out.returncode == 0, out.stderr
    assert real["id"] in out.stdout and fake_id not in out.stdout, out.stdout
    assert f"skipping drill report {fake_id}" in out.stderr and "signature" in out.stderr, out.stderr


def test_only_one_regions_keys_keeps_the_other_pending(stack, tmp_path):
    """A host that holds only the primary's keys: records land there, the secondary's copy waits (named in the
    warning), and the reads work from the primary."""
    state = tmp_path / "state"
    state.mkdir()
    keys = (stack.state_path / "local.env").read_text().splitlines()
    (state / "local.env").write_text("\n".join(line for line in keys if "LLMDR_TEST_S" not in line) + "\n")
    cfg = two_regions(stack, tmp_path, state=state)
    rec = _failover(cfg, time.time() - 30)
    placed = fo.append_history(cfg, rec)
    assert placed["held"] == ["primary"] and "LLMDR_TEST_S" in placed["pending"]["secondary"], placed
    fo.history_path(cfg).unlink()
    _forget()
    out = _cli(cfg, "failovers", "--json")
    assert out.returncode == 0 and [h["id"] for h in json.loads(out.stdout)] == [rec.id], out.stdout + out.stderr
    assert "region 'secondary' not read" in out.stderr, out.stderr


def test_signed_records_refuse_what_a_regions_write_keys_alone_can_write(stack, tmp_path, monkeypatch):
    """With manifest_signing, llmdr's records carry a signature over {bundle, key, record}: a well-formed failover
    record or golden pointer written by someone holding only a region's write keys, a signed record edited, or one
    moved to another name are skipped on read; what llmdr wrote (failover, switch, golden pointer) reads back."""
    from llmdr.control import put_document, put_record
    from llmdr.control.sealing import SIG_FIELD
    from llmdr.drill.rebuild import newest_document, stored_switches
    from llmdr.failover.router import router_log

    monkeypatch.setenv("LLMDR_T_CTL_MKEY", "m" * 40)
    state = tmp_path / "state"
    copy_keys(stack, state)
    cfg = two_regions(stack, tmp_path, state=state,
                      extra="manifest_signing: {method: hmac, hmac_key_env: LLMDR_T_CTL_MKEY}")
    store = open_region(cfg, cfg.primary)  # the attacker's view: the primary's keys, a valid store chain
    good = _failover(cfg, time.time() - 100)
    fo.append_history(cfg, good)
    raw = json.loads(store.get(layout.failover_key(good.started_ts, good.id)))
    assert raw[SIG_FIELD]["method"] == "hmac" and raw[SIG_FIELD]["value"]
    router_log(cfg).record("secondary", reason="test", previous="primary")  # a switch, pushed in the background
    (tmp_path / "golden.jsonl").write_text('{"prompt": "2+2?", "answer": "4"}\n')
    put_document(cfg, "golden", tmp_path / "golden.jsonl", ts=time.time() - 50)

    # forgeries: unsigned; signed, then edited; signed under another name; a golden pointer to the attacker's set
    unsigned = _failover(cfg, time.time() - 90)
    store.put(layout.failover_key(unsigned.started_ts, unsigned.id), json.dumps(unsigned.to_json()).encode())
    edited = dict(raw, reason="edited after signing")
    edited_rec = _failover(cfg, time.time() - 80)
    store.put(layout.failover_key(edited_rec.started_ts, edited_rec.id),
              json.dumps(edited | {"id": edited_rec.id, "started_ts": edited_rec.started_ts}).encode())
    store.put(layout.failover_key(good.started_ts, "0123456789ab"), json.dumps(raw | {"id": "0123456789ab"}).encode())
    evil = b'{"prompt": "2+2?", "answer": "5"}\n'
    sha = hashlib.sha256(evil).hexdigest()
    store.put(layout.doc_key("golden", sha), evil)
    store.put(layout.doc_pointer_prefix("golden") + layout.record_name(time.time()),
              json.dumps({"sha256": sha, "size": len(evil), "name": "golden.jsonl", "written_utc": "now"}).encode())
    # a record signed with the same key by another bundle's project on the same prefix does not verify for this one
    other = two_regions(stack, tmp_path, state=state, prefix=cfg.primary.prefix, bundle="{name: otherbundle, path: bundle}",
                        extra="manifest_signing: {method: hmac, hmac_key_env: LLMDR_T_CTL_MKEY}")
    replayed = _failover(cfg, time.time() - 70)
    put_record(other, layout.failover_key(replayed.started_ts, replayed.id), replayed.to_json())
    _forget()

    assert [r.id for r in fo.history(cfg, stores=True) if r.id in
            {good.id, unsigned.id, edited_rec.id, "0123456789ab", replayed.id}] == [good.id]
    found = newest_document(cfg, "golden")
    assert found is not None and found[1] == (tmp_path / "golden.jsonl").read_bytes()  # not the attacker's "5"
    deadline = time.monotonic() + 30
    while not stored_switches(cfg) and time.monotonic() < deadline:
        time.sleep(0.2)
        _forget()
    assert [s["active"] for s in stored_switches(cfg)] == ["secondary"]
    # the CLI says why each forgery was skipped
    fo.history_path(cfg).unlink()
    out = _cli(cfg, "failovers", "--json")
    assert out.returncode == 0, out.stderr
    assert [h["id"] for h in json.loads(out.stdout)] == [good.id]
    assert "not signed" in out.stderr and "does not verify" in out.stderr, out.stderr
    assert out.stderr.count("does not verify") >= 3, out.stderr  # edited, renamed, another bundle's

"""The golden gate's modes and a person's override, through the real failover flow: the session's two SeaweedFS
regions, a real replica per region, a Caddy router, a loopback webhook receiver and the session's Prefect server.

The standbys are real models whose answers really differ from the golden set recorded on the primary: the demo
bundle with a shorter generation limit in its generation_config (``max_new_tokens`` 11 instead of 12: every answer
loses its last token, token similarity 22/23 = 0.957, "within tolerance" of a 0.9 gate) or a much shorter one
(``max_new_tokens`` 3: 6/15 = 0.4, "beyond"). Each is snapshotted into the secondary's store only and started
there. The failover records are stored, signed with the manifest key (HMAC), in every region's store."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from flows.failover import failover
from llmdr.config import load_config
from llmdr.control import layout
from llmdr.control.sealing import SIG_FIELD
from llmdr.errors import UsageError
from llmdr.failover import steps as fo
from llmdr.failover.router import open_router, router_log
from llmdr.repo import ops
from llmdr.serving import golden
from llmdr.serving.endpoint import OpenAIEndpoint
from llmdr.serving.replica import start_replica
from llmdr.serving.tinymodel import write_demo_bundle
from llmdr.storage.factory import open_region
from tests.support.config import make_served_config
from tests.support.loopback import Receiver
from tests.support.served import env_secret, protect_demo, serve_with_golden, stopped_afterwards

pytestmark = pytest.mark.s3

KEY_ENV = "LLMDR_T_GATE_MKEY"
LLMDR = [sys.executable, "-m", "llmdr.cli"]


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


@pytest.fixture(scope="module")
def gate_stack(stack, tmp_path_factory, receiver):
    """A served stack (traffic on the primary) with signed records, the golden set recorded from the primary, and
    the two other models snapshotted into the secondary: (config, snapshot ids by name)."""
    with env_secret(KEY_ENV, "g" * 40):
        cfg = make_served_config(stack, tmp_path_factory.mktemp("gate"), warm=True,
                                 extra=f'notifications: {{webhook_url: "{receiver.url}"}}\n'
                                       f"manifest_signing: {{method: hmac, hmac_key_env: {KEY_ENV}}}")
        with stopped_afterwards(cfg):
            sids = {"good": protect_demo(cfg)}
            for name, limit in (("close", 11), ("far", 3)):
                folder = cfg.base_dir / f"model-{name}"
                write_demo_bundle(folder)
                gen = json.loads((folder / "generation_config.json").read_text())
                gen["max_new_tokens"] = limit
                (folder / "generation_config.json").write_text(json.dumps(gen))
                sids[name] = ops.snapshot_bundle(cfg, region="secondary", path=folder).snapshot_id
            serve_with_golden(cfg)
            yield cfg, sids


def _gate(cfg, line: str | None):
    """Set (or remove) the project's golden_gate: line in llmdr.yaml; the flow's tasks read the file."""
    path = cfg.source_file
    text = re.sub(r"(?m)^golden_gate:.*\n", "", path.read_text())
    path.write_text(text + (f"golden_gate: {line}\n" if line else ""))
    return load_config(path)


def _standby(cfg, sid: str) -> None:
    secondary = cfg.region("secondary")
    st = start_replica(cfg, secondary, ref=sid)
    assert st.healthy and st.snapshot == sid
    open_router(cfg).switch("primary", reason="test reset")


def _run(cfg, **kw) -> dict:
    return failover(config_path=str(cfg.source_file), to="secondary", trigger="manual", **kw)


def _scores(report: dict) -> list[float]:
    return [c["score"] for c in report["cases"]]


def test_a_standby_within_tolerance_passes_similarity_and_fails_exact(prefect_harness, gate_stack):
    cfg, sids = gate_stack
    router = open_router(cfg)
    _standby(cfg, sids["close"])
    switches = len(router_log(cfg).history())

    _gate(cfg, None)  # exact, the default: a correct-but-not-identical standby is refused
    with pytest.raises(fo.FailoverError, match=r"[0-5]/6 golden cases pass the exact gate, 6 needed; scores: "
                                               r"chat-1 0\.000") as refused:
        _run(cfg, reason="exact gate")
    assert "--accept-golden-mismatch --reason" in str(refused.value)
    assert router.active() == "primary" and len(router_log(cfg).history()) == switches
    rec = fo.history(cfg)[-1]
    assert not rec.ok and [(s.name, s.ok) for s in rec.steps] == [("ensure-replica", True), ("golden-check", False)]
    # the refused run's record keeps the evidence: the gate and every score
    assert rec.golden_direct["gate"]["mode"] == "exact" and not rec.golden_direct["ok"]
    assert _scores(rec.golden_direct).count(0.0) >= 4 and rec.golden_override is None

    cfg = _gate(cfg, "{mode: similarity, threshold: 0.9}")
    out = _run(cfg, reason="similarity gate")
    assert out["ok"] and router.active() == "secondary" and fo.answering_region(router.url) == "secondary"
    for report in (out["golden_direct"], out["golden_router"]):
        assert report["ok"] and report["gate"] == {"mode": "similarity", "threshold": 0.9, "min_pass": "all"}
        # every answer that hit the limit lost its last token (2*11/(12+11)); one that ended sooner is unchanged
        assert set(_scores(report)) <= {1.0, round(22 / 23, 4)}, _scores(report)
        assert sum(c["expected"] != c["actual"] for c in report["cases"]) >= 4, "the answers really differ"
    assert out["golden_override"] is None
    direct = next(s for s in out["steps"] if s["name"] == "golden-check")
    assert direct["ok"] and "6/6 cases pass the similarity gate (threshold 0.9, 6 needed): chat-1 0.9565" in \
        direct["detail"], direct

    # the same standby, a stricter threshold than its answers meet: refused, traffic stays
    cfg = _gate(cfg, "{mode: similarity, threshold: 0.97}")
    open_router(cfg).switch("primary", reason="test reset")
    with pytest.raises(fo.FailoverError, match=r"[0-5]/6 golden cases pass the similarity gate"):
        _run(cfg, reason="too strict")
    assert router.active() == "primary"
    # equivalent (token-overlap F1) judges it as similarity does here: one token of twelve missing
    cfg = _gate(cfg, "{mode: equivalent, threshold: 0.9}")
    out = _run(cfg, reason="equivalent gate")
    assert out["ok"] and out["golden_direct"]["gate"]["mode"] == "equivalent" and router.active() == "secondary"


def test_a_standby_beyond_tolerance_is_refused_and_a_person_may_accept_it(prefect_harness, gate_stack, receiver):
    cfg, sids = gate_stack
    cfg = _gate(cfg, "{mode: similarity, threshold: 0.9}")
    router = open_router(cfg)
    _standby(cfg, sids["far"])
    switches = len(router_log(cfg).history())
    before = len(fo.history(cfg))

    with pytest.raises(fo.FailoverError, match=r"[0-5]/6 golden cases pass the similarity gate.*chat-1 0\.400"):
        _run(cfg, reason="no override")
    assert router.active() == "primary" and len(router_log(cfg).history()) == switches

    # bad requests are refused before anything runs or is recorded
    with pytest.raises(UsageError, match="needs --reason TEXT"):
        _run(cfg, accept_golden_mismatch=True)  # the default reason is not a reason
    with pytest.raises(UsageError, match="may not carry it"):
        failover(config_path=str(cfg.source_file), to="secondary", trigger="automation", reason="x",
                 accept_golden_mismatch=True)
    assert len(fo.history(cfg)) == before + 1, "only the refused run without override was recorded"

    mark = len(receiver.requests)
    out = _run(cfg, reason="DR GPUs differ; answers reviewed by ana", accept_golden_mismatch=True)
    assert out["ok"] and router.active() == "secondary" and fo.answering_region(router.url) == "secondary"
    assert [(s["name"], s["ok"]) for s in out["steps"]] == [
        ("ensure-replica", True), ("golden-check", False), ("golden-override", True), ("switch-router", True),
        ("verify-through-router", True)]
    ov = out["golden_override"]
    assert ov["reason"] == "DR GPUs differ; answers reviewed by ana" and re.fullmatch(r".+@.+", ov["by"])
    assert not ov["report"]["ok"] and ov["report"]["accepted_mismatch"] is True
    assert ov["report"]["cases"][0]["score"] == 0.4 and ov["report"]["gate"]["mode"] == "similarity"
    assert sum(score < 0.9 for score in _scores(ov["report"])) >= 4, _scores(ov["report"])
    assert ov["router_report"]["accepted_mismatch"] is True and ov["router_report"]["region"] == "secondary"

    # the record, signed, in every region's store (read back through the verifying reader too)
    key = layout.failover_key(out["started_ts"], out["id"])
    for region in cfg.regions:
        raw = json.loads(open_region(cfg, region).get(key))
        assert raw[SIG_FIELD]["method"] == "hmac" and raw["golden_override"]["reason"] == ov["reason"]
    [stored] = [r for r in fo.stored_history(cfg) if r.id == out["id"]]
    assert stored.golden_override["by"] == ov["by"]

    # said loudly: both notices name the acceptance
    kinds = receiver.kinds_since(mark)
    assert kinds == ["failover", "verification_failed"], kinds
    assert "GOLDEN MISMATCH ACCEPTED by " + ov["by"] in receiver.bodies[mark]["data"]["reason"]
    assert "ACCEPTED by" in receiver.bodies[mark + 1]["title"]


def test_the_override_never_accepts_a_replica_that_does_not_answer(prefect_harness, gate_stack):
    cfg, sids = gate_stack
    _gate(cfg, None)
    _standby(cfg, sids["far"])
    from llmdr.serving.replica import stop_replica

    secondary = cfg.region("secondary")
    stop_replica(cfg, secondary)
    try:
        # the golden step against a standby that answers nothing: no score to accept, whatever a person says
        with pytest.raises(fo.FailoverError, match="got no answer, which no override accepts"):
            fo.check_replica(cfg, "secondary", accept_mismatch=True)
    finally:
        start_replica(cfg, secondary, ref=sids["good"])
        open_router(cfg).switch("primary", reason="test reset")


def test_cli_refuses_the_override_without_a_reason(tmp_path):
    res = subprocess.run([*LLMDR, "failover", "--to", "secondary", "--accept-golden-mismatch"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert "--accept-golden-mismatch needs --reason TEXT" in res.stderr + res.stdout
    assert "Traceback" not in res.stderr


# --- the restore test judges by the gate too ------------------------------------------------------------------------


def test_restore_test_uses_the_gate(region_config, tmp_path):
    """A snapshot of the 11-token model restore-tested against the 12-token golden set: fails exact, passes a 0.9
    similarity gate, with the gate and every score in the result."""
    from llmdr.repo.bundle import content_digests, detected_specs
    from llmdr.repo.repository import Repository
    from llmdr.repo.snapshot import take_snapshot
    from llmdr.serving.restoretest import restore_test
    from tests.support.serving import serving

    good = tmp_path / "good"
    write_demo_bundle(good)
    specs = detected_specs(good)
    with serving(good) as url:
        gs = golden.record(golden.default_cases(), OpenAIEndpoint(url).answer,
                           {"components": content_digests(good, specs)})
    close = tmp_path / "close"
    write_demo_bundle(close)
    gen = json.loads((close / "generation_config.json").read_text())
    gen["max_new_tokens"] = 11
    (close / "generation_config.json").write_text(json.dumps(gen))
    repo = Repository(open_region(region_config, region_config.secondaries[0]))
    sid = take_snapshot(repo, close, bundle="tiny").snapshot_id

    exact = restore_test(repo, sid, tmp_path / "scratch", specs, gs)
    assert not exact.ok and "golden answers pass the exact gate (6 needed)" in " ".join(exact.problems)
    assert exact.differing_components == ["generation_config"]
    tolerant = restore_test(repo, sid, tmp_path / "scratch", specs, gs, gate=golden.Gate("similarity", 0.9))
    assert tolerant.ok, tolerant.problems
    out = tolerant.to_json()["golden"]
    assert out["gate"]["mode"] == "similarity" and round(22 / 23, 4) in [c["score"] for c in out["cases"]]

"""Golden gate modes (exact, similarity, equivalent), min_pass, the golden_gate: config section (project-wide and per
bundle), and the person's override of a golden mismatch as the failover run decides it. Pure code: the failover with
a real standby is in test_golden_gate_failover.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmdr.config import parse_config
from llmdr.errors import ConfigError, UsageError
from llmdr.failover import run as decide
from llmdr.serving import golden
from llmdr.serving.golden import Gate
from tests.support.config import TEST_KEYS, region_yaml


def _set(*expected: str) -> golden.GoldenSet:
    return golden.GoldenSet([golden.GoldenCase(f"c{i}", e, prompt=f"p{i}") for i, e in enumerate(expected)])


def _check(expected: list[str], actual: list[str], gate: Gate) -> golden.GoldenReport:
    answers = {f"c{i}": a for i, a in enumerate(actual)}
    return golden.check(_set(*expected), lambda c: answers[c.id], gate)


# --- normalisation -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text,normal", [
    ("Hello, World!", "hello world"),
    ("  many   spaces\tand\nlines  ", "many spaces and lines"),
    ("ＦＵＬＬ－ＷＩＤＴＨ ｔｅｘｔ", "full width text"),  # NFKC folds full-width forms (and the dash is punctuation)
    ("ﬁne ligature", "fine ligature"),  # NFKC: the ﬁ ligature is f + i
    ("Straße STRASSE", "strasse strasse"),  # case folding, not just lower()
    ("«quoted» — “smart” ‘quotes’…", "quoted smart quotes"),
    ("e\u0301te\u0301", "été"),  # combining accents composed
    ("\u00a0non\u2003breaking\u00a0", "non breaking"),  # Unicode spaces are whitespace
    ("", ""),
    ("?!.,", ""),
])
def test_normalise(text, normal):
    assert golden.normalise(text) == normal


# --- modes ---------------------------------------------------------------------------------------------------------


def test_exact_mode_is_byte_for_byte():
    gate = Gate("exact")
    rep = _check(["The sky is blue.", "a b"], ["the sky is blue", "a b"], gate)
    assert [r.ok for r in rep.results] == [False, True]
    assert [r.score for r in rep.results] == [0.0, 1.0] and all(r.threshold is None for r in rep.results)
    assert not rep.ok and rep.required == 2
    assert rep.to_json()["gate"] == {"mode": "exact", "threshold": None, "min_pass": "all"}
    # the default gate is exact: a caller that passes none gets the old behaviour
    assert not golden.check(_set("x"), lambda c: "X").ok and golden.check(_set("x"), lambda c: "x").ok


def test_similarity_mode_normalises_then_scores_tokens_in_order():
    gate = Gate("similarity", threshold=0.9)
    twelve = "pull correct stead white in in the fish each beauty may until"
    rep = _check([twelve, twelve, twelve, "Blue sky"],
                 [twelve.upper().replace(" ", "  ") + " !", twelve.rsplit(" ", 1)[0], "pull correct stead", "sky blue"],
                 gate)
    scores = [r.score for r in rep.results]
    assert scores[0] == 1.0  # case, whitespace and punctuation do not count
    assert scores[1] == pytest.approx(22 / 23)  # one token of 12 missing: 2*11/(12+11)
    assert scores[2] == pytest.approx(6 / 15)
    assert scores[3] == pytest.approx(0.5)  # order matters in this mode
    assert [r.ok for r in rep.results] == [True, True, False, False]
    assert all(r.threshold == 0.9 and r.mode == "similarity" for r in rep.results)
    case = rep.to_json()["cases"][1]
    assert case["score"] == round(22 / 23, 4) and case["threshold"] == 0.9 and case["mode"] == "similarity"


def test_equivalent_mode_ignores_order_but_not_words():
    gate = Gate("equivalent", threshold=0.8)
    rep = _check(["Blue sky", "The answer is 42.", "yes it is", "a a a b"],
                 ["SKY, blue", "the answer is 42", "no it is not", "a b b b"], gate)
    scores = [r.score for r in rep.results]
    assert scores[0] == 1.0 and scores[1] == 1.0
    assert scores[2] == pytest.approx(2 * 2 / 7)  # {it, is} shared of 3 + 4 tokens: a negation scores 0.57
    assert scores[3] == pytest.approx(2 * 2 / 8)  # multisets: a a a b vs a b b b share one a and one b
    assert [r.ok for r in rep.results] == [True, True, False, False]


@pytest.mark.parametrize("mode", ["similarity", "equivalent"])
def test_threshold_one_is_exact_after_normalisation(mode):
    gate = Gate(mode, threshold=1.0)
    rep = _check(["Hello, World!", "hello world", "hello world"], ["hello   WORLD", "hello world again", "world"], gate)
    assert [r.ok for r in rep.results] == [True, False, False]


@pytest.mark.parametrize("mode", ["exact", "similarity", "equivalent"])
def test_empty_answers(mode):
    gate = Gate(mode, threshold=0.5)
    rep = _check(["", "", "something", "..."], ["", "something", "", "   "], gate)
    # empty vs empty passes; an empty answer to a real question (or the reverse) scores 0
    assert rep.results[0].ok and rep.results[0].score == 1.0
    assert [r.score for r in rep.results[1:3]] == [0.0, 0.0] and not rep.results[1].ok and not rep.results[2].ok
    # "..." and "   " are both empty once normalised: equal in the tolerant modes, different bytes in exact
    assert rep.results[3].ok is (mode != "exact")


def test_a_case_without_an_answer_fails_every_mode_and_min_pass():
    for gate in (Gate("exact"), Gate("similarity", 0.1, 1), Gate("equivalent", 0.1, 0.5)):
        def answer(c):
            if c.id == "c1":
                raise OSError("connection refused")
            return c.expected
        rep = golden.check(_set("a", "b", "c"), answer, gate)
        assert rep.passed == 2 and rep.errors == 1 and not rep.answered
        assert not rep.ok, f"{gate}: an unanswered case must fail the gate whatever min_pass says"
        bad = rep.to_json()["cases"][1]
        assert bad["score"] is None and bad["error"] == "connection refused" and not bad["ok"]
    not_text = golden.check(_set("a"), lambda c: None, Gate("similarity"))
    assert not not_text.ok and "not text" in not_text.results[0].error


@pytest.mark.parametrize("min_pass,total,required", [
    ("all", 6, 6), (5, 6, 5), (10, 6, 6), (0.8, 6, 5), (0.5, 6, 3), (1.0, 6, 6), (0.01, 6, 1), (0.7, 10, 7)])
def test_min_pass(min_pass, total, required):
    assert Gate("exact", min_pass=min_pass).required(total) == required


def test_min_pass_lets_a_few_cases_fail():
    rep = _check(["a", "b", "c", "d"], ["a", "b", "c", "x"], Gate("exact", min_pass=3))
    assert rep.passed == 3 and rep.required == 3 and rep.ok
    assert not _check(["a", "b", "c", "d"], ["a", "b", "x", "x"], Gate("exact", min_pass=0.75)).ok


@pytest.mark.parametrize("kw,message", [
    ({"mode": "fuzzy"}, "mode 'fuzzy' is not one of exact, similarity, equivalent"),
    ({"threshold": 0}, "threshold 0 must be above 0"),
    ({"threshold": 1.5}, "threshold 1.5 must be above 0"),
    ({"min_pass": 0}, "min_pass 0 must be"),
    ({"min_pass": True}, "min_pass True must be"),
    ({"min_pass": "most"}, "min_pass 'most' must be"),
])
def test_bad_gates_are_refused(kw, message):
    with pytest.raises(UsageError, match=message):
        Gate(**kw)


# --- config ----------------------------------------------------------------------------------------------------------


def _yaml(extra: str = "", bundles: str | None = None) -> str:
    regions = (region_yaml("primary", "primary", 19301, "llmdr-primary", keys=TEST_KEYS[0], local=True)
               + region_yaml("secondary", "secondary", 19401, "llmdr-secondary", keys=TEST_KEYS[1], local=True))
    what = f"bundles:{bundles}" if bundles else "bundle: {name: b, path: ./bundle}\n"
    return f"version: 1\n{what}regions:\n{regions}{extra}"


def _parse(text: str):
    return parse_config(text, source=Path("llmdr.yaml"))


def test_config_default_is_exact_and_values_load():
    assert _parse(_yaml()).golden_gate.model_dump() == {"mode": "exact", "threshold": 0.9, "min_pass": "all"}
    gg = _parse(_yaml("golden_gate: {mode: similarity, threshold: 0.85, min_pass: 5}\n")).golden_gate
    assert (gg.mode, gg.threshold, gg.min_pass) == ("similarity", 0.85, 5)
    assert _parse(_yaml("golden_gate: {min_pass: 0.8}\n")).golden_gate.min_pass == 0.8
    assert _parse(_yaml("golden_gate: {min_pass: '4'}\n")).golden_gate.min_pass == 4
    assert _parse(_yaml("golden_gate: {min_pass: ALL}\n")).golden_gate.min_pass == "all"
    one = _parse(_yaml("golden_gate: {min_pass: 1.0}\n")).golden_gate  # the fraction 1.0: every case, not one
    assert one.min_pass == 1.0 and Gate.of(one).required(6) == 6
    assert _parse(_yaml("golden_gate: {min_pass: 1}\n")).golden_gate.min_pass == 1  # the count 1
    assert _parse(_yaml("golden_gate: {min_pass: 5.0}\n")).golden_gate.min_pass == 5
    assert Gate.of(_parse(_yaml("golden_gate: {mode: equivalent}\n")).golden_gate) == Gate("equivalent", 0.9, "all")


@pytest.mark.parametrize("section,message", [
    ("{mode: fuzzy}", r"golden_gate.mode"),
    ("{threshold: 0}", r"golden_gate.threshold"),
    ("{threshold: 1.2}", r"golden_gate.threshold"),
    ("{min_pass: 0}", r"golden_gate.min_pass.*: 0 is not \"all\", a whole number"),
    ("{min_pass: -1}", r"golden_gate.min_pass.*: -1 is not"),
    ("{min_pass: 1.5}", r"golden_gate.min_pass.*: 1.5 is not"),
    ("{min_pass: most}", r"golden_gate.min_pass.*: 'most' is not"),
    ("{min_pass: true}", r"golden_gate.min_pass.*: True is not"),
    ("{mode: exact, tolerance: 0.9}", r"golden_gate.tolerance"),
])
def test_bad_config_values_are_clear_errors(section, message):
    with pytest.raises(ConfigError, match=message):
        _parse(_yaml(f"golden_gate: {section}\n"))


def test_a_bundle_overrides_the_project_gate():
    bundles = """
  - name: alpha
    path: models/alpha
  - name: beta
    path: models/beta
    golden_gate: {mode: similarity, threshold: 0.95, min_pass: 0.5}
"""
    cfg = _parse(_yaml("golden_gate: {mode: equivalent, threshold: 0.7}\n", bundles))
    alpha, beta = cfg.views()
    assert (alpha.golden_gate.mode, alpha.golden_gate.threshold) == ("equivalent", 0.7)
    assert beta.golden_gate.model_dump() == {"mode": "similarity", "threshold": 0.95, "min_pass": 0.5}
    with pytest.raises(ConfigError, match="golden_gate.mode"):
        _parse(_yaml("", bundles.replace("mode: similarity", "mode: loose")))


# --- the person's override, as the failover run decides it -----------------------------------------------------------


def test_override_needs_a_manual_run_and_a_reason_of_its_own():
    assert decide.golden_override("manual", False, "anything") is None
    ov = decide.golden_override("manual", True, "  new GPU type in DR, answers reviewed  ", by="ana@ops1")
    assert ov == {"by": "ana@ops1", "reason": "new GPU type in DR, answers reviewed"}
    assert "@" in decide.golden_override("manual", True, "reviewed")["by"]  # the OS user and host by default
    # a run from the Prefect UI / API: the login that created it, not the worker's OS user alone
    run = {"flow_run_id": "f-1", "deployment": "failover", "auto_scheduled": False, "creator": "alice"}
    by = decide.golden_override("manual", True, "reviewed", run=run)["by"]
    assert by.startswith("alice, flow run f-1, run by the worker ") and "@" in by
    by = decide.golden_override("manual", True, "reviewed", run=run | {"creator": None})["by"]
    assert by.startswith("a Prefect UI / API user (the server recorded no login), flow run f-1")
    for reason in ("", "   ", decide.DEFAULT_REASON):
        with pytest.raises(UsageError, match="needs --reason TEXT"):
            decide.golden_override("manual", True, reason)
    for trigger in ("automation", "drill", "schedule"):
        with pytest.raises(UsageError, match=f"a '{trigger}' run may not carry it"):
            decide.golden_override(trigger, True, "a reason")


def _report(ok: bool) -> dict:
    rep = _check(["a b c d e f g h i j k l"], ["a b c d e f g h i j k" if ok else "a b c"], Gate("similarity", 0.9))
    return rep.to_json() | {"accepted_mismatch": not rep.ok}


def test_an_accepted_mismatch_is_recorded_and_announced_loudly(tmp_path):
    from tests.test_failover_run import _failover

    rec = _failover(tmp_path)
    decide.replica_ready(rec, {"cold": False, "snapshot": "cd" * 32})
    report = _report(ok=False)
    decide.golden_direct(rec, report, override={"by": "ana@ops1", "reason": "answers reviewed"})
    decide.switched(rec, "primary", now=rec.started_ts + 1)
    decide.verified(rec, {"verified_ts": rec.started_ts + 2, "golden": report | {"region": "secondary"}})
    assert rec.ok
    assert [(s.name, s.ok) for s in rec.steps] == [("ensure-replica", True), ("golden-check", False),
                                                   ("golden-override", True), ("switch-router", True),
                                                   ("verify-through-router", True)]
    assert "MISMATCH: 0/1 cases pass the similarity gate (threshold 0.9, 1 needed): c0 0.4" in rec.steps[1].detail
    assert rec.steps[2].detail == "GOLDEN MISMATCH ACCEPTED by ana@ops1: answers reviewed"
    ov = rec.to_json()["golden_override"]
    assert (ov["by"], ov["reason"]) == ("ana@ops1", "answers reviewed")
    assert ov["report"]["cases"][0]["score"] == 0.4 and ov["report"]["gate"]["mode"] == "similarity"
    assert ov["router_report"]["accepted_mismatch"] is True
    kinds = [(n.kind, n.title) for n in decide.notices(rec)]
    assert [k for k, _ in kinds] == ["failover", "verification_failed"]
    assert "ACCEPTED by ana@ops1" in kinds[1][1]
    failover_notice = decide.notices(rec)[0]
    assert "GOLDEN MISMATCH ACCEPTED by ana@ops1 (answers reviewed)" in failover_notice.body
    # the record survives its own JSON (as it is stored and signed in every region)
    from llmdr.failover.steps import FailoverRecord

    assert FailoverRecord.from_json(rec.to_json()).golden_override == rec.golden_override


def test_a_passing_report_needs_no_override(tmp_path):
    from tests.test_failover_run import _failover

    rec = _failover(tmp_path)
    decide.golden_direct(rec, _report(ok=True), override={"by": "ana@ops1", "reason": "just in case"})
    assert rec.golden_override is None and [(s.name, s.ok) for s in rec.steps] == [("golden-check", True)]
    assert "1/1 cases pass the similarity gate (threshold 0.9, 1 needed): c0 0.9565" in rec.steps[0].detail


# --- the drill report shows the gate and every score ----------------------------------------------------------------


def test_drill_report_shows_the_gate_and_scores():
    from llmdr.drill.record import _gate_expected
    from llmdr.drill.report.blocks import evidence_blocks
    from llmdr.drill.report.labels import golden_summary

    rep = _check(["a b c d", "x"], ["a b c", "x"], Gate("similarity", 0.9, 1)).to_json()
    assert rep["ok"] and rep["passed"] == 1 and rep["required"] == 1
    assert golden_summary(rep) == "ok, 1/2\u00a0cases, similarity gate ≥\u00a00.9, 1 needed"
    assert _gate_expected(rep) == "1 of 2 cases pass the similarity gate score >= 0.9"
    old = {"ok": True, "passed": 6, "total": 6}  # a record from before gate modes still reads
    assert golden_summary(old) == "ok, 6/6\u00a0cases" and _gate_expected(old) == "all cases"
    [table] = [b for b in evidence_blocks({"evidence": {"golden_after_failover": rep}})
               if "Golden outputs" in str(getattr(b, "caption", ""))]
    assert table.headers[:4] == ["case", "result", "gate score", "similarity"]
    assert [row[2] for row in table.rows] == ["0.86", "1.00"]


def test_check_asks_cases_at_once_and_keeps_their_order():
    """The golden check is on a failover's critical path twice: its cases are asked concurrently (two of them wait for
    each other here: one after another, the barrier breaks and both fail), the report keeps the set's order, and a
    case that raises fails alone."""
    import threading

    from llmdr.serving.golden import GoldenCase, GoldenSet, check

    cases = [GoldenCase(f"c{i}", f"answer {i}", prompt=f"p{i}") for i in range(6)]
    both = threading.Barrier(2, timeout=10)

    def answer(c: GoldenCase) -> str:
        if c.id in ("c0", "c1"):
            both.wait()
        if c.id == "c4":
            raise OSError("connection reset")
        return c.expected

    rep = check(GoldenSet(cases, {}), answer)
    assert [r.id for r in rep.results] == [c.id for c in cases]
    assert [r.ok for r in rep.results] == [True, True, True, True, False, True]
    assert rep.results[4].error == "connection reset"
    # parallel=1: one after another (the barrier is never met)
    one = threading.Barrier(2, timeout=0.5)

    def serial(c: GoldenCase) -> str:
        if c.id == "c0":
            one.wait()
        return c.expected

    assert check(GoldenSet(cases[:2], {}), serial, parallel=1).results[0].ok is False

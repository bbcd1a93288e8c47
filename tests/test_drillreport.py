"""The drill report as an auditor sees it: every file written, the HTML's content, the PDF rendered to PNG and read
back (pages not blank, text present, nothing outside the page or overlapping), the charts, markdown and table rows.

The rendered pages are kept under build/drillreport/ so a person can look at them."""

from __future__ import annotations

import base64
import io
import json
import re
from datetime import datetime, timezone
from pathlib import Path

import pytest
from PIL import Image

from llmdr.config import parse_config
from llmdr.drill import report as drillreport
from llmdr.drill.record import Control, DrillRecord, evaluate
from llmdr.drill.report import pdf as report_pdf
from llmdr.drill.report import (
    render_html,
    render_markdown,
    table_rows,
    timeline_chart,
    trend_chart,
    write_report,
)

BUILD = Path(__file__).parent.parent / "build" / "drillreport"
T0 = datetime(2026, 11, 27, 10, 0, 0, tzinfo=timezone.utc).timestamp()
PASS_SNAP = "3f9a1c07d2b84e55a0c6e1f2b7d94a3c8e1f0a2b4c6d8e0f1a3b5c7d9e1f2a3b"
FAIL_SNAP = "b71e0d9c4a2f6e8d1c3b5a7f9e0d2c4b6a8f1e3d5c7b9a0f2e4d6c8b0a1f3e5d"

CONFIG = """\
version: 1
bundle: {name: support-bot, path: bundle}
regions:
  - {name: eu-west, role: primary, endpoint: "http://127.0.0.1:18333", bucket: llmdr-eu-west,
     credentials: {access_key_env: A1, secret_key_env: S1}}
  - {name: us-east, role: secondary, endpoint: "http://127.0.0.1:18433", bucket: llmdr-us-east,
     credentials: {access_key_env: A2, secret_key_env: S2}}
objectives: {rpo: 5m, rto: 30s, drill_interval: 90d}
"""


def _cfg(tmp_path: Path):
    return parse_config(CONFIG, source=tmp_path / "llmdr.yaml")


def _scope() -> dict:
    return {"bundle": "support-bot",
            "regions": [{"name": "eu-west", "role": "primary", "endpoint": "http://127.0.0.1:18333",
                         "bucket": "llmdr-eu-west"},
                        {"name": "us-east", "role": "secondary", "endpoint": "http://127.0.0.1:18433",
                         "bucket": "llmdr-us-east"}],
            "objectives": {"rpo_s": 300.0, "rto_s": 30.0, "drill_interval_s": 7776000.0},
            "router": {"kind": "caddy", "url": "http://127.0.0.1:18080"}, "outage_action": "local"}


def _golden(ok_ids: set[str], n: int = 5) -> dict:
    cases = []
    for i in range(1, n + 1):
        cid = f"case-{i}"
        expected = f"The refund window is {i * 7} days from delivery."
        ok = cid in ok_ids
        cases.append({"id": cid, "ok": ok, "similarity": 1.0 if ok else 0.42, "expected": expected,
                      "actual": expected if ok else "返品は受け付けておりません → Возврат невозможен (επιστροφή)",
                      "error": None})
    if n >= 5 and "case-5" not in ok_ids:
        cases[4] |= {"actual": None, "error": "HTTP 502 from the router after 10.0 s (upstream us-east refused)"}
    return {"ok": len(ok_ids) == n, "passed": len(ok_ids), "total": n, "cases": cases}


def passing_record(tmp_path: Path, *, start: float = T0, previous: float | None = None) -> dict:
    rec = DrillRecord(bundle="support-bot", started_ts=start,
                      started_by={"kind": "schedule", "who": "prefect schedule (quarterly)",
                                  "deployment": "dr-drill/quarterly", "flow_run_id": "9b2d7c1e-4f3a-4e55-8a61-0c2f"
                                  "9d8e7b6a"}, tool_version="0.1.0", scope=_scope())
    for t, kind, event, ok, detail in [
        (0.0, "info", "pre-checks: objectives, protected snapshot, readiness", True, ""),
        (0.8, "info", "protected snapshot complete in us-east", True, PASS_SNAP[:12]),
        (2.0, "outage", "primary region down (S3 + replica stopped)", None, "pids 41211, 41305"),
        (3.1, "detection", "monitor: first failed probe of eu-west", False, "connection refused"),
        (5.2, "detection", "monitor declared eu-west down (llmdr.region.down)", None, ""),
        (5.7, "switch", "automation started failover run", True, "flow run 7c1e0a"),
        (6.9, "switch", "router switched to us-east", True, ""),
        (7.43, "recovery", "first golden-correct answer through the router", True, ""),
        (9.0, "check", "golden set through the router: 5/5", True, ""),
        (21.0, "check", "restore test from the DR store passed", True, "5/5 golden on the restored copy"),
        (22.5, "check", "bundle complete in us-east", True, ""),
        (23.0, "failback", "primary restored (S3 server started again)", True, ""),
        (31.0, "failback", "failback: traffic back on eu-west", True, ""),
    ]:
        rec.mark(kind, event, ok=ok, detail=detail, ts=start + t)
    rec.ended_ts = start + 33.2
    rec.outage = {"region": "eu-west", "action": "local: stopped the serving replica (pid 41305) and the S3 server "
                  "(pid 41211); data left on disk", "started_utc": _utc(start + 2.0), "restored_utc": _utc(start + 23.0)}
    rec.measurements = {"rto_s": 5.43, "rpo_s": 132.6, "detection_s": 3.2, "dispatch_s": 0.5, "recovery_s": 1.73,
                        "rto_detail": "outage start -> first golden-correct answer through the router",
                        "rpo_detail": f"outage start - creation of {PASS_SNAP[:12]}, newest complete in us-east"}
    rec.evidence = {
        "snapshots": {"eu-west": {"id": PASS_SNAP, "created": _utc(start - 130.6)},
                      "us-east": {"id": PASS_SNAP, "created": _utc(start - 130.6)}},
        "manifest_digests": {"eu-west": PASS_SNAP, "us-east": PASS_SNAP},
        "components": {"weights": "sha256:" + "a1" * 32, "tokenizer": "sha256:" + "b2" * 32,
                       "model_config": "sha256:" + "c3" * 32, "prompt_templates": "sha256:" + "d4" * 32},
        "golden_after_failover": _golden({f"case-{i}" for i in range(1, 6)}),
        "restore_test": {"ok": True, "summary": "restored 14 files (539.2 MB) from us-east, 5/5 golden",
                         "snapshot_id": PASS_SNAP, "location": "us-east", "problems": [], "duration_s": 11.8},
        "bundle_complete_dr": {"complete": True, "region": "us-east",
                               "detail": "every required component recorded: weights, tokenizer, model_config"},
        "failover": {"id": "f0a1b2c3d4e5", "ok": True, "target": "us-east", "rto_s": 4.33, "flow_run_id": "7c1e0a",
                     "steps": [{"name": "confirm outage", "at": _utc(start + 5.8), "ok": True, "detail": ""},
                               {"name": "switch router", "at": _utc(start + 6.9), "ok": True, "detail": ""}]},
        "failback": {"ok": True, "target": "eu-west", "error": None},
        "model_version": "support-bot/7 (alias champion)",
        "dataset_versions": {"faq.parquet": "md5:5d41402abc4b2a76b9719d911017c592"},
        "prefect_flow_run_id": "9b2d7c1e-4f3a-4e55-8a61-0c2f9d8e7b6a",
        "mlflow_run_id": "e3b0c44298fc1c149afbf4c8996fb924",
        "runbook": "docs/runbooks/region-outage.md",
    }
    evaluate(rec, _cfg(tmp_path), previous_pass_ts=previous)
    return rec.to_json()


def failing_record(tmp_path: Path, *, start: float = T0 + 86400 * 91, previous: float | None = T0) -> dict:
    rec = DrillRecord(bundle="support-bot", started_ts=start,
                      started_by={"kind": "cli", "who": "alice@ops-laptop"}, tool_version="0.1.0", scope=_scope())
    for t, kind, event, ok in [
        (0.0, "info", "pre-checks: objectives, protected snapshot, readiness", True),
        (1.5, "outage", "primary region down (S3 + replica stopped)", None),
        (4.0, "detection", "monitor declared eu-west down", None),
        (38.2, "switch", "router switched to us-east", True),
        (42.73, "recovery", "first golden-correct answer through the router", True),
        (44.0, "check", "golden set through the router: 3/5", False),
        (60.0, "check", "restore test from the DR store FAILED", False),
        (61.0, "failback", "failback FAILED: primary S3 server did not answer within 60 s", False),
    ]:
        rec.mark(kind, event, ok=ok, ts=start + t)
    rec.ended_ts = start + 125.0
    rec.failed_over_at_end = True
    rec.outage = {"region": "eu-west", "action": "local: stopped", "started_utc": _utc(start + 1.5),
                  "restored_utc": None}
    rec.measurements = {"rto_s": 41.23, "rpo_s": 7301.5, "detection_s": None, "dispatch_s": None,
                        "recovery_s": None}
    rec.evidence = {
        "snapshots": {"us-east": {"id": FAIL_SNAP, "created": _utc(start - 7300.0)}, "eu-west": None},
        "components": {"weights": None},
        "golden_after_failover": _golden({"case-1", "case-2", "case-3"}),
        "restore_test": {"ok": False, "summary": "1 component differs: tokenizer",
                         "problems": ["tokenizer/tokenizer.json: SHA-256 differs"]},
        "bundle_complete_dr": {"complete": False, "detail": "missing from the manifest: tokenizer"},
        "failback": {"ok": False, "error": "primary S3 server did not answer within 60 s; fail back by hand"},
        "model_version": None,
        "prefect_flow_run_id": None,
    }
    rec.fail("the system was left failed over: the router still sends traffic to us-east")
    evaluate(rec, _cfg(tmp_path), previous_pass_ts=previous)
    return rec.to_json()


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- helpers that look at the output the way a person would ---------------------------------------------------------
def _ink(img: Image.Image) -> float:
    """Fraction of pixels that are not (near) white."""
    g = img.convert("L")
    hist = g.histogram()
    return sum(hist[:245]) / (g.width * g.height)


def _pdf_pages(path: Path, name: str) -> list[tuple[Image.Image, str, list]]:
    """Each page as (image, text, char boxes); the images are saved under build/drillreport/."""
    import pypdfium2 as pdfium

    BUILD.mkdir(parents=True, exist_ok=True)
    for old in BUILD.glob(f"{name}-page-*.png"):
        old.unlink()
    doc = pdfium.PdfDocument(str(path))
    out = []
    try:
        for i in range(len(doc)):
            page = doc[i]
            img = page.render(scale=1.5).to_pil()
            img.save(BUILD / f"{name}-page-{i + 1}.png")
            tp = page.get_textpage()
            text = tp.get_text_range()
            boxes = []
            for c in range(tp.count_chars()):
                ch = tp.get_text_range(c, 1)
                if ch.strip():
                    boxes.append((ch, tp.get_charbox(c)))
            out.append((img, text, boxes, page.get_size()))
            tp.close()
            page.close()
    finally:
        doc.close()
    return out


def _overlaps(boxes: list) -> list[str]:
    """Glyphs whose boxes overlap another glyph's substantially (text drawn over text)."""
    grid: dict[tuple[int, int], list[int]] = {}
    bad = []
    for i, (ch, (x0, y0, x1, y1)) in enumerate(boxes):
        area = max(x1 - x0, 0.01) * max(y1 - y0, 0.01)
        for gx in range(int(x0 // 8), int(x1 // 8) + 1):
            for gy in range(int(y0 // 8), int(y1 // 8) + 1):
                for j in grid.get((gx, gy), []):
                    ch2, (a0, b0, a1, b1) = boxes[j]
                    w, h = min(x1, a1) - max(x0, a0), min(y1, b1) - max(y0, b0)
                    if w > 0 and h > 0 and w * h > 0.3 * min(area, max(a1 - a0, 0.01) * max(b1 - b0, 0.01)):
                        bad.append(f"{ch!r} over {ch2!r} at ({x0:.0f},{y0:.0f})")
                grid.setdefault((gx, gy), []).append(i)
    return bad


def _flat(s: str) -> str:
    return re.sub(r"\s+", "", s)


# --- the report folder ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reports")
    good = passing_record(tmp)
    bad = failing_record(tmp, previous=good["started_ts"])
    older = passing_record(tmp, start=T0 - 86400 * 92)
    return {"pass": (good, write_report(good, tmp / "pass", history=[older])),
            "fail": (bad, write_report(bad, tmp / "fail", history=[older, good]))}


def test_the_sample_records_are_what_the_drill_produces(reports):
    good, bad = reports["pass"][0], reports["fail"][0]
    assert good["passed"] is True and good["failed_over_at_end"] is False
    assert bad["passed"] is False and bad["failed_over_at_end"] is True
    failed = {c["id"] for c in bad["controls"] if not c["passed"]}
    assert failed == {"rto", "rpo", "golden_after_failover", "restore_test", "bundle_complete_dr", "failback",
                      "previous_drill"}
    assert DrillRecord.from_json(json.loads(json.dumps(good))).to_json() == good


@pytest.mark.parametrize("which", ["pass", "fail"])
def test_all_files_written(reports, which):
    rec, paths = reports[which]
    assert set(paths) == {"evidence", "timeline", "trend", "html", "pdf"}
    names = {p.name for p in paths["html"].parent.iterdir()}
    assert names == {"evidence.json", "timeline.png", "trend.png", "report.html", "report.pdf"}
    assert paths["evidence"].read_text() == json.dumps(rec, sort_keys=True, indent=2) + "\n"
    assert paths["pdf"].read_bytes().startswith(b"%PDF-")


def test_html_passing(reports):
    rec, paths = reports["pass"]
    html = paths["html"].read_text()
    assert '<div class="verdict PASS" id="verdict">PASS</div>' in html
    assert "SYSTEM LEFT FAILED OVER" not in html
    for c in rec["controls"]:
        assert c["name"] in html
    assert "support-bot" in html and "eu-west" in html and "llmdr 0.1.0" in html
    assert "prefect schedule (quarterly)" in html and "dr-drill/quarterly" in html
    for needle in (PASS_SNAP, "sha256:" + "a1" * 32, "support-bot/7 (alias champion)", "e3b0c44298fc1c149afbf4c8996fb924",
                   "9b2d7c1e-4f3a-4e55-8a61-0c2f9d8e7b6a", "md5:5d41402abc4b2a76b9719d911017c592", "case-5",
                   "5.43\u00a0s", "132.60\u00a0s", "llmdr report verify &lt;folder&gt;", "first golden-correct answer"):
        assert needle in html, needle
    # both charts inlined, and they are the PNGs written next to it
    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(uris) == 2
    assert {base64.b64decode(u) for u in uris} == {paths["timeline"].read_bytes(), paths["trend"].read_bytes()}
    assert "http://" not in html.split("<main>")[0]  # nothing fetched from elsewhere (the head has no links)


def test_html_failing_is_loud(reports):
    rec, paths = reports["fail"]
    html = paths["html"].read_text()
    assert '<div class="verdict FAIL" id="verdict">FAIL</div>' in html
    assert 'id="failed-over-banner"><strong>SYSTEM LEFT FAILED OVER</strong>' in html
    assert html.count("FAIL\">FAIL</td>") >= 7
    for r in rec["failure_reasons"]:  # numbers are glued to their units with a no-break space
        assert r.replace(">", "&gt;").replace("<", "&lt;") in html.replace("\u00a0", " ")
    assert "返品は受け付けておりません" in html  # non-latin text survives
    assert "HTTP 502 from the router" in html
    assert "not recorded" in html  # the missing model version, flow run, restore time


def test_pdf_uses_a_fallback_font_for_missing_glyphs(tmp_path, monkeypatch):
    """Characters DejaVu lacks come from a fallback font when one is there (here matplotlib's STIX, which has ⌚)."""
    import matplotlib

    rec = passing_record(tmp_path)
    rec["failure_reasons"] = ["watch ⌚ glyph"]
    monkeypatch.setattr(report_pdf, "FALLBACK_FONTS", ())
    report_pdf.render_pdf(rec, tmp_path / "a.pdf")
    assert "watch?glyph" in _flat("".join(p[1] for p in _pdf_pages(tmp_path / "a.pdf", "fallback-none")))
    stix = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "STIXGeneral.ttf"
    monkeypatch.setattr(report_pdf, "FALLBACK_FONTS", ("/nonexistent/font.ttf", str(stix)))
    report_pdf.render_pdf(rec, tmp_path / "b.pdf")
    assert "watch⌚glyph" in _flat("".join(p[1] for p in _pdf_pages(tmp_path / "b.pdf", "fallback-stix")))


def test_html_escapes_record_text(tmp_path):
    rec = passing_record(tmp_path)
    rec["timeline"][0]["event"] = "<script>alert(1)</script>"
    html = render_html(rec)
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


@pytest.mark.parametrize("which", ["pass", "fail"])
def test_pdf_as_a_person_sees_it(reports, which):
    rec, paths = reports[which]
    pages = _pdf_pages(paths["pdf"], f"report-{which}")
    assert 1 <= len(pages) <= 8
    for n, (img, _, boxes, (w, h)) in enumerate(pages, 1):
        assert _ink(img) > 0.01, f"page {n} is blank"
        outside = [ch for ch, (left, bottom, right, top) in boxes
                   if left < 0 or right > w or bottom < 0 or top > h]
        assert outside == [], f"page {n}: text outside the page (cut off): {''.join(outside)[:80]}"
        assert _overlaps(boxes) == [], f"page {n}: text drawn over text"
    text = "\n".join(p[1] for p in pages)
    flat = _flat(text)
    verdict = "PASS" if which == "pass" else "FAIL"
    assert verdict in text and ("FAIL" if which == "pass" else "PASS") not in pages[0][1].split("Controls")[0]
    assert "support-bot" in text
    for c in rec["controls"]:
        assert _flat(c["name"]) in flat, c["name"]
    rto = f"{rec['measurements']['rto_s']:.1f}s"
    assert rto in flat
    snap = PASS_SNAP if which == "pass" else FAIL_SNAP
    assert snap in flat  # the full id, even wrapped across lines
    assert f"page1of{len(pages)}" in flat
    assert "→" in text and "≤" in text and "—" in text
    if which == "fail":
        assert "SYSTEM LEFT FAILED OVER" in pages[0][1]
        assert "Возвратневозможен(επιστροφή)" in flat  # Cyrillic, Greek: DejaVu has them
        cjk = "返品は受け付けておりません"
        if any(Path(f).is_file() for f in report_pdf.FALLBACK_FONTS):
            assert cjk in flat
        else:  # no CJK font on this machine: shown as "?", never as empty boxes
            assert "?" * len(cjk) + "→Возврат" in flat
        for r in rec["failure_reasons"]:
            assert _flat(r) in flat, r
    else:
        assert "SYSTEM LEFT FAILED OVER" not in text
        assert "sha256:" + "a1" * 32 in flat and "e3b0c44298fc1c149afbf4c8996fb924" in flat
    # both charts embedded as images
    import pypdfium2 as pdfium
    import pypdfium2.raw as pdfium_c

    doc = pdfium.PdfDocument(str(paths["pdf"]))
    try:
        n_images = sum(1 for i in range(len(doc)) for _ in doc[i].get_objects(filter=[pdfium_c.FPDF_PAGEOBJ_IMAGE]))
    finally:
        doc.close()
    assert n_images == 2


@pytest.mark.parametrize("which", ["pass", "fail"])
def test_charts_are_real_pictures(reports, which):
    _, paths = reports[which]
    for key in ("timeline", "trend"):
        with Image.open(paths[key]) as img:
            assert img.format == "PNG"
            assert img.width >= 1200 and img.height >= 400
            ink = _ink(img)
            assert 0.02 < ink < 0.9, f"{key}: {ink:.3f} of the pixels inked"
            # colour: red (outage / failed) appears on every chart
            small = img.convert("RGB").resize((img.width // 4, img.height // 4))
            assert any(r > 180 and g < 110 and b < 110 for r, g, b in small.get_flattened_data()), key
        img_copy = BUILD / f"{key}-{which}.png"
        BUILD.mkdir(parents=True, exist_ok=True)
        img_copy.write_bytes(paths[key].read_bytes())


def test_timeline_chart_shows_the_outage_window(tmp_path):
    """The outage window is shaded: the chart with an outage has pinkish pixels the chart without one lacks."""
    rec = passing_record(tmp_path)

    def pink(path):
        with Image.open(path) as img:
            return sum(1 for r, g, b in img.convert("RGB").get_flattened_data() if r > 240 and 215 < g < 240 and 215 < b < 240)

    with_outage = pink(timeline_chart(rec, tmp_path / "a.png"))
    rec2 = json.loads(json.dumps(rec))
    rec2["outage"] = {}
    rec2["timeline"] = [e for e in rec2["timeline"] if e["kind"] != "outage"]
    without = pink(timeline_chart(rec2, tmp_path / "b.png"))
    assert with_outage > 20 * max(without, 1)


def test_no_history_no_trend(tmp_path):
    rec = passing_record(tmp_path)
    folder = tmp_path / "r"
    folder.mkdir()
    (folder / "trend.png").write_bytes(b"stale")
    paths = write_report(rec, folder)
    assert "trend" not in paths and not (folder / "trend.png").exists()
    html = paths["html"].read_text()
    assert html.count("data:image/png;base64,") == 1 and 'id="history"' not in html


@pytest.mark.parametrize("record", [{}, {"id": "x", "bundle": "b", "passed": True, "failed_over_at_end": None,
                                         "measurements": None, "evidence": {"snapshots": {"r": "abc"}, "golden_after_failover": {"ok": False}},
                                         "timeline": [{"t_s": None, "kind": "weird"}], "controls": [{"id": "rto"}]}])
def test_sparse_records_render(tmp_path, record):
    paths = write_report(record, tmp_path / "r", history=[record])
    html = paths["html"].read_text()
    assert "not recorded" in html or "—" in html
    pages = _pdf_pages(paths["pdf"], f"sparse-{len(record)}")
    assert pages and all(_ink(p[0]) > 0.005 for p in pages)
    # a record that is not marked passed never shows PASS
    if not record.get("passed"):
        assert '<div class="verdict FAIL"' in html
    assert render_markdown(record).startswith("# DR drill")
    assert len(table_rows([record])) == 1


def test_left_failed_over_never_shows_pass(tmp_path):
    rec = passing_record(tmp_path)
    rec["failed_over_at_end"] = True  # an inconsistent record: passed but left failed over
    assert '<div class="verdict FAIL"' in render_html(rec)
    assert "**FAIL**" in render_markdown(rec).splitlines()[0]
    assert table_rows([rec])[0]["passed"] is False


def test_trend_chart_alone(tmp_path):
    hist = [passing_record(tmp_path, start=T0 + i * 86400 * 30) for i in range(4)]
    hist[2]["measurements"]["rto_s"] = None
    hist[2]["passed"] = False
    path = trend_chart(hist, tmp_path / "t.png")
    with Image.open(path) as img:
        assert img.width >= 1200 and _ink(img) > 0.02
    empty = trend_chart([], tmp_path / "e.png")
    with Image.open(empty) as img:
        assert _ink(img) > 0.001


# --- markdown and table artifact ---------------------------------------------------------------------------------------
def test_markdown_passing(tmp_path):
    rec = passing_record(tmp_path)
    md = render_markdown(rec)
    assert md.splitlines()[0] == "# DR drill support-bot: **PASS**"
    assert "SYSTEM LEFT FAILED OVER" not in md
    assert "- **RTO**: 5.4 s (objective ≤ 30s)" in md and "- **RPO**: 132.6 s (objective ≤ 5m)" in md
    for c in rec["controls"]:
        res, val = {True: ("PASS", c["value"]), False: ("**FAIL**", c["value"])}.get(c["passed"], ("N/A", c["value"]))
        assert f"| {c['name']} | {res} | {val} |" in md
    assert "## Failure reasons\n\nnone\n" in md
    assert md.count("\n| ") - md.count("\n| control") - md.count("\n| #") == len(rec["controls"]) + len(rec["timeline"])
    assert "| 8 | 7.43 | 2026-11-27T10:00:07.430Z | recovery | first golden-correct answer through the router | ok |" in md


def test_markdown_failing(tmp_path):
    rec = failing_record(tmp_path)
    md = render_markdown(rec)
    assert md.splitlines()[0] == "# DR drill support-bot: **FAIL**"
    assert "> **SYSTEM LEFT FAILED OVER**" in md
    for r in rec["failure_reasons"]:
        assert f"- {r}" in md
    assert "| failback FAILED: primary S3 server did not answer within 60 s | **FAILED** |" in md
    assert "started 2027-02-26T10:00:00.000Z by cli (alice@ops-laptop)" in md


def test_markdown_escapes_pipes(tmp_path):
    rec = passing_record(tmp_path)
    rec["controls"][0]["detail"] = "a | b\nc"
    assert "a \\| b c" in render_markdown(rec)


def test_table_rows(tmp_path):
    good = passing_record(tmp_path)
    bad = failing_record(tmp_path)
    rows = table_rows([good, bad])
    assert rows == [
        {"date": "2026-11-27 10:00 UTC", "drill": good["id"], "rto_s": 5.4, "rpo_s": 132.6, "passed": True,
         "failed_over_at_end": False},
        {"date": "2027-02-26 10:00 UTC", "drill": bad["id"], "rto_s": 41.2, "rpo_s": 7301.5, "passed": False,
         "failed_over_at_end": True},
    ]
    bad["measurements"] = {}
    assert table_rows([bad])[0]["rto_s"] is None
    assert table_rows([]) == []


def test_accepts_a_drill_record_object(tmp_path):
    rec = DrillRecord.from_json(passing_record(tmp_path))
    rec.controls.append(Control("extra", "An extra control", True, "1", "1"))
    assert "An extra control" in render_markdown(rec)
    assert write_report(rec, tmp_path / "obj")["evidence"].exists()


def test_png_metadata_is_stable(tmp_path):
    """Same record, same chart bytes: a regenerated report does not differ just by a timestamp."""
    rec = passing_record(tmp_path)
    a = timeline_chart(rec, tmp_path / "a.png").read_bytes()
    b = timeline_chart(rec, tmp_path / "b.png").read_bytes()
    assert a == b
    assert io.BytesIO(a).getvalue()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_page_checks_can_fail(tmp_path):
    """The overlap and cut-off checks used above do catch text drawn over text and text off the page."""
    from fpdf import FPDF

    pdf = FPDF(format="A4")
    pdf.add_page()
    pdf.set_font("helvetica", size=12)
    pdf.text(20, 20, "RTO within objective")
    pdf.text(21, 20.5, "RPO within objective")  # drawn over the first line
    pdf.text(195, 40, "cut off at the right edge")
    pdf.output(str(tmp_path / "bad.pdf"))
    (_, _, boxes, (w, _h)), = _pdf_pages(tmp_path / "bad.pdf", "selftest-bad")
    assert _overlaps(boxes)
    assert any(right > w for _, (_, _, right, _) in boxes)


def test_a_written_report_signs_and_verifies(reports, tmp_path):
    """The real folder (not a toy one): signed as written, verified, then one byte of each file flipped."""
    import shutil

    from llmdr.config import Signing
    from llmdr.drill.signing import key_paths, sign_folder, verify_folder

    folder = tmp_path / "report"
    shutil.copytree(reports["fail"][1]["html"].parent, folder)
    doc = sign_folder(folder, Signing(), tmp_path / "state")
    assert [f["path"] for f in doc["files"]] == sorted(drillreport.FILES.values())
    pub = key_paths(Signing(), tmp_path / "state")[1]
    assert verify_folder(folder, public_key=pub).ok
    for name in sorted(drillreport.FILES.values()):
        path = folder / name
        original = path.read_bytes()
        data = bytearray(original)
        data[len(data) // 2] ^= 0x20
        path.write_bytes(bytes(data))
        assert verify_folder(folder, public_key=pub).problems == [f"{name}: SHA-256 differs from the signed value"]
        path.write_bytes(original)
    assert verify_folder(folder, public_key=pub).ok


# --- the runbook in force during the drill --------------------------------------------------------------------------------
def test_the_runbook_in_the_folder_is_linked_named_and_signed(tmp_path):
    """The drill task writes RUNBOOK.md into the folder before the report: the HTML links it (relative), the PDF and
    the markdown artifact name it, and the signature covers it like every other file."""
    from llmdr.config import Signing
    from llmdr.drill.signing import key_paths, sign_folder, verify_folder

    rec = passing_record(tmp_path)
    rec["evidence"]["runbook"] = drillreport.RUNBOOK_FILE
    folder = tmp_path / "r"
    folder.mkdir()
    (folder / "RUNBOOK.md").write_text("# DR runbook: support-bot\n\n## 1. Overview\n")
    paths = write_report(rec, folder)
    assert paths["runbook"] == folder / "RUNBOOK.md"
    html = paths["html"].read_text()
    assert '<section id="runbook">' in html
    assert '<strong>Runbook in force during this drill:</strong> <a href="RUNBOOK.md">RUNBOOK.md</a>' in html
    assert 'Runbook in force during this drill: <a href="RUNBOOK.md">RUNBOOK.md</a></footer>' in html
    assert "evidence.json, the charts, the runbook, this HTML and the PDF are listed" in html
    pages = _pdf_pages(paths["pdf"], "runbook")
    for _img, _, boxes, (w, _h) in pages:
        assert _overlaps(boxes) == [] and all(0 <= right <= w for _, (_, _, right, _) in boxes)
    assert _flat("Runbook in force during this drill: RUNBOOK.md (in this report folder)") in \
        _flat("".join(p[1] for p in pages))
    assert "- **Runbook in force during this drill**: `RUNBOOK.md`" in render_markdown(rec)
    # the flow's artifact: the record carries the report's files (absolute paths) by then
    rec["report"] = {"files": {k: str(p) for k, p in paths.items()}}
    assert f"- **Runbook in force during this drill**: `{folder / 'RUNBOOK.md'}`" in render_markdown(rec)

    doc = sign_folder(folder, Signing(), tmp_path / "state")
    assert "RUNBOOK.md" in [f["path"] for f in doc["files"]]
    pub = key_paths(Signing(), tmp_path / "state")[1]
    assert verify_folder(folder, public_key=pub).ok
    rb = folder / "RUNBOOK.md"
    rb.write_text(rb.read_text().replace("Overview", "Oferview"))  # one edited letter of the playbook
    assert verify_folder(folder, public_key=pub).problems == ["RUNBOOK.md: SHA-256 differs from the signed value"]


def test_no_runbook_no_link(reports):
    _, paths = reports["pass"]
    html = paths["html"].read_text()
    assert "runbook" not in paths and 'href="RUNBOOK.md"' not in html and 'id="runbook"' not in html
    assert "evidence.json, the charts, this HTML and the PDF are listed" in html


def test_a_runbook_that_could_not_be_written_is_said(tmp_path):
    rec = passing_record(tmp_path)
    rec["evidence"]["runbook"] = None
    rec["evidence"]["runbook_error"] = "ConfigError: llmdr.yaml: no such file"
    paths = write_report(rec, tmp_path / "r")
    html = paths["html"].read_text()
    assert "The runbook could not be written into this report: ConfigError: llmdr.yaml: no such file" in html
    assert 'href="RUNBOOK.md"' not in html and "runbook" not in paths
    assert "Other evidence" not in html  # the error is shown once, in its section
    assert "- **Runbook**: not in the report (ConfigError: llmdr.yaml: no such file)" in render_markdown(rec)

"""The hardware early warning on recorded GPU output (tests/data/gpu, synthetic but in NVIDIA's formats: see its
README): the parsers, the detector's verdicts and forecast, the sources (a command replaying a recording, a real
loopback dcgm-exporter, no nvidia-smi on this machine), the monitor's event and notice through a Watcher round, and
`llmdr hardware status`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmdr.config import parse_config
from llmdr.config.hardware import Hardware
from llmdr.errors import ConfigError
from llmdr.hardware.detect import assess_gpu, assess_region
from llmdr.hardware.monitor import HardwareMonitor
from llmdr.hardware.readings import (
    GpuReading,
    HardwareParseError,
    merge_remapped,
    parse_dcgm,
    parse_query_gpu,
    parse_remapped_rows,
    parse_xid_log,
    throttle_names,
)
from llmdr.hardware.sources import NO_NVIDIA_SMI, Poll, open_source
from tests.support.loopback import Loopback, Quiet, Receiver

DATA = Path(__file__).parent / "data" / "gpu"
REPLAY = Path(__file__).parent / "support" / "replay_gpu.py"
ROOT = Path(__file__).resolve().parent.parent
SETTINGS = Hardware(source="nvidia-smi")
H100 = "GPU-0c9d7e6f-2a4b-4d3c-b1e0-7f8a9b6c5d21"
A100 = ("GPU-5f2c1a3e-8b7d-4c1e-9a0f-3d6b2e8c7a14", "GPU-a8e4d2c6-1f3b-4e5a-8c7d-9b0e1f2a3c45")


def recording(name: str) -> list[GpuReading]:
    return parse_query_gpu((DATA / name).read_text())


def by_gpu(readings: list[GpuReading]) -> dict[str, list[GpuReading]]:
    out: dict[str, list[GpuReading]] = {}
    for r in readings:
        out.setdefault(r.uuid, []).append(r)
    return out


def replay(readings: list[GpuReading], settings: Hardware = SETTINGS, **kw):
    """The verdict after each reading, as a monitor polling the recording live would have given it."""
    return [assess_gpu("r1", readings[: i + 1], settings, now=readings[i].ts, **kw) for i in range(len(readings))]


# -- parsers --------------------------------------------------------------------------------------------------------


def test_noheader_csv_with_the_default_fields():
    rs = recording("a100-healthy.csv")
    assert len(rs) == 2 * 73 and {r.uuid for r in rs} == set(A100)
    first = rs[0]
    assert (first.index, first.name, first.bus_id) == (0, "NVIDIA A100-SXM4-80GB", "0000:07:00")
    assert first.power_limit_w == 400.0 and first.memory_total_mib == 81920 and first.throttle == 0
    assert first.retired_sbe is None and first.retired_pending is None  # [N/A]: not reported, not zero
    assert rs[2].ts - rs[0].ts == pytest.approx(300, abs=1)  # the -l 300 blocks are a series


def test_header_with_units_old_driver_names_and_na_fields():
    t4 = recording("t4-driver470-old-names.csv")
    assert t4[0].throttle == 0x4 and throttle_names(t4[0].throttle) == ["sw_power_cap"]
    assert t4[0].power_w == pytest.approx(63.25) and t4[0].utilization_pct == 96 and t4[0].memory_used_mib == 12218
    assert (t4[0].retired_sbe, t4[0].retired_dbe, t4[0].retired_pending) == (0, 0, False)
    gtx = recording("rtx3060-consumer-na.csv")
    assert gtx[0].power_limit_w is None and gtx[0].ecc_corrected is None and gtx[0].ecc_uncorrected is None
    assert gtx[0].temperature_c is not None and not gtx[0].problems


def test_bracketed_problems_are_kept_and_bad_output_says_where():
    text = "GPU-x, 0, [GPU is lost], 0x0"
    rs = parse_query_gpu(text, fields=["uuid", "index", "temperature.gpu", "clocks_event_reasons.active"], now=1.0)
    assert rs[0].problems == ["temperature.gpu: [gpu is lost]"] and rs[0].temperature_c is None
    with pytest.raises(HardwareParseError, match="line 2: 3 values for 17 fields"):
        parse_query_gpu((DATA / "a100-healthy.csv").read_text().splitlines()[0] + "\n1, 2, 3\n")
    with pytest.raises(HardwareParseError, match="line 1: temperature.gpu: 'hot' is not a number"):
        parse_query_gpu("GPU-x, hot", fields=["uuid", "temperature.gpu"], now=1.0)
    with pytest.raises(HardwareParseError, match="no header line and no field list"):
        parse_query_gpu("a, b", fields=None)
    with pytest.raises(HardwareParseError, match="not a Prometheus sample"):
        parse_dcgm("DCGM_FI_DEV_GPU_TEMP{gpu=0} not-a-sample and more", now=0)
    with pytest.raises(HardwareParseError, match="no DCGM_"):
        parse_dcgm("# nothing here\nup 1\n", now=0)


def test_a_dcgm_answer_cannot_make_thousands_of_gpu_series():
    """Each GPU becomes labelled series in llmdr's exporter: an endpoint answering for many nodes (or a hostile one)
    is refused, not turned into unbounded label values."""
    def answer(n: int, uuid: str = "GPU-{i:08d}") -> str:
        return "".join(f'DCGM_FI_DEV_GPU_TEMP{{gpu="{i}",UUID="{uuid.format(i=i)}"}} 40\n' for i in range(n))

    assert len(parse_dcgm(answer(64), now=0)) == 64  # an HGX node has 8 or 16
    with pytest.raises(HardwareParseError, match="more than 64 GPUs in one answer; point hardware.url"):
        parse_dcgm(answer(10_000), now=0)
    with pytest.raises(HardwareParseError, match="line 1: a GPU id of 300 characters"):
        parse_dcgm(answer(1, "G" * 300), now=0)


def test_remapped_rows_with_and_without_header():
    plain = parse_remapped_rows((DATA / "a100-remapped-rows.csv").read_text())
    assert plain[A100[1]] == {"remap_correctable": 0, "remap_uncorrectable": 2, "remap_pending": True,
                              "remap_failure": False}
    failed = parse_remapped_rows((DATA / "a100-remapped-rows-failed.csv").read_text(), fields=None)
    assert failed[A100[1]]["remap_failure"] is True and failed[A100[0]]["remap_failure"] is False


def test_dcgm_exporter_scrape():
    rs = {r.index: r for r in parse_dcgm((DATA / "dcgm-exporter.txt").read_text(), now=100.0)}
    assert rs[0].temperature_c == 44 and rs[0].power_w == pytest.approx(512.348) and rs[0].throttle == 4
    assert rs[0].memory_total_mib == 76677 + 4882 and rs[0].bus_id == "0000:18:00" and rs[0].xid_last == 0
    bad = rs[1]
    assert (bad.ecc_uncorrected, bad.ecc_corrected, bad.xid_last, bad.remap_pending) == (2, 12, 95, True)


def test_kernel_log_xids():
    xids = parse_xid_log((DATA / "kernel-xid.log").read_text())
    assert [(x.bus_id, x.code, x.kind) for x in xids] == [
        ("0000:0b:00", 13, "info"), ("0000:0b:00", 13, "info"), ("0000:07:00", 63, "warning"),
        ("0000:0b:00", 79, "critical")]
    assert xids[3].ts is not None and "fallen off the bus" in xids[3].detail
    dmesg = parse_xid_log((DATA / "dmesg-xid.txt").read_text())
    assert [x.code for x in dmesg] == [63, 94, 48, 48]
    assert dmesg[0].ts == xids[2].ts  # `dmesg -T` and journalctl agree on the time
    assert dmesg[2].ts is None and dmesg[2].detail != dmesg[3].detail  # plain dmesg: told apart by uptime


# -- detector -------------------------------------------------------------------------------------------------------


def test_healthy_series_is_never_flagged():
    for uuid, series in by_gpu(recording("a100-healthy.csv")).items():
        verdicts = replay(series)
        assert {v.status for v in verdicts} == {"healthy"}, (uuid, [v.reasons for v in verdicts if v.reasons])
    for name in ("rtx3060-consumer-na.csv", "t4-driver470-old-names.csv"):
        assert {v.status for v in replay(recording(name))} == {"healthy"}


def test_temperature_creep_is_flagged_hours_ahead_with_a_forecast():
    series = recording("h100-temperature-creep.csv")
    verdicts = replay(series)
    first = next(i for i, v in enumerate(verdicts) if v.status != "healthy")
    assert verdicts[first].status == "degraded" and first > 60  # not during the flat first 2 hours
    assert all(v.status == "degraded" for v in verdicts[first:])
    v = verdicts[first]
    assert "temperature creeping" in v.reasons[0] and "°C/h" in v.summary and "85 °C in about" in v.summary
    assert v.forecast["metric"] == "temperature" and v.forecast["limit"] == 85.0
    assert 0 < v.forecast["hours"] <= SETTINGS.forecast_horizon.total_seconds() / 3600
    assert v.trend["temperature"]["slope_c_per_h"] > 0 and v.trend["temperature"]["robust"]["z"] > 0
    # the forecast: a limit the recording does reach (82 °C), warned of an hour ahead, and the time is right once
    # the creep has run for half an hour
    at82 = Hardware(source="nvidia-smi", temperature_limit=82)
    verdicts = replay(series, at82)
    first = next(i for i, v in enumerate(verdicts) if v.status != "healthy")
    hit = next(i for i, r in enumerate(series) if r.temperature_c >= 82)
    assert series[hit].ts - series[first].ts >= 3600
    for v in verdicts[first:hit]:
        assert v.status == "degraded" and v.forecast is not None
    settled = [v for v, r in zip(verdicts[first:hit], series[first:hit], strict=True) if r.ts >= series[first].ts + 1800]
    assert settled and all(abs(v.forecast["at"] - series[hit].ts) <= 20 * 60 for v in settled)


def _busy_gpu(seed: int, hours: float, creep_from_h: float | None = None) -> list[GpuReading]:
    """30-second polls of a GPU whose load jumps between idle and full every 10 to 60 minutes, its temperature
    following the load with a 3-minute lag (and, from ``creep_from_h``, +6.5 °C/h more: a failing fan)."""
    import math
    import random

    rng, t0, temp, util, out = random.Random(seed), 1_800_000_000.0, 50.0, 90.0, []
    for i in range(int(hours * 120)):
        if i % rng.choice([20, 60, 120]) == 0:
            util = rng.choice([0, 30, 60, 90, 100, 100])
        target = 38 + 0.3 * util
        if creep_from_h is not None and i >= creep_from_h * 120:
            target += 6.5 * (i - creep_from_h * 120) / 120
        temp += (target - temp) * (1 - math.exp(-30 / 180))
        out.append(GpuReading(ts=t0 + 30 * i, uuid="GPU-busy", utilization_pct=util,
                              temperature_c=round(temp + rng.gauss(0, 0.5)), power_w=80 + 2.5 * util + rng.gauss(0, 8)))
    return out


def test_load_changes_are_not_a_creep_but_a_creep_under_changing_load_is():
    def verdicts(series, every=10):
        return [(i, assess_gpu("r1", series[max(0, i - 400):i + 1], SETTINGS, now=series[i].ts))
                for i in range(0, len(series), every)]

    for seed in (1, 2):
        flagged = [(i, v.reasons) for i, v in verdicts(_busy_gpu(seed, 8)) if v.status != "healthy"]
        assert flagged == []
    creep = verdicts(_busy_gpu(5, 8, creep_from_h=4))
    first = next(i for i, v in creep if v.status != "healthy")
    assert 4 * 120 < first <= 5 * 120  # within the creep's first hour
    v = dict(creep)[first]
    assert "temperature creeping" in v.reasons[0] and "at the same load" in v.reasons[0]
    assert v.forecast["at_load_pct"] >= 30 and v.forecast["hours"] <= 6  # the busiest load of the window


def test_the_limit_and_the_horizon_are_settings():
    series = recording("h100-temperature-creep.csv")[:90]
    assert assess_gpu("r1", series, SETTINGS, now=series[-1].ts).status == "degraded"
    calm = Hardware(source="nvidia-smi", temperature_limit=100, forecast_horizon="1h", temperature_rise_per_hour=10)
    assert assess_gpu("r1", series, calm, now=series[-1].ts).status == "healthy"


def test_uncorrected_ecc_and_retired_page_are_critical_from_the_reading_they_appear_in():
    series = recording("v100-dbe-retired-page.csv")
    verdicts = replay(series)
    appear = next(i for i, r in enumerate(series) if r.ecc_uncorrected)
    assert {v.status for v in verdicts[:appear]} == {"healthy"}
    assert {v.status for v in verdicts[appear:]} == {"critical"}
    reasons = " | ".join(verdicts[appear].reasons)
    assert "1 uncorrected ECC error(s)" in reasons and "double-bit errors went from 0 to 1" in reasons
    assert "pending retirement" in reasons


def test_thermal_throttle_degrades_but_the_power_cap_does_not():
    series = recording("l40s-thermal-throttle.csv")
    verdicts = replay(series)
    hot = next(i for i, r in enumerate(series) if r.throttle & 0x40)
    assert {v.status for v in verdicts[:hot]} == {"healthy"}  # sw_power_cap alone, hour after hour
    assert verdicts[hot].status == "degraded"
    assert "hw_thermal_slowdown" in verdicts[hot].reasons[0] and "sw_power_cap" not in verdicts[hot].reasons[0]


def test_row_remapping_pending_degrades_failure_is_critical():
    series = by_gpu(recording("a100-healthy.csv"))
    for name, expected in (("a100-remapped-rows.csv", "degraded"), ("a100-remapped-rows-failed.csv", "critical")):
        readings = [GpuReading.from_json(r.to_json()) for r in series[A100[1]]]
        merge_remapped(readings[-1:], parse_remapped_rows((DATA / name).read_text()))  # with or without header
        v = assess_gpu("r1", readings, SETTINGS, now=readings[-1].ts)
        assert v.status == expected, v.reasons
        assert any("row" in why for why in v.reasons)


def test_dcgm_and_kernel_log_xids_reach_the_right_gpu():
    dcgm = {r.index: r for r in parse_dcgm((DATA / "dcgm-exporter.txt").read_text(), now=1000.0)}
    ra = assess_region("r1", SETTINGS, {r.uuid: [r] for r in dcgm.values()}, now=1000.0, last_poll=(1000.0, None))
    verdict = {g.index: g for g in ra.gpus}
    assert verdict[0].status == "healthy" and verdict[1].status == "critical" and ra.status == "critical"
    assert any("Xid 95 (uncontained ECC error)" in why for why in verdict[1].reasons)
    # the A100 node's kernel log: Xid 79 for the GPU at 0b:00, Xid 63 for 07:00, Xid 13 (an application's) ignored
    series = by_gpu(recording("a100-healthy.csv"))
    now = series[A100[0]][-1].ts
    xids = parse_xid_log((DATA / "kernel-xid.log").read_text())
    ra = assess_region("r1", SETTINGS, series, now=now, xids=xids, last_poll=(now, None))
    verdict = {g.uuid: g for g in ra.gpus}
    assert verdict[A100[0]].status == "degraded" and "Xid 63" in verdict[A100[0]].reasons[0]
    assert verdict[A100[1]].status == "critical" and "Xid 79" in verdict[A100[1]].reasons[0]
    assert [x["code"] for x in verdict[A100[1]].trend["xids"]] == [13, 13, 79]


def test_a_gpu_missing_from_the_last_poll_is_critical_and_a_silent_source_unknown():
    series = by_gpu(recording("a100-healthy.csv"))
    now = series[A100[0]][-1].ts
    one_gone = {A100[0]: series[A100[0]], A100[1]: series[A100[1]][:-1]}
    ra = assess_region("r1", SETTINGS, one_gone, now=now, last_poll=(now, None))
    gone = next(g for g in ra.gpus if g.uuid == A100[1])
    assert gone.status == "critical" and "did not list this GPU" in gone.reasons[0]
    failed = assess_region("r1", SETTINGS, series, now=now + 30, last_poll=(now + 30, "nvidia-smi exited 9: ..."))
    assert failed.status == "unknown" and failed.reasons == ["nvidia-smi exited 9: ..."]
    assert all("the source failed since" in g.reasons[-1] for g in failed.gpus)
    stale = assess_gpu("r1", series[A100[0]], SETTINGS, now=now + 3600)
    assert stale.status == "unknown" and "old" in stale.reasons[0]


# -- sources --------------------------------------------------------------------------------------------------------


def _command(recording_name: str, state: Path, upto: int, *extra: str) -> Hardware:
    state.write_text(json.dumps({"upto": upto}))
    return Hardware(source="command", command=[sys.executable, str(REPLAY), str(DATA / recording_name), str(state),
                                               *extra])


def test_command_source_replays_a_recording(tmp_path):
    src = open_source("r1", _command("h100-temperature-creep.csv", tmp_path / "s.json", 30))
    p1 = src.poll()
    assert p1.ok and len(p1.readings) == 30 and p1.readings[0].uuid == H100
    state = json.loads((tmp_path / "s.json").read_text())
    (tmp_path / "s.json").write_text(json.dumps(state | {"upto": 35}))
    p2 = src.poll()
    assert len(p2.readings) == 5 and p2.readings[0].ts > p1.readings[-1].ts  # the next block, recorded times kept
    # one block (a live `ssh host nvidia-smi ...`) prints the host's local time: the poll's time is used instead
    one = "\n".join((DATA / "a100-healthy.csv").read_text().splitlines()[:2])
    live = Hardware(source="command", command=[sys.executable, "-c", f"print({one!r})"])
    p3 = open_source("r1", live).poll(now=1_900_000_000.0)
    assert [r.ts for r in p3.readings] == [1_900_000_000.0] * 2
    # and two GPUs stamped milliseconds apart are one poll, not a GPU gone missing
    a, b = p3.readings
    a.ts -= 0.008
    ra = assess_region("r1", SETTINGS, {a.uuid: [a], b.uuid: [b]}, now=b.ts, last_poll=(b.ts, None))
    assert ra.status == "healthy", [g.reasons for g in ra.gpus]


def test_sources_that_fail_say_why_and_never_raise(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi, whatever this machine has
    p = open_source("r1", Hardware(source="nvidia-smi")).poll()
    assert p.error == NO_NVIDIA_SMI and p.readings == []
    exit1 = Hardware(source="command", command=[sys.executable, "-c", "import sys; print('boom', file=sys.stderr); "
                                                                      "sys.exit(3)"])
    assert open_source("r1", exit1).poll().error == f"{sys.executable} exited 3: boom"
    garbage = Hardware(source="command", command=[sys.executable, "-c", "print('1, 2, 3')"])
    assert "3 values for 17 fields" in open_source("r1", garbage).poll().error
    slow = Hardware(source="command", command=[sys.executable, "-c", "import time; time.sleep(30)"], timeout="1s")
    assert "did not finish within 1 s" in open_source("r1", slow).poll().error
    missing = Hardware(source="command", command=["no-such-tool-llmdr"])
    assert open_source("r1", missing).poll().error == "no-such-tool-llmdr not found on PATH"
    empty = Hardware(source="command", command=[sys.executable, "-c", "pass"])
    assert open_source("r1", empty).poll().error == "command listed no GPU"


def _fake_nvidia_smi(bindir: Path, remap: str, mode: str = "r470", rec: str = "t4-driver470-old-names.csv") -> None:
    bindir.mkdir()
    exe = bindir / "nvidia-smi"
    exe.write_text(f"#!/bin/sh\nexec {sys.executable} {Path(__file__).parent / 'support' / 'fake_nvidia_smi.py'} "
                   f"{mode} {DATA / rec} {remap} \"$@\"\n")
    exe.chmod(0o755)


def test_nvidia_smi_source_falls_back_to_the_older_throttle_field(tmp_path, monkeypatch):
    """The real source against a stand-in binary (no GPU here): a driver that refuses clocks_event_reasons.active
    is asked for clocks_throttle_reasons.active; the query's field order is the one the stand-in answers in."""
    from llmdr.hardware.readings import QUERY_FIELDS

    _fake_nvidia_smi(tmp_path / "bin", "-")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    header = (DATA / "t4-driver470-old-names.csv").read_text().splitlines()[0]
    older = {"clocks_event_reasons.active": "clocks_throttle_reasons.active",
             "retired_pages.single_bit_ecc.count": "retired_pages.sbe", "retired_pages.double_bit.count": "retired_pages.dbe"}
    assert [c.split(" [")[0].strip() for c in header.split(",")] == [older.get(f, f) for f in QUERY_FIELDS]
    src = open_source("r1", Hardware(source="nvidia-smi"))
    p = src.poll(now=1_800_000_000.0)
    assert p.ok and len(p.readings) == 1 and p.readings[0].throttle == 0x4
    assert p.readings[0].ts == 1_800_000_000.0  # live polls: the poll's time, not nvidia-smi's local time
    assert p.notes == ["remapped rows not read: nvidia-smi exited 3: This operation is not supported on this GPU."]
    assert "clocks_throttle_reasons.active" in src.fields


def test_nvidia_smi_source_merges_remapped_rows(tmp_path, monkeypatch):
    remap = tmp_path / "remap.csv"
    remap.write_text("GPU-9a8b7c6d-5e4f-4321-8a9b-0c1d2e3f4a5b, 0, 3, 1, 0\n")
    _fake_nvidia_smi(tmp_path / "bin", str(remap))
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    p = open_source("r1", Hardware(source="nvidia-smi")).poll()
    assert p.ok and not p.notes and (p.readings[0].remap_uncorrectable, p.readings[0].remap_pending) == (3, True)
    assert assess_gpu("r1", p.readings, SETTINGS, now=p.ts).status == "degraded"


def test_a_gpu_lost_mid_run_is_critical_while_nvidia_smi_still_lists_the_others(tmp_path, monkeypatch):
    cfg = _config(tmp_path, "{source: nvidia-smi}", "http://127.0.0.1:9/unused")
    mon = HardwareMonitor(cfg)
    try:
        before = recording("a100-healthy.csv")[-2:]  # the node's last good block, 30 s ago
        t = before[-1].ts
        mon.record(Poll("primary", "nvidia-smi", t, readings=before), now=t)
        _fake_nvidia_smi(tmp_path / "bin", "-", mode="lost", rec="a100-healthy.csv")
        monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
        p = mon.sources["primary"].poll(now=t + 30)
        assert p.ok and [r.uuid for r in p.readings] == [A100[0]]
        assert any("GPU is lost" in n for n in p.notes) and any("exited 15" in n for n in p.notes)
        ra, transitions = mon.record(p, now=t + 30)
        verdict = {g.uuid: g for g in ra.gpus}
        assert verdict[A100[0]].status == "healthy" and verdict[A100[1]].status == "critical"
        assert [(x.gpu.uuid, x.event, x.notify) for x in transitions] == [(A100[1], "degraded", True)]
    finally:
        mon.close()


def test_corrected_ecc_rate_power_at_the_same_load_and_xid_dedup(tmp_path):
    t0 = 1_800_000_000.0

    def series(n, **per_i):
        return [GpuReading(ts=t0 + 300 * i, uuid="GPU-x", index=0,
                           **{k: f(i) for k, f in per_i.items()}) for i in range(n)]

    # 1 corrected error an hour, then 60 an hour: degraded; a driver reload (counter back to 0) is not a rate
    wearing = series(40, ecc_corrected=lambda i: i // 12 if i < 30 else 2 + (i - 29) * 5)
    v = assess_gpu("r1", wearing, SETTINGS, now=wearing[-1].ts)
    assert v.status == "degraded" and "corrected ECC errors at 50/h over the last 60 min" in v.reasons[0]
    # one corrected error, polled every 30 s: not "120 an hour"
    once = [GpuReading(ts=t0 + 30 * i, uuid="GPU-x", ecc_corrected=int(i >= 200)) for i in range(210)]
    assert assess_gpu("r1", once, SETTINGS, now=once[-1].ts).status == "healthy"
    reload = series(40, ecc_corrected=lambda i: i // 12 if i < 35 else 0)
    assert assess_gpu("r1", reload, SETTINGS, now=reload[-1].ts).status == "healthy"
    # a third more power at the same utilisation: degraded; the same step with the load: healthy
    more = series(40, power_w=lambda i: 300.0 + (i % 3) if i < 30 else 400.0, utilization_pct=lambda i: 95.0)
    v = assess_gpu("r1", more, SETTINGS, now=more[-1].ts)
    assert v.status == "degraded" and "power draw median 400 W" in v.reasons[0] and "above" in v.reasons[0]
    busier = series(40, power_w=lambda i: 200.0 + (i % 3) if i < 30 else 390.0,
                    utilization_pct=lambda i: 40.0 if i < 30 else 98.0)
    assert assess_gpu("r1", busier, SETTINGS, now=busier[-1].ts).status == "healthy"
    # the same kernel-log line read by two polls is one event
    from llmdr.hardware.store import HardwareStore

    store = HardwareStore(tmp_path / "hw.sqlite")
    xids = parse_xid_log((DATA / "kernel-xid.log").read_text() + (DATA / "dmesg-xid.txt").read_text())
    try:
        assert store.add(Poll("r1", "nvidia-smi", t0, xids=xids)) == 7  # 8 lines, 1 repeated in both logs
        assert store.add(Poll("r1", "nvidia-smi", t0 + 30, xids=xids)) == 0
        assert len(store.xids("r1", since=0)) == 7
    finally:
        store.close()


class Exporter(Loopback):
    """A loopback HTTP server answering /metrics with ``body`` (a dcgm-exporter stand-in serving a recorded
    scrape)."""

    def __init__(self, body: str, status: int = 200) -> None:
        outer = self
        self.body, self.status = body, status

        class Handler(Quiet):
            def do_GET(self):  # noqa: N802 - http.server's naming
                data = outer.body.encode()
                self.send_response(outer.status)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        super().__init__(Handler, "/metrics")


def test_dcgm_exporter_source_over_http():
    ex = Exporter((DATA / "dcgm-exporter.txt").read_text())
    try:
        src = open_source("r1", Hardware(source="dcgm-exporter", url=ex.url))
        p = src.poll()
        assert p.ok and sorted(r.index for r in p.readings) == [0, 1]
        ex.status = 503
        assert src.poll().error == f"dcgm-exporter at {ex.url} answered HTTP 503"
        tokened = Hardware(source="dcgm-exporter", url=ex.url + "?token=t0k")
        assert open_source("r1", tokened).poll().error == f"dcgm-exporter at {ex.url} answered HTTP 503"  # no query
        ex.status, ex.body = 200, "<html>login</html>\n"
        assert "not a Prometheus sample" in src.poll().error
    finally:
        ex.close()
    assert "not reachable" in src.poll().error


def test_hardware_config_errors_say_what_to_write(tmp_path):
    def load(hw: str):
        return parse_config(f"""version: 1
bundle: {{name: b, path: bundle}}
regions:
  - name: primary
    role: primary
    endpoint: http://127.0.0.1:18555
    bucket: llmdr-primary
    hardware: {hw}
  - name: secondary
    role: secondary
    endpoint: http://127.0.0.1:18655
    bucket: llmdr-secondary
""", source=tmp_path / "llmdr.yaml")

    with pytest.raises(ConfigError, match="needs url"):
        load("{source: dcgm-exporter}")
    with pytest.raises(ConfigError, match="needs command"):
        load("{source: command}")
    with pytest.raises(ConfigError, match="source"):
        load("{source: rocm-smi}")
    with pytest.raises(ConfigError, match="must not carry user:password") as err:
        load("{source: dcgm-exporter, url: 'http://ops:s3cret@gpu-node-7:9400/metrics'}")
    assert "s3cret" not in str(err.value)
    assert load("{source: nvidia-smi, interval: 1m}").regions[0].hardware.interval.total_seconds() == 60


# -- the monitor: events and notices ---------------------------------------------------------------------------------


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def _config(tmp_path: Path, hardware: str, webhook: str):
    text = f"""version: 1
bundle: {{name: gpubot, path: bundle}}
regions:
  - name: primary
    role: primary
    endpoint: http://127.0.0.1:18555
    bucket: llmdr-primary
    credentials: {{access_key_env: A_AK, secret_key_env: A_SK}}
    hardware: {hardware}
  - name: secondary
    role: secondary
    endpoint: http://127.0.0.1:18655
    bucket: llmdr-secondary
    credentials: {{access_key_env: B_AK, secret_key_env: B_SK}}
notifications: {{webhook_url: '{webhook}', timeout: 5s}}
state_dir: .llmdr
"""
    (tmp_path / "llmdr.yaml").write_text(text)
    return parse_config(text, source=tmp_path / "llmdr.yaml")


def test_watcher_emits_hardware_degraded_once_and_the_notice_reaches_a_receiver(tmp_path, receiver):
    from llmdr.failover.watch import Watcher

    state = tmp_path / "replay.json"
    cmd = json.dumps([sys.executable, str(REPLAY), str(DATA / "h100-temperature-creep.csv"), str(state)])
    cfg = _config(tmp_path, f"{{source: command, command: {cmd}}}", receiver.url)
    series = recording("h100-temperature-creep.csv")
    emitted: list[tuple] = []
    w = Watcher(cfg, emit=lambda event, resource, payload: emitted.append((event, resource, payload)) or True)
    try:
        state.write_text(json.dumps({"upto": 60}))  # the flat first 2 hours
        res = w.hardware_round(now=series[59].ts)
        assert res.hardware["primary"].status == "healthy" and emitted == [] and receiver.bodies == []
        state.write_text(json.dumps({"printed": 60, "upto": 95}))  # the creep
        res = w.hardware_round(now=series[94].ts)
        assert res.hardware["primary"].status == "degraded"
        [(event, resource, payload)] = emitted
        payload = json.loads(json.dumps(payload))  # as Prefect's event carries it
        assert event == "llmdr.hardware.degraded"
        assert resource["prefect.resource.id"] == f"llmdr.hardware.gpubot.primary.{H100}"
        assert resource["llmdr.region"] == "primary" and resource["llmdr.gpu"] == H100
        assert payload["status"] == "degraded" and payload["previous"] == "healthy"
        assert 0 < payload["forecast"]["hours"] < 6 and "°C/h" in payload["trend"]
        assert "temperature creeping" in payload["reasons"][0]
        [notice] = receiver.bodies
        assert notice["kind"] == "hardware_degraded" and notice["severity"] == "warning"
        assert notice["data"]["gpu"] == H100 and notice["data"]["forecast"]["hours"] == payload["forecast"]["hours"]
        assert "pre-warm the DR standby in secondary" in notice["text"] and "llmdr replica start secondary" in \
            notice["text"]
        state.write_text(json.dumps({"printed": 95, "upto": 100}))  # still degraded: no new event, no new notice
        w.hardware_round(now=series[99].ts)
        assert len(emitted) == 1 and len(receiver.bodies) == 1
        # a new monitor run remembers the GPU's status: nothing announced twice
        w2 = Watcher(cfg, emit=lambda *a: emitted.append(a) or True)
        state.write_text(json.dumps({"printed": 100, "upto": 103}))
        w2.hardware_round(now=series[102].ts)
        w2.hardware.close()
        assert len(emitted) == 1 and len(receiver.bodies) == 1
    finally:
        w.hardware.close()


def test_a_one_round_watch_waits_for_the_gpu_poll_and_a_dead_source_stops_nothing(tmp_path):
    from llmdr.failover.watch import Watcher, watch

    state = tmp_path / "replay.json"
    state.write_text(json.dumps({"upto": 95}))
    cmd = json.dumps([sys.executable, str(REPLAY), str(DATA / "h100-temperature-creep.csv"), str(state),
                      "--shift-to-now"])
    cfg = _config(tmp_path, f"{{source: command, command: {cmd}}}", "http://127.0.0.1:9/unused")
    cfg.regions[1].hardware = Hardware(source="dcgm-exporter", url="http://127.0.0.1:9/metrics")  # nobody there
    emitted: list[tuple] = []
    summary = watch(cfg, rounds=1, watcher=Watcher(cfg, emit=lambda *a: emitted.append(a) or True,
                                                   notify=lambda notice: []))
    hw = summary.last.hardware
    assert hw["primary"].status == "degraded" and hw["secondary"].status == "unknown"
    assert "not reachable" in hw["secondary"].reasons[0]
    assert [e["event"] for e in summary.emitted] == ["llmdr.hardware.degraded"] == [e[0] for e in emitted]
    assert json.loads(json.dumps(summary.to_json()))["last"]["hardware"]["primary"]["gpus"][0]["uuid"] == H100


def _poll(uuid: str, ts: float, **kw) -> Poll:
    return Poll("primary", "command", ts, readings=[GpuReading(ts=ts, uuid=uuid, index=0, **kw)])


def test_notices_are_rate_limited_per_gpu_but_an_escalation_is_news(tmp_path):
    cfg = _config(tmp_path, "{source: nvidia-smi, notify_cooldown: 1h}", "http://127.0.0.1:9/unused")
    mon = HardwareMonitor(cfg)
    try:
        t = 1_800_000_000.0
        _, tr = mon.record(_poll("GPU-a", t, throttle=0x40), now=t)
        assert [(x.event, x.notify) for x in tr] == [("degraded", True)]
        _, tr = mon.record(_poll("GPU-a", t + 60, throttle=0x0), now=t + 60)
        assert [(x.event, x.notify) for x in tr] == [("recovered", False)]
        _, tr = mon.record(_poll("GPU-a", t + 120, throttle=0x40), now=t + 120)
        assert [(x.event, x.notify) for x in tr] == [("degraded", False)]  # flapping: the event, not a 2nd notice
        _, tr = mon.record(_poll("GPU-a", t + 180, throttle=0x40, ecc_uncorrected=1), now=t + 180)
        assert [(x.event, x.gpu.status, x.notify) for x in tr] == [("degraded", "critical", True)]  # worse: news
        _, tr = mon.record(_poll("GPU-b", t + 200, throttle=0x40), now=t + 200)
        assert [x.notify for x in tr] == [True]  # another GPU: its own cooldown
        _, tr = mon.record(_poll("GPU-a", t + 4000, throttle=0x0), now=t + 4000)
        _, tr = mon.record(_poll("GPU-a", t + 4060, throttle=0x40), now=t + 4060)
        assert [x.notify for x in tr if x.gpu.uuid == "GPU-a"] == [True]  # after the cooldown
    finally:
        mon.close()


# -- the CLI --------------------------------------------------------------------------------------------------------


def _cli(cwd: Path, *args: str, path: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMDR_", "PREFECT_"))}
    env |= {"PATH": path, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "llmdr.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_cli_without_a_gpu_says_so_and_exits_0(tmp_path):
    _config(tmp_path, "{source: nvidia-smi}", "http://127.0.0.1:9/unused")
    empty = tmp_path / "bin"
    empty.mkdir()
    out = _cli(tmp_path, "hardware", "status", path=str(empty))
    assert out.returncode == 0, out.stderr
    assert f"primary: UNKNOWN (source: nvidia-smi) - {NO_NVIDIA_SMI}" in out.stdout
    assert "secondary: UNKNOWN (source: none) - no hardware source configured" in out.stdout
    js = _cli(tmp_path, "hardware", "status", "--json", "--region", "primary", path=str(empty))
    assert js.returncode == 0
    [row] = json.loads(js.stdout)["regions"]
    assert (row["status"], row["reasons"], row["gpus"]) == ("unknown", [NO_NVIDIA_SMI], [])
    bad = _cli(tmp_path, "hardware", "status", "--region", "nope", path=str(empty))
    assert bad.returncode == 2 and "no region named 'nope'" in bad.stderr and "Traceback" not in bad.stderr


def test_cli_reads_a_replayed_recording_as_live(tmp_path):
    state = tmp_path / "replay.json"
    state.write_text(json.dumps({"upto": 95}))
    cmd = json.dumps([sys.executable, str(REPLAY), str(DATA / "h100-temperature-creep.csv"), str(state),
                      "--shift-to-now"])
    _config(tmp_path, f"{{source: command, command: {cmd}}}", "http://127.0.0.1:9/unused")
    out = _cli(tmp_path, "hardware", "status", "--json", path=os.environ["PATH"])
    assert out.returncode == 0, out.stderr
    primary = json.loads(out.stdout)["regions"][0]
    [gpu] = primary["gpus"]
    assert (primary["status"], gpu["uuid"], gpu["index"]) == ("degraded", H100, 3)
    assert 0 < gpu["forecast"]["hours"] < 6 and "temperature creeping" in gpu["reasons"][0]
    text = _cli(tmp_path, "hardware", "status", path=os.environ["PATH"])  # the recording is used up: no GPU listed
    assert text.returncode == 0 and "primary: UNKNOWN (source: command) - command listed no GPU" in text.stdout


# -- the runbook ----------------------------------------------------------------------------------------------------


def test_runbook_says_what_to_do_on_hardware_degraded(tmp_path):
    from llmdr.drill.runbook import render_runbook

    md = render_runbook(_config(tmp_path, "{source: dcgm-exporter, url: 'http://gpu-node-7:9400/metrics'}",
                                "http://127.0.0.1:9/unused"))
    part = md[md.index("### GPU hardware early warning"):md.index("## 4.")]
    assert "dcgm-exporter at http://gpu-node-7:9400/metrics" in part and "85 °C" in part
    assert "`llmdr.hardware.degraded`" in part and "llmdr replica start secondary --snapshot latest" in part
    assert "llmdr failover --to secondary" in part and "drain" in part and "llmdr hardware status" in part
    assert "GPU hardware degraded / critical" in md[md.index("## 2."):md.index("## 3.")]
    (tmp_path / "plain").mkdir()
    bare = render_runbook(_config(tmp_path / "plain", "null", "http://127.0.0.1:9/unused"))
    assert "No region reads its GPUs' health" in bare and "GPU hardware degraded" not in bare


def test_the_metrics_exporter_serves_each_gpus_health_from_the_monitors_store(tmp_path, receiver):
    """The monitor's hardware rounds store a recorded H100 creeping hot; a scrape of llmdr's exporter then has the
    GPU's status, temperature, power, forecast and newest reading's time, as `llmdr hardware status` judges them."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from llmdr.failover.watch import Watcher
    from llmdr.metrics.collector import LlmdrCollector

    state = tmp_path / "replay.json"
    cmd = json.dumps([sys.executable, str(REPLAY), str(DATA / "h100-temperature-creep.csv"), str(state)])
    cfg = _config(tmp_path, f"{{source: command, command: {cmd}}}", receiver.url)
    series = recording("h100-temperature-creep.csv")
    w = Watcher(cfg, emit=lambda *a: True)
    try:
        state.write_text(json.dumps({"upto": 60}))
        w.hardware_round(now=series[59].ts)
        state.write_text(json.dumps({"printed": 60, "upto": 95}))
        res = w.hardware_round(now=series[94].ts)
    finally:
        w.hardware.close()
    [gpu] = res.hardware["primary"].gpus
    assert gpu.status == "degraded" and gpu.forecast["hours"] > 0

    def scrape(now: float) -> dict:
        collector = LlmdrCollector(cfg, cache_s=0, region_timeout=5, clock=lambda: now)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(collector)
        try:
            text = generate_latest(registry).decode()
        finally:
            collector.close()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(text) for s in f.samples}

    got = scrape(series[94].ts)
    gl = (("bundle", "gpubot"), ("gpu", H100), ("region", "primary"))
    assert {st: got[("llmdr_gpu_status", tuple(sorted(gl + (("status", st),))))]
            for st in ("healthy", "degraded", "critical", "unknown")} == {"healthy": 0, "degraded": 1, "critical": 0,
                                                                           "unknown": 0}
    assert got[("llmdr_gpu_temperature_celsius", gl)] == series[94].temperature_c
    assert got[("llmdr_gpu_power_watts", gl)] == series[94].power_w
    assert got[("llmdr_gpu_hours_to_limit", gl)] == pytest.approx(gpu.forecast["hours"])
    assert got[("llmdr_gpu_last_reading_timestamp_seconds", gl)] == pytest.approx(series[94].ts)
    assert not any(name == "llmdr_gpu_status" and dict(labels).get("region") == "secondary" for name, labels in got)

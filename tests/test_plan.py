"""The capacity planner: parsing, the cold-restore arithmetic, the options and how they are shown."""

import json
import math

import pytest

from llmdr.drill.plan import (
    DOES_NOT_MEET,
    MEETS,
    human_bytes,
    human_rate,
    human_seconds,
    make_plan,
    parse_bandwidth,
    parse_seconds,
    parse_size,
    render_plan,
)
from llmdr.errors import UsageError

GB = 10**9
GBIT = 1e9


def _option(plan, name):
    (opt,) = [o for o in plan.options if o.name == name]
    return opt


# --- parsing ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("140GB", 140 * GB),
    ("140 GB", 140 * GB),
    ("140gb", 140 * GB),
    ("1.5TB", 1_500 * GB),
    ("500MB", 500 * 10**6),
    ("10KB", 10_000),
    ("10kB", 10_000),
    ("512MiB", 512 * 2**20),
    ("2GiB", 2 * 2**30),
    ("2gib", 2 * 2**30),
    ("1TiB", 2**40),
    ("123", 123),
    ("123B", 123),
    (" 7 bytes ", 7),
    (".5GB", 500 * 10**6),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text, words", [
    ("abc", "not a size"),
    ("", "not a size"),
    ("GB", "not a size"),
    ("-5GB", "positive"),
    ("0", "positive"),
    ("0GB", "positive"),
    ("0.1", "less than one byte"),
    ("5 parsecs", "unknown unit"),
    ("1.2.3GB", "not a size"),
    ("140G", "ambiguous"),
])
def test_parse_size_refuses(text, words):
    with pytest.raises(UsageError) as err:
        parse_size(text)
    assert words in str(err.value)
    assert "e.g." in str(err.value) or "write" in str(err.value)  # says what to type instead


@pytest.mark.parametrize("text, expected", [
    ("1Gbps", 1e9),
    ("1gbps", 1e9),
    ("1 Gbit/s", 1e9),
    ("2.5 gbits/s", 2.5e9),
    ("100Mbps", 100e6),
    ("10Gbps", 10e9),
    ("500Kbps", 500e3),
    ("800bps", 800),
    ("10 Gb/s", 10e9),
    ("250MB/s", 250e6 * 8),
    ("250 MBps", 250e6 * 8),
    ("1GB/s", 8e9),
    ("100MiB/s", 100 * 2**20 * 8),
    ("1 Gibit/s", 2**30),
    ("40 bytes/s", 320),
])
def test_parse_bandwidth(text, expected):
    assert parse_bandwidth(text) == pytest.approx(expected)


@pytest.mark.parametrize("text, words", [
    ("abc", "not a rate"),
    ("", "not a rate"),
    ("-1Gbps", "positive"),
    ("0Gbps", "positive"),
    ("5 parsecs", "unknown unit"),
    ("100", "needs a unit"),
    ("1 Gbit", "unknown unit"),
    ("250mb/s", "ambiguous"),
])
def test_parse_bandwidth_refuses(text, words):
    with pytest.raises(UsageError) as err:
        parse_bandwidth(text)
    assert words in str(err.value)


def test_parse_seconds():
    assert parse_seconds("15m") == 900
    assert parse_seconds("1h30m") == 5400
    assert parse_seconds("90") == 90
    assert parse_seconds("2.5") == 2.5
    with pytest.raises(UsageError, match="--rto"):
        parse_seconds("soon", what="--rto")


# --- formatting ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n, text", [(140 * GB, "140.0 GB"), (1_500 * GB, "1.50 TB"), (2**40 * 1.5, "1.65 TB"), (123, "123 B"),
                                     (512 * 2**20, "536.9 MB"), (999_999_999, "1.00 GB"), (10**10, "10.0 GB")])
def test_human_bytes(n, text):
    assert human_bytes(n) == text


@pytest.mark.parametrize("bps, text", [(1e9, "1.00 Gbit/s (125 MB/s)"), (100e6, "100 Mbit/s (12.5 MB/s)"),
                                       (10e9, "10.0 Gbit/s (1.25 GB/s)"), (999.9e6, "1.00 Gbit/s (125 MB/s)")])
def test_human_rate(bps, text):
    assert human_rate(bps) == text


def test_human_rate_rounds_up_when_asked():
    assert human_rate(1.7949e9) == "1.79 Gbit/s (224 MB/s)"
    assert human_rate(1.7949e9, mode="up") == "1.80 Gbit/s (225 MB/s)"
    assert human_rate(1e9, mode="up") == "1.00 Gbit/s (125 MB/s)"  # no spurious step up


@pytest.mark.parametrize("s, text", [(2.4, "2.4 s"), (45, "45 s"), (1120, "18 min 40 s"), (900, "15 min"),
                                     (59.6, "1 min"), (3900, "1 h 5 min"), (7200, "2 h"), (97200, "1 d 3 h"),
                                     (-620, "-10 min 20 s")])
def test_human_seconds(s, text):
    assert human_seconds(s) == text


# --- the arithmetic --------------------------------------------------------------------------------------------


def test_200_gb_over_1_gbps_takes_over_30_minutes():
    at_line_rate = make_plan(200 * GB, GBIT, 30 * 60, start_s=0, efficiency=1.0)
    assert at_line_rate.cold_restore_s == pytest.approx(1600)  # 26.7 min
    realistic = make_plan(200 * GB, parse_bandwidth("1Gbps"), parse_seconds("30m"), start_s=0)
    assert realistic.cold_restore_s == pytest.approx(2000)  # 200e9 × 8 / 0.8e9 = 33.3 min
    assert realistic.cold_restore_s > 30 * 60
    assert not realistic.meets
    assert realistic.margin_s == pytest.approx(-200)


def test_140_gb_over_1_gbps_misses_a_15_minute_rto():
    plan = make_plan(parse_size("140GB"), parse_bandwidth("1Gbps"), parse_seconds("15m"), start_s=120)
    assert plan.cold_restore_s == pytest.approx(1400)
    assert plan.cold_total_s == pytest.approx(1520)
    assert not plan.meets
    assert plan.margin_s == pytest.approx(-620)
    assert plan.needed_bandwidth_bps == pytest.approx(140e9 * 8 / ((900 - 120) * 0.8))  # ≈ 1.795 Gbit/s
    assert plan.max_size_bytes == 78 * GB  # 780 s × 1e9 × 0.8 / 8


def test_the_needed_bandwidth_meets_exactly_and_a_little_less_does_not():
    plan = make_plan(140 * GB, GBIT, 900, start_s=120)
    exact = make_plan(140 * GB, plan.needed_bandwidth_bps, 900, start_s=120)
    assert exact.meets
    assert exact.margin_s == pytest.approx(0, abs=1e-6)
    assert exact.cold_total_s == pytest.approx(900)
    assert not make_plan(140 * GB, plan.needed_bandwidth_bps * 0.999, 900, start_s=120).meets


def test_the_largest_bundle_fits_and_a_bit_more_does_not():
    plan = make_plan(140 * GB, GBIT, 900, start_s=120)
    assert make_plan(plan.max_size_bytes, GBIT, 900, start_s=120).meets
    assert not make_plan(plan.max_size_bytes + 10**6, GBIT, 900, start_s=120).meets


def test_a_small_bundle_meets():
    plan = make_plan(parse_size("5GB"), parse_bandwidth("10Gbps"), 300, start_s=60)
    assert plan.cold_restore_s == pytest.approx(5)  # 40 Gbit / 8 Gbit/s
    assert plan.meets
    assert plan.margin_s == pytest.approx(235)
    more = _option(plan, "more bandwidth")
    assert more.verdict == MEETS
    assert "already suffices" in more.detail


def test_efficiency_scales_the_transfer():
    given = make_plan(100 * GB, GBIT, 3600, start_s=0, efficiency=0.5)
    measured = make_plan(100 * GB, GBIT, 3600, start_s=0, efficiency=1.0, source="measured from region secondary")
    assert given.cold_restore_s == pytest.approx(1600)
    assert measured.cold_restore_s == pytest.approx(800)
    assert measured.source == "measured from region secondary"


def test_start_alone_over_the_rto_leaves_bandwidth_no_way():
    plan = make_plan(5 * GB, 10 * GBIT, 900, start_s=1200)
    assert not plan.meets
    assert plan.needed_bandwidth_bps is None
    assert plan.max_size_bytes == 0
    more = _option(plan, "more bandwidth")
    assert more.verdict == DOES_NOT_MEET
    assert more.est_seconds is None
    assert "not possible" in more.detail
    assert _option(plan, "warm standby").verdict == MEETS  # 60 s ≤ 900 s: no start on its path
    assert _option(plan, "pre-staged copy").verdict == DOES_NOT_MEET  # still pays the 1200 s start


def test_start_equal_to_the_rto_is_also_not_possible():
    plan = make_plan(5 * GB, 10 * GBIT, 900, start_s=900)
    assert plan.needed_bandwidth_bps is None
    assert "not possible" in _option(plan, "more bandwidth").detail


def test_options_for_the_140_gb_case():
    plan = make_plan(140 * GB, GBIT, 900, start_s=120)
    assert [o.name for o in plan.options] == ["warm standby", "more bandwidth", "pre-staged copy"]
    warm = _option(plan, "warm standby")
    assert (warm.verdict, warm.est_seconds) == (MEETS, 60.0)
    more = _option(plan, "more bandwidth")
    assert more.verdict == DOES_NOT_MEET
    assert "needs ≥ 1.80 Gbit/s" in more.detail
    staged = _option(plan, "pre-staged copy")
    assert staged.est_seconds == pytest.approx(140e9 / 500e6 + 120)  # 280 s read + 120 s start
    assert staged.verdict == MEETS
    assert "500 MB/s" in staged.detail and "assumed" in staged.detail


def test_warm_standby_uses_the_figure_given():
    assert _option(make_plan(GB, GBIT, 30, start_s=0), "warm standby").verdict == DOES_NOT_MEET  # 60 s > 30 s
    fast = _option(make_plan(GB, GBIT, 30, start_s=0, warm_rto_s=2.4), "warm standby")
    assert (fast.verdict, fast.est_seconds) == (MEETS, 2.4)


def test_a_slower_disk_makes_the_pre_staged_copy_miss():
    plan = make_plan(140 * GB, GBIT, 900, start_s=120, disk_read_bps=1e9)  # 125 MB/s: 1120 s read
    staged = _option(plan, "pre-staged copy")
    assert staged.est_seconds == pytest.approx(1240)
    assert staged.verdict == DOES_NOT_MEET


@pytest.mark.parametrize("kwargs", [
    {"size_bytes": 0}, {"size_bytes": -1}, {"bandwidth_bps": 0}, {"bandwidth_bps": float("nan")},
    {"rto_s": 0}, {"rto_s": float("inf")}, {"start_s": -1}, {"efficiency": 0}, {"efficiency": 1.5},
    {"disk_read_bps": 0}, {"warm_rto_s": -1},
])
def test_make_plan_refuses_bad_figures(kwargs):
    args = {"size_bytes": GB, "bandwidth_bps": GBIT, "rto_s": 900.0} | kwargs
    with pytest.raises(UsageError):
        make_plan(**args)


# --- output ----------------------------------------------------------------------------------------------------


def test_render_shows_the_numbers_and_the_verdict():
    plan = make_plan(140 * GB, GBIT, 900, start_s=120)
    text = render_plan(plan)
    for needle in ["140.0 GB", "1.00 Gbit/s (125 MB/s)", "1120.0 Gbit", "0.80", "1400 s", "120 s", "1520 s",
                   "900 s", "DOES NOT MEET", "620 s", "1.80 Gbit/s", "78.0 GB", "280 s", "400 s", "warm standby",
                   "pre-staged copy", "given"]:
        assert needle in text, needle
    assert "MEETS the RTO with" not in text
    assert all(len(line) <= 100 for line in text.splitlines())


def test_render_of_a_plan_that_meets():
    plan = make_plan(5 * GB, 10 * GBIT, 300, start_s=60, efficiency=1.0, source="measured from region secondary")
    text = render_plan(plan)
    assert "MEETS the RTO with 236 s (3 min 56 s) to spare" in text
    assert "DOES NOT MEET" not in text
    assert "measured from region secondary" in text
    assert "4.0 s" in text  # 40 Gbit ÷ 10 Gbit/s


def test_render_keeps_to_100_columns_for_large_figures():
    plan = make_plan(parse_size("1.5TiB"), parse_bandwidth("100Mbps"), parse_seconds("4h"), start_s=600)
    lines = render_plan(plan).splitlines()
    assert all(len(line) <= 100 for line in lines)
    assert any("13,194,140 Mbit" in line for line in lines)  # bits in the bandwidth's own prefix


def test_to_json():
    plan = make_plan(140 * GB, GBIT, 900, start_s=120)
    data = plan.to_json()
    json.dumps(data, allow_nan=False)
    assert data["size_bytes"] == 140 * GB
    assert data["bandwidth_bps"] == 10**9
    assert (data["cold_restore_s"], data["cold_total_s"], data["margin_s"]) == (1400.0, 1520.0, -620.0)
    assert data["meets"] is False
    assert data["needed_bandwidth_bps"] == math.ceil(140e9 * 8 / (780 * 0.8))  # rounded up: "needs ≥"
    assert isinstance(data["needed_bandwidth_bps"], int)
    assert data["max_size_bytes"] == 78 * GB
    assert [o["name"] for o in data["options"]] == ["warm standby", "more bandwidth", "pre-staged copy"]
    assert data["options"][2]["est_seconds"] == 400.0
    assert data["steps"][0].startswith("transfer: 140.0 GB × 8 = 1120.0 Gbit")


def test_to_json_rounds_seconds_and_keeps_none():
    data = make_plan(GB, 3 * GBIT, 900, start_s=1200).to_json()
    assert data["cold_restore_s"] == round(8 / 2.4, 1) == 3.3
    assert data["needed_bandwidth_bps"] is None
    assert data["options"][1]["est_seconds"] is None
    json.dumps(data, allow_nan=False)

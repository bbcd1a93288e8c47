"""Endpoint monitoring, the pure core: probe an endpoint, keep the samples, learn what normal looks like, judge.

A **probe** is one real request to an OpenAI-compatible endpoint (a short completion, or a golden case's request),
timed end to end. Endpoint failures never raise: they become samples with ``ok=False`` and a short reason. Samples
go to a **SampleStore**, an sqlite file that two processes (the monitor flow and the CLI) may use at once.

``assess`` turns one target's samples (oldest first) into a status, using ``config.Monitor`` for every threshold
(``R`` = ``recent_window``, ``B`` = ``baseline_window``):

- **down**: the last ``down_after`` samples all failed. ``first_failure_ts`` is the start time of the first failed
  sample of the current unbroken failure streak (the RTO clock starts there). ``down`` is declared as soon as
  ``down_after`` failures exist, however few samples there are.
- **unknown**: fewer than ``R`` samples (and not down); or, in ``assess_all``, the newest sample is stale (older than
  ``max(60 s, 10 x (interval + timeout))``: the monitor is not running, so the last verdict proves nothing).
- **degraded**, any of:

  - error rate over the last ``R`` samples >= ``error_rate_threshold``;
  - latency creep: the median latency of the recent window's successful samples has a robust z-score
    >= ``z_threshold`` against the baseline, which is the last ``B`` successful samples *before* the recent window:
    ``z = (recent median - baseline median) / (1.4826 * MAD)``. MAD is floored at 5 % of the baseline median (and
    ``LATENCY_MAD_FLOOR_S``) so that a perfectly flat baseline does not turn every jitter into an infinite z. Only
    slower counts;
  - tokens per response: the same robust z on ``log(1 + tokens)`` (completion tokens), in both directions (a
    collapse to 0-1 tokens is a classic silent failure; a runaway to max_tokens is another). The log scale makes
    these multiplicative steps stand out even when normal answer lengths vary widely; MAD floor 0.05 (about 5 %);
  - golden spot-check: a golden check failed in the recent window, or the latest golden check failed (a wrong model
    stays flagged until a spot-check passes again).

  Latency and tokens compare like with like: when a target has routine (non-golden) samples, golden samples are
  left out of both statistics. The anomaly checks need at least ``MIN_RECENT`` successful samples in the recent
  window and ``min(B, max(MIN_BASELINE, 2R))`` in the baseline; until then they are skipped (the evidence says so).
  The baseline follows the data: a slowdown that persists for longer than ``B`` samples becomes the new normal.
- **healthy** otherwise, with no reasons.

Imports neither Prefect nor boto3: the monitor flow's tasks wrap these functions.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from llmdr.common.sqlitestore import WalStore
from llmdr.config import Monitor
from llmdr.serving.golden import Gate, GoldenCase, judge

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

PING_MAX_TOKENS = 8  # a routine probe asks for a short completion: cheap, but long enough to see tokens collapse
REGION_HEADER = "X-Llmdr-Region"
MAD_SCALE = 1.4826  # makes the MAD of normal data estimate its standard deviation
# Latency's MAD is at least 5 ms: a busy probe host adds milliseconds of scheduling delay to every probe, whatever
# the endpoint; with a 1 ms floor, three probes each ~7 ms late on a 2-core host under load flagged a loopback endpoint
# degraded. A creep must then be ~30 ms (z 4) above the baseline (a 50 ms endpoint turning 100 ms still is), or
# 4 x 1.48 x 5 % of it for endpoints slower than 100 ms.
LATENCY_MAD_FLOOR_S = 0.005
MIN_RECENT = 3
MIN_BASELINE = 20
COLUMNS = ["ts", "target", "url", "ok", "latency_s", "status", "error", "tokens", "golden_ok", "region"]
_ERROR_CHARS = 200


@dataclass
class Sample:
    """One probe of one target. ``error`` is set for failed probes, and for a golden mismatch (``ok`` stays True:
    the endpoint answered; ``golden_ok`` says the answer was wrong)."""

    ts: float  # unix time (UTC) the probe started
    target: str  # region name, or "router"
    url: str
    ok: bool  # answered a correctly shaped 2xx within the timeout
    latency_s: float | None
    status: int | None  # HTTP status, None if no answer
    error: str | None  # short reason ("connection refused", "timeout", "HTTP 503: ...")
    tokens: int | None  # usage.completion_tokens of the answer
    golden_ok: bool | None  # None if no golden check this round; else the spot-check result
    region: str | None = None  # which region answered (the router's X-Llmdr-Region header); None if unknown

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------------- probe


def _request_body(golden: GoldenCase | None, model: str | None, prompt: str) -> tuple[str, dict[str, Any]]:
    """The path and body of the request; a golden case is asked exactly as ``OpenAIEndpoint.answer`` asks it, so the
    answer is comparable with the recorded one."""
    body: dict[str, Any] = {"temperature": 0}
    if model:
        body["model"] = model
    if golden is None:
        return "/v1/completions", body | {"prompt": prompt, "max_tokens": PING_MAX_TOKENS}
    if golden.max_tokens is not None:
        body["max_tokens"] = golden.max_tokens
    if golden.messages is not None:
        return "/v1/chat/completions", body | {"messages": golden.messages}
    return "/v1/completions", body | {"prompt": golden.prompt}


def _reason(exc: BaseException) -> str:
    """A short, stable reason for a transport failure."""
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        inner = exc.reason
        if isinstance(inner, BaseException):
            return _reason(inner)
        return str(inner)[:_ERROR_CHARS]
    if isinstance(exc, TimeoutError):  # socket.timeout is TimeoutError since 3.10
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "connection closed without an answer"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host ({exc.strerror})"
    if isinstance(exc, http.client.HTTPException):
        return f"bad HTTP answer ({type(exc).__name__})"
    return (str(exc) or type(exc).__name__)[:_ERROR_CHARS]


def _http_error_message(exc: urllib.error.HTTPError) -> str:
    try:
        raw = exc.read(4096)
    except (OSError, http.client.HTTPException):
        raw = b""
    try:
        return str(json.loads(raw)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return raw.decode("utf-8", "replace").strip() or str(exc.reason)


def _answer_text(payload: Any, chat: bool) -> str:
    """The answer's text; ValueError if the payload is not shaped like an OpenAI completion."""
    try:
        choice = payload["choices"][0]
        text = choice["message"]["content"] if chat else choice["text"]
    except (KeyError, IndexError, TypeError):
        raise ValueError("no choices[0] " + ("message.content" if chat else "text")) from None
    if not isinstance(text, str):
        raise ValueError("the answer text is not a string")
    return text


def _completion_tokens(payload: dict) -> int | None:
    usage = payload.get("usage")
    value = usage.get("completion_tokens") if isinstance(usage, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def probe(target: str, url: str, *, timeout: float, model: str | None = None, golden: GoldenCase | None = None,
          prompt: str = "ping", gate: Any = None) -> Sample:
    """One real request to ``url`` (the endpoint's base URL), timed end to end.

    A short completion of ``prompt``, or ``golden``'s request, whose answer is then judged against the recorded one
    by ``gate`` (the bundle's ``golden_gate:``; None: exact) into ``golden_ok``. Unreachable, slow, erroring or malformed endpoints give ``ok=False`` samples; only programming
    errors (a malformed URL, a non-positive timeout) raise.
    """
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    path, body = _request_body(golden, model, prompt)
    req = urllib.request.Request(url.rstrip("/") + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    ts = time.time()
    t0 = time.monotonic()
    status: int | None = None
    region: str | None = None

    def failed(error: str) -> Sample:
        return Sample(ts, target, url, False, time.monotonic() - t0, status, error, None, None, region)

    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - a configured endpoint
            status = resp.status
            region = resp.headers.get(REGION_HEADER)
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        status, region = exc.code, exc.headers.get(REGION_HEADER) if exc.headers else None
        return failed(f"HTTP {exc.code}: {_http_error_message(exc)}"[:_ERROR_CHARS])
    except (OSError, http.client.HTTPException) as exc:  # URLError is an OSError
        return failed(_reason(exc))
    latency = time.monotonic() - t0
    if latency > timeout:  # the socket timeout is per read: a server that trickles bytes can exceed it in total
        return failed(f"timeout (answered after {latency:.3f} s)")
    if not 200 <= status < 300:
        return failed(f"HTTP {status}")
    try:
        payload = json.loads(raw)
        text = _answer_text(payload, chat=path.endswith("chat/completions"))
    except ValueError as exc:
        return failed(f"bad response: {exc}"[:_ERROR_CHARS])
    golden_ok: bool | None = None
    error: str | None = None
    if golden is not None:
        verdict = judge(golden, text, Gate.of(gate))
        golden_ok = verdict.ok
        if not golden_ok:
            why = f"similarity {verdict.similarity:.2f}"
            if verdict.mode == "similarity":
                why = f"similarity score {verdict.score:.2f} < {verdict.threshold}"
            elif verdict.mode == "equivalent":
                why = f"equivalent score {verdict.score:.2f} < {verdict.threshold}, {why}"
            error = f"golden case {golden.id}: answer differs ({why})"
    return Sample(ts, target, url, True, latency, status, error, _completion_tokens(payload), golden_ok, region)


# ---------------------------------------------------------------------------------------------------------- store


def samples_frame(samples: Iterable[Sample]) -> "pd.DataFrame":
    """Samples as a DataFrame with the same columns and dtypes as ``SampleStore.frame``."""
    import pandas as pd

    return _typed(pd.DataFrame([asdict(s) for s in samples], columns=COLUMNS))


def _typed(df: "pd.DataFrame") -> "pd.DataFrame":
    return df.astype({"ts": "float64", "target": "object", "url": "object", "ok": "bool", "latency_s": "float64",
                      "status": "Int64", "error": "object", "tokens": "Int64", "golden_ok": "boolean",
                      "region": "object"})


class SampleStore(WalStore):
    """Probe samples in an sqlite file (``WalStore``: the monitor flow writes while the CLI reads)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, (
            "CREATE TABLE IF NOT EXISTS samples (ts REAL NOT NULL, target TEXT NOT NULL, url TEXT NOT NULL,"
            " ok INTEGER NOT NULL, latency_s REAL, status INTEGER, error TEXT, tokens INTEGER,"
            " golden_ok INTEGER, region TEXT)",
            "CREATE INDEX IF NOT EXISTS samples_target_ts ON samples (target, ts)",
        ))

    def add(self, samples: Iterable[Sample]) -> None:
        rows = [(s.ts, s.target, s.url, int(s.ok), s.latency_s, s.status, s.error, s.tokens,
                 None if s.golden_ok is None else int(s.golden_ok), s.region) for s in samples]
        if rows:
            with self._connect() as con:
                con.executemany(f"INSERT INTO samples ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                                rows)

    def frame(self, target: str | None = None, *, since: float | None = None,
              limit: int | None = None) -> "pd.DataFrame":
        """Samples oldest first; ``limit`` keeps the newest ``limit`` of them."""
        import pandas as pd

        where, params = [], []
        if target is not None:
            where.append("target = ?")
            params.append(target)
        if since is not None:
            where.append("ts >= ?")
            params.append(since)
        sql = f"SELECT rowid AS _row, {', '.join(COLUMNS)} FROM samples"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY ts DESC, rowid DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        with self._connect() as con:
            df = pd.read_sql(f"SELECT * FROM ({sql}) ORDER BY ts, _row", con, params=params)
        return _typed(df.drop(columns="_row").reset_index(drop=True))

    def last_row(self) -> int:
        """The newest sample's row number (0 when empty): where a reader that tails the store starts."""
        with self._connect() as con:
            return int(con.execute("SELECT COALESCE(MAX(rowid), 0) FROM samples").fetchone()[0])

    def rows_after(self, row: int, limit: int = 10_000) -> list[tuple[int, Sample]]:
        """Samples written after row ``row``, oldest first, with their row numbers (the metrics exporter's tail)."""
        with self._connect() as con:
            rows = con.execute(f"SELECT rowid, {', '.join(COLUMNS)} FROM samples WHERE rowid > ? ORDER BY rowid "
                               "LIMIT ?", (row, limit)).fetchall()
        return [(r[0], Sample(r[1], r[2], r[3], bool(r[4]), *r[5:9], None if r[9] is None else bool(r[9]), r[10]))
                for r in rows]

    def prune(self, older_than: float) -> int:
        """Delete samples taken before ``older_than`` (unix time); returns how many."""
        with self._connect() as con:
            return con.execute("DELETE FROM samples WHERE ts < ?", (older_than,)).rowcount

    def targets(self) -> list[str]:
        """Every target with samples, sorted. One index seek per target (a skip scan), not a walk over every sample:
        the metrics exporter asks at every refresh, and a week of 2 s probes is ~300,000 samples per target."""
        with self._connect() as con:
            return [r[0] for r in con.execute(
                "WITH RECURSIVE t(target) AS (SELECT MIN(target) FROM samples UNION ALL "
                "SELECT (SELECT MIN(target) FROM samples WHERE target > t.target) FROM t WHERE t.target IS NOT NULL) "
                "SELECT target FROM t WHERE target IS NOT NULL")]

    def _failure_streak(self, target: str) -> tuple[int, float | None]:
        """How many samples the target's current failure streak holds (all of them since its last success) and when
        it began (None if the newest sample succeeded)."""
        with self._connect() as con:
            row = con.execute("SELECT COUNT(*), MIN(ts) FROM samples WHERE target = ? AND ts > COALESCE("
                              "(SELECT MAX(ts) FROM samples WHERE target = ? AND ok = 1), -1e300)",
                              (target, target)).fetchone()
        return int(row[0]), row[1]


# --------------------------------------------------------------------------------------------------------- assess


@dataclass
class Assessment:
    """A target's status with the reasons (empty when healthy) and the numbers behind it.

    ``evidence`` keys: ``n``, ``last_ts``, ``consecutive_failures``, ``first_failure_ts``, ``last_error``,
    ``recent_n``, ``recent_errors``, ``error_rate``, ``latency`` and ``tokens`` (``baseline_n``,
    ``baseline_median``, ``baseline_mad``, ``mad_used``, ``recent_n``, ``recent_median``, ``z``, or ``skipped``;
    the tokens' MADs are on the log1p scale, ``baseline_mad_log1p``, ``mad_used_log1p``), ``golden``
    (``recent_checks``, ``recent_failed``, ``last_ts``, ``last_ok``), ``settings``; ``age_s`` from ``assess_all``.
    """

    target: str
    status: str  # "healthy" | "degraded" | "down" | "unknown"
    reasons: list[str] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "status": self.status, "reasons": list(self.reasons),
                "evidence": self.evidence}


def _num(x: Any, digits: int = 6) -> float | None:
    """A JSON-ready float (None for missing or non-finite values)."""
    if x is None:
        return None
    x = float(x)
    return round(x, digits) if math.isfinite(x) else None


def _robust_z(baseline: np.ndarray, recent: np.ndarray, min_baseline: int, *, floor: float,
              relative_floor: float = 0.05) -> dict[str, Any]:
    """Robust z of the recent median against the baseline: (recent median - median) / (1.4826 MAD), MAD floored at
    ``relative_floor`` of the median and at ``floor``."""
    if len(baseline) < min_baseline or len(recent) < MIN_RECENT:
        return {"skipped": f"need {min_baseline} baseline and {MIN_RECENT} recent samples",
                "baseline_n": len(baseline), "recent_n": len(recent)}
    med = float(np.median(baseline))
    mad = float(np.median(np.abs(baseline - med)))
    mad_used = max(mad, relative_floor * abs(med), floor)
    recent_med = float(np.median(recent))
    return {"baseline_n": len(baseline), "baseline_median": _num(med), "baseline_mad": _num(mad),
            "mad_used": _num(mad_used), "recent_n": len(recent), "recent_median": _num(recent_med),
            "z": _num((recent_med - med) / (MAD_SCALE * mad_used), 3)}


def _token_z(baseline: np.ndarray, recent: np.ndarray, min_baseline: int) -> dict[str, Any]:
    """Robust z of tokens per response on the log(1 + tokens) scale, where a collapse to 0 or a runaway to
    max_tokens is a large step whatever the spread of normal answer lengths; medians are reported in tokens."""
    baseline, recent = baseline[~np.isnan(baseline)], recent[~np.isnan(recent)]
    out = _robust_z(np.log1p(baseline), np.log1p(recent), min_baseline, floor=0.05, relative_floor=0.0)
    if "z" in out:
        out = {"baseline_n": out["baseline_n"], "baseline_median": _num(np.median(baseline)),
               "baseline_mad_log1p": out["baseline_mad"], "mad_used_log1p": out["mad_used"],
               "recent_n": out["recent_n"], "recent_median": _num(np.median(recent)), "z": out["z"]}
    return out


def _golden_codes(col: "pd.Series") -> np.ndarray:
    """golden_ok as -1 (no check), 0 (failed), 1 (passed), whatever the column's dtype."""
    present = col.notna().to_numpy()
    passed = np.array([bool(v) if p else False for v, p in zip(col.tolist(), present, strict=True)], dtype=bool)
    return np.where(present, passed.astype(np.int8), np.int8(-1))


def _down_reason(evidence: dict[str, Any], settings: Monitor) -> str:
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(evidence["first_failure_ts"]))
    return (f"the last {evidence['consecutive_failures']} probes failed (down after {settings.down_after}), since "
            f"{since}: {evidence['last_error'] or 'no answer'}")


def assess(frame: "pd.DataFrame", settings: Monitor) -> Assessment:
    """Judge one target from its samples (oldest first); the rules are in the module docstring."""
    R, B = settings.recent_window, settings.baseline_window  # noqa: N806 - the docstring's names
    n = len(frame)
    target = str(frame["target"].iloc[-1]) if n else ""
    evidence: dict[str, Any] = {"n": n, "settings": {
        "down_after": settings.down_after, "recent_window": R, "baseline_window": B,
        "z_threshold": settings.z_threshold, "error_rate_threshold": settings.error_rate_threshold}}
    if n == 0:
        return Assessment(target, "unknown", ["no samples yet"], evidence)

    ts = frame["ts"].to_numpy(dtype=float)
    ok = frame["ok"].to_numpy(dtype=bool)
    latency = frame["latency_s"].astype("float64").to_numpy(dtype=float, na_value=np.nan)
    tokens = frame["tokens"].astype("Float64").to_numpy(dtype=float, na_value=np.nan)
    golden = _golden_codes(frame["golden_ok"])
    errors = frame["error"].tolist()

    good = np.flatnonzero(ok)
    streak = n if len(good) == 0 else n - 1 - int(good[-1])
    first_failure_ts = float(ts[n - streak]) if streak else None
    last_error = next((e for e, o in zip(reversed(errors), ok[::-1], strict=True) if not o and e), None)
    recent = slice(max(0, n - R), n)
    recent_n = recent.stop - recent.start
    recent_errors = int(recent_n - ok[recent].sum())
    evidence |= {"last_ts": float(ts[-1]), "consecutive_failures": streak, "first_failure_ts": first_failure_ts,
                 "last_error": last_error, "recent_n": recent_n, "recent_errors": recent_errors,
                 "error_rate": _num(recent_errors / recent_n, 4)}

    # latency and tokens: successful samples, routine ones only when there are any (golden requests differ)
    comparable = ok & (golden == -1) if (golden == -1).any() else ok.copy()
    idx = np.arange(n)
    in_recent = idx >= recent.start
    base_idx = np.flatnonzero(comparable & ~in_recent)[-B:]
    rec_idx = np.flatnonzero(comparable & in_recent)
    min_baseline = min(B, max(MIN_BASELINE, 2 * R))
    lat = _robust_z(latency[base_idx], latency[rec_idx], min_baseline, floor=LATENCY_MAD_FLOOR_S)
    tok = _token_z(tokens[base_idx], tokens[rec_idx], min_baseline)
    checks = np.flatnonzero(golden >= 0)
    recent_checks = checks[checks >= recent.start]
    recent_failed = int((golden[recent_checks] == 0).sum())
    evidence |= {"latency": lat, "tokens": tok, "golden": {
        "recent_checks": len(recent_checks), "recent_failed": recent_failed,
        "last_ts": float(ts[checks[-1]]) if len(checks) else None,
        "last_ok": bool(golden[checks[-1]]) if len(checks) else None}}

    if streak >= settings.down_after:
        return Assessment(target, "down", [_down_reason(evidence, settings)], evidence)
    if n < R:
        return Assessment(target, "unknown", [f"{n} samples so far; {R} needed to judge"], evidence)

    reasons = []
    if recent_errors / recent_n >= settings.error_rate_threshold:
        reasons.append(f"{recent_errors} of the last {recent_n} probes failed (error rate "
                       f"{recent_errors / recent_n:.0%} >= {settings.error_rate_threshold:.0%}); "
                       f"latest: {last_error or 'no answer'}")
    if lat.get("z") is not None and lat["z"] >= settings.z_threshold:
        reasons.append(f"latency median {lat['recent_median']:.3f} s is {lat['z']:.1f} robust z above baseline "
                       f"{lat['baseline_median']:.3f} s (threshold {settings.z_threshold:g})")
    if tok.get("z") is not None and abs(tok["z"]) >= settings.z_threshold:
        way = "above" if tok["z"] > 0 else "below"
        reasons.append(f"tokens per response median {tok['recent_median']:g} is {abs(tok['z']):.1f} robust z {way} "
                       f"baseline {tok['baseline_median']:g} (threshold {settings.z_threshold:g})")
    if recent_failed:
        reasons.append(f"{recent_failed} of {len(recent_checks)} golden spot-checks in the recent window failed")
    elif len(checks) and golden[checks[-1]] == 0:
        reasons.append("the latest golden spot-check failed: " + (errors[checks[-1]] or "answer differs"))
    return Assessment(target, "degraded" if reasons else "healthy", reasons, evidence)


def stale_after(settings: Monitor) -> float:
    """Seconds after which a target's newest sample no longer describes it (the monitor has stopped probing)."""
    return max(60.0, 10 * (settings.interval.total_seconds() + settings.timeout.total_seconds()))


def assess_all(store: SampleStore, settings: Monitor, *, now: float | None = None) -> dict[str, Assessment]:
    """``assess`` for every target in the store, on its newest samples; a target whose newest sample is older than
    ``stale_after(settings)`` at ``now`` is unknown."""
    now = time.time() if now is None else now
    out: dict[str, Assessment] = {}
    for target in store.targets():
        frame = store.frame(target, limit=2 * settings.baseline_window + settings.recent_window)
        a = assess(frame, settings)
        if a.evidence.get("consecutive_failures") == len(frame):  # the streak may be longer than the frame
            a.evidence["consecutive_failures"], a.evidence["first_failure_ts"] = store._failure_streak(target)
            if a.status == "down":
                a.reasons = [_down_reason(a.evidence, settings)]
        age = now - a.evidence["last_ts"]
        a.evidence["age_s"] = _num(age, 3)
        if age > stale_after(settings):
            a.evidence["stale_status"] = a.status
            a.reasons = [f"the newest sample is {age:.0f} s old (more than {stale_after(settings):.0f} s): is the "
                         f"monitor running? It said {a.status} then"]
            a.status = "unknown"
        out[target] = a
    return out

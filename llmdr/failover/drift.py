"""Drift on real traffic: are an endpoint's real answers still like the ones it gave before?

Opt-in (``monitor.drift``). A share (``sample``) of the responses ``llmdr serve`` sends is reduced by
:func:`features` to **counts**, and only those are stored (``DriftStore``, sqlite beside the probe samples):

- the answer's length (completion tokens when the server counted them, else words);
- whether it contains a refusal phrase (``refusal_phrases``), as yes/no;
- its words hashed, with a per-installation secret salt, into ``BUCKETS`` buckets, as bucket -> count.

The text, the prompt and the words themselves are never stored: without the salt (``drift-salt``, mode 0600 in the
monitor's state folder) the buckets cannot be turned back into words, and a bucket mixes many words anyway.

``assess_drift`` judges one endpoint's newest ``recent`` sampled responses against the ``baseline`` before them:

- **length**: robust z of the median ``log(1 + length)`` (MAD floored at 0.05), either way, >= ``z_threshold``;
- **refusals**: the recent refusal rate exceeds the baseline's by >= ``refusal_delta`` (and at least 3 refusals);
- **vocabulary**: the Jensen-Shannon distance (base 2, 0..1) between the recent and baseline bucket distributions
  exceeds the baseline's own by >= ``js_threshold``. The baseline's own is the median distance of each
  ``recent``-sized slice of the baseline from the rest of it: samples of a few thousand words from one and the same
  distribution are already ~0.17 apart (256 buckets), so a fixed threshold on the raw distance would either fire on
  noise or miss real shifts. Measured on Zipf-distributed answers (500 baseline, 100 recent, ~20 words each): the
  excess is -0.02..0.005 for the same distribution, 0.12..0.23 when 30 % of answers become refusals, 0.13..0.19 when
  half of them use a shifted vocabulary.

Any of them: status ``drift`` with the reasons; none: ``normal``; too few samples: ``unknown``. Imports neither
Prefect nor boto3.

**Where the answers come from**: a tee in ``llmdr serve`` (:func:`tee`, wired by ``llmdr serve --drift-config``,
which ``llmdr replica start`` passes when ``monitor.drift`` is set). Not the Caddy router, whose access log cannot
hold response bodies, and not the monitor's probes, which are synthetic prompts, not real traffic. Streamed answers
are not sampled (a stream is never held whole); servers llmdr does not run (vLLM, TGI behind ``serving.command``)
would need the same tee in front of them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmdr.common.sqlitestore import WalStore
from llmdr.config import Config, Drift

BUCKETS = 256
MAD_SCALE = 1.4826
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?", re.UNICODE)


@dataclass
class Features:
    """What is kept of one response: counts, never text."""

    length: int
    refusal: bool
    buckets: dict[int, int]


def load_salt(path: Path) -> bytes:
    """The installation's secret salt for the word buckets, made on first use (mode 0600)."""
    try:
        return bytes.fromhex(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        path.parent.mkdir(parents=True, exist_ok=True)
        salt = secrets.token_bytes(16)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(salt.hex())
        return salt


def features(text: str, settings: Drift, salt: bytes, *, tokens: int | None = None) -> Features:
    low = text.lower()
    words = _WORD.findall(low)
    buckets: dict[int, int] = {}
    for w in words:
        b = int.from_bytes(hashlib.blake2b(w.encode(), key=salt, digest_size=4).digest(), "big") % BUCKETS
        buckets[b] = buckets.get(b, 0) + 1
    refusal = any(p.lower() in low for p in settings.refusal_phrases)
    return Features(tokens if tokens is not None else len(words), refusal, buckets)


def drift_path(cfg: Config) -> Path:
    """The sampled responses' counts of ``cfg``'s bundle; its salt is ``drift-salt`` beside it."""
    return cfg.bundle_state_path / "monitor" / "drift.sqlite"


class DriftStore(WalStore):
    """Sampled responses' features per target, in sqlite (WAL: the server writes while the monitor reads)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, (
            "CREATE TABLE IF NOT EXISTS responses (ts REAL NOT NULL, target TEXT NOT NULL, "
            "length INTEGER NOT NULL, refusal INTEGER NOT NULL, buckets TEXT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS responses_target_ts ON responses (target, ts)",
        ))

    def add(self, ts: float, target: str, f: Features) -> None:
        with self._connect() as con:
            con.execute("INSERT INTO responses VALUES (?, ?, ?, ?, ?)",
                        (ts, target, f.length, int(f.refusal), json.dumps(f.buckets, separators=(",", ":"))))

    def newest(self, target: str, limit: int) -> list[Features]:
        """The target's newest ``limit`` responses, oldest first."""
        with self._connect() as con:
            rows = con.execute("SELECT length, refusal, buckets FROM responses WHERE target = ? "
                               "ORDER BY ts DESC, rowid DESC LIMIT ?", (target, limit)).fetchall()
        return [Features(r[0], bool(r[1]), {int(k): v for k, v in json.loads(r[2]).items()}) for r in reversed(rows)]

    def targets(self) -> list[str]:
        with self._connect() as con:
            return [r[0] for r in con.execute("SELECT DISTINCT target FROM responses ORDER BY target")]

    def prune(self, older_than: float) -> int:
        with self._connect() as con:
            return con.execute("DELETE FROM responses WHERE ts < ?", (older_than,)).rowcount


def sampled(settings: Drift, rng: random.Random | None = None) -> bool:
    """Is this response one of the ``sample`` share kept?"""
    return (rng or random).random() < settings.sample


def tee(cfg: Config, target: str, *, rng: random.Random | None = None) -> Callable[[str, int | None], None]:
    """The hook ``llmdr serve`` calls with every whole answer it sends (text, completion tokens): keeps the
    ``monitor.drift.sample`` share of them, as counts, for ``target``. Never raises: sampling must not break an
    answer."""
    settings = cfg.monitor.drift
    if settings is None:
        raise ValueError("monitor.drift is not set")
    store = DriftStore(drift_path(cfg))
    salt = load_salt(drift_path(cfg).parent / "drift-salt")
    rng = rng or random.Random()

    def observe(text: str, tokens: int | None) -> None:
        if not sampled(settings, rng):
            return
        try:
            store.add(time.time(), target, features(text, settings, salt, tokens=tokens))
        except Exception as exc:  # noqa: BLE001 - a full disk or a locked file must not fail the answer
            import logging

            logging.getLogger(__name__).warning("drift sample not kept: %s", exc)

    return observe


# -------------------------------------------------------------------------------------------------------- assess


@dataclass
class DriftAssessment:
    target: str
    status: str  # "normal" | "drift" | "unknown"
    reasons: list[str] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "status": self.status, "reasons": list(self.reasons),
                "evidence": self.evidence}


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def js_distance(p: dict[int, int], q: dict[int, int]) -> float:
    """Jensen-Shannon distance, base 2 (0: same distribution, 1: disjoint), of two count tables."""
    sp, sq = sum(p.values()), sum(q.values())
    if not sp or not sq:
        return 0.0
    div = 0.0
    for k in set(p) | set(q):
        a, b = p.get(k, 0) / sp, q.get(k, 0) / sq
        m = (a + b) / 2
        if a:
            div += a / 2 * math.log2(a / m)
        if b:
            div += b / 2 * math.log2(b / m)
    return math.sqrt(max(0.0, min(1.0, div)))


def _sum(rows: list[Features]) -> dict[int, int]:
    out: dict[int, int] = {}
    for r in rows:
        for k, v in r.buckets.items():
            out[k] = out.get(k, 0) + v
    return out


def assess_drift(target: str, rows: list[Features], settings: Drift) -> DriftAssessment:
    """Judge ``rows`` (oldest first; the newest ``recent`` against up to ``baseline`` before them)."""
    R, B = settings.recent, settings.baseline  # noqa: N806 - the module docstring's names
    recent, base = rows[-R:], rows[:-R][-B:]
    evidence: dict[str, Any] = {"recent_n": len(recent), "baseline_n": len(base), "settings": {
        "recent": R, "baseline": B, "z_threshold": settings.z_threshold, "refusal_delta": settings.refusal_delta,
        "js_threshold": settings.js_threshold}}
    need = min(B, 2 * R)
    if len(rows) < R + need:
        return DriftAssessment(target, "unknown", [f"{len(rows)} sampled responses so far; {R + need} needed"],
                               evidence)
    bl, rl = [math.log1p(r.length) for r in base], [math.log1p(r.length) for r in recent]
    med = _median(bl)
    mad = max(_median([abs(x - med) for x in bl]), 0.05)
    z = (_median(rl) - med) / (MAD_SCALE * mad)
    b_ref = sum(r.refusal for r in base) / len(base)
    r_ref_n = sum(r.refusal for r in recent)
    r_ref = r_ref_n / len(recent)
    js = js_distance(_sum(base), _sum(recent))
    own = _median([js_distance(_sum(base[:i] + base[i + R:]), _sum(base[i:i + R]))
                   for i in range(0, len(base) - R + 1, R)])
    evidence |= {"length": {"baseline_median": _median([r.length for r in base]),
                            "recent_median": _median([r.length for r in recent]), "z": round(z, 3)},
                 "refusals": {"baseline_rate": round(b_ref, 4), "recent_rate": round(r_ref, 4),
                              "recent_count": r_ref_n},
                 "vocabulary": {"js_distance": round(js, 4), "baseline_own": round(own, 4),
                                "excess": round(js - own, 4)}}
    reasons = []
    if abs(z) >= settings.z_threshold:
        reasons.append(f"answer length median {evidence['length']['recent_median']:g} is {abs(z):.1f} robust z "
                       f"{'above' if z > 0 else 'below'} baseline {evidence['length']['baseline_median']:g} "
                       f"(threshold {settings.z_threshold:g})")
    if r_ref - b_ref >= settings.refusal_delta and r_ref_n >= 3:
        reasons.append(f"refusals rose to {r_ref:.0%} of answers from {b_ref:.0%} (threshold +"
                       f"{settings.refusal_delta:.0%})")
    if js - own >= settings.js_threshold:
        reasons.append(f"vocabulary shifted: Jensen-Shannon distance {js:.2f} from the baseline's, {js - own:.2f} "
                       f"above its own spread {own:.2f} (threshold {settings.js_threshold:g})")
    return DriftAssessment(target, "drift" if reasons else "normal", reasons, evidence)

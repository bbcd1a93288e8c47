"""Notifications: tell people when llmdr fails over, fails back, finds a replica that does not verify, or sees a GPU
heading for failure (``hardware_notice``; the monitor sends it at most once per GPU per ``notify_cooldown``), or an
endpoint that turned degraded or down and its recovery (``endpoint_notice``; at most once per endpoint per
``monitor.notify_cooldown`` unless it gets worse).

Two channels, either or both (``Config.notifications``): a webhook (one JSON POST; Slack/Teams-style incoming webhooks
show its top-level ``text``) and a Prefect notification block named ``"<block-type-slug>/<name>"`` (Slack, Teams,
email, a custom webhook...). Sending is best effort: ``notify`` never raises — a failover must not fail because the
chat service is down. It returns one ``Delivery`` per channel and logs a warning for each one that failed.

A webhook URL usually embeds a token, so it is treated as a secret: no log line, ``Delivery`` or error message ever
contains it, only ``$VARIABLE`` (when it came from ``webhook_url_env``) or the host name.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

from llmdr.config import Notifications

log = logging.getLogger(__name__)

KINDS = ("failover", "failback", "verification_failed", "endpoint_down", "drill", "readiness", "hardware_degraded",
         "endpoint_degraded", "endpoint_recovered", "endpoint_drift")
SEVERITIES = ("info", "warning", "critical")
RETRY_DELAY_S = 0.25  # the one quick retry after a connection error or a 5xx
_URL = re.compile(r"(https?)://([^/\s'\"<>]+)[^\s'\"<>]*")


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Notice:
    """One thing worth telling a human: a one-line title, a short plain-text/markdown body (what happened, the
    evidence, what to do next) and JSON-ready details for machines."""

    kind: str  # one of KINDS
    title: str
    body: str
    severity: str = "info"  # one of SEVERITIES
    data: dict = field(default_factory=dict)  # JSON-ready: bundle, regions, rto_s, run ids...
    at: str = field(default_factory=_utc_now)  # UTC, ISO 8601; fixed when the notice is made, not when sent

    def to_json(self) -> dict:
        out: dict[str, Any] = {"source": "llmdr", "kind": self.kind, "severity": self.severity, "timestamp": self.at,
                               "title": self.title, "body": self.body}
        if self.data.get("bundle") is not None:
            out["bundle"] = str(self.data["bundle"])
        out["data"] = self.data
        return out

    def to_args(self) -> dict:
        """The notice as a task argument: ``Notice(**args)`` rebuilds it (its time is set again when it is made)."""
        return {"kind": self.kind, "title": self.title, "body": self.body, "severity": self.severity,
                "data": self.data}


@dataclass
class Delivery:
    """How sending a notice through one channel went. ``detail`` is an HTTP status or the error, never a URL."""

    channel: str  # "webhook" | "prefect:<block>"
    ok: bool
    detail: str


def notify(settings: Notifications | None, notice: Notice, *, env: Mapping[str, str] | None = None) -> list[Delivery]:
    """Send ``notice`` through every configured channel; never raises.

    When both ``webhook_url_env`` and ``webhook_url`` are set, the environment variable wins (it is where secrets
    belong). ``env`` defaults to ``os.environ``.
    """
    if settings is None:
        return []
    env = os.environ if env is None else env
    deliveries: list[Delivery] = []
    if settings.webhook_url_env or settings.webhook_url:
        deliveries.append(_guarded("webhook", lambda: _send_webhook(settings, notice, env)))
    if settings.prefect_block:
        channel = f"prefect:{settings.prefect_block}"
        deliveries.append(_guarded(channel, lambda: _send_block(settings.prefect_block, notice)))
    for d in deliveries:
        if not d.ok:
            log.warning("notification %r not delivered via %s: %s", notice.title, d.channel, d.detail)
    return deliveries


def _guarded(channel: str, send: Callable[[], Delivery]) -> Delivery:
    try:
        return send()
    except Exception as exc:  # a notification must never break the operation it reports on
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return Delivery(channel, False, _scrub(f"{type(exc).__name__}: {first_line}".rstrip(": ")))


def _scrub(text: str) -> str:
    """Cut every URL in ``text`` down to scheme and host: paths and queries are where webhook tokens live."""
    return _URL.sub(lambda m: f"{m.group(1)}://{m.group(2).rpartition('@')[2]}/…", text)


class _ScrubUrls(logging.Filter):
    """Rewrites records so URLs keep only their host (httpx logs every request's full URL at INFO)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = _scrub(record.getMessage()), None
        return True


@contextlib.contextmanager
def _urls_scrubbed_in_logs(*loggers: str):
    flt = _ScrubUrls()
    targets = [logging.getLogger(name) for name in loggers]
    for lg in targets:
        lg.addFilter(flt)
    try:
        yield
    finally:
        for lg in targets:
            lg.removeFilter(flt)


# -- webhook -----------------------------------------------------------------------------------------------------


def _send_webhook(settings: Notifications, notice: Notice, env: Mapping[str, str]) -> Delivery:
    if settings.webhook_url_env:
        var = settings.webhook_url_env
        url = (env.get(var) or "").strip()
        where = f"${var}"
        if not url:
            return Delivery("webhook", False, f"environment variable {var} is not set: set it to the webhook URL "
                                              f"(notifications.webhook_url_env in llmdr.yaml names it)")
    else:
        url = settings.webhook_url or ""
        where = urlsplit(url).hostname or "?"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        # never echo the value: it may be a token pasted into the wrong variable
        return Delivery("webhook", False, f"the webhook URL in {where} is not an http(s) URL")

    payload = dict(notice.to_json())
    payload["text"] = f"{notice.title}\n\n{notice.body}"
    data = json.dumps(payload, default=str).encode()
    timeout_s = settings.timeout.total_seconds()
    return _post_with_retry(url, data, timeout_s, where)


def _post_with_retry(url: str, data: bytes, timeout_s: float, where: str) -> Delivery:
    """POST once; once more after a connection error or a 5xx. Not after a timeout: the receiver may have the
    message already, and a failover should not wait twice. Not after a 4xx: a wrong URL or token stays wrong."""
    problem = ""
    for attempt in (1, 2):
        if attempt == 2:
            time.sleep(RETRY_DELAY_S)
        try:
            status = _post(url, data, timeout_s)
        except urllib.error.HTTPError as exc:
            status = exc.code
            exc.close()
        except TimeoutError:
            return Delivery("webhook", False, f"no answer from {where} within {timeout_s:g} s (timed out)")
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                return Delivery("webhook", False, f"no answer from {where} within {timeout_s:g} s (timed out)")
            problem = f"cannot connect to {where}: {_reason(exc.reason)}"
            continue
        except (OSError, http.client.HTTPException) as exc:  # reset or closed mid-exchange
            problem = f"connection to {where} failed: {_reason(exc)}"
            continue
        if 200 <= status < 300:
            return Delivery("webhook", True, f"HTTP {status} from {where}" + (" on the 2nd attempt" if attempt == 2
                                                                              else ""))
        problem = f"HTTP {status} from {where}"
        if status < 500:
            return Delivery("webhook", False, f"{problem}: check the webhook URL and its token")
    return Delivery("webhook", False, f"{problem} (after 2 attempts)")


def _post(url: str, data: bytes, timeout_s: float) -> int:
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": "application/json; charset=utf-8",
                                          "User-Agent": "llmdr-notify"})
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        resp.read(65536)  # drain a little so keep-alive servers see a complete exchange
        return resp.status


def _reason(exc: object) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return _scrub(str(exc)) or type(exc).__name__


# -- Prefect notification block ----------------------------------------------------------------------------------


def _send_block(ref: str, notice: Notice) -> Delivery:
    channel = f"prefect:{ref}"
    slug, _, name = ref.partition("/")
    if not slug or not name:
        return Delivery(channel, False, f"prefect_block {ref!r} is not '<block-type-slug>/<name>', "
                                        "e.g. 'slack-webhook/ops'")
    from llmdr.integrations.prefect import call_sync, load_block

    try:
        block = load_block(ref)
    except ValueError as exc:
        return Delivery(channel, False, _scrub(f"{exc}: create a '{slug}' block named '{name}' in the Prefect UI "
                                               f"(Blocks) or in Python with the block class's .save({name!r})"))
    if not callable(getattr(block, "notify", None)):
        return Delivery(channel, False, f"block {ref!r} is a {type(block).__name__}, not a notification block")
    # Prefect's notification blocks swallow failures unless asked to raise: ask, so a failure is reported as one.
    raising = getattr(block, "raise_on_failure", None)
    with raising() if raising is not None else contextlib.nullcontext(), _urls_scrubbed_in_logs("httpx", "apprise"):
        call_sync(block.notify, notice.body, notice.title)
    return Delivery(channel, True, f"sent through {type(block).__name__}")


# -- consistent notices ------------------------------------------------------------------------------------------


def _evidence(details: Mapping[str, Any] | Sequence[str] | None) -> list[str]:
    if not details:
        return []
    if isinstance(details, Mapping):
        return [f"- {k}: {v}" for k, v in details.items()]
    return [f"- {line}" for line in details]


def _details_data(details: Mapping[str, Any] | Sequence[str] | None) -> Any:
    if details is None:
        return None
    return dict(details) if isinstance(details, Mapping) else list(details)


def _rto(rto_s: float | None) -> str:
    return "unknown" if rto_s is None else f"{rto_s:.1f} s"


def _body(happened: str, evidence: list[str], next_steps: list[str]) -> str:
    lines = [happened]
    if evidence:
        lines += ["", "Evidence:", *evidence]
    lines += ["", "Next:", *[f"- {s}" for s in next_steps]]
    return "\n".join(lines)


def failover_notice(bundle: str, from_region: str | None, to_region: str, *, rto_s: float | None, reason: str,
                    ok: bool, details: Mapping[str, Any] | Sequence[str] | None = None) -> Notice:
    """Traffic moved (``ok``) or a failover was tried and traffic stayed where it was (not ``ok``)."""
    src = from_region or "(none)"
    data = {"bundle": bundle, "from_region": from_region, "to_region": to_region, "rto_s": rto_s, "reason": reason,
            "ok": ok, "details": _details_data(details)}
    if ok:
        title = f"llmdr: {bundle} failed over {src} -> {to_region} (RTO {_rto(rto_s)})"
        happened = (f"Traffic for {bundle} now goes to {to_region}; {src} stopped serving. Reason: {reason}. "
                    f"Time to recover (RTO): {_rto(rto_s)}.")
        next_steps = [f"find out why {src} failed (monitor evidence above, its server and storage logs)",
                      f"keep {to_region} protected: snapshots now come from it",
                      f"once {src} is healthy and holds the latest snapshot, fail back to it"]
        severity = "warning"
    else:
        title = f"llmdr: {bundle} failover {src} -> {to_region} FAILED; traffic unchanged"
        happened = (f"A failover of {bundle} from {src} to {to_region} did not complete (reason it was started: "
                    f"{reason}); traffic was not moved, or the switch was rolled back.")
        next_steps = [f"check {to_region}: is its replica running and does it pass the golden set?",
                      "read the failed step in the evidence above and the flow run's logs",
                      f"if {src} is still down, fail over to another healthy region by hand"]
        severity = "critical"
    return Notice("failover", title, _body(happened, _evidence(details), next_steps), severity, data)


def failback_notice(bundle: str, from_region: str, to_region: str, *, rto_s: float | None = None,
                    reason: str = "", ok: bool, details: Mapping[str, Any] | Sequence[str] | None = None) -> Notice:
    """Traffic returned from the standby (``from_region``) to the recovered region (``to_region``), or did not."""
    data = {"bundle": bundle, "from_region": from_region, "to_region": to_region, "rto_s": rto_s, "reason": reason,
            "ok": ok, "details": _details_data(details)}
    why = f" Reason: {reason}." if reason else ""
    if ok:
        title = f"llmdr: {bundle} failed back {from_region} -> {to_region} (switch {_rto(rto_s)})"
        happened = f"Traffic for {bundle} is back on {to_region}, moved from {from_region}.{why}"
        next_steps = [f"confirm {to_region} is protected again (scheduled snapshots and replication)",
                      f"keep {from_region} as the warm standby: verify its latest snapshot"]
        severity = "info"
    else:
        title = f"llmdr: {bundle} failback {from_region} -> {to_region} FAILED; traffic stays on {from_region}"
        happened = f"Failing {bundle} back from {from_region} to {to_region} did not complete.{why}"
        next_steps = [f"{from_region} keeps serving; nothing urgent unless it degrades",
                      f"check {to_region}: replica running, latest snapshot present, golden set passing",
                      "retry the failback once the failed step in the evidence above is fixed"]
        severity = "warning"
    return Notice("failback", title, _body(happened, _evidence(details), next_steps), severity, data)


def verification_failed_notice(bundle: str, region: str, *, what: str,
                               details: Mapping[str, Any] | Sequence[str] | None = None) -> Notice:
    """A replica failed verification: it must not be trusted as a failover target until fixed."""
    data = {"bundle": bundle, "region": region, "what": what, "details": _details_data(details)}
    title = f"llmdr: {bundle} verification failed in {region}: {what}"
    happened = (f"The copy of {bundle} in {region} did not verify ({what}). Failing over to {region} now could serve "
                "a broken or outdated model.")
    next_steps = [f"do not fail over to {region} until it verifies again",
                  f"repair it from another region: `llmdr verify --region {region} --repair`",
                  "if chunks keep going bad, check that region's disks and storage logs"]
    return Notice("verification_failed", title, _body(happened, _evidence(details), next_steps), "critical", data)


def readiness_notice(bundle: str, *, verdict: str, score: int, failed: Sequence[Mapping[str, Any]],
                     warned: Sequence[Mapping[str, Any]] = ()) -> Notice:
    """The daily readiness check found something that would break a recovery today."""
    data = {"bundle": bundle, "verdict": verdict, "score": score,
            "failed": [c.get("id") for c in failed], "warned": [c.get("id") for c in warned]}
    title = f"llmdr: {bundle} DR readiness {verdict} (score {score}/100, {len(failed)} failing check(s))"
    happened = (f"The readiness check of {bundle} found {len(failed)} failing and {len(warned)} warning check(s): a "
                "recovery started now could miss its objectives.")
    evidence = [f"{c.get('status')} {c.get('title')}: {c.get('summary')}" for c in [*failed, *warned]]
    steps = [f"{c.get('title')}: {c.get('action')}" for c in failed if c.get("action")]
    steps.append("re-run `llmdr readiness` once fixed")
    return Notice("readiness", title, _body(happened, evidence, steps), "critical" if failed else "warning", data)


def hardware_notice(bundle: str, region: str, gpu: Mapping[str, Any], *, previous: str | None,
                    active: bool | None, standby: str | None) -> Notice:
    """A GPU of ``region`` turned degraded or critical (``gpu``: ``GpuAssessment.to_json()``). ``active``: the
    region serves traffic now; ``standby``: the DR region to pre-warm (None when ``region`` is it)."""
    status = str(gpu.get("status"))
    label = f"GPU {gpu['index']}" if gpu.get("index") is not None else str(gpu.get("uuid"))
    name = f" ({gpu['name']})" if gpu.get("name") else ""
    forecast = gpu.get("forecast") or {}
    data = {"bundle": bundle, "region": region, "gpu": gpu.get("uuid"), "index": gpu.get("index"),
            "name": gpu.get("name"), "status": status, "previous": previous, "reasons": list(gpu.get("reasons", [])),
            "trend": gpu.get("summary"), "forecast": forecast or None, "active": active}
    title = f"llmdr: {bundle} {region} {label}{name} hardware {status.upper()}"
    if forecast.get("hours") is not None:
        title += f" (limit in ~{forecast['hours']:.1f} h)"
    serving = " It serves traffic now." if active else ""
    happened = (f"{label}{name} in {region} is {status}" + (f" (was {previous})" if previous else "") +
                f": {'; '.join(data['reasons']) or 'see the evidence'}.{serving}")
    evidence = [f"- trend: {gpu.get('summary') or 'n/a'}", f"- GPU uuid: {gpu.get('uuid')}"]
    steps = ["drain the GPU (or its node) before it fails: stop scheduling work on it, move its replica",
             f"check it: `nvidia-smi -q -i {gpu.get('uuid')}` and the kernel log (`journalctl -k | grep 'NVRM: Xid'`)"]
    if standby:
        steps.append(f"pre-warm the DR standby in {standby}: `llmdr replica start {standby} --snapshot latest`, "
                     "then `llmdr status`")
        steps.append(f"if {region}'s endpoint degrades too, fail over by hand: "
                     f"`llmdr failover --to {standby} --reason 'GPU {status} in {region}'`")
    steps.append("a critical GPU: reset it or replace it (RMA) before it serves again")
    return Notice("hardware_degraded", title, _body(happened, evidence, steps),
                  "critical" if status == "critical" else "warning", data)


def _endpoint_evidence(a: Mapping[str, Any]) -> list[str]:
    """The numbers behind an endpoint verdict (``Assessment.to_json()``), one line each."""
    ev = a.get("evidence") or {}
    out = [f"- {r}" for r in a.get("reasons") or []]
    lat, tok = ev.get("latency") or {}, ev.get("tokens") or {}
    if lat.get("z") is not None:
        out.append(f"- latency: recent median {lat['recent_median']:.3f} s over {lat['recent_n']} probes vs baseline "
                   f"{lat['baseline_median']:.3f} s over {lat['baseline_n']} (robust z {lat['z']:+.1f})")
    if tok.get("z") is not None:
        out.append(f"- tokens per answer: recent median {tok['recent_median']:g} vs baseline {tok['baseline_median']:g} "
                   f"(robust z {tok['z']:+.1f})")
    if ev.get("recent_n"):
        out.append(f"- errors: {ev.get('recent_errors', 0)} of the last {ev['recent_n']} probes failed"
                   + (f" (latest: {ev['last_error']})" if ev.get("last_error") else ""))
    golden = ev.get("golden") or {}
    if golden.get("recent_checks"):
        out.append(f"- golden spot-checks: {golden.get('recent_failed', 0)} of {golden['recent_checks']} failed in "
                   "the recent window")
    st = ev.get("settings") or {}
    if st:
        out.append(f"- window: the newest {st.get('recent_window')} probes against the {st.get('baseline_window')} "
                   f"before them; degraded at robust z >= {st.get('z_threshold')} or error rate >= "
                   f"{st.get('error_rate_threshold')}")
    return out


def endpoint_notice(bundle: str, target: str, assessment: Mapping[str, Any], *, previous: str | None,
                    active: bool | None, standby: str | None, prewarm: bool = False) -> Notice:
    """An endpoint (a region's, or the router's: ``target`` "router") turned degraded or down, or recovered
    (``assessment``: ``monitor.Assessment.to_json()``). ``active``: the region serves traffic now; ``standby``: the
    failover target (None when ``target`` is it); ``prewarm``: the automation pre-warms it on degraded."""
    status = str(assessment.get("status"))
    reasons = list(assessment.get("reasons") or [])
    ev = assessment.get("evidence") or {}
    data = {"bundle": bundle, "target": target, "status": status, "previous": previous, "active": active,
            "reasons": reasons, "latency": ev.get("latency"), "tokens": ev.get("tokens"),
            "error_rate": ev.get("error_rate"), "recent_n": ev.get("recent_n"), "golden": ev.get("golden"),
            "settings": ev.get("settings")}
    what = "the router" if target == "router" else f"{target}'s endpoint"
    serving = " It serves traffic now." if active else (" It is not the region serving traffic." if active is False
                                                        else "")
    was = f" (was {previous})" if previous else ""
    if status == "healthy":
        title = f"llmdr: {bundle} {target} endpoint recovered"
        happened = f"{what.capitalize()} is healthy again{was}: its recent probes match its baseline.{serving}"
        steps = ["nothing urgent; find out what caused it (server, GPU and network logs around the time above)"]
        if standby and prewarm and active:
            steps.append(f"a standby pre-warmed in {standby} keeps running: `llmdr replica stop {standby}` if it "
                         "should not")
        return Notice("endpoint_recovered", title, _body(happened, [], steps), "info", data)
    title = f"llmdr: {bundle} {target} endpoint {status.upper()}: {reasons[0] if reasons else status}"
    if len(title) > 200:
        title = title[:199] + "…"
    happened = f"{what.capitalize()} is {status}{was}: {'; '.join(reasons) or 'see the evidence'}.{serving}"
    steps = [f"check {what}: its server log, GPU (`nvidia-smi`), load and network"]
    if active and standby:
        if status == "degraded":
            steps.append(f"the DR standby in {standby} is being pre-warmed by the prewarm automation"
                         if prewarm else f"pre-warm the DR standby in {standby}: `llmdr replica start {standby}`")
            steps.append(f"if it gets worse, fail over by hand: `llmdr failover --to {standby} --reason "
                         f"'{target} {status}'` (a down endpoint triggers the failover automation)")
        else:
            steps.append(f"the failover automation moves traffic to {standby} (`llmdr status` shows where it goes)")
    elif active is False:
        steps.append(f"{target} is a failover target: a failover to it now could land on a {status} region")
    return Notice("endpoint_down" if status == "down" else "endpoint_degraded", title,
                  _body(happened, _endpoint_evidence(assessment), steps),
                  "critical" if status == "down" and active else "warning", data)


def drift_notice(bundle: str, target: str, drift: Mapping[str, Any], *, active: bool | None) -> Notice:
    """The real answers of ``target`` drifted from their baseline, or are back to it (``drift``:
    ``drift.DriftAssessment.to_json()``). The evidence is counts only: the monitor never keeps answer texts."""
    status = str(drift.get("status"))
    ev = drift.get("evidence") or {}
    reasons = list(drift.get("reasons") or [])
    data = {"bundle": bundle, "target": target, "status": status, "active": active, "reasons": reasons,
            "length": ev.get("length"), "refusals": ev.get("refusals"), "vocabulary": ev.get("vocabulary"),
            "recent_n": ev.get("recent_n"), "baseline_n": ev.get("baseline_n"), "settings": ev.get("settings")}
    if status != "drift":
        return Notice("endpoint_drift", f"llmdr: {bundle} {target} answers back to their baseline",
                      _body(f"The sampled answers of {target} look like its baseline again.", [],
                            ["nothing urgent"]), "info", data)
    serving = " It serves traffic now." if active else ""
    happened = (f"The sampled real answers of {target} drifted from its baseline: {'; '.join(reasons)}.{serving}")
    evidence = [f"- {r}" for r in reasons]
    evidence.append(f"- window: the newest {ev.get('recent_n')} sampled answers against the {ev.get('baseline_n')} "
                    "before them (counts only: no answer text is kept)")
    steps = [f"ask {target} the golden set: `llmdr golden check --url <its serving.url>`",
             "did the model, its generation settings or the prompts clients send change? (a new release is a "
             "legitimate drift: the baseline follows it after a while)",
             "a wrong model or broken weights: fail over to the verified standby"]
    return Notice("endpoint_drift", f"llmdr: {bundle} {target} answers DRIFTED: {reasons[0] if reasons else ''}"[:200],
                  _body(happened, evidence, steps), "warning", data)

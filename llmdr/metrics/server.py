"""The exporter's HTTP server: ``/metrics`` (Prometheus text format, from ``prometheus_client``), ``/`` (the same
values as a small HTML page, for a person or a screenshot) and ``/healthz`` (answers without reading anything).

:func:`open_exporter` binds the port (a clear error when it is taken or cannot be bound) and returns an
:class:`Exporter`, which ``serve_forever`` runs in the foreground (``llmdr metrics serve``) or in a thread (tests).
"""

from __future__ import annotations

import errno
import html
import logging
import socket
import threading
import time
from collections.abc import Callable
from wsgiref.simple_server import WSGIRequestHandler, make_server

from llmdr.config import Config
from llmdr.errors import StackError
from llmdr.metrics.collector import LlmdrCollector, ProjectCollector

log = logging.getLogger(__name__)


# Every connection has a thread; one whose client sends nothing for this long is closed, so idle connections cannot
# pile threads up (the wsgiref default waits forever)
READ_TIMEOUT_S = 30.0


class _QuietHandler(WSGIRequestHandler):
    def setup(self) -> None:
        self.timeout = READ_TIMEOUT_S  # read at connection time, so tests can shorten it
        super().setup()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        log.debug("%s " + format, self.address_string(), *args)


def _html(registry, bundles: list[str]) -> bytes:
    """The metrics as a page: one table per bundle (in the project's order), a row per sample."""
    now = time.time()
    rows: dict[str, list[str]] = {b: [] for b in bundles}
    for fam in registry.collect():
        for s in fam.samples:
            if s.name.endswith("_bucket"):
                continue  # the buckets make the page long; /metrics has them
            labels = ", ".join(f"{k}={v}" for k, v in sorted(s.labels.items()) if k != "bundle")
            shown = f"{s.value:.6g}"
            if s.name.endswith("_timestamp_seconds"):  # a person reads a time and an age, not 1.79e+09
                shown = f"{time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime(s.value))} ({now - s.value:.0f} s ago)"
            rows.setdefault(s.labels.get("bundle", ""), []).append(
                f"<tr><td>{html.escape(s.name)}</td><td>{html.escape(labels)}</td>"
                f"<td class=n>{html.escape(shown)}</td></tr>")
    stamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(now))
    title = ("bundle " if len(bundles) == 1 else f"{len(bundles)} bundles: ") + ", ".join(bundles)
    index = "" if len(bundles) == 1 else ("<p>" + " &middot; ".join(
        f'<a href="#bundle-{html.escape(b)}">{html.escape(b)}</a>' for b in bundles) + "</p>")
    tables = "".join(
        (f'<h3 id="bundle-{html.escape(b)}">{html.escape(b) or "(no bundle label)"}</h3>' if len(bundles) > 1 else "")
        + f"<table><tr><th>metric</th><th>labels</th><th>value</th></tr>{''.join(r)}</table>"
        for b, r in rows.items())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>llmdr metrics: {html.escape(title)}</title>
<style>body{{font-family:DejaVu Sans,sans-serif;margin:1.5em}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border-bottom:1px solid #ddd;padding:3px 10px;text-align:left}}td.n{{text-align:right;
font-family:DejaVu Sans Mono,monospace}}th{{background:#f3f3f3}}</style></head><body>
<h2>llmdr metrics: {html.escape(title)}</h2>
<p>{stamp} &middot; Prometheus scrapes <a href="/metrics">/metrics</a> (histogram buckets are there, not here)</p>
{index}{tables}</body></html>"""
    return page.encode()


def make_app(registry, bundles: list[str] | str) -> Callable:
    """The WSGI application: /metrics, / and /healthz."""
    from prometheus_client import make_wsgi_app

    metrics = make_wsgi_app(registry)

    def app(environ, start_response):
        path = environ.get("PATH_INFO") or "/"
        if path == "/metrics":
            return metrics(environ, start_response)
        if path == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"ok\n"]
        if path == "/":
            body = _html(registry, [bundles] if isinstance(bundles, str) else bundles)
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                                      ("Content-Length", str(len(body)))])
            return [body]
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found: llmdr's exporter serves /metrics, / and /healthz\n"]

    return app


class Exporter:
    """A bound exporter: ``url``, ``serve_forever()``, ``shutdown()`` (from another thread), ``close()``."""

    def __init__(self, httpd, collector: LlmdrCollector | ProjectCollector, host: str) -> None:
        self.httpd, self.collector = httpd, collector
        port = httpd.server_address[1]
        self.url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def serve_forever(self) -> None:
        self.httpd.serve_forever(poll_interval=0.5)

    def shutdown(self) -> None:
        self.httpd.shutdown()

    def close(self) -> None:
        self.httpd.server_close()
        self.collector.close()

    def start_thread(self) -> threading.Thread:
        t = threading.Thread(target=self.serve_forever, name="llmdr-metrics-http", daemon=True)
        t.start()
        return t


def open_exporter(cfg: Config, host: str, port: int, *, collector: LlmdrCollector | ProjectCollector | None = None,
                  views: list[Config] | None = None) -> Exporter:
    """Bind ``host``:``port`` (0: any free port) and build the registry: every bundle of ``cfg`` (or of ``views``,
    bundle views of it) in one exporter; ``StackError`` saying what to do when the address is taken or cannot be
    bound."""
    from prometheus_client import CollectorRegistry, disable_created_metrics
    from prometheus_client.exposition import ThreadingWSGIServer

    disable_created_metrics()  # no *_created series: they double the series count and nothing here needs them
    family = socket.AF_INET6 if ":" in host else socket.AF_INET

    class Server(ThreadingWSGIServer):
        address_family = family

    registry = CollectorRegistry(auto_describe=False)
    collector = collector or ProjectCollector(cfg, views)
    bundles = collector.bundles if isinstance(collector, ProjectCollector) else [collector.bundle]
    registry.register(collector)
    try:
        httpd = make_server(host, port, make_app(registry, bundles), Server, handler_class=_QuietHandler)
    except OSError as exc:
        collector.close()
        where = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
        if exc.errno == errno.EADDRINUSE:
            raise StackError(f"cannot serve metrics on {where}: the port is in use (another exporter? `llmdr stack "
                             "status` shows the one the stack started); set metrics.listen in llmdr.yaml or pass "
                             "--listen HOST:PORT") from None
        raise StackError(f"cannot serve metrics on {where}: {exc.strerror or exc}; set metrics.listen to an address "
                         "of this machine, e.g. 127.0.0.1:18309") from None
    return Exporter(httpd, collector, host)


def stop_with_stack(cfg: Config, exporter: Exporter, *, every: float = 2.0) -> threading.Thread | None:
    """Shut ``exporter`` down once none of the config's local S3 servers runs any more (two checks in a row): the
    exporter `llmdr stack up` starts lives as long as that stack, however the stack was stopped. None (nothing
    watched) when the config has no local region."""
    from llmdr.devstack.regions import local_regions, region_pid

    regions = local_regions(cfg, None)
    if not regions:
        return None

    def watch() -> None:
        gone = 0
        while True:
            time.sleep(every)
            alive = any(region_pid(cfg, r) for r in regions)
            gone = 0 if alive else gone + 1
            if gone >= 2:
                log.warning("metrics: the local stack of %s is gone; the exporter stops", cfg.source_file)
                exporter.shutdown()
                return

    t = threading.Thread(target=watch, name="llmdr-metrics-stack-watch", daemon=True)
    t.start()
    return t

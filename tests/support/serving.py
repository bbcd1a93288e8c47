"""`llmdr serve` for tests: as a real process on a free port (``start_serve``), or its HTTP server in a thread for
tests that need an endpoint but no replica process (``serving``)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from tests.support.ports import free_port


@contextlib.contextmanager
def serving(bundle: Path):
    """`llmdr serve`'s server for ``bundle`` in a thread on a free port; yields its base URL."""
    from llmdr.serving.server import ModelService, make_server

    httpd = make_server(ModelService(bundle), "127.0.0.1", 0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def start_serve(bundle: Path, timeout: float = 60) -> tuple[subprocess.Popen, str]:
    """``llmdr serve BUNDLE`` as its own process on a free loopback port, once its /health answers 200; returns the
    process and its base URL. Fails with the server's stderr if it exits first."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llmdr.cli", "serve", str(bundle), "--port", str(port)],
                            stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            pass
        if proc.poll() is not None:
            raise AssertionError(f"llmdr serve exited {proc.returncode}: {proc.stderr.read().decode()}")
        if time.monotonic() > deadline:
            stop_serve(proc)
            raise AssertionError(f"llmdr serve did not answer {url}/health within {timeout:.0f} s")
        time.sleep(0.05)


def stop_serve(proc: subprocess.Popen) -> None:
    """Stop a ``start_serve`` process (SIGTERM, then wait)."""
    if proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=15)


def read_answer(f) -> tuple[int, dict, dict]:
    """One HTTP/1.1 answer with a Content-Length from the socket file ``f``: (status, headers, JSON body)."""
    status = int(f.readline().split()[1])
    headers = {}
    while (line := f.readline()) not in (b"\r\n", b""):
        k, v = line.decode().split(":", 1)
        headers[k.strip().lower()] = v.strip()
    return status, headers, json.loads(f.read(int(headers["content-length"])))

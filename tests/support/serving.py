"""`llmdr serve`'s HTTP server in a thread, for tests that need an endpoint but no replica process."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path


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

"""Small HTTP servers on loopback for tests: ``Loopback`` runs a handler class in a thread; ``Receiver`` is a webhook
receiver that records every POSTed JSON body."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Loopback:
    """``handler`` served on 127.0.0.1 (a free port) in a daemon thread; ``url`` is its base URL + ``path``."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], path: str = "") -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{path}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Quiet(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass


class Receiver(Loopback):
    """A webhook receiver: records every POSTed JSON body in ``bodies``; ``url`` ends in ``/hook``."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        outer = self

        class Handler(Quiet):
            def do_POST(self):  # noqa: N802
                outer.bodies.append(json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0)))))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        super().__init__(Handler, "/hook")

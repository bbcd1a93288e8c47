"""Small HTTP servers on loopback for tests: ``Loopback`` runs a handler class in a thread; ``Receiver`` is a webhook
receiver that records every POSTed JSON body."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Loopback:
    """``handler`` served on 127.0.0.1 (``port``, a free one by default) in a daemon thread; ``base`` is its root URL,
    ``url`` the root + ``path``."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], path: str = "", port: int = 0) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.url = self.base + path
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Quiet(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass


class Receiver(Loopback):
    """A webhook receiver: records every POST in ``requests`` (path, headers, raw body) and answers the scripted
    ``statuses`` first, then 200; ``bodies`` are the JSON bodies in order; ``url`` ends in ``/hook``."""

    def __init__(self, port: int = 0) -> None:
        self.requests: list[dict] = []
        self.statuses: list[int] = []
        outer = self

        class Handler(Quiet):
            def do_POST(self):  # noqa: N802 - http.server's naming
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.requests.append({"path": self.path, "headers": dict(self.headers), "body": raw})
                self.send_response(outer.statuses.pop(0) if outer.statuses else 200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        super().__init__(Handler, "/hook", port)

    @property
    def bodies(self) -> list[dict]:
        return [json.loads(r["body"]) for r in self.requests]

    def json(self, i: int = 0) -> dict:
        return json.loads(self.requests[i]["body"])

    def kinds_since(self, mark: int) -> list[str]:
        """The ``kind`` of every notification received after the first MARK."""
        return [b["kind"] for b in self.bodies[mark:]]

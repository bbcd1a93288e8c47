"""A moto server for the AWS-only APIs (STS, IAM) the credential tests need: started on a free loopback port, reset
between tests, its IAM authentication switched on by a test and off again afterwards."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def moto_server() -> Iterator[str]:
    """A threaded moto server on 127.0.0.1; yields its URL and stops it afterwards."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def _post(url: str, data: bytes = b"") -> None:
    req = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "text/plain"})
    urllib.request.urlopen(req, timeout=10).read()


def reset(url: str) -> None:
    """Forget every user, role and bucket moto holds."""
    _post(f"{url}/moto-api/reset")


def check_auth(url: str, on: bool) -> None:
    """From now on moto checks every signature and IAM policy (``on``), or accepts any request (moto's default)."""
    _post(f"{url}/moto-api/reset-auth", b"0" if on else b"inf")

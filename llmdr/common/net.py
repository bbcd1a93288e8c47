"""One network helper: is an endpoint there at all? A stopped server refuses in milliseconds, while botocore and
DVC would retry for 14–60 s before saying so."""

from __future__ import annotations

import socket
from urllib.parse import urlparse


def unreachable(url: str, timeout: float) -> OSError | None:
    """None if a TCP connection to the URL's host and port opens within ``timeout`` seconds, else the error."""
    u = urlparse(url)
    port = u.port or (443 if u.scheme == "https" else 80)
    try:
        socket.create_connection((u.hostname, port), timeout=timeout).close()
    except OSError as exc:
        return exc
    return None

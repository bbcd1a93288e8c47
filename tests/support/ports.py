"""Free loopback ports for the servers a test or a benchmark starts."""

from __future__ import annotations

import socket
import uuid


def free_base_port() -> int:
    """A port P such that every port a local region needs (P..P+8 and P+10008) is free on 127.0.0.1. All of them stay
    below Linux's ephemeral range (32768+), where any outgoing connection (Prefect, MLflow, boto3...) may take a
    port between this check and the server's bind."""
    for _ in range(200):
        base = 10000 + (uuid.uuid4().int % 1275) * 10  # base + 10008 <= 32758
        ok = True
        for port in [*range(base, base + 9), base + 10008]:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free port range found")


def free_base_ports() -> tuple[int, int]:
    """Two base ports (``free_base_port``) whose local regions' port ranges do not overlap."""
    p = free_base_port()
    s = free_base_port()
    while abs(s - p) < 10 or abs(s - p) == 10000:
        s = free_base_port()
    return p, s


def region_ports(base: int) -> set[int]:
    """Every port a local region on ``base`` binds."""
    return {*range(base, base + 9), base + 10008}


def free_port() -> int:
    """A TCP port nothing listens on right now (127.0.0.1)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_picker(taken: set[int]):
    """A function returning a fresh free port each call, never one in ``taken`` (which it extends)."""

    def port() -> int:
        while (n := free_port()) in taken:
            pass
        taken.add(n)
        return n

    return port

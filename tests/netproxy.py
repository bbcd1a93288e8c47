"""A loopback TCP proxy for tests: a slow link and scripted network faults in front of a real server.

    with NetProxy("127.0.0.1", target_port, rate_bps=1_000_000) as px:   # bytes per second, not bits
        store = S3Store(endpoint_url=px.url, ...)                       # the store now sees a 1 MB/s link

The bandwidth limit is one token bucket per direction shared by every connection of the proxy, so eight parallel
downloads together get ``rate_bps``, as over one slow WAN link. ``set_rate`` changes it while bytes flow.

Faults are scripted like Kopia's faulty store (and ``llmdr.storage.faulty``): each ``*_next(n, ...)`` call queues
``n`` faults, and every newly accepted connection takes the next queued fault in call order (connections accepted
while the queue is empty are forwarded untouched). ``stats`` counts what actually fired and ``assert_all_fired``
checks that every scripted fault did. Faults are per *connection*: boto3 and urllib3 keep connections alive in a
pool, so a fault scripted after a client has connected hits that client only when it opens a new connection (make
a fresh client, or script the fault before the first request).

Only the standard library; listens on 127.0.0.1 only; ``close()`` closes every socket and joins every thread.
"""

from __future__ import annotations

import collections
import http
import socket
import struct
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

KiB = 1024
MIN_BURST = 64 * KiB
CHUNK = 64 * KiB
LOOPBACK = "127.0.0.1"

# S3 error codes for the canned answers of fail_next (botocore maps them as it would a real server's).
S3_CODES = {500: "InternalError", 501: "NotImplemented", 502: "BadGateway", 503: "ServiceUnavailable",
            504: "GatewayTimeout", 429: "SlowDown"}


class TokenBucket:
    """``rate`` bytes per second (``None``: unlimited) with a burst of max(64 KiB, rate/20), thread-safe.

    ``take(n)`` lets the caller send its ``n`` bytes, then waits until the bucket has refilled the debt, so a chunk
    larger than the burst never blocks forever and the long-run rate is exact. Waits are sliced (≤ 50 ms) so a
    rate change or ``stop`` takes effect at once."""

    def __init__(self, rate: float | None) -> None:
        self._lock = threading.Lock()
        self._rate: float | None = None
        self._tokens = 0.0
        self._stamp = time.monotonic()
        self.set_rate(rate)

    @property
    def rate(self) -> float | None:
        return self._rate

    def _burst(self) -> float:
        assert self._rate is not None
        return max(float(MIN_BURST), self._rate / 20)

    def _refill(self) -> None:
        now = time.monotonic()
        if self._rate is not None:
            self._tokens = min(self._burst(), self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now

    def set_rate(self, rate: float | None) -> None:
        if rate is not None and rate <= 0:
            raise ValueError(f"rate must be a positive number of bytes per second or None, not {rate!r}")
        with self._lock:
            self._refill()
            was_unlimited = self._rate is None
            self._rate = None if rate is None else float(rate)
            if self._rate is not None:
                # A debt left from the old rate is repaid at the new one; a link that was unlimited starts full.
                self._tokens = self._burst() if was_unlimited else min(self._tokens, self._burst())

    def take(self, n: int, stop: threading.Event) -> None:
        with self._lock:
            self._refill()
            if self._rate is None:
                return
            self._tokens -= n
        while True:
            with self._lock:
                self._refill()
                if self._rate is None or self._tokens >= 0:
                    return
                wait = -self._tokens / self._rate
            if stop.wait(min(wait, 0.05)):
                return


@dataclass(frozen=True)
class Fault:
    kind: str  # "reset" | "fail" | "stall"
    after_bytes: int = 0
    status: int = 503
    code: str = ""
    seconds: float = 0.0


_STAT = {"reset": "resets", "fail": "failures", "stall": "stalls"}


def s3_error_response(status: int, code: str = "", *, head: bool = False) -> bytes:
    """A minimal complete HTTP/1.1 answer with an S3-style XML error body, closing the connection."""
    code = code or S3_CODES.get(status, "InjectedFault")
    body = f"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>injected</Message></Error>"
    data = body.encode()
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = "Injected"
    head_lines = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {len(data)}\r\n"
                  "Connection: close\r\n\r\n")
    return head_lines.encode() + (b"" if head else data)


class NetProxy:
    """Forwards every connection accepted on 127.0.0.1:``port`` (0: a free port) to ``target_host:target_port``.

    ``rate_bps`` is in BYTES per second per direction (``None``: unlimited). Use as a context manager or call
    ``close()``."""

    def __init__(self, target_host: str, target_port: int, rate_bps: float | None = None, *, port: int = 0) -> None:
        self.target = (target_host, int(target_port))
        self._lock = threading.Lock()
        self._up = TokenBucket(rate_bps)
        self._down = TokenBucket(rate_bps)
        self._faults: collections.deque[Fault] = collections.deque()
        self._scripted = {"resets": 0, "failures": 0, "stalls": 0}
        self._stats = {"connections": 0, "bytes_up": 0, "bytes_down": 0, "resets": 0, "failures": 0, "stalls": 0}
        self._conns: set[_Connection] = set()
        self._closing = False
        self._listener = socket.create_server((LOOPBACK, port))
        self.port: int = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"netproxy-{self.port}-accept", daemon=True)
        self._acceptor.start()

    @classmethod
    def in_front_of(cls, url: str, rate_bps: float | None = None) -> NetProxy:
        """A proxy for an ``http://host:port`` endpoint (e.g. a region's S3 endpoint)."""
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"expected http://host:port, got {url!r}")
        return cls(parts.hostname, parts.port, rate_bps)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def rate(self) -> float | None:
        return self._down.rate

    @property
    def stats(self) -> dict[str, int]:
        """A snapshot: connections accepted, bytes forwarded each way, and faults that fired."""
        with self._lock:
            return dict(self._stats)

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._stats[name] += n

    # control ----------------------------------------------------------------------------------------------------------
    def set_rate(self, rate_bps: float | None) -> None:
        """Bytes per second for each direction from now on, across all connections; ``None`` removes the limit."""
        self._up.set_rate(rate_bps)
        self._down.set_rate(rate_bps)

    def _script(self, fault: Fault, n: int) -> None:
        if n < 1:
            raise ValueError(f"n must be at least 1, not {n}")
        with self._lock:
            self._faults.extend([fault] * n)
            self._scripted[_STAT[fault.kind]] += n

    def reset_next(self, n: int = 1, after_bytes: int = 0) -> None:
        """The next ``n`` new connections are forwarded (the request reaches the server, so a PUT may be applied),
        but the client gets only the first ``after_bytes`` bytes of the response stream, then a TCP RST."""
        self._script(Fault("reset", after_bytes=after_bytes), n)

    def fail_next(self, n: int = 1, status: int = 503, code: str = "") -> None:
        """The next ``n`` new connections get a canned HTTP ``status`` answer with an S3 XML error (``code``, by
        default the one S3 uses for that status) and ``Connection: close``; the target is never contacted."""
        self._script(Fault("fail", status=status, code=code), n)

    def stall_next(self, n: int = 1, seconds: float = 5.0) -> None:
        """The next ``n`` new connections are accepted but nothing is forwarded for ``seconds``; then they proceed
        normally (a client read timeout shorter than that sees a timeout)."""
        self._script(Fault("stall", seconds=seconds), n)

    @property
    def pending_faults(self) -> int:
        """Scripted faults no connection has taken yet."""
        with self._lock:
            return len(self._faults)

    def assert_all_fired(self) -> None:
        """Every scripted fault happened (a taken reset fires only once the response passes ``after_bytes``)."""
        with self._lock:
            missing = {k: v - self._stats[k] for k, v in self._scripted.items() if v != self._stats[k]}
        if missing:
            raise AssertionError(f"scripted faults that did not fire on the proxy at {self.url}: {missing}")

    # lifecycle ----------------------------------------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # the listener was shut down by close()
            with self._lock:
                if self._closing:
                    client.close()
                    return
                self._stats["connections"] += 1
                fault = self._faults.popleft() if self._faults else None
                conn = _Connection(self, client, fault)
                self._conns.add(conn)
            conn.thread.start()

    def _forget(self, conn: _Connection) -> None:
        with self._lock:
            self._conns.discard(conn)

    def close(self) -> None:
        """Stop listening (new connections are refused), cut every open connection and join every thread."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        self._listener.close()
        self._acceptor.join(timeout=10)
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            conn.close()
        for conn in conns:
            conn.join(timeout=10)

    def __enter__(self) -> NetProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"NetProxy({self.url} -> {self.target[0]}:{self.target[1]}, rate={self.rate})"


class _Connection:
    """One client connection: its fault (if any), then two pumps, one per direction."""

    def __init__(self, proxy: NetProxy, client: socket.socket, fault: Fault | None) -> None:
        self.proxy = proxy
        self.client = client
        self.fault = fault
        self.target: socket.socket | None = None
        self.done = threading.Event()
        self._lock = threading.Lock()
        self._closed = False
        self._pump: threading.Thread | None = None
        self.thread = threading.Thread(target=self._run, name=f"netproxy-{proxy.port}-conn", daemon=True)

    def _run(self) -> None:
        px, fault = self.proxy, self.fault
        try:
            if fault is not None and fault.kind == "stall":
                px._count("stalls")
                if self.done.wait(fault.seconds):
                    return
            if fault is not None and fault.kind == "fail":
                self._answer(fault)
                return
            target = socket.create_connection(px.target, timeout=5)
            target.settimeout(None)
            with self._lock:
                if self._closed:
                    target.close()
                    return
                self.target = target
            self._pump = threading.Thread(target=self._forward, args=(self.client, target, px._up, "bytes_up", None),
                                          name=f"netproxy-{px.port}-up", daemon=True)
            self._pump.start()
            reset_after = fault.after_bytes if fault is not None and fault.kind == "reset" else None
            self._forward(target, self.client, px._down, "bytes_down", reset_after)
            self._pump.join()
        except (OSError, ValueError):  # a peer went away, or a malformed request head in _answer
            pass
        finally:
            self.close()
            px._forget(self)

    def _forward(self, src: socket.socket, dst: socket.socket, bucket: TokenBucket, stat: str,
                 reset_after: int | None) -> None:
        """Copy ``src`` to ``dst`` at the bucket's rate until either side ends; then end the whole connection.
        With ``reset_after``, the client gets exactly that many bytes and then a reset."""
        sent = 0
        try:
            while not self.done.is_set():
                data = src.recv(CHUNK)
                if not data:
                    break
                if reset_after is not None and sent + len(data) > reset_after:
                    data = data[: reset_after - sent]
                    if data:
                        bucket.take(len(data), self.done)
                        self.proxy._count(stat, len(data))
                        dst.sendall(data)
                    self.close(rst=True)
                    return
                bucket.take(len(data), self.done)
                # Counted before sending, so a client that has read the bytes also sees them in stats.
                self.proxy._count(stat, len(data))
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        self.close()

    def _answer(self, fault: Fault) -> None:
        """Read the request (head, and a body with Content-Length unless the client waits for 100-continue), answer
        with the canned error and close cleanly, so the client reads the status rather than a reset."""
        c = self.client
        c.settimeout(2.0)
        buf = b""
        while b"\r\n\r\n" not in buf and len(buf) < 64 * KiB:
            data = c.recv(CHUNK)
            if not data:
                break
            buf += data
        head, _, rest = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method = lines[0].split(" ", 1)[0].upper() if lines and lines[0] else ""
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        if "100-continue" not in headers.get("expect", "").lower():
            remaining = int(headers.get("content-length", "0") or 0) - len(rest)
            while remaining > 0:
                data = c.recv(min(CHUNK, remaining))
                if not data:
                    break
                remaining -= len(data)
        self.proxy._count("failures")
        c.sendall(s3_error_response(fault.status, fault.code, head=method == "HEAD"))
        try:
            c.shutdown(socket.SHUT_WR)
            while c.recv(CHUNK):  # until the client closes, so our close never resets unread bytes
                pass
        except OSError:
            pass

    def close(self, rst: bool = False) -> bool:
        """End the connection once (True the first time). ``rst``: abort the client side with a TCP RST."""
        with self._lock:
            if self._closed:
                return False
            self._closed = True
        self.done.set()
        if rst:
            self.proxy._count("resets")
            try:
                self.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.client.shutdown(socket.SHUT_RD)  # wakes the other pump without sending a FIN
            except OSError:
                pass
        for s in (self.client, self.target):
            if s is None:
                continue
            if not (rst and s is self.client):
                try:
                    s.shutdown(socket.SHUT_RDWR)  # wakes a pump blocked in recv() on it
                except OSError:
                    pass
            s.close()
        return True

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)
        if self._pump is not None:
            self._pump.join(timeout)

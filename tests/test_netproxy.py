"""The loopback proxy used to simulate a slow DR link and network faults: against a stdlib HTTP server (fast,
self-contained) and once in front of a real SeaweedFS region."""

from __future__ import annotations

import hashlib
import http.client
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
from netproxy import NetProxy, TokenBucket

from llmdr.storage.credentials import resolve_keys
from llmdr.storage.s3 import S3Store

KiB = 1024
MiB = 1024 * KiB
DATA = random.Random(7).randbytes(4 * MiB)
# urllib would honour http_proxy from the environment; these requests must go straight to the loopback proxy.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
# What the client may see when the proxy resets it (RemoteDisconnected is a ConnectionResetError).
CUT = (ConnectionResetError, BrokenPipeError, http.client.IncompleteRead, urllib.error.URLError)


class _Blobs(BaseHTTPRequestHandler):
    """GET /blob?n=N answers the first N bytes of DATA; PUT answers the SHA-256 of the body it read."""

    def do_GET(self) -> None:
        n = int(parse_qs(urlsplit(self.path).query).get("n", [str(len(DATA))])[0])
        self._reply(DATA[:n])

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self._reply(hashlib.sha256(body).hexdigest().encode())

    def _reply(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            pass  # the tests cut connections on purpose

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def target():
    """A plain HTTP server on a free loopback port; yields its port."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Blobs)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.fixture
def proxy(target):
    with NetProxy("127.0.0.1", target) as px:
        yield px
    assert not _threads_of(px), "the proxy left threads running"


def _threads_of(px: NetProxy) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(f"netproxy-{px.port}-") and t.is_alive()]


def fetch(px: NetProxy, n: int, timeout: float = 10) -> bytes:
    with OPENER.open(f"{px.url}/blob?n={n}", timeout=timeout) as r:
        return r.read()


def timed_fetch(px: NetProxy, n: int) -> float:
    t = time.monotonic()
    assert fetch(px, n) == DATA[:n]
    return time.monotonic() - t


def test_pass_through_is_byte_identical_both_ways_and_counted(proxy):
    assert fetch(proxy, len(DATA)) == DATA
    body = DATA[: MiB + 17]
    req = urllib.request.Request(f"{proxy.url}/up", data=body, method="PUT")
    with OPENER.open(req, timeout=10) as r:
        assert r.read().decode() == hashlib.sha256(body).hexdigest()
    st = proxy.stats
    assert st["connections"] == 2
    assert st["bytes_down"] > len(DATA) and st["bytes_up"] > len(body)  # payload plus HTTP heads
    assert (st["resets"], st["failures"], st["stalls"]) == (0, 0, 0)
    proxy.assert_all_fired()


def test_rate_limit_paces_downloads_and_none_is_fast(target):
    with NetProxy("127.0.0.1", target, rate_bps=1_000_000) as px:
        slow = timed_fetch(px, 2_000_000)
    with NetProxy("127.0.0.1", target) as px:
        fast = timed_fetch(px, 2_000_000)
    assert 1.6 <= slow < 4.0  # (2 MB - 64 KiB burst) / 1 MB/s ≈ 1.93 s
    assert fast < slow / 4


def test_set_rate_changes_the_speed_of_a_running_and_the_next_transfer(target):
    with NetProxy("127.0.0.1", target, rate_bps=250_000) as px:
        with OPENER.open(f"{px.url}/blob?n={2_000_000}", timeout=10) as r:
            t = time.monotonic()
            head = r.read(250_000)
            first = time.monotonic() - t
            px.set_rate(None)
            t = time.monotonic()
            rest = r.read()
            rest_time = time.monotonic() - t
        assert head + rest == DATA[:2_000_000]
        assert first >= 0.5  # (250 kB - 64 KiB) at 250 kB/s
        assert rest_time < 1.5  # 1.75 MB at the old rate would take 7 s
        px.set_rate(1_000_000)
        assert px.rate == 1_000_000
        assert timed_fetch(px, 1_000_000) >= 0.8


def test_fail_next_answers_an_s3_error_without_the_target_then_passes(proxy):
    proxy.fail_next(1, 503)
    with pytest.raises(urllib.error.HTTPError) as e:
        fetch(proxy, 1000)
    assert e.value.code == 503
    assert e.value.headers["Content-Type"] == "application/xml"
    assert b"<Code>ServiceUnavailable</Code>" in e.value.read()
    assert proxy.stats["bytes_down"] == 0  # the target was never contacted
    assert fetch(proxy, 1000) == DATA[:1000]

    # A request with a body is read to its end first, so the client sees the status, not a reset.
    proxy.fail_next(1, 500)
    req = urllib.request.Request(f"{proxy.url}/up", data=DATA[:MiB], method="PUT")
    with pytest.raises(urllib.error.HTTPError) as e:
        OPENER.open(req, timeout=10)
    assert e.value.code == 500 and b"<Code>InternalError</Code>" in e.value.read()
    assert proxy.stats["failures"] == 2 and proxy.pending_faults == 0
    proxy.assert_all_fired()


def test_reset_next_cuts_the_client_after_the_given_bytes(proxy):
    proxy.reset_next(1)
    with pytest.raises(CUT):
        fetch(proxy, len(DATA))
    assert proxy.stats["bytes_down"] == 0

    proxy.reset_next(1, after_bytes=100_000)
    with pytest.raises(CUT):
        fetch(proxy, len(DATA))
    assert proxy.stats["bytes_down"] == 100_000  # exactly, then the RST

    assert fetch(proxy, len(DATA)) == DATA
    assert proxy.stats["resets"] == 2
    proxy.assert_all_fired()


def test_stall_next_delays_only_the_next_connection(proxy):
    proxy.stall_next(1, 1.0)
    assert timed_fetch(proxy, 1000) >= 0.95
    assert timed_fetch(proxy, 1000) < 0.9
    assert proxy.stats["stalls"] == 1
    proxy.assert_all_fired()


def test_a_stall_longer_than_the_client_timeout_times_out_and_close_cuts_it(target):
    px = NetProxy("127.0.0.1", target)
    px.stall_next(1, 30)
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        fetch(px, 1000, timeout=0.3)
    t = time.monotonic()
    px.close()
    assert time.monotonic() - t < 2  # not the 30 s stall
    assert not _threads_of(px)


def test_unfired_faults_are_reported(proxy):
    proxy.reset_next(1, after_bytes=10 * MiB)  # more than any response: taken, but never fires
    proxy.fail_next(2)
    assert proxy.pending_faults == 3
    assert fetch(proxy, 1000) == DATA[:1000]
    assert proxy.pending_faults == 2
    with pytest.raises(AssertionError, match="'resets': 1.*'failures': 2"):
        proxy.assert_all_fired()


def test_close_refuses_new_connections_and_ends_running_ones(target):
    px = NetProxy("127.0.0.1", target, rate_bps=100_000)
    errors: list[BaseException] = []

    def slow_download() -> None:
        try:
            fetch(px, len(DATA))  # 40 s at this rate
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    client = threading.Thread(target=slow_download)
    client.start()
    deadline = time.monotonic() + 5
    while px.stats["bytes_down"] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert px.stats["connections"] == 1 and px.stats["bytes_down"] > 0
    px.close()
    client.join(timeout=5)
    assert not client.is_alive() and len(errors) == 1 and isinstance(errors[0], CUT)
    assert not _threads_of(px)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", px.port), timeout=2).close()
    px.close()  # idempotent


def test_rates_must_be_positive():
    for bad in (0, -1):
        with pytest.raises(ValueError, match="positive"):
            TokenBucket(bad)


@pytest.mark.s3
def test_real_s3_through_a_slow_link_and_an_injected_503(region_config):
    import botocore.session
    from botocore.config import Config
    from botocore.exceptions import ClientError

    cfg = region_config
    r = cfg.primary
    keys = resolve_keys(cfg, r)

    def store(url: str) -> S3Store:
        return S3Store(bucket=r.bucket, endpoint_url=url, access_key_id=keys.access_key_id,
                       secret_access_key=keys.secret_access_key, session_token=keys.session_token,
                       region_name=r.s3_region, prefix=r.prefix, name=r.name)

    data = os.urandom(MiB)
    with NetProxy.in_front_of(r.endpoint) as px:
        s3 = store(px.url)
        s3.put("netproxy/blob", data)
        px.set_rate(512 * KiB)
        t = time.monotonic()
        assert s3.get("netproxy/blob") == data
        assert time.monotonic() - t >= 1.5  # (1 MiB - 64 KiB burst) / 512 KiB/s ≈ 1.9 s
        px.set_rate(None)

        # botocore reads the canned answer as the S3 error it imitates. Faults hit new connections, so this is a
        # fresh client (s3's pooled connection would not see it), with exactly one attempt: botocore's
        # ``max_attempts`` counts retries, ``total_max_attempts`` counts attempts.
        px.fail_next(1, 503)
        client = botocore.session.get_session().create_client(
            "s3", endpoint_url=px.url, region_name=r.s3_region, aws_access_key_id=keys.access_key_id,
            aws_secret_access_key=keys.secret_access_key, aws_session_token=keys.session_token,
            config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1, "mode": "standard"}))
        with pytest.raises(ClientError) as e:
            client.get_object(Bucket=r.bucket, Key=f"{s3.prefix}netproxy/blob")
        assert e.value.response["Error"]["Code"] == "ServiceUnavailable"
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        client.close()
        assert s3.get("netproxy/blob", start=10, length=5) == data[10:15]
        assert px.stats["failures"] == 1
        px.assert_all_fired()
    assert store(r.endpoint).get("netproxy/blob") == data

"""`llmdr serve` against hostile clients (#17's attack pass), each on a real server on a loopback port: a request
asking for more completion tokens than the bundle allows, a request framed both by Content-Length and by
Transfer-Encoding (request smuggling through a proxy), and clients trickling a request head or body (slow loris)."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest

from llmdr.serving.tinymodel import write_demo_bundle
from tests.support.serving import read_answer, serving

ASK = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    b = tmp_path_factory.mktemp("harden") / "tiny"
    write_demo_bundle(b)
    return b


@pytest.fixture(scope="module")
def url(bundle):
    with serving(bundle) as u:
        yield u


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def post(path: str, payload: dict, extra: bytes = b"") -> bytes:
    body = json.dumps(payload).encode()
    return (b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n"
            % (path.encode(), len(body), extra) + body)


def ask(url: str, path: str, payload: dict) -> tuple[int, dict]:
    with socket.create_connection(address(url), timeout=30) as s:
        s.sendall(post(path, payload))
        status, _, out = read_answer(s.makefile("rb"))
    return status, out


def closed_within(s: socket.socket, seconds: float, trickle: bytes = b"") -> bool:
    """Whether the server closes ``s`` within ``seconds`` (a generous bound, not a timing under test), sending
    ``trickle`` every 0.2 s meanwhile; what comes before the close is read and dropped."""
    s.settimeout(0.2)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if trickle:
                s.sendall(trickle)
            if s.recv(1 << 20) == b"":
                return True
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return True
    return False


# --- completion tokens per request -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path, payload, param", [
    ("/v1/chat/completions", {"messages": ASK, "n": 16, "max_tokens": 512}, "max_tokens"),
    ("/v1/chat/completions", {"messages": ASK, "n": 9, "max_completion_tokens": 512}, "max_completion_tokens"),
    ("/v1/completions", {"prompt": ["a", "b", "c", "d"], "n": 16, "max_tokens": 100}, "max_tokens"),
    ("/v1/completions", {"prompt": "a", "max_tokens": 512, "n": 16, "stream": True}, "max_tokens"),
])
def test_a_request_for_more_tokens_than_the_bundle_allows_is_refused_before_generating(url, path, payload, param):
    status, out = ask(url, path, payload)
    assert status == 400 and out["error"]["param"] == param, out
    assert "at most 4096 per request" in out["error"]["message"] and "max_request_tokens" in out["error"]["message"]


def test_the_token_budget_counts_the_bundles_default_length_and_is_set_in_serving_json(tmp_path):
    b = tmp_path / "tiny"
    write_demo_bundle(b)  # max_new_tokens 12 in generation_config.json
    conf = json.loads((b / "serving.json").read_text())
    (b / "serving.json").write_text(json.dumps({**conf, "max_request_tokens": 30}))
    with serving(b) as u:
        status, out = ask(u, "/v1/chat/completions", {"messages": ASK, "n": 2})  # 2 x 12 = 24
        assert status == 200 and len(out["choices"]) == 2, out
        status, out = ask(u, "/v1/chat/completions", {"messages": ASK, "n": 3})  # 3 x 12 = 36
        assert status == 400 and "3 choice(s) x 12 tokens = 36" in out["error"]["message"], out


@pytest.mark.parametrize("bad", [0, "4096", 2.5])
def test_a_bad_max_request_tokens_is_refused(tmp_path, bad):
    from llmdr.errors import UsageError
    from llmdr.serving.service import ModelService

    b = tmp_path / "tiny"
    write_demo_bundle(b)
    conf = json.loads((b / "serving.json").read_text())
    (b / "serving.json").write_text(json.dumps({**conf, "max_request_tokens": bad}))
    with pytest.raises(UsageError, match="max_request_tokens must be a positive whole number"):
        ModelService(b)


# --- request smuggling -------------------------------------------------------------------------------------------------


def test_a_request_with_both_content_length_and_transfer_encoding_is_refused_and_the_connection_closed(url):
    body = json.dumps({"messages": ASK, "max_tokens": 2}).encode()
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    smuggled = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"  # what a proxy reading Content-Length would not see
    with socket.create_connection(address(url), timeout=30) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked + smuggled)
        f = s.makefile("rb")
        status, headers, out = read_answer(f)
        assert status == 400 and out["error"]["code"] == "invalid_framing", out
        assert "both Content-Length and Transfer-Encoding" in out["error"]["message"]
        assert headers["connection"] == "close" and len(headers["x-llmdr-bundle-digest"]) == 64
        assert f.read() == b""  # the request behind it was not answered: the connection is closed


# --- slow clients --------------------------------------------------------------------------------------------------


@pytest.fixture
def impatient(bundle, monkeypatch):
    """A server giving a request head 1 s and a body 1 s."""
    from llmdr.serving import server

    monkeypatch.setattr(server, "HEAD_SECONDS", 1.0)
    monkeypatch.setattr(server, "BODY_SECONDS", 1.0)
    with serving(bundle) as u:
        yield u


def test_a_trickled_request_head_or_a_silent_connection_is_closed(impatient):
    with socket.create_connection(address(impatient)) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        assert closed_within(s, 20, trickle=b"X")  # a byte every 0.2 s does not extend the deadline
    with socket.create_connection(address(impatient)) as s:
        assert closed_within(s, 20)  # connected, never sent anything


def test_a_trickled_body_gets_408_and_a_closed_connection(impatient):
    with socket.create_connection(address(impatient), timeout=30) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000\r\n\r\n{")
        f = s.makefile("rb")
        status, headers, out = read_answer(f)  # nothing more sent: the deadline answers
        assert status == 408 and out["error"]["code"] == "request_timeout", out
        assert headers["connection"] == "close" and f.read() == b""


def test_an_idle_keep_alive_connection_outlives_the_head_deadline(impatient):
    """The head deadline starts with a head's first byte: a connection idle between requests (a proxy's pool) is
    uvicorn's keep-alive timeout's business (150 s)."""
    with socket.create_connection(address(impatient), timeout=30) as s:
        f = s.makefile("rb")
        s.sendall(post("/v1/chat/completions", {"messages": ASK, "max_tokens": 2}))
        assert read_answer(f)[0] == 200
        time.sleep(2.5)  # idle for longer than the 1 s head deadline
        s.sendall(post("/v1/chat/completions", {"messages": ASK, "max_tokens": 2}))
        assert read_answer(f)[0] == 200


def test_a_stream_whose_client_stops_reading_frees_its_slot(tmp_path, monkeypatch):
    """A client that asks for a stream and reads nothing: once the socket buffers are full the server waits on it;
    after STALL_SECONDS it gives the stream up like a disconnect, so the only slot is free for the next client."""
    from llmdr.serving import server
    from llmdr.serving.service import ModelService, Piece

    b = tmp_path / "tiny"
    write_demo_bundle(b)
    conf = json.loads((b / "serving.json").read_text())
    (b / "serving.json").write_text(json.dumps({**conf, "max_concurrency": 1, "timeout_s": 0.5}))
    original = ModelService.generate
    flooding = threading.Event()

    def flood(self, prompt, gen, rng):  # far more than loopback's socket buffers (~4 MB) hold
        if gen.max_tokens == 1:
            yield from original(self, prompt, gen, rng)
            return
        flooding.set()  # the stream holds the only slot
        for i in range(2000):
            yield Piece("x" * 10_000, None, i + 1)
        yield Piece("", "length", 2000)

    monkeypatch.setattr(ModelService, "generate", flood)
    monkeypatch.setattr(server, "STALL_SECONDS", 1.0)
    with serving(b) as u:
        reader = socket.socket()
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        reader.connect(address(u))
        reader.sendall(post("/v1/completions", {"prompt": "a", "stream": True}))  # and never read
        try:
            assert flooding.wait(30)
            deadline = time.monotonic() + 30
            while (status := ask(u, "/v1/completions", {"prompt": "a", "max_tokens": 1})[0]) == 429:
                assert time.monotonic() < deadline, "the stream of a client that stopped reading kept the only slot"
            assert status == 200
            assert closed_within(reader, 30)  # and its connection is closed
        finally:
            reader.close()


def test_an_unsupported_value_is_not_echoed_back_whole(url):
    status, out = ask(url, "/v1/chat/completions", {"messages": ASK, "logit_bias": {str(i): 1 for i in range(50_000)}})
    assert status == 400 and out["error"]["param"] == "logit_bias", out
    assert out["error"]["message"].startswith('logit_bias={"0": 1, "1": 1') and len(out["error"]["message"]) < 200

"""`llmdr serve` as OpenAI's own Python client sees it (sync, async, streaming), directly and through the Caddy router
llmdr runs in front of the regions; and the router's reused upstream connections staying in step after a bad
request (an unknown route, an oversized body) from another client."""

from __future__ import annotations

import asyncio
import http.client
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import openai
import pytest

from llmdr.failover.router.caddy import Caddy
from llmdr.serving.server import MAX_BODY
from llmdr.serving.tinymodel import TinyModel, write_demo_bundle
from tests.support import config as builder
from tests.support.ports import free_port
from tests.support.serving import read_answer, start_serve, stop_serve

LLMDR = [sys.executable, "-m", "llmdr.cli"]
MODEL = "llmdr-tiny"
ASK = [{"role": "user", "content": "how do I restore a snapshot ?"}]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    b = tmp_path_factory.mktemp("oai") / "tiny"
    write_demo_bundle(b)
    return b


@pytest.fixture(scope="module")
def served(bundle):
    proc, url = start_serve(bundle)
    yield url
    stop_serve(proc)


@pytest.fixture(scope="module")
def routed(served, tmp_path_factory):
    """The Caddy router llmdr runs, sending every request to the `llmdr serve` above; yields the router's URL."""
    tmp = tmp_path_factory.mktemp("router")
    regions = [builder.region_yaml("primary", "primary", 9000, "llmdr-primary", keys="LLMDR_T",
                                   lines=f"    serving: {{url: '{served}'}}"),
               builder.region_yaml("secondary", "secondary", 9001, "llmdr-secondary", keys="LLMDR_T")]
    router = f"router: {{kind: caddy, listen: 'http://127.0.0.1:{free_port()}', admin: 'http://127.0.0.1:{free_port()}'}}"
    cfg = builder.write_config(tmp / "llmdr.yaml", builder.config_yaml(regions, bundle="{name: b, path: bundle}",
                                                                      extra=router, state_dir=tmp / "state"))
    caddy = Caddy(cfg)
    caddy.start("primary")
    try:
        yield caddy.url
    finally:
        caddy.stop()


@pytest.fixture(scope="module")
def expected(bundle):
    model = TinyModel(bundle)
    return model.chat(ASK), model


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30)


def raw(url: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None, parse: bool = True):
    """One request on a fresh connection: (status, headers, the body parsed as JSON, or raw if not ``parse``)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, resp.headers, json.loads(data) if parse else data  # JSON, errors included
    finally:
        conn.close()


# --- the official client, directly and through the router ---------------------------------------------------------


@pytest.mark.parametrize("via", ["direct", "router"])
def test_sync_client_chat_completions_and_models(via, served, routed, expected):
    (text, n_in, n_out, _), _ = expected
    c = client(served if via == "direct" else routed)
    out = c.chat.completions.create(model=MODEL, messages=ASK)
    assert out.choices[0].message.content == text and out.choices[0].message.role == "assistant"
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (n_in, n_out)
    assert [m.id for m in c.models.list()] == [MODEL]
    assert c.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError) as err:
        c.models.retrieve("gpt-9")
    assert err.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError) as err:
        c.chat.completions.create(model="gpt-9", messages=ASK)
    assert err.value.code == "model_not_found" and "llmdr-tiny" in err.value.message


@pytest.mark.parametrize("via", ["direct", "router"])
def test_streaming_with_usage_matches_the_whole_answer(via, served, routed, expected):
    (text, n_in, n_out, finish), _ = expected
    c = client(served if via == "direct" else routed)
    chunks = list(c.chat.completions.create(model=MODEL, messages=ASK, stream=True,
                                            stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len(chunks) > 3, "the answer came in one piece, not streamed"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks[:-1]) == text
    assert chunks[-2].choices[0].finish_reason == finish
    assert all(ch.usage is None for ch in chunks[:-1]) and chunks[-1].choices == []
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (n_in, n_out)
    # text completions stream too; without include_usage no usage chunk
    whole = c.completions.create(model=MODEL, prompt="the river and", max_tokens=6)
    parts = list(c.completions.create(model=MODEL, prompt="the river and", max_tokens=6, stream=True))
    assert "".join(p.choices[0].text for p in parts) == whole.choices[0].text
    assert parts[-1].choices[0].finish_reason == "length" and all(p.usage is None for p in parts)


def test_the_stream_is_server_sent_events(served):
    body = json.dumps({"messages": ASK, "stream": True, "max_tokens": 3}).encode()
    req = urllib.request.Request(served + "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        events = resp.read().decode().split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    assert all(e.startswith("data: {") for e in events[:-2])
    assert json.loads(events[0][6:])["object"] == "chat.completion.chunk"


def test_async_client_streams_through_the_router(routed, expected):
    (text, _, _, _), _ = expected

    async def run() -> tuple[str, str]:
        c = openai.AsyncOpenAI(base_url=routed + "/v1", api_key="unused", max_retries=0, timeout=30)
        whole = await c.chat.completions.create(model=MODEL, messages=ASK)
        stream = await c.chat.completions.create(model=MODEL, messages=ASK, stream=True)
        streamed = "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])
        await c.close()
        return whole.choices[0].message.content, streamed

    assert asyncio.run(run()) == (text, text)


# --- the request parameters ------------------------------------------------------------------------------------------


def test_list_prompts_n_and_token_prompts(served, expected):
    _, model = expected
    c = client(served)
    out = c.completions.create(model=MODEL, prompt=["the river and", "how do I"], max_tokens=4, n=2)
    assert [ch.index for ch in out.choices] == [0, 1, 2, 3]
    first, second = model.complete("the river and", 4)[0], model.complete("how do I", 4)[0]
    assert [ch.text for ch in out.choices] == [first, first, second, second]  # greedy: n equal choices
    ids = model.tokenizer.encode("the river and").ids
    assert c.completions.create(model=MODEL, prompt=ids, max_tokens=4).choices[0].text == first
    assert out.usage.prompt_tokens == len(ids) + len(model.tokenizer.encode("how do I").ids)
    for empty in ("", [[]]):  # generated from the begin-of-sequence token, as real servers do
        out = c.completions.create(model=MODEL, prompt=empty, max_tokens=3)
        assert out.usage.prompt_tokens == 1 and out.usage.completion_tokens == 3


def test_content_parts_and_stop(served, expected):
    (text, _, _, _), _ = expected
    c = client(served)
    parts = [{"role": "user", "content": [{"type": "text", "text": ASK[0]["content"]}]}]
    assert c.chat.completions.create(model=MODEL, messages=parts).choices[0].message.content == text
    words = text.split()
    assert len(words) >= 3, text
    stop = " " + words[2]
    cut = c.chat.completions.create(model=MODEL, messages=ASK, stop=[stop, "zzz-never"])
    assert cut.choices[0].message.content == text[:text.index(stop)] and cut.choices[0].finish_reason == "stop"
    streamed = list(c.chat.completions.create(model=MODEL, messages=ASK, stop=stop, stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in streamed) == text[:text.index(stop)]
    with pytest.raises(openai.BadRequestError) as err:
        c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": [
            {"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}])
    assert err.value.status_code == 400 and err.value.param == "messages[0].content[1]"
    assert "text parts only" in err.value.message


def test_sampling_is_honoured_and_seeded(served, expected):
    (text, _, _, _), _ = expected
    c = client(served)

    def ask(**kw) -> list[str]:
        out = c.chat.completions.create(model=MODEL, messages=ASK, max_tokens=12, **kw)
        return [ch.message.content for ch in out.choices]

    greedy = ask()
    assert greedy == [text] and ask(temperature=0) == greedy
    assert ask(temperature=1.5, top_p=1e-9, seed=1) == greedy  # a nucleus of one token is greedy
    sampled = ask(temperature=1.5, seed=7, n=3)
    assert ask(temperature=1.5, seed=7, n=3) == sampled  # the seed makes sampling reproducible
    assert len(set(sampled) | {text}) > 1, "temperature 1.5 gave the greedy answer every time"


# --- errors: OpenAI's shapes and status codes --------------------------------------------------------------------


@pytest.mark.parametrize("method,path,body,status,param,words", [
    ("POST", "/v1/chat/completions", {"messages": "hi"}, 400, "messages", "valid list"),
    ("POST", "/v1/chat/completions", {"messages": []}, 400, "messages", "at least 1"),
    ("POST", "/v1/chat/completions", {"messages": ASK, "temperature": "hot"}, 400, "temperature", "number"),
    ("POST", "/v1/chat/completions", {"messages": ASK, "top_p": 0}, 400, "top_p", "greater than 0"),
    ("POST", "/v1/chat/completions", {"messages": ASK, "n": 0}, 400, "n", "greater than or equal to 1"),
    ("POST", "/v1/chat/completions", {"messages": ASK, "tools": [{"type": "function"}]}, 400, "tools", "not supported"),
    ("POST", "/v1/chat/completions", {"messages": ASK, "top_k": 5}, 400, "top_k", "Unrecognized request argument"),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "tool", "content": "x"}]}, 400, "messages[0].role", "tool"),
    ("POST", "/v1/chat/completions", {"messages": ASK, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop", "at most 4"),
    ("POST", "/v1/chat/completions", {"messages": ASK, "stream_options": {"include_usage": True}}, 400,
     "stream_options", "stream: true"),
    ("POST", "/v1/completions", {"prompt": 42}, 400, "prompt", "valid"),
    ("POST", "/v1/completions", {"prompt": [999999]}, 400, "prompt", "outside this model's vocabulary"),
    ("POST", "/v1/completions", {"prompt": "x", "max_tokens": -1}, 400, "max_tokens", "greater than or equal to 0"),
    ("POST", "/v1/completions", {"prompt": "word " * 300}, 400, "prompt", "at most 200"),
    ("POST", "/v1/completions", b"{not json", 400, None, "not valid JSON"),
    ("POST", "/v1/completions", b"[" * 100_000 + b"]" * 100_000, 400, None, "nests too deeply"),
    ("POST", "/v1/completions", {"prompt": "x", "stop": "y" * 201}, 400, "stop", "at most 200 characters"),
    ("POST", "/v1/completions", {"prompt": ["x"] * 9, "n": 8}, 400, "prompt", "over 64 per request"),
    ("POST", "/v1/completions", [1, 2], 400, None, "JSON object"),
    ("POST", "/v1/embeddings", {"input": "x"}, 404, None, "Invalid URL (POST /v1/embeddings)"),
    ("GET", "/v1/chat/completions", None, 405, None, "Method not allowed"),
    ("GET", "/v1/models/gpt-9", None, 404, "model", "does not exist"),
])
def test_errors_have_openai_shapes(served, method, path, body, status, param, words):
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    got, headers, out = raw(served, method, path, data)
    assert got == status, out
    assert set(out) == {"error"} and set(out["error"]) == {"message", "type", "param", "code"}
    assert out["error"]["type"] == "invalid_request_error" and out["error"]["param"] == param
    assert words in out["error"]["message"], out
    assert len(headers["x-llmdr-bundle-digest"]) == 64


def post_head(length: int, extra: bytes = b"") -> bytes:
    return (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n%s\r\n" % (length, extra))


def test_an_oversized_body_gets_413_after_it_was_read_and_the_connection_stays_usable(served):
    host, port = served.removeprefix("http://").split(":")
    body = b'{"prompt": "' + b"x" * MAX_BODY + b'"}'
    ask = json.dumps({"prompt": "the river and", "max_tokens": 3}).encode()
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(post_head(len(body)) + body)
        f = s.makefile("rb")
        status, headers, out = read_answer(f)
        assert status == 413 and out["error"]["code"] == "request_too_large", out
        assert headers.get("connection") != "close"
        s.sendall(post_head(len(ask)) + ask)  # the same connection, in step: the next request is answered
        status, _, out = read_answer(f)
        assert status == 200 and out["object"] == "text_completion", out
    # chunked, no length given: counted as it comes
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("POST", "/v1/completions", body=iter([body[:600_000], body[600_000:]]),
                 headers={"Content-Type": "application/json"}, encode_chunked=True)
    resp = conn.getresponse()
    assert resp.status == 413 and json.loads(resp.read())["error"]["code"] == "request_too_large"
    conn.close()


@pytest.mark.parametrize("case", ["too big to drain", "waits for 100-continue"])
def test_a_body_not_worth_reading_gets_413_at_once_and_a_closed_connection(case, bundle, monkeypatch):
    from llmdr.serving import server
    from tests.support.serving import serving

    monkeypatch.setattr(server, "DRAIN_BYTES", 2 * MAX_BODY)
    declared = 5 * MAX_BODY if case == "too big to drain" else 2 * MAX_BODY
    with serving(bundle) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(post_head(declared, b"Expect: 100-continue\r\n" if case == "waits for 100-continue" else b""))
            f = s.makefile("rb")  # nothing of the body sent: the answer must not wait for it
            status, headers, out = read_answer(f)
            assert status == 413 and out["error"]["code"] == "request_too_large", out
            assert headers["connection"] == "close" and f.read() == b""  # closed, nothing more on the wire


# --- a bad request must not hurt the next client on a reused upstream connection ----------------------------------


@pytest.mark.parametrize("bad", ["unknown route", "oversized body"])
def test_a_bad_request_does_not_poison_the_routers_upstream_connection(bad, routed):
    big = json.dumps({"prompt": "x" * (MAX_BODY + 10)}).encode()
    for _ in range(5):
        if bad == "unknown route":
            status, _, out = raw(routed, "POST", "/v1/embeddings", json.dumps({"input": "hello " * 50}).encode())
        else:
            status, _, out = raw(routed, "POST", "/v1/completions", big)
        # another client, whose request Caddy sends on the upstream connection the bad one used
        ok, headers, answer = raw(routed, "POST", "/v1/chat/completions", json.dumps({"messages": ASK}).encode(),
                                  parse=False)
        assert ok == 200 and json.loads(answer)["object"] == "chat.completion", answer[:300]
        assert headers["X-Llmdr-Region"] == "primary"
        assert (status, out["error"]["code"]) == ((404, "unknown_url") if bad == "unknown route" else
                                                  (413, "request_too_large"))


# --- stopping ----------------------------------------------------------------------------------------------------


def test_sigterm_lets_the_stream_in_flight_finish(bundle):
    proc, url = start_serve(bundle)
    try:
        c = client(url)
        stream = c.completions.create(model=MODEL, prompt="the river and", max_tokens=30, stream=True)
        first = next(iter(stream))
        proc.send_signal(signal.SIGTERM)
        rest = list(stream)
        assert first.choices[0].text and rest[-1].choices[0].finish_reason in ("stop", "length")
        assert proc.wait(timeout=15) == 0, proc.stderr.read().decode()
        with pytest.raises(openai.APIConnectionError):
            c.models.list()
    finally:
        stop_serve(proc)


@pytest.mark.parametrize("args,words", [(["--port", "99999"], "--port 99999 is not a TCP port"),
                                        (["--host", "no-such-host.invalid"], "--host no-such-host.invalid")])
def test_serve_refuses_a_bad_address(bundle, args, words):
    r = subprocess.run(LLMDR + ["serve", str(bundle), *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, r.stderr


# max_concurrency: generations at once -------------------------------------------------------------------------------
@pytest.fixture
def one_slot(tmp_path, monkeypatch):
    """`llmdr serve`'s server (in this process) for a bundle allowing one generation at a time and a 0.5 s queue wait;
    every generation sets ``entered`` and then waits for ``release``."""
    import threading

    from llmdr.serving.service import ModelService
    from tests.support.serving import serving

    b = tmp_path / "tiny"
    write_demo_bundle(b)
    conf = json.loads((b / "serving.json").read_text())
    (b / "serving.json").write_text(json.dumps({**conf, "max_concurrency": 1, "timeout_s": 0.5}))
    entered, release = threading.Event(), threading.Event()
    original = ModelService.generate

    def held(self, *args):
        entered.set()
        release.wait(30)
        yield from original(self, *args)

    monkeypatch.setattr(ModelService, "generate", held)
    with serving(b) as url:
        yield url, entered, release
    release.set()


def test_a_request_beyond_max_concurrency_waits_then_gets_429(one_slot):
    import threading

    url, entered, release = one_slot
    first: dict = {}
    t = threading.Thread(target=lambda: first.update(r=client(url).chat.completions.create(model=MODEL, messages=ASK)))
    t.start()
    assert entered.wait(30)  # the first request holds the only slot
    with pytest.raises(openai.RateLimitError) as exc:
        client(url).with_options(max_retries=0).chat.completions.create(model=MODEL, messages=ASK)
    assert exc.value.status_code == 429 and exc.value.response.headers["retry-after"] == "1"
    assert exc.value.code == "rate_limit_exceeded" and "1 generation slots stayed busy" in exc.value.message
    release.set()
    t.join(30)
    assert first["r"].choices[0].message.content  # the first one was served
    assert client(url).chat.completions.create(model=MODEL, messages=ASK).choices[0].message.content  # slot free


def test_a_stream_left_by_its_client_frees_its_slot(one_slot):
    url, entered, release = one_slot
    port = int(url.rsplit(":", 1)[1])
    body = json.dumps({"model": MODEL, "messages": ASK, "stream": True}).encode()
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % len(body) + body)
    assert entered.wait(30)
    status, _, _ = raw(url, "POST", "/v1/chat/completions", json.dumps({"model": MODEL, "messages": ASK}).encode())
    assert status == 429  # the stream holds the slot
    s.close()  # the client leaves mid-stream
    release.set()
    deadline = time.monotonic() + 10
    while (status := raw(url, "POST", "/v1/chat/completions",
                         json.dumps({"model": MODEL, "messages": ASK}).encode())[0]) == 429:
        assert time.monotonic() < deadline, "the slot of the abandoned stream was never freed"
    assert status == 200


@pytest.mark.parametrize("bad", [0, -1, "8", 1.5, True])
def test_a_bad_max_concurrency_is_refused(tmp_path, bad):
    from llmdr.errors import UsageError
    from llmdr.serving.service import ModelService

    b = tmp_path / "tiny"
    write_demo_bundle(b)
    conf = json.loads((b / "serving.json").read_text())
    (b / "serving.json").write_text(json.dumps({**conf, "max_concurrency": bad}))
    with pytest.raises(UsageError, match="max_concurrency must be a positive whole number"):
        ModelService(b)

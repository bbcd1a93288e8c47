"""An OpenAI-compatible HTTP server for a bundle folder: the local stand-in for vLLM, TGI or llama.cpp's server.

Starlette on uvicorn (h11). Endpoints: ``GET /health``, ``GET /v1/models``, ``GET /v1/models/{id}``,
``POST /v1/completions``, ``POST /v1/chat/completions`` (both with ``stream: true`` as server-sent events). Everything
else in llmdr (golden checks, failover, drills) talks to a model only through this API, so a real vLLM endpoint is
checked the same way. The model itself is ``service.ModelService``; the request and response shapes are
``openai_api``. Every answer, errors included, is JSON and carries ``x-llmdr-bundle-digest``.

At most ``max_concurrency`` generations (serving.json) run at once, a stream holding its slot until its last event or
the client's disconnect; more requests wait up to ``timeout_s`` for a slot, then get 429 (OpenAI's
``rate_limit_exceeded``) with ``Retry-After``.

Connections behind a shared router stay in step: a request body is always read to its end before the answer (an
unknown route included), so the next request on a reused keep-alive connection starts where the client's did; a
body over ``MAX_BODY`` gets 413 after the rest of it was read and dropped (up to 64 MiB, 10 s), or at once with the
connection closed if it is bigger, slower, or not sent yet (``Expect: 100-continue``). A request framed by both
Content-Length and Transfer-Encoding is refused and its connection closed (request smuggling); a request head must
come within ``HEAD_SECONDS`` and a body within ``BODY_SECONDS`` (slow loris); a stream its client stops reading is
ended after ``STALL_SECONDS``, freeing its slot.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import threading
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from llmdr.serving import openai_api as api
from llmdr.serving.service import REFUSAL, BadRequest, Busy, ModelNotFound, ModelService, bundle_digest

__all__ = ["MAX_BODY", "REFUSAL", "BadRequest", "ModelService", "Server", "bundle_digest", "create_app", "make_server"]

log = logging.getLogger(__name__)

MAX_BODY = 1_000_000  # bytes of request body
DRAIN_BYTES = 64 << 20  # before a 413, read (and drop) at most this much more of the body...
DRAIN_SECONDS = 10.0  # ...for at most this long; past either, the 413 comes at once and the connection is closed
# A client gets this long for a request's head, counted from its connection or from its first byte after an answer,
# and this long for the whole body (at most MAX_BODY): a client trickling bytes (slow loris) cannot keep a connection,
# and the file descriptor behind it, forever
HEAD_SECONDS = 30.0
BODY_SECONDS = 60.0
# A streamed answer whose client reads nothing for this long (the socket's buffers full) is ended like a disconnect:
# its generation slot is freed and the connection closed, so clients that stop reading cannot hold every slot
STALL_SECONDS = 60.0
# Idle keep-alive connections are kept longer than a proxy keeps its idle upstream connections (Caddy: 2 min), so
# the proxy closes them first and never sends a request into a connection this server is closing.
KEEP_ALIVE_S = 150
GRACE_S = 8  # SIGTERM: requests in flight may finish for this long (replica stop kills after 10 s)
ROUTES = "GET /health, GET /v1/models, GET /v1/models/{id}, POST /v1/completions, POST /v1/chat/completions"


def _json(status: int, payload: dict, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(payload, status_code=status, headers=headers)


def create_app(service: ModelService, *, max_body: int = MAX_BODY,
               on_answer: Callable[[str, int | None], None] | None = None) -> Any:
    """The ASGI app serving ``service``. ``on_answer(text, completion tokens)`` sees every answer after it is made
    (a streamed one once its choice finished), e.g. the monitor's drift sampling; it must not raise."""

    async def health(request: Request) -> Response:
        return _json(200, service.health())

    async def models(request: Request) -> Response:
        return _json(200, service.models())

    async def model(request: Request) -> Response:
        model_id = request.path_params["model_id"]
        if model_id != service.name:
            raise ModelNotFound(f"The model {model_id!r} does not exist: this server serves {service.name!r}",
                                param="model", code="model_not_found")
        return _json(200, service.model_card())

    slots = asyncio.Semaphore(service.max_concurrency)

    async def take_slot() -> Slot:
        try:
            async with asyncio.timeout(service.queue_timeout):
                await slots.acquire()
        except TimeoutError:
            raise Busy(f"all {service.max_concurrency} generation slots stayed busy for {service.queue_timeout:g} s; "
                       "retry later", code="rate_limit_exceeded") from None
        return Slot(slots)

    async def completions(request: Request) -> Response:
        req = api.parse(await request.body(), api.CompletionRequest)
        service.check_model(req.model)
        gen = api.generation(req)
        prompts = await run_in_threadpool(api.completion_prompts, service, req)
        service.check_budget(len(prompts) * gen.n, gen)
        return await _answer(api.Reply(service, chat=False), prompts, gen, req)

    async def chat(request: Request) -> Response:
        req = api.parse(await request.body(), api.ChatRequest)
        service.check_model(req.model)
        gen = api.generation(req, req.max_completion_tokens)
        service.check_budget(gen.n, gen, "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens")
        messages = api.chat_messages(req.messages)
        prompt = await run_in_threadpool(service.chat_prompt, messages)
        return await _answer(api.Reply(service, chat=True), [prompt], gen, req)

    async def _answer(reply: api.Reply, prompts: list, gen, req) -> Response:
        slot = await take_slot()
        if req.stream:
            include = bool(req.stream_options and req.stream_options.include_usage)

            async def events():
                try:
                    async for event in iterate_in_threadpool(api.stream_events(service, reply, prompts, gen,
                                                                               include, on_answer)):
                        yield event
                finally:
                    slot.release()

            try:  # the background task frees the slot too when the client left before the first event
                return StreamingResponse(events(), media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache"}, background=BackgroundTask(slot.release))
            except BaseException:
                slot.release()
                raise

        def whole() -> dict:
            rng = service.rng(gen)
            runs = [service.run(p, gen, rng) for p in prompts for _ in range(gen.n)]
            if on_answer is not None:
                for text, _, tokens in runs:
                    on_answer(text, tokens)
            return reply.whole([(text, finish) for text, finish, _ in runs], sum(len(p.ids) for p in prompts),
                               sum(tokens for _, _, tokens in runs))

        try:
            return _json(200, await run_in_threadpool(whole))
        finally:
            slot.release()

    async def bad_request(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, BadRequest)
        if isinstance(exc, Busy):
            return _json(429, api.error_body(str(exc), "requests", code=exc.code), headers={"Retry-After": "1"})
        status = 404 if isinstance(exc, ModelNotFound) else 400
        return _json(status, api.error_body(str(exc), param=exc.param, code=exc.code))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        where = f"{request.method} {request.url.path}"
        if exc.status_code == 404:
            msg, code = f"Invalid URL ({where}): llmdr serve answers {ROUTES}", "unknown_url"
        elif exc.status_code == 405:
            msg, code = f"Method not allowed ({where}); allowed: {(exc.headers or {}).get('Allow')}", None
        else:
            msg, code = f"{where}: {exc.detail}", None
        return _json(exc.status_code, api.error_body(msg, param=None, code=code), headers=exc.headers)

    async def server_error(request: Request, exc: Exception) -> Response:
        from llmdr.errors import UnsafeTemplate

        if isinstance(exc, UnsafeTemplate):  # the bundle's template, refused by the sandbox: nothing of it ran
            log.error("%s", exc)
        return _json(500, api.error_body(f"internal error: {exc}", "server_error"))

    app = Starlette(routes=[
        Route("/health", health, methods=["GET"]),
        Route("/healthz", health, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", model, methods=["GET"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
    ], exception_handlers={BadRequest: bad_request, HTTPException: http_error, Exception: server_error})
    return BodyLimit(app, max_body, service.digest)


class Slot:
    """One generation slot taken from the server's semaphore; ``release`` is safe to call more than once."""

    def __init__(self, slots: asyncio.Semaphore) -> None:
        self._slots: asyncio.Semaphore | None = slots

    def release(self) -> None:
        if self._slots is not None:
            self._slots.release()
            self._slots = None


class BodyLimit:
    """ASGI middleware: reads the whole request body (at most ``limit`` bytes) before the app runs, so no answer ever
    leaves part of a body on the connection; adds the bundle digest header to every answer. Over the limit: 413
    with an OpenAI error body, the rest drained for a bounded time, then the connection closed."""

    def __init__(self, app: Any, limit: int, digest: str) -> None:
        self.app, self.limit, self.digest = app, limit, digest.encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        stalled = asyncio.Event()

        async def tagged(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-llmdr-bundle-digest", self.digest)]
            if stalled.is_set():
                return  # the answer was given up: the rest goes nowhere
            if message["type"] == "http.response.body" and message.get("more_body"):  # a stream: the client may stall
                try:
                    async with asyncio.timeout(STALL_SECONDS):
                        await send(message)
                except TimeoutError:
                    log.warning("ending a stream to %s: its client read nothing for %g s", scope.get("client"),
                                STALL_SECONDS)
                    stalled.set()
                return
            await send(message)

        headers = dict(scope["headers"])
        # both framings: the server parsed it as chunked, a proxy in front may have read Content-Length (request
        # smuggling); RFC 9112 6.3 says to answer and close the connection, never to read the next request on it
        smuggled = b"transfer-encoding" in headers and b"content-length" in headers
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._too_large(receive, tagged, int(declared), headers, close=smuggled)
            return
        chunks, total, more = [], 0, True
        try:
            async with asyncio.timeout(BODY_SECONDS):
                while more and total <= self.limit:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    chunk = message.get("body", b"")
                    total += len(chunk)
                    chunks.append(chunk)
                    more = message.get("more_body", False)
        except TimeoutError:
            await _refuse(tagged, 408, f"the request body did not arrive within {BODY_SECONDS:g} s ({total} bytes "
                                       "came); send it at once", "request_timeout")
            return
        if total > self.limit:  # outside the body's deadline: the drain has its own
            await self._too_large(receive, tagged, None, headers, more=more, close=smuggled)
            return
        if smuggled:
            await _refuse(tagged, 400, "the request has both Content-Length and Transfer-Encoding; send one of them "
                                       "(a proxy and this server could read the body differently)", "invalid_framing")
            return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            # after the body: only http.disconnect, which a streamed answer watches for; a stalled client counts as
            # gone (the app stops, uvicorn closes the connection of the unfinished answer)
            came, stall = asyncio.ensure_future(receive()), asyncio.ensure_future(stalled.wait())
            try:
                await asyncio.wait({came, stall}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiting in (came, stall):
                    if not waiting.done():
                        waiting.cancel()
            return came.result() if came.done() and not came.cancelled() else {"type": "http.disconnect"}

        await self.app(scope, replay, tagged)

    async def _too_large(self, receive: Any, send: Any, declared: int | None, headers: dict, more: bool = True,
                         close: bool = False) -> None:
        """Answer 413. The rest of the body is read and dropped first (at most ``DRAIN_BYTES``, for at most
        ``DRAIN_SECONDS``), so the answer comes after the request like any other and the connection stays in step
        and open. Answering while the body is still coming raced a reverse proxy: Caddy flushed the 413's head to
        its client, then dropped the upstream connection (and the 413's body with it) when writing the rest of the
        request failed. Only a body too big or too slow to drain, or a client waiting for ``100-continue`` (it has
        sent nothing yet), gets the 413 at once with ``Connection: close``."""
        size = f"{declared} bytes" if declared is not None else "more than that"
        refusal = f"the request body is {size}; llmdr serve accepts at most {self.limit} bytes. Send a shorter prompt."
        waiting = b"100-continue" in headers.get(b"expect", b"").lower()
        complete = not more
        if more and not waiting and (declared is None or declared <= DRAIN_BYTES):
            drained = 0
            try:
                async with asyncio.timeout(DRAIN_SECONDS):
                    while drained < DRAIN_BYTES:
                        message = await receive()
                        if message["type"] != "http.request":
                            return  # the client left: nobody to answer
                        drained += len(message.get("body", b""))
                        if not message.get("more_body"):
                            complete = True
                            break
            except TimeoutError:
                pass
        await _refuse(send, 413, refusal, "request_too_large", close=close or not complete)


async def _refuse(send: Any, status: int, message: str, code: str, close: bool = True) -> None:
    """Answer ``status`` with an OpenAI error body from the middleware (the app never saw the request);
    ``Connection: close`` unless ``close`` is false."""
    body = json.dumps(api.error_body(message, code=code)).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status,
                "headers": [*head, (b"connection", b"close")] if close else head})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class Server:
    """uvicorn serving an app on a socket bound here (so a busy port fails at once and port 0 is known), with the
    calls of ``http.server``'s servers: ``serve_forever``, ``shutdown`` (from another thread), ``server_close``,
    ``server_address``. In the main thread, SIGTERM and SIGINT stop it gracefully: no new connections, requests in
    flight finish (up to ``GRACE_S``); after SIGTERM ``serve_forever`` returns, after SIGINT it raises
    KeyboardInterrupt."""

    def __init__(self, app: Any, host: str, port: int) -> None:
        import uvicorn

        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        self.socket = socket.socket(family, kind, proto)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind(addr)
            self.socket.listen(128)
        except OSError:
            self.socket.close()
            raise
        self.server_address = self.socket.getsockname()[:2]
        config = uvicorn.Config(app, http=_head_deadline_protocol(), ws="none", lifespan="off", loop="asyncio", log_config=None,
                                timeout_keep_alive=KEEP_ALIVE_S, timeout_graceful_shutdown=GRACE_S,
                                server_header=False, headers=[("server", "llmdr-serve")])
        self._uvicorn = uvicorn.Server(config)
        self._entered = threading.Event()
        self._done = threading.Event()

    def serve_forever(self) -> None:
        self._entered.set()
        main = threading.current_thread() is threading.main_thread()
        # uvicorn re-raises the signal that stopped it once it has shut down: for SIGTERM, this handler makes that
        # a clean return (exit 0) instead of a kill
        previous = signal.signal(signal.SIGTERM, lambda *_: None) if main else None
        try:
            self._uvicorn.run(sockets=[self.socket])
        finally:
            if main:
                signal.signal(signal.SIGTERM, previous)
            self._done.set()

    def shutdown(self) -> None:
        """Stop ``serve_forever`` (running in another thread) and wait until it has returned."""
        self._uvicorn.should_exit = True
        if self._entered.is_set():
            self._done.wait()

    def server_close(self) -> None:
        self.socket.close()


def _head_deadline_protocol() -> type:
    """uvicorn's h11 protocol with a deadline (``HEAD_SECONDS``) for every request head: from the connection, or from
    the first byte of a head after an answer (an idle keep-alive connection is uvicorn's ``timeout_keep_alive``).
    uvicorn itself waits for a head forever, so clients sending a byte now and then (slow loris) kept any number of
    connections open. Past the deadline the connection is closed; nothing was asked, so nothing is answered."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeadDeadline(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is h11.IDLE:  # part of a head came (a whole one would have moved the state on)
                self._arm()
            else:
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(HEAD_SECONDS, self._expired)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _expired(self) -> None:
            self._head_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                log.info("closing a connection from %s: no whole request head within %g s", self.client, HEAD_SECONDS)
                self.transport.close()

    return HeadDeadline


def make_server(service: ModelService, host: str, port: int,
                on_answer: Callable[[str, int | None], None] | None = None) -> Server:
    return Server(create_app(service, on_answer=on_answer), host, port)

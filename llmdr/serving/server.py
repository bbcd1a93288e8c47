"""An OpenAI-compatible HTTP server for a bundle folder: the local stand-in for vLLM, TGI or llama.cpp's server.

Endpoints: ``GET /health``, ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions`` (no
streaming). Everything else in llmdr (golden checks, failover, drills) talks to a model only through this API, so a
real vLLM endpoint is checked the same way. The server serves ``llmdr-tiny`` bundles (``llmdr demo-bundle``), applies
the bundle's serving config (model name, prompt length limit) and its security rules (a prompt containing a
denylisted phrase gets a refusal with ``finish_reason: content_filter``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from llmdr.errors import UnsafeTemplate, UsageError

log = logging.getLogger(__name__)

REFUSAL = "I can't help with that."


def bundle_digest(folder: Path) -> str:
    """SHA-256 over every file's path and bytes: which bundle, exactly, a server is serving."""
    h = hashlib.sha256()
    for p in sorted(q for q in folder.rglob("*") if q.is_file()):
        h.update(p.relative_to(folder).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


class BadRequest(Exception):
    pass


class ModelService:
    """The model plus the bundle's serving config and security rules; thread-safe (one request at a time)."""

    def __init__(self, folder: Path) -> None:
        from llmdr.serving.tinymodel import TinyModel

        if not (folder / "config.json").is_file():
            raise UsageError(f"{folder} has no config.json: not a model bundle folder")
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
        if model_type != "llmdr-tiny":
            raise UsageError(
                f"{folder} holds a {model_type!r} model; `llmdr serve` runs the llmdr-tiny demo model only. Serve "
                "real models with vLLM, TGI or llama.cpp (same API) and point llmdr at that endpoint."
            )
        self.folder = folder
        self.model = TinyModel(folder)
        serving_file = folder / "serving.json"
        self.serving = json.loads(serving_file.read_text()) if serving_file.exists() else {}
        self.name = str(self.serving.get("model_name") or folder.name)
        self.max_prompt_tokens = int(self.serving.get("max_prompt_tokens", 10_000))
        self.denylist = [line.strip().lower() for f in sorted((folder / "security").glob("*deny*"))
                         for line in f.read_text().splitlines() if line.strip()]
        self.digest = bundle_digest(folder)
        self.started = int(time.time())
        self._lock = threading.Lock()

    def _blocked(self, text: str) -> bool:
        low = text.lower()
        return any(phrase in low for phrase in self.denylist)

    def _max_tokens(self, body: dict) -> int | None:
        value = body.get("max_tokens", body.get("max_completion_tokens"))
        if value is None:
            return None
        if not isinstance(value, int) or value < 0 or value > 512:
            raise BadRequest("max_tokens must be an integer between 0 and 512")
        return value

    def _check_model(self, body: dict) -> None:
        asked = body.get("model")
        if asked not in (None, self.name):
            raise BadRequest(f"model {asked!r} is not served here; this server serves {self.name!r}")

    def complete(self, body: dict) -> dict:
        self._check_model(body)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise BadRequest("prompt must be a string")
        text, n_in, n_out, finish = self._run(prompt, None, self._max_tokens(body))
        return {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
                "model": self.name, "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
                "usage": {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}}

    def chat(self, body: dict) -> dict:
        self._check_model(body)
        messages = body.get("messages")
        if (not isinstance(messages, list) or not messages
                or not all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                           for m in messages)):
            raise BadRequest("messages must be a non-empty list of {role, content} objects with string values")
        text, n_in, n_out, finish = self._run(None, messages, self._max_tokens(body))
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
                "model": self.name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
                "usage": {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}}

    def _run(self, prompt: str | None, messages: list[dict] | None, max_tokens: int | None) -> tuple[str, int, int, str]:
        rendered = prompt if prompt is not None else self.model.render_chat(messages or [])
        n_in = len(self.model.tokenizer.encode(rendered).ids)
        if n_in > self.max_prompt_tokens:
            raise BadRequest(f"the prompt is {n_in} tokens; this server accepts at most {self.max_prompt_tokens}")
        if self._blocked(rendered):
            return REFUSAL, n_in, 0, "content_filter"
        with self._lock:
            return self.model.complete(rendered, max_tokens)

    def health(self) -> dict:
        return {"status": "ok", "model": self.name, "bundle": str(self.folder), "bundle_digest": self.digest}

    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.name, "object": "model", "created": self.started,
                                            "owned_by": "llmdr"}]}


def make_server(service: ModelService, host: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        server_version = "llmdr-serve"
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt: str, *args: Any) -> None:
            log.info("%s %s", self.address_string(), fmt % args)

        def _send(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("x-llmdr-bundle-digest", service.digest)
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
            self._send(status, {"error": {"message": message, "type": kind, "code": None}})

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path in ("/health", "/healthz"):
                self._send(200, service.health())
            elif self.path == "/v1/models":
                self._send(200, service.models())
            else:
                self._error(404, f"no route {self.path}", "not_found")

        def do_POST(self) -> None:  # noqa: N802
            routes = {"/v1/completions": service.complete, "/v1/chat/completions": service.chat}
            handler = routes.get(self.path)
            if handler is None:
                self._error(404, f"no route {self.path}", "not_found")
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
                if length > 1_000_000:
                    raise BadRequest("request body over 1 MB")
                body = json.loads(self.rfile.read(length) or b"null")
                if not isinstance(body, dict):
                    raise BadRequest("the request body must be a JSON object")
                if body.get("stream"):
                    raise BadRequest("stream: true is not supported by llmdr serve")
                self._send(200, handler(body))
            except (BadRequest, ValueError) as exc:
                self._error(HTTPStatus.BAD_REQUEST, str(exc))
            except UnsafeTemplate as exc:  # the bundle's template, refused by the sandbox: nothing of it ran
                log.error("%s", exc)
                self._error(500, str(exc), "server_error")
            except Exception as exc:  # a bug must not kill the server; report it as a 500
                log.exception("request failed")
                self._error(500, f"internal error: {exc}", "server_error")

    httpd = ThreadingHTTPServer((host, port), Handler)
    httpd.daemon_threads = True
    return httpd

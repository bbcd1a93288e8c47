"""The OpenAI API surface of ``llmdr serve``: request validation, response and stream-chunk shapes, error bodies.

Requests are validated strictly (a string where a number belongs is refused, not coerced) and every refusal is an
OpenAI error body ``{"error": {"message", "type", "param", "code"}}`` with status 400 (404 ``model_not_found`` for a
model this server does not serve). A field llmdr cannot honour is refused when set to anything but its neutral
value, never silently ignored: ``tools``, ``logprobs: true``, ``echo``, penalties, ``logit_bias``, JSON modes.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmdr.serving.service import BadRequest, Generation, ModelService, Prompt

log = logging.getLogger(__name__)

MAX_N = 16  # choices per prompt: a CPU demo model, not a batch engine
MAX_CHOICES = 64  # prompts x n per request
MAX_STOP_CHARS = 200
ROLES = {"system", "user", "assistant", "developer"}  # developer: OpenAI's newer name for system

# Fields OpenAI defines that llmdr accepts only at their neutral value (None is always accepted).
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "logprobs": (False, 0), "top_logprobs": (0,), "echo": (False,), "best_of": (1,), "presence_penalty": (0, 0.0),
    "frequency_penalty": (0, 0.0), "logit_bias": ({},), "tools": ([],), "functions": ([],), "suffix": ("",),
    "response_format": ({"type": "text"},), "store": (False,), "tool_choice": ("none", "auto"),
}
HARMLESS = {"user", "metadata", "parallel_tool_calls", "service_tier"}  # accepted, with nothing to do


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Strict):
    include_usage: bool = False


class _Common(_Strict):
    model: str | None = None
    max_tokens: int | None = Field(None, ge=0, le=512)
    n: int = Field(1, ge=1, le=MAX_N)
    stop: Union[str, list[str], None] = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None


class CompletionRequest(_Common):
    prompt: Union[str, list[str], list[int], list[list[int]]]


class ChatRequest(_Common):
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=0, le=512)


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def parse(raw: bytes, model: type[_Common]) -> _Common:
    """The request body as ``model``; BadRequest naming the field for anything else."""
    try:
        body = json.loads(raw) if raw.strip() else None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the request body is not valid JSON ({exc}); send a JSON object") from None
    except RecursionError:
        raise BadRequest("the request body nests too deeply; send a flat JSON object") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object, e.g. {\"model\": ..., \"messages\": [...]}")
    for name in [k for k in body if k not in model.model_fields]:
        value = body.pop(name)
        if value is None or name in HARMLESS or value in NEUTRAL.get(name, ()):
            continue
        if name in NEUTRAL:
            shown = json.dumps(value)
            shown = shown if len(shown) <= 80 else shown[:77] + "..."  # a 1 MB value is not echoed back whole
            raise BadRequest(f"{name}={shown} is not supported by llmdr serve; leave it out", param=name)
        raise BadRequest(f"Unrecognized request argument supplied: {name}", param=name)
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        param = _param(err["loc"])
        raise BadRequest(f"{param or 'body'}: {err['msg']}", param=param) from None


def _param(loc: tuple) -> str | None:
    """``('messages', 0, 'content')`` -> ``messages[0].content``; union branch names are dropped."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "[" in part or part in ("str", "int", "float", "bool", "list", "dict") or part[:1].isupper():
            continue
        else:
            out += ("." if out else "") + part
    return out or None


def generation(req: _Common, max_tokens: int | None = None) -> Generation:
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stops) > 4 or any(not s or len(s) > MAX_STOP_CHARS for s in stops):
        raise BadRequest(f"stop: give at most 4 non-empty strings of at most {MAX_STOP_CHARS} characters",
                         param="stop")
    if req.stream_options is not None and not req.stream:
        raise BadRequest("stream_options: only allowed with stream: true", param="stream_options")
    return Generation(max_tokens=max_tokens if max_tokens is not None else req.max_tokens, n=req.n, stop=stops,
                      temperature=req.temperature, top_p=req.top_p, seed=req.seed)


def completion_prompts(service: ModelService, req: CompletionRequest) -> list[Prompt]:
    p = req.prompt
    if isinstance(p, str):
        return [service.text_prompt(p)]
    if not p:
        raise BadRequest("prompt: give a string, a list of strings or token ids, not an empty list", param="prompt")
    if len(p) * req.n > MAX_CHOICES and not isinstance(p[0], int):
        raise BadRequest(f"prompt: {len(p)} prompts x n={req.n} choices is over {MAX_CHOICES} per request; send fewer",
                         param="prompt")
    if isinstance(p[0], int):
        return [service.token_prompt(p)]  # type: ignore[arg-type]
    if isinstance(p[0], str):
        return [service.text_prompt(t, f"prompt[{i}]") for i, t in enumerate(p)]  # type: ignore[arg-type]
    return [service.token_prompt(ids, f"prompt[{i}]") for i, ids in enumerate(p)]  # type: ignore[arg-type]


def chat_messages(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Messages as ``{role, content}`` strings: text content parts joined by newlines; anything else refused."""
    out = []
    for i, m in enumerate(messages):
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise BadRequest(f"messages[{i}].role: {role!r} is not supported; use one of {', '.join(sorted(ROLES))}"
                             " (llmdr serve has no tools)", param=f"messages[{i}].role")
        extra = sorted(set(m) - {"role", "content", "name"})
        if extra:
            raise BadRequest(f"messages[{i}]: {', '.join(extra)} not supported (llmdr serve has no tools)",
                             param=f"messages[{i}].{extra[0]}")
        if isinstance(content, list):
            texts = []
            for j, part in enumerate(content):
                kind = part.get("type") if isinstance(part, dict) else None
                if kind != "text" or not isinstance(part.get("text"), str):
                    raise BadRequest(f"messages[{i}].content[{j}]: a {kind or type(part).__name__!s} part is not "
                                     "supported; llmdr serve's model reads text parts only "
                                     "({\"type\": \"text\", \"text\": ...})", param=f"messages[{i}].content[{j}]")
                texts.append(part["text"])
            content = "\n".join(texts)
        if not isinstance(content, str):
            raise BadRequest(f"messages[{i}].content must be a string or a list of text parts",
                             param=f"messages[{i}].content")
        out.append({"role": "system" if role == "developer" else role, "content": content})
    return out


# --- responses ------------------------------------------------------------------------------------------------------


class Reply:
    """The id, timestamp and shapes shared by one response and all its stream chunks."""

    def __init__(self, service: ModelService, chat: bool) -> None:
        self.chat = chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.model = service.name

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def whole(self, choices: list[tuple[str, str]], n_in: int, n_out: int) -> dict:
        """The non-streamed response: ``choices`` as (text, finish reason) in index order."""
        if self.chat:
            shaped = [{"index": i, "message": {"role": "assistant", "content": text}, "logprobs": None,
                       "finish_reason": finish} for i, (text, finish) in enumerate(choices)]
        else:
            shaped = [{"index": i, "text": text, "logprobs": None, "finish_reason": finish}
                      for i, (text, finish) in enumerate(choices)]
        return self._head("chat.completion" if self.chat else "text_completion") | {
            "choices": shaped, "usage": usage(n_in, n_out)}

    def chunk(self, index: int, text: str | None, finish: str | None, *, role: bool = False,
              with_usage: bool = False) -> dict:
        if self.chat:
            delta: dict = {"role": "assistant", "content": ""} if role else ({} if text is None else {"content": text})
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}
        out = self._head("chat.completion.chunk" if self.chat else "text_completion") | {"choices": [choice]}
        return out | ({"usage": None} if with_usage else {})

    def usage_chunk(self, n_in: int, n_out: int) -> dict:
        return self._head("chat.completion.chunk" if self.chat else "text_completion") | {
            "choices": [], "usage": usage(n_in, n_out)}


def usage(n_in: int, n_out: int) -> dict:
    return {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}


def sse(payload: dict | str) -> bytes:
    return b"data: " + (payload if isinstance(payload, str) else json.dumps(payload)).encode() + b"\n\n"


def stream_events(service: ModelService, reply: Reply, prompts: list[Prompt], gen: Generation,
                  include_usage: bool, on_answer: Callable[[str, int | None], None] | None = None) -> Iterator[bytes]:
    """The server-sent events of a streamed response, ``data: [DONE]`` last. Choices run one after another (index
    ``prompt * n + k``); an error after the first event is sent as an error event, then ``[DONE]``. ``on_answer``
    sees each choice's whole text once it finished (a stream its client left is not seen)."""
    rng = service.rng(gen)
    n_out = 0
    try:
        for p_index, prompt in enumerate(prompts):
            for k in range(gen.n):
                index = p_index * gen.n + k
                if reply.chat:
                    yield sse(reply.chunk(index, None, None, role=True, with_usage=include_usage))
                tokens, parts = 0, []
                for piece in service.generate(prompt, gen, rng):
                    tokens = piece.tokens
                    if piece.text:
                        parts.append(piece.text)
                        yield sse(reply.chunk(index, piece.text, None, with_usage=include_usage))
                    if piece.finish:
                        yield sse(reply.chunk(index, None if reply.chat else "", piece.finish,
                                              with_usage=include_usage))
                        if on_answer is not None:
                            on_answer("".join(parts), tokens)
                n_out += tokens
    except Exception as exc:  # noqa: BLE001 - the status line is sent already: the client learns it in the stream
        log.exception("stream failed")
        yield sse(error_body(f"internal error while streaming: {exc}", "server_error"))
        yield sse("[DONE]")
        return
    if include_usage:
        yield sse(reply.usage_chunk(sum(len(p.ids) for p in prompts), n_out))
    yield sse("[DONE]")

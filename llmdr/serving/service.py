"""The model behind ``llmdr serve``, without HTTP: a tiny-model bundle folder, its serving config and security rules,
and generation with the OpenAI parameters llmdr honours (``max_tokens``, ``n``, ``stop``, ``temperature``,
``top_p``, ``seed``). ``server`` puts it on the network; ``openai_api`` turns requests into ``Generation`` values.

Sampling: with ``temperature`` omitted the bundle's ``generation_config.json`` decides (the demo bundle has
``do_sample: false``, so greedy, as vLLM applies a model's generation config); ``temperature: 0`` is greedy;
``temperature > 0`` samples from the ``top_p`` nucleus, reproducibly when ``seed`` is given.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmdr.errors import UsageError

REFUSAL = "I can't help with that."


def bundle_digest(folder: Path) -> str:
    """SHA-256 over every file's path and bytes: which bundle, exactly, a server is serving."""
    h = hashlib.sha256()
    for p in sorted(q for q in folder.rglob("*") if q.is_file()):
        h.update(p.relative_to(folder).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


class BadRequest(Exception):
    """The request cannot be served as asked; ``param`` names the field, ``code`` is OpenAI's error code."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


class ModelNotFound(BadRequest):
    """The request names a model this server does not serve."""


class Busy(BadRequest):
    """Every generation slot (``max_concurrency`` in serving.json) stayed taken for the whole queue wait."""


@dataclass
class Generation:
    """How to generate, as validated from a request."""

    max_tokens: int | None = None  # None: the bundle's max_new_tokens
    n: int = 1
    stop: list[str] = field(default_factory=list)
    temperature: float | None = None  # None: the bundle's generation config
    top_p: float = 1.0
    seed: int | None = None


@dataclass
class Prompt:
    """A prompt ready to run: its token ids, and whether the bundle's security rules refuse it."""

    ids: list[int]
    blocked: bool


@dataclass
class Piece:
    """A part of one choice's text as it is generated; ``finish`` is set on the choice's last piece."""

    text: str
    finish: str | None
    tokens: int  # completion tokens generated so far


class ModelService:
    """The model plus the bundle's serving config and security rules. Thread-safe: model steps run one at a time
    (a lock per token), so concurrent requests interleave token by token."""

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
        # generations at once (vLLM's --max-num-seqs); more wait up to timeout_s for a slot, then get 429
        self.max_concurrency = _positive(self.serving, "max_concurrency", 64, serving_file, int)
        self.queue_timeout = _positive(self.serving, "timeout_s", 30, serving_file, float)
        # completion tokens one request may ask for (choices x max_tokens): without it, 64 choices of 512 tokens kept
        # the tiny model busy for minutes and one client's few requests held every slot
        self.max_request_tokens = _positive(self.serving, "max_request_tokens", 4096, serving_file, int)
        self.denylist = [line.strip().lower() for f in sorted((folder / "security").glob("*deny*"))
                         for line in f.read_text().splitlines() if line.strip()]
        self.digest = bundle_digest(folder)
        self.started = int(time.time())
        self.vocab_size = self.model.tokenizer.get_vocab_size()
        gen = self.model.generation
        self.default_temperature = float(gen.get("temperature", 1.0)) if gen.get("do_sample") else 0.0
        self.default_top_p = float(gen.get("top_p", 1.0)) if gen.get("do_sample") else 1.0
        self._lock = threading.Lock()

    # --- what is served ---------------------------------------------------------------------------------------------

    def health(self) -> dict:
        return {"status": "ok", "model": self.name, "bundle": str(self.folder), "bundle_digest": self.digest}

    def model_card(self) -> dict:
        return {"id": self.name, "object": "model", "created": self.started, "owned_by": "llmdr"}

    def models(self) -> dict:
        return {"object": "list", "data": [self.model_card()]}

    def check_model(self, asked: str | None) -> None:
        if asked not in (None, self.name):
            raise ModelNotFound(f"The model {asked!r} does not exist: this server serves {self.name!r} only "
                                "(GET /v1/models lists it)", param="model", code="model_not_found")

    def check_budget(self, choices: int, gen: Generation, param: str = "max_tokens") -> None:
        """BadRequest when ``choices`` answers of ``gen``'s length (the bundle's default when unset) are more
        completion tokens than ``max_request_tokens`` (serving.json) allows in one request."""
        per = gen.max_tokens if gen.max_tokens is not None else self.model.default_max_tokens
        if choices * per > self.max_request_tokens:
            raise BadRequest(f"{param}: {choices} choice(s) x {per} tokens = {choices * per} completion tokens; this "
                             f"server generates at most {self.max_request_tokens} per request (max_request_tokens in "
                             f"the bundle's serving.json). Lower {param} or n, or send fewer prompts.", param=param)

    # --- prompts ----------------------------------------------------------------------------------------------------

    def _blocked(self, text: str) -> bool:
        low = text.lower()
        return any(phrase in low for phrase in self.denylist)

    def _checked(self, ids: list[int], text: str, param: str) -> Prompt:
        if not ids:  # an empty prompt: the model starts from its begin-of-sequence token, as real servers do
            ids = [int(self.model.config["bos_token_id"])]
        if len(ids) > self.max_prompt_tokens:
            raise BadRequest(f"{param}: the prompt is {len(ids)} tokens; this server accepts at most "
                             f"{self.max_prompt_tokens}. Shorten it.", param=param, code="context_length_exceeded")
        return Prompt(ids, self._blocked(text))

    def text_prompt(self, text: str, param: str = "prompt") -> Prompt:
        return self._checked(self.model.tokenizer.encode(text).ids, text, param)

    def token_prompt(self, ids: list[int], param: str = "prompt") -> Prompt:
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise BadRequest(f"{param}: token id {bad[0]} is outside this model's vocabulary (0..{self.vocab_size - 1})",
                             param=param)
        return self._checked(list(ids), self.model.tokenizer.decode(ids, skip_special_tokens=False), param)

    def chat_prompt(self, messages: list[dict[str, str]]) -> Prompt:
        """``messages`` already normalised to ``{role, content}`` strings; rendered with the bundle's template."""
        return self.text_prompt(self.model.render_chat(messages), "messages")

    # --- generation -------------------------------------------------------------------------------------------------

    def rng(self, gen: Generation):
        import numpy as np

        return np.random.default_rng(None if gen.seed is None else gen.seed % 2**64)

    def generate(self, prompt: Prompt, gen: Generation, rng) -> Iterator[Piece]:
        """One choice, piece by piece. Text that could be the start of a stop sequence is held back until it is
        known not to be one; a stop sequence ends the choice (``finish: stop``) and is not part of the text."""
        if prompt.blocked:
            yield Piece(REFUSAL, "content_filter", 0)
            return
        model = self.model
        temperature = self.default_temperature if gen.temperature is None else gen.temperature
        top_p = self.default_top_p if gen.temperature is None and gen.top_p == 1.0 else gen.top_p
        limit = gen.max_tokens if gen.max_tokens is not None else model.default_max_tokens
        out: list[int] = []
        text, sent, finish = "", 0, "length"
        for _ in range(limit):
            with self._lock:
                nxt = model.next_token(prompt.ids, out, temperature=temperature, top_p=top_p, rng=rng)
            if nxt == model.eos_id:
                finish = "stop"
                break
            out.append(nxt)
            text = model.tokenizer.decode(out)  # the tiny tokenizer joins words: each text extends the last one
            cut = min((i for i in (text.find(s) for s in gen.stop) if i >= 0), default=-1)
            if cut >= 0:
                text, finish = text[:cut], "stop"
                break
            safe = len(text) - _held_back(text, gen.stop)
            if safe > sent:
                yield Piece(text[sent:safe], None, len(out))
                sent = safe
        yield Piece(text[sent:], finish, len(out))

    def run(self, prompt: Prompt, gen: Generation, rng) -> tuple[str, str, int]:
        """One whole choice: (text, finish reason, completion tokens)."""
        parts = list(self.generate(prompt, gen, rng))
        return "".join(p.text for p in parts), parts[-1].finish or "length", parts[-1].tokens


def _held_back(text: str, stops: list[str]) -> int:
    """How many characters at the end of ``text`` could be the beginning of a stop sequence."""
    return max((k for s in stops for k in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:k])),
               default=0)


def _positive(serving: dict, key: str, default: float, where: Path, kind: type) -> Any:
    """``serving[key]`` as a positive ``kind`` (``default`` when absent); UsageError naming the file otherwise."""
    value = serving.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e9 or \
            (kind is int and value != int(value)):
        raise UsageError(f"{where}: {key} must be a positive {'whole ' if kind is int else ''}number, not "
                         f"{value!r}; fix serving.json in the bundle")
    return kind(value)

"""A minimal client for an OpenAI-compatible serving endpoint (llmdr serve, vLLM, TGI, llama.cpp server)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from llmdr.errors import LlmdrError
from llmdr.serving.golden import GoldenCase, GoldenReport, GoldenSet, check


class EndpointError(LlmdrError):
    """The serving endpoint is unreachable or answered with an error."""


class OpenAIEndpoint:
    def __init__(self, url: str, *, model: str | None = None, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.model = model
        self.timeout = timeout

    def _call(self, path: str, body: dict | None = None) -> dict[str, Any]:
        req = urllib.request.Request(self.url + path, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310 - user-given endpoint
                raw = resp.read()
                return json.loads(raw) if raw.strip() else {}  # vLLM's /health answers 200 with no body
        except urllib.error.HTTPError as exc:
            try:
                msg = json.loads(exc.read())["error"]["message"]
            except (ValueError, KeyError, TypeError):
                msg = exc.reason
            raise EndpointError(f"{self.url}{path} answered {exc.code}: {msg}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise EndpointError(f"cannot reach {self.url}{path}: {reason}. Is the server running?") from None

    def health(self) -> dict[str, Any]:
        return self._call("/health")

    def models(self) -> list[str]:
        return [m["id"] for m in self._call("/v1/models").get("data", [])]

    def answer(self, case: GoldenCase) -> str:
        """Greedy answer to one golden case (temperature 0)."""
        body: dict[str, Any] = {"temperature": 0}
        if self.model:
            body["model"] = self.model
        if case.max_tokens is not None:
            body["max_tokens"] = case.max_tokens
        if case.messages is not None:
            out = self._call("/v1/chat/completions", body | {"messages": case.messages})
            return out["choices"][0]["message"]["content"]
        out = self._call("/v1/completions", body | {"prompt": case.prompt})
        return out["choices"][0]["text"]


def check_endpoint(golden_path: Path, url: str, *, model: str | None = None, timeout: float = 60.0,
                   gate: Any = None) -> GoldenReport:
    """Ask the endpoint at ``url`` every case of the golden file, judged by ``gate`` (the config's ``golden_gate``;
    None: exact); the report says which answers fail and every score."""
    return check(GoldenSet.load(golden_path), OpenAIEndpoint(url, model=model, timeout=timeout).answer, gate)


def check_set(golden: GoldenSet, url: str, *, model: str | None = None, timeout: float = 60.0,
              gate: Any = None) -> GoldenReport:
    """As ``check_endpoint``, for a set already loaded (a snapshot's own, ``snapgolden``)."""
    return check(golden, OpenAIEndpoint(url, model=model, timeout=timeout).answer, gate)

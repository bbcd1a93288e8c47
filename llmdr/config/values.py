"""The value types every config section shares: durations ('5m', '4h', '90d'), names of environment variables
(never the secret itself), bucket names, http URLs, and the strict base model (unknown keys are errors)."""

from __future__ import annotations

import re
from datetime import timedelta
from enum import Enum
from typing import Any
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict

DEFAULT_CONFIG = "llmdr.yaml"
DURATION = re.compile(r"^\s*(?:(\d+)\s*d)?\s*(?:(\d+)\s*h)?\s*(?:(\d+)\s*m)?\s*(?:(\d+)\s*s)?\s*$")
SECRET_KEYS = ("secret", "password", "token", "passwd")
SECRET_SUFFIXES = ("_secret", "secret_key", "secret_access_key", "password", "_token", "access_key_id",
                    "aws_access_key", "private_key", "api_key")
BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# What a key pasted where its variable's name belongs looks like: AWS or local-stack access key ids, hex keys.
KEY_LIKE = re.compile(r"(?:AKIA|ASIA)[A-Z0-9]{16}|LLMDR[0-9A-F]{16}|[0-9a-fA-F]{32,}")


def env_name(field: str, value: str | None) -> str | None:
    """``value`` must name an environment variable. The message never repeats the value: a key pasted here by
    mistake must not reach a terminal, a log or a flow run's error."""
    if value is not None and (KEY_LIKE.fullmatch(value) or not ENV_NAME.fullmatch(value)):
        raise ValueError(f"{field} must be the name of an environment variable (letters, digits and _, e.g. "
                         "LLMDR_PRIMARY_SECRET_ACCESS_KEY), and the value given is not one; it is not shown here in "
                         "case it is the secret itself. Put the secret in that variable, never in this file.")
    return value


def parse_duration(value: Any) -> timedelta:
    """'90d', '4h', '15m', '30s', '1h30m' or a number of seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return timedelta(seconds=value)
    if isinstance(value, str):
        m = DURATION.match(value)
        if m and any(m.groups()):
            d, h, mi, s = (int(g or 0) for g in m.groups())
            return timedelta(days=d, hours=h, minutes=mi, seconds=s)
    raise ValueError(f"{value!r} is not a duration; write e.g. '5m', '15m', '4h', '90d' or '1h30m'")


def format_duration(td: timedelta) -> str:
    secs = int(td.total_seconds())
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if secs >= size:
            parts.append(f"{secs // size}{unit}")
            secs %= size
    return "".join(parts) or "0s"


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


def http_url(v: str, example: str) -> str:
    u = urlparse(v)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ValueError(f"{v!r} is not an http(s) URL like {example}")
    return v.rstrip("/")




class ComponentKind(str, Enum):
    """The kinds of file a model bundle is made of; ``bundle.components`` in llmdr.yaml is keyed by them."""

    weights = "weights"
    tokenizer = "tokenizer"
    model_config = "model_config"
    generation_config = "generation_config"
    prompt_templates = "prompt_templates"
    serving_config = "serving_config"
    security_rules = "security_rules"
    datasets = "datasets"
    checkpoints = "checkpoints"

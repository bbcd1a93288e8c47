"""What every router gives llmdr: which region receives traffic, a way to switch it, and the recorded state.

A router is the one place clients reach (a URL); behind it, exactly one region answers at a time. Adapters ask the
real router which region that is (Caddy's admin API, Route 53's record sets) rather than trusting a file: the file
(``RouterLog``) records *when* and *why* the last switch happened, the router says *what is true now*.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Protocol, runtime_checkable


def utc_now() -> str:
    """UTC timestamp in the form every router record uses: ``YYYY-MM-DDTHH:MM:SS.ffffffZ``."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class RouterState:
    kind: str  # "caddy" | "route53"
    url: str  # the client-facing URL
    active: str | None  # region receiving traffic now, as read from the real router
    since: str | None  # UTC time of the last recorded switch to ``active``
    reason: str | None  # why that switch happened
    upstream: str | None  # what the router points at (caddy: host:port dialled; route53: record value)
    # the verified standby a failed dial is retried on (caddy only; None: none, a failed dial is the client's error)
    fallback: str | None = None

    def to_json(self) -> dict:
        return asdict(self)


@runtime_checkable
class Router(Protocol):
    """One client-facing entry point that sends all traffic to one region at a time.

    Guarantees adapters give:
    - ``active()`` asks the real router (never only the state file); ``None`` when it points at no known region.
    - ``switch()`` is idempotent: switching to the region already active changes nothing and records nothing new
      (unless the log disagrees with the router, then it records what is now true). After it returns, ``active()``
      reports the target. Requests in flight during a switch complete.
    - An unknown region (or one the router cannot send traffic to) raises ``UsageError`` naming the known ones.
    """

    kind: str
    url: str
    # The router can retry a failed dial on a verified standby (``set_fallback``); only a caller that has just
    # verified that standby names it, and every switch removes it.
    supports_fallback: bool

    def active(self) -> str | None: ...

    def fallback(self) -> str | None: ...

    def set_fallback(self, region: str | None, *, reason: str, evidence: dict | None = None) -> str | None: ...

    def switch(self, region: str, *, reason: str) -> RouterState: ...

    def state(self) -> RouterState: ...


def describe_state(kind: str, url: str, active: str | None, upstream: str | None, current: dict | None) -> RouterState:
    """Combine what the router says (``active``, ``upstream``) with the last recorded switch (``current``).

    ``since``/``reason`` come from the log only when it agrees with the router; otherwise the reason says that the
    router was changed outside llmdr, so nobody reads an old reason as the explanation of the present."""
    if current is None or active is None:
        return RouterState(kind, url, active, None, None, upstream)
    if current.get("active") == active:
        return RouterState(kind, url, active, current.get("since"), current.get("reason"), upstream)
    return RouterState(kind, url, active, None,
                       f"unrecorded: the router points at {active}, but the last recorded switch was to "
                       f"{current.get('active')} at {current.get('since')}", upstream)

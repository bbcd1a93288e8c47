"""``need``: a test that cannot run its real part (Chromium, a tmpfs mount, root's capabilities...) skips on a
developer's machine but FAILS in CI (``CI=true``), so a CI run cannot turn green without running it."""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI") == "true"


def need(condition: object, reason: str) -> None:
    """Go on when ``condition`` is true; else skip the test (locally) or fail it (in CI), saying ``reason``."""
    __tracebackhide__ = True  # reports point at the test's line, not this one
    if condition:
        return
    if in_ci():
        pytest.fail(f"CI=true and this test cannot run its real part: {reason}", pytrace=False)
    pytest.skip(reason)

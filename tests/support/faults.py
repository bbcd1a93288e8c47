"""Transient faults under every region a run opens: for tests of whole procedures (ops, flows, the CLI).

``inject(rate, seed)`` replaces the retry step of ``llmdr.storage.factory`` for as long as it is active, so every
region opened meanwhile gets a random-mode ``FaultyStore`` (``llmdr.testing.faulty``) between its S3 adapter and
its retry layer: that share of requests fails transiently, half before reaching the server and half after it
answered ("connection dropped mid-answer"). Production code cannot switch this on: it lives here, in the tests.

The retry layer then makes enough attempts that a request fails for good with probability at most 1e-8
(rate ** attempts): at 10 % the default 4 attempts would lose one request in 10,000, i.e. a run of ~1,000 requests
would fail about one time in ten; 8 attempts lose one in 1e8.

In process::

    with inject(0.1, seed=1) as faults:
        ops.snapshot_bundle(cfg)
    assert faults.injected > 0

A CLI subprocess (the repository root on ``sys.path``, e.g. as the working directory)::

    python -m tests.support.faults --rate 0.1 --seed 7 -- --config llmdr.yaml snapshot

runs ``llmdr`` with injection on and prints ``FAULT INJECTION: <n> faults injected in <m> requests`` on stderr when
it exits.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from llmdr.testing.faulty import FaultyStore

log = logging.getLogger(__name__)
SUMMARY = "FAULT INJECTION:"


def attempts_for(rate: float, loss: float = 1e-8) -> int:
    """Attempts after which a request fails for good with probability at most ``loss``."""
    return math.ceil(round(math.log(loss) / math.log(rate), 6))  # round: 8.0000000002 is 8


@dataclass
class Injection:
    """The fault stores an ``inject`` block created, for its counts."""

    rate: float
    seed: int | str
    stores: list[FaultyStore] = field(default_factory=list)

    @property
    def injected(self) -> int:
        return sum(s.injected_total for s in self.stores)

    @property
    def calls(self) -> int:
        return sum(sum(s.calls.values()) for s in self.stores)


@contextlib.contextmanager
def inject(rate: float, seed: int | str = 0) -> Iterator[Injection]:
    """Every region opened inside the block fails ``rate`` of its requests transiently (see the module docstring).
    Each store opened gets its own seeded stream of draws (same seed and order of opening: same streams)."""
    from llmdr.storage import factory

    if not 0.0 < rate < 1.0:
        raise ValueError(f"rate must be in (0, 1), not {rate!r}")
    real = factory.retrying
    injection = Injection(rate, seed)
    opened = itertools.count()
    warned: set[str] = set()
    lock = threading.Lock()

    def faulty_retrying(store, region, attempts):
        with lock:
            faulty = FaultyStore(store, rate=rate, seed=f"{seed}:{region.name}:{next(opened)}")
            injection.stores.append(faulty)
            first = region.name not in warned
            warned.add(region.name)
        if first:
            log.warning("FAULT INJECTION ACTIVE (tests only): %.0f%% of requests to region '%s' fail on purpose",
                        rate * 100, region.name)
        return real(faulty, region, max(attempts, attempts_for(rate)))

    factory.retrying = faulty_retrying
    try:
        yield injection
    finally:
        factory.retrying = real


def main(argv: list[str]) -> None:
    """``--rate R [--seed S] -- <llmdr arguments>``: the llmdr CLI with ``inject(R, S)`` around it."""
    import argparse
    import runpy

    parser = argparse.ArgumentParser(prog="python -m tests.support.faults")
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--seed", default="0")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    ns = parser.parse_args(argv)
    args = ns.args[1:] if ns.args[:1] == ["--"] else ns.args
    with inject(ns.rate, ns.seed) as injection:
        sys.argv = ["llmdr", *args]
        try:
            runpy.run_module("llmdr.cli", run_name="__main__", alter_sys=True)
        finally:
            print(f"{SUMMARY} {injection.injected} faults injected in {injection.calls} requests", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])

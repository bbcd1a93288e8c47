"""A served stack for failover tests, built the same way everywhere: the demo model protected into both regions
(``protect_demo``), its replicas and Caddy router up with traffic on the primary and the golden set recorded from it
(``serve_with_golden``), stopped afterwards (``stopped_afterwards``). The config comes from
``tests.support.config.make_served_config``."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from llmdr.config import Config


def protect_demo(cfg: Config) -> str:
    """The demo model written to the bundle folder, snapshotted into the primary and replicated to the secondary;
    returns the snapshot id."""
    from llmdr.repo import ops
    from llmdr.serving.tinymodel import write_demo_bundle

    write_demo_bundle(cfg.bundle_path)
    sid = ops.snapshot_bundle(cfg).snapshot_id
    ops.replicate(cfg, sid, to="secondary")
    return sid


def serve_with_golden(cfg: Config) -> None:
    """Both regions' replicas and the router up, traffic on the primary, and the project's golden set recorded from
    the primary's replica."""
    from llmdr.devstack.serving import start_router, start_serving
    from llmdr.failover.router import open_router
    from llmdr.serving import golden
    from llmdr.serving.endpoint import OpenAIEndpoint

    start_serving(cfg)
    start_router(cfg)
    assert open_router(cfg).active() == "primary"
    golden.record(golden.default_cases(), OpenAIEndpoint(cfg.primary.serving.url).answer).save(cfg.golden_path)


@contextlib.contextmanager
def stopped_afterwards(cfg: Config) -> Iterator[Config]:
    """Every replica and the router of ``cfg`` stopped when the block ends, however it ends."""
    from llmdr.devstack.serving import stop_serving

    try:
        yield cfg
    finally:
        stop_serving(cfg, router=True)


@contextlib.contextmanager
def env_secret(name: str, value: str) -> Iterator[None]:
    """The environment variable NAME set to VALUE for the block (a signing key the config names)."""
    os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)

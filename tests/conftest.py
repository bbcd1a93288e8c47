"""Shared fixtures. ``regions`` starts two real SeaweedFS servers (the same code as `llmdr stack up`) once per test
session on free loopback ports and stops them at the end, by PID."""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from pathlib import Path

import pytest

from llmdr.config import Config, parse_config
from llmdr.repo.repository import Repository
from llmdr.storage.memory import MemoryStore

CONFIG = """\
version: 1
bundle: {{name: testbundle, path: bundle}}
regions:
  - name: primary
    role: primary
    endpoint: http://127.0.0.1:{p}
    bucket: llmdr-primary
    prefix: {prefix}
    credentials: {{access_key_env: LLMDR_TEST_P_AK, secret_key_env: LLMDR_TEST_P_SK}}
    local: {{}}
  - name: secondary
    role: secondary
    endpoint: http://127.0.0.1:{s}
    bucket: llmdr-secondary
    prefix: {prefix}
    credentials: {{access_key_env: LLMDR_TEST_S_AK, secret_key_env: LLMDR_TEST_S_SK}}
    local: {{}}
transfer: {{workers: 4, fsync: false}}
state_dir: {state}
"""


def _free_base_port() -> int:
    """A port P such that every port a local region needs (P..P+8 and P+10008) is free on 127.0.0.1. All of them stay
    below Linux's ephemeral range (32768+), where any outgoing connection (Prefect, MLflow, boto3...) may take a
    port between this check and the server's bind."""
    for _ in range(200):
        base = 10000 + (uuid.uuid4().int % 1275) * 10  # base + 10008 <= 32758
        ok = True
        for port in [*range(base, base + 9), base + 10008]:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free port range found")


def make_config(tmp: Path, p: int, s: int, state: Path, prefix: str = "") -> Config:
    text = CONFIG.format(p=p, s=s, state=state, prefix=repr(prefix))
    path = tmp / "llmdr.yaml"
    path.write_text(text)
    return parse_config(text, source=path)


TWO_REGIONS = """\
version: 1
bundle: {bundle}
regions:
  - name: primary
    role: primary
    endpoint: http://127.0.0.1:{p}
    bucket: llmdr-primary
    prefix: '{prefix}'
    credentials: {{access_key_env: LLMDR_TEST_P_AK, secret_key_env: LLMDR_TEST_P_SK{p_creds}}}
{primary}
  - name: secondary
    role: secondary
    endpoint: {s_endpoint}
    bucket: {s_bucket}
    prefix: '{s_prefix}'
    credentials: {{access_key_env: LLMDR_TEST_S_AK, secret_key_env: LLMDR_TEST_S_SK}}
{secondary}
{extra}
state_dir: {state}
"""


def two_regions(stack: Config, tmp: Path, *, prefix: str | None = None, bundle: str = "{name: testbundle, path: bundle}",
                primary: str = "", secondary: str = "", primary_creds: str = "", secondary_endpoint: str | None = None,
                secondary_bucket: str = "llmdr-secondary", secondary_prefix: str | None = None, extra: str = "",
                state: Path | None = None) -> Config:
    """A config on the running test regions (a fresh key prefix unless given), written to its own file under
    ``tmp`` so the CLI can be pointed at it. ``primary`` / ``secondary`` are extra indented lines for that region
    (e.g. ``"    object_lock: {mode: COMPLIANCE, period: 60s}"``), ``extra`` top-level lines."""
    prefix = prefix or f"t-{uuid.uuid4().hex[:8]}"
    text = TWO_REGIONS.format(
        bundle=bundle, p=stack.primary.port, prefix=prefix, p_creds=primary_creds, primary=primary,
        s_endpoint=secondary_endpoint or stack.secondaries[0].endpoint, s_bucket=secondary_bucket,
        s_prefix=secondary_prefix if secondary_prefix is not None else prefix, secondary=secondary, extra=extra,
        state=state or stack.state_path)
    path = tmp / f"llmdr-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(text)
    return parse_config(text, source=path)


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """Two running local regions. Yields (config, state_dir); config's prefix is '' (tests use ``region_config``)."""
    from llmdr.devstack.regions import start_region, stop_region

    base = tmp_path_factory.mktemp("stack")
    p = _free_base_port()
    s = _free_base_port()
    while abs(s - p) < 10 or abs(s - p) == 10000:
        s = _free_base_port()
    cfg = make_config(base, p, s, base / ".llmdr")
    try:
        for r in cfg.regions:
            start_region(cfg, r)
        yield cfg
    finally:
        for r in cfg.regions:
            stop_region(cfg, r)


@pytest.fixture
def region_config(stack, tmp_path) -> Config:
    """The running stack seen through a config with a fresh key prefix, so every test has an empty repository."""
    prefix = f"t-{uuid.uuid4().hex[:10]}"
    cfg = make_config(tmp_path, stack.primary.port, stack.secondaries[0].port, stack.state_path, prefix)
    return cfg


@pytest.fixture
def mem_repo() -> Repository:
    return Repository(MemoryStore("primary"))


@pytest.fixture
def mem_repo2() -> Repository:
    return Repository(MemoryStore("secondary"))


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def read_tree(root: Path) -> dict[str, bytes]:
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = Path(dirpath) / n
            out[p.relative_to(root).as_posix()] = p.read_bytes()
    return out


def free_port() -> int:
    """A TCP port nothing listens on right now (127.0.0.1)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(bundle: Path):
    """`llmdr serve`'s server for ``bundle`` in a thread on a free port; yields its base URL."""
    import threading

    from llmdr.serving.server import ModelService, make_server

    httpd = make_server(ModelService(bundle), "127.0.0.1", 0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server (SQLite) for every test that runs flows or uses blocks (~30 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


SERVED = """\
version: 1
bundle: {{name: testbundle, path: model}}
regions:
  - name: primary
    role: primary
    endpoint: http://127.0.0.1:{p}
    bucket: llmdr-primary
    prefix: {prefix}
    credentials: {{access_key_env: LLMDR_TEST_P_AK, secret_key_env: LLMDR_TEST_P_SK}}
    local: {{}}
    serving: {{url: "http://127.0.0.1:{ps}"}}
  - name: secondary
    role: secondary
    endpoint: http://127.0.0.1:{s}
    bucket: llmdr-secondary
    prefix: {prefix}
    credentials: {{access_key_env: LLMDR_TEST_S_AK, secret_key_env: LLMDR_TEST_S_SK}}
    local: {{}}
    serving: {{url: "http://127.0.0.1:{ss}", warm: {warm}}}
router: {{kind: caddy, listen: "http://127.0.0.1:{rl}", admin: "http://127.0.0.1:{ra}"}}
monitor: {{interval: 0.2, timeout: 1s, down_after: 2, recent_window: 5, baseline_window: 20, golden_every: 0}}
failover: {{confirm_probes: 2, confirm_interval: 0.1}}
{extra}
transfer: {{workers: 4, fsync: false}}
state_dir: .llmdr
"""


def make_served_config(stack: Config, tmp: Path, *, warm: bool = True, extra: str = "") -> Config:
    """A config on the running test regions (fresh key prefix) with a serving endpoint per region and a Caddy
    router, all on free loopback ports, and its own state folder under ``tmp`` (the regions' keys copied in).
    The bundle folder is ``tmp/model`` (write it with ``write_demo_bundle``)."""
    import shutil

    state = tmp / ".llmdr"
    state.mkdir(parents=True, exist_ok=True)
    keys = stack.state_path / "local.env"
    if keys.exists():
        shutil.copy(keys, state / "local.env")
    taken = set(stack.primary.local_ports) | set(stack.secondaries[0].local_ports)

    def port() -> int:
        while (n := free_port()) in taken:
            pass
        taken.add(n)
        return n

    text = SERVED.format(p=stack.primary.port, s=stack.secondaries[0].port, prefix=f"t-{uuid.uuid4().hex[:10]}",
                         ps=port(), ss=port(), rl=port(), ra=port(), warm=str(warm).lower(), extra=extra)
    path = tmp / "llmdr.yaml"
    path.write_text(text)
    return parse_config(text, source=path)


@pytest.fixture
def served_config(stack, tmp_path) -> Config:
    """``make_served_config`` for this test; stops every replica and the router it started afterwards."""
    cfg = make_served_config(stack, tmp_path)
    yield cfg
    from llmdr.devstack.regions import stop_serving

    stop_serving(cfg, router=True)

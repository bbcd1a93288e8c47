"""Shared fixtures. ``stack`` starts two real SeaweedFS servers (the same code as `llmdr stack up`) once per test
session on free loopback ports and stops them at the end, by PID.

Helpers live in ``tests/support`` (config builder, ports, trees, serving, ``need``): tests import them from there.

Markers: every test whose fixtures include ``stack`` (directly or through ``region_config``, ``served_config``...)
is marked ``s3`` here at collection; tests that start servers themselves carry the mark explicitly. So
``pytest -m "not s3"`` runs exactly the tests that need no S3 server."""

from __future__ import annotations

import uuid

import pytest

from llmdr.config import Config
from llmdr.repo.repository import Repository
from llmdr.storage.memory import MemoryStore
from tests.support.config import make_config, make_served_config
from tests.support.ports import free_base_ports


def pytest_collection_modifyitems(config, items):
    """Mark ``s3`` every test that uses the session's S3 servers, whatever fixture brings them in; then put the files
    with ``slow`` tests first (a stable sort: the order inside a file is kept), so that `make test`'s parallel workers
    (``-n 3 --dist loadfile``: one file per worker at a time) start the long files first rather than end on them."""
    for item in items:
        if "stack" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.s3)
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)


@pytest.hookimpl(tryfirst=True)
def pytest_fixture_setup(fixturedef, request):
    """Keep the marker honest where collection cannot see: a test that reaches the S3 servers at run time
    (``request.getfixturevalue("region_config")``) without the ``s3`` mark fails, saying so."""
    if fixturedef.argname != "stack" and "stack" not in fixturedef.argnames:
        return
    item = getattr(request, "_pyfuncitem", None)
    if item is not None and item.get_closest_marker("s3") is None:
        pytest.fail(f"{item.nodeid} uses the S3 servers (fixture {fixturedef.argname!r}) but is not marked s3: "
                    "add @pytest.mark.s3 (or pytest.param(..., marks=pytest.mark.s3))", pytrace=False)


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """Two running local regions. Yields their config; its prefix is '' (tests use ``region_config``)."""
    from llmdr.devstack.regions import start_region, stop_region

    base = tmp_path_factory.mktemp("stack")
    p, s = free_base_ports()
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
    return make_config(tmp_path, stack.primary.port, stack.secondaries[0].port, stack.state_path, prefix)


@pytest.fixture
def mem_repo() -> Repository:
    return Repository(MemoryStore("primary"))


@pytest.fixture
def mem_repo2() -> Repository:
    return Repository(MemoryStore("secondary"))


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server (SQLite) for every test that runs flows or uses blocks (~30 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture
def served_config(stack, tmp_path) -> Config:
    """``make_served_config`` for this test; stops every replica and the router it started afterwards."""
    cfg = make_served_config(stack, tmp_path)
    yield cfg
    from llmdr.devstack.serving import stop_serving

    stop_serving(cfg, router=True)


@pytest.fixture(scope="module")
def moto_url():
    """One moto server per test module (STS and IAM, which only AWS has)."""
    from tests.support.moto import moto_server

    with moto_server() as url:
        yield url


@pytest.fixture
def moto(moto_url):
    """The module's moto server with fresh state and IAM authentication off (moto's default); authentication is
    switched off again after a test that turned it on."""
    from tests.support.moto import check_auth, reset

    reset(moto_url)
    try:
        yield moto_url
    finally:
        check_auth(moto_url, on=False)

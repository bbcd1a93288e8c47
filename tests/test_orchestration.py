"""The local orchestration stack for real: a Prefect server and worker started by llmdr, the deployments of
prefect.yaml, and protect-bundle triggered through the API exactly as the UI's Run button does."""

import json
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from llmdr.devstack import orchestration
from llmdr.devstack.samples import MiB, write_sample_bundle
from tests.support.ports import free_port
from tests.support.requirements import need


def _api(url: str, path: str, body: dict) -> list | dict:
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


@pytest.mark.slow
def test_deploy_and_run_protect_bundle_through_the_api(region_config):
    cfg = region_config
    write_sample_bundle(cfg.source_file.parent / "bundle", shards=1, shard_size=MiB)
    port = free_port()
    try:
        st = orchestration.start(cfg, port)
        assert st.healthy and st.server_pid and st.worker_pid
        api = f"http://127.0.0.1:{port}/api"
        names = {d["name"] for d in _api(api, "/deployments/filter", {})}
        assert {"protect-bundle", "verify-replicas-daily", "protect-checkpoints", "restore-bundle"} <= names
        env = orchestration.env(cfg, port)
        r = subprocess.run([orchestration._prefect(), "deployment", "run", "protect-bundle/protect-bundle", "--watch",
                            "--watch-timeout", "240"], env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0 and "Completed" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
        arts = _api(api, "/artifacts/filter", {"artifacts": {"key": {"any_": ["protect-bundle-testbundle"]}}})
        assert arts and "RPO clock, secondary" in arts[0]["data"]
        assert orchestration.status(cfg).healthy
        _browser_check(f"http://127.0.0.1:{port}/deployments")
    finally:
        orchestration.stop(cfg)
    assert orchestration.status(cfg).server_pid is None and orchestration.status(cfg).worker_pid is None


CHROMIUM = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
            "--virtual-time-budget=15000", "--window-size=1400,900"]


def _browser_check(url: str) -> None:
    """The UI's Deployments page, rendered by headless Chromium, lists llmdr's deployments; a screenshot is kept
    under build/ (not committed). .ci/run installs Chromium; elsewhere `apt-get install chromium`."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    need(browser, "headless UI check needs Chromium: apt-get install -y --no-install-recommends chromium")
    build = Path(__file__).parent.parent / "build"
    build.mkdir(exist_ok=True)
    profile = build / "chromium-profile"
    dom = subprocess.run([browser, *CHROMIUM, f"--user-data-dir={profile}", "--dump-dom", url], capture_output=True,
                         text=True, timeout=120).stdout
    # the page lists 10 deployments, by name: the 11th (verify-replicas-weekly) is on page 2
    for name in ("dr-drill-on-demand", "protect-bundle", "protect-checkpoints", "restore-bundle",
                 "verify-replicas-daily"):
        assert name in dom, f"{name} not on the rendered deployments page"
    subprocess.run([browser, *CHROMIUM, f"--user-data-dir={profile}", f"--screenshot={build / 'ui-deployments.png'}",
                    url], capture_output=True, timeout=120)
    assert (build / "ui-deployments.png").stat().st_size > 10_000

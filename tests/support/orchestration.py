"""The local orchestration stack for real, as tests/test_orchestration.py (SQLite) and
tests/test_orchestration_pg.py (PostgreSQL) run it: two files, so that `make test`'s parallel workers run the two
profiles side by side."""

import json
import shutil
import subprocess
import urllib.request
from pathlib import Path

from llmdr.devstack import orchestration, postgres
from llmdr.devstack.samples import MiB, write_sample_bundle
from tests.support.config import copy_keys, two_region_yaml, write_config
from tests.support.ports import free_base_port, free_port
from tests.support.requirements import need


def api_post(url: str, path: str, body: dict) -> list | dict:
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def on_postgres(cfg, tmp_path):
    """``cfg``'s regions and key prefix on the postgres profile, in a state folder of its own (the keys copied)."""
    state = tmp_path / "pg-state"
    copy_keys(cfg, state)
    extra = (f"transfer: {{workers: 4, fsync: false}}\ncontrol_plane: {{database: postgres, postgres_port: "
             f"{free_base_port()}}}")
    text = two_region_yaml(cfg.primary.port, cfg.secondaries[0].port, prefix=cfg.primary.prefix, local=True,
                           extra=extra, state_dir=state)
    return write_config(cfg.source_file.with_name("llmdr-pg.yaml"), text)


def pg_count(cfg, database: str, query: str) -> int:
    import psycopg2

    from llmdr.storage.credentials import postgres_password

    conn = psycopg2.connect(host="127.0.0.1", port=cfg.control_plane.postgres_port, user="llmdr",
                            password=postgres_password(cfg), dbname=database, connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute(query)
            return cur.fetchone()[0]
    finally:
        conn.close()


CHROMIUM = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
            "--virtual-time-budget=15000", "--window-size=1400,900"]


def browser_check(url: str, profile: Path) -> None:
    """The UI's Deployments page, rendered by headless Chromium, lists llmdr's deployments; a screenshot is kept
    under build/ (not committed). .ci/run installs Chromium; elsewhere `apt-get install chromium`."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    need(browser, "headless UI check needs Chromium: apt-get install -y --no-install-recommends chromium")
    build = Path(__file__).parent.parent.parent / "build"
    build.mkdir(exist_ok=True)
    dom = subprocess.run([browser, *CHROMIUM, f"--user-data-dir={profile}", "--dump-dom", url], capture_output=True,
                         text=True, timeout=120).stdout
    # the page lists 10 deployments, by name: the 11th (verify-replicas-weekly) is on page 2; protect-checkpoints is
    # not deployed (no checkpoints: in the test's llmdr.yaml)
    for name in ("dr-drill-on-demand", "prewarm-standby", "protect-bundle", "restore-bundle"):
        assert name in dom, f"{name} not on the rendered deployments page"
    subprocess.run([browser, *CHROMIUM, f"--user-data-dir={profile}", f"--screenshot={build / 'ui-deployments.png'}",
                    url], capture_output=True, timeout=120)
    assert (build / "ui-deployments.png").stat().st_size > 10_000


def deploy_and_run(region_config, tmp_path, database: str) -> None:
    """Start the orchestration stack on ``database`` (sqlite or postgres), deploy, run protect-bundle through the
    API as the UI's Run button does, check the records are where the profile says, render the UI; stop it all."""
    cfg = region_config if database == "sqlite" else on_postgres(region_config, tmp_path)
    write_sample_bundle(cfg.source_file.parent / "bundle", shards=1, shard_size=MiB)
    port = free_port()
    try:
        st = orchestration.start(cfg, port)
        assert st.healthy and st.server_pid and st.worker_pid
        api = f"http://127.0.0.1:{port}/api"
        names = {d["name"] for d in api_post(api, "/deployments/filter", {})}
        assert {"protect-bundle", "verify-replicas-daily", "restore-bundle"} <= names
        assert "protect-checkpoints" not in names  # no checkpoints: section, so configure.py removed it
        env = orchestration.env(cfg, port)
        r = subprocess.run([orchestration._prefect(), "deployment", "run", "protect-bundle/protect-bundle", "--watch",
                            "--watch-timeout", "240"], env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0 and "Completed" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
        arts = api_post(api, "/artifacts/filter", {"artifacts": {"key": {"any_": ["protect-bundle-testbundle"]}}})
        assert arts and "RPO clock, secondary" in arts[0]["data"]
        assert orchestration.status(cfg).healthy
        # the server's records are where the profile says: the sqlite file, or the prefect database in PostgreSQL
        assert (cfg.state_path / "prefect" / "prefect.db").exists() == (database == "sqlite")
        if database == "postgres":  # and the flow's model version in MLflow's database there
            assert pg_count(cfg, "prefect", "SELECT count(*) FROM flow_run JOIN flow ON flow.id = flow_run.flow_id "
                             "WHERE flow.name = 'protect-bundle' AND flow_run.state_type = 'COMPLETED'") >= 1
            assert pg_count(cfg, "mlflow", "SELECT count(*) FROM model_versions WHERE name = 'testbundle'") >= 1
        browser_check(f"http://127.0.0.1:{port}/deployments", tmp_path / "chromium-profile")
    finally:
        orchestration.stop(cfg)
        if database == "postgres":
            postgres.stop(cfg)
    assert orchestration.status(cfg).server_pid is None and orchestration.status(cfg).worker_pid is None
    assert postgres.status(cfg).pid is None

"""The PostgreSQL profile for real (``control_plane: {database: postgres}``): the local cluster llmdr starts from the
server binaries on PATH, MLflow's tracking store and model registry on it, restarts and crashes, bad inputs, and
`llmdr stack up|status|down` with it. No mock: a test here FAILS (never skips) when PostgreSQL cannot start.
The Prefect server on PostgreSQL is tested in tests/test_orchestration.py (parametrised over both databases)."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from llmdr.config import parse_config
from llmdr.devstack import postgres
from llmdr.errors import StackError
from llmdr.storage.credentials import POSTGRES_PASSWORD_ENV, postgres_password, read_env_file
from tests.support.config import two_region_yaml
from tests.support.ports import free_base_port, free_base_ports

LLMDR = [sys.executable, "-m", "llmdr.cli"]


def pg_config(tmp: Path, port: int | None = None, *, local: bool = False, regions: tuple[int, int] | None = None):
    """A project on the postgres profile with its own state folder; its regions need not run."""
    p, s = regions or free_base_ports()
    extra = (f"control_plane: {{database: postgres, postgres_port: {port or free_base_port()}}}\n"
             "metrics: {with_stack: false}")
    text = two_region_yaml(p, s, local=local, extra=extra, state_dir=tmp / "state")
    (tmp / "llmdr.yaml").write_text(text)
    return parse_config(text, source=tmp / "llmdr.yaml")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One running cluster for the module (initdb once); stopped by its PID at the end, also when a test failed."""
    cfg = pg_config(tmp_path_factory.mktemp("pg"))
    try:
        postgres.start(cfg)
        yield cfg
    finally:
        pid = postgres.stop(cfg)
    assert pid is None or not _alive(pid)


def _alive(pid: int) -> bool:
    from llmdr.common.process import alive

    return alive(pid)


def _sql(cfg, query: str, database: str = "postgres", password: str | None = None):
    import psycopg2

    conn = psycopg2.connect(host="127.0.0.1", port=cfg.control_plane.postgres_port, user="llmdr",
                            password=password if password is not None else postgres_password(cfg), dbname=database,
                            connect_timeout=5)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(query)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def test_cluster_starts_stops_and_restarts_idempotently(cluster):
    cfg = cluster
    first = postgres.start(cfg)
    assert first.healthy and first.pid and first.databases == ["mlflow", "prefect"], first
    assert postgres.start(cfg).pid == first.pid  # running: left alone
    # loopback only, password required, the data and the password private to this user
    assert _sql(cfg, "SHOW listen_addresses") == [("127.0.0.1",)]
    assert _sql(cfg, "SHOW password_encryption") == [("scram-sha-256",)]
    import psycopg2

    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        _sql(cfg, "SELECT 1", password="wrong")
    env_file = cfg.state_path / "local.env"
    assert POSTGRES_PASSWORD_ENV in read_env_file(env_file)
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    data = postgres.data_dir(cfg)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700 and data.stat().st_uid == os.geteuid()
    assert postgres_password(cfg) not in " ".join(Path(f"/proc/{first.pid}/cmdline").read_text().split("\0"))

    assert postgres.stop(cfg) == first.pid
    assert not _alive(first.pid) and postgres.status(cfg).pid is None
    assert postgres.stop(cfg) is None  # already stopped: nothing to do
    again = postgres.start(cfg)
    assert again.healthy and again.pid != first.pid


def test_mlflow_run_and_model_version_on_postgres_survive_a_restart(cluster):
    from llmdr.lineage.tracking import ensure_experiment, open_client, registry_target, safe_uri

    cfg = cluster
    target = registry_target(cfg)
    assert target.tracking_uri.startswith("postgresql+psycopg2://llmdr:") and target.tracking_uri.endswith("/mlflow")
    assert postgres_password(cfg) not in safe_uri(target.tracking_uri)
    client = open_client(target)
    name = f"pg-{uuid.uuid4().hex[:8]}"
    exp = ensure_experiment(target, name)
    run = client.create_run(exp)
    client.log_param(run.info.run_id, "snapshot", "abc123")
    client.log_metric(run.info.run_id, "rto_s", 12.5)
    client.set_terminated(run.info.run_id)
    client.create_registered_model(name)
    mv = client.create_model_version(name, source="s3://bucket/x", run_id=run.info.run_id)
    client.set_registered_model_alias(name, "drill-verified", mv.version)
    # the rows are in PostgreSQL's mlflow database, not in a sqlite file
    assert _sql(cfg, f"SELECT count(*) FROM registered_models WHERE name = '{name}'", "mlflow") == [(1,)]
    assert not (cfg.state_path / "mlflow" / "mlflow.db").exists()

    postgres.stop(cfg)
    postgres.start(cfg)
    # the same client (its pool checks connections before use) reads everything back after the restart
    got = client.get_run(run.info.run_id)
    assert got.data.params == {"snapshot": "abc123"} and got.data.metrics == {"rto_s": 12.5}
    assert got.info.status == "FINISHED"
    assert client.get_model_version_by_alias(name, "drill-verified").run_id == run.info.run_id


def test_a_crash_and_a_reused_pid_in_postmaster_pid_do_not_stop_the_next_start(cluster):
    cfg = cluster
    pid = postgres.start(cfg).pid
    _sql(cfg, "CREATE TABLE IF NOT EXISTS crash_probe (v text)", "prefect")
    token = uuid.uuid4().hex
    import psycopg2

    conn = psycopg2.connect(host="127.0.0.1", port=cfg.control_plane.postgres_port, user="llmdr",
                            password=postgres_password(cfg), dbname="prefect")
    with conn, conn.cursor() as cur:
        cur.execute("INSERT INTO crash_probe VALUES (%s)", (token,))  # committed on leaving the block
    conn.close()
    os.kill(pid, signal.SIGKILL)  # the machine's crash: no shutdown checkpoint, postmaster.pid left behind
    deadline = time.monotonic() + 30
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    pidfile = postgres.data_dir(cfg) / "postmaster.pid"
    assert pidfile.exists() and postgres.status(cfg).pid is None
    st = postgres.start(cfg)  # crash recovery replays the WAL
    assert st.healthy and st.pid != pid
    assert (token,) in _sql(cfg, "SELECT v FROM crash_probe", "prefect")

    # after a reboot the PID in a stale postmaster.pid may run another program (not postgres's parent, which
    # postgres itself ignores: here a `sleep`)
    postgres.stop(cfg)
    other = subprocess.Popen(["sleep", "120"])
    try:
        lines = ["0"] * 8
        lines[0] = str(other.pid)
        pidfile.write_text("\n".join(lines) + "\n")
        assert postgres.status(cfg).pid is None
        st = postgres.start(cfg)
        assert st.healthy and st.pid != other.pid and other.poll() is None
    finally:
        other.kill()
        other.wait()


# --- bad inputs: each a clear error, nothing half-made ----------------------------------------------------------------
def test_port_taken(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        cfg = pg_config(tmp_path, s.getsockname()[1])
        with pytest.raises(StackError, match=r"cannot listen on 127\.0\.0\.1:\d+: another process.*"
                                             r"control_plane\.postgres_port"):
            postgres.start(cfg)
    assert not postgres.data_dir(cfg).exists() and postgres_password(cfg) is None


def test_server_binaries_missing_from_path(tmp_path, monkeypatch):
    cfg = pg_config(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(StackError, match=r"initdb, postgres are not on PATH.*apt-get install postgresql-15"):
        postgres.start(cfg)
    assert not postgres.data_dir(cfg).exists()


def test_data_folder_of_another_version_or_not_a_cluster(tmp_path):
    cfg = pg_config(tmp_path)
    data = postgres.data_dir(cfg)
    data.mkdir(parents=True)
    (data / "notes.txt").write_text("mine")
    with pytest.raises(StackError, match="is not a PostgreSQL data folder"):
        postgres.start(cfg)
    (data / "PG_VERSION").write_text("9\n")
    with pytest.raises(StackError, match=r"created by PostgreSQL 9, but the server on PATH is PostgreSQL \d+"):
        postgres.start(cfg)
    assert sorted(p.name for p in data.iterdir()) == ["PG_VERSION", "notes.txt"]  # untouched


def test_lost_password_is_refused_not_replaced(tmp_path, monkeypatch):
    """A cluster whose password is gone from local.env: a new password would lock llmdr out of its own data."""
    cfg = pg_config(tmp_path)
    data = postgres.data_dir(cfg)
    data.mkdir(parents=True)
    (data / "PG_VERSION").write_text(postgres.server_version(postgres.binaries()["postgres"]) + "\n")
    monkeypatch.delenv(POSTGRES_PASSWORD_ENV, raising=False)
    with pytest.raises(StackError, match="neither in \\$LLMDR_POSTGRES_PASSWORD nor in .*local.env"):
        postgres.start(cfg)
    assert postgres_password(cfg) is None


def test_tracking_without_the_cluster_says_what_to_do(tmp_path, cluster):
    from llmdr.lineage.tracking import TrackingError, open_client, registry_target

    cfg = pg_config(tmp_path)
    with pytest.raises(TrackingError, match="no password yet.*llmdr stack up"):
        registry_target(cfg)
    # a cluster that does not answer: the error names the store, never its password
    (tmp_path / "down").mkdir()
    down = pg_config(tmp_path / "down", free_base_port())
    down.state_path.mkdir(parents=True)
    (down.state_path / "local.env").write_text((cluster.state_path / "local.env").read_text())
    with pytest.raises(TrackingError) as err:
        open_client(registry_target(down))
    assert "the database does not answer at 127.0.0.1" in str(err.value)
    assert postgres_password(cluster) not in str(err.value)


# --- the CLI ------------------------------------------------------------------------------------------------------------
@pytest.mark.s3
def test_stack_up_status_down_with_postgres(tmp_path):
    cfg = pg_config(tmp_path, local=True)
    env = {**os.environ, "LLMDR_CONFIG": str(tmp_path / "llmdr.yaml")}
    pid = None

    def llmdr(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*LLMDR, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    try:
        up = llmdr("stack", "up", "--no-serving")
        assert up.returncode == 0, up.stdout + up.stderr
        assert "postgres     healthy" in up.stdout and "databases mlflow, prefect" in up.stdout
        pid = postgres.status(cfg).pid
        assert pid and _alive(pid)
        st = llmdr("stack", "status")
        assert st.returncode == 0 and f"postgres     healthy  {pid:>7}" in st.stdout, st.stdout + st.stderr
    finally:
        down = llmdr("stack", "down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert f"stopped         PostgreSQL (pid {pid})" in down.stdout
    assert not _alive(pid)
    assert "postgres     stopped" in llmdr("stack", "status").stdout


# --- attacks ------------------------------------------------------------------------------------------------------------
START = """
import sys
from llmdr.config import load_config
from llmdr.devstack import postgres
print(postgres.start(load_config(sys.argv[1])).pid)
"""


def test_two_first_starts_at_once_make_one_cluster_with_one_password(tmp_path, monkeypatch):
    """Two commands starting the same fresh cluster together (`stack up` and `stack up --mlflow`...): one initdb, one
    password, one server; the second waits and finds it running. A hostile password survives the URLs."""
    cfg = pg_config(tmp_path)
    (tmp_path / "state" / "postgres").mkdir(parents=True)
    (tmp_path / "state" / "postgres" / "data.init-999999").mkdir()  # left by an initdb killed mid-way
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent), POSTGRES_PASSWORD_ENV: "p@ss:w/rd%20 #?&"}
    procs = [subprocess.Popen([sys.executable, "-c", START, str(tmp_path / "llmdr.yaml")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    monkeypatch.setenv(POSTGRES_PASSWORD_ENV, env[POSTGRES_PASSWORD_ENV])
    try:
        assert [p.returncode for p in procs] == [0, 0], outs
        pids = {o[0].strip() for o in outs}
        assert pids == {str(postgres.status(cfg).pid)}, outs
        assert postgres.status(cfg).healthy
        assert not list((tmp_path / "state" / "postgres").glob("data.init-*"))
        # the password from the environment, with URL-special characters, works through MLflow's URL
        from llmdr.lineage.tracking import open_client, registry_target

        assert open_client(registry_target(cfg)).search_experiments() is not None
    finally:
        postgres.stop(cfg)


def test_the_runbook_says_where_mlflow_records_are(tmp_path):
    from llmdr.drill.runbook.recovery import credentials
    from llmdr.drill.runbook.text import Context

    line = next(x for x in credentials(Context(pg_config(tmp_path, 18320))) if "**MLflow**" in x)
    assert "database `mlflow` of the local PostgreSQL (127.0.0.1:18320" in line and "LLMDR_POSTGRES_PASSWORD" in line
    assert "mlflow.db" not in line

"""The local PostgreSQL of the control plane (``control_plane: {database: postgres}``): one cluster per project in
``<state_dir>/postgres/data``, from the PostgreSQL server binaries on PATH (Debian's ``postgresql-15``: ``initdb``,
``postgres``), listening on 127.0.0.1 only, password authentication (scram-sha-256) for every connection, and the
databases ``prefect`` (the Prefect server's) and ``mlflow`` (the tracking store and model registry).

The password is ``$LLMDR_POSTGRES_PASSWORD`` or one generated into ``<state_dir>/local.env`` (0600) at the first
start, like the local regions' keys. The server is started detached and stopped by the PID in its own
``postmaster.pid`` (fast shutdown: SIGINT), only after checking that PID runs ``postgres``.

PostgreSQL refuses to run as root. Run by root (containers, CI), llmdr starts ``initdb`` and ``postgres`` in a user
namespace (``unshare --user --map-user``) where they run as an unprivileged user while the files they write stay
root's, 0700, inside the state folder: no permission of the state folder (which holds the keys) or of its parents
has to be opened to another account such as Debian's ``postgres``.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from llmdr.common.files import atomic_write, open_private, private_dir
from llmdr.common.process import alive, cmdline, port_open, spawn, tail, terminate
from llmdr.config import Config
from llmdr.config.sections import POSTGRES_USER
from llmdr.errors import StackError
from llmdr.storage.credentials import LOCAL_ENV, POSTGRES_PASSWORD_ENV, postgres_password, write_env_file

log = logging.getLogger(__name__)

DATABASES = ("prefect", "mlflow")
BINARIES = ("initdb", "postgres")
SOCKET_PATH_MAX = 107  # sun_path: a longer Unix socket path makes postgres refuse to start


@dataclass
class PostgresStatus:
    url: str  # postgresql://llmdr@127.0.0.1:PORT (no password)
    pid: int | None
    healthy: bool
    data_dir: str
    databases: list[str]
    detail: str = ""

    def to_json(self) -> dict:
        return asdict(self)


def base_dir(cfg: Config) -> Path:
    return cfg.state_path / "postgres"


def data_dir(cfg: Config) -> Path:
    return base_dir(cfg) / "data"


def binaries() -> dict[str, str]:
    """The server binaries on PATH, by name; a clear error naming what is missing."""
    found = {name: shutil.which(name) for name in BINARIES}
    missing = [n for n, p in found.items() if not p]
    if missing:
        raise StackError(f"control_plane.database is postgres, but the PostgreSQL server program(s) "
                         f"{', '.join(missing)} are not on PATH. Install the server (Debian: `apt-get install "
                         "postgresql-15`, then add /usr/lib/postgresql/15/bin to PATH), or set control_plane.database: "
                         "sqlite")
    return {n: str(p) for n, p in found.items()}


def server_version(postgres: str) -> str:
    """The major version of a ``postgres`` binary, e.g. ``"15"``."""
    out = subprocess.run([postgres, "--version"], capture_output=True, text=True, timeout=30).stdout
    words = out.split()
    return words[-1].split(".")[0] if words else "?"


def _as_user() -> list[str]:
    """The prefix that runs a PostgreSQL program as a non-root user: none unless llmdr runs as root."""
    if os.geteuid() != 0:
        return []
    uid, gid = _namespace_ids()
    prefix = ["unshare", "--user", f"--map-user={uid}", f"--map-group={gid}", "--"]
    try:
        r = subprocess.run([*prefix, "true"], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        r = None
    if r is None or r.returncode != 0:
        why = "unshare is not installed" if r is None else (r.stderr.strip() or f"exit code {r.returncode}")
        raise StackError("PostgreSQL refuses to run as root, and llmdr (running as root) cannot start it as another "
                         f"user in a user namespace here: `unshare --user` failed ({why}). Run llmdr as a non-root "
                         "user, or allow user namespaces (sysctl user.max_user_namespaces), or set "
                         "control_plane.database: sqlite")
    return prefix


def _namespace_ids() -> tuple[int, int]:
    """Who initdb and postgres are inside the user namespace: an account the system knows (initdb looks its name
    up), Debian's ``postgres`` if there is one. Only the IDs are borrowed: on disk, the files stay root's."""
    import pwd

    for name in ("postgres", "nobody"):
        try:
            pw = pwd.getpwnam(name)
            return pw.pw_uid, pw.pw_gid
        except KeyError:
            continue
    raise StackError("running as root, llmdr starts PostgreSQL as a non-root account inside a user namespace, but "
                     "this system has neither a postgres nor a nobody account; run llmdr as a non-root user")


def postmaster_pid(cfg: Config) -> int | None:
    """The PID in ``postmaster.pid`` if a ``postgres`` process runs with it (ours or started by hand on this data
    folder); None if there is no such file or it is stale (left by a crash)."""
    try:
        pid = int((data_dir(cfg) / "postmaster.pid").read_text().splitlines()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None
    args = cmdline(pid)
    if not args or Path(args[0]).name not in ("postgres", "postmaster") or not alive(pid):
        return None
    return pid


def _drop_reused_pid_file(cfg: Config) -> None:
    """A postmaster.pid left by a crash names a dead PID: postgres itself checks its shared memory and replaces the
    file. If that PID now runs another program (reused after a reboot), postgres would refuse to start ("is another
    postmaster running?"): that file alone is removed."""
    path = data_dir(cfg) / "postmaster.pid"
    try:
        pid = int(path.read_text().splitlines()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return
    if not alive(pid):
        return
    log.warning("removing %s: its PID %d runs %s, not PostgreSQL", path, pid, (cmdline(pid) or ["?"])[0])
    path.unlink(missing_ok=True)


def _ready(cfg: Config) -> bool:
    """postmaster.pid says ``ready`` (line 8) and the port accepts connections."""
    try:
        lines = (data_dir(cfg) / "postmaster.pid").read_text().splitlines()
    except FileNotFoundError:
        return False
    return len(lines) >= 8 and lines[7].strip() == "ready" and port_open("127.0.0.1", cfg.control_plane.postgres_port)


def _password(cfg: Config, *, initialized: bool) -> str:
    """The cluster's password: the known one, or a new one (saved to local.env) for a cluster not created yet."""
    known = postgres_password(cfg)
    if known:
        return known
    if initialized:
        raise StackError(f"the PostgreSQL cluster in {data_dir(cfg)} was created with a password that is neither in "
                         f"${POSTGRES_PASSWORD_ENV} nor in {cfg.state_path / LOCAL_ENV} any more: put it back there, "
                         f"or remove {data_dir(cfg)} to start over (its Prefect and MLflow records are lost)")
    new = secrets.token_urlsafe(24)
    write_env_file(cfg.state_path / LOCAL_ENV, {POSTGRES_PASSWORD_ENV: new})
    return new


def _initdb(cfg: Config, initdb: str, password: str) -> None:
    """Create the cluster in a temporary folder and move it into place only once initdb succeeded: a failed or
    interrupted initdb never leaves a half-made ``data`` folder behind."""
    base = private_dir(base_dir(cfg))
    tmp = base / f"data.init-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    pwfile = base / f".pw-{os.getpid()}"
    atomic_write(pwfile, password + "\n")
    try:
        r = subprocess.run([*_as_user(), initdb, "-D", str(tmp), "-U", POSTGRES_USER, "--auth=scram-sha-256",
                            f"--pwfile={pwfile}", "--encoding=UTF8", "--locale=C", "--no-instructions"],
                           capture_output=True, text=True, timeout=300, cwd=base)
        if r.returncode != 0:
            raise StackError(f"initdb failed for {data_dir(cfg)} (exit code {r.returncode}):\n"
                             f"{(r.stdout + r.stderr)[-2000:]}")
        os.rename(tmp, data_dir(cfg))
    finally:
        pwfile.unlink(missing_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)


def _check_data_dir(cfg: Config, postgres: str) -> bool:
    """Whether the cluster exists; a clear error when the folder is not one, or another major version made it."""
    d = data_dir(cfg)
    if not d.exists():
        return False
    version_file = d / "PG_VERSION"
    if not version_file.exists():
        if not any(d.iterdir()):
            d.rmdir()
            return False
        raise StackError(f"{d} is not a PostgreSQL data folder (no PG_VERSION) but is not empty; move it away, or set "
                         f"state_dir to another folder")
    made, have = version_file.read_text().strip(), server_version(postgres)
    if made != have:
        raise StackError(f"the PostgreSQL cluster in {d} was created by PostgreSQL {made}, but the server on PATH is "
                         f"PostgreSQL {have} ({postgres}): put PostgreSQL {made}'s bin folder first on PATH, or upgrade "
                         f"the cluster (pg_upgrade, or pg_dumpall with {made} then restore with {have})")
    return True


def _socket_dir(d: Path, port: int) -> str:
    """The data folder for the Unix socket when its path fits ``sun_path``; else none (TCP on loopback only)."""
    return str(d) if len(f"{d}/.s.PGSQL.{port}") <= SOCKET_PATH_MAX else ""


@contextlib.contextmanager
def _start_lock(cfg: Config):
    """One start at a time per cluster (`stack up`, `stack up --ui`, the MLflow UI and tests may start it at once):
    two would each create a cluster with its own password. A ``flock``, released however its holder exits."""
    fd = open_private(private_dir(base_dir(cfg)) / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def start(cfg: Config, timeout: float = 60.0) -> PostgresStatus:
    """Start the cluster (creating it at the first start) unless it runs, wait until it is ready, and create the
    databases ``prefect`` and ``mlflow`` if missing. Idempotent; concurrent calls wait for each other."""
    with _start_lock(cfg):
        return _start(cfg, timeout)


def _start(cfg: Config, timeout: float) -> PostgresStatus:
    port = cfg.control_plane.postgres_port
    d = data_dir(cfg)
    for garbage in base_dir(cfg).glob("data.init-*"):  # an initdb killed mid-way (we hold the lock: none runs)
        shutil.rmtree(garbage, ignore_errors=True)
    if postmaster_pid(cfg) is None:
        bins = binaries()
        initialized = _check_data_dir(cfg, bins["postgres"])
        if port_open("127.0.0.1", port):
            raise StackError(f"the local PostgreSQL cannot listen on 127.0.0.1:{port}: another process already does. "
                             "Set control_plane.postgres_port in the config to a free port (or stop that process)")
        password = _password(cfg, initialized=initialized)
        if not initialized:
            log.info("creating the PostgreSQL cluster in %s", d)
            _initdb(cfg, bins["initdb"], password)
        _drop_reused_pid_file(cfg)
        args = [*_as_user(), bins["postgres"], "-D", str(d), "-c", "listen_addresses=127.0.0.1", "-p", str(port),
                "-c", f"unix_socket_directories={_socket_dir(d, port)}", "-c", "logging_collector=off"]
        logfile = base_dir(cfg) / "postgres.log"
        proc = spawn(args, logfile, cwd=base_dir(cfg), env=_server_env())
        deadline = time.monotonic() + timeout
        while not _ready(cfg):
            if proc.poll() is not None:
                raise StackError(f"PostgreSQL exited with code {proc.returncode} while starting on 127.0.0.1:{port} "
                                 f"(data {d}):\n{tail(logfile)}")
            if time.monotonic() > deadline:
                terminate(proc.pid, ladder=_ladder(20.0))
                raise StackError(f"PostgreSQL did not become ready on 127.0.0.1:{port} within {timeout:.0f}s "
                                 f"(data {d}):\n{tail(logfile)}")
            time.sleep(0.1)
        log.info("started PostgreSQL (pid %d, 127.0.0.1:%d)", proc.pid, port)
    _create_databases(cfg)
    return status(cfg)


def _server_env() -> dict[str, str]:
    from llmdr.common.process import child_env

    return child_env({"LC_ALL": "C"})


def _connect(cfg: Config, database: str = "postgres", timeout: int = 5):
    try:
        import psycopg2
    except ImportError as exc:
        raise StackError("psycopg2 is not installed in llmdr's environment (`uv sync` installs psycopg2-binary); "
                         "MLflow and llmdr need it for control_plane.database: postgres") from exc
    password = postgres_password(cfg) or ""
    try:
        return psycopg2.connect(host="127.0.0.1", port=cfg.control_plane.postgres_port, user=POSTGRES_USER,
                                password=password, dbname=database, connect_timeout=timeout)
    except psycopg2.OperationalError as exc:
        raise StackError(f"cannot connect to the local PostgreSQL at 127.0.0.1:{cfg.control_plane.postgres_port} as "
                         f"{POSTGRES_USER}: {' '.join(str(exc).split())}") from exc


def _create_databases(cfg: Config) -> None:
    import psycopg2.errors

    conn = _connect(cfg)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            for name in DATABASES:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    with contextlib.suppress(psycopg2.errors.DuplicateDatabase):  # created meanwhile by another start
                        cur.execute(f'CREATE DATABASE "{name}" OWNER "{POSTGRES_USER}"')
    finally:
        conn.close()


# fast shutdown (SIGINT: running transactions roll back, a checkpoint is written), then immediate shutdown (SIGQUIT:
# recovery at the next start), then SIGKILL
def _ladder(timeout: float) -> list[tuple[signal.Signals, float]]:
    return [(signal.SIGINT, timeout), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)]


def stop(cfg: Config, timeout: float = 30.0) -> int | None:
    """Stop the cluster by the PID in its postmaster.pid; returns that PID (None: it was not running)."""
    pid = postmaster_pid(cfg)
    if pid is not None:
        terminate(pid, ladder=_ladder(timeout))
        log.info("stopped PostgreSQL (pid %d)", pid)
    return pid


def status(cfg: Config) -> PostgresStatus:
    port = cfg.control_plane.postgres_port
    pid = postmaster_pid(cfg)
    st = PostgresStatus(url=f"postgresql://{POSTGRES_USER}@127.0.0.1:{port}", pid=pid, healthy=False,
                        data_dir=str(data_dir(cfg)), databases=[])
    if pid is None:
        st.detail = "not running"
        return st
    try:
        conn = _connect(cfg, timeout=3)
    except StackError as exc:
        st.detail = str(exc)
        return st
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT datname FROM pg_database WHERE datname = ANY(%s) ORDER BY datname", (list(DATABASES),))
            st.databases = [row[0] for row in cur.fetchall()]
    finally:
        conn.close()
    st.healthy = set(st.databases) == set(DATABASES)
    st.detail = "ok" if st.healthy else f"missing database(s) {sorted(set(DATABASES) - set(st.databases))}"
    return st


def describe(st: PostgresStatus) -> str:
    state = "healthy" if st.healthy else ("running" if st.pid else "stopped")
    return (f"postgres     {state:<8} {st.pid or '-':>7}  {st.url.removeprefix('postgresql://')} "
            f"(databases {', '.join(st.databases) or '-'}; data {st.data_dir})" + ("" if st.healthy else f" {st.detail}"))

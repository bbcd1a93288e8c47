"""No unauthenticated door into a local region (issue #16): every port of a region that llmdr starts, except its S3
endpoint, refuses reads, writes and deletes from a caller without credentials, as anyone on the host could try them;
S3 with the region's keys still works; and the readiness check that probes those ports passes on such a region and
FAILs on a ``weed mini`` started the old way (no security.toml, HTTP APIs on), naming the ports that answered.

Against the session's real SeaweedFS regions, plus one extra ``weed mini`` started here the old way and stopped by its
PID. The chunk an attacker would read is found the way an attacker with read access to nothing but the ports could
not: from the volume file on disk (the test's shortcut), then proven real by reading it WITH a token minted from the
region's own key."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import socket
import stat
import time
import tomllib
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from llmdr.common.process import port_open, spawn, terminate, wait_for_port
from llmdr.devstack.regions import region_dir, region_pid, weed_binary
from llmdr.devstack.weedauth import PORTS, probe_doors, weed_env
from llmdr.drill.readiness import FAIL, PASS, check_doors, run_checks
from llmdr.storage.credentials import resolve_keys
from tests.support.config import make_config
from tests.support.ports import free_base_ports

pytestmark = pytest.mark.s3


def s3(cfg, region):
    import boto3
    from botocore.config import Config

    k = resolve_keys(cfg, region)
    return boto3.client("s3", endpoint_url=region.endpoint, aws_access_key_id=k.access_key_id,
                        aws_secret_access_key=k.secret_access_key, region_name="us-east-1",
                        config=Config(s3={"addressing_style": "path"}))


def find_fid(data_dir: Path, data: bytes) -> str:
    """The volume-server file id of the needle holding ``data``: needle header (cookie 4, id 8, size 4) and the data
    size (4) sit right before the bytes in the volume's .dat file."""
    mark = data[:64]
    for _ in range(50):  # the volume file may lag the S3 answer by a moment
        for dat in data_dir.rglob("*.dat"):
            raw = dat.read_bytes()
            at = raw.find(mark)
            if at >= 20:
                cookie = int.from_bytes(raw[at - 20:at - 16], "big")
                nid = int.from_bytes(raw[at - 16:at - 8], "big")
                return f"{int(dat.stem.rsplit('_', 1)[-1])},{nid:x}{cookie:08x}"
        time.sleep(0.1)
    raise AssertionError(f"the object's chunk was not found in any volume under {data_dir}")


def jwt_for(key: str, fid: str) -> str:
    """An HS256 token for one file id, as the master and filer mint them (what a caller WITH the key could do)."""
    def b64(obj) -> bytes:
        return base64.urlsafe_b64encode(json.dumps(obj, separators=(",", ":")).encode()).rstrip(b"=")

    head = b64({"alg": "HS256", "typ": "JWT"}) + b"." + b64({"exp": int(time.time()) + 60, "fid": fid})
    sig = base64.urlsafe_b64encode(hmac.new(key.encode(), head, hashlib.sha256).digest()).rstrip(b"=")
    return (head + b"." + sig).decode()


def security(cfg, region) -> dict:
    return tomllib.loads((region_dir(cfg, region) / "security.toml").read_text())


@pytest.fixture
def locked_object(stack):
    """A fresh Object Lock bucket in the primary region holding one COMPLIANCE-locked version of random bytes."""
    r = stack.primary
    cli = s3(stack, r)
    bucket = f"doors-{uuid.uuid4().hex[:10]}"
    cli.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    data = secrets.token_bytes(200_000)
    v = cli.put_object(Bucket=bucket, Key="weights.bin", Body=data, ObjectLockMode="COMPLIANCE",
                       ObjectLockRetainUntilDate=datetime.now(timezone.utc) + timedelta(seconds=120))["VersionId"]
    return r, cli, bucket, "weights.bin", v, data


def test_no_port_but_s3_serves_an_unauthenticated_read_write_or_delete(stack, locked_object):
    """Each non-S3 port, asked without credentials to read the locked object's chunk or its file, write a file, and
    delete the chunk, the file or a whole collection: all refused. The chunk is real (a token made from the region's
    key reads it back), and after the attempts the locked version is intact."""
    r, cli, bucket, key, version, data = locked_object
    fid = find_fid(region_dir(stack, r) / "data", data)
    doors = probe_doors(r.port, bucket, key=key, fid=fid)
    assert {d.port for d in doors} == {r.port + off for off, _, _ in PORTS}
    assert {"read", "write", "delete"} <= {d.action for d in doors if d.what == "volume HTTP"}
    assert {"read", "write", "delete"} <= {d.action for d in doors if d.what == "filer HTTP"}
    opened = [d for d in doors if d.answered]
    assert not opened, "\n".join(f"{d.what} {d.port} {d.request}: {d.detail}" for d in opened)
    assert any("401" in d.detail for d in doors if d.what == "volume HTTP")  # refused by the token check, not absent

    # the chunk probed is the object's: a token made from the region's own key reads it back
    read_key = security(stack, r)["jwt"]["signing"]["read"]["key"]
    req = urllib.request.Request(f"http://127.0.0.1:{r.port + 3}/{fid}",
                                 headers={"Authorization": "Bearer " + jwt_for(read_key, fid)})
    with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310 - loopback
        assert resp.read() == data

    # the attempts changed nothing: the locked version reads back, and S3 with keys still refuses to delete it
    assert cli.get_object(Bucket=bucket, Key=key, VersionId=version)["Body"].read() == data
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError, match="AccessDenied"):
        cli.delete_object(Bucket=bucket, Key=key, VersionId=version)


def test_s3_with_keys_still_puts_gets_lists_and_deletes_a_version(stack, locked_object):
    r, cli, bucket, key, locked_version, _ = locked_object
    body = secrets.token_bytes(70_000)
    v = cli.put_object(Bucket=bucket, Key="other.bin", Body=body)["VersionId"]
    assert cli.get_object(Bucket=bucket, Key="other.bin")["Body"].read() == body
    names = {o["Key"] for o in cli.list_objects_v2(Bucket=bucket)["Contents"]}
    assert names == {key, "other.bin"}
    versions = {x["VersionId"] for x in cli.list_object_versions(Bucket=bucket)["Versions"]}
    assert {v, locked_version} <= versions
    cli.delete_object(Bucket=bucket, Key="other.bin", VersionId=v)
    assert v not in {x["VersionId"] for x in cli.list_object_versions(Bucket=bucket).get("Versions", [])}


def test_no_unprobed_listener(stack):
    """Every TCP port the region's weed listens on is either S3 or one the probe covers, so a new listener in a
    future SeaweedFS cannot slip by unprobed."""
    for r in stack.regions:
        pid = region_pid(stack, r)
        assert pid is not None
        inodes = socket_inodes(pid)
        listening = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for line in Path(table).read_text().splitlines()[1:]:
                f = line.split()
                if f[3] == "0A" and f[9] in inodes:  # LISTEN
                    listening.add(int(f[1].rsplit(":", 1)[1], 16))
        assert listening == {r.port} | {r.port + off for off, _, _ in PORTS}


def socket_inodes(pid: int) -> set[str]:
    """The inode numbers of the sockets process ``pid`` holds open."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def unix_listeners(pid: int) -> set[str]:
    inodes = socket_inodes(pid)
    out = set()
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        f = line.split()
        if len(f) >= 8 and f[6] in inodes and int(f[3], 16) & 0x10000:  # __SO_ACCEPTCON: listening
            out.add(f[7])
    return out


def over_unix(path: str, payload: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.settimeout(3)
        try:
            c.connect(path)
            c.sendall(payload)
            got = b""
            while len(got) < 4096 and (chunk := c.recv(4096)):
                got += chunk
            return got
        except OSError as exc:
            return f"refused: {exc}".encode()


def test_unix_sockets_serve_nothing_without_credentials(stack):
    """weed also listens on Unix sockets (its own gRPC services under /tmp, the filer and S3 in the region's folder):
    none answers gRPC without the client certificate, and the filer's serves no file."""
    for r in stack.regions:
        paths = unix_listeners(region_pid(stack, r))
        assert paths, "weed listens on no Unix socket at all?"
        for path in paths:
            if path == str(region_dir(stack, r) / "s3.sock"):
                continue  # S3 itself, signed requests only
            got = over_unix(path, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            assert not (len(got) >= 9 and got[3] == 0x04), f"{path} answers gRPC without a client certificate"
            got = over_unix(path, f"GET /buckets/{r.bucket}/ HTTP/1.0\r\nHost: x\r\n\r\n".encode())
            assert not got.startswith((b"HTTP/1.0 2", b"HTTP/1.1 2")), f"{path}: {got[:200]!r}"


def test_each_region_has_its_own_keys_in_files_only_the_owner_reads(stack):
    keys = []
    for r in stack.regions:
        rdir = region_dir(stack, r)
        assert stat.S_IMODE(rdir.stat().st_mode) == 0o700
        for f in (rdir / "security.toml", rdir / "tls" / "weed.key", rdir / "tls" / "weed.crt"):
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
        sec = security(stack, r)
        keys.append((sec["jwt"]["signing"]["key"], sec["jwt"]["filer_signing"]["read"]["key"]))
        assert sec["grpc"]["master"]["key"] == str(rdir / "tls" / "weed.key")
    assert len({k for pair in keys for k in pair}) == 2 * len(keys)  # no key shared between regions or roles


def test_weed_gets_no_weed_overrides_and_no_llmdr_secrets(tmp_path, monkeypatch):
    monkeypatch.setenv("WEED_JWT_SIGNING_KEY", "attacker-known")
    monkeypatch.setenv("LLMDR_PRIMARY_SECRET_ACCESS_KEY", "s3cr3t")
    env = weed_env(tmp_path)
    assert not [k for k in env if k.startswith("WEED_")] and "s3cr3t" not in env.values()
    assert env["HOME"] == str(tmp_path)


def test_the_doors_check_passes_on_regions_llmdr_started(stack):
    for r in stack.regions:
        c = check_doors(r)
        assert c.status == PASS, c.summary
        assert c.data["probed"] >= 20 and len(c.data["ports"]) == len(PORTS)
    rep = run_checks(stack, only={"doors"})
    assert [c.id for c in rep.checks] == [f"doors/{r.name}" for r in stack.regions]


@pytest.fixture
def old_style_region(tmp_path):
    """A ``weed mini`` started the way llmdr did before: no security.toml anywhere it looks, HTTP APIs on."""
    p, s = free_base_ports()
    cfg = make_config(tmp_path, p, s, tmp_path / ".llmdr")
    r = cfg.primary
    rdir = tmp_path / "old"
    (rdir / "data").mkdir(parents=True)
    (rdir / "s3.json").write_text(json.dumps({"identities": [{"name": "x", "credentials": [
        {"accessKey": "OLDSTYLEKEY", "secretKey": secrets.token_urlsafe(20)}], "actions": ["Admin"]}]}))
    argv = [weed_binary(), "mini", f"-dir={rdir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-s3.port={p}", f"-master.port={p + 1}", f"-master.port.grpc={p + 2}", f"-volume.port={p + 3}",
            f"-volume.port.grpc={p + 4}", f"-filer.port={p + 5}", f"-filer.port.grpc={p + 6}",
            f"-s3.port.grpc={p + 7}", f"-admin.port={p + 8}", f"-admin.port.grpc={p + 10008}", "-admin.ui=false",
            "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
            "-master.resumeState=false", f"-s3.config={rdir / 's3.json'}",
            f"-filer.localSocket={rdir / 'filer.sock'}", f"-s3.localSocket={rdir / 's3.sock'}"]
    proc = spawn(argv, rdir / "weed.log", cwd=rdir, env=weed_env(rdir))
    try:
        for port in (p, p + 1, p + 3, p + 5):
            assert wait_for_port("127.0.0.1", port, timeout=60), (rdir / "weed.log").read_text()[-2000:]
        yield r
    finally:
        terminate(proc.pid)


def test_the_doors_check_fails_on_a_region_started_the_old_way(old_style_region):
    r = old_style_region
    deadline = time.monotonic() + 30
    while True:  # the filer and volume come up a moment after their ports open
        c = check_doors(r)
        ports = {d["port"] for d in c.data.get("open", [])}
        if {r.port + 1, r.port + 3, r.port + 5, r.port + 6} <= ports or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert c.status == FAIL
    assert {r.port + 1, r.port + 2, r.port + 3, r.port + 4, r.port + 5, r.port + 6} <= ports, c.summary
    assert f"port {r.port + 1}" in c.summary and "answered" in c.summary and "llmdr stack up" in c.action
    # the filer stored a file for an anonymous caller: the very door this check is about
    assert any(d["what"] == "filer HTTP" and d["action"] == "write" for d in c.data["open"])
    req = urllib.request.Request(f"http://127.0.0.1:{r.port + 5}/llmdr-door-probe/",
                                 headers={"Accept": "application/json"})
    try:  # and the probe removed its own file again
        with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310 - loopback
            assert not json.loads(resp.read()).get("Entries")
    except urllib.error.HTTPError as e:
        assert e.code == 404


def test_a_restart_brings_new_keys_and_the_same_data(tmp_path):
    """Keys and certificates are made fresh at every start; the data does not depend on them: an object written
    before a restart reads back after it, and the old token key no longer opens the volume server."""
    from llmdr.devstack.regions import start_region, stop_region

    p, s = free_base_ports()
    cfg = make_config(tmp_path, p, s, tmp_path / ".llmdr")
    r = cfg.primary
    try:
        start_region(cfg, r)
        body = secrets.token_bytes(150_000)
        s3(cfg, r).put_object(Bucket=r.bucket, Key="before.bin", Body=body)
        fid = find_fid(region_dir(cfg, r) / "data", body)
        old_key = security(cfg, r)["jwt"]["signing"]["read"]["key"]
        stop_region(cfg, r)
        deadline = time.monotonic() + 20  # a stopped weed's last threads may hold a port a moment longer
        while any(port_open("127.0.0.1", q) for q in r.local_ports) and time.monotonic() < deadline:
            time.sleep(0.1)
        start_region(cfg, r)
        assert security(cfg, r)["jwt"]["signing"]["read"]["key"] != old_key
        assert s3(cfg, r).get_object(Bucket=r.bucket, Key="before.bin")["Body"].read() == body
        assert check_doors(r).status == PASS
        req = urllib.request.Request(f"http://127.0.0.1:{r.port + 3}/{fid}",
                                     headers={"Authorization": "Bearer " + jwt_for(old_key, fid)})
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req, timeout=5)  # noqa: S310 - loopback
        assert info.value.code == 401
    finally:
        stop_region(cfg, r)

"""No unauthenticated door into a local region: SeaweedFS's own ports refuse callers without credentials.

``weed mini`` opens, besides the S3 endpoint, master, volume, filer and admin HTTP ports and five gRPC ports. Out of
the box every one of them answers anyone on the host: the filer serves and stores files, the master hands out write
tokens and deletes whole collections, the volume server reads, writes and deletes chunks, and the gRPC services do
all of that and more (the filer's DeleteEntry, the S3 gateway's Configure, which replaces its identities). Through
them the S3 keys and Object Lock mean nothing.

What ``write_security`` sets up for each region (fresh at every start, in the region's own folder, files 0600):

- ``security.toml``, found by ``weed`` through ``-config_dir`` (and its working directory, the same folder), with
  random JWT keys: ``[jwt.signing]`` / ``[jwt.signing.read]`` (the volume server refuses writes, deletes and reads
  without a token the master or filer minted for that very chunk) and ``[jwt.filer_signing]`` /
  ``[jwt.filer_signing.read]`` (the filer's HTTP API and its IAM gRPC service); the S3 gateway signs its own
  requests with them. Each region has its own keys.
- mutual TLS on every gRPC port (``[grpc.*]``): a CA made for this start signs one certificate the region's
  components share; a caller without it is refused at the handshake. The CA's key is never written down.
- ``-disableHttp`` (on the command line, see regions.py): the master and filer HTTP APIs are not served at all. That
  matters because the filer's ``/?proxyChunkId=`` route reads a chunk *before* any filer JWT check and mints the
  volume read token itself, and the master's guard lets everyone through when no IP white list is set.

``probe_doors`` knocks on every port but S3 without credentials, as an attacker on the host would, and says which
answered; readiness FAILs on any. Probes only use names nothing else uses (a random collection, a random path) and
undo a write that got through, so probing an open region changes nothing that matters.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import secrets
import socket
import ssl
from dataclasses import asdict, dataclass
from pathlib import Path

from llmdr.common.files import atomic_write

log = logging.getLogger(__name__)

# weed mini's embedded maintenance worker dials the admin server at "admin HTTP port + 10000", whatever
# -admin.port.grpc says; so the admin gRPC port must be exactly that, or the worker reaches another region's server.
ADMIN_GRPC_OFFSET = 10000

# Every port of a region but S3, by offset from the S3 port: (offset, what, protocol).
PORTS = ((1, "master HTTP", "http"), (2, "master gRPC", "grpc"), (3, "volume HTTP", "http"),
         (4, "volume gRPC", "grpc"), (5, "filer HTTP", "http"), (6, "filer gRPC", "grpc"), (7, "S3 gRPC", "grpc"),
         (8, "admin HTTP", "http"), (8 + ADMIN_GRPC_OFFSET, "admin gRPC", "grpc"))

# gRPC sections weed reads for its servers and for the clients it dials with (mini runs them all in one process)
_GRPC_SECTIONS = ("master", "volume", "filer", "s3", "admin", "worker", "msg_broker", "msg_agent", "mq", "client")
SECURITY_TOML = "security.toml"
TLS_DIR = "tls"


def _toml_str(s: str | Path) -> str:
    return json.dumps(str(s))  # a JSON string is a valid TOML basic string


def write_security(rdir: Path, region: str) -> Path:
    """Write the region's ``security.toml`` and TLS files into ``rdir`` (0600, folder 0700), with new keys. Returns
    the ``security.toml`` path. Call only while the region's ``weed`` is stopped."""
    rdir.mkdir(parents=True, exist_ok=True)
    os.chmod(rdir, 0o700)
    tls = rdir / TLS_DIR
    ca, cert, key = _make_certificates(region)
    atomic_write(tls / "ca.crt", ca, mode=0o600)
    atomic_write(tls / "weed.crt", cert, mode=0o600)
    atomic_write(tls / "weed.key", key, mode=0o600)
    os.chmod(tls, 0o700)
    lines = ["# written by llmdr at every `llmdr stack up` of this region: new keys each start; do not edit", ""]
    for section in ("jwt.signing", "jwt.signing.read", "jwt.filer_signing", "jwt.filer_signing.read"):
        # generous expiries: a token is minted per request, and a slow upload must not outlive its own token
        lines += [f"[{section}]", f"key = {_toml_str(secrets.token_urlsafe(32))}", "expires_after_seconds = 60", ""]
    lines += ["[access]", "ui = false", "", "[filer.expose_directory_metadata]", "enabled = false", "",
              "[grpc]", f"ca = {_toml_str(tls / 'ca.crt')}", ""]
    for section in _GRPC_SECTIONS:
        lines += [f"[grpc.{section}]", f"cert = {_toml_str(tls / 'weed.crt')}", f"key = {_toml_str(tls / 'weed.key')}",
                  ""]
    path = rdir / SECURITY_TOML
    atomic_write(path, "\n".join(lines), mode=0o600)
    return path


def weed_env(rdir: Path) -> dict[str, str]:
    """The environment for the region's ``weed``: only what a Go program needs. No ``WEED_*`` variable (they would
    override security.toml, e.g. an empty WEED_JWT_SIGNING_KEY), none of llmdr's secrets, and HOME is the region's
    folder so no ``~/.seaweedfs/*.toml`` of the user is read."""
    env = {k: v for k in ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR") if (v := os.environ.get(k))}
    env["HOME"] = str(rdir)
    return env


def _make_certificates(region: str) -> tuple[bytes, bytes, bytes]:
    """A CA for this start and one certificate it signs (server and client use), for 127.0.0.1; the CA key is
    dropped, so nothing else can ever be signed by it."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    until = now + datetime.timedelta(days=3650)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"llmdr local region {region} CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(until).add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"llmdr-{region}")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(until)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return ca.public_bytes(pem), cert.public_bytes(pem), key_pem


# --- probing ----------------------------------------------------------------------------------------------------------


@dataclass
class Door:
    """One unauthenticated request to one port, and whether the server did what it asked."""

    port: int
    what: str  # "filer HTTP"
    action: str  # "read", "write", "delete"
    request: str  # "GET /buckets/"
    answered: bool  # True: the server served it without credentials (an open door)
    detail: str  # status and the start of the body, or the refusal seen

    def to_json(self) -> dict:
        return asdict(self)


_GO_NOT_FOUND = b"404 page not found"  # Go's mux for a route that is not served (-disableHttp)


def _http(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
          timeout: float = 3.0) -> tuple[int | None, bytes, str]:
    """(status, first bytes of the body, error) of one plain request to 127.0.0.1:port; status None when refused."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read(4096), ""
    except (OSError, http.client.HTTPException) as exc:
        return None, b"", f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()


def _refused(status: int | None, body: bytes) -> bool:
    """Refused: nothing listens, the credentials check said no (401/403), or the route is not served at all."""
    return status is None or status in (401, 403) or (status == 404 and body.startswith(_GO_NOT_FOUND))


def _door(port: int, what: str, action: str, method: str, path: str, body: bytes | None = None,
          headers: dict | None = None) -> Door:
    status, got, err = _http(port, method, path, body, headers)
    shown = got[:120].decode("utf-8", "replace").strip().replace("\n", " ")
    detail = err if status is None else f"HTTP {status}" + (f" {shown}" if shown else "")
    return Door(port, what, action, f"{method} {path}", not _refused(status, got), detail)


def _multipart(name: str, data: bytes) -> tuple[bytes, dict]:
    boundary = "llmdr" + secrets.token_hex(8)
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def _volume_ids(port: int) -> list[int]:
    """Volume ids the volume server holds, from its (unauthenticated, read-only) /status page; [1] if none."""
    status, body, _ = _http(port, "GET", "/status")
    ids: list[int] = []
    if status == 200:
        try:
            ids = sorted({int(v["Id"]) for v in json.loads(body).get("Volumes") or [] if "Id" in v})
        except (ValueError, TypeError, AttributeError):
            ids = []
    return ids or [1]


def _probe_master(port: int) -> list[Door]:
    collection = "llmdr-probe-" + secrets.token_hex(6)  # exists nowhere: an open server deletes nothing
    body, headers = _multipart("probe.bin", b"llmdr door probe")
    doors = [_door(port, "master HTTP", "write", "GET", f"/dir/assign?collection={collection}"),
             _door(port, "master HTTP", "write", "POST", f"/submit?collection={collection}", body, headers),
             _door(port, "master HTTP", "read", "GET", "/dir/lookup?volumeId=1"),
             _door(port, "master HTTP", "delete", "POST", f"/col/delete?collection={collection}")]
    return doors


def _probe_volume(port: int, fid: str | None) -> list[Door]:
    """A real chunk ``fid`` when the caller knows one; else a made-up needle on a real volume: the server checks the
    token before it looks the needle up, so a refusal is a 401 either way and an open server says 404. The write goes
    to a made-up needle, deleted again if the server took it."""
    vid = _volume_ids(port)[0]

    def made_up() -> str:
        return f"{vid},{secrets.randbits(48):x}{secrets.randbits(32):08x}"

    probe, wfid = fid or made_up(), made_up()
    body, headers = _multipart("probe.bin", b"llmdr door probe")
    doors = [_door(port, "volume HTTP", "read", "GET", f"/{probe}"),
             _door(port, "volume HTTP", "write", "POST", f"/{wfid}", body, headers),
             _door(port, "volume HTTP", "delete", "DELETE", f"/{probe}")]
    if doors[1].answered:
        _http(port, "DELETE", f"/{wfid}")
    return doors


def _probe_filer(port: int, bucket: str, key: str | None, fid: str | None) -> list[Door]:
    path = f"/llmdr-door-probe/{secrets.token_hex(8)}"  # outside /buckets: a write that gets through harms nothing
    doors = [_door(port, "filer HTTP", "read", "GET", f"/buckets/{bucket}/" + (key or "")),
             _door(port, "filer HTTP", "read", "GET", f"/?proxyChunkId={fid or '1,1234567801234567'}"),
             _door(port, "filer HTTP", "write", "PUT", path, b"llmdr door probe",
                   {"Content-Type": "application/octet-stream"}),
             _door(port, "filer HTTP", "delete", "DELETE", path)]
    if doors[2].answered and not doors[3].answered:
        _http(port, "DELETE", path)
    return doors


def _probe_admin(port: int) -> list[Door]:
    return [_door(port, "admin HTTP", "read", "GET", "/api/cluster/topology"),
            _door(port, "admin HTTP", "write", "POST", "/api/s3/buckets", b"{}", {"Content-Type": "application/json"})]


_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + empty SETTINGS


def _answers_h2(sock: socket.socket) -> tuple[bool, str]:
    """Send the HTTP/2 preface; True when the server answers with an HTTP/2 SETTINGS frame (gRPC is served)."""
    sock.sendall(_H2_PREFACE)
    got = b""
    try:
        while len(got) < 9:
            chunk = sock.recv(9 - len(got))
            if not chunk:
                break
            got += chunk
    except (OSError, ssl.SSLError) as exc:
        return False, f"closed: {type(exc).__name__}: {str(exc)[:80]}"
    if len(got) == 9 and got[3] == 0x04:
        return True, "answered with an HTTP/2 SETTINGS frame"
    return False, f"no HTTP/2 answer ({len(got)} bytes: {got[:9].hex() or 'closed'})"


def _probe_grpc(port: int, what: str) -> list[Door]:
    """gRPC without a client certificate, plain and over TLS: an HTTP/2 answer means every RPC of the service (reads,
    writes, deletes) is open to the caller."""
    doors = []
    for how in ("plaintext", "TLS without a client certificate"):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=3) as raw:
                if how == "plaintext":
                    answered, detail = _answers_h2(raw)
                else:
                    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                    ctx.check_hostname = False
                    ctx.verify_mode = ssl.CERT_NONE
                    ctx.set_alpn_protocols(["h2"])
                    try:
                        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                            answered, detail = _answers_h2(tls)
                    except (OSError, ssl.SSLError) as exc:
                        answered, detail = False, f"TLS refused: {type(exc).__name__}: {str(exc)[:80]}"
        except OSError as exc:
            answered, detail = False, f"{type(exc).__name__}: {exc}"
        doors.append(Door(port, what, "read/write/delete", f"gRPC over {how}", answered, detail))
    return doors


def probe_doors(base_port: int, bucket: str, *, key: str | None = None, fid: str | None = None) -> list[Door]:
    """Every unauthenticated request this module knows, against every port of the local region whose S3 port is
    ``base_port`` except S3 itself. ``key`` (an object in ``bucket``) and ``fid`` (one of its chunks on the volume
    server) make the reads real; without them the probes use names that exist nowhere, which a guarded server
    refuses just the same."""
    doors: list[Door] = []
    for offset, what, proto in PORTS:
        port = base_port + offset
        if proto == "grpc":
            doors += _probe_grpc(port, what)
        elif what.startswith("master"):
            doors += _probe_master(port)
        elif what.startswith("volume"):
            doors += _probe_volume(port, fid)
        elif what.startswith("filer"):
            doors += _probe_filer(port, bucket, key, fid)
        else:
            doors += _probe_admin(port)
    return doors

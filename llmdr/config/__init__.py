"""``llmdr.yaml``: one typed model for the bundle, the regions and the objectives.

Secrets are never in the file: a region names the environment variables (or the Prefect Secret block) its keys come
from. Loading a bad file raises ``ConfigError`` naming the file, the key (with its line) and what is wrong.
"""

from __future__ import annotations

import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from llmdr.errors import ConfigError, UsageError
from llmdr.repo.bundle import ComponentKind

DEFAULT_CONFIG = "llmdr.yaml"
_DURATION = re.compile(r"^\s*(?:(\d+)\s*d)?\s*(?:(\d+)\s*h)?\s*(?:(\d+)\s*m)?\s*(?:(\d+)\s*s)?\s*$")
_SECRET_KEYS = ("secret", "password", "token", "passwd")
_SECRET_SUFFIXES = ("_secret", "secret_key", "secret_access_key", "password", "_token", "access_key_id",
                    "aws_access_key", "private_key", "api_key")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# What a key pasted where its variable's name belongs looks like: AWS or local-stack access key ids, hex keys.
_KEY_LIKE = re.compile(r"(?:AKIA|ASIA)[A-Z0-9]{16}|LLMDR[0-9A-F]{16}|[0-9a-fA-F]{32,}")


def _env_name(field: str, value: str | None) -> str | None:
    """``value`` must name an environment variable. The message never repeats the value: a key pasted here by
    mistake must not reach a terminal, a log or a flow run's error."""
    if value is not None and (_KEY_LIKE.fullmatch(value) or not _ENV_NAME.fullmatch(value)):
        raise ValueError(f"{field} must be the name of an environment variable (letters, digits and _, e.g. "
                         "LLMDR_PRIMARY_SECRET_ACCESS_KEY), and the value given is not one; it is not shown here in "
                         "case it is the secret itself. Put the secret in that variable, never in this file.")
    return value


def parse_duration(value: Any) -> timedelta:
    """'90d', '4h', '15m', '30s', '1h30m' or a number of seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return timedelta(seconds=value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m and any(m.groups()):
            d, h, mi, s = (int(g or 0) for g in m.groups())
            return timedelta(days=d, hours=h, minutes=mi, seconds=s)
    raise ValueError(f"{value!r} is not a duration; write e.g. '5m', '15m', '4h', '90d' or '1h30m'")


def format_duration(td: timedelta) -> str:
    secs = int(td.total_seconds())
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if secs >= size:
            parts.append(f"{secs // size}{unit}")
            secs %= size
    return "".join(parts) or "0s"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Credentials(_Model):
    """Where a region's keys come from. Environment variables by default; or a Prefect Secret block holding
    ``{"access_key_id": ..., "secret_access_key": ...}``."""

    access_key_env: str | None = None
    secret_key_env: str | None = None
    session_token_env: str | None = None
    prefect_secret_block: str | None = None
    # When the keys expire (session tokens, federated or assumed-role credentials): the name of an environment
    # variable holding an ISO-8601 time, e.g. AWS_CREDENTIAL_EXPIRATION as set by `aws configure
    # export-credentials` and aws-vault. A Prefect Secret block may carry an "expiration" field instead.
    expiration_env: str | None = None
    # Assume this IAM role with the keys above (STS AssumeRole) and use the temporary credentials it returns;
    # their expiry is then known exactly.
    role_arn: str | None = None
    sts_endpoint: str | None = None  # default: AWS STS; any STS-compatible endpoint
    session_duration: timedelta = timedelta(hours=1)

    @field_validator("session_duration", mode="before")
    @classmethod
    def _dur(cls, v: Any) -> timedelta:
        return parse_duration(v)

    @field_validator("sts_endpoint")
    @classmethod
    def _sts(cls, v: str | None) -> str | None:
        return None if v is None else _http_url(v, "https://sts.eu-west-1.amazonaws.com")

    @model_validator(mode="after")
    def _one_source(self) -> "Credentials":
        env = self.access_key_env or self.secret_key_env
        if self.prefect_secret_block and env:
            raise ValueError("give either access_key_env/secret_key_env or prefect_secret_block, not both")
        if not self.prefect_secret_block and not (self.access_key_env and self.secret_key_env):
            raise ValueError("name both access_key_env and secret_key_env (environment variable names)")
        if self.role_arn is not None and not re.fullmatch(r"arn:[a-z-]+:iam::\d{12}:role/[\w+=,.@/-]+", self.role_arn):
            raise ValueError(f"role_arn {self.role_arn!r} is not an IAM role ARN like arn:aws:iam::123456789012:role/llmdr")
        if not 900 <= self.session_duration.total_seconds() <= 43200:
            raise ValueError("session_duration must be between 15m and 12h (the limits of STS AssumeRole)")
        for field in ("access_key_env", "secret_key_env", "session_token_env", "expiration_env"):
            _env_name(field, getattr(self, field))
        return self


class LocalServer(_Model):
    """How ``llmdr stack`` runs this region on this machine (SeaweedFS ``weed mini`` on loopback)."""

    enabled: bool = True
    data_dir: str | None = None  # default: <state_dir>/stack/<region>


def _http_url(v: str, example: str) -> str:
    u = urlparse(v)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ValueError(f"{v!r} is not an http(s) URL like {example}")
    return v.rstrip("/")


class Serving(_Model):
    """The region's OpenAI-compatible serving endpoint and how llmdr starts a replica behind it.

    ``command`` starts the server (placeholders ``{model_dir}``, ``{host}``, ``{port}``), e.g.
    ``vllm serve {model_dir} --host {host} --port {port}``. Without it, a local region runs ``llmdr serve`` and a
    remote region's endpoint is managed elsewhere (llmdr probes it and routes to it, but cannot start it).
    """

    url: str
    command: list[str] | str | None = None
    warm: bool = True  # keep a replica running here (`llmdr stack up` starts it); false: cold start on failover
    model: str | None = None  # model name sent in requests; default: the server's own
    health_path: str = "/health"
    start_timeout: timedelta = timedelta(minutes=5)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _http_url(v, "http://127.0.0.1:18101")

    @field_validator("start_timeout", mode="before")
    @classmethod
    def _dur(cls, v: Any) -> timedelta:
        return parse_duration(v)

    @property
    def host(self) -> str:
        return urlparse(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        u = urlparse(self.url)
        return u.port or (443 if u.scheme == "https" else 80)


class ObjectLock(_Model):
    """S3 Object Lock (write once, read many) for the copies in this region: every object llmdr writes here is
    locked for ``period``; retention never deletes a locked object and re-extends the locks of the snapshots it
    keeps. The bucket must have Object Lock enabled at creation (``llmdr stack up`` does it for local regions).
    COMPLIANCE: nobody, root included, can delete or shorten the lock. GOVERNANCE: principals with
    s3:BypassGovernanceRetention can."""

    mode: Literal["COMPLIANCE", "GOVERNANCE"] = "COMPLIANCE"
    period: timedelta = timedelta(days=30)

    @field_validator("period", mode="before")
    @classmethod
    def _dur(cls, v: Any) -> timedelta:
        td = parse_duration(v)
        if td.total_seconds() < 1:
            raise ValueError("an Object Lock period must be at least 1s")
        return td


class Encryption(_Model):
    """Client-side authenticated encryption (AES-256-GCM) of every object llmdr writes to this region: chunks,
    manifests, the repository config. The 256-bit key (64 hex characters or base64) comes from an environment
    variable or a Prefect Secret block; its key id is recorded in every object. Keep the key somewhere that survives
    the loss of both regions: without it the copy cannot be read."""

    key_env: str | None = None
    prefect_secret_block: str | None = None

    @model_validator(mode="after")
    def _one(self) -> "Encryption":
        if bool(self.key_env) == bool(self.prefect_secret_block):
            raise ValueError("give exactly one of key_env (an environment variable name) or prefect_secret_block")
        _env_name("key_env", self.key_env)
        return self


class ManifestSigning(_Model):
    """Every manifest llmdr writes is signed and every manifest it reads must carry a valid signature, so a manifest
    edited or forged in the store is refused even in an unencrypted region. HMAC-SHA256 with a key from the
    environment, or Ed25519 (the private key signs; readers need only the public key)."""

    method: Literal["hmac", "ed25519"] = "hmac"
    hmac_key_env: str = "LLMDR_MANIFEST_KEY"
    private_key: str = "keys/manifest-signing.key"  # ed25519, relative to state_dir; made on first signing
    public_key: str = "keys/manifest-signing.pub"

    @field_validator("hmac_key_env")
    @classmethod
    def _hmac_env(cls, v: str) -> str:
        return _env_name("hmac_key_env", v)  # type: ignore[return-value]


class Region(_Model):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    role: Literal["primary", "secondary"]
    endpoint: str | None = None  # None = AWS S3 in s3_region
    s3_region: str = "us-east-1"
    bucket: str
    prefix: str = ""
    credentials: Credentials
    local: LocalServer | None = None
    serving: Serving | None = None
    object_lock: ObjectLock | None = None
    encryption: Encryption | None = None
    price_per_gb_month: float | None = Field(default=None, ge=0)  # storage price, for the readiness cost estimate

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        return None if v is None else _http_url(v, "http://127.0.0.1:8333")

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, v: str) -> str:
        if not _BUCKET.fullmatch(v):
            raise ValueError(f"{v!r} is not a valid bucket name (3-63 lowercase letters, digits, '.', '-')")
        return v

    @model_validator(mode="after")
    def _local_needs_loopback(self) -> "Region":
        if self.local is not None and self.local.enabled:
            host = urlparse(self.endpoint or "").hostname
            if host not in ("127.0.0.1", "localhost", "::1"):
                raise ValueError("local: is only for loopback endpoints such as http://127.0.0.1:8333")
            if urlparse(self.endpoint or "").port is None:
                raise ValueError("a local region's endpoint needs an explicit port")
        return self

    @property
    def failure_domain(self) -> tuple[str, str]:
        """What two regions must not share: the same endpoint and bucket is the same store."""
        where = self.endpoint.lower() if self.endpoint else f"aws:{self.s3_region}"
        return (where, self.bucket)

    @property
    def is_local(self) -> bool:
        return self.local is not None and self.local.enabled

    @property
    def local_ports(self) -> list[int]:
        """Ports the local stack binds for this region: the endpoint port to +8, and +10008 (weed mini's worker
        reaches the admin gRPC port at admin HTTP port + 10000, so that one is fixed)."""
        p = self.port
        return [*range(p, p + 9), p + 8 + 10000]

    @property
    def port(self) -> int:
        port = urlparse(self.endpoint or "").port
        if port is None:
            raise UsageError(f"region {self.name} has no port in its endpoint")
        return port


class Component(_Model):
    """Files that make one component (fnmatch patterns relative to the bundle folder; ``*`` also crosses
    folders), and whether a snapshot or restore without it is refused."""

    paths: list[str] = Field(min_length=1)
    required: bool = True


class Bundle(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    path: str
    # Keys are component kinds: weights, tokenizer, model_config, generation_config, prompt_templates,
    # serving_config, security_rules, datasets, checkpoints. Empty: no completeness check.
    components: dict[ComponentKind, Component] = Field(default_factory=dict)


class Objectives(_Model):
    rpo: timedelta = timedelta(minutes=5)
    rto: timedelta = timedelta(minutes=15)
    drill_interval: timedelta = timedelta(days=90)

    @field_validator("rpo", "rto", "drill_interval", mode="before")
    @classmethod
    def _dur(cls, v: Any) -> timedelta:
        return parse_duration(v)


class Retention(_Model):
    """Applied by protect-bundle after each snapshot, in every region (``llmdr forget`` does it by hand)."""

    keep_last: int = Field(ge=1)
    keep_every: int | None = Field(default=None, ge=1)
    prune: bool = True
    grace: timedelta = timedelta(hours=6)

    @field_validator("grace", mode="before")
    @classmethod
    def _dur(cls, v: Any) -> timedelta:
        return parse_duration(v)


class Checkpoints(_Model):
    """Training checkpoints: each sub-folder of ``path`` matching ``pattern`` is one checkpoint, snapshotted once
    (checkpoints deduplicate against each other) and kept by its own retention policy."""

    path: str
    pattern: str = "checkpoint-*"
    retention: Retention | None = None


class Transfer(_Model):
    workers: int = Field(default=8, ge=1, le=256)  # parallel uploads and cross-region copies
    download_workers: int = Field(default=16, ge=1, le=256)  # parallel chunk downloads during restore
    max_inflight_mb: int = Field(default=64, ge=16, le=65536)
    fsync: bool = False


class CaddyRouter(_Model):
    """A local Caddy reverse proxy in front of the regions' serving endpoints, switched through its admin API."""

    kind: Literal["caddy"] = "caddy"
    listen: str = "http://127.0.0.1:18100"  # where clients send requests
    admin: str = "http://127.0.0.1:18119"  # Caddy's admin API (loopback only)

    @field_validator("listen", "admin")
    @classmethod
    def _loopback(cls, v: str) -> str:
        v = _http_url(v, "http://127.0.0.1:18100")
        u = urlparse(v)
        if u.hostname not in ("127.0.0.1", "localhost", "::1") or u.port is None:
            raise ValueError(f"{v!r}: the local router listens on loopback with an explicit port")
        return v

    @property
    def url(self) -> str:
        return self.listen


class Route53Router(_Model):
    """DNS failover in Route 53: one record per region (weighted: the active one gets weight 100, the others 0;
    failover: the PRIMARY record points at the active region's value)."""

    kind: Literal["route53"] = "route53"
    hosted_zone_id: str
    record_name: str  # e.g. api.example.com.
    record_type: Literal["A", "AAAA", "CNAME"] = "CNAME"
    ttl: int = Field(default=30, ge=1, le=86400)
    policy: Literal["weighted", "failover"] = "weighted"
    values: dict[str, str]  # region name -> record value (IP or host name of that region's endpoint)
    url: str  # how clients reach the record, e.g. https://api.example.com

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _http_url(v, "https://api.example.com")


class Monitor(_Model):
    """How `llmdr monitor` and the monitor-endpoints flow probe endpoints and decide degraded / down."""

    interval: timedelta = timedelta(seconds=2)  # between probe rounds
    timeout: timedelta = timedelta(seconds=2)  # per probe
    down_after: int = Field(default=3, ge=1)  # consecutive failed probes before an endpoint is down
    baseline_window: int = Field(default=120, ge=10)  # samples that define "normal"
    recent_window: int = Field(default=10, ge=3)  # samples compared against the baseline
    z_threshold: float = Field(default=4.0, gt=0)  # robust z-score that flags latency / token anomalies
    error_rate_threshold: float = Field(default=0.2, gt=0, le=1)  # recent error rate that flags degraded
    golden_every: int = Field(default=10, ge=0)  # golden spot-check every Nth round (0: never)
    keep: timedelta = timedelta(days=7)  # how long samples are kept

    @field_validator("interval", "timeout", "keep", mode="before")
    @classmethod
    def _dur(cls, v: Any) -> timedelta:
        return parse_duration(v)


class Failover(_Model):
    auto: bool = True  # the automation runs the failover deployment when the active region is down
    confirm_probes: int = Field(default=3, ge=1)  # direct probes that must all fail before switching
    confirm_interval: timedelta = timedelta(milliseconds=300)
    target: str | None = None  # region to fail over to; default: the first healthy secondary

    @field_validator("confirm_interval", mode="before")
    @classmethod
    def _dur(cls, v: Any) -> timedelta:
        return parse_duration(v)


class Notifications(_Model):
    """Where failover, failback and failed verifications are announced: a webhook (JSON POST) and/or a Prefect
    notification block (Slack, Teams, email...). Webhook URLs often embed a token: prefer ``webhook_url_env``."""

    webhook_url: str | None = None
    webhook_url_env: str | None = None
    prefect_block: str | None = None  # "<block-type-slug>/<name>", e.g. "slack-webhook/ops"
    timeout: timedelta = timedelta(seconds=5)

    @field_validator("webhook_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        try:
            return None if v is None else _http_url(v, "https://hooks.example.com/llmdr")
        except ValueError:  # without the value: webhook URLs carry their token
            raise ValueError("is not an http(s) URL like https://hooks.example.com/llmdr (not shown: a webhook URL "
                             "carries a token; better, name an environment variable with webhook_url_env)") from None

    @field_validator("webhook_url_env")
    @classmethod
    def _url_env(cls, v: str | None) -> str | None:
        return _env_name("webhook_url_env", v)

    @field_validator("timeout", mode="before")
    @classmethod
    def _dur(cls, v: Any) -> timedelta:
        return parse_duration(v)


class Signing(_Model):
    """How drill reports are signed. Ed25519 (default): a key pair under the state folder is made on first use;
    auditors verify with the public key alone. HMAC-SHA256: the key comes from an environment variable."""

    method: Literal["ed25519", "hmac"] = "ed25519"
    private_key: str = "keys/report-signing.key"  # ed25519, relative to state_dir; created 0600 if missing
    public_key: str = "keys/report-signing.pub"  # ed25519, relative to state_dir
    hmac_key_env: str = "LLMDR_REPORT_HMAC_KEY"

    @field_validator("hmac_key_env")
    @classmethod
    def _hmac_env(cls, v: str) -> str:
        return _env_name("hmac_key_env", v)  # type: ignore[return-value]


class Drill(_Model):
    """The DR drill: how the outage is simulated, how long to wait for the automation, where reports go."""

    outage: Literal["local", "command"] = "local"  # local: stop the primary's local S3 server and replica
    outage_command: list[str] | None = None  # "command": run this to cut the region off (never delete data)
    restore_command: list[str] | None = None  # "command": run this to bring it back
    reports_dir: str = "reports"  # relative to this file
    signing: Signing = Signing()

    @model_validator(mode="after")
    def _commands(self) -> "Drill":
        if self.outage == "command" and not (self.outage_command and self.restore_command):
            raise ValueError("outage: command needs outage_command and restore_command (argv lists)")
        return self


class Dataset(_Model):
    """A training or evaluation dataset tracked by DVC in a git+DVC repository (the nearest parent folder holding
    ``.dvc/``). llmdr pushes each version to one DVC remote per region and validates it with Great Expectations."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    path: str  # the data file, relative to llmdr.yaml (its .dvc file sits next to it)
    block_on_failure: bool = True  # a dataset failing its expectation suite stops the snapshot
    suite: str | None = None  # expectation suite JSON (default: expectations/<name>.json next to llmdr.yaml)


class Readiness(_Model):
    """Thresholds of `llmdr readiness` (and the readiness-check flow)."""

    credential_warning: timedelta = timedelta(days=7)  # WARN when a region's credentials expire sooner than this
    probe_mb: int = Field(default=64, ge=1, le=4096)  # bytes read from the DR region to measure its throughput
    start_estimate: timedelta = timedelta(seconds=60)  # starting a replica once the bundle is on disk

    @field_validator("credential_warning", "start_estimate", mode="before")
    @classmethod
    def _dur(cls, v: Any) -> timedelta:
        return parse_duration(v)


class Contact(_Model):
    name: str
    role: str = ""  # e.g. "incident commander", "ML platform on-call"
    reach: str = ""  # how to reach them: pager, phone, Slack handle (no secrets)


class Runbook(_Model):
    """What `llmdr runbook` adds to what it derives from the rest of the config."""

    path: str = "RUNBOOK.md"  # relative to this file
    contacts: list[Contact] = Field(default_factory=list)
    emergency_access: list[str] = Field(default_factory=list)  # break-glass steps, in order (names, never secrets)


class Tracking(_Model):
    """MLflow: model registry and runs. Default store: sqlite under state_dir."""

    uri: str | None = None  # any MLflow tracking URI; default sqlite:///<state_dir>/mlflow/mlflow.db
    model_name: str | None = None  # registered model name (default: the bundle name)
    register_models: bool = True  # every protected snapshot registers / updates a model version


class Config(_Model):
    version: Literal[1] = 1
    bundle: Bundle
    regions: list[Region] = Field(min_length=2)
    objectives: Objectives = Objectives()
    transfer: Transfer = Transfer()
    retention: Retention | None = None
    checkpoints: Checkpoints | None = None
    router: CaddyRouter | Route53Router | None = Field(default=None, discriminator="kind")
    monitor: Monitor = Monitor()
    failover: Failover = Failover()
    notifications: Notifications | None = None
    drill: Drill = Drill()
    datasets: list[Dataset] = Field(default_factory=list)
    tracking: Tracking = Tracking()
    readiness: Readiness = Readiness()
    runbook: Runbook = Runbook()
    manifest_signing: ManifestSigning | None = None
    golden: str = "golden.jsonl"  # the golden set (relative to this file) used by monitor, failover and restore tests
    state_dir: str = ".llmdr"

    # set by load_config, not read from the file
    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)
    _source_file: Path | None = PrivateAttr(default=None)

    @property
    def base_dir(self) -> Path:
        return self._base_dir

    @property
    def source_file(self) -> Path | None:
        return self._source_file

    @model_validator(mode="after")
    def _regions_separate(self) -> "Config":
        names = [r.name for r in self.regions]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"region names must be unique; {sorted(dup)} appears more than once")
        primaries = [r for r in self.regions if r.role == "primary"]
        if len(primaries) != 1:
            raise ValueError(f"exactly one region must have role: primary (found {len(primaries)})")
        primary = primaries[0]
        for r in self.regions:
            if r is primary:
                continue
            if r.failure_domain == primary.failure_domain:
                raise ValueError(
                    f"region '{r.name}' uses the same endpoint and bucket as the primary '{primary.name}' "
                    f"({r.endpoint or 'AWS ' + r.s3_region}, {r.bucket}): a copy there would not survive the "
                    "primary's loss. Point it at a separate server or region."
                )
            if r.endpoint is None and primary.endpoint is None and r.s3_region == primary.s3_region:
                raise ValueError(
                    f"region '{r.name}' is in the same AWS region ({r.s3_region}) as the primary: pick another "
                    "s3_region for disaster recovery"
                )
        names_set = set(names)
        ds_names = [d.name for d in self.datasets]
        if len(ds_names) != len(set(ds_names)):
            raise ValueError("dataset names must be unique")
        if self.failover.target is not None and self.failover.target not in names_set:
            raise ValueError(f"failover.target {self.failover.target!r} is not a region name ({', '.join(names)})")
        if self.failover.target == primary.name:
            raise ValueError("failover.target must be a secondary region, not the primary")
        if isinstance(self.router, Route53Router):
            unknown = set(self.router.values) - names_set
            if unknown:
                raise ValueError(f"router.values names unknown regions {sorted(unknown)}; known: {', '.join(names)}")
        serving = [r.serving.url.lower() for r in self.regions if r.serving]
        if len(serving) != len(set(serving)):
            raise ValueError("two regions share a serving url: a replica in the same place does not survive the loss "
                             "of that place")
        used: dict[int, str] = {}
        for r in self.regions:
            if not r.is_local:
                continue
            for p in r.local_ports:
                if p in used:
                    raise ValueError(f"local regions '{used[p]}' and '{r.name}' both need port {p}; a local region "
                                     "uses its endpoint port to +8 and +10008: move one endpoint port")
                used[p] = r.name
        loopback = ("127.0.0.1", "localhost", "::1")
        more = [(f"region '{r.name}' serving", r.serving.port) for r in self.regions
                if r.serving and r.serving.host in loopback]
        if isinstance(self.router, CaddyRouter):
            more += [("the router", urlparse(self.router.listen).port), ("the router admin API",
                                                                          urlparse(self.router.admin).port)]
        for what, port in more:
            if port in used:
                raise ValueError(f"{what} wants port {port}, already used by {used[port]}; pick another port")
            used[port] = what
        return self

    @property
    def primary(self) -> Region:
        return next(r for r in self.regions if r.role == "primary")

    @property
    def secondaries(self) -> list[Region]:
        return [r for r in self.regions if r.role == "secondary"]

    def region(self, name: str | None) -> Region:
        if name is None:
            return self.primary
        for r in self.regions:
            if r.name == name:
                return r
        raise UsageError(f"no region named {name!r} in {self.source_file or DEFAULT_CONFIG}; "
                         f"known regions: {', '.join(r.name for r in self.regions)}")

    @property
    def state_path(self) -> Path:
        p = Path(self.state_dir)
        return p if p.is_absolute() else self.base_dir / p

    @property
    def reports_path(self) -> Path:
        p = Path(self.drill.reports_dir)
        return p if p.is_absolute() else self.base_dir / p

    def dataset_path(self, ds: "Dataset") -> Path:
        p = Path(ds.path)
        return p if p.is_absolute() else self.base_dir / p

    def suite_path(self, ds: "Dataset") -> Path:
        p = Path(ds.suite or f"expectations/{ds.name}.json")
        return p if p.is_absolute() else self.base_dir / p

    @property
    def runbook_path(self) -> Path:
        p = Path(self.runbook.path)
        return p if p.is_absolute() else self.base_dir / p

    @property
    def model_name(self) -> str:
        return self.tracking.model_name or self.bundle.name

    @property
    def golden_path(self) -> Path:
        p = Path(self.golden)
        return p if p.is_absolute() else self.base_dir / p

    def failover_target(self) -> Region:
        return self.region(self.failover.target) if self.failover.target else self.secondaries[0]

    @property
    def bundle_path(self) -> Path:
        p = Path(self.bundle.path)
        return p if p.is_absolute() else self.base_dir / p


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read and validate ``llmdr.yaml`` (or ``$LLMDR_CONFIG``)."""
    p = Path(path or os.environ.get("LLMDR_CONFIG") or DEFAULT_CONFIG)
    if not p.exists():
        raise ConfigError(f"{p}: no such file. Create one with `llmdr init BUNDLE_DIR`, or pass --config PATH.")
    text = p.read_text(encoding="utf-8")
    return parse_config(text, source=p)


def parse_config(text: str, *, source: Path) -> Config:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        context, cmark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and cmark is not None and (mark is None or cmark.line != mark.line):
            problem += f", {context} started at line {cmark.line + 1}"  # where the unclosed bracket or quote is
        raise ConfigError(f"{source}{where}: not valid YAML ({problem}). Fix it there or on the line it names (often "
                          "an unclosed bracket or quote, or a wrong indent), then run the command again.") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping with bundle:, regions: and objectives:, got {type(raw).__name__}")
    _refuse_literal_secrets(raw, node, source)
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = err["loc"]
            dotted = _dotted(loc)
            line = _line_of(node, loc)
            at = f" (line {line})" if line else ""
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key; check its spelling against `llmdr init`'s commented example"
            lines.append(f"  {dotted or '(top level)'}{at}: {msg}")
        raise ConfigError(f"{source}: invalid configuration\n" + "\n".join(lines)) from None
    cfg._base_dir = source.resolve().parent
    cfg._source_file = source
    return cfg


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    best = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = None
            for k, v in node.value:
                if k.value == part:
                    nxt = v
                    best = k.start_mark.line + 1
                    break
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            best = node.start_mark.line + 1
        else:
            break
        if node is None:
            break
    return best


_KEY_FILE_SETTINGS = {("drill", "signing", "private_key"), ("manifest_signing", "private_key")}


def _refuse_literal_secrets(raw: Any, node: yaml.Node, source: Path, path: tuple = ()) -> None:
    if isinstance(raw, dict):
        for k, v in raw.items():
            key = str(k).lower()
            key_path = tuple(str(x) for x in path) + (key,)
            if key_path in _KEY_FILE_SETTINGS and isinstance(v, str) and "-----BEGIN" not in v and "\n" not in v:
                continue  # the PATH of a key file (e.g. drill.signing.private_key), not a key
            if not key.endswith(("_env", "_block")) and (key in _SECRET_KEYS or key.endswith(_SECRET_SUFFIXES)):
                dotted = _dotted(path + (k,))
                line = _line_of(node, path + (k,))
                raise ConfigError(
                    f"{source} (line {line}): {dotted}: literal secrets are not allowed in the config file. Put the "
                    "value in an environment variable and name it, e.g. credentials: {access_key_env: "
                    "LLMDR_PRIMARY_ACCESS_KEY_ID, secret_key_env: LLMDR_PRIMARY_SECRET_ACCESS_KEY}."
                )
            _refuse_literal_secrets(v, node, source, path + (k,))
    elif isinstance(raw, list):
        for i, v in enumerate(raw):
            _refuse_literal_secrets(v, node, source, path + (i,))

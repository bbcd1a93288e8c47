"""The other sections of ``llmdr.yaml``: the bundle and its components, objectives, retention, checkpoints,
transfer settings, the router (Caddy or Route 53), monitoring, failover, notifications, drill signing, datasets,
readiness, the runbook's contacts and the MLflow tracking store."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import Field, field_validator, model_validator

from llmdr.config.values import ComponentKind, StrictModel, env_name, http_url, parse_duration


class Component(StrictModel):
    """Files that make one component (fnmatch patterns relative to the bundle folder; ``*`` also crosses
    folders), and whether a snapshot or restore without it is refused."""

    paths: list[str] = Field(min_length=1)
    required: bool = True


class Bundle(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    path: str
    # Keys are component kinds: weights, tokenizer, model_config, generation_config, prompt_templates,
    # serving_config, security_rules, datasets, checkpoints. Empty: no completeness check.
    components: dict[ComponentKind, Component] = Field(default_factory=dict)


class Objectives(StrictModel):
    rpo: timedelta = timedelta(minutes=5)
    rto: timedelta = timedelta(minutes=15)
    drill_interval: timedelta = timedelta(days=90)

    @field_validator("rpo", "rto", "drill_interval", mode="before")
    @classmethod
    def _dur(cls, v: Any) -> timedelta:
        return parse_duration(v)


class Retention(StrictModel):
    """Applied by protect-bundle after each snapshot, in every region (``llmdr forget`` does it by hand)."""

    keep_last: int = Field(ge=1)
    keep_every: int | None = Field(default=None, ge=1)
    prune: bool = True
    grace: timedelta = timedelta(hours=6)

    @field_validator("grace", mode="before")
    @classmethod
    def _dur(cls, v: Any) -> timedelta:
        return parse_duration(v)


class Checkpoints(StrictModel):
    """Training checkpoints: each sub-folder of ``path`` matching ``pattern`` is one checkpoint, snapshotted once
    (checkpoints deduplicate against each other) and kept by its own retention policy."""

    path: str
    pattern: str = "checkpoint-*"
    retention: Retention | None = None


class Transfer(StrictModel):
    workers: int = Field(default=8, ge=1, le=256)  # parallel uploads and cross-region copies
    download_workers: int = Field(default=16, ge=1, le=256)  # parallel chunk downloads during restore
    max_inflight_mb: int = Field(default=64, ge=16, le=65536)
    fsync: bool = False


class CaddyRouter(StrictModel):
    """A local Caddy reverse proxy in front of the regions' serving endpoints, switched through its admin API."""

    kind: Literal["caddy"] = "caddy"
    listen: str = "http://127.0.0.1:18100"  # where clients send requests
    admin: str = "http://127.0.0.1:18119"  # Caddy's admin API (loopback only)

    @field_validator("listen", "admin")
    @classmethod
    def _loopback(cls, v: str) -> str:
        v = http_url(v, "http://127.0.0.1:18100")
        u = urlparse(v)
        if u.hostname not in ("127.0.0.1", "localhost", "::1") or u.port is None:
            raise ValueError(f"{v!r}: the local router listens on loopback with an explicit port")
        return v

    @property
    def url(self) -> str:
        return self.listen


class Route53Router(StrictModel):
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
        return http_url(v, "https://api.example.com")


class Monitor(StrictModel):
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


class Failover(StrictModel):
    auto: bool = True  # the automation runs the failover deployment when the active region is down
    confirm_probes: int = Field(default=3, ge=1)  # direct probes that must all fail before switching
    confirm_interval: timedelta = timedelta(milliseconds=300)
    target: str | None = None  # region to fail over to; default: the first healthy secondary

    @field_validator("confirm_interval", mode="before")
    @classmethod
    def _dur(cls, v: Any) -> timedelta:
        return parse_duration(v)


class Notifications(StrictModel):
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
            return None if v is None else http_url(v, "https://hooks.example.com/llmdr")
        except ValueError:  # without the value: webhook URLs carry their token
            raise ValueError("is not an http(s) URL like https://hooks.example.com/llmdr (not shown: a webhook URL "
                             "carries a token; better, name an environment variable with webhook_url_env)") from None

    @field_validator("webhook_url_env")
    @classmethod
    def _url_env(cls, v: str | None) -> str | None:
        return env_name("webhook_url_env", v)

    @field_validator("timeout", mode="before")
    @classmethod
    def _dur(cls, v: Any) -> timedelta:
        return parse_duration(v)


class Signing(StrictModel):
    """How drill reports are signed. Ed25519 (default): a key pair under the state folder is made on first use;
    auditors verify with the public key alone. HMAC-SHA256: the key comes from an environment variable."""

    method: Literal["ed25519", "hmac"] = "ed25519"
    private_key: str = "keys/report-signing.key"  # ed25519, relative to state_dir; created 0600 if missing
    public_key: str = "keys/report-signing.pub"  # ed25519, relative to state_dir
    hmac_key_env: str = "LLMDR_REPORT_HMAC_KEY"

    @field_validator("hmac_key_env")
    @classmethod
    def _hmac_env(cls, v: str) -> str:
        return env_name("hmac_key_env", v)  # type: ignore[return-value]


class Drill(StrictModel):
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


class Dataset(StrictModel):
    """A training or evaluation dataset tracked by DVC in a git+DVC repository (the nearest parent folder holding
    ``.dvc/``). llmdr pushes each version to one DVC remote per region and validates it with Great Expectations."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    path: str  # the data file, relative to llmdr.yaml (its .dvc file sits next to it)
    block_on_failure: bool = True  # a dataset failing its expectation suite stops the snapshot
    suite: str | None = None  # expectation suite JSON (default: expectations/<name>.json next to llmdr.yaml)


class Readiness(StrictModel):
    """Thresholds of `llmdr readiness` (and the readiness-check flow)."""

    credential_warning: timedelta = timedelta(days=7)  # WARN when a region's credentials expire sooner than this
    probe_mb: int = Field(default=64, ge=1, le=4096)  # bytes read from the DR region to measure its throughput
    start_estimate: timedelta = timedelta(seconds=60)  # starting a replica once the bundle is on disk

    @field_validator("credential_warning", "start_estimate", mode="before")
    @classmethod
    def _dur(cls, v: Any) -> timedelta:
        return parse_duration(v)


class Contact(StrictModel):
    name: str
    role: str = ""  # e.g. "incident commander", "ML platform on-call"
    reach: str = ""  # how to reach them: pager, phone, Slack handle (no secrets)


class Runbook(StrictModel):
    """What `llmdr runbook` adds to what it derives from the rest of the config."""

    path: str = "RUNBOOK.md"  # relative to this file
    contacts: list[Contact] = Field(default_factory=list)
    emergency_access: list[str] = Field(default_factory=list)  # break-glass steps, in order (names, never secrets)


class Tracking(StrictModel):
    """MLflow: model registry and runs. Default store: sqlite under state_dir."""

    uri: str | None = None  # any MLflow tracking URI; default sqlite:///<state_dir>/mlflow/mlflow.db
    model_name: str | None = None  # registered model name (default: the bundle name)
    register_models: bool = True  # every protected snapshot registers / updates a model version



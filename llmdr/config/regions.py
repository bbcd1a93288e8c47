"""The ``regions:`` section: where each region's store is (endpoint, bucket, prefix), where its keys come from
(environment variables, a Prefect Secret block, an assumed role), its serving endpoint, Object Lock, client-side
encryption and manifest signing."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import Field, field_validator, model_validator

from llmdr.config.values import BUCKET_NAME, StrictModel, env_name, http_url, parse_duration
from llmdr.errors import UsageError


class Credentials(StrictModel):
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
        return None if v is None else http_url(v, "https://sts.eu-west-1.amazonaws.com")

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
            env_name(field, getattr(self, field))
        return self


class LocalServer(StrictModel):
    """How ``llmdr stack`` runs this region on this machine (SeaweedFS ``weed mini`` on loopback)."""

    enabled: bool = True
    data_dir: str | None = None  # default: <state_dir>/stack/<region>


class Serving(StrictModel):
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
        return http_url(v, "http://127.0.0.1:18101")

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


class ObjectLock(StrictModel):
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


class Encryption(StrictModel):
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
        env_name("key_env", self.key_env)
        return self


class ManifestSigning(StrictModel):
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
        return env_name("hmac_key_env", v)  # type: ignore[return-value]


class Region(StrictModel):
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
        return None if v is None else http_url(v, "http://127.0.0.1:8333")

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, v: str) -> str:
        if not BUCKET_NAME.fullmatch(v):
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



"""The ``regions:`` section: where each region's store is (endpoint, bucket, prefix), where its keys come from
(environment variables, a Prefect Secret block, an assumed role), its serving endpoint, Object Lock, client-side
encryption and manifest signing."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import Field, field_validator, model_validator

from llmdr.config.hardware import Hardware
from llmdr.config.residency import check_name
from llmdr.config.values import BUCKET_NAME, StrictModel, env_name, http_url, parse_duration
from llmdr.errors import UsageError


class Credentials(StrictModel):
    """Where a region's keys come from: environment variables named here, or a Prefect Secret block holding
    ``{"access_key_id": ..., "secret_access_key": ...}``; with neither (or no ``credentials:`` at all), AWS's default
    credential chain as botocore runs it: environment AWS_ACCESS_KEY_ID/..., web identity (IRSA), SSO, AWS_PROFILE or
    ``profile`` with the shared config and credentials files, container and instance roles. A region that names
    variables or a block never falls back to the chain."""

    # Name of the environment variable holding the access key id, e.g. LLMDR_PRIMARY_ACCESS_KEY_ID; read from the
    # environment, else from <state_dir>/local.env (where `llmdr stack up` writes local regions' keys). Given with
    # secret_key_env; null (and no prefect_secret_block): AWS's default credential chain.
    access_key_env: str | None = None
    # Name of the environment variable holding the secret access key (looked up like access_key_env).
    secret_key_env: str | None = None
    # Name of the environment variable holding a session token, for temporary keys (e.g. AWS_SESSION_TOKEN); null:
    # no token is sent.
    session_token_env: str | None = None
    # Name of a Prefect Secret block holding {"access_key_id": ..., "secret_access_key": ...} and optionally
    # "session_token" and "expiration"; instead of access_key_env/secret_key_env, never with them.
    prefect_secret_block: str | None = None
    # When the keys expire (session tokens, federated or assumed-role credentials): the name of an environment
    # variable holding an ISO-8601 time, e.g. AWS_CREDENTIAL_EXPIRATION as set by `aws configure
    # export-credentials` and aws-vault. A Prefect Secret block may carry an "expiration" field instead.
    expiration_env: str | None = None
    # A named profile of the shared AWS config/credentials files for this region's keys (and its endpoint_url, if
    # it sets one), instead of AWS_PROFILE; only with the default chain (no key variables, no block). Lets two
    # regions use two accounts without mixing their keys.
    profile: str | None = None
    # Assume this IAM role with the keys above, or with the default chain's (STS AssumeRole), and use the temporary
    # credentials it returns; their expiry is then known exactly.
    role_arn: str | None = None
    # The STS endpoint that role_arn is assumed through (an http(s) URL, any STS-compatible service); null: AWS STS
    # in s3_region.
    sts_endpoint: str | None = None
    # How long the assumed role's keys last (AssumeRole's DurationSeconds), 15m to 12h and at most the role's maximum
    # session duration; llmdr assumes the role again 5 minutes before they expire. Used only with role_arn.
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
        if env and not (self.access_key_env and self.secret_key_env):
            raise ValueError("name both access_key_env and secret_key_env (environment variable names), or neither "
                             "to use the AWS default credential chain (AWS_PROFILE, SSO, web identity, roles)")
        if self.profile is not None:
            if env or self.prefect_secret_block:
                raise ValueError("profile is for the AWS default credential chain: give it without access_key_env/"
                                 "secret_key_env and prefect_secret_block")
            if not re.fullmatch(r"[\w+=,.@:/-]{1,128}", self.profile):
                raise ValueError(f"profile {self.profile!r} is not an AWS profile name (letters, digits, _+=,.@:/-)")
        if self.default_chain and (self.session_token_env or self.expiration_env):
            raise ValueError("session_token_env and expiration_env go with access_key_env/secret_key_env; the AWS "
                             "default chain finds the session token and expiry itself")
        if self.role_arn is not None and not re.fullmatch(r"arn:[a-z-]+:iam::\d{12}:role/[\w+=,.@/-]+", self.role_arn):
            raise ValueError(f"role_arn {self.role_arn!r} is not an IAM role ARN like arn:aws:iam::123456789012:role/llmdr")
        if not 900 <= self.session_duration.total_seconds() <= 43200:
            raise ValueError("session_duration must be between 15m and 12h (the limits of STS AssumeRole)")
        for field in ("access_key_env", "secret_key_env", "session_token_env", "expiration_env"):
            env_name(field, getattr(self, field))
        return self

    @property
    def default_chain(self) -> bool:
        """No key variables and no block: the keys come from AWS's default credential chain."""
        return not (self.prefect_secret_block or self.access_key_env or self.secret_key_env)


class LocalServer(StrictModel):
    """How ``llmdr stack`` runs this region on this machine (SeaweedFS ``weed mini`` on loopback)."""

    # true: `llmdr stack up` runs this region's SeaweedFS server here (its endpoint must be a loopback URL with a port);
    # false: the region is treated as remote and llmdr never starts or stops it.
    enabled: bool = True
    # Folder of the local server: its data (in data/), log and PID file; relative to this file. Default:
    # <state_dir>/stack/<region>.
    data_dir: str | None = None


class Serving(StrictModel):
    """The region's OpenAI-compatible serving endpoint and how llmdr starts a replica behind it.

    ``command`` starts the server (placeholders ``{model_dir}``, ``{host}``, ``{port}``), e.g.
    ``vllm serve {model_dir} --host {host} --port {port}``. Without it, a local region runs ``llmdr serve`` and a
    remote region's endpoint is managed elsewhere (llmdr probes it and routes to it, but cannot start it).
    """

    # Base URL of the endpoint, e.g. http://127.0.0.1:18101 (no path with the caddy router): the monitor probes it,
    # the router sends traffic to it, and a replica llmdr starts listens on its host and port.
    url: str
    # The command that starts a replica: an argv list or one shell-quoted string, with {model_dir}, {host} and {port}
    # filled in. Null: `llmdr serve` for a local region; a remote region's server is then started elsewhere.
    command: list[str] | str | None = None
    warm: bool = True  # keep a replica running here (`llmdr stack up` starts it); false: cold start on failover
    # The "model" field of probe and golden-check requests; null: the field is left out and the server picks.
    model: str | None = None
    # Path under url that answers 2xx when the server is up, polled while a replica starts and for its status.
    health_path: str = "/health"
    # How long a starting replica has to answer on health_path before llmdr stops it and reports the failure.
    start_timeout: timedelta = timedelta(minutes=5)
    # Names of environment variables a replica llmdr starts gets from llmdr's environment besides the allow-list
    # (PATH, HOME, locale, PYTHON*, CUDA_*, HF_* caches, VLLM_*...: llmdr.common.process.CHILD_ENV_NAMES), e.g.
    # [HF_TOKEN, VLLM_API_KEY]. Every other variable, the regions' keys and llmdr's encryption and manifest keys included, is
    # withheld from the replica.
    pass_env: list[str] = []

    @field_validator("pass_env")
    @classmethod
    def _pass_env(cls, v: list[str]) -> list[str]:
        for name in v:
            env_name("serving.pass_env", name)
        return v

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

    mode: Literal["COMPLIANCE", "GOVERNANCE"] = "COMPLIANCE"  # the lock mode set on every object written here
    # How long each object stays locked from when it is written, e.g. 30d (at least 1s). Retention extends the
    # locks of the snapshots it keeps whenever less than half of this is left.
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

    # Name of the environment variable holding the key, e.g. LLMDR_SECONDARY_ENCRYPTION_KEY; read from the
    # environment, else from <state_dir>/local.env (`llmdr stack up` generates it there for a local region).
    key_env: str | None = None
    # Name of a Prefect Secret block holding the key (a string, or {"key": ...}); instead of key_env.
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

    # hmac: one shared key signs and verifies; ed25519: the private key signs, the public key alone verifies (a host
    # with only the public key can read snapshots but not write them).
    method: Literal["hmac", "ed25519"] = "hmac"
    # hmac: name of the environment variable holding the key (at least 32 bytes), else read from
    # <state_dir>/local.env, where `llmdr stack up` generates it when there are local regions.
    hmac_key_env: str = "LLMDR_MANIFEST_KEY"
    private_key: str = "keys/manifest-signing.key"  # ed25519, relative to state_dir; made on first signing
    # ed25519: the PEM public key, relative to state_dir; written next to a private key llmdr makes.
    public_key: str = "keys/manifest-signing.pub"
    # Key rotation: PEM public keys (paths, relative to state_dir) of earlier Ed25519 signing keys. Objects they
    # signed still verify; new objects are signed with the current key. `llmdr sign-manifests` re-signs the old
    # ones, after which the old key can be removed from this list. Whoever edits this file is trusted: a key listed
    # here is accepted like the current one.
    previous_public_keys: list[str] = Field(default_factory=list)
    # Key rotation for HMAC: names of environment variables holding earlier HMAC keys (looked up like hmac_key_env),
    # accepted for reading like previous_public_keys. An HMAC key also signs: remove it once the region is re-signed.
    previous_hmac_key_envs: list[str] = Field(default_factory=list)

    @field_validator("hmac_key_env")
    @classmethod
    def _hmac_env(cls, v: str) -> str:
        return env_name("hmac_key_env", v)  # type: ignore[return-value]

    @field_validator("previous_hmac_key_envs")
    @classmethod
    def _previous_envs(cls, v: list[str]) -> list[str]:
        return [env_name("previous_hmac_key_envs", x) for x in v]  # type: ignore[misc]


class Region(StrictModel):
    # The region's name, unique: what --region, failover.target and router.values use, e.g. primary, eu-west
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    # Exactly one primary: snapshots are taken there, it serves traffic normally and failback returns to it. Every
    # secondary is a disaster-recovery copy that protect-bundle copies each snapshot to, and a failover target.
    role: Literal["primary", "secondary"]
    # URL of an S3-compatible server (SeaweedFS, MinIO...), e.g. http://127.0.0.1:8333; it wins over everything else.
    # null: what botocore resolves: AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL or the profile's endpoint_url if set (llmdr
    # names it in messages, and `llmdr readiness` fails two regions it sends to one endpoint), else AWS S3 in s3_region.
    endpoint: str | None = None
    s3_region: str = "us-east-1"  # the region requests are signed for: the AWS region without an endpoint
    # The bucket holding this region's copy (3-63 lowercase letters, digits, '.', '-'); `llmdr stack up` creates it
    # for a local region.
    bucket: str
    # Key prefix inside the bucket under which llmdr writes, e.g. llmdr/my-model; "": the bucket's top level.
    prefix: str = ""
    # Where the keys for this region's store come from (names, never the keys); left out: AWS's default credential
    # chain (AWS_PROFILE, SSO, web identity, container and instance roles).
    credentials: Credentials = Field(default_factory=Credentials)
    # S3 addressing: auto = path-style (http://host/bucket/key) for a custom endpoint (SeaweedFS, MinIO, one set by
    # AWS_ENDPOINT_URL_S3), virtual-hosted (https://bucket.s3.<region>.amazonaws.com/key) for AWS S3; path or virtual
    # forces one.
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    # Given (`local: {}` is enough): `llmdr stack` runs this region on this machine; null: a remote store.
    local: LocalServer | None = None
    # The region's model server; null: no endpoint here, so it is neither monitored nor a failover target.
    serving: Serving | None = None
    object_lock: ObjectLock | None = None  # lock every object written here (WORM); null: objects are not locked
    # Client-side encryption of every object written here; null: stored unencrypted (manifest_signing still applies).
    encryption: Encryption | None = None
    # Storage price per GB (10^9 bytes) and month, in any currency, for the cost estimate in `llmdr readiness`;
    # null: no estimate
    price_per_gb_month: float | None = Field(default=None, ge=0)
    # GPU health for the hardware early warning (nvidia-smi, dcgm-exporter or a command); null: none read.
    hardware: Hardware | None = None
    # The jurisdiction whose law governs the data in this region's store, e.g. EU, US, CN (free text compared
    # ignoring case, no hierarchy: EU does not include DE; recommended codes in docs/guide/residency.md). A bundle or
    # dataset with a residency policy refuses a region without one (unknown is not compliant). null: not declared.
    jurisdiction: str | None = None
    # Where the store is, for people and reports, e.g. eu-west or Frankfurt; never checked against a policy.
    geography: str | None = None

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

    @field_validator("jurisdiction", "geography")
    @classmethod
    def _place(cls, v: str | None, info: Any) -> str | None:
        return check_name(info.field_name, v)

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



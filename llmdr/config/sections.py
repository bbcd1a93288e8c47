"""The other sections of ``llmdr.yaml``: the bundle and its components, objectives, retention, checkpoints,
transfer settings, the router (Caddy or Route 53), monitoring, the metrics exporter, the golden gate, failover, notifications, drill signing, datasets,
readiness, the runbook's contacts, the MLflow tracking store and the control plane's database."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import Field, field_validator, model_validator

from llmdr.config.residency import check_policy
from llmdr.config.values import ComponentKind, StrictModel, env_name, http_url, parse_duration


class Component(StrictModel):
    """Files that make one component (fnmatch patterns relative to the bundle folder; ``*`` also crosses
    folders), and whether a snapshot or restore without it is refused."""

    # Patterns of the component's files, e.g. ["*.safetensors", "model.safetensors.index.json"]; every pattern must
    # match at least one file
    paths: list[str] = Field(min_length=1)
    # true: the snapshot is refused when this component is missing, empty or does not parse, and a restore or a
    # readiness check of a copy without it fails; false: such a problem is only logged as a warning.
    required: bool = True


class Bundle(StrictModel):
    # The bundle's name, e.g. support-bot: recorded in every snapshot and used to find its snapshots in each region;
    # also the MLflow model name unless tracking.model_name is set
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    # The folder that is snapshotted (relative to this file), e.g. models/support-bot
    path: str
    # Keys are component kinds: weights, tokenizer, model_config, generation_config, prompt_templates,
    # serving_config, security_rules, datasets, checkpoints. Empty: no completeness check.
    components: dict[ComponentKind, Component] = Field(default_factory=dict)
    # The jurisdictions the bundle's data may be stored in (snapshots, checkpoints, the MLflow artifacts of its drills
    # and training runs), e.g. [EU]: compared with each region's jurisdiction; a config with a region outside it is
    # refused, and so is every write there. null: no policy.
    residency: list[str] | None = None

    @field_validator("residency")
    @classmethod
    def _residency(cls, v: list[str] | None) -> list[str] | None:
        return check_policy("residency", v)


class TrainingObjectives(StrictModel):
    """Recovery objectives of training (the checkpoints), separate from serving's: a lost checkpoint costs GPU
    hours, not answers, so they are usually hours where serving's are minutes."""

    # Training RPO: the newest complete checkpoint snapshot in each DR region may be at most this old unless it is
    # the newest checkpoint folder on the host (readiness FAILs beyond it and WARNs beyond 75 % of it).
    rpo: timedelta = timedelta(hours=24)
    # Training RTO: restoring the newest checkpoint from a DR region (download and byte-for-byte check) may take at
    # most this long (readiness FAILs when the measured throughput says it would not; the drill's training-restore
    # control fails beyond it).
    rto: timedelta = timedelta(hours=24)

    @field_validator("rpo", "rto", mode="before")
    @classmethod
    def _dur(cls, v: Any) -> timedelta:
        td = parse_duration(v)
        if td <= timedelta(0):
            raise ValueError("a training objective must be longer than 0s, e.g. 24h")
        return td


class Objectives(StrictModel):
    # Recovery point objective: the newest complete snapshot in each DR region may be at most this old (readiness
    # FAILs beyond it and WARNs beyond 75 % of it); a drill fails when the DR copy was older at the outage.
    rpo: timedelta = timedelta(minutes=5)
    # Recovery time objective: from the start of an outage to the first golden-correct answer through the router.
    # A drill waits this long for the automatic failover and fails beyond it; readiness FAILs when a cold restore
    # would take longer or a region's keys expire sooner.
    rto: timedelta = timedelta(minutes=15)
    # A passing DR drill is due at least this often: readiness FAILs when the last one is older, and WARNs when the
    # next is due within 15 % of it (at most 14 days).
    drill_interval: timedelta = timedelta(days=90)
    # Training objectives (checkpoints), e.g. {rpo: 24h, rto: 24h}; {} takes those defaults. null: none set, and
    # readiness judges the checkpoints against the defaults, saying so.
    training: TrainingObjectives | None = None

    @field_validator("rpo", "rto", "drill_interval", mode="before")
    @classmethod
    def _dur(cls, v: Any) -> timedelta:
        return parse_duration(v)


class Retention(StrictModel):
    """Applied by protect-bundle after each snapshot, in every region (`llmdr forget --keep-last N ...` applies a
    policy given on its command line instead)."""

    # Keep the newest N snapshots; older ones are forgotten (their manifests deleted) unless keep_every or an
    # Object Lock still keeps them
    keep_last: int = Field(ge=1)
    # Also keep every Mth older snapshot, counted from the oldest (so the kept ones do not shift as new snapshots
    # arrive); null: only the newest keep_last
    keep_every: int | None = Field(default=None, ge=1)
    # Then delete the chunks no remaining snapshot (of any bundle) references; false: only manifests are deleted.
    prune: bool = True
    # Prune never deletes a chunk written less than this long ago: a snapshot still uploading has chunks that no
    # manifest names yet.
    grace: timedelta = timedelta(hours=6)

    @field_validator("grace", mode="before")
    @classmethod
    def _dur(cls, v: Any) -> timedelta:
        return parse_duration(v)


class Checkpoints(StrictModel):
    """Training checkpoints: each sub-folder of ``path`` matching ``pattern`` is one checkpoint, snapshotted once it
    is complete (checkpoints deduplicate against each other), again when the trainer rewrites it, and kept by its own
    retention policy."""

    path: str  # the folder holding the checkpoint folders, relative to this file, e.g. output/checkpoints
    # Which sub-folders of path are checkpoints (fnmatch, case-sensitive); taken in order of the last number in
    # their name (the training step).
    pattern: str = "checkpoint-*"
    # The policy for the checkpoint snapshots (series <bundle name>-checkpoints), applied in every region by
    # protect-checkpoints (`llmdr protect --checkpoints`); null: every checkpoint is kept.
    retention: Retention | None = None
    # What a complete checkpoint folder holds (an incomplete one is not snapshotted, is reported and is looked at
    # again next run): hf (Hugging Face Trainer: weights, optimizer.pt, scheduler.pt, rng_state*.pth and
    # trainer_state.json, all parsing), lightning (*.ckpt archives that open), files (only the require patterns),
    # auto (lightning when a *.ckpt is there, else trainer_state.json and weights plus whatever HF files are present).
    layout: Literal["auto", "hf", "lightning", "files"] = "auto"
    # Patterns (fnmatch, relative to a checkpoint folder) that must each match a non-empty file, on top of the layout
    require: list[str] = Field(default_factory=list)
    # A checkpoint is taken only when two looks this far apart see the same file names, sizes and modification
    # times (a writer the layout cannot see finishing); 0s: one look.
    settle: timedelta = timedelta(0)

    @field_validator("settle", mode="before")
    @classmethod
    def _settle(cls, v: Any) -> timedelta:
        d = parse_duration(v)
        if d > timedelta(minutes=10):
            raise ValueError(f"settle {d} is longer than 10 minutes: protect-checkpoints waits this long on every run")
        return d


class Transfer(StrictModel):
    workers: int = Field(default=8, ge=1, le=256)  # parallel uploads and cross-region copies
    download_workers: int = Field(default=16, ge=1, le=256)  # parallel chunk downloads during restore
    # MiB of chunks read but not yet uploaded that a snapshot holds in memory at most (peak memory grows with it)
    max_inflight_mb: int = Field(default=64, ge=16, le=65536)
    # true: each restored file is flushed to disk (fsync) before it is renamed into place, in restores and replica
    # starts (slower); false: the operating system writes it back when it chooses.
    fsync: bool = False
    # MiB of chunks per pack object in a NEW repository (fixed at creation; an existing one keeps its own). Larger packs
    # mean fewer requests per GiB; a restore of one small file still reads only that file's bytes (ranged reads).
    pack_mb: int = Field(default=32, ge=8, le=128)
    # MiB of download buffers a restore holds at most: one blob-sized buffer per worker,
    # so fewer workers run when they would not fit (peak memory grows with it)
    restore_memory_mb: int = Field(default=128, ge=32, le=65536)
    # MiB of read buffers a cross-region copy (replicate) holds at most, the same way: one blob-sized buffer per worker
    copy_memory_mb: int = Field(default=128, ge=32, le=65536)
    # Snapshot uploads and cross-region copies into one region that protect-bundle runs at once, across all the
    # project's bundles and workers (Prefect's global concurrency limit llmdr-transfer-<region>); more wait their turn.
    region_slots: int = Field(default=2, ge=1, le=64)


class CaddyRouter(StrictModel):
    """A local Caddy reverse proxy in front of the regions' serving endpoints. A switch rewrites the file naming the
    selected region (no reload); llmdr reads the router and pushes a changed region list through Caddy's admin API."""

    kind: Literal["caddy"] = "caddy"  # selects this router (the default kind)
    listen: str = "http://127.0.0.1:18100"  # where clients send requests (loopback, explicit port)
    admin: str = "http://127.0.0.1:18119"  # Caddy's admin API (loopback only)
    # With a verified standby armed as the fallback: true also sends it a request the active region accepted but
    # never answered (the connection reset or closed before the response began, e.g. a replica stopping or crashing
    # with the request queued), within 5 s of the request's start; request bodies up to 4 MiB are buffered to allow
    # it. The request may then have run twice (its first answer was never delivered). false: only requests whose
    # connection to the active region failed (nothing sent) go to the standby.
    replay_unanswered: bool = True

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

    kind: Literal["route53"] = "route53"  # selects this router
    hosted_zone_id: str  # the Route 53 hosted zone holding record_name, e.g. Z0123456789ABCDEFGHIJ
    record_name: str  # the DNS name clients use, fully qualified, e.g. api.example.com.
    # The type of the record sets llmdr writes: A or AAAA when values are IP addresses, CNAME for host names.
    record_type: Literal["A", "AAAA", "CNAME"] = "CNAME"
    # Seconds resolvers may cache an answer: after a switch, clients can reach the old region for this long
    ttl: int = Field(default=30, ge=1, le=86400)
    # weighted: one record set per region, weight 100 for the active one and 0 for the others; failover: a PRIMARY
    # record set with the active region's value and a SECONDARY one with the region it replaced.
    policy: Literal["weighted", "failover"] = "weighted"
    values: dict[str, str]  # region name -> record value (IP or host name of that region's endpoint)
    url: str  # how clients reach the record, e.g. https://api.example.com

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return http_url(v, "https://api.example.com")


DEFAULT_REFUSALS = ["i'm sorry", "i am sorry", "i cannot", "i can't", "i can not", "i'm unable", "i am unable",
                    "i won't", "as an ai", "i'm not able", "i am not able"]


class Drift(StrictModel):
    """Drift on real traffic (opt-in): a share of the responses `llmdr serve` sends is reduced to counts (length,
    refusal yes/no, hashed word buckets; never the text) and compared per endpoint with its learned baseline."""

    # Share of answered requests that are sampled, 0 < sample <= 1 (0.05: one in twenty)
    sample: float = Field(default=0.05, gt=0, le=1)
    # The newest N sampled responses are judged against the N before them (baseline), per endpoint
    recent: int = Field(default=100, ge=10)
    baseline: int = Field(default=500, ge=20)
    # Robust z of the recent median answer length (log scale) from which an endpoint drifts, either way
    z_threshold: float = Field(default=4.0, gt=0)
    # Rise of the refusal rate (recent minus baseline, e.g. 0.1: ten points) from which an endpoint drifts
    refusal_delta: float = Field(default=0.1, gt=0, le=1)
    # How far the Jensen-Shannon distance (base 2, 0..1) between the recent and baseline word distributions may
    # exceed the baseline's own spread (its slices' distance from the rest of it) before an endpoint drifts
    js_threshold: float = Field(default=0.08, gt=0, le=1)
    # An answer that contains one of these (case-insensitive) counts as a refusal
    refusal_phrases: list[str] = Field(default_factory=lambda: list(DEFAULT_REFUSALS))

    @model_validator(mode="after")
    def _windows(self) -> "Drift":
        if self.baseline < self.recent:
            raise ValueError(f"baseline ({self.baseline}) must be at least recent ({self.recent})")
        return self


class Monitor(StrictModel):
    """How `llmdr monitor` and the monitor-endpoints flow probe endpoints and decide degraded / down."""

    # Time from the start of one probe round to the next; a round probes every region's endpoint and the router.
    interval: timedelta = timedelta(seconds=2)
    # How long one probe may take (a slower answer is a failed probe); failover's confirming probes use it too.
    timeout: timedelta = timedelta(seconds=2)
    # Consecutive failed probes before an endpoint is down (for the active region, what triggers a failover)
    down_after: int = Field(default=3, ge=1)
    # Samples that define "normal": the last N successful ones before the recent window
    baseline_window: int = Field(default=120, ge=10)
    # The newest N samples: their error rate, median latency and tokens per answer are judged against the baseline
    recent_window: int = Field(default=10, ge=3)
    # Robust z-score (median and MAD) of recent latency (slower only) or tokens per answer (either way) against the
    # baseline from which an endpoint is degraded
    z_threshold: float = Field(default=4.0, gt=0)
    # Share of failed probes in the recent window from which an endpoint is degraded, e.g. 0.2: 2 of 10
    error_rate_threshold: float = Field(default=0.2, gt=0, le=1)
    # Every Nth round asks one golden case instead of a short ping and checks the answer (0: never; also off without
    # the golden file)
    golden_every: int = Field(default=10, ge=0)
    keep: timedelta = timedelta(days=7)  # samples older than this are deleted when a monitor run starts
    # After a notice that an endpoint is degraded or down (notifications:), no other notice about it for this long
    # unless it gets worse (degraded -> down); its recovery is announced once. 0s: every change is announced.
    notify_cooldown: timedelta = timedelta(minutes=30)
    # Drift on real traffic, off unless set (e.g. {sample: 0.05}): what is kept is counts, never texts (see Drift)
    drift: Drift | None = None

    @field_validator("interval", "timeout", "keep", "notify_cooldown", mode="before")
    @classmethod
    def _dur(cls, v: Any) -> timedelta:
        return parse_duration(v)


class Metrics(StrictModel):
    """The Prometheus exporter: `llmdr metrics serve` in the foreground, and `llmdr stack up` next to the local stack
    (docs/guide/metrics.md lists every metric)."""

    # host:port the exporter listens on, e.g. 127.0.0.1:18309 (/metrics for Prometheus, / a small HTML view). It has
    # no authentication: keep it on loopback, or behind a proxy or firewall that only lets Prometheus in.
    listen: str = "127.0.0.1:18309"
    # true: `llmdr stack up` starts the exporter on listen (and `llmdr stack down` stops it); false: only
    # `llmdr metrics serve` runs it.
    with_stack: bool = True
    # How long scrapes reuse what one read: each region's newest snapshot (one catalog read per region), the drill
    # reports, the failover history and run records, the monitor's verdicts. Probe histograms are always live.
    cache: timedelta = timedelta(seconds=15)

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        host, port = split_listen(v)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @field_validator("cache", mode="before")
    @classmethod
    def _dur(cls, v: Any) -> timedelta:
        return parse_duration(v)

    @property
    def host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1]


def split_listen(text: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:port`` for IPv6) as (host, port); ValueError saying what is wrong."""
    example = "write host:port, e.g. 127.0.0.1:18309"
    if not isinstance(text, str) or "//" in text or "/" in text:
        raise ValueError(f"{text!r} is not host:port (no scheme, no path); {example}")
    host, sep, port = text.strip().rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not host:port with a port from 1 to 65535; {example}")
    return host, int(port)


class GoldenGate(StrictModel):
    """How a replica's answers are judged against the golden set (``llmdr.serving.golden.judge``)."""

    # exact: the answer equals the recorded one, byte for byte (the deterministic tiny model); similarity: the
    # token similarity of the normalised texts (NFKC, case, whitespace, punctuation) is at least threshold;
    # equivalent: the normalised texts are equal, or their token-overlap F1 is at least threshold.
    mode: Literal["exact", "similarity", "equivalent"] = "exact"
    # The lowest per-case score that passes in similarity and equivalent modes (0 < threshold <= 1; 1.0 means equal
    # after normalisation); not used by exact.
    threshold: float = Field(default=0.9, gt=0, le=1)
    # How many cases must pass: "all", a count (e.g. 5) or a fraction of the cases (e.g. 0.8). A case the endpoint
    # did not answer always fails the gate, whatever this says.
    min_pass: str | int | float = "all"

    @field_validator("min_pass", mode="before")
    @classmethod
    def _min_pass(cls, v: Any) -> str | int | float:
        bad = (f"{v!r} is not \"all\", a whole number of cases (1 or more) or a fraction "
               "between 0 and 1 (e.g. 0.8)")
        if isinstance(v, bool):
            raise ValueError(bad)
        if isinstance(v, str):
            text = v.strip().lower()
            if text == "all":
                return "all"
            try:
                v = float(text) if any(c in text for c in ".e") else int(text)
            except ValueError:
                raise ValueError(bad) from None
        if isinstance(v, int):
            if v < 1:
                raise ValueError(bad)
            return v
        if isinstance(v, float):  # 1.0 is the fraction "all of them", 5.0 the count 5
            if 0 < v <= 1:
                return v
            if v.is_integer() and v > 1:
                return int(v)
            raise ValueError(bad)
        raise ValueError(bad)


class Failover(StrictModel):
    # true: the Prefect automation runs the failover deployment when the active region is down; false: it is created
    # disabled, and traffic moves only when someone runs `llmdr failover`.
    auto: bool = True
    # Direct probes of the active region that must all fail before the failover flow switches (a blip does not
    # move traffic)
    confirm_probes: int = Field(default=3, ge=1)
    confirm_interval: timedelta = timedelta(milliseconds=300)  # the wait between two confirming probes
    # Region to fail over to (a secondary); null: the first secondary in regions that has a serving: section and is
    # not the active region.
    target: str | None = None
    # true: when the active region's endpoint turns degraded, a Prefect automation runs the prewarm-standby
    # deployment, which starts the failover target's replica from its own store (if llmdr can start it and it is
    # not answering already), so a failover that may follow is warm; false: the automation is created disabled.
    # A replica started this way keeps running (and costing) until `llmdr replica stop`.
    prewarm_on_degraded: bool = True

    @field_validator("confirm_interval", mode="before")
    @classmethod
    def _dur(cls, v: Any) -> timedelta:
        return parse_duration(v)


class Notifications(StrictModel):
    """Where failover, failback and failed verifications are announced: a webhook (JSON POST) and/or a Prefect
    notification block (Slack, Teams, email...). Webhook URLs often embed a token: prefer ``webhook_url_env``."""

    # URL that each notice is POSTed to as JSON (its "text" field is what Slack- and Teams-style webhooks show);
    # ignored when webhook_url_env is set.
    webhook_url: str | None = None
    # Name of the environment variable holding the webhook URL, e.g. LLMDR_WEBHOOK_URL; wins over webhook_url.
    webhook_url_env: str | None = None
    # A Prefect notification block, "<block-type-slug>/<name>", e.g. "slack-webhook/ops"; may be used with a webhook.
    prefect_block: str | None = None
    # How long a webhook POST may take; one retry follows a connection error or a 5xx answer, none a timeout.
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

    method: Literal["ed25519", "hmac"] = "ed25519"  # how each drill report's SIGNATURE.json is signed
    private_key: str = "keys/report-signing.key"  # ed25519, relative to state_dir; created 0600 if missing
    # ed25519, relative to state_dir; what auditors verify with (`llmdr report verify`)
    public_key: str = "keys/report-signing.pub"
    # hmac: name of the environment variable holding the key (at least 16 bytes); verifying needs the same key.
    hmac_key_env: str = "LLMDR_REPORT_HMAC_KEY"

    @field_validator("hmac_key_env")
    @classmethod
    def _hmac_env(cls, v: str) -> str:
        return env_name("hmac_key_env", v)  # type: ignore[return-value]


class Drill(StrictModel):
    """The DR drill: how the outage is simulated, how long to wait for the automation, where reports go."""

    # How the primary's outage is simulated. local: the whole region is lost: stop its local S3 server, its
    # Prefect workers and the replica (data stays on disk), then start them again; with several bundles that is
    # every bundle's store and workers, so the other bundles' protects fail until it is back. replica: only this
    # bundle's serving replica in the region is stopped (by PID); the region's S3 store, its workers and the other
    # bundles' replicas keep running, and the replica is started again from the region's own store. Default:
    # local, or replica in a project with several bundles (bundles:). command: run outage_command, then
    # restore_command.
    outage: Literal["local", "replica", "command"] = "local"
    # "command": the argv that cuts the primary off (run without a shell, 10-minute limit); it must never delete data
    outage_command: list[str] | None = None
    restore_command: list[str] | None = None  # "command": the argv that brings it back
    # Names of environment variables outage_command and restore_command get from llmdr's environment besides the
    # allow-list (PATH, HOME, locale...: llmdr.common.process.CHILD_ENV_NAMES), e.g. [AWS_PROFILE]. Every other
    # variable, the regions' keys and llmdr's encryption and manifest keys included, is withheld from them.
    pass_env: list[str] = []
    # Where drill reports go, relative to this file: one signed folder per drill under <reports_dir>/drills/.
    reports_dir: str = "reports"
    signing: Signing = Signing()  # how the reports are signed
    # required: a drill started by the Prefect schedule pauses before anything is cut until a person resumes its
    # flow run with the approval form (approver, reason, optional window; Prefect UI or API); a rejection or no answer
    # within approval_timeout ends it with nothing cut. none: scheduled drills run at once. `llmdr drill` never asks
    # (a person at the control host started it; its OS user is recorded).
    approval: Literal["required", "none"] = "required"
    approval_timeout: timedelta = timedelta(hours=24)  # how long a scheduled drill waits for its approval
    # true: the drill also restores the newest training checkpoint (series <bundle>-checkpoints) from the DR region
    # into scratch, checks every byte against its manifest and its trainer_state.json against its step, and times it
    # against objectives.training.rto: the report's training_restore control. Needs a checkpoints: section.
    training_restore: bool = False

    @field_validator("approval_timeout", mode="before")
    @classmethod
    def _approval_timeout(cls, v: Any) -> timedelta:
        td = parse_duration(v)
        if not timedelta(seconds=1) <= td <= timedelta(days=30):
            raise ValueError("drill.approval_timeout must be between 1s and 30d, e.g. 24h")
        return td

    @field_validator("pass_env")
    @classmethod
    def _pass_env(cls, v: list[str]) -> list[str]:
        for name in v:
            env_name("drill.pass_env", name)
        return v

    @model_validator(mode="after")
    def _commands(self) -> "Drill":
        if self.outage == "command" and not (self.outage_command and self.restore_command):
            raise ValueError("outage: command needs outage_command and restore_command (argv lists)")
        return self


class Dataset(StrictModel):
    """A training or evaluation dataset tracked by DVC in a git+DVC repository (the nearest parent folder holding
    ``.dvc/``). llmdr pushes each version to one DVC remote per region and validates it with Great Expectations."""

    # The dataset's name, unique: what `llmdr datasets` commands take, and the default suite's file name
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    # The data, relative to llmdr.yaml (its .dvc file sits next to it): one file, or a folder of Parquet, CSV or
    # JSON-lines partitions (hive-style key=value/ sub-folders recognised; names starting with . or _ skipped)
    path: str
    # The partitions' format: auto (by suffix; a folder mixing formats or holding unknown files is refused), parquet,
    # csv or jsonl
    format: Literal["auto", "parquet", "csv", "jsonl"] = "auto"
    # How the suite is checked: full (every row, in batches of batch_rows, memory bounded whatever the size), sample
    # (a seeded sample of sample_rows rows across all partitions; row count still checked on the total) or off
    # (nothing checked, and the evidence and artifact say so)
    validation: Literal["full", "sample", "off"] = "full"
    sample_rows: int = Field(default=100_000, ge=1, le=10_000_000)  # rows in the sample (validation: sample)
    seed: int = Field(default=0, ge=0)  # the sample's seed: the same seed and data give the same sample
    # Rows read and validated at once (a partition larger than this is read in several batches)
    batch_rows: int = Field(default=100_000, ge=100, le=10_000_000)

    @field_validator("validation", mode="before")
    @classmethod
    def _off(cls, v: Any) -> Any:
        return "off" if v is False else v  # YAML 1.1 reads an unquoted `validation: off` as false

    # true: a dataset failing its expectation suite stops the snapshot; false: the failure is only reported
    block_on_failure: bool = True
    # Expectation suite JSON, relative to llmdr.yaml (default: expectations/<name>.json); when missing, one is
    # profiled from the data on the first backup and never overwritten.
    suite: str | None = None
    # The jurisdictions this dataset's DVC copies may be stored in, e.g. [EU] (the bundle's residency applies too);
    # a config with a region outside it is refused, and so is a push there. null: only the bundle's policy.
    residency: list[str] | None = None

    @field_validator("residency")
    @classmethod
    def _residency(cls, v: list[str] | None) -> list[str] | None:
        return check_policy("residency", v)


class Readiness(StrictModel):
    """Thresholds of `llmdr readiness` (and the readiness-check flow)."""

    credential_warning: timedelta = timedelta(days=7)  # WARN when a region's credentials expire sooner than this
    # MiB read from each DR region's newest snapshot (at most its size) to measure the restore throughput
    probe_mb: int = Field(default=64, ge=1, le=4096)
    # Time a replica takes to start once the bundle is on disk, added to the cold restore time compared with the
    # RTO (also `llmdr plan`'s default --start).
    start_estimate: timedelta = timedelta(seconds=60)

    @field_validator("credential_warning", "start_estimate", mode="before")
    @classmethod
    def _dur(cls, v: Any) -> timedelta:
        return parse_duration(v)


class Contact(StrictModel):
    name: str  # who: a person or a team
    role: str = ""  # e.g. "incident commander", "ML platform on-call"
    reach: str = ""  # how to reach them: pager, phone, Slack handle (no secrets)


class Runbook(StrictModel):
    """What `llmdr runbook` adds to what it derives from the rest of the config."""

    path: str = "RUNBOOK.md"  # where `llmdr runbook` writes the runbook, relative to this file
    contacts: list[Contact] = Field(default_factory=list)  # the runbook's contact table, in this order
    emergency_access: list[str] = Field(default_factory=list)  # break-glass steps, in order (names, never secrets)


class Tracking(StrictModel):
    """MLflow: model registry and runs. Default store: sqlite under state_dir."""

    # Any MLflow tracking URI; null: $MLFLOW_TRACKING_URI, else the store control_plane.database picks (sqlite:///
    # <state_dir>/mlflow/mlflow.db, or the mlflow database of the local PostgreSQL)
    uri: str | None = None
    model_name: str | None = None  # registered model name (default: the bundle name)
    # true: every protected snapshot registers / updates a model version, a passing drill moves its drill-verified
    # alias, and each new checkpoint is logged as a training run; false: none of these (drill runs are still logged).
    register_models: bool = True




class ControlPlane(StrictModel):
    """The database of the control plane llmdr runs itself: the local Prefect server's and the default MLflow
    tracking store's (docs/guide/production.md)."""

    # sqlite: each in its own SQLite file under state_dir (zero setup). postgres: `llmdr stack up` runs a PostgreSQL
    # cluster in <state_dir>/postgres on 127.0.0.1:postgres_port (password in local.env or $LLMDR_POSTGRES_PASSWORD)
    # with the databases prefect and mlflow. An explicit tracking.uri, $MLFLOW_TRACKING_URI or
    # $PREFECT_API_DATABASE_CONNECTION_URL wins over it.
    database: Literal["sqlite", "postgres"] = "sqlite"
    postgres_port: int = Field(default=18320, ge=1024, le=65535)  # loopback port of the local PostgreSQL

    def postgres_url(self, database: str, password: str, driver: str = "postgresql") -> str:
        """The URL of ``database`` in the local cluster (``driver`` e.g. ``postgresql+asyncpg`` for Prefect)."""
        from urllib.parse import quote

        return f"{driver}://{POSTGRES_USER}:{quote(password, safe='')}@127.0.0.1:{self.postgres_port}/{database}"


POSTGRES_USER = "llmdr"  # the local cluster's one role (its superuser), owner of the prefect and mlflow databases

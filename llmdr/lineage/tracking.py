"""MLflow plumbing for llmdr: where records go (:class:`TrackingTarget`), the client, experiments and artifacts.

The drill runs (:mod:`llmdr.lineage.drills`), the model registry (:mod:`llmdr.lineage.registry`) and training runs
(:mod:`llmdr.lineage.training`) are built on it.

Where things go:

- **Tracking store**: ``sqlite:///<state_dir>/mlflow/mlflow.db`` by default (no server), or the ``mlflow`` database of
  the local PostgreSQL with ``control_plane: {database: postgres}``; ``tracking.uri``, ``MLFLOW_TRACKING_URI`` or an
  explicit ``tracking_uri`` overrides it (any MLflow URI works, e.g. ``http://mlflow.internal:5000``).
- **Artifacts**: in a region's bucket under ``<prefix>mlflow/<experiment>/<run id>/artifacts/``. Drill evidence goes
  to the DR region by default: it must survive the primary's loss, and the primary is down during part of a drill.
  ``local_artifacts=True`` puts them under ``<state_dir>/mlflow/artifacts`` instead (the fallback when the region
  cannot be reached).

MLflow fixes an experiment's ``artifact_location`` when it creates the experiment, and every run's artifact URI
derives from it. A run whose artifacts had to go elsewhere (the local fallback, or an experiment created with another
location) is uploaded to ``<target location>/<run id>/artifacts`` and says so in its ``llmdr.artifact_uri`` tag;
:func:`run_artifact_uri` gives the right place either way.

MLflow's S3 artifact repository reads the endpoint and keys from the environment. :func:`artifact_env` sets them only
for the duration of a call, under a process-wide lock (``os.environ`` is shared by every thread), and restores them.
Secrets never reach the tracking store: params and tags carry names, ids and numbers only, and
:class:`TrackingTarget`'s repr masks the keys. Do not pass a ``TrackingTarget`` as a Prefect flow parameter or task
result (those are persisted): build it where it is used, with :func:`target_for`.

``mlflow`` is imported lazily, inside the functions (it takes seconds to import), so ``import llmdr`` stays light.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from llmdr.config import Config
from llmdr.config.residency import require_resident
from llmdr.errors import LlmdrError, StorageError

log = logging.getLogger(__name__)

TAG_ARTIFACT_URI = "llmdr.artifact_uri"  # set when a run's artifacts are not under its experiment's location
TAG_KIND = "llmdr.kind"

# Every variable artifact_env controls: during a call, the ones a target does not set are removed, so a stray
# AWS_SESSION_TOKEN or MLFLOW_S3_ENDPOINT_URL from the outer environment cannot mix with the region's keys.
_S3_VARS = ("MLFLOW_S3_ENDPOINT_URL", "MLFLOW_BOTO_CLIENT_ADDRESSING_STYLE", "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE")
_SECRET_VARS = frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"})
# Set (unless the user set them) before mlflow is first imported: its telemetry client starts at import time.
_QUIET_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
_REACH_TIMEOUT_S = 3.0

_env_lock = threading.RLock()
_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()


class TrackingError(LlmdrError):
    """The MLflow tracking store refused or failed an operation (bad URI, deleted experiment, locked database)."""


class ArtifactUploadError(StorageError):
    """Artifacts could not be stored where the tracking target says (region down, bucket missing, keys refused).

    The run itself is recorded (``run_id``) and marked FAILED; logging again with ``local_artifacts=True`` completes
    the same run with its artifacts on local disk.
    """

    def __init__(self, message: str, *, run_id: str, location: str) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.location = location

    def __reduce__(self):  # Prefect pickles exceptions into states
        return (_rebuild_upload_error, (str(self), self.run_id, self.location))


def _rebuild_upload_error(message: str, run_id: str, location: str) -> ArtifactUploadError:
    return ArtifactUploadError(message, run_id=run_id, location=location)


@dataclass
class TrackingTarget:
    """Where MLflow records go: the tracking store, the artifact root, and the S3 environment the root needs.

    ``artifact_location`` is the root; experiment ``E`` keeps its artifacts under ``<artifact_location>/E``
    (:meth:`experiment_location`). ``s3_env`` holds the variables MLflow's S3 client reads (empty for ``file:``).
    """

    tracking_uri: str
    artifact_location: str  # s3://bucket/<prefix>mlflow or file:///.../mlflow/artifacts
    s3_env: dict[str, str] = field(default_factory=dict)
    region: str | None = None  # the region whose bucket holds the artifacts; None for local artifacts

    def experiment_location(self, experiment: str) -> str:
        return f"{self.artifact_location.rstrip('/')}/{_path_segment(experiment)}"

    @property
    def endpoint(self) -> str | None:
        return self.s3_env.get("MLFLOW_S3_ENDPOINT_URL")

    def describe(self) -> str:
        """For messages: the artifact root and where it is (no secrets)."""
        where = f" (region '{self.region}' at {self.endpoint or 'AWS'})" if self.region else ""
        return f"{self.artifact_location}{where}"

    def __repr__(self) -> str:  # never print secrets
        env = {k: ("***" if k in _SECRET_VARS else v) for k, v in self.s3_env.items()}
        return (f"TrackingTarget(tracking_uri={self.tracking_uri!r}, artifact_location={self.artifact_location!r}, "
                f"region={self.region!r}, s3_env={env!r})")


def default_tracking_uri(cfg: Config) -> str:
    """The store ``control_plane.database`` picks: the sqlite file under the state folder, or the ``mlflow`` database
    of the local PostgreSQL (``llmdr stack up`` starts it and generates its password)."""
    if cfg.control_plane.database == "postgres":
        from llmdr.storage.credentials import POSTGRES_PASSWORD_ENV, postgres_password

        password = postgres_password(cfg)
        if not password:
            raise TrackingError(f"control_plane.database is postgres, but the local PostgreSQL has no password yet "
                                f"(${POSTGRES_PASSWORD_ENV}, or {cfg.state_path / 'local.env'}): run `llmdr stack up` "
                                "to create it, or set tracking.uri / $MLFLOW_TRACKING_URI to another store")
        # psycopg2 named: SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3, which is not installed
        return cfg.control_plane.postgres_url("mlflow", password, driver="postgresql+psycopg2")
    return "sqlite:///" + str((cfg.state_path / "mlflow" / "mlflow.db").resolve())


def target_for(cfg: Config, *, region: str | None = None, tracking_uri: str | None = None,
               local_artifacts: bool = False) -> TrackingTarget:
    """The tracking target for ``cfg``: tracking store from ``tracking_uri``, else ``tracking.uri`` in the config, else
    ``MLFLOW_TRACKING_URI``, else the store ``control_plane.database`` picks (:func:`default_tracking_uri`);
    artifacts in ``region``'s bucket (default: the DR region, i.e. ``cfg.failover_target()``), or on local disk with ``local_artifacts``. Resolves the region's keys now (raises
    ``AccessDenied`` when they are not set); touches nothing else."""
    from llmdr.storage.credentials import resolve_keys

    uri = (tracking_uri or cfg.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI")
           or default_tracking_uri(cfg))
    if local_artifacts:
        root = (cfg.state_path / "mlflow" / "artifacts").resolve().as_uri()
        return TrackingTarget(tracking_uri=uri, artifact_location=root, s3_env={}, region=None)
    reg = cfg.region(region) if region else cfg.failover_target()
    require_resident(cfg, reg, f"MLflow artifacts to region '{reg.name}'")
    keys = resolve_keys(cfg, reg)
    prefix = reg.prefix.strip("/") + "/" if reg.prefix.strip("/") else ""
    env = {"AWS_ACCESS_KEY_ID": keys.access_key_id, "AWS_SECRET_ACCESS_KEY": keys.secret_access_key,
           "AWS_DEFAULT_REGION": reg.s3_region,
           # fail in seconds, not minutes, when the region is gone (botocore's legacy mode retries 4 times)
           "AWS_MAX_ATTEMPTS": "3", "AWS_RETRY_MODE": "standard"}
    if keys.session_token:
        env["AWS_SESSION_TOKEN"] = keys.session_token
    if reg.endpoint:  # S3-compatible server (SeaweedFS, MinIO...): path-style addressing
        env["MLFLOW_S3_ENDPOINT_URL"] = reg.endpoint
        env["MLFLOW_BOTO_CLIENT_ADDRESSING_STYLE"] = "path"
    return TrackingTarget(tracking_uri=uri, artifact_location=f"s3://{reg.bucket}/{prefix}mlflow", s3_env=env,
                          region=reg.name)


def registry_target(cfg: Config, tracking_uri: str | None = None) -> TrackingTarget:
    """A target for registry and read-only work: no artifacts are written, so no region keys are needed."""
    return target_for(cfg, tracking_uri=tracking_uri, local_artifacts=True)


def store_exists(target: TrackingTarget) -> bool:
    """False for a sqlite store whose file is not there yet (nothing recorded; reading must not create it)."""
    uri = target.tracking_uri
    return not uri.startswith("sqlite:///") or Path(uri.removeprefix("sqlite:///")).exists()


def mlflow_call(what: str, target: TrackingTarget, fn, *args, **kwargs):
    """Call the MLflow client; its exceptions become a :class:`TrackingError` that says what and where."""
    try:
        return fn(*args, **kwargs)
    except LlmdrError:
        raise
    except Exception as exc:
        raise TrackingError(f"MLflow {safe_uri(target.tracking_uri)}: cannot {what}: {short_error(exc)}") from exc


def is_not_found(exc: BaseException) -> bool:
    """Whether an MLflow client error means the model, version, alias or run does not exist."""
    return getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


# --- MLflow plumbing --------------------------------------------------------------------------------------------------
def import_mlflow():
    """Import mlflow quietly: no telemetry, no progress bars, no database-migration chatter."""
    for k, v in _QUIET_ENV.items():
        os.environ.setdefault(k, v)
    import mlflow

    # mlflow's own SQLAlchemy models trip a deprecation warning of SQLAlchemy 2.x: not ours to act on
    warnings.filterwarnings("ignore", message=r".*``noload`` loader strategy is deprecated", module=r"mlflow\.")
    for name in ("mlflow.store.db.utils", "alembic.runtime.migration"):
        lg = logging.getLogger(name)
        if lg.level == logging.NOTSET:
            lg.setLevel(logging.WARNING)
    return mlflow


def open_client(target: TrackingTarget):
    """An ``MlflowClient`` for the target's tracking store (and model registry), one per URI per process. Creates
    the sqlite file's folder; the first use of a new sqlite file creates its tables (~3 s)."""
    uri = target.tracking_uri
    with _clients_lock:
        if uri in _clients:
            return _clients[uri]
        import_mlflow()
        from mlflow import MlflowClient

        if uri.startswith("sqlite:///"):
            Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        _check_database_answers(uri)
        try:
            client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            client.search_experiments(max_results=1)  # opens (and migrates) the store now, with a clear error
        except Exception as exc:
            raise TrackingError(f"MLflow tracking store {safe_uri(uri)}: cannot open it ({short_error(exc)}). Check the "
                                "tracking URI (MLFLOW_TRACKING_URI or the tracking_uri given) and that it is "
                                "reachable and writable.") from exc
        _clients[uri] = client
        return client


def _check_database_answers(uri: str) -> None:
    """Fail in seconds when a PostgreSQL or MySQL store does not answer: MLflow retries opening it for ~100 s."""
    from llmdr.common.net import unreachable

    u = urlparse(uri)
    if not u.scheme.startswith(("postgresql", "mysql")) or not u.hostname:
        return
    port = u.port or (5432 if u.scheme.startswith("postgresql") else 3306)
    if (exc := unreachable(f"tcp://{u.hostname}:{port}", _REACH_TIMEOUT_S)) is not None:
        raise TrackingError(f"MLflow tracking store {safe_uri(uri)}: cannot open it: the database does not answer at "
                            f"{u.hostname}:{port} ({exc.strerror or exc}). Start it (`llmdr stack up` starts the local "
                            "PostgreSQL of control_plane.database: postgres) or check the tracking URI.")


def ensure_experiment(target: TrackingTarget, name: str) -> str:
    """The id of experiment ``name``, created with its artifact location under the target's root if missing."""
    client = open_client(target)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, artifact_location=target.experiment_location(name))
        except Exception:  # created meanwhile by another process: use that one
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage != "active":
        raise TrackingError(f"MLflow experiment {name!r} in {safe_uri(target.tracking_uri)} is deleted; restore it "
                            f"(`mlflow experiments restore --experiment-id {exp.experiment_id}`) or remove it for good "
                            "(`mlflow gc`) so llmdr can create it again.")
    return exp.experiment_id


@contextlib.contextmanager
def artifact_env(target: TrackingTarget) -> Iterator[None]:
    """Set the target's S3 variables for the duration of the block (and remove the other S3 variables llmdr
    controls), then restore the environment exactly. Holds a process-wide lock: ``os.environ`` is shared by
    every thread, so two blocks never interleave. A target with local artifacts changes nothing."""
    with _env_lock:
        if not target.s3_env:
            yield
            return
        saved = {k: os.environ.get(k) for k in _S3_VARS}
        try:
            for k in _S3_VARS:
                if k in target.s3_env:
                    os.environ[k] = target.s3_env[k]
                else:
                    os.environ.pop(k, None)
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def run_artifact_uri(run) -> str:
    """Where a run's artifacts really are: its ``llmdr.artifact_uri`` tag, else MLflow's own artifact URI."""
    return run.data.tags.get(TAG_ARTIFACT_URI) or run.info.artifact_uri


def upload_artifacts(target: TrackingTarget, run, folder: Path, experiment: str) -> str:
    """Upload every file under ``folder`` for ``run`` to the target's location; returns the artifact URI used.

    Raises :class:`ArtifactUploadError` when the target's region cannot be reached or refuses the upload."""
    run_id = run.info.run_id
    uri = f"{target.experiment_location(experiment)}/{run_id}/artifacts"
    _check_reachable(target, run_id, uri)
    client = open_client(target)
    if uri != run.info.artifact_uri:
        client.set_tag(run_id, TAG_ARTIFACT_URI, uri)
    elif TAG_ARTIFACT_URI in run.data.tags:  # an earlier attempt went elsewhere; this one is the normal place
        client.delete_tag(run_id, TAG_ARTIFACT_URI)
    try:
        with artifact_env(target):
            _artifact_repo(target, uri).log_artifacts(str(folder))
    except Exception as exc:
        raise ArtifactUploadError(
            f"MLflow artifacts for run {run_id}: cannot upload {folder} to {uri}{_where(target)}: "
            f"{_cause(exc)}. The run is recorded in {safe_uri(target.tracking_uri)} without its artifacts; log "
            "again with local artifacts (target_for(cfg, local_artifacts=True)), or once the region is back.",
            run_id=run_id, location=uri) from exc
    return uri


def download_artifacts(target: TrackingTarget, artifact_uri: str, dst: Path) -> Path:
    """Download ``artifact_uri`` (a run's folder or one file) into ``dst`` with the target's S3 environment."""
    import_mlflow()
    import mlflow.artifacts

    dst.mkdir(parents=True, exist_ok=True)
    with artifact_env(target):
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=str(dst)))


def _artifact_repo(target: TrackingTarget, uri: str):
    if uri.startswith("s3://"):
        # keys passed explicitly, not only through the environment: MLflow caches one boto3 client per endpoint
        # for 5 minutes, and a client built from the environment keeps the keys it was built with
        from mlflow.store.artifact.s3_artifact_repo import S3ArtifactRepository

        env = target.s3_env
        return S3ArtifactRepository(uri, access_key_id=env.get("AWS_ACCESS_KEY_ID"),
                                    secret_access_key=env.get("AWS_SECRET_ACCESS_KEY"),
                                    session_token=env.get("AWS_SESSION_TOKEN"),
                                    tracking_uri=target.tracking_uri, registry_uri=target.tracking_uri)
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    return get_artifact_repository(uri)


def _check_reachable(target: TrackingTarget, run_id: str, uri: str) -> None:
    """Fail in seconds when the region's endpoint does not answer: botocore would wait out its connect timeout
    (60 s) and retries first."""
    from llmdr.common.net import unreachable

    if target.endpoint and (exc := unreachable(target.endpoint, _REACH_TIMEOUT_S)) is not None:
        raise ArtifactUploadError(
            f"MLflow artifacts for run {run_id}: region '{target.region}' is unreachable at {target.endpoint} "
            f"({exc.strerror or exc}); nothing uploaded to {uri}. The run is recorded in "
            f"{safe_uri(target.tracking_uri)} without its artifacts; log again with local artifacts "
            "(target_for(cfg, local_artifacts=True)), or once the region is back.",
            run_id=run_id, location=uri) from exc


def _where(target: TrackingTarget) -> str:
    return f" (region '{target.region}' at {target.endpoint or 'AWS'})" if target.region else ""


def _cause(exc: BaseException) -> str:
    """A one-line reason from the exception chain, named the way an operator acts on it."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, EndpointConnectionError):
            return f"the endpoint does not answer ({e})"
        if isinstance(e, NoCredentialsError):
            return "no credentials reached the S3 client"
        if isinstance(e, ClientError):
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code == "NoSuchBucket":
                return "the bucket does not exist (create it, or `llmdr stack up` for the local stack)"
            if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
                return f"access denied ({code}): check the region's keys and their permissions"
            return f"S3 error {code}"
        e = e.__cause__ or e.__context__
    text = str(exc)
    if "NoSuchBucket" in text:
        return "the bucket does not exist (create it, or `llmdr stack up` for the local stack)"
    if any(c in text for c in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch")):
        return "access denied: check the region's keys and their permissions"
    return short_error(exc)


def short_error(exc: BaseException) -> str:
    """An exception as one line of at most 300 characters, for messages."""
    text = " ".join(str(exc).split())
    return (text[:300] + "…") if len(text) > 300 else text or type(exc).__name__


def safe_uri(uri: str) -> str:
    """The URI without a password (``http://user:pass@host`` → ``http://user:***@host``)."""
    u = urlparse(uri)
    if u.password:
        return uri.replace(f":{u.password}@", ":***@")
    return uri


def _path_segment(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in name).strip("-") or "experiment"

"""AWS's own conventions, asked of botocore rather than re-implemented: the default credential chain and each
region's effective S3 endpoint and addressing style.

A region whose ``credentials:`` names no variables and no Prefect block gets its keys from botocore's default chain,
in botocore's order: environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN), assume-role
profiles, web identity (AWS_WEB_IDENTITY_TOKEN_FILE + AWS_ROLE_ARN: EKS IRSA), SSO, the shared credentials and config
files (AWS_PROFILE, or ``credentials.profile``; AWS_SHARED_CREDENTIALS_FILE / AWS_CONFIG_FILE), credential_process,
container roles (ECS/EKS Pod Identity), instance roles (IMDS). A region that names variables or a block never
falls back to the chain.

The endpoint a client really talks to comes from botocore too (``client.meta.endpoint_url``): llmdr.yaml's
``endpoint`` wins, then AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL and the profile's ``endpoint_url`` / ``services``
section, then AWS S3 in ``s3_region``. ``Endpoint.source`` says which, so a message never calls an endpoint set
by the environment "AWS".
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from llmdr.errors import AccessDenied, ConfigError, TransientStorageError

if TYPE_CHECKING:
    from llmdr.config import Region

_lock = threading.Lock()
_sessions: OrderedDict[tuple, Any] = OrderedDict()
_MAX_SESSIONS = 8

# what botocore's providers call themselves (``Credentials.method``), as a reader would name them
_METHODS = {
    "env": "environment AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY",
    "shared-credentials-file": "shared credentials file",
    "config-file": "shared config file",
    "assume-role": "assume-role profile",
    "assume-role-with-web-identity": "web identity (STS AssumeRoleWithWebIdentity)",
    "sso": "SSO",
    "login": "aws login",
    "custom-process": "credential_process",
    "container-role": "container role",
    "iam-role": "instance role (IMDS)",
}


def session(profile: str | None = None) -> Any:
    """A botocore session for ``profile`` (None: AWS_PROFILE, else the default profile), one per profile and set of
    AWS_* environment variables: botocore reads its config files and caches credentials once per session, so a
    changed AWS_PROFILE, AWS_CONFIG_FILE or AWS_ENDPOINT_URL_S3 gets a new session instead of stale answers. Building
    a client parses the S3 model (~0.2 s); the session's loader caches it, so the next client is cheap."""
    key = (profile, tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_"))))
    with _lock:
        hit = _sessions.get(key)
        if hit is not None:
            _sessions.move_to_end(key)
            return hit
        import botocore.session

        s = botocore.session.Session(profile=profile)
        quick_service_lookup(s)
        _sessions[key] = s
        while len(_sessions) > _MAX_SESSIONS:
            _sessions.popitem(last=False)
        return s


def renewing_session(profile: str | None, first: tuple[str, str, str | None, datetime],
                     renew: Callable[[], tuple[str, str, str | None, datetime]]) -> Any:
    """A botocore session of its own whose clients sign with ``first`` (access key id, secret, session token,
    expiration), then with what ``renew`` returns, called by botocore before the keys in use expire
    (``RefreshableCredentials``): for an assumed role, whose keys outlive no transfer longer than the role's session.
    Shares the S3 model with ``session``."""
    import botocore.session
    from botocore.credentials import CredentialProvider, CredentialResolver, RefreshableCredentials

    def metadata(keys: tuple[str, str, str | None, datetime]) -> dict[str, Any]:
        ak, sk, token, expiration = keys
        return {"access_key": ak, "secret_key": sk, "token": token, "expiry_time": expiration.isoformat()}

    class Renewing(CredentialProvider):
        METHOD = "llmdr-assume-role"

        def load(self) -> Any:
            return RefreshableCredentials.create_from_metadata(metadata(first), lambda: metadata(renew()), self.METHOD)

    s = botocore.session.Session(profile=profile)
    s.register_component("data_loader", session(profile).get_component("data_loader"))
    s.register_component("credential_provider", CredentialResolver([Renewing()]))
    return s


def clear_sessions() -> None:
    """Forget every session and the credentials botocore cached in them (tests; after rotating keys)."""
    with _lock:
        _sessions.clear()


@dataclass(frozen=True)
class Endpoint:
    url: str  # what botocore sends requests to (the bucket goes in the host for virtual addressing)
    source: str  # "llmdr.yaml", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "profile 'x' (AWS config file)", "AWS"
    addressing_style: str  # "path" or "virtual"

    @property
    def is_aws(self) -> bool:
        host = (urlparse(self.url).hostname or "").lower()
        return host.endswith((".amazonaws.com", ".amazonaws.com.cn")) or host == "amazonaws.com"

    def describe(self, s3_region: str) -> str:
        """The endpoint for a message: the URL, and where it came from when llmdr.yaml did not set it."""
        if self.source == "llmdr.yaml":
            return self.url
        if self.source == "AWS":
            return f"{self.url} (AWS {s3_region})"
        return f"{self.url} (set by {self.source}, not llmdr.yaml)"


def effective_endpoint(endpoint_url: str | None, region_name: str, addressing_style: str = "auto",
                       profile: str | None = None) -> Endpoint:
    """Where an S3 client for this region really sends requests, as botocore resolves it, and the addressing style
    llmdr uses there. ``auto``: path-style for a custom endpoint (SeaweedFS, MinIO: IPs and hosts without wildcard
    DNS), virtual-hosted for AWS itself. No network, no credentials needed."""
    if endpoint_url:  # an explicit endpoint_url always wins in botocore: no need to build a client to know it
        return Endpoint(endpoint_url, "llmdr.yaml", "path" if addressing_style == "auto" else addressing_style)
    client = _client(endpoint_url, region_name, "virtual" if addressing_style == "auto" else addressing_style,
                     profile)
    url = str(client.meta.endpoint_url)
    if url == os.environ.get("AWS_ENDPOINT_URL_S3"):
        source = "AWS_ENDPOINT_URL_S3"
    elif url == os.environ.get("AWS_ENDPOINT_URL"):
        source = "AWS_ENDPOINT_URL"
    else:
        source = "AWS"
    ep = Endpoint(url, source, addressing_style)
    if source == "AWS" and not ep.is_aws:
        name = profile or os.environ.get("AWS_PROFILE") or "default"
        ep = Endpoint(url, f"profile '{name}' in the AWS config file (endpoint_url / services)", addressing_style)
    if addressing_style == "auto":
        ep = Endpoint(ep.url, ep.source, "virtual" if ep.is_aws else "path")
    return ep


def _client(endpoint_url: str | None, region_name: str, style: str, profile: str | None) -> Any:
    from botocore.config import Config as BotoConfig
    from botocore.exceptions import ProfileNotFound

    try:
        return session(profile).create_client(
            "s3", endpoint_url=endpoint_url, region_name=region_name, aws_access_key_id="endpoint-probe",
            aws_secret_access_key="endpoint-probe", config=BotoConfig(s3={"addressing_style": style}))
    except ProfileNotFound as exc:
        raise ConfigError(_profile_missing(profile, str(exc))) from exc


def region_endpoint(region: Region) -> Endpoint:
    """``effective_endpoint`` of a configured region."""
    return effective_endpoint(region.endpoint, region.s3_region, region.addressing_style, region.credentials.profile)


def _profile_missing(profile: str | None, detail: str) -> str:
    name = profile or os.environ.get("AWS_PROFILE") or "default"
    where = " and ".join(f"{var}={os.environ[var]}" for var in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")
                         if os.environ.get(var)) or "~/.aws/config and ~/.aws/credentials"
    given = "credentials.profile in llmdr.yaml" if profile else "AWS_PROFILE"
    return (f"AWS profile '{name}' (from {given}) is not defined in {where} ({detail}). Add it (`aws configure "
            "--profile NAME`, `aws configure sso`) or name an existing one")


def chain_keys(region: Region) -> tuple[str, str, str | None, datetime | None, str]:
    """The region's keys from botocore's default chain (with ``credentials.profile`` when set), frozen now, as
    ``credentials.Keys`` fields: (access key id, secret, session token, expiration, source). The source names the provider (and profile), never a secret; ``expiration`` is known for temporary keys
    (web identity, SSO, container and instance roles, assume-role profiles). botocore renews them itself before
    they expire: every call resolves afresh from the cached, self-refreshing credentials."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        ProfileNotFound,
    )

    profile = region.credentials.profile
    what = f"region '{region.name}'"
    try:
        s = session(profile)
        creds = s.get_credentials()
        frozen = creds.get_frozen_credentials() if creds is not None else None
    except ProfileNotFound as exc:
        raise ConfigError(f"{what}: {_profile_missing(profile, str(exc))}") from exc
    except (EndpointConnectionError, ConnectTimeoutError) as exc:
        raise TransientStorageError(f"{what}: the AWS default credential chain could not reach its provider "
                                    f"({type(exc).__name__}: {exc}); try again") from exc
    except (BotoCoreError, ClientError) as exc:
        # e.g. an expired SSO token, a web identity token STS refuses, a missing token file
        raise AccessDenied(f"{what}: the AWS default credential chain failed: {type(exc).__name__}: "
                           f"{_first_line(exc)}. Renew the credentials (e.g. `aws sso login`), or check "
                           "AWS_PROFILE / AWS_WEB_IDENTITY_TOKEN_FILE / AWS_ROLE_ARN") from exc
    except OSError as exc:  # e.g. AWS_WEB_IDENTITY_TOKEN_FILE names a file that is not there (yet)
        raise AccessDenied(f"{what}: the AWS default credential chain failed: cannot read {exc.filename or 'a file'} "
                           f"({exc.strerror or type(exc).__name__}). Check AWS_WEB_IDENTITY_TOKEN_FILE (on EKS: the "
                           "pod's service account token is mounted) and AWS_SHARED_CREDENTIALS_FILE / AWS_CONFIG_FILE"
                           ) from exc
    if frozen is None or not frozen.access_key or not frozen.secret_key:
        raise AccessDenied(
            f"{what}: no credentials found. llmdr.yaml names none for this region (credentials: access_key_env/"
            "secret_key_env or prefect_secret_block), so llmdr asked the AWS default chain (environment "
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE with ~/.aws/credentials and ~/.aws/config, SSO, "
            "web identity AWS_WEB_IDENTITY_TOKEN_FILE + AWS_ROLE_ARN, container and instance roles) and it found "
            "nothing. Set AWS_PROFILE (or credentials.profile), or name the key variables under credentials:")
    method = str(getattr(creds, "method", "") or "")
    label = _METHODS.get(method, method or "unknown provider")
    name = profile or (s.profile if method not in ("env", "container-role", "iam-role") else None)
    if method in ("shared-credentials-file", "config-file", "assume-role", "sso", "custom-process") and not name:
        name = "default"
    source = f"AWS default chain: {label}" + (f", profile '{name}'" if name else "")
    expiry = getattr(creds, "_expiry_time", None)  # botocore exposes no public accessor for RefreshableCredentials
    expiration = None
    if isinstance(expiry, datetime):
        expiration = (expiry.replace(tzinfo=timezone.utc) if expiry.tzinfo is None else expiry).astimezone(timezone.utc)
    return frozen.access_key, frozen.secret_key, frozen.token, expiration, source


def quick_service_lookup(session: Any) -> None:
    """Give the botocore ``session`` a data loader that checks a service exists by looking at its own folder.

    botocore's loader answers "is there an S3 model?" by listing every service it knows (~430 folders, a listdir
    and a stat each) before loading the S3 model, and again for its endpoint rules: ~20 ms of every command. This
    loader's answer is a :class:`_ServiceNames`, which checks one folder for ``in`` and lists them all only when
    iterated (an unknown service's error message): the same answers, for any service. Idempotent."""
    from botocore.loaders import Loader

    if getattr(session.get_component("data_loader"), "quick_service_lookup", False):
        return
    data_path = session.get_config_variable("data_path")  # AWS_DATA_PATH, as botocore's own create_loader reads it
    extra = [os.path.expanduser(os.path.expandvars(p)) for p in data_path.split(os.pathsep)] if data_path else None

    class QuickLoader(Loader):
        quick_service_lookup = True

        def list_available_services(self, type_name: str) -> Sequence[str]:
            return _ServiceNames(self, type_name, full=lambda: Loader.list_available_services(self, type_name))

    session.register_component("data_loader", QuickLoader(extra_search_paths=extra))


class _ServiceNames(Sequence):
    """The services a botocore loader has a ``type_name`` model of (e.g. service-2): ``name in`` looks in that
    service's folders only; iterating, indexing or ``len`` list them all as botocore does (``full``), once."""

    def __init__(self, loader: Any, type_name: str, full: Any) -> None:
        self._loader, self._type, self._full, self._names = loader, type_name, full, None

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str) or not name or os.sep in name:
            return False
        for base in self._loader.search_paths:
            folder = os.path.join(base, name)
            if os.path.isdir(folder) and any(self._loader.file_loader.exists(os.path.join(folder, version, self._type))
                                             for version in os.listdir(folder)):
                return True
        return False

    def _all(self) -> list[str]:
        if self._names is None:
            self._names = list(self._full())
        return self._names

    def __getitem__(self, i: Any) -> Any:
        return self._all()[i]

    def __len__(self) -> int:
        return len(self._all())

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__

"""S3 adapter (boto3): AWS, SeaweedFS, MinIO, any S3-compatible endpoint.

botocore's own retries are off (``total_max_attempts=1``; its ``max_attempts`` counts retries, so 1 would still
retry once): the single retry layer is ``RetryingStore``. botocore errors are mapped to llmdr's typed errors here
and nowhere else. Writes send ``x-amz-checksum-sha256`` when the caller knows the digest (and computes it otherwise), so the server itself refuses bytes damaged on the way. Because
every put carries that signed checksum header, the request body is not hashed a second time for the SigV4
signature (``payload_signing_enabled=False``): on plain-HTTP endpoints botocore would otherwise SHA-256 every byte
again, which halves upload throughput on a small machine.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

from llmdr.errors import (
    AccessDenied,
    BucketNotFound,
    Conflict,
    IntegrityError,
    ObjectLocked,
    ObjectLockUnavailable,
    ObjectNotFound,
    StorageError,
    TransientStorageError,
)
from llmdr.storage.base import BlobInfo, BytesReader, Lock, LockPolicy, RangeReader, VersionInfo, check_key
from llmdr.storage.s3body import BodyReader

_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "InvalidToken", "ExpiredToken",
           "AuthorizationHeaderMalformed", "InvalidSecurity", "AllAccessDisabled"}
_NOT_FOUND = {"NoSuchKey", "404", "NotFound", "NoSuchVersion"}
_INTEGRITY = {"BadDigest", "XAmzContentSHA256Mismatch", "InvalidDigest", "InvalidChecksum"}
_TRANSIENT = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
              "InternalError", "ServiceUnavailable", "503", "500", "502", "504", "OperationAborted"}


def shared_session():
    """The process's botocore session (``aws.session``: one per AWS_* environment): building a client parses the S3
    service model (~0.2 s); the session's loader caches it, so the second region's client is cheap."""
    from llmdr.storage.aws import session

    return session()


class S3Store:
    """One bucket (and optional key prefix) of an S3-compatible service."""

    def __init__(
        self,
        *,
        bucket: str,
        endpoint_url: str | None,
        access_key_id: str | None,
        secret_access_key: str | None,
        region_name: str = "us-east-1",
        prefix: str = "",
        session_token: str | None = None,
        max_pool_connections: int = 32,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        name: str = "",
        object_lock: tuple[str, float] | None = None,
        addressing_style: str = "auto",
        profile: str | None = None,
        keys_from: str = "",
        botocore_session: Any = None,
    ) -> None:
        """``object_lock`` = (mode, seconds): every put is locked (COMPLIANCE or GOVERNANCE) until now + seconds, and
        ``delete`` removes every version of a key (the bucket is versioned), refusing locked ones.
        ``endpoint_url`` None: the endpoint botocore resolves (AWS_ENDPOINT_URL_S3, the ``profile``'s endpoint_url,
        else AWS S3 in ``region_name``); ``addressing_style`` auto: path-style there unless it is AWS itself.
        ``access_key_id`` None: the ``profile`` session's own credentials (botocore's chain, renewed as they expire).
        ``keys_from`` names where the keys came from (``Keys.source``: names only) for access-denied messages.
        ``botocore_session``: the client's session instead of the ``profile``'s (``aws.renewing_session``)."""
        from botocore.config import Config

        from llmdr.storage.aws import effective_endpoint, session

        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.keys_from = keys_from or "the environment variables it names"
        self.endpoint = effective_endpoint(endpoint_url, region_name, addressing_style, profile)
        self.endpoint_url = self.endpoint.url  # the effective one, wherever it was set
        self.where = self.endpoint.describe(region_name)
        label = f"region '{name}' " if name else ""
        self.location = f"{label}s3://{bucket}/{self.prefix} at {self.where}"
        self._lock_policy = LockPolicy(object_lock[0], float(object_lock[1])) if object_lock else None
        config = Config(
            s3={"addressing_style": self.endpoint.addressing_style, "payload_signing_enabled": False},
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=max_pool_connections,
            # llmdr hashes every byte itself (SHA-256 content ids); skip botocore's second pass of CRC32s.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            tcp_keepalive=True,
        )
        self._client = (botocore_session or session(profile)).create_client(
            "s3",
            endpoint_url=endpoint_url,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            aws_session_token=session_token,
            region_name=region_name,
            config=config,
        )

    # mapping --------------------------------------------------------------------------------------------------------
    def _map(self, exc: Exception, op: str, key: str | None) -> Exception:
        from botocore.exceptions import (
            ClientError,
            ConnectionClosedError,
            ConnectTimeoutError,
            EndpointConnectionError,
            IncompleteReadError,
            NoCredentialsError,
            ReadTimeoutError,
            ResponseStreamingError,
        )
        from urllib3.exceptions import ProtocolError as URLLib3ProtocolError

        what = f"{op} {key!r} in {self.location}" if key else f"{op} in {self.location}"
        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            msg = err.get("Message", "")
            if code == "NoSuchBucket":
                return BucketNotFound(
                    f"bucket '{self.bucket}' does not exist at {self.where} ({what}). Create it, "
                    "or for the local stack run `llmdr stack up`."
                )
            if code in _NOT_FOUND:
                return ObjectNotFound(f"{what}: not found")
            if code in _DENIED or status == 403:
                return AccessDenied(
                    f"{what}: access denied ({code}{': ' + msg if msg else ''}). Check the credentials this region "
                    f"reads ({self.keys_from}; see credentials: in llmdr.yaml) and their permissions."
                )
            if code in _INTEGRITY:
                return IntegrityError(f"{what}: the server rejected the bytes as damaged in transit ({code}); nothing was written")
            if code in _TRANSIENT or (status is not None and status >= 500):
                return TransientStorageError(f"{what}: server fault {code or status} ({msg})")
            if code == "PreconditionFailed":
                return StorageError(f"{what}: precondition failed ({msg})")
            return StorageError(f"{what}: {code or status} {msg}".strip())
        if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError)):
            return TransientStorageError(
                f"{what}: cannot connect to {self.where}. Is the server up? For the local stack: "
                "`llmdr stack status`."
            )
        if isinstance(exc, (ReadTimeoutError, ConnectionClosedError)):
            return TransientStorageError(f"{what}: connection lost or timed out ({exc})")
        if isinstance(exc, (ResponseStreamingError, IncompleteReadError, URLLib3ProtocolError)):
            # The answer started, then the body stopped short (reset, or a close before Content-Length bytes):
            # botocore raises these from ``Body.read()``. Nothing partial is returned, and a new request may succeed.
            return TransientStorageError(f"{what}: connection dropped in the middle of the response body ({exc})")
        if isinstance(exc, NoCredentialsError):
            return AccessDenied(f"{what}: no credentials found for this region")
        if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
            return TransientStorageError(f"{what}: {exc}")
        from botocore.exceptions import BotoCoreError

        if isinstance(exc, BotoCoreError):
            return StorageError(f"{what}: {exc}")
        return exc

    def _k(self, key: str) -> str:
        return self.prefix + check_key(key)

    # BlobStore ------------------------------------------------------------------------------------------------------
    def put(self, key: str, data: bytes | bytearray | memoryview, *, sha256: bytes | None = None,
            if_absent: bool = False, retain: bool = True) -> None:
        """``if_absent``: create only (``If-None-Match: *``); the server's 412 becomes ``Conflict``. ``retain=False``:
        no per-put Object Lock retention (locks and prune plans must stay deletable)."""
        body = bytes(data) if isinstance(data, memoryview) else data
        digest = sha256 if sha256 is not None else hashlib.sha256(body).digest()
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": self._k(key), "Body": body,
                                "ChecksumSHA256": base64.b64encode(digest).decode("ascii")}
        if if_absent:
            args["IfNoneMatch"] = "*"
        if self._lock_policy and retain:
            args["ObjectLockMode"] = self._lock_policy.mode
            args["ObjectLockRetainUntilDate"] = _utc(time.time() + self._lock_policy.period_s)
        try:
            self._client.put_object(**args)
        except Exception as exc:
            if if_absent and _error_code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                # 409: another conditional write of the key is in flight (AWS); either way someone else is creating it
                raise Conflict(f"create {key!r} in {self.location}: the key exists already (another writer took it); "
                               "nothing was written. Re-read what is there and pick another key") from exc
            raise self._map(exc, "put", key) from exc

    def get(self, key: str, *, start: int = 0, length: int | None = None, version_id: str | None = None) -> bytes:
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": self._k(key)}
        if version_id is not None:
            args["VersionId"] = version_id
        if start or length is not None:
            if length == 0:
                return b""
            end = "" if length is None else str(start + length - 1)
            args["Range"] = f"bytes={start}-{end}"
        try:
            resp = self._client.get_object(**args)
            return resp["Body"].read()
        except Exception as exc:
            from botocore.exceptions import ClientError

            if isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") == "InvalidRange":
                return b""
            raise self._map_version(exc, "get", key, version_id) from exc

    def open_range(self, key: str, start: int, length: int, *, version_id: str | None = None) -> RangeReader:
        if length <= 0:
            return BytesReader(b"")
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": self._k(key),
                                "Range": f"bytes={start}-{start + length - 1}"}
        if version_id is not None:
            args["VersionId"] = version_id
        try:
            resp = self._client.get_object(**args)
        except Exception as exc:
            if _error_code(exc) == "InvalidRange":
                return BytesReader(b"")
            raise self._map_version(exc, "get", key, version_id) from exc
        served = str(resp.get("ContentRange") or "")  # "bytes START-END/TOTAL"
        if not served.startswith(f"bytes {start}-") and (start or served):
            resp["Body"].close()
            raise StorageError(f"get {key!r} in {self.location}: asked for bytes {start}-{start + length - 1} but the "
                               f"server answered {served or 'the whole object'}; this endpoint does not honour "
                               "ranged reads as S3 does, so nothing was read from it")
        size = min(length, int(resp.get("ContentLength", 0)))
        return BodyReader(f"get {key!r} in {self.location}", resp["Body"], size, lambda exc: self._map(exc, "get", key))

    def head(self, key: str, *, version_id: str | None = None) -> BlobInfo:
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": self._k(key)}
        if version_id is not None:
            args["VersionId"] = version_id
        try:
            resp = self._client.head_object(**args)
        except Exception as exc:
            mapped = self._map_version(exc, "head", key, version_id)
            if isinstance(mapped, ObjectNotFound):
                self._check_bucket()
            raise mapped from exc
        modified = resp.get("LastModified")
        return BlobInfo(key, int(resp["ContentLength"]), modified.timestamp() if modified else None)

    def _map_version(self, exc: Exception, op: str, key: str, version_id: str | None) -> Exception:
        """As ``_map``; a read of a delete marker's version (S3 answers 405) is ``ObjectNotFound`` saying so."""
        if version_id is not None and _error_code(exc) in ("MethodNotAllowed", "405"):
            return ObjectNotFound(f"{op} {key!r} version {version_id} in {self.location}: a delete marker, no bytes")
        return self._map(exc, op if version_id is None else f"{op} version {version_id} of", key)

    def _check_bucket(self) -> None:
        """HEAD answers a bare 404 for a missing bucket too; tell the two apart."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            mapped = self._map(exc, "head bucket", None)
            if isinstance(mapped, ObjectNotFound):
                raise BucketNotFound(
                    f"bucket '{self.bucket}' does not exist at {self.where}. Create it, or for the "
                    "local stack run `llmdr stack up`."
                ) from exc
            raise mapped from exc

    def list(self, prefix: str = "", *, start_after: str | None = None) -> Iterator[BlobInfo]:
        token: str | None = None
        full = self.prefix + prefix
        cut = len(self.prefix)
        while True:
            args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full, "MaxKeys": 1000}
            if token:
                args["ContinuationToken"] = token
            elif start_after is not None:
                args["StartAfter"] = self.prefix + start_after
            try:
                resp = self._client.list_objects_v2(**args)
            except Exception as exc:
                raise self._map(exc, "list", prefix or "/") from exc
            for obj in resp.get("Contents", []):
                modified = obj.get("LastModified")
                yield BlobInfo(obj["Key"][cut:], int(obj["Size"]), modified.timestamp() if modified else None)
            if not resp.get("IsTruncated"):
                return
            token = resp.get("NextContinuationToken")

    def delete(self, key: str) -> None:
        if self._lock_policy:
            return self._delete_versions(key)
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._k(key))
        except Exception as exc:
            mapped = self._map(exc, "delete", key)
            if isinstance(mapped, ObjectNotFound):
                return
            raise mapped from exc

    def _delete_versions(self, key: str) -> None:
        """In a locked (hence versioned) bucket a plain DELETE only adds a delete marker: the bytes stay, hidden. Remove
        every version instead; a version under retention raises ``ObjectLocked`` (the key then stays listed)."""
        versions = [v for v in self.list_versions(key) if v.key == key]
        # oldest first: if a locked version stops us, the current one is still there and the key stays readable
        for v in reversed(versions):
            self.delete_version(key, v.version_id)

    def server_time(self) -> float:
        """The store's clock: the ``Date`` header of a HeadBucket (1 s resolution) plus half the round trip."""
        from email.utils import parsedate_to_datetime

        sent = time.monotonic()
        try:
            resp = self._client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            mapped = self._map(exc, "read the clock", None)
            if isinstance(mapped, ObjectNotFound):
                self._check_bucket()
            raise mapped from exc
        rtt = time.monotonic() - sent
        date = resp.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        if not date:
            raise StorageError(f"read the clock of {self.location}: the server sent no Date header; llmdr needs the "
                               "store's time to judge lock and prune ages. Use an S3 endpoint that sends Date")
        try:
            return parsedate_to_datetime(date).timestamp() + rtt / 2
        except (TypeError, ValueError) as exc:
            raise StorageError(f"read the clock of {self.location}: unreadable Date header {date!r}") from exc

    # versions -------------------------------------------------------------------------------------------------------
    def list_versions(self, prefix: str = "", *, start_after: str | None = None) -> Iterator[VersionInfo]:
        """Every version and delete marker under ``prefix`` (ListObjectVersions, paginated): key order, newest first."""
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix + prefix, "MaxKeys": 1000}
        if start_after is not None:
            kwargs["KeyMarker"] = self.prefix + start_after  # versions of keys after it (checked below as well)
        cut = len(self.prefix)
        while True:
            try:
                resp = self._client.list_object_versions(**kwargs)
            except Exception as exc:
                raise self._map(exc, "list versions", prefix or "/") from exc
            page = [(v, False) for v in resp.get("Versions", [])] + [(m, True) for m in resp.get("DeleteMarkers", [])]
            # botocore splits the server's one ordered list in two: merge back by key, then latest, then newest
            page.sort(key=lambda e: (e[0]["Key"], not e[0].get("IsLatest"), -_ts(e[0].get("LastModified"))))
            for v, marker in page:
                if start_after is not None and v["Key"][cut:] <= start_after:
                    continue
                yield VersionInfo(v["Key"][cut:], v["VersionId"], 0 if marker else int(v.get("Size", 0)),
                                  _ts(v.get("LastModified")) or None, marker, bool(v.get("IsLatest")))
            if not resp.get("IsTruncated"):
                return
            kwargs["KeyMarker"] = resp.get("NextKeyMarker")
            kwargs["VersionIdMarker"] = resp.get("NextVersionIdMarker")

    def delete_version(self, key: str, version_id: str) -> None:
        """Delete exactly one version (a delete marker's id removes the marker). A version under retention raises
        ``ObjectLocked``; a version that is already gone is not an error."""
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._k(key), VersionId=version_id)
        except Exception as exc:
            mapped = self._map(exc, f"delete version {version_id} of", key)
            if isinstance(mapped, ObjectNotFound):
                return
            if isinstance(mapped, AccessDenied):
                lock = self.retention(key, version_id=version_id)
                if lock is not None and lock.until > time.time():
                    raise ObjectLocked(
                        f"delete {key!r} in {self.location}: version {version_id} is under {lock.mode} Object Lock "
                        f"until {_utc(lock.until).isoformat(timespec='seconds')}; it cannot be deleted before then "
                        "(by design)"
                    ) from exc
            raise mapped from exc

    def blob_cipher(self) -> None:
        return None  # an adapter stores bytes as given; EncryptingStore provides the cipher

    # Object Lock ----------------------------------------------------------------------------------------------------
    def lock_policy(self) -> LockPolicy | None:
        return self._lock_policy

    def retention(self, key: str, *, version_id: str | None = None) -> Lock | None:
        """The Object Lock retention on ``key`` (its current version, or ``version_id``), None when it has none."""
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": self._k(key)}
        if version_id:
            args["VersionId"] = version_id
        try:
            resp = self._client.head_object(**args)
        except Exception as exc:
            raise self._map(exc, "head", key) from exc
        until = resp.get("ObjectLockRetainUntilDate")
        mode = resp.get("ObjectLockMode")
        hold = resp.get("ObjectLockLegalHoldStatus") == "ON"
        if until is None and not hold:
            return None
        return Lock(mode or "LEGAL_HOLD", until.timestamp() if until else float("inf"), legal_hold=hold)

    def extend_lock(self, key: str, until: float) -> bool:
        """Make ``key``'s retention last at least until ``until`` (epoch seconds). Returns False when it already did
        (a retention can be extended, never shortened)."""
        if not self._lock_policy:
            raise StorageError(f"{self.location} has no object_lock configured; nothing to extend")
        try:
            self._client.put_object_retention(
                Bucket=self.bucket, Key=self._k(key),
                Retention={"Mode": self._lock_policy.mode, "RetainUntilDate": _utc(until)},
            )
            return True
        except Exception as exc:
            mapped = self._map(exc, "extend lock of", key)
            if isinstance(mapped, AccessDenied):  # also what S3 answers to an attempt to shorten a retention
                current = self.retention(key)
                if current is not None and current.until >= until:
                    return False
            raise mapped from exc

    def bucket_protection(self) -> dict[str, Any]:
        """Versioning and Object Lock state of the bucket, as the server reports them."""
        out: dict[str, Any] = {"bucket": self.bucket, "versioning": "Disabled", "object_lock": False,
                               "default_retention": None}
        try:
            out["versioning"] = self._client.get_bucket_versioning(Bucket=self.bucket).get("Status") or "Disabled"
        except Exception as exc:
            raise self._map(exc, "get versioning of bucket", None) from exc
        try:
            conf = self._client.get_object_lock_configuration(Bucket=self.bucket).get("ObjectLockConfiguration", {})
        except Exception as exc:
            from botocore.exceptions import ClientError

            code = exc.response.get("Error", {}).get("Code") if isinstance(exc, ClientError) else None
            if code in ("ObjectLockConfigurationNotFoundError", "ObjectLockConfigurationNotFound"):
                return out
            raise self._map(exc, "get Object Lock configuration of bucket", None) from exc
        out["object_lock"] = conf.get("ObjectLockEnabled") == "Enabled"
        rule = (conf.get("Rule") or {}).get("DefaultRetention")
        if rule:
            days = rule.get("Days") or (rule.get("Years") or 0) * 365
            out["default_retention"] = {"mode": rule.get("Mode"), "days": days}
        return out

    def usage(self) -> dict[str, int]:
        """Bytes and objects stored under the prefix, every version counted (noncurrent versions and delete markers
        cost storage / requests too in a versioned bucket)."""
        out = {"current_bytes": 0, "current_objects": 0, "noncurrent_bytes": 0, "noncurrent_objects": 0,
               "delete_markers": 0}
        for v in self.list_versions():
            if v.is_delete_marker:
                out["delete_markers"] += 1
                continue
            which = "current" if v.is_latest else "noncurrent"
            out[f"{which}_bytes"] += v.size
            out[f"{which}_objects"] += 1
        return out

    # administration (used by the local stack and by checks) -----------------------------------------------------------
    def ensure_bucket(self, *, object_lock: bool = False) -> bool:
        """Create the bucket if it is missing (with Object Lock, hence versioning, when asked). Returns True when it was
        created. An existing bucket without Object Lock gets it where the server allows (AWS does on a versioned
        bucket); otherwise ``StorageError`` says what to do."""
        try:
            self._check_bucket()
        except BucketNotFound:
            args: dict[str, Any] = {"Bucket": self.bucket}
            if object_lock:
                args["ObjectLockEnabledForBucket"] = True
            try:
                self._client.create_bucket(**args)
            except Exception as exc:
                raise self._map(exc, "create bucket", None) from exc
            return True
        if object_lock and not self.bucket_protection()["object_lock"]:
            try:
                self._client.put_bucket_versioning(Bucket=self.bucket, VersioningConfiguration={"Status": "Enabled"})
                self._client.put_object_lock_configuration(
                    Bucket=self.bucket, ObjectLockConfiguration={"ObjectLockEnabled": "Enabled"})
            except Exception as exc:
                raise ObjectLockUnavailable(
                    f"bucket '{self.bucket}' at {self.where} exists without Object Lock and the "
                    f"server refused to enable it ({self._map(exc, 'enable Object Lock on bucket', None)}). Object Lock "
                    "can only be set when a bucket is created here: point the region at a new bucket (llmdr copies "
                    "the snapshots in on the next protect) or remove object_lock: from the region."
                ) from exc
        return False

    def check_access(self) -> None:
        """Fail fast, with a clear error, when the endpoint is unreachable, the bucket missing or the keys wrong."""
        try:
            self._client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)
        except Exception as exc:
            raise self._map(exc, "list", None) from exc


def _error_code(exc: Exception) -> str | None:
    """The S3 error code of a botocore ``ClientError`` (or its HTTP status as text), None for anything else."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    code = response.get("Error", {}).get("Code")
    return str(code or response.get("ResponseMetadata", {}).get("HTTPStatusCode") or "") or None


def _ts(when: datetime | None) -> float:
    return when.timestamp() if when else 0.0


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc)

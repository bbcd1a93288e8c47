"""Credential resolution: expiry from the environment / a Secret block, STS AssumeRole and GetCallerIdentity.

STS cannot run here, so moto stands in for it, in server mode on loopback (real HTTP, real SigV4 signing). With
moto's IAM authentication switched on, the assumed role's keys are checked for real, including by moto's S3.
"""

from __future__ import annotations

import http.server
import json
import socket
import threading
from datetime import datetime, timedelta, timezone

import pytest

from llmdr.config import parse_config
from llmdr.errors import AccessDenied, ConfigError, TransientStorageError, is_retriable
from llmdr.storage import credentials
from llmdr.storage.credentials import (
    Keys,
    caller_identity,
    clear_cache,
    expires_in,
    keys_from_block_value,
    resolve_keys,
)
from tests.support.config import two_region_yaml
from tests.support.moto import check_auth

ACCOUNT = "123456789012"  # moto's default account
ROLE = f"arn:aws:iam::{ACCOUNT}:role/llmdr"
BASE_AK = "AKIAEXAMPLEBASEKEY01"
BASE_SK = "base-secret-0123456789-must-never-show"
TOKEN = "session-token-abcdef-must-never-show"

def make_cfg(tmp_path, creds: str, endpoint: str = "http://127.0.0.1:9"):
    text = two_region_yaml(endpoint, 9, keys=("LLMDR_CT", "LLMDR_CT_S"), primary_credentials=creds,
                           primary_lines="    s3_region: eu-west-1", state_dir=tmp_path / "state")
    return parse_config(text, source=tmp_path / "llmdr.yaml")


def role_creds(sts: str, extra: str = "") -> str:
    return ("{access_key_env: LLMDR_CT_AK, secret_key_env: LLMDR_CT_SK, "
            f"role_arn: '{ROLE}', sts_endpoint: '{sts}'{extra}}}")


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()


@pytest.fixture
def base_env(monkeypatch):
    monkeypatch.setenv("LLMDR_CT_AK", BASE_AK)
    monkeypatch.setenv("LLMDR_CT_SK", BASE_SK)


def boto(moto_url: str, service: str, ak: str = BASE_AK, sk: str = BASE_SK):
    import boto3

    return boto3.client(service, endpoint_url=moto_url, region_name="eu-west-1", aws_access_key_id=ak,
                        aws_secret_access_key=sk)


@pytest.fixture
def count_assume_role(monkeypatch):
    calls: list[str] = []
    real = credentials._assume_role

    def counting(region, base):
        calls.append(region.name)
        return real(region, base)

    monkeypatch.setattr(credentials, "_assume_role", counting)
    return calls


# assume role ---------------------------------------------------------------------------------------------------------

def test_assume_role_returns_temporary_keys_with_expiry_and_caches_them(tmp_path, moto, base_env, count_assume_role):
    cfg = make_cfg(tmp_path, role_creds(moto))
    before = datetime.now(timezone.utc)
    keys = resolve_keys(cfg, cfg.primary)
    assert keys.access_key_id != BASE_AK and keys.secret_access_key != BASE_SK and keys.session_token
    assert keys.expiration is not None and keys.expiration.utcoffset() == timedelta(0)
    # moto returns Expiration = now + DurationSeconds (1h by default), to the second
    assert before + timedelta(hours=1) - timedelta(seconds=5) <= keys.expiration
    assert keys.expiration <= datetime.now(timezone.utc) + timedelta(hours=1, seconds=5)
    left = expires_in(keys)
    assert left is not None and timedelta(minutes=59) < left <= timedelta(hours=1, seconds=5)
    assert keys.source == f"role {ROLE} assumed with environment LLMDR_CT_AK/LLMDR_CT_SK"

    again = resolve_keys(cfg, cfg.primary)
    assert again == keys and count_assume_role == ["primary"]  # served from the cache

    ident = caller_identity(cfg, cfg.primary)
    assert ident["account"] == ACCOUNT
    assert ident["arn"] == f"arn:aws:sts::{ACCOUNT}:assumed-role/llmdr/llmdr-primary"
    assert ident["user_id"]
    assert count_assume_role == ["primary"]


def test_cached_keys_are_renewed_five_minutes_before_expiry(tmp_path, moto, base_env, count_assume_role, monkeypatch):
    cfg = make_cfg(tmp_path, role_creds(moto, ", session_duration: 15m"))
    keys = resolve_keys(cfg, cfg.primary)
    assert keys.expiration is not None
    assert timedelta(minutes=14) < expires_in(keys) <= timedelta(minutes=15, seconds=5)

    real_now = datetime.now(timezone.utc)
    monkeypatch.setattr(credentials, "_now", lambda: real_now + timedelta(minutes=9))
    assert resolve_keys(cfg, cfg.primary) == keys and len(count_assume_role) == 1  # 6 min left: still cached
    monkeypatch.setattr(credentials, "_now", lambda: real_now + timedelta(minutes=11))
    renewed = resolve_keys(cfg, cfg.primary)  # 4 min left: renewed
    assert len(count_assume_role) == 2 and renewed.expiration is not None

    clear_cache()
    resolve_keys(cfg, cfg.primary)
    assert len(count_assume_role) == 3


def test_concurrent_resolves_assume_the_role_once(tmp_path, moto, base_env, count_assume_role):
    cfg = make_cfg(tmp_path, role_creds(moto))
    results: list[Keys] = []
    threads = [threading.Thread(target=lambda: results.append(resolve_keys(cfg, cfg.primary))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and len(set(results)) == 1 and count_assume_role == ["primary"]


def test_session_name_fits_sts_limits(tmp_path):
    import re

    cfg = make_cfg(tmp_path, "{access_key_env: A, secret_key_env: B}")
    long = cfg.primary.model_copy(update={"name": "r" * 63})
    for region in (cfg.primary, long):
        name = credentials.session_name(region)
        assert re.fullmatch(r"[\w+=,.@-]{2,64}", name) and name.startswith("llmdr-")


def _iam_setup(moto_url: str) -> tuple[str, str]:
    """A user who may only assume the role; a role that may use S3; a bucket. Returns the user's keys."""
    iam = boto(moto_url, "iam")
    iam.create_user(UserName="deployer")
    iam.put_user_policy(UserName="deployer", PolicyName="assume", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": ["sts:AssumeRole", "sts:GetCallerIdentity"], "Resource": "*"}]}))
    key = iam.create_access_key(UserName="deployer")["AccessKey"]
    iam.create_role(RoleName="llmdr", AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:user/deployer"},
                       "Action": "sts:AssumeRole"}]}))
    iam.put_role_policy(RoleName="llmdr", PolicyName="s3", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    boto(moto_url, "s3").create_bucket(Bucket="llmdr-primary",
                                       CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    return key["AccessKeyId"], key["SecretAccessKey"]


def test_assumed_keys_work_for_s3_with_iam_auth_enforced(tmp_path, moto, monkeypatch):
    from llmdr.storage.factory import open_region

    ak, sk = _iam_setup(moto)
    check_auth(moto, on=True)
    monkeypatch.setenv("LLMDR_CT_AK", ak)
    monkeypatch.setenv("LLMDR_CT_SK", sk)

    cfg = make_cfg(tmp_path, role_creds(moto), endpoint=moto)
    store = open_region(cfg, cfg.primary)
    store.put("config.json", b"{}")
    assert store.get("config.json") == b"{}"
    assert caller_identity(cfg, cfg.primary)["arn"].endswith(":assumed-role/llmdr/llmdr-primary")

    # the same user without the role has no S3 permission: the put above really used the role's keys
    direct = make_cfg(tmp_path, "{access_key_env: LLMDR_CT_AK, secret_key_env: LLMDR_CT_SK, "
                                f"sts_endpoint: '{moto}'}}", endpoint=moto)
    assert caller_identity(direct, direct.primary)["arn"] == f"arn:aws:iam::{ACCOUNT}:user/deployer"
    with pytest.raises(AccessDenied):
        open_region(direct, direct.primary).put("x", b"y")

    # wrong base keys: STS refuses them, and the error names region, role and where the keys come from
    monkeypatch.setenv("LLMDR_CT_AK", BASE_AK)
    monkeypatch.setenv("LLMDR_CT_SK", BASE_SK)
    with pytest.raises(AccessDenied) as e:
        resolve_keys(cfg, cfg.primary)
    msg = str(e.value)
    assert "region 'primary'" in msg and ROLE in msg and "InvalidClientTokenId" in msg
    assert "LLMDR_CT_AK/LLMDR_CT_SK" in msg and "sts:AssumeRole" in msg
    assert BASE_AK not in msg and BASE_SK not in msg and not is_retriable(e.value)
    with pytest.raises(AccessDenied, match="InvalidClientTokenId"):
        caller_identity(direct, direct.primary)


class _StsDenies(http.server.BaseHTTPRequestHandler):
    body = (b"<ErrorResponse><Error><Type>Sender</Type><Code>ExpiredToken</Code>"
            b"<Message>The security token included in the request is expired</Message></Error>"
            b"<RequestId>1</RequestId></ErrorResponse>")

    def do_POST(self):  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(403)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


def test_expired_session_token_is_access_denied(tmp_path, monkeypatch, base_env):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StsDenies)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        monkeypatch.setenv("LLMDR_CT_TOKEN", TOKEN)
        cfg = make_cfg(tmp_path, role_creds(f"http://127.0.0.1:{server.server_address[1]}",
                                            ", session_token_env: LLMDR_CT_TOKEN"))
        with pytest.raises(AccessDenied, match="ExpiredToken.*security token included in the request is expired"):
            resolve_keys(cfg, cfg.primary)
    finally:
        server.shutdown()
        server.server_close()
        t.join()


def test_unreachable_sts_is_transient(tmp_path, base_env):
    with socket.socket() as s:  # a port nothing listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        cfg = make_cfg(tmp_path, role_creds(f"http://127.0.0.1:{port}"))
        with pytest.raises(TransientStorageError, match=f"cannot connect to http://127.0.0.1:{port}") as e:
            resolve_keys(cfg, cfg.primary)
        assert is_retriable(e.value)
        with pytest.raises(TransientStorageError):
            caller_identity(cfg, cfg.primary)


# expiry from the environment / a Secret block -------------------------------------------------------------------------

EXP_CREDS = ("{access_key_env: LLMDR_CT_AK, secret_key_env: LLMDR_CT_SK, session_token_env: LLMDR_CT_TOKEN, "
             "expiration_env: LLMDR_CT_EXP}")


def test_expiration_from_the_environment(tmp_path, monkeypatch, base_env):
    monkeypatch.setenv("LLMDR_CT_TOKEN", TOKEN)
    cfg = make_cfg(tmp_path, EXP_CREDS)
    when = (datetime.now(timezone.utc) + timedelta(hours=2)).replace(microsecond=0)
    monkeypatch.setenv("LLMDR_CT_EXP", when.isoformat())
    keys = resolve_keys(cfg, cfg.primary)
    assert keys.expiration == when and keys.expiration.utcoffset() == timedelta(0)
    assert keys.session_token == TOKEN
    assert keys.source == "environment LLMDR_CT_AK/LLMDR_CT_SK/LLMDR_CT_TOKEN/LLMDR_CT_EXP"
    assert timedelta(hours=1, minutes=59) < expires_in(keys) <= timedelta(hours=2)
    assert expires_in(keys, now=when + timedelta(minutes=1)) == timedelta(minutes=-1)

    monkeypatch.setenv("LLMDR_CT_EXP", "2026-05-01T12:00:00Z")
    assert resolve_keys(cfg, cfg.primary).expiration == datetime(2026, 5, 1, 12, tzinfo=timezone.utc)
    monkeypatch.setenv("LLMDR_CT_EXP", "2026-05-01T14:00:00+02:00")
    exp = resolve_keys(cfg, cfg.primary).expiration
    assert exp == datetime(2026, 5, 1, 12, tzinfo=timezone.utc) and exp.tzinfo == timezone.utc

    monkeypatch.setenv("LLMDR_CT_EXP", "2026-13-45")
    with pytest.raises(ConfigError, match=r"LLMDR_CT_EXP: '2026-13-45' is not an ISO-8601 time; expected e\.g\. 20"):
        resolve_keys(cfg, cfg.primary)

    monkeypatch.delenv("LLMDR_CT_EXP")
    assert resolve_keys(cfg, cfg.primary).expiration is None
    assert expires_in(resolve_keys(cfg, cfg.primary)) is None


def test_expiration_from_the_local_env_file(tmp_path, monkeypatch):
    from llmdr.storage.credentials import LOCAL_ENV, write_env_file

    for name in ("LLMDR_CT_AK", "LLMDR_CT_SK", "LLMDR_CT_TOKEN", "LLMDR_CT_EXP"):
        monkeypatch.delenv(name, raising=False)
    cfg = make_cfg(tmp_path, EXP_CREDS)
    cfg.state_path.mkdir(parents=True, exist_ok=True)
    write_env_file(cfg.state_path / LOCAL_ENV, {"LLMDR_CT_AK": BASE_AK, "LLMDR_CT_SK": BASE_SK,
                                                "LLMDR_CT_EXP": "2030-01-02T03:04:05Z"})
    monkeypatch.setenv("LLMDR_CT_AK", "AKIAFROMTHEENVIRONMENT")
    keys = resolve_keys(cfg, cfg.primary)
    assert keys.access_key_id == "AKIAFROMTHEENVIRONMENT"  # the environment wins over the file
    assert keys.expiration == datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert keys.source == f"environment and {cfg.state_path / LOCAL_ENV} LLMDR_CT_AK/LLMDR_CT_SK/LLMDR_CT_EXP"


def test_expiration_from_a_secret_block_value(tmp_path):
    cfg = make_cfg(tmp_path, "{prefect_secret_block: llmdr-keys}")
    value = {"access_key_id": BASE_AK, "secret_access_key": BASE_SK, "session_token": TOKEN,
             "expiration": "2030-01-02T03:04:05+01:00"}
    keys = keys_from_block_value(cfg.primary, "llmdr-keys", value)
    assert keys.expiration == datetime(2030, 1, 2, 2, 4, 5, tzinfo=timezone.utc)
    assert keys.source == "Prefect Secret block 'llmdr-keys'" and keys.session_token == TOKEN
    no_exp = keys_from_block_value(cfg.primary, "llmdr-keys", {"access_key_id": "a", "secret_access_key": "b"})
    assert no_exp.expiration is None
    with pytest.raises(ConfigError, match="field 'expiration' of Prefect Secret block 'llmdr-keys'.*ISO-8601"):
        keys_from_block_value(cfg.primary, "llmdr-keys", {**value, "expiration": "next tuesday"})


# secrets never leak ---------------------------------------------------------------------------------------------------

def test_secrets_never_appear_in_repr_source_or_errors(tmp_path, monkeypatch, moto, base_env):
    monkeypatch.setenv("LLMDR_CT_TOKEN", TOKEN)
    monkeypatch.setenv("LLMDR_CT_EXP", "2030-01-01T00:00:00Z")
    plain_cfg = make_cfg(tmp_path, EXP_CREDS)
    role_cfg = make_cfg(tmp_path, role_creds(moto, ", session_token_env: LLMDR_CT_TOKEN"))
    plain, assumed = resolve_keys(plain_cfg, plain_cfg.primary), resolve_keys(role_cfg, role_cfg.primary)
    assert repr(plain).startswith("Keys(access_key_id=AKIA…")
    for k in (plain, assumed):
        assert k.access_key_id not in repr(k) + k.source
        assert k.secret_access_key not in repr(k) + k.source
        assert k.session_token and k.session_token not in repr(k) + k.source
    shown = [repr(plain), plain.source, repr(assumed), assumed.source]

    monkeypatch.setenv("LLMDR_CT_EXP", BASE_SK)  # a secret pasted into the wrong variable
    with pytest.raises(ConfigError, match="LLMDR_CT_EXP: the value \\(not shown\\) is not an ISO-8601 time") as e:
        resolve_keys(plain_cfg, plain_cfg.primary)
    shown.append(str(e.value))
    monkeypatch.setenv("LLMDR_CT_EXP", "2030-01-01T00:00:00Z")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = make_cfg(tmp_path, role_creds(f"http://127.0.0.1:{s.getsockname()[1]}",
                                               ", session_token_env: LLMDR_CT_TOKEN"))
        with pytest.raises(TransientStorageError) as e:
            resolve_keys(closed, closed.primary)
        shown.append(str(e.value))
    for text in shown:
        for secret in (BASE_AK, BASE_SK, TOKEN):
            assert secret not in text

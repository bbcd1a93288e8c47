"""AWS conventions (#17): the default credential chain, effective endpoints, addressing style.

Real parts: the session's SeaweedFS regions (``stack``) reached through a shared credentials file + AWS_PROFILE by
the real CLI; botocore's own chain and endpoint resolution; STS (AssumeRoleWithWebIdentity, AssumeRole,
GetCallerIdentity) from a moto server on loopback (real HTTP; STS cannot run here). Every test clears llmdr's
cached sessions and keys so one test's AWS_* variables never leak into the next.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from llmdr.config import parse_config
from llmdr.drill.readiness import check_separation
from llmdr.errors import AccessDenied, BucketNotFound, ConfigError
from llmdr.storage.aws import effective_endpoint
from llmdr.storage.credentials import caller_identity, clear_cache, resolve_keys
from llmdr.storage.factory import adapter, open_region
from tests.support.config import config_yaml, fresh_prefix
from tests.support.moto import check_auth

ACCOUNT = "123456789012"  # moto's default account
ROLE = f"arn:aws:iam::{ACCOUNT}:role/llmdr"
# every variable botocore's chain or endpoint resolution reads that a test could inherit from the machine
CHAIN_VARS = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
              "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_STS", "AWS_WEB_IDENTITY_TOKEN_FILE",
              "AWS_ROLE_ARN", "AWS_ROLE_SESSION_NAME", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
              "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")


@pytest.fixture(autouse=True)
def aws_env(monkeypatch, tmp_path):
    """No AWS_* credentials or endpoints from the machine; shared files that do not exist yet; no IMDS probe."""
    for var in CHAIN_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws" / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws" / "config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    clear_cache()
    yield monkeypatch
    clear_cache()


def write_profiles(tmp_path, profiles: dict[str, tuple[str, str]], config: str = "") -> None:
    (tmp_path / "aws").mkdir(exist_ok=True)
    (tmp_path / "aws" / "credentials").write_text("".join(
        f"[{name}]\naws_access_key_id = {ak}\naws_secret_access_key = {sk}\n" for name, (ak, sk) in profiles.items()))
    (tmp_path / "aws" / "config").write_text(config)


def region(name: str, role: str, bucket: str, *, endpoint: str | None = None, credentials: str | None = None,
           lines: str = "") -> str:
    out = f"  - name: {name}\n    role: {role}\n    bucket: {bucket}\n"
    out += f"    endpoint: {endpoint}\n" if endpoint else ""
    out += f"    credentials: {credentials}\n" if credentials else ""
    return out + "".join(f"    {line}\n" for line in lines.splitlines() if line.strip())


def config(tmp_path, *regions: str, name: str = "llmdr.yaml", extra: str = ""):
    text = config_yaml(regions, bundle="{name: awsbot, path: bundle}", extra=extra, state_dir=tmp_path / "state")
    path = tmp_path / name
    path.write_text(text)
    return parse_config(text, source=path)


def aws_pair(tmp_path, **kw):
    """Two AWS S3 regions (no endpoint in llmdr.yaml), credentials from the default chain."""
    return config(tmp_path, region("use1", "primary", "llmdr-use1", lines="s3_region: us-east-1"),
                  region("euw1", "secondary", "llmdr-euw1", lines="s3_region: eu-west-1"), **kw)


# --- the default chain: a profile from the shared files, against the real SeaweedFS ----------------------------------
@pytest.mark.s3
def test_snapshot_and_list_through_aws_profile_with_no_llmdr_key_variables(stack, tmp_path, aws_env):
    p, s = stack.primary, stack.secondaries[0]
    pk, sk = resolve_keys(stack, p), resolve_keys(stack, s)  # the running servers' keys, from the stack's local.env
    write_profiles(tmp_path, {"llmdr-dr": (pk.access_key_id, pk.secret_access_key),
                              "llmdr-secondary": (sk.access_key_id, sk.secret_access_key)},
                   config="[profile llmdr-dr]\nregion = us-east-1\n")
    prefix = fresh_prefix()
    # primary: no credentials: at all (AWS_PROFILE); secondary: its own profile, so the two never share keys
    cfg = config(tmp_path, region("primary", "primary", p.bucket, endpoint=p.endpoint, lines=f"prefix: {prefix}"),
                 region("secondary", "secondary", s.bucket, endpoint=s.endpoint,
                        credentials="{profile: llmdr-secondary}", lines=f"prefix: {prefix}"))
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "weights.bin").write_bytes(os.urandom(50_000))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMDR_")}  # no llmdr key variable anywhere
    env |= {"AWS_PROFILE": "llmdr-dr", "LLMDR_CONFIG": ""}
    assert not (cfg.state_path / "local.env").exists()

    def llmdr(*args):
        return subprocess.run([sys.executable, "-m", "llmdr.cli", "--config", str(cfg.source_file), *args],
                              capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)

    snap = llmdr("snapshot", "--json")
    assert snap.returncode == 0, snap.stderr
    sid = json.loads(snap.stdout)["snapshot_id"]
    listed = llmdr("snapshots", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [row["id"] for row in json.loads(listed.stdout)] == [sid]
    assert pk.secret_access_key not in snap.stdout + snap.stderr + listed.stdout + listed.stderr

    aws_env.setenv("AWS_PROFILE", "llmdr-dr")
    keys = resolve_keys(cfg, cfg.primary)
    assert keys.access_key_id == pk.access_key_id
    assert keys.source == "AWS default chain: shared credentials file, profile 'llmdr-dr'"
    assert resolve_keys(cfg, cfg.secondaries[0]).access_key_id == sk.access_key_id  # its own profile, not AWS_PROFILE
    assert adapter(cfg, cfg.primary).endpoint.addressing_style == "path"


def test_explicit_key_variables_never_fall_back_to_the_chain(tmp_path, aws_env):
    write_profiles(tmp_path, {"default": ("AKIAPROFILEKEY000001", "profile-secret")})
    aws_env.setenv("AWS_PROFILE", "default")
    aws_env.setenv("AWS_ACCESS_KEY_ID", "AKIAENVKEY0000000001")
    aws_env.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    aws_env.delenv("LLMDR_NOPE_AK", raising=False)
    cfg = config(tmp_path, region("primary", "primary", "llmdr-a", lines="s3_region: us-east-1",
                                  credentials="{access_key_env: LLMDR_NOPE_AK, secret_key_env: LLMDR_NOPE_SK}"),
                 region("secondary", "secondary", "llmdr-b", lines="s3_region: eu-west-1"))
    with pytest.raises(AccessDenied, match="credentials not set: environment variable.*LLMDR_NOPE_AK"):
        resolve_keys(cfg, cfg.primary)
    # the secondary names nothing: the chain, environment first (botocore's order)
    assert resolve_keys(cfg, cfg.secondaries[0]).source == ("AWS default chain: environment "
                                                             "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")


def test_chain_errors_say_what_and_where(tmp_path, aws_env):
    cfg = aws_pair(tmp_path)
    with pytest.raises(AccessDenied, match="region 'use1': no credentials found.*AWS_PROFILE"):
        resolve_keys(cfg, cfg.primary)
    aws_env.setenv("AWS_PROFILE", "nosuch")
    write_profiles(tmp_path, {"other": ("AKIAOTHER00000000001", "x")})
    with pytest.raises(ConfigError, match="AWS profile 'nosuch' \\(from AWS_PROFILE\\) is not defined in "
                                          "AWS_CONFIG_FILE="):
        resolve_keys(cfg, cfg.primary)
    aws_env.delenv("AWS_PROFILE")
    aws_env.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(tmp_path / "missing-token"))
    aws_env.setenv("AWS_ROLE_ARN", ROLE)
    with pytest.raises(AccessDenied, match="default credential chain failed.*AWS_WEB_IDENTITY_TOKEN_FILE"):
        resolve_keys(cfg, cfg.primary)


@pytest.mark.parametrize("creds, message", [
    ("{access_key_env: A_AK}", "name both access_key_env and secret_key_env"),
    ("{profile: p, access_key_env: A_AK, secret_key_env: A_SK}", "profile is for the AWS default credential chain"),
    ("{profile: 'two words'}", "is not an AWS profile name"),
    ("{session_token_env: AWS_SESSION_TOKEN}", "the AWS default chain finds the session token"),
    ("{role_arn: 'arn:aws:iam::1:role/x'}", "is not an IAM role ARN"),
])
def test_bad_credentials_sections_are_refused(tmp_path, creds, message):
    with pytest.raises(ConfigError, match=message):
        config(tmp_path, region("primary", "primary", "llmdr-a", credentials=creds, lines="s3_region: us-east-1"),
               region("secondary", "secondary", "llmdr-b", lines="s3_region: eu-west-1"))


def test_bad_addressing_style_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="addressing_style"):
        config(tmp_path, region("primary", "primary", "llmdr-a", lines="addressing_style: dns"),
               region("secondary", "secondary", "llmdr-b", lines="s3_region: eu-west-1"))


# --- STS through moto: web identity (IRSA) and role_arn on top of a profile -------------------------------------------
def test_web_identity_keys_come_from_sts(tmp_path, aws_env, moto):
    token = tmp_path / "token"
    token.write_text("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6bGxtZHI6ZHIifQ.c2ln")
    aws_env.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token))  # what EKS IRSA sets in the pod
    aws_env.setenv("AWS_ROLE_ARN", ROLE)
    aws_env.setenv("AWS_ROLE_SESSION_NAME", "llmdr-irsa")
    aws_env.setenv("AWS_ENDPOINT_URL_STS", moto)  # botocore's own endpoint variable: STS is moto here
    cfg = aws_pair(tmp_path)
    keys = resolve_keys(cfg, cfg.primary)
    assert keys.source == "AWS default chain: web identity (STS AssumeRoleWithWebIdentity)"
    assert keys.access_key_id.startswith("ASIA") and keys.session_token and keys.expiration is not None
    # STS knows these keys as the role's session: they came from AssumeRoleWithWebIdentity
    ident = caller_identity(cfg, cfg.primary)
    assert ident["arn"] == f"arn:aws:sts::{ACCOUNT}:assumed-role/llmdr/llmdr-irsa"


def test_a_store_on_the_chain_signs_with_credentials_botocore_renews(tmp_path, aws_env, moto):
    """Web-identity keys last about an hour: a store must sign with the session's self-refreshing credentials, not
    with a copy frozen when it was built, or a transfer longer than that fails half-way."""
    from botocore.credentials import RefreshableCredentials

    from llmdr.storage.factory import region_s3

    token = tmp_path / "token"
    token.write_text("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6bGxtZHI6ZHIifQ.c2ln")
    aws_env.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token))
    aws_env.setenv("AWS_ROLE_ARN", ROLE)
    aws_env.setenv("AWS_ENDPOINT_URL_STS", moto)
    cfg = aws_pair(tmp_path)
    store = region_s3(cfg.primary, resolve_keys(cfg, cfg.primary))
    assert isinstance(store._client._request_signer._credentials, RefreshableCredentials)


def test_role_arn_on_top_of_a_profile_without_static_keys_in_llmdr_yaml(tmp_path, aws_env, moto):
    import boto3

    iam = boto3.client("iam", endpoint_url=moto, region_name="us-east-1", aws_access_key_id="AKIASETUP00000000001",
                       aws_secret_access_key="setup")
    iam.create_user(UserName="deployer")
    iam.put_user_policy(UserName="deployer", PolicyName="assume", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": ["sts:AssumeRole", "sts:GetCallerIdentity"], "Resource": "*"}]}))
    key = iam.create_access_key(UserName="deployer")["AccessKey"]
    iam.create_role(RoleName="llmdr", AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:user/deployer"}}]}))
    write_profiles(tmp_path, {"deployer": (key["AccessKeyId"], key["SecretAccessKey"]),
                              "stranger": ("AKIASTRANGER00000001", "nope")})
    check_auth(moto, on=True)
    creds = f"{{profile: deployer, role_arn: '{ROLE}', sts_endpoint: '{moto}'}}"
    cfg = config(tmp_path, region("primary", "primary", "llmdr-a", credentials=creds, lines="s3_region: us-east-1"),
                 region("secondary", "secondary", "llmdr-b", lines="s3_region: eu-west-1"))
    aws_env.setenv("AWS_PROFILE", "stranger")  # the region's own profile wins over AWS_PROFILE
    keys = resolve_keys(cfg, cfg.primary)
    assert keys.source == f"role {ROLE} assumed with AWS default chain: shared credentials file, profile 'deployer'"
    assert keys.access_key_id != key["AccessKeyId"] and keys.expiration is not None
    assert caller_identity(cfg, cfg.primary)["arn"] == f"arn:aws:sts::{ACCOUNT}:assumed-role/llmdr/llmdr-primary"



def test_role_arn_keys_are_renewed_by_the_client_before_they_expire(tmp_path, aws_env, moto, monkeypatch):
    """An assumed role's keys last ``session_duration`` (here STS's minimum, 15 min: inside botocore's renewal window
    at once). The store's client renews them itself through STS, so a transfer longer than the role's session keeps
    signing with live keys; before, the store signed with the keys it was built with until they expired."""
    import boto3
    from botocore.credentials import RefreshableCredentials

    from llmdr.storage import credentials as creds_mod

    boto3.client("s3", endpoint_url=moto, region_name="us-east-1", aws_access_key_id="AKIASETUP00000000001",
                 aws_secret_access_key="setup").create_bucket(Bucket="llmdr-renew")
    write_profiles(tmp_path, {"deployer": ("AKIADEPLOYER00000001", "deployer-secret")})
    creds = f"{{profile: deployer, role_arn: '{ROLE}', sts_endpoint: '{moto}', session_duration: 15m}}"
    cfg = config(tmp_path, region("primary", "primary", "llmdr-renew", endpoint=moto, credentials=creds,
                                  lines="s3_region: us-east-1"),
                 region("secondary", "secondary", "llmdr-b", lines="s3_region: eu-west-1"))
    assumed = []
    real = creds_mod._assume_role
    monkeypatch.setattr(creds_mod, "_assume_role", lambda *a: assumed.append(real(*a)) or assumed[-1])
    store = adapter(cfg, cfg.primary)
    signer = store._client._request_signer._credentials
    assert isinstance(signer, RefreshableCredentials) and len(assumed) == 1
    store.put("renewed", b"payload")
    assert store.get("renewed") == b"payload"
    assert len(assumed) >= 2, "the client never asked STS for fresh keys"
    assert signer.get_frozen_credentials().access_key == assumed[-1].access_key_id != assumed[0].access_key_id

# --- effective endpoints ---------------------------------------------------------------------------------------------
def test_aws_endpoint_url_s3_making_both_regions_one_store_fails_separation(tmp_path, aws_env):
    cfg = aws_pair(tmp_path)
    (ok,) = check_separation(cfg)
    assert ok.status == "PASS" and "https://s3.eu-west-1.amazonaws.com (AWS eu-west-1)" in ok.summary
    aws_env.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    (c,) = check_separation(cfg)
    assert c.status == "FAIL"
    assert c.summary == ("same endpoint http://127.0.0.1:9 (buckets llmdr-use1 and llmdr-euw1): AWS_ENDPOINT_URL_S3 "
                         "sends both regions there (llmdr.yaml names no endpoint for them)")
    assert "unset AWS_ENDPOINT_URL_S3" in c.action
    assert c.data["endpoint_sources"] == ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_S3"]
    # one region moved by the environment, the other named in llmdr.yaml: apart, but not where the file says
    moved = config(tmp_path, region("use1", "primary", "llmdr-use1", lines="s3_region: us-east-1"),
                   region("euw1", "secondary", "llmdr-euw1", endpoint="https://s3.example.net"), name="moved.yaml")
    (w,) = check_separation(moved)
    assert w.status == "WARN" and "use1's endpoint http://127.0.0.1:9 is set by AWS_ENDPOINT_URL_S3" in w.summary


def test_a_profiles_endpoint_url_is_found_and_named(tmp_path, aws_env):
    write_profiles(tmp_path, {"minio": ("AKIAMINIO00000000001", "x")},
                   config="[profile minio]\nendpoint_url = http://127.0.0.1:9000\n")
    aws_env.setenv("AWS_PROFILE", "minio")
    (c,) = check_separation(aws_pair(tmp_path))
    assert c.status == "FAIL" and "http://127.0.0.1:9000" in c.summary
    assert "profile 'minio' in the AWS config file" in c.summary


def test_readiness_cli_fails_on_an_endpoint_from_the_environment(tmp_path):
    cfg = aws_pair(tmp_path)
    env = {**os.environ, "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "LLMDR_CONFIG": ""}
    r = subprocess.run([sys.executable, "-m", "llmdr.cli", "--config", str(cfg.source_file), "readiness", "--only",
                        "separation"], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 9, r.stdout + r.stderr
    assert "same endpoint http://127.0.0.1:9" in r.stdout and "AWS_ENDPOINT_URL sends" in r.stdout


@pytest.mark.s3
def test_region_without_endpoint_reaches_seaweedfs_via_aws_endpoint_url_s3_and_says_so(stack, tmp_path, aws_env):
    p = stack.primary
    keys = resolve_keys(stack, p)
    aws_env.setenv("LLMDR_AWSC_AK", keys.access_key_id)
    aws_env.setenv("LLMDR_AWSC_SK", keys.secret_access_key)
    aws_env.setenv("AWS_ENDPOINT_URL_S3", p.endpoint)
    write_profiles(tmp_path, {"stranger": ("AKIASTRANGER00000001", "not-the-servers-secret")})
    named = "{access_key_env: LLMDR_AWSC_AK, secret_key_env: LLMDR_AWSC_SK}"
    cfg = config(tmp_path, region("primary", "primary", p.bucket, credentials=named,
                                  lines=f"prefix: {fresh_prefix()}\ns3_region: us-east-1"),
                 region("secondary", "secondary", "llmdr-no-such-bucket", credentials=named,
                        lines="s3_region: eu-west-1"),
                 region("stranger", "secondary", p.bucket, credentials="{profile: stranger}",
                        lines="s3_region: us-west-2"))
    store = open_region(cfg, cfg.primary)
    store.put("probe", b"through the environment's endpoint")  # path-style: a custom endpoint, though no endpoint:
    assert store.get("probe") == b"through the environment's endpoint"
    want = f"{p.endpoint} (set by AWS_ENDPOINT_URL_S3, not llmdr.yaml)"
    assert adapter(cfg, cfg.primary).location.endswith(f"at {want}")
    with pytest.raises(BucketNotFound, match=r"bucket 'llmdr-no-such-bucket' does not exist at " + want.replace(
            "(", r"\(").replace(")", r"\)")):
        adapter(cfg, cfg.secondaries[0]).check_access()
    with pytest.raises(AccessDenied) as denied:  # the message names the effective endpoint and where the keys came from
        adapter(cfg, cfg.secondaries[1]).check_access()
    assert want in str(denied.value) and "(AWS default chain: shared credentials file, profile 'stranger'; see " \
        "credentials: in llmdr.yaml)" in str(denied.value)


# --- addressing style ------------------------------------------------------------------------------------------------
class Sent(Exception):
    pass


def first_request_url(store) -> str:
    """The URL of the store's first request, caught before it leaves the machine."""
    urls: list[str] = []

    def stop(request, **_):
        urls.append(request.url)
        raise Sent

    store._client.meta.events.register("before-send.s3", stop)
    with pytest.raises(Sent):
        store.check_access()
    return urls[0]


@pytest.mark.parametrize("lines, host_and_path", [
    ("s3_region: eu-west-1", "https://llmdr-use1.s3.eu-west-1.amazonaws.com/?list-type=2"),
    ("s3_region: eu-west-1\naddressing_style: path", "https://s3.eu-west-1.amazonaws.com/llmdr-use1?list-type=2"),
    ("endpoint: http://127.0.0.1:9", "http://127.0.0.1:9/llmdr-use1?list-type=2"),
    ("endpoint: http://minio.internal:9000", "http://minio.internal:9000/llmdr-use1?list-type=2"),
    ("endpoint: https://s3.example.net\naddressing_style: virtual", "https://llmdr-use1.s3.example.net/?list-type=2"),
])
def test_addressing_is_virtual_for_aws_and_path_for_custom_endpoints(tmp_path, aws_env, lines, host_and_path):
    aws_env.setenv("AWS_ACCESS_KEY_ID", "AKIAADDRESSING000001")
    aws_env.setenv("AWS_SECRET_ACCESS_KEY", "x")
    cfg = config(tmp_path, region("primary", "primary", "llmdr-use1", lines=lines),
                 region("secondary", "secondary", "llmdr-euw1", lines="s3_region: us-west-2"))
    assert first_request_url(adapter(cfg, cfg.primary)).startswith(host_and_path)


def test_effective_endpoint_asks_botocore(aws_env):
    assert effective_endpoint(None, "eu-west-1").url == "https://s3.eu-west-1.amazonaws.com"
    aws_env.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:7")
    ep = effective_endpoint(None, "eu-west-1")
    assert (ep.url, ep.source, ep.addressing_style) == ("http://127.0.0.1:7", "AWS_ENDPOINT_URL", "path")
    aws_env.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:8")  # the service-specific one wins, as in botocore
    assert effective_endpoint(None, "eu-west-1").source == "AWS_ENDPOINT_URL_S3"
    assert effective_endpoint("http://127.0.0.1:1", "eu-west-1").url == "http://127.0.0.1:1"  # llmdr.yaml wins


def test_runbook_names_the_default_chain_and_each_regions_profile(tmp_path):
    from llmdr.drill.runbook import render_runbook

    cfg = config(tmp_path, region("use1", "primary", "llmdr-use1", lines="s3_region: us-east-1"),
                 region("euw1", "secondary", "llmdr-euw1", credentials="{profile: dr-account}",
                        lines="s3_region: eu-west-1"))
    md = render_runbook(cfg, drills=[])
    line = next(x for x in md.splitlines() if x.startswith("- **euw1** storage:"))
    assert "the AWS default credential chain with profile `dr-account`" in line and "None" not in md
    assert "- **use1** storage: the AWS default credential chain (`AWS_PROFILE`" in md

from datetime import timedelta
from pathlib import Path

import pytest

from llmdr.config import load_config, parse_config, parse_duration
from llmdr.errors import ConfigError
from llmdr.initconfig import render_config

GOOD = """\
version: 1
bundle:
  name: support-bot
  path: ./bundle
regions:
  - name: primary
    role: primary
    endpoint: http://127.0.0.1:18333
    bucket: llmdr-primary
    credentials: {access_key_env: P_AK, secret_key_env: P_SK}
  - name: secondary
    role: secondary
    endpoint: http://127.0.0.1:28333
    bucket: llmdr-secondary
    credentials: {access_key_env: S_AK, secret_key_env: S_SK}
objectives:
  rpo: 5m
  rto: 1h30m
  drill_interval: 90d
"""


def parse(text: str):
    return parse_config(text, source=Path("llmdr.yaml"))


def test_good_config_loads():
    cfg = parse(GOOD)
    assert cfg.primary.name == "primary"
    assert [r.name for r in cfg.secondaries] == ["secondary"]
    assert cfg.objectives.rto == timedelta(hours=1, minutes=30)
    assert cfg.objectives.drill_interval == timedelta(days=90)


def test_init_template_is_valid(tmp_path):
    (tmp_path / "b").mkdir()
    text = render_config(tmp_path / "b", name=None, config_path=tmp_path / "llmdr.yaml", primary_port=1000,
                         secondary_port=2000)
    cfg = parse_config(text, source=tmp_path / "llmdr.yaml")
    assert cfg.bundle.path == "b" and cfg.bundle.name == "b"
    assert all(r.is_local for r in cfg.regions)


def test_missing_file_says_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="llmdr init"):
        load_config(tmp_path / "nope.yaml")


def test_yaml_syntax_error_has_line():
    with pytest.raises(ConfigError, match=r"llmdr.yaml:3:1: not valid YAML"):
        parse("version: 1\nbundle:\n\tname: x\n")


def test_missing_key_named_with_line():
    text = GOOD.replace("    bucket: llmdr-secondary\n", "")
    with pytest.raises(ConfigError) as e:
        parse(text)
    assert "regions[1].bucket" in str(e.value) and "Field required" in str(e.value)


def test_unknown_key_named_with_line():
    text = GOOD.replace("  rpo: 5m", "  rpo: 5m\n  rpoo: 3m")
    with pytest.raises(ConfigError) as e:
        parse(text)
    assert "objectives.rpoo (line 18)" in str(e.value) and "unknown key" in str(e.value)


def test_bad_duration():
    with pytest.raises(ConfigError, match=r"objectives.rto .*not a duration"):
        parse(GOOD.replace("rto: 1h30m", "rto: soon"))


def test_same_region_name_refused():
    with pytest.raises(ConfigError, match="unique"):
        parse(GOOD.replace("name: secondary", "name: primary"))


def test_same_endpoint_and_bucket_refused():
    text = GOOD.replace("http://127.0.0.1:28333", "http://127.0.0.1:18333").replace("llmdr-secondary", "llmdr-primary")
    with pytest.raises(ConfigError, match="same endpoint and bucket"):
        parse(text)


def test_same_aws_region_refused():
    text = GOOD.replace("    endpoint: http://127.0.0.1:18333\n", "    s3_region: eu-west-1\n").replace(
        "    endpoint: http://127.0.0.1:28333\n", "    s3_region: eu-west-1\n")
    with pytest.raises(ConfigError, match="same AWS region"):
        parse(text)


def test_two_primaries_refused():
    with pytest.raises(ConfigError, match="exactly one region"):
        parse(GOOD.replace("role: secondary", "role: primary"))


@pytest.mark.parametrize("key", ["secret_access_key", "aws_secret_access_key", "access_key_id", "password"])
def test_literal_secret_refused(key):
    text = GOOD.replace("credentials: {access_key_env: P_AK, secret_key_env: P_SK}",
                        f"credentials: {{{key}: hunter2}}")
    with pytest.raises(ConfigError, match="literal secrets are not allowed") as e:
        parse(text)
    assert "hunter2" not in str(e.value)


def test_credentials_need_both_variables():
    with pytest.raises(ConfigError, match="secret_key_env"):
        parse(GOOD.replace("{access_key_env: P_AK, secret_key_env: P_SK}", "{access_key_env: P_AK}"))


def test_local_region_must_be_loopback():
    text = GOOD.replace("    credentials: {access_key_env: P_AK, secret_key_env: P_SK}\n",
                        "    credentials: {access_key_env: P_AK, secret_key_env: P_SK}\n    local: {}\n").replace(
        "http://127.0.0.1:18333", "http://10.0.0.5:18333")
    with pytest.raises(ConfigError, match="loopback"):
        parse(text)


@pytest.mark.parametrize("text,expected", [("5m", 300), ("90d", 90 * 86400), ("1h30m", 5400), (45, 45), ("30s", 30)])
def test_parse_duration(text, expected):
    assert parse_duration(text).total_seconds() == expected

from datetime import timedelta
from pathlib import Path

import pytest

from llmdr.config import load_config, parse_config, parse_duration
from llmdr.errors import ConfigError
from llmdr.repo.scaffold import render_config

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


def test_yaml_error_names_the_character():
    # libyaml parses a good file; a bad one is parsed again by PyYAML's own loader, whose message names the tab
    with pytest.raises(ConfigError, match=r"llmdr.yaml:3:1: not valid YAML \(found character '\\t'"):
        parse("version: 1\nbundle:\n\tname: x\n")


def test_anchors_and_aliases_load():
    text = GOOD.replace("    credentials: {access_key_env: P_AK, secret_key_env: P_SK}",
                        "    credentials: &keys {access_key_env: P_AK, secret_key_env: P_SK}")
    text = text.replace("    credentials: {access_key_env: S_AK, secret_key_env: S_SK}", "    credentials: *keys")
    cfg = parse(text)
    assert cfg.regions[1].credentials.access_key_env == "P_AK"


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



# --- serving, router, monitor, failover ------------------------------------------------------------------------------
SERVED = """\
version: 1
bundle: {name: support-bot, path: ./bundle}
regions:
  - name: primary
    role: primary
    endpoint: http://127.0.0.1:18333
    bucket: llmdr-primary
    credentials: {access_key_env: P_AK, secret_key_env: P_SK}
    local: {}
    serving: {url: 'http://127.0.0.1:18350'}
  - name: secondary
    role: secondary
    endpoint: http://127.0.0.1:18433
    bucket: llmdr-secondary
    credentials: {access_key_env: S_AK, secret_key_env: S_SK}
    local: {}
    serving: {url: 'http://127.0.0.1:18450', warm: false, command: 'vllm serve {model_dir} --port {port}'}
router: {kind: caddy, listen: 'http://127.0.0.1:18300', admin: 'http://127.0.0.1:18301'}
"""


def test_serving_sections_load():
    cfg = parse(SERVED + "monitor: {interval: 1s, down_after: 2}\nfailover: {target: secondary}\n")
    p, s = cfg.primary.serving, cfg.secondaries[0].serving
    assert (p.host, p.port, p.warm, p.command) == ("127.0.0.1", 18350, True, None)
    assert (s.port, s.warm, s.command) == (18450, False, "vllm serve {model_dir} --port {port}")
    assert cfg.router.kind == "caddy" and cfg.router.url == "http://127.0.0.1:18300"
    assert cfg.monitor.interval == timedelta(seconds=1) and cfg.monitor.down_after == 2
    assert cfg.failover_target().name == "secondary"


@pytest.mark.parametrize("target,expected", [
    ("mars", r"failover.target 'mars' is not a region name \(primary, secondary\)"),
    ("primary", "failover.target must be a secondary region, not the primary"),
])
def test_failover_target_must_be_a_secondary(target, expected):
    with pytest.raises(ConfigError, match=expected):
        parse(SERVED + f"failover: {{target: {target}}}\n")


def test_two_regions_sharing_a_serving_url_refused():
    with pytest.raises(ConfigError, match="two regions share a serving url"):
        parse(SERVED.replace("http://127.0.0.1:18450", "http://127.0.0.1:18350"))


@pytest.mark.parametrize("old,new,message", [
    ("listen: 'http://127.0.0.1:18300'", "listen: 'http://127.0.0.1:18334'",
     "the router wants port 18334, already used by primary"),  # the primary's S3 port + 1
    ("admin: 'http://127.0.0.1:18301'", "admin: 'http://127.0.0.1:28441'",
     "the router admin API wants port 28441, already used by secondary"),  # the secondary's S3 port + 10008
    ("listen: 'http://127.0.0.1:18300'", "listen: 'http://127.0.0.1:18450'",
     "the router wants port 18450, already used by region 'secondary' serving"),
    ("url: 'http://127.0.0.1:18350'", "url: 'http://127.0.0.1:18440'",
     "region 'primary' serving wants port 18440, already used by secondary"),
])
def test_router_and_serving_ports_must_not_collide(old, new, message):
    assert old in SERVED
    with pytest.raises(ConfigError, match=message):
        parse(SERVED.replace(old, new))


def test_router_must_listen_on_loopback():
    with pytest.raises(ConfigError, match=r"router.caddy.listen.*loopback"):
        parse(SERVED.replace("listen: 'http://127.0.0.1:18300'", "listen: 'http://0.0.0.0:18300'"))


def test_bad_serving_url_is_named():
    with pytest.raises(ConfigError, match=r"regions\[1\].serving.url \(line 17\): .*not an http\(s\) URL"):
        parse(SERVED.replace("http://127.0.0.1:18450", "127.0.0.1:18450"))


ROUTE53 = ("router: {kind: route53, hosted_zone_id: Z1, record_name: api.example.com., url: 'https://api.example.com',"
           " values: {primary: p.example.com, %s: s.example.com}}\n")


def test_route53_router_values_name_regions():
    text = SERVED.replace(SERVED.splitlines()[-1] + "\n", "")
    cfg = parse(text + ROUTE53 % "secondary")
    assert cfg.router.kind == "route53" and cfg.router.values == {"primary": "p.example.com",
                                                                 "secondary": "s.example.com"}
    with pytest.raises(ConfigError, match=r"router.values names unknown regions \['tertiary'\]; known: primary, "
                                          "secondary"):
        parse(text + ROUTE53 % "tertiary")


def test_init_template_has_serving_router_monitor_and_failover(tmp_path):
    (tmp_path / "b").mkdir()
    text = render_config(tmp_path / "b", name=None, config_path=tmp_path / "llmdr.yaml", primary_port=18333,
                         secondary_port=18433, router_port=18300)
    cfg = parse_config(text, source=tmp_path / "llmdr.yaml")
    assert cfg.primary.serving.url == "http://127.0.0.1:18350"
    assert cfg.secondaries[0].serving.url == "http://127.0.0.1:18450" and cfg.secondaries[0].serving.warm
    assert (cfg.router.kind, cfg.router.listen, cfg.router.admin) == ("caddy", "http://127.0.0.1:18300",
                                                                      "http://127.0.0.1:18301")
    assert cfg.monitor.interval == timedelta(seconds=1) and cfg.monitor.down_after == 2
    assert cfg.failover.auto and cfg.failover.confirm_probes == 3
    assert cfg.notifications is None and cfg.golden == "golden.jsonl"
    # the commented example start command uses only the placeholders the replica fills in
    assert 'command: "vllm serve {model_dir} --host {host} --port {port}"' in text


def test_key_file_paths_are_not_taken_for_literal_secrets(tmp_path):
    """drill.signing.private_key and manifest_signing.private_key name key FILES; a PEM pasted there is refused."""
    from llmdr.config import parse_config
    from llmdr.errors import ConfigError

    base = """
version: 1
bundle: {name: b, path: bundle}
regions:
  - {name: primary, role: primary, endpoint: "http://127.0.0.1:9", bucket: llmdr-a, credentials: {access_key_env: A, secret_key_env: B}}
  - {name: secondary, role: secondary, endpoint: "http://127.0.0.1:10", bucket: llmdr-b, credentials: {access_key_env: A, secret_key_env: B}}
"""
    ok = parse_config(base + "drill: {signing: {private_key: keys/x.key}}\nmanifest_signing: {method: ed25519, "
                      "private_key: /secure/m.key}\n", source=tmp_path / "a.yaml")
    assert ok.drill.signing.private_key == "keys/x.key" and ok.manifest_signing.private_key == "/secure/m.key"
    with pytest.raises(ConfigError, match="literal secrets"):
        parse_config(base + 'drill: {signing: {private_key: "-----BEGIN PRIVATE KEY----- abc"}}\n',
                     source=tmp_path / "b.yaml")

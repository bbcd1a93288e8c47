"""The one builder of llmdr configs on local S3 servers, for the tests and the benchmarks.

``two_region_yaml`` writes the usual two-region config (a primary and a secondary, each with its bucket, key prefix
and credentials named by environment variables); ``region_yaml`` + ``config_yaml`` build any other set of regions.
The layout is fixed: ``version``, ``bundle``, ``regions`` (each region: name, role, endpoint, bucket, prefix,
credentials, then ``local`` and the caller's extra lines), the caller's top-level lines, ``state_dir`` last; tests
that check line numbers in config errors rely on it.

``make_config``, ``two_regions`` and ``make_served_config`` are the shapes the test suite uses on the session's
running regions (``stack`` in conftest.py). Benchmarks import this module with the repository root on sys.path.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path

from llmdr.config import Config, parse_config
from tests.support.ports import port_picker

TEST_KEYS = ("LLMDR_TEST_P", "LLMDR_TEST_S")  # what `llmdr stack up` writes to local.env for the test regions
TEST_BUNDLE = "{name: testbundle, path: bundle}"


def fresh_prefix(tag: str = "t", n: int = 10) -> str:
    """A key prefix no other test uses, so every test starts from an empty repository."""
    return f"{tag}-{uuid.uuid4().hex[:n]}"


def endpoint(where: int | str) -> str:
    """A loopback port's URL, or ``where`` itself when it is already a URL."""
    return f"http://127.0.0.1:{where}" if isinstance(where, int) else where


def _lines(text: str) -> str:
    return text.rstrip("\n") + "\n" if text.strip() else ""


def region_yaml(name: str, role: str, where: int | str, bucket: str, *, keys: str | None = None,
                credentials: str | None = None, creds_extra: str = "", prefix: str | None = None,
                local: bool = False, lines: str = "") -> str:
    """One entry of ``regions:``. Credentials are ``{access_key_env: <keys>_AK, secret_key_env: <keys>_SK<extra>}``
    unless ``credentials`` gives the whole flow mapping; ``lines`` are more fields, indented by four spaces."""
    if credentials is None:
        credentials = f"{{access_key_env: {keys}_AK, secret_key_env: {keys}_SK{creds_extra}}}"
    out = f"  - name: {name}\n    role: {role}\n    endpoint: {endpoint(where)}\n    bucket: {bucket}\n"
    if prefix is not None:
        out += f"    prefix: '{prefix}'\n"
    out += f"    credentials: {credentials}\n"
    if local:
        out += "    local: {}\n"
    return out + _lines(lines)


def config_yaml(regions: Iterable[str], *, bundle: str = TEST_BUNDLE, extra: str = "",
                state_dir: str | Path = ".llmdr") -> str:
    """A whole config: ``bundle`` is the YAML after ``bundle:`` (a flow mapping, or a block starting with a newline),
    ``extra`` top-level lines (transfer, router, monitor...) placed between the regions and ``state_dir``."""
    sep = "" if bundle.startswith("\n") else " "
    head = f"version: 1\nbundle:{sep}{bundle.rstrip()}\nregions:\n"
    return head + "".join(regions) + _lines(extra) + f"state_dir: {state_dir}\n"


def two_region_yaml(primary: int | str, secondary: int | str, *, prefix: str | None = None,
                    secondary_prefix: str | None = None, keys: tuple[str, str] = TEST_KEYS,
                    primary_bucket: str = "llmdr-primary", secondary_bucket: str = "llmdr-secondary",
                    primary_creds: str = "", primary_credentials: str | None = None, local: bool = False,
                    primary_lines: str = "", secondary_lines: str = "", bundle: str = TEST_BUNDLE, extra: str = "",
                    state_dir: str | Path = ".llmdr") -> str:
    """The usual primary + secondary config. ``primary``/``secondary``: a loopback port or an endpoint URL; the
    secondary's prefix defaults to the primary's (``None``: no prefix line); ``keys``: the stems of the credential
    variables (``<stem>_AK`` / ``<stem>_SK``); ``primary_creds``: more fields inside the primary's credentials
    mapping; ``local``: both regions get ``local: {}`` (started by ``llmdr stack up``)."""
    s_prefix = prefix if secondary_prefix is None else secondary_prefix
    return config_yaml([
        region_yaml("primary", "primary", primary, primary_bucket, keys=keys[0], credentials=primary_credentials,
                    creds_extra=primary_creds, prefix=prefix, local=local, lines=primary_lines),
        region_yaml("secondary", "secondary", secondary, secondary_bucket, keys=keys[1], prefix=s_prefix,
                    local=local, lines=secondary_lines),
    ], bundle=bundle, extra=extra, state_dir=state_dir)


def write_config(path: Path, text: str) -> Config:
    """Write ``text`` to ``path`` (the CLI can then be pointed at it) and parse it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return parse_config(text, source=path)


def copy_keys(stack: Config, state: Path) -> None:
    """The running regions' keys (``local.env``) copied into another state folder."""
    state.mkdir(parents=True, exist_ok=True)
    keys = stack.state_path / "local.env"
    if keys.exists():
        shutil.copy(keys, state / "local.env")


# the shapes the test suite uses -------------------------------------------------------------------------------------
def make_config(tmp: Path, p: int, s: int, state: Path, prefix: str = "") -> Config:
    """Two local regions on ports ``p`` and ``s`` (``llmdr stack up`` starts them), written to ``tmp/llmdr.yaml``."""
    text = two_region_yaml(p, s, prefix=prefix, local=True, extra="transfer: {workers: 4, fsync: false}",
                           state_dir=state)
    return write_config(tmp / "llmdr.yaml", text)


def two_regions(stack: Config, tmp: Path, *, prefix: str | None = None, bundle: str = TEST_BUNDLE,
                primary: str = "", secondary: str = "", primary_creds: str = "", secondary_endpoint: str | None = None,
                secondary_bucket: str = "llmdr-secondary", secondary_prefix: str | None = None, extra: str = "",
                state: Path | None = None) -> Config:
    """A config on the running test regions (a fresh key prefix unless given), written to its own file under
    ``tmp`` so the CLI can be pointed at it. ``primary`` / ``secondary`` are extra indented lines for that region
    (e.g. ``"    object_lock: {mode: COMPLIANCE, period: 60s}"``), ``extra`` top-level lines."""
    prefix = prefix or fresh_prefix(n=8)
    text = two_region_yaml(stack.primary.port, secondary_endpoint or stack.secondaries[0].endpoint, prefix=prefix,
                           secondary_prefix=secondary_prefix, secondary_bucket=secondary_bucket,
                           primary_creds=primary_creds, primary_lines=primary, secondary_lines=secondary,
                           bundle=bundle, extra=extra, state_dir=state or stack.state_path)
    return write_config(tmp / f"llmdr-{uuid.uuid4().hex[:6]}.yaml", text)


SERVED_EXTRA = """\
router: {{kind: caddy, listen: "http://127.0.0.1:{rl}", admin: "http://127.0.0.1:{ra}"}}
monitor: {{interval: 0.2, timeout: 1s, down_after: 2, recent_window: 5, baseline_window: 20, golden_every: 0}}
failover: {{confirm_probes: 2, confirm_interval: 0.1}}
{extra}
transfer: {{workers: 4, fsync: false}}
"""


def make_served_config(stack: Config, tmp: Path, *, warm: bool = True, extra: str = "") -> Config:
    """A config on the running test regions (fresh key prefix) with a serving endpoint per region and a Caddy
    router, all on free loopback ports, and its own state folder under ``tmp`` (the regions' keys copied in).
    The bundle folder is ``tmp/model`` (write it with ``write_demo_bundle``)."""
    copy_keys(stack, tmp / ".llmdr")
    port = port_picker(set(stack.primary.local_ports) | set(stack.secondaries[0].local_ports))
    ps, ss, rl, ra = port(), port(), port(), port()
    text = two_region_yaml(
        stack.primary.port, stack.secondaries[0].port, prefix=fresh_prefix(), local=True,
        primary_lines=f'    serving: {{url: "http://127.0.0.1:{ps}"}}',
        secondary_lines=f'    serving: {{url: "http://127.0.0.1:{ss}", warm: {str(warm).lower()}}}',
        bundle="{name: testbundle, path: model}", extra=SERVED_EXTRA.format(rl=rl, ra=ra, extra=extra))
    return write_config(tmp / "llmdr.yaml", text)


# Two regions nothing listens on: for core logic that reads the config but never reaches a store.
OFFLINE_CONFIG = """\
version: 1
bundle: {name: b, path: model, components: {tokenizer: {paths: ["tokenizer.json"]}}}
regions:
  - {name: primary, role: primary, endpoint: "http://127.0.0.1:29001", bucket: llmdr-primary,
     credentials: {access_key_env: A, secret_key_env: B}}
  - {name: secondary, role: secondary, endpoint: "http://127.0.0.1:29101", bucket: llmdr-secondary,
     credentials: {access_key_env: A, secret_key_env: B}}
objectives: {rpo: 5m, rto: 15m, drill_interval: 90d}
"""

"""Issue #16, serving and secrets: a bundle's Jinja template never runs code (sandbox, in `llmdr serve` and in the
bundle check); children llmdr starts get an allow-listed environment, never the regions' or llmdr's keys; the state
folder and every file in it that can hold key material or plaintext are the owner's only, whatever the umask.

Real parts: templates rendered by the real server (HTTP) and loaded by `llmdr serve` in a subprocess; a real
replica started through `serving.command` on the session's SeaweedFS regions; a real Caddy router; a real
`llmdr stack up --no-serving` on two fresh SeaweedFS servers in a temporary folder."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from llmdr.common.files import atomic_write, private_dir
from llmdr.common.process import child_env, spawn
from llmdr.common.templates import render_template, sandboxed_environment
from llmdr.config import parse_config
from llmdr.config.values import ComponentKind
from llmdr.errors import UnsafeTemplate
from llmdr.repo.bundle import ComponentSpec, check_bundle
from llmdr.serving.tinymodel import CHAT_TEMPLATE, TinyModel, write_demo_bundle
from tests.support.config import make_served_config, two_region_yaml, write_config
from tests.support.ports import free_base_ports, free_port
from tests.support.serving import serving

LLMDR = [sys.executable, "-m", "llmdr.cli"]


# 1. templates ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "model"
    write_demo_bundle(root)
    return root


@pytest.fixture
def bundle(demo, tmp_path) -> Path:
    root = tmp_path / "model"
    shutil.copytree(demo, root)
    return root


def payloads(marker: Path) -> dict[str, str]:
    """Template-injection payloads, each of which runs code or leaks internals in an unsandboxed Jinja."""
    touch = f"touch {marker}"
    return {
        "subclasses": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "popen": f"{{{{ cycler.__init__.__globals__.os.popen('{touch}').read() }}}}",
        "context": "{{ self._TemplateReference__context }}",
        "getitem": f"{{{{ cycler['__init__']['__globals__']['os'].popen('{touch}').read() }}}}",
        "include": "{% include '/etc/passwd' %}",
    }


# the same popen spelled so that no private name appears in the source: only the sandbox can stop it at render time
def dynamic_payload(marker: Path) -> str:
    return ("{{ (cycler|attr('__in' ~ 'it__')|attr('__glo' ~ 'bals__'))['os']"
            f".popen('touch {marker}').read() }}}}")


@pytest.mark.parametrize("name", sorted(payloads(Path("x"))))
def test_serve_refuses_an_injected_chat_template_and_runs_nothing(bundle, tmp_path, name):
    marker = tmp_path / "pwned"
    (bundle / "chat_template.jinja").write_text(payloads(marker)[name])
    with pytest.raises(UnsafeTemplate, match=r"chat_template\.jinja") as exc:
        TinyModel(bundle).chat([{"role": "user", "content": "hello"}])
    assert "sandbox" in str(exc.value) and "fix or replace the template" in str(exc.value)
    assert not marker.exists()


@pytest.mark.parametrize("name", sorted(payloads(Path("x"))))
def test_the_sandbox_itself_refuses_every_payload_when_rendered(tmp_path, name):
    """Beneath the up-front scan: the payload compiled and rendered anyway raises Jinja's SecurityError (or, for an
    include, finds no loader), reported as UnsafeTemplate naming the file; nothing ran."""
    from jinja2.exceptions import SecurityError

    marker = tmp_path / "pwned"
    template = sandboxed_environment().from_string(payloads(marker)[name])
    with pytest.raises(UnsafeTemplate, match=r"^bundle/x\.jinja: ") as exc:
        render_template(template, "bundle/x.jinja", messages=[{"role": "user", "content": "hi"}])
    assert name == "include" or isinstance(exc.value.__context__, SecurityError)
    assert not marker.exists()


def test_a_dynamically_spelled_payload_is_stopped_by_the_sandbox_when_rendered(bundle, tmp_path):
    marker = tmp_path / "pwned"
    (bundle / "chat_template.jinja").write_text(dynamic_payload(marker))
    model = TinyModel(bundle)  # nothing in the source names a private attribute: it loads
    with pytest.raises(UnsafeTemplate, match=r"chat_template\.jinja: the Jinja sandbox refused the template"):
        model.render_chat([{"role": "user", "content": "hello"}])
    assert not marker.exists()
    # through the real server: a clear error for the request, no code run, the server still answers
    with serving(bundle) as url:
        req = urllib.request.Request(url + "/v1/chat/completions", method="POST", data=json.dumps(
            {"messages": [{"role": "user", "content": "hello"}]}).encode(), headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=30)  # noqa: S310 - loopback
        body = json.loads(err.value.read())
        assert err.value.code == 500 and "chat_template.jinja" in body["error"]["message"]
        with urllib.request.urlopen(url + "/health", timeout=10) as r:  # noqa: S310 - loopback
            assert r.status == 200
    assert not marker.exists()


def test_llmdr_serve_exits_with_a_clear_error_naming_the_template(bundle, tmp_path):
    marker = tmp_path / "pwned"
    (bundle / "chat_template.jinja").write_text(payloads(marker)["popen"])
    r = subprocess.run([*LLMDR, "serve", str(bundle), "--port", str(free_port())], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode != 0 and "chat_template.jinja" in r.stderr and "Traceback" not in r.stderr
    assert "__init__" in r.stderr and not marker.exists()


def test_the_sample_chat_template_renders_exactly_as_before(bundle):
    import jinja2

    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the model {{ x }} <b>"}]
    before = jinja2.Environment().from_string(CHAT_TEMPLATE).render(messages=messages, add_generation_prompt=True)
    assert TinyModel(bundle).render_chat(messages) == before
    assert before.startswith("<s><|system|> be brief <|end|> <|user|> the model {{ x }} <b>")


@pytest.mark.parametrize("name", ["subclasses", "popen", "context", "getitem"])
def test_the_bundle_check_reports_an_injected_template(tmp_path, name):
    marker = tmp_path / "pwned"
    root = tmp_path / "b"
    (root / "prompts").mkdir(parents=True)
    (root / "prompts" / "chat_template.jinja").write_text(payloads(marker)[name])
    (root / "prompts" / "system.jinja").write_text("You help with {{ product }}.\n{% include 'footer.jinja' %}\n")
    report = check_bundle(root, [ComponentSpec(ComponentKind.prompt_templates, ("prompts/*.jinja",))])
    found = [str(p) for p in report.problems]
    assert len(found) == 1, found
    assert found[0].startswith("prompt_templates prompts/chat_template.jinja: is refused as unsafe: line 1")
    assert not marker.exists()


# 2. children's environment ---------------------------------------------------------------------------------------
SECRETS = {"AWS_SECRET_ACCESS_KEY": "aws-secret-x", "AWS_ACCESS_KEY_ID": "AKIAFAKE", "AWS_SESSION_TOKEN": "tok-x",
           "LLMDR_SECONDARY_ENCRYPTION_KEY": "ab" * 32, "LLMDR_MANIFEST_KEY": "cd" * 32, "HF_TOKEN": "hf_secret",
           "VLLM_API_KEY": "vllm-secret", "SOMETHING_ELSE": "not on the list"}


def test_child_env_is_an_allow_list():
    parent = {"PATH": "/bin", "HOME": "/h", "LC_ALL": "C", "PYTHONPATH": "/x", "CUDA_VISIBLE_DEVICES": "0",
              "HF_HOME": "/hf", **SECRETS}
    got = child_env({"EXTRA": "1"}, pass_env=["HF_TOKEN"], environ=parent)
    assert got == {"PATH": "/bin", "HOME": "/h", "LC_ALL": "C", "PYTHONPATH": "/x", "CUDA_VISIBLE_DEVICES": "0",
                   "HF_HOME": "/hf", "HF_TOKEN": "hf_secret", "EXTRA": "1"}


def test_spawn_gives_children_the_allow_list_and_umask_077(tmp_path, monkeypatch):
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    out = tmp_path / "env.json"
    code = (f"import json, os; json.dump(dict(os.environ), open({str(out)!r}, 'w')); "
            f"open({str(tmp_path / 'made')!r}, 'w').close()")
    old = os.umask(0o022)
    try:
        proc = spawn([sys.executable, "-c", code], tmp_path / "child.log", cwd=tmp_path)
    finally:
        os.umask(old)
    assert proc.wait(timeout=30) == 0
    env = json.loads(out.read_text())
    assert not set(SECRETS) & set(env) and env["PATH"] == os.environ["PATH"]
    assert stat.S_IMODE((tmp_path / "made").stat().st_mode) == 0o600  # what the child creates: 0600
    assert stat.S_IMODE((tmp_path / "child.log").stat().st_mode) == 0o600


def dumpable() -> int:
    import ctypes

    return ctypes.CDLL(None).prctl(3, 0, 0, 0, 0)  # PR_GET_DUMPABLE


@pytest.fixture
def served(stack, tmp_path):
    """A served config whose primary replica runs through ``serving.command``: a script that dumps its environment
    and what it could read of its parent's (/proc/PPID/environ) before running `llmdr serve`."""
    from llmdr.devstack.serving import stop_serving

    cfg = make_served_config(stack, tmp_path)
    script = tmp_path / "server.py"
    script.write_text(
        "import json, os, sys\n"
        "from pathlib import Path\n"
        "try:\n"
        "    parent = Path(f'/proc/{os.getppid()}/environ').read_bytes().decode(errors='replace')\n"
        "except OSError as exc:\n"
        "    parent = f'unreadable: {exc}'\n"
        f"Path({str(tmp_path / 'child-env.json')!r}).write_text(json.dumps({{'env': dict(os.environ), "
        "'parent': parent, 'umask': os.umask(0o077)}))\n"
        "from llmdr.cli import main\n"
        "sys.argv = ['llmdr', 'serve', sys.argv[1], '--host', sys.argv[2], '--port', sys.argv[3]]\n"
        "main()\n")
    raw = yaml.safe_load(cfg.source_file.read_text())
    raw["regions"][0]["serving"] |= {"command": [sys.executable, str(script), "{model_dir}", "{host}", "{port}"],
                                     "pass_env": ["LLMDR_TEST_SERVER_TOKEN"]}
    cfg.source_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    cfg = parse_config(cfg.source_file.read_text(), source=cfg.source_file)
    write_demo_bundle(cfg.bundle_path)
    try:
        yield cfg
    finally:
        stop_serving(cfg, router=True)


def test_a_replica_gets_none_of_the_keys_llmdr_runs_with(served, monkeypatch):
    from llmdr.repo import ops
    from llmdr.serving.replica import replica_dir, start_replica
    from llmdr.storage.credentials import read_env_file

    cfg = served
    # the parent holds the regions' real keys (as an operator's environment would) and more secrets
    keys = read_env_file(cfg.state_path / "local.env")
    names = {n for r in cfg.regions for n in (r.credentials.access_key_env, r.credentials.secret_key_env)}
    assert names <= set(keys)
    for n in names:
        monkeypatch.setenv(n, keys[n])
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("LLMDR_TEST_SERVER_TOKEN", "meant-for-the-server")
    ops.snapshot_bundle(cfg)
    old = os.umask(0o022)
    try:
        st = start_replica(cfg, cfg.primary)
    finally:
        os.umask(old)
    assert st.healthy
    seen = json.loads((Path(cfg.base_dir) / "child-env.json").read_text())
    env = seen["env"]
    leaked = (names | set(SECRETS)) & set(env)
    assert not leaked, f"the replica received {sorted(leaked)}"
    assert not [k for k, v in env.items() if v in keys.values() or v in SECRETS.values()]
    assert env["LLMDR_TEST_SERVER_TOKEN"] == "meant-for-the-server"  # serving.pass_env
    assert env["PATH"] == os.environ["PATH"] and seen["umask"] == 0o077
    # nor through its parent's /proc/PID/environ: a same-user process reads it unless llmdr made itself
    # non-dumpable; root reads it all the same (then only the flag can be checked)
    if os.geteuid() == 0:
        assert dumpable() == 0
    else:
        assert seen["parent"].startswith("unreadable: [Errno 13]"), seen["parent"][:200]
    # the replica's folder, log and state file are the owner's only
    root = replica_dir(cfg, cfg.primary)
    assert_private(root)


# 3. file permissions ---------------------------------------------------------------------------------------------
def assert_private(top: Path) -> None:
    """No group or other bits on ``top`` or anything under it. A replica's restored bundle (``model-*``) keeps the
    modes recorded in its snapshot, inside the replica's 0700 folder: not walked."""
    wide = []
    for dirpath, dirnames, filenames in os.walk(top):
        d = Path(dirpath)
        dirnames[:] = [n for n in dirnames if not n.startswith("model-")]
        for p in [d, *(d / f for f in filenames)]:
            mode = stat.S_IMODE(p.lstat().st_mode)
            if mode & 0o077 and not p.is_symlink():
                wide.append(f"{p.relative_to(top.parent)} {oct(mode)}")
    assert not wide, "readable by others: " + ", ".join(sorted(wide))


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_atomic_write_is_0600_tightens_and_never_follows_a_planted_link(tmp_path, umask022):
    target = tmp_path / "state" / "sub" / "f.json"
    atomic_write(target, "{}")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert stat.S_IMODE(target.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    target.chmod(0o644)
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (target.parent / f".f.json.{os.getpid()}.{threading.get_ident()}.tmp").symlink_to(victim)  # its temp name
    atomic_write(target, "{}")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600 and victim.read_text() == "keep"
    public = tmp_path / "report.html"
    atomic_write(public, "<p>", mode=0o644)
    assert stat.S_IMODE(public.stat().st_mode) == 0o644


def test_private_dir_creates_0700_and_tightens(tmp_path, umask022):
    d = tmp_path / "a" / "b"
    private_dir(d)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700 and stat.S_IMODE(d.parent.stat().st_mode) == 0o700
    d.chmod(0o755)
    private_dir(d)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700


def test_the_router_writes_caddy_json_and_its_log_0600(served, umask022):
    from llmdr.devstack.serving import start_router

    cfg = served
    (cfg.state_path / "router").mkdir(mode=0o755)
    (cfg.state_path / "router").chmod(0o755)
    note = start_router(cfg)
    assert note is not None and note.started
    assert (cfg.state_path / "router" / "caddy.json").exists()
    assert_private(cfg.state_path / "router")


@pytest.mark.s3
def test_stack_up_makes_the_state_folder_and_everything_in_it_private(tmp_path):
    """A real `llmdr stack up --no-serving` with umask 022 in a fresh folder whose state folder (left by an older
    llmdr) is 0755 with a 0644 local.env: afterwards nothing in it is readable by group or others."""
    from llmdr.common.process import alive
    from llmdr.devstack.regions import region_pid, stop_region

    p, s = free_base_ports()
    state = tmp_path / ".llmdr"
    state.mkdir()
    state.chmod(0o755)
    (state / "local.env").write_text("# old\n")
    (state / "local.env").chmod(0o644)
    cfg = write_config(tmp_path / "llmdr.yaml", two_region_yaml(p, s, prefix="", local=True, state_dir=".llmdr",
                                                                 keys=("LLMDR_PERM_P", "LLMDR_PERM_S")))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMDR_")}
    pids = []
    try:
        r = subprocess.run([*LLMDR, "--config", str(cfg.source_file), "stack", "up", "--no-serving"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=180, env=env, umask=0o022)
        assert r.returncode == 0, r.stderr
        pids = [region_pid(cfg, region) for region in cfg.regions]
        assert all(pids)
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        assert stat.S_IMODE((state / "local.env").stat().st_mode) == 0o600
        assert "LLMDR_PERM_P_SK=" in (state / "local.env").read_text()
        assert (state / "stack" / "primary" / "data").is_dir()
        assert_private(state)
    finally:
        for region in cfg.regions:
            stop_region(cfg, region)
        assert not [pid for pid in pids if pid and alive(pid)]

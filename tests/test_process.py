"""llmdr.common.process: PID files checked against the command line, terminate, log tails, ports."""

from __future__ import annotations

import socket
import subprocess
import sys

from llmdr.common.process import (
    alive,
    cmdline,
    port_open,
    read_pid,
    spawn,
    tail,
    terminate,
    wait_for_port,
    wait_started,
    write_pid,
)
from tests.support.waiting import wait_for


def _sleeper(tmp_path, seconds: float = 30) -> subprocess.Popen:
    return spawn([sys.executable, "-c", f"import time; time.sleep({seconds})"], tmp_path / "p.log", cwd=tmp_path)


def test_read_pid_checks_the_command_line_and_that_it_runs(tmp_path):
    proc = _sleeper(tmp_path)
    pid_file = tmp_path / "p.pid"
    try:
        # until the child has exec'd, its command line is still the parent's (seen on a loaded machine)
        wait_for("the sleeper to exec", lambda: "time.sleep(30)" in " ".join(cmdline(proc.pid) or []), 20, 0.02)
        write_pid(pid_file, proc.pid)
        assert read_pid(pid_file) == proc.pid
        assert read_pid(pid_file, matches=lambda args: "time.sleep(30)" in args[-1]) == proc.pid
        assert read_pid(pid_file, matches=lambda args: args[0].endswith("caddy")) is None  # a reused PID is not ours
        assert cmdline(proc.pid)[-2:] == ["-c", "import time; time.sleep(30)"]
    finally:
        terminate(proc.pid, 5.0)
    assert not alive(proc.pid) and read_pid(pid_file) is None
    assert read_pid(tmp_path / "missing.pid") is None
    (tmp_path / "junk.pid").write_text("not a pid\n")
    assert read_pid(tmp_path / "junk.pid") is None


def test_terminate_kills_a_process_that_ignores_sigterm(tmp_path):
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); " \
           "time.sleep(60)"
    proc = spawn([sys.executable, "-c", code], tmp_path / "p.log", cwd=tmp_path)
    assert wait_started(proc, lambda: "ready" in tail(tmp_path / "p.log"), timeout=20, interval=0.02) is None
    terminate(proc.pid, 0.3)
    assert not alive(proc.pid)


def test_terminate_walks_a_ladder_of_signals_and_stops_at_the_one_that_works(tmp_path):
    """PostgreSQL's ladder: SIGINT (ignored here), then SIGQUIT, which this child answers by writing and exiting:
    SIGKILL is never needed."""
    import signal

    code = ("import os, signal, sys, time; signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
            "def quit_(*_):\n    open('how', 'w').write('quit'); os._exit(0)\n"
            "signal.signal(signal.SIGQUIT, quit_); print('ready', flush=True); time.sleep(60)")
    proc = spawn([sys.executable, "-c", code], tmp_path / "p.log", cwd=tmp_path)
    assert wait_started(proc, lambda: "ready" in tail(tmp_path / "p.log"), timeout=20, interval=0.02) is None
    terminate(proc.pid, ladder=[(signal.SIGINT, 0.3), (signal.SIGQUIT, 20.0), (signal.SIGKILL, 5.0)])
    assert not alive(proc.pid) and (tmp_path / "how").read_text() == "quit"


def test_wait_started_tells_an_exit_from_a_timeout(tmp_path):
    proc = spawn([sys.executable, "-c", "print('boom'); raise SystemExit(3)"], tmp_path / "p.log", cwd=tmp_path)
    assert wait_started(proc, lambda: False, timeout=20, interval=0.02) == "exited" and proc.returncode == 3
    assert tail(tmp_path / "p.log") == "boom"
    slow = _sleeper(tmp_path)
    try:
        assert wait_started(slow, lambda: False, timeout=0.1, interval=0.02) == "timeout" and alive(slow.pid)
    finally:
        terminate(slow.pid, 5.0)


def test_tail_keeps_the_last_lines(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {i}\n" for i in range(40)))
    assert tail(log, 3) == "line 37\nline 38\nline 39"
    assert tail(tmp_path / "none.log") == "(no log)"


def test_port_open_and_wait_for_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        assert not port_open("127.0.0.1", port)  # bound, not listening
        assert not wait_for_port("127.0.0.1", port, timeout=0.1)
        s.listen()
        assert port_open("127.0.0.1", port) and wait_for_port("127.0.0.1", port, timeout=1)

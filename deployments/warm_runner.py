"""A pre-warmed runner for the DR region's work pool: the RTO-critical flows start in well under a second.

A Prefect process worker starts every flow run in a new Python process, which must import Prefect, llmdr and the
flow before the first line of the flow runs: 2.5-7 s on a small machine, most of a warm-standby RTO. This runner
serves one work pool (``llmdr-failover``: the failover, failback and monitor-endpoints deployments) like a worker,
but keeps two child processes waiting with everything already imported. When a run is scheduled (e.g. by the failover
automation) the runner claims it (Pending), hands its id to the waiting child, which runs it exactly as
``python -m prefect.engine`` would, and immediately starts the next waiting child.

    python deployments/warm_runner.py --pool llmdr-secondary --queue failover   # PREFECT_API_URL, LLMDR_CONFIG set

Any plain ``prefect worker start --pool llmdr-secondary`` serves the same pool correctly, only slower: start one by
hand when the runner is down. (The local stack's process worker for that region serves only its ``default`` queue:
serving ``failover`` too, it would race the runner and, winning, start a failover 3-14 s later.)
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("llmdr.warm_runner")
HEARTBEAT_S = 15.0


def child() -> int:
    """Import everything a failover needs, say ready, wait for a flow run id on stdin, run it, exit."""
    sys.path.insert(0, str(ROOT))
    from uuid import UUID

    import boto3  # noqa: F401 - 0.45 s here: the failover's first read of a store (the golden set) paid it
    from prefect.flow_engine import flow_run_logger, load_flow, load_flow_run, run_flow

    import flows.failover  # noqa: F401 - imported now so the run does not pay for it
    import flows.monitor_endpoints  # noqa: F401
    import llmdr.control.records  # noqa: F401
    import llmdr.failover.monitor  # noqa: F401
    import llmdr.failover.router.caddy  # noqa: F401
    import llmdr.notify  # noqa: F401
    import llmdr.repo.goldens  # noqa: F401
    import llmdr.serving.replica  # noqa: F401
    import llmdr.serving.snapgolden  # noqa: F401

    print("ready", flush=True)
    line = sys.stdin.readline().strip()
    if not line:
        return 0  # the runner stopped: nothing to run
    flow_run_id = UUID(line)
    os.environ["PREFECT__FLOW_RUN_ID"] = str(flow_run_id)
    flow_run = load_flow_run(flow_run_id=flow_run_id)
    run_logger = flow_run_logger(flow_run=flow_run)
    flow = load_flow(flow_run)
    state = run_flow(flow, flow_run=flow_run, error_logger=run_logger, return_type="state")
    return 0 if getattr(state, "is_completed", lambda: False)() else 1


class Waiting:
    """One child process that imports everything, then waits for a run id."""

    def __init__(self, logf) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--child"], cwd=ROOT, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=logf, text=True)
        self._ready = False

    def ready(self, wait: bool) -> bool:
        """Has it finished importing? With ``wait``, block until it has (or died)."""
        import select

        if not self._ready and self.proc.stdout is not None and self.proc.poll() is None:
            if wait or select.select([self.proc.stdout], [], [], 0)[0]:
                self._ready = self.proc.stdout.readline().strip() == "ready"
        return self._ready

    def hand(self, flow_run_id: str) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.write(flow_run_id + "\n")
        self.proc.stdin.close()
        return self.proc.pid

    def discard(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class Pool:
    """``size`` waiting children, so a run that arrives just after another (a failover right after a monitor run
    started) still finds one ready."""

    def __init__(self, logf, size: int = 2) -> None:
        self.logf = logf
        self.size = size
        self.children = [Waiting(logf) for _ in range(size)]

    def take(self) -> Waiting:
        self.children = [c for c in self.children if c.proc.poll() is None] or [Waiting(self.logf)]
        child = next((c for c in self.children if c.ready(wait=False)), None)
        if child is None:
            child = self.children[0]
            child.ready(wait=True)
        self.children.remove(child)
        while len(self.children) < self.size:
            self.children.append(Waiting(self.logf))
        return child

    def discard(self) -> None:
        for c in self.children:
            c.discard()


def runner(pool: str, poll: float, queues: list[str] | None = None) -> int:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.responses import SetStateStatus
    from prefect.states import Pending

    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    region = os.environ.get("LLMDR_REGION")
    name = f"llmdr-warm-runner-{region + '-' if region else ''}{os.getpid()}"
    logf = sys.stderr
    pool_ = Pool(logf)
    running: list[subprocess.Popen] = []
    last_beat = 0.0
    log.info("%s serving work pool %s, queues %s (poll %.2fs)", name, pool, ", ".join(queues or ["all"]), poll)
    with get_client(sync_client=True) as client:
        while not stopping:
            now = time.monotonic()
            if now - last_beat >= HEARTBEAT_S:
                try:
                    client.send_worker_heartbeat(pool, name, heartbeat_interval_seconds=HEARTBEAT_S)
                    last_beat = now
                except Exception as exc:  # noqa: BLE001 - the server may be restarting; keep trying
                    log.warning("heartbeat failed: %s", exc)
            try:
                scheduled = client.get_scheduled_flow_runs_for_work_pool(
                    pool, work_queue_names=queues, scheduled_before=datetime.now(timezone.utc))
            except Exception as exc:  # noqa: BLE001
                log.warning("cannot read scheduled runs of %s: %s", pool, exc)
                scheduled = []
            for resp in scheduled:
                fr = resp.flow_run
                if fr.state is None or fr.state.type != StateType.SCHEDULED:
                    continue
                result = client.set_flow_run_state(fr.id, Pending())
                if result.status != SetStateStatus.ACCEPT:
                    continue  # another runner took it, or a concurrency limit says wait
                child = pool_.take()
                pid = child.hand(str(fr.id))
                running.append(child.proc)
                client.update_flow_run(fr.id, infrastructure_pid=str(pid))
                log.info("flow run %s (%s) handed to pid %d", fr.name, fr.id, pid)
            running = [p for p in running if p.poll() is None]
            time.sleep(poll)
    pool_.discard()
    for p in running:
        p.wait(60)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pool", help="the DR region's work pool, llmdr-<region>")
    ap.add_argument("--queue", action="append", help="only this work queue of the pool (repeatable; default: all)")
    ap.add_argument("--poll", type=float, default=0.25, help="seconds between looks for scheduled runs")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child()
    if not args.pool:
        ap.error("--pool is required")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll (4/s) would fill the log
    return runner(args.pool, args.poll, args.queue)


if __name__ == "__main__":
    sys.exit(main())

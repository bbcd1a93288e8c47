"""What the trainer callbacks share: wait for a saved checkpoint to be complete, then protect it.

``CheckpointProtector.submit(folder, tags)`` is called by a callback right after the trainer saved ``folder``:

1. **wait**: the folder must pass the completeness check of ``checkpoints.layout`` (for the Hugging Face Trainer:
   ``trainer_state.json`` is written last) and then keep the same names, sizes and modification times for
   ``settle_s``; bounded by ``timeout_s``, after which the error names the file still missing or broken;
2. **protect**, by ``mode``:
   - ``"inprocess"`` (default): snapshot into the primary and copy to every secondary from this process
     (``llmdr.repo.ops.protect_checkpoint``), tagged with step, epoch, loss and the run id the callback passes;
   - ``"deployment"``: start a run of the ``protect-checkpoints`` deployment (a Prefect worker then takes every
     complete checkpoint; step, epoch and loss come from ``trainer_state.json``).

With ``background=True`` (default) both steps run in one worker thread, in save order, so training goes on while a
checkpoint uploads; ``close()`` (the callbacks call it when training ends) waits for the queue to drain and raises
the first error. ``background=False`` blocks the training loop for the whole wait + upload, and raises at once.
A trainer that deletes old checkpoints (``save_total_limit``) may remove a folder still queued: that error is
reported, the other checkpoints are still protected.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any, Literal

from llmdr.config import Config, load_config
from llmdr.errors import LlmdrError, UsageError
from llmdr.repo.checkpoint_check import CheckpointCheck, check_checkpoint

log = logging.getLogger(__name__)

Mode = Literal["inprocess", "deployment"]


class CheckpointNotComplete(LlmdrError):
    """A saved checkpoint did not become complete within the wait."""


def wait_complete(folder: Path, *, layout: str = "auto", require: list[str] | tuple[str, ...] = (),
                  timeout_s: float = 300.0, settle_s: float = 0.5, poll_s: float = 0.1) -> CheckpointCheck:
    """Poll ``folder`` until it is complete and unchanged for ``settle_s``; ``CheckpointNotComplete`` (what is still
    missing or broken) after ``timeout_s``. Measured on a monotonic clock, so a wall-clock jump changes nothing."""
    start = time.monotonic()
    stable_since: float | None = None
    last_fp = ""
    while True:
        if not folder.is_dir():  # the callbacks run after the save: a folder that is gone was deleted, not late
            raise CheckpointNotComplete(
                f"checkpoint {folder} is gone before it could be protected: the trainer deleted it (save_total_limit "
                "or ModelCheckpoint's save_top_k rotation) or it was never written there; raise the limit, or use "
                "background=False so each checkpoint is protected before the next save")
        c = check_checkpoint(folder, layout, require)
        now = time.monotonic()
        if c.complete:
            if c.fingerprint != last_fp:
                last_fp, stable_since = c.fingerprint, now
            if now - stable_since >= settle_s:  # type: ignore[operator]
                return c
        else:
            last_fp, stable_since = "", None
        if now - start >= timeout_s:
            why = "; ".join(c.problems) if c.problems else f"its files kept changing for {timeout_s:g} s"
            raise CheckpointNotComplete(
                f"checkpoint {folder} was not complete after waiting {timeout_s:g} s: {why}. Nothing was uploaded; "
                "check the trainer's disk and logs, then run `llmdr protect --checkpoints` (it takes every complete "
                "checkpoint), or raise timeout_s if saves are this slow.")
        time.sleep(poll_s)


class CheckpointProtector:
    """Protects checkpoint folders as a trainer saves them (see the module docstring)."""

    def __init__(self, config: str | Path | Config = "llmdr.yaml", *, mode: Mode = "inprocess",
                 background: bool = True, timeout_s: float = 300.0, settle_s: float = 0.5,
                 deployment: str | None = None) -> None:
        if mode not in ("inprocess", "deployment"):
            raise UsageError(f"mode {mode!r}: use 'inprocess' (snapshot from this process) or 'deployment' (start the "
                             "protect-checkpoints deployment)")
        self.cfg = config if isinstance(config, Config) else load_config(Path(config))
        if self.cfg.checkpoints is None:
            raise UsageError(f"{self.cfg.source_file} has no checkpoints: section; add one (path: the trainer's "
                             "output_dir) so the callback knows the layout and the checkpoint series")
        self.mode, self.background = mode, background
        self.timeout_s, self.settle_s = timeout_s, settle_s
        self.deployment = deployment or "protect-checkpoints/protect-checkpoints"  # flow/deployment (prefect.yaml)
        self.results: list[dict[str, Any]] = []
        self.errors: list[BaseException] = []
        self._queue: queue.Queue[tuple[Path, dict[str, str]] | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    def submit(self, folder: str | Path, tags: dict[str, str] | None = None) -> None:
        """Protect ``folder`` (now, or queued for the worker thread)."""
        item = (Path(folder), {k: str(v) for k, v in (tags or {}).items() if v is not None})
        if not self.background:
            self._run(*item, raise_errors=True)
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="llmdr-checkpoints", daemon=True)
            self._thread.start()
        self._queue.put(item)

    def close(self, timeout_s: float | None = None) -> list[dict[str, Any]]:
        """Wait for every queued checkpoint, stop the worker, raise the first error; returns the results."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                raise CheckpointNotComplete(f"checkpoint protection still running after {timeout_s:g} s; "
                                            f"{self._queue.qsize()} checkpoint(s) still queued")
            self._thread = None
        if self.errors:
            first = self.errors[0]
            raise first
        return self.results

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            self._run(*item, raise_errors=False)

    def _run(self, folder: Path, tags: dict[str, str], *, raise_errors: bool) -> None:
        t0 = time.monotonic()
        try:
            ck = self.cfg.checkpoints
            check = wait_complete(folder, layout=ck.layout, require=ck.require,  # type: ignore[union-attr]
                                  timeout_s=self.timeout_s, settle_s=self.settle_s)
            waited = time.monotonic() - t0
            if self.mode == "deployment":
                out = {"checkpoint": folder.name, "step": check.step, "flow_run_id": self._start_deployment()}
            else:
                from llmdr.repo.ops import protect_checkpoint

                out = protect_checkpoint(self.cfg, folder, tags=tags)
                out["training_runs"] = self._record(folder, out["new"])
            out |= {"waited_s": round(waited, 3), "duration_s": round(time.monotonic() - t0, 3)}
            self.results.append(out)
            log.info("checkpoint %s protected (%s) in %.2f s", folder.name, self.mode, out["duration_s"])
        except Exception as exc:  # kept for close(); the training loop itself is never interrupted by a thread
            log.error("checkpoint %s not protected: %s", folder.name, exc)
            self.errors.append(exc)
            if raise_errors:
                raise

    def _record(self, folder: Path, new: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The new snapshot as an MLflow training run (what the protect-checkpoints flow records; a deployment run
        records its own). The checkpoint is protected either way: a failure here is kept for ``close()`` as its own
        error, saying so."""
        if not new:
            return []
        from llmdr.lineage.training import record_checkpoint_runs

        try:
            return record_checkpoint_runs(self.cfg, new)
        except Exception as exc:  # noqa: BLE001 - reported by close(), never lost
            log.error("checkpoint %s protected, but its MLflow training run was not recorded: %s", folder.name, exc)
            self.errors.append(RuntimeError(f"checkpoint {folder.name} is protected, but recording its MLflow "
                                            f"training run failed: {exc}"))
            return []

    def _start_deployment(self) -> str:
        from llmdr.training.trigger import start_protect_deployment

        return start_protect_deployment(self.deployment, self.cfg)


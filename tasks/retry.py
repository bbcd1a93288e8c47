"""The step-level retry policy shared by every llmdr task, built on ``llmdr.errors.is_retriable``."""

from __future__ import annotations

from typing import Any

from llmdr.errors import is_retriable

# Request-level retries already happen in the store (RetryingStore); a task retry is for an outage that outlasts
# them, so it waits longer.
RETRY_DELAYS = [10, 30, 90]


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry transient storage faults only; integrity errors, missing snapshots,
    bad credentials and bad config fail at once."""
    try:
        state.result()
    except Exception as exc:  # the task's exception, re-raised by the failed state
        return is_retriable(exc)
    return False

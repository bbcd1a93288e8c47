"""Adapters to the platforms llmdr runs on. ``prefect`` is the only core module that imports Prefect (events,
Secret blocks, notification blocks); the rest of the core calls it and runs without a Prefect server."""

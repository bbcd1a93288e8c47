"""The local dev stack behind ``llmdr stack up`` / ``down`` / ``status``, for demos and tests on one machine:
``regions`` (one SeaweedFS ``weed mini`` S3 server per local region, keys, status), ``serving`` (the replicas llmdr
runs and the local Caddy router in front of them), ``orchestration`` (a Prefect server, work pools, deployments, a
worker and the warm failover runner), ``mlflowui`` (the MLflow UI) and ``samples`` (sample bundles). Every process is
started detached and stopped by PID through ``llmdr.common.process``.

May import everything below it: ``llmdr.failover``, ``llmdr.lineage``, ``llmdr.serving``, ``llmdr.repo``,
``llmdr.storage``, ``llmdr.config``, ``llmdr.common``, ``llmdr.errors``. Nothing in llmdr imports devstack except
``llmdr.drill`` (local outages in drills) and ``llmdr.cli``.
"""

"""llmdr: disaster recovery for LLM infrastructure: the whole bundle (weights, tokenizer, templates, configs)
snapshotted, copied to a second region, verified, restored, served and failed over.

The packages, from the outermost layer in (each imports only those below it; ``.importlinter`` enforces it and
docs/development/architecture.md draws it):

- ``cli``: the ``llmdr`` command, one module per command group; the only part of llmdr that may run flows.
- ``drill``: the DR drill's record, its signed report (HTML, PDF, Markdown), runbook, readiness checks, planner.
- ``devstack``: the local two-region stack for demos and tests (SeaweedFS, serving, router, Prefect, MLflow UI).
- ``failover``: monitoring, failover and failback steps, the warm standby, routers (Caddy, Route 53).
- ``lineage``: MLflow model registry and training runs, DVC datasets, Great Expectations, evidence.
- ``serving``: the OpenAI-compatible server, replicas, golden answers, the restore test, the tiny demo model.
- ``repo``: the repository: bundles, chunking, manifests, snapshot, restore, replicate, verify, retention.
- ``storage``: the BlobStore protocol, its adapters (S3, memory) and wrappers (retrying, read-only, encrypting,
  signing), credentials.
- ``notify``, ``artifacts``: notices to people; the content of Prefect artifacts.
- ``config``, ``common``, ``integrations``: llmdr.yaml; small shared helpers; the one door to Prefect.
- ``errors``: one root ``LlmdrError``; ``testing``: test doubles, never imported by production code.

The Prefect tasks (``tasks/``) and flows (``flows/``) sit outside the package, between ``cli`` and the core.
"""

__version__ = "0.1.0"

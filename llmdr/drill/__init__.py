"""llmdr.drill: proving that recovery works, and the evidence for it. It owns the DR drill's record and verdict
(``record``), what the dr-drill flow decides at each step (``procedure``), what a drill looks at (``evidence``) and
how it is published (``publish``: signed report folder, MLflow run, model version), the report rendered by format
(``report/``: model, charts, HTML, PDF, markdown), signing and offline verification of report folders (``signing``),
the runbook rendered from llmdr.yaml (``runbook/``), the readiness checks (``readiness/``) and restore planning
(``plan``). It may import llmdr.config, llmdr.common, llmdr.errors, llmdr.notify, llmdr.artifacts, and the
subsystems it exercises (repo, storage, serving, failover, lineage, devstack); never tasks, flows or prefect, which
sit above it (the dr-drill and readiness-check flows call into this package, not the other way round).
"""

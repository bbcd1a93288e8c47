"""llmdr.lineage: what a protected model came from and what has been proved about it. It owns the MLflow plumbing
(``tracking``: targets, client, artifacts), the model registry tied to snapshot content (``registry``, tag names in
``tags``), training runs of checkpoints (``training``, hardware from ``host``), DR drills as MLflow runs (``drills``),
the lineage query and its text (``query``, ``render``), datasets versioned by DVC and copied to every region
(``datasets`` on top of ``dvcrepo`` and ``dvcrun``), their Great Expectations suites (``expectations``), and the
dataset decisions and evidence of protect-bundle (``evidence``). It may import ``llmdr.config``, ``llmdr.common``,
``llmdr.errors``, ``llmdr.storage`` and ``llmdr.repo`` (snapshots and evidence are read and written through the
repository); never ``llmdr.serving``, ``failover``, ``drill``, ``devstack``, ``cli``, nor ``tasks``, ``flows`` or
``prefect``. Layers above it (``devstack``, ``drill``, ``tasks``, the CLI) call it, e.g. ``llmdr.devstack.mlflowui``
uses ``tracking.target_for``. mlflow, dvc, great_expectations and pandas are imported lazily, inside functions."""

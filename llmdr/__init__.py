"""llmdr: disaster recovery for LLM infrastructure.

The package root holds the pure core (ids, manifests, chunking, snapshot, restore, replication); adapters live in
``llmdr.storage`` (object stores), ``llmdr.stack`` (the local SeaweedFS regions) and ``llmdr.cli``.
"""

__version__ = "0.1.0"

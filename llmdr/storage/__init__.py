"""Storage: the one ``BlobStore`` interface (``base``: its guarantees, Object Lock included), its adapters (``s3``,
``memory``), the wrappers every region's store is built from (``retrying``, ``readonly``, ``crypto``: encryption
and manifest signatures), credentials and keys (``credentials``) and ``factory``, which assembles a configured
region's store. It knows nothing of the repository format above it: it may import ``llmdr.errors`` and
``llmdr.common``; ``llmdr.config`` for the factory and credentials only, and ``llmdr.integrations.prefect`` for
credentials kept in Prefect Secret blocks; never ``llmdr.repo``, anything above it, or ``llmdr.testing``.
"""

"""The repository: llmdr's format inside one region's store and every operation on it. It owns content ids
(``ids``), content-defined chunking (``chunking``), manifests (``manifest``), the repository itself (``repository``:
object keys, and the only door to stored chunks, manifests and evidence, e.g. ``Repository.load_chunk``), snapshot,
restore, cross-region copy (``replicate``), integrity checks (``integrity``, ``verify``), retention and Object Lock
(``retention``, ``locks``), the stat cache, bundle completeness (``bundle``), ``llmdr init``'s scaffold and ``ops``
(a config's regions opened as repositories). It may import ``llmdr.storage``, ``llmdr.common``, ``llmdr.config``
and ``llmdr.errors``; never serving, failover, drill, lineage, devstack, cli, tasks, flows or prefect.
"""

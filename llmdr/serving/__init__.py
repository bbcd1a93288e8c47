"""Serving a protected bundle: the OpenAI-compatible model server (``server``, ``llmdr serve``), the replicas llmdr
runs per region, each restored from that region's own store (``replica``), golden sets that prove a model answers
as the known-good one did (``golden``, pure) and a client for any OpenAI-compatible endpoint (``endpoint``), the
restore test and the verdict of verify-replicas (``restoretest``), and the tiny demo model (``tinymodel``).

May import ``llmdr.repo``, ``llmdr.storage``, ``llmdr.config``, ``llmdr.common``, ``llmdr.notify`` and
``llmdr.errors``; never failover, devstack, drill, lineage or the CLI (the router sits above serving, not in it).
"""

"""Failover: watching the serving endpoints and moving traffic when one fails. ``monitor`` (probes, samples,
assessments; pure judgement), ``watch`` (the loop that probes and emits events on changes), ``events`` (Prefect event
names and resources), ``steps`` (the failover and failback steps and their record, RTO, history), ``run`` (what a
failover or failback run decides from each step's result: no-op, confirmation, notices, events), ``standby`` (when
protect-bundle moves the warm standby onto new content) and ``router/`` (the one URL clients use).

May import ``llmdr.serving``, ``llmdr.repo``, ``llmdr.storage``, ``llmdr.config``, ``llmdr.common``,
``llmdr.notify``, ``llmdr.integrations`` and ``llmdr.errors``; never devstack, drill, lineage, the CLI, tasks or
flows (the flows in ``flows/failover.py`` compose these functions).
"""

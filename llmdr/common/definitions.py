"""The recovery objectives' definitions, stated once: the drill record, its report (HTML, PDF, markdown artifact),
its MLflow run and docs/guide/drills.md all quote these strings, so every place measures the same thing."""

from __future__ import annotations

RTO_DEFINITION = ("RTO (recovery time) = from the start of the outage to the first golden-correct answer served "
                  "through the router")
RPO_DEFINITION = ("RPO (data loss window) = from the start of the outage back to the creation of the newest snapshot "
                  "complete in the DR region")
# The failover record keeps its own clock, because outside a drill nobody knows when the outage began.
FAILOVER_CLOCK = ("The failover record's own time starts at the monitor's first failed probe (the outage's start is "
                  "only known in a drill), so: drill RTO = undetected time (outage start → first failed probe) + "
                  "failover time (first failed probe → first golden-correct answer).")

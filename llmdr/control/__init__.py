"""llmdr's own records, kept in every region's store so they outlive the control host.

Failover and failback records, the router's switch log, each drill's signed report folder, the golden set and the
runbook in force are written under ``control/`` in every region (``layout``), one small immutable object per record,
through the region's store chain (encrypted where the region is, Object-Locked where it has ``object_lock:``). A
region that does not answer gets the record later: it is kept as pending under ``<state>/control/pending/`` and
pushed by ``llmdr control sync`` or the next write (``records``). Reads list each region once per command and never
trust what does not parse or lies outside the layout (``reads``).
"""

from llmdr.control.reads import json_records, listing, read_object, region_keys
from llmdr.control.records import Placement, pending, publish, put_document, put_record, sync

__all__ = ["Placement", "json_records", "listing", "pending", "publish", "put_document", "put_record", "read_object", "region_keys",
           "sync"]

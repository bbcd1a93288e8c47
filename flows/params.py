"""The flows' parameters as the Prefect UI's Custom-run form shows them.

Each user-facing parameter defaults to a pydantic ``Field`` with a description (Prefect takes the form's default,
help text and required flag from it, and resolves the default when the flow is called without the argument).
What only automations, other flows and the CLI pass (``trigger``, ``first_failure_ts``, ``detected_at``,
``started_by``) is typed ``SkipJsonSchema[...]``: it stays a parameter, accepted when given, but is left out of the
form's schema.

Region names live in llmdr.yaml, which a flow reads at run time, while Prefect builds the form when `prefect
deploy` imports the flow, before any config is read: a type here cannot list them. ``deployments/configure.py``
adds the configured names as the choices of the region fields after each deploy, and the flows refuse an unknown
name with an error that lists the configured ones (``Config.region``).
"""

from __future__ import annotations

from pydantic import Field

CONFIG_PATH = Field("", description="Path to llmdr.yaml. Empty: $LLMDR_CONFIG, else llmdr.yaml in the worker's "
                                    "working folder. Relative paths in other fields resolve against the folder "
                                    "that holds llmdr.yaml (the project folder).")

# restore-bundle
RESTORE_TARGET = Field(description="Folder to restore into. A relative path resolves against the project folder "
                                   "(where llmdr.yaml is), not the worker's code checkout; it is created if "
                                   "missing and must be empty unless 'force' is set.")
RESTORE_REGION = Field("secondary", description="Region to read the snapshot from (a region name in llmdr.yaml).")
SNAPSHOT = Field("latest", description="Snapshot id, or a unique prefix of one (4+ hex characters), or 'latest' "
                                       "for the newest complete snapshot in the region.")
RESTORE_FORCE = Field(False, description="Restore into a folder that already holds files: the snapshot's files are "
                                         "overwritten, other files are left alone.")

# verify-replicas
VERIFY_SNAPSHOT = Field("latest", description="Snapshot to read back in every region: id, unique prefix, or "
                                              "'latest'.")
SAMPLE = Field(None, description="Which chunks to read: empty reads all of them; 'T' reads today's 1/T (a "
                                 "different share each day, all of them every T days); 'N/T' reads the fixed share "
                                 "N of T.")
REPAIR = Field(True, description="Replace a damaged or missing chunk from a region that holds an intact copy.")
RESTORE_TEST = Field(False, description="Also restore the snapshot into scratch space, serve it and ask it the "
                                        "golden set, in every region.")
GOLDEN_PATH = Field("golden.jsonl", description="The golden set for the restore test (JSONL, `llmdr golden "
                                                "record`); a relative path resolves against the project folder.")

# readiness-check
ONLY = Field(None, description="Run only these check kinds: credentials, rpo, components, drill, separation, "
                               "immutability, doors, bandwidth, footprint. Empty runs every check.")
NOTIFY = Field(True, description="Send the configured notifications when a check fails.")

# monitor-endpoints
DURATION_S = Field(58.0, description="How long this run probes the endpoints, in seconds (just under the "
                                     "deployment's 60 s schedule, so runs hand over to each other).")

# failover / failback
FAILOVER_TO = Field("", description="Region to move traffic to (a region name in llmdr.yaml). Empty: "
                                    "failover.target, else the first secondary region.")
FAILOVER_REASON = Field("manual failover", description="Why traffic moves: kept in the failover record, the "
                                                       "artifact and the notifications.")
FAILBACK_REASON = Field("primary healthy again", description="Why traffic returns to the primary: kept in the "
                                                             "record, the artifact and the notifications.")

# every flow
BUNDLE = Field(None, description="The bundle to act on, in a project with several (bundles: in llmdr.yaml); "
                                 "required there, and each per-bundle deployment sets it. Empty: the project's "
                                 "only bundle.")

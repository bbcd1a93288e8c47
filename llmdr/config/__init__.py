"""``llmdr.yaml``: one typed model for the bundle, the regions and the objectives.

Secrets are never in the file: a region names the environment variables (or the Prefect Secret block) its keys come
from. Loading a bad file raises ``ConfigError`` naming the file, the key (with its line) and what is wrong.

The package: ``values`` (durations, environment-variable names, the strict base model, component kinds),
``regions`` (the regions: section), ``sections`` (every other section), ``model`` (``Config``), ``loading``
(``load_config`` / ``parse_config``). It imports nothing from llmdr but ``llmdr.errors``: every other package may
import it.
"""

from llmdr.config.bundles import BundleEntry, BundleServing
from llmdr.config.loading import bundle_ref, load_config, parse_config, split_ref
from llmdr.config.model import Config
from llmdr.config.regions import Credentials, Encryption, LocalServer, ManifestSigning, ObjectLock, Region, Serving
from llmdr.config.sections import (
    Bundle,
    CaddyRouter,
    Checkpoints,
    Component,
    Contact,
    ControlPlane,
    Dataset,
    Drift,
    Drill,
    Failover,
    Metrics,
    Monitor,
    Notifications,
    Objectives,
    Readiness,
    Retention,
    Route53Router,
    Runbook,
    Signing,
    Tracking,
    Transfer,
)
from llmdr.config.values import DEFAULT_CONFIG, ComponentKind, format_duration, parse_duration

__all__ = [
    "DEFAULT_CONFIG", "Bundle", "BundleEntry", "BundleServing", "CaddyRouter", "Checkpoints", "Component",
    "ComponentKind", "Config", "Contact", "ControlPlane",
    "Credentials", "Dataset", "Drift", "Drill", "Encryption", "Failover", "LocalServer", "ManifestSigning", "Metrics", "Monitor",
    "Notifications", "ObjectLock", "Objectives", "Readiness", "Region", "Retention", "Route53Router", "Runbook",
    "Serving", "Signing", "Tracking", "Transfer", "bundle_ref", "format_duration", "load_config", "parse_config",
    "parse_duration", "split_ref",
]

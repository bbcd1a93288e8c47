"""``Config``: the whole of ``llmdr.yaml`` as one typed model, with the paths and regions derived from it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import Field, PrivateAttr, model_validator

from llmdr.config.bundles import BundleEntry
from llmdr.config.regions import ManifestSigning, Region
from llmdr.config.sections import (
    Bundle,
    CaddyRouter,
    Checkpoints,
    ControlPlane,
    Dataset,
    Drill,
    Failover,
    GoldenGate,
    Metrics,
    Monitor,
    Notifications,
    Objectives,
    Readiness,
    Retention,
    Route53Router,
    Runbook,
    Tracking,
    Transfer,
)
from llmdr.config.values import DEFAULT_CONFIG, StrictModel
from llmdr.errors import UsageError


class Config(StrictModel):
    version: Literal[1] = 1  # the file format's version; 1 is the only one
    # What is protected: the model bundle folder and the components it must hold. Or bundles: instead, a list.
    bundle_: Bundle | None = Field(default=None, alias="bundle")
    # Several bundles protected by one project, each its own repository under <prefix>/<name> in every region, with
    # its own state under <state_dir>/bundles/<name>; commands take --bundle NAME. Instead of bundle:, not with it.
    bundles: list[BundleEntry] | None = Field(default=None, min_length=1)
    # Where the copies live: exactly one primary and at least one secondary, in separate stores
    regions: list[Region] = Field(min_length=2)
    objectives: Objectives = Objectives()  # RPO, RTO and drill interval, checked by readiness and drills
    transfer: Transfer = Transfer()  # parallelism and memory of uploads, copies and restores
    # The bundle's snapshot retention, applied by protect-bundle in every region; null: every snapshot is kept.
    retention: Retention | None = None
    # Training checkpoints protected by protect-checkpoints; null: `llmdr protect --checkpoints` refuses to run.
    checkpoints: Checkpoints | None = None
    # One URL for clients in front of the regions' endpoints, chosen by kind: caddy or route53; null: llmdr cannot
    # switch traffic (failover and failback refuse).
    router: CaddyRouter | Route53Router | None = Field(default=None, discriminator="kind")
    monitor: Monitor = Monitor()  # how endpoints are probed and judged healthy, degraded or down
    failover: Failover = Failover()  # whether and how traffic moves when the active region is down
    metrics: Metrics = Metrics()  # the Prometheus exporter (`llmdr metrics serve`; `llmdr stack up` starts it)
    notifications: Notifications | None = None  # who hears of failovers and failed checks; null: nobody is told
    drill: Drill = Drill()  # how a DR drill simulates the outage and where its signed reports go
    # DVC datasets validated and pushed to every region with each protect-bundle run; empty: none.
    datasets: list[Dataset] = Field(default_factory=list)
    tracking: Tracking = Tracking()  # the MLflow tracking store and model registration
    # The database of the local Prefect server and the default MLflow store: sqlite (default) or a local PostgreSQL.
    control_plane: ControlPlane = ControlPlane()
    readiness: Readiness = Readiness()  # thresholds of `llmdr readiness`
    runbook: Runbook = Runbook()  # what `llmdr runbook` adds to what it derives from this file
    # Sign every manifest written and refuse any read without a valid signature; null: manifests are not signed.
    manifest_signing: ManifestSigning | None = None
    # The project's golden set (JSONL of prompts and recorded answers, `llmdr golden record`), relative to this file.
    # Each snapshot protect-bundle takes carries its own set (stored beside it in every region); this file judges
    # snapshots from before that and replicas llmdr did not start, is asked by the monitor, and gives the prompts
    # of the first set recorded.
    golden: str = "golden.jsonl"
    # How answers are judged against the golden set (exact, similarity or equivalent; threshold; how many cases must
    # pass), wherever it gates: failover, the router check, restore tests, drills.
    golden_gate: GoldenGate = GoldenGate()
    # Local state, relative to this file: caches, the local stack's data and generated keys (local.env), monitor
    # samples, router state, replicas, signing keys. Keep it out of version control.
    state_dir: str = ".llmdr"

    # set by load_config, not read from the file
    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)
    _source_file: Path | None = PrivateAttr(default=None)
    _views: dict[str, "Config"] = PrivateAttr(default_factory=dict)  # bundles: name -> its view (parse_config)
    _view_of: str | None = PrivateAttr(default=None)  # a view: its bundle's name (it has a state folder of its own)

    @property
    def bundle(self) -> Bundle:
        """The bundle this config protects; a project with ``bundles:`` has one per view (``for_bundle``)."""
        if self.bundle_ is None:
            raise UsageError(f"{self.source_file or DEFAULT_CONFIG} protects several bundles "
                             f"({', '.join(self.bundle_names())}): choose one with --bundle NAME (or LLMDR_BUNDLE, "
                             "or a flow's bundle parameter)")
        return self.bundle_

    def bundle_names(self) -> list[str]:
        """The names of the bundles this project protects, in file order."""
        return [b.name for b in self.bundles] if self.bundles else [self.bundle.name]

    @property
    def multi_bundle(self) -> bool:
        """True for the whole of a project with ``bundles:`` (not one of its views)."""
        return self.bundles is not None

    @property
    def view_of(self) -> str | None:
        """The bundle this is the view of (``for_bundle``); None for a project with one ``bundle:``."""
        return self._view_of

    def for_bundle(self, name: str | None) -> "Config":
        """The one-bundle config of bundle NAME, on which everything single-bundle runs unchanged: its overrides
        applied, each region's prefix extended with its name, its own state folder (``bundle_state_path``). A
        project with ``bundle:`` is its own view (NAME must be its bundle's name, or None)."""
        where = self.source_file or DEFAULT_CONFIG
        if self.bundles is None:
            if name is None or name == self.bundle.name or self.view_of is not None and name == self.view_of:
                return self
            raise UsageError(f"no bundle named {name!r} in {where}; it protects {self.bundle.name!r} only (unset "
                             "--bundle / LLMDR_BUNDLE, or name that one)")
        if name is None:
            raise UsageError(f"{where} protects several bundles ({', '.join(self.bundle_names())}): choose one with "
                             "--bundle NAME (or LLMDR_BUNDLE, or a flow's bundle parameter)")
        if name not in self._views:
            if name in self.bundle_names():
                raise UsageError(f"the bundle views of {where} are built by load_config/parse_config; load the "
                                 "file with them")
            raise UsageError(f"no bundle named {name!r} in {where}; its bundles: {', '.join(self.bundle_names())}")
        return self._views[name]

    def views(self) -> list["Config"]:
        """Every bundle's view (``for_bundle``), in file order; a one-bundle project is its only view."""
        if self.bundles is None:
            return [self]
        return [self.for_bundle(n) for n in self.bundle_names()]

    @property
    def bundle_state_path(self) -> Path:
        """Local state of this bundle alone: caches, replicas, monitor samples, router, failover history, scratch
        space, run marks. The project's state folder for a one-bundle project, ``<state_dir>/bundles/<name>`` for a
        view; what the bundles share (the local stack, keys, Prefect, MLflow, metrics) stays in ``state_path``."""
        return self.state_path / "bundles" / self._view_of if self._view_of else self.state_path

    @property
    def base_dir(self) -> Path:
        return self._base_dir

    @property
    def source_file(self) -> Path | None:
        return self._source_file

    @model_validator(mode="after")
    def _one_bundle_key(self) -> "Config":
        if self.bundle_ is not None and self.bundles is not None:
            raise ValueError("give either bundle: (one bundle) or bundles: (a list of them), not both; move the "
                             "bundle: entry into the bundles: list")
        if self.bundle_ is None and self.bundles is None:
            raise ValueError("bundle: is missing: name the bundle to protect (bundle: {name: ..., path: ...}), or "
                             "several under bundles:")
        if self.bundles is not None:
            names = [b.name for b in self.bundles]
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"bundle names must be unique; {dup} appears more than once in bundles:")
            regions = {r.name for r in self.regions}
            for b in self.bundles:
                unknown = sorted(set(b.serving) - regions)
                if unknown:
                    raise ValueError(f"bundle '{b.name}': serving names unknown regions {unknown}; known: "
                                     f"{', '.join(sorted(regions))}")
        return self

    @model_validator(mode="after")
    def _regions_separate(self) -> "Config":
        names = [r.name for r in self.regions]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"region names must be unique; {sorted(dup)} appears more than once")
        primaries = [r for r in self.regions if r.role == "primary"]
        if len(primaries) != 1:
            raise ValueError(f"exactly one region must have role: primary (found {len(primaries)})")
        primary = primaries[0]
        for r in self.regions:
            if r is primary:
                continue
            if r.failure_domain == primary.failure_domain:
                raise ValueError(
                    f"region '{r.name}' uses the same endpoint and bucket as the primary '{primary.name}' "
                    f"({r.endpoint or 'AWS ' + r.s3_region}, {r.bucket}): a copy there would not survive the "
                    "primary's loss. Point it at a separate server or region."
                )
            if r.endpoint is None and primary.endpoint is None and r.s3_region == primary.s3_region:
                raise ValueError(
                    f"region '{r.name}' is in the same AWS region ({r.s3_region}) as the primary: pick another "
                    "s3_region for disaster recovery"
                )
        names_set = set(names)
        ds_names = [d.name for d in self.datasets]
        if len(ds_names) != len(set(ds_names)):
            raise ValueError("dataset names must be unique")
        if self.drill.training_restore and self.checkpoints is None:
            raise ValueError("drill.training_restore: true restores the newest training checkpoint, but there is no "
                             "checkpoints: section; add one (checkpoints: {path: ...}) or set training_restore: false")
        if self.failover.target is not None and self.failover.target not in names_set:
            raise ValueError(f"failover.target {self.failover.target!r} is not a region name ({', '.join(names)})")
        if self.failover.target == primary.name:
            raise ValueError("failover.target must be a secondary region, not the primary")
        if isinstance(self.router, Route53Router):
            unknown = set(self.router.values) - names_set
            if unknown:
                raise ValueError(f"router.values names unknown regions {sorted(unknown)}; known: {', '.join(names)}")
        serving = [r.serving.url.lower() for r in self.regions if r.serving]
        if len(serving) != len(set(serving)):
            raise ValueError("two regions share a serving url: a replica in the same place does not survive the loss "
                             "of that place")
        used: dict[int, str] = {}
        for r in self.regions:
            if not r.is_local:
                continue
            for p in r.local_ports:
                if p in used:
                    raise ValueError(f"local regions '{used[p]}' and '{r.name}' both need port {p}; a local region "
                                     "uses its endpoint port to +8 and +10008: move one endpoint port")
                used[p] = r.name
        loopback = ("127.0.0.1", "localhost", "::1")
        more = [(f"region '{r.name}' serving", r.serving.port) for r in self.regions
                if r.serving and r.serving.host in loopback]
        if isinstance(self.router, CaddyRouter):
            more += [("the router", urlparse(self.router.listen).port), ("the router admin API",
                                                                          urlparse(self.router.admin).port)]
        if self.metrics.with_stack and used and self.metrics.host in loopback:  # `llmdr stack up` binds it
            more.append(("metrics.listen (the exporter `llmdr stack up` starts)", self.metrics.port))
        if self.control_plane.database == "postgres":
            more.append(("control_plane.postgres_port (the local PostgreSQL)", self.control_plane.postgres_port))
        for what, port in more:
            if port in used:
                raise ValueError(f"{what} wants port {port}, already used by {used[port]}; pick another port")
            used[port] = what
        return self

    @property
    def primary(self) -> Region:
        return next(r for r in self.regions if r.role == "primary")

    @property
    def secondaries(self) -> list[Region]:
        return [r for r in self.regions if r.role == "secondary"]

    def region(self, name: str | None) -> Region:
        if name is None:
            return self.primary
        for r in self.regions:
            if r.name == name:
                return r
        raise UsageError(f"no region named {name!r} in {self.source_file or DEFAULT_CONFIG}; "
                         f"known regions: {', '.join(r.name for r in self.regions)}")

    @property
    def state_path(self) -> Path:
        p = Path(self.state_dir)
        return p if p.is_absolute() else self.base_dir / p

    @property
    def reports_path(self) -> Path:
        p = Path(self.drill.reports_dir)
        p = p if p.is_absolute() else self.base_dir / p
        return p / self._view_of if self._view_of else p  # a bundle's drills: its own reports

    def dataset_path(self, ds: "Dataset") -> Path:
        p = Path(ds.path)
        return p if p.is_absolute() else self.base_dir / p

    def suite_path(self, ds: "Dataset") -> Path:
        p = Path(ds.suite or f"expectations/{ds.name}.json")
        return p if p.is_absolute() else self.base_dir / p

    @property
    def runbook_path(self) -> Path:
        p = Path(self.runbook.path)
        p = p if p.is_absolute() else self.base_dir / p
        return p.with_name(f"{p.stem}-{self._view_of}{p.suffix}") if self._view_of else p  # one per bundle

    @property
    def model_name(self) -> str:
        return self.tracking.model_name or self.bundle.name

    @property
    def golden_path(self) -> Path:
        p = Path(self.golden)
        return p if p.is_absolute() else self.base_dir / p

    def failover_target(self) -> Region:
        return self.region(self.failover.target) if self.failover.target else self.secondaries[0]

    @property
    def bundle_path(self) -> Path:
        p = Path(self.bundle.path)
        return p if p.is_absolute() else self.base_dir / p



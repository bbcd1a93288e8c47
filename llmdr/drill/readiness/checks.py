"""The readiness checks, one function each: credentials (a real signed call, and the keys' expiry), rpo (the DR copy's
newest complete snapshot vs the RPO objective), components (every required component in the DR copy), drill (a
recent passing drill), separation (regions really apart), immutability (versioning, Object Lock, kept snapshots
locked), doors (no port of a local region but S3 serves a caller without credentials), bandwidth (timed reads from the DR store → cold restore time vs the RTO) and footprint (stored bytes,
cost). Each returns a :class:`~llmdr.drill.readiness.report.Check` with the numbers it saw."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlparse

from llmdr.config import Config, Region, format_duration
from llmdr.drill.readiness.report import FAIL, PASS, WARN, Check, ago, gigabytes, utc_text
from llmdr.errors import LlmdrError
from llmdr.repo.manifest import parse_utc
from llmdr.repo.repository import Repository
from llmdr.repo.snapinfo import SnapshotInfo
from llmdr.repo.verify import chunk_where


def check_credentials(cfg: Config, region: Region, now: float) -> Check:
    """A real signed call with the region's keys, and their expiry where the provider tells it."""
    from llmdr.storage.credentials import resolve_keys
    from llmdr.storage.factory import region_s3

    cid, title = f"credentials/{region.name}", f"Credentials: {region.name}"
    keys = resolve_keys(cfg, region)
    where = keys_source(keys, region)
    store = region_s3(region, keys, prefix=region.prefix, connect_timeout=3, read_timeout=10)
    t0 = time.perf_counter()
    store.check_access()  # signed ListObjectsV2 on the bucket: wrong keys, missing bucket, unreachable all fail here
    call_ms = (time.perf_counter() - t0) * 1000
    data: dict[str, Any] = {"source": where, "signed_call": "s3:ListObjectsV2", "call_ms": round(call_ms, 1),
                            "endpoint": store.endpoint_url, "endpoint_source": store.endpoint.source}
    expiration = getattr(keys, "expiration", None)
    if expiration is None:
        return Check(cid, title, PASS, f"signed S3 call accepted by {store.where} ({call_ms:.0f} ms); keys from "
                     f"{where}; the provider exposes no expiry (static keys: rotate them on your schedule)", data=data)
    left = expiration.timestamp() - now
    data |= {"expires_utc": utc_text(expiration.timestamp()), "expires_in_s": round(left)}
    rto = cfg.objectives.rto.total_seconds()
    warn = cfg.readiness.credential_warning.total_seconds()
    if left <= 0:
        return Check(cid, title, FAIL, f"keys from {where} EXPIRED at {utc_text(expiration.timestamp())}",
                     "renew them (new session / re-assume the role) and update the source named here", data)
    if left < rto:
        return Check(cid, title, FAIL, f"keys expire in {ago(left)} ({utc_text(expiration.timestamp())}), sooner than "
                     f"the RTO {format_duration(cfg.objectives.rto)}: a restore started now would lose access "
                     "half-way", "use credentials that outlive a restore: longer sessions (session_duration) or "
                     "role_arn so llmdr assumes a fresh role itself", data)
    if left < warn:
        return Check(cid, title, WARN, f"signed S3 call accepted; keys expire in {ago(left)} "
                     f"({utc_text(expiration.timestamp())})", "renew them before they expire; with role_arn llmdr "
                     "renews them itself", data)
    return Check(cid, title, PASS, f"signed S3 call accepted by {store.where} ({call_ms:.0f} ms); keys from {where} "
                 f"valid for {ago(left)}", data=data)


def keys_source(keys: Any, region: Region) -> str:
    src = getattr(keys, "source", "")
    if src:
        return src
    c = region.credentials
    if c.default_chain:
        return "AWS default chain" + (f", profile '{c.profile}'" if c.profile else "")
    return f"Prefect Secret block '{c.prefect_secret_block}'" if c.prefect_secret_block else \
        f"environment {c.access_key_env}/{c.secret_key_env}"


def _newest(repo: Repository, bundle: str) -> tuple[list[SnapshotInfo], SnapshotInfo | None]:
    snaps = repo.snapshots(bundle=bundle)
    return snaps, (snaps[-1] if snaps else None)


def check_rpo(cfg: Config, region: Region, repo: Repository, now: float) -> Check:
    cid, title = f"rpo/{region.name}", f"DR copy fresh (RPO): {region.name}"
    rpo = cfg.objectives.rpo.total_seconds()
    snaps, newest = _newest(repo, cfg.bundle.name)
    if newest is None:
        return Check(cid, title, FAIL, f"no snapshot of '{cfg.bundle.name}' in {region.name}",
                     "run the protect-bundle deployment (or `llmdr protect`)", {"rpo_s": rpo})
    if repo.unreadable:
        bad = ", ".join(sorted(repo.unreadable))
        return Check(cid, title, FAIL, f"{len(repo.unreadable)} object(s) in {region.name} cannot be read or trusted "
                     f"({bad}: {next(iter(repo.unreadable.values()))})", f"`llmdr verify --region {region.name} "
                     "--repair` brings a damaged object back from another region; a forged one must be deleted "
                     "(one under Object Lock stays listed here until its lock ends, and is skipped everywhere else)",
                     {"unreadable": sorted(repo.unreadable)})
    present = repo.list_chunks()
    need = newest.manifest.chunk_set()
    missing = [d for d, n in need.items() if present.get(d) != n]
    age = now - newest.taken_at  # by the store's time when the writer's clock claims a later one
    data = {"snapshot": newest.id, "created": newest.manifest.created, "age_s": round(age, 1), "rpo_s": rpo,
            "chunks": len(need), "chunks_missing": len(missing), "future_dated": [s.id for s in snaps if s.future]}
    if missing:
        return Check(cid, title, FAIL, f"newest snapshot {newest.short} is listed but {len(missing)} of its "
                     f"{len(need)} chunks are missing (e.g. {chunk_where(repo, missing[0])})",
                     f"`llmdr verify {newest.short} --region {region.name} --repair` copies them back from a "
                     "healthy region", data)
    future = [s.short for s in snaps if s.future]
    if future:
        return Check(cid, title, FAIL, f"{len(future)} snapshot(s) in {region.name} are dated after the store "
                     f"received them ({', '.join(future[:4])}): the writer's clock ran ahead. Order and age use the "
                     f"store's time; the newest, {newest.short}, is {ago(age)} old",
                     "fix the clock of the host that took them (NTP); retention and `latest` already ignore their "
                     "claimed time", data)
    if age > rpo:
        return Check(cid, title, FAIL, f"newest complete snapshot {newest.short} is {ago(age)} old > RPO "
                     f"{format_duration(cfg.objectives.rpo)}", "check the protect-bundle schedule and its last "
                     "runs; protect now with `llmdr protect`", data)
    status = WARN if age > 0.75 * rpo else PASS
    return Check(cid, title, status, f"newest complete snapshot {newest.short} is {ago(age)} old (RPO "
                 f"{format_duration(cfg.objectives.rpo)}); all {len(need)} chunks present",
                 "protect more often: the next missed run breaks the RPO" if status == WARN else "", data)


def check_components(cfg: Config, region: Region, repo: Repository) -> Check:
    cid, title = f"components/{region.name}", f"Bundle complete in DR copy: {region.name}"
    required = sorted(k.value for k, c in cfg.bundle.components.items() if c.required)
    _, newest = _newest(repo, cfg.bundle.name)
    if newest is None:
        return Check(cid, title, FAIL, f"no snapshot of '{cfg.bundle.name}' in {region.name} to check",
                     "run protect-bundle")
    recorded = newest.manifest.components
    files = {e.path for e in newest.manifest.files}
    have = {k for k, v in recorded.items() if v.get("files") and all(f in files for f in v["files"])}
    data = {"snapshot": newest.id, "required": required, "present": sorted(have)}
    if not required:
        return Check(cid, title, WARN, "no required components are declared, so completeness cannot be checked",
                     "declare bundle.components in llmdr.yaml (`llmdr init` detects them)", data)
    missing = [k for k in required if k not in have]
    if missing:
        return Check(cid, title, FAIL, f"snapshot {newest.short} lacks required component(s): {', '.join(missing)}",
                     "add them to the bundle and protect again; a restore without them gives wrong answers", data)
    return Check(cid, title, PASS, f"snapshot {newest.short} holds all {len(required)} required components "
                 f"({', '.join(required)})", data=data)


def check_drill(cfg: Config, now: float) -> Check:
    from llmdr.drill.record import history

    interval = cfg.objectives.drill_interval.total_seconds()
    runs = history(cfg)
    passes = [r for r in runs if r.passed]
    data: dict[str, Any] = {"drills": len(runs), "interval_s": interval}
    if not passes:
        what = f"{len(runs)} drill(s) on record, none passed" if runs else "no DR drill on record"
        return Check("drill", "Recent passing DR drill", FAIL, what,
                     "run one: `llmdr drill` or the dr-drill-quarterly deployment", data)
    last = passes[-1]
    age = now - last.started_ts
    data |= {"last_pass": last.id, "last_pass_utc": utc_text(last.started_ts), "age_s": round(age)}
    latest = runs[-1]
    if age > interval:
        return Check("drill", "Recent passing DR drill", FAIL, f"last passing drill {last.id} was {ago(age)} ago > "
                     f"drill interval {format_duration(cfg.objectives.drill_interval)}",
                     "run a drill now: `llmdr drill`", data)
    if not latest.passed:
        return Check("drill", "Recent passing DR drill", WARN, f"the latest drill {latest.id} FAILED "
                     f"({'; '.join(latest.failure_reasons[:2])}); last pass {ago(age)} ago",
                     "fix what it found and run it again", data)
    due = interval - age
    if due < min(14 * 86400, interval * 0.15):
        return Check("drill", "Recent passing DR drill", WARN, f"last passing drill {last.id} {ago(age)} ago; the "
                     f"next is due in {ago(due)}", "schedule it", data)
    return Check("drill", "Recent passing DR drill", PASS, f"drill {last.id} passed {ago(age)} ago (interval "
                 f"{format_duration(cfg.objectives.drill_interval)})", data=data)


def check_separation(cfg: Config) -> list[Check]:
    """Each DR region against the primary, on the endpoints botocore will really use (llmdr.yaml's, else
    AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL / the profile's endpoint_url, else AWS S3 in s3_region): one endpoint for
    both is one store, whatever the config file says."""
    from llmdr.storage.aws import region_endpoint

    out = []
    p = cfg.primary
    pe = region_endpoint(p)
    for r in cfg.secondaries:
        cid, title = f"separation/{r.name}", f"Regions separate: {p.name} / {r.name}"
        re_ = region_endpoint(r)
        ph, rh = urlparse(pe.url).hostname or pe.url, urlparse(re_.url).hostname or re_.url
        data = {"names": [p.name, r.name], "endpoints": [pe.url, re_.url],
                "endpoint_sources": [pe.source, re_.source], "buckets": [p.bucket, r.bucket],
                "s3_regions": [p.s3_region, r.s3_region], "hosts": [ph, rh]}
        same = []
        if p.name == r.name:
            same.append("region name")
        if pe.url.rstrip("/").lower() == re_.url.rstrip("/").lower():
            same.append(f"endpoint {pe.url}" + (f" (buckets {p.bucket} and {r.bucket})"
                                                          if p.bucket != r.bucket else f" and bucket {p.bucket}"))
        if same:
            moved = [(x.name, e.source) for x, e in ((p, pe), (r, re_)) if e.source not in ("llmdr.yaml", "AWS")]
            sources = sorted({src for _, src in moved})
            why = ("" if not moved else f": {' and '.join(sources)} sends "
                   f"{'both regions' if len(moved) == 2 else 'region ' + moved[0][0]} there (llmdr.yaml names no "
                   "endpoint for " + ("them" if len(moved) == 2 else "it") + ")")
            act = (f"unset {' / '.join(sources)}, or give each region its own endpoint: in llmdr.yaml (which wins)"
                   if moved else "point the DR region at another site")
            out.append(Check(cid, title, FAIL, f"same {' and '.join(same)}{why}", act, data))
            continue
        warns = [f"{x.name}'s endpoint {e.url} is set by {e.source}, not llmdr.yaml" for x, e in ((p, pe), (r, re_))
                 if e.source not in ("llmdr.yaml", "AWS")]
        if ph == rh:
            warns.append(f"both stores run on host {ph}")
        if p.s3_region == r.s3_region:
            warns.append(f"both are in s3_region {p.s3_region}")
        if p.serving and r.serving and p.serving.host == r.serving.host:
            warns.append(f"both replicas serve from host {p.serving.host}")
        if warns:
            out.append(Check(cid, title, WARN, "different names and endpoints, but " + "; ".join(warns),
                             "fine for a local demo; in production put the DR region on another site, another "
                             "provider region and other hosts", data))
        else:
            out.append(Check(cid, title, PASS, f"{p.name} at {pe.describe(p.s3_region)} vs {r.name} at "
                             f"{re_.describe(r.s3_region)}", data=data))
    return out


def check_immutability(cfg: Config, region: Region, repo: Repository, now: float) -> Check:
    """Bucket versioning + Object Lock as the server reports them, no delete marker hiding a locked version, and
    the kept snapshots really locked."""
    cid, title = f"immutability/{region.name}", f"DR copy immutable: {region.name}"
    prot = repo.store.bucket_protection()
    data: dict[str, Any] = {"bucket": prot}
    problems = []
    if prot.get("versioning") != "Enabled":
        problems.append(f"bucket versioning is {prot.get('versioning', 'unknown')}")
    if not prot.get("object_lock"):
        problems.append("Object Lock is not enabled on the bucket")
    if region.object_lock is None:
        problems.append("llmdr.yaml sets no object_lock for this region, so copies are written unlocked")
    if problems:
        return Check(cid, title, FAIL, "; ".join(problems),
                     "set object_lock: {mode: COMPLIANCE, period: 30d} on the region and use a bucket created with "
                     "Object Lock (`llmdr stack up` creates it locally; on AWS: create-bucket "
                     "--object-lock-enabled-for-bucket)", data)
    from llmdr.repo.locks import Locker
    from llmdr.repo.undelete import describe, hidden_objects

    hidden = hidden_objects(repo.store)  # a plain DELETE hid locked bytes: readers that do not look below miss them
    data["hidden"] = [h["key"] for h in hidden]
    if hidden:
        return Check(cid, title, FAIL, f"{len(hidden)} object(s) hidden by a delete marker: "
                     + "; ".join(describe(h) for h in hidden[:4]) + (" …" if len(hidden) > 4 else ""),
                     f"run `llmdr undelete --region {region.name}` to remove the markers (the locked bytes are "
                     "intact), then find who deleted them", data)
    locker = Locker.of(repo.store)
    snaps = repo.snapshots(bundle=cfg.bundle.name)
    period = region.object_lock.period.total_seconds()
    data |= {"mode": region.object_lock.mode, "period_s": period, "snapshots": len(snaps)}
    if not snaps:
        return Check(cid, title, WARN, "bucket locked, but there is no snapshot yet to check", "run protect-bundle",
                     data)
    with ThreadPoolExecutor(max_workers=8) as pool:
        locks = list(pool.map(lambda s: locker.snapshot_lock(s.id), snaps))
    unlocked = [s.short for s, lk in zip(snaps, locks, strict=True)
                if lk is None or (not lk.legal_hold and lk.until <= now)]
    newest = snaps[-1]
    sample = sorted(newest.manifest.chunk_set())[:: max(1, len(newest.manifest.chunk_set()) // 16)][:16]
    with ThreadPoolExecutor(max_workers=8) as pool:
        chunk_locks = list(pool.map(lambda d: locker.chunk_lock(repo, d), sample))
    short_chunks = [d[:12] for d, lk in zip(sample, chunk_locks, strict=True)
                    if lk is None or lk.until < (locks[-1].until if locks[-1] else now) - locker.slack_s - 1]
    data |= {"unlocked_snapshots": unlocked, "chunks_sampled": len(sample), "chunks_locked_shorter": short_chunks}
    if unlocked or short_chunks:
        what = []
        if unlocked:
            what.append(f"{len(unlocked)} of {len(snaps)} snapshot(s) not locked now ({', '.join(unlocked[:4])})")
        if short_chunks:
            what.append(f"{len(short_chunks)} of {len(sample)} sampled chunk(s) of {newest.short} locked for "
                        "less than its manifest minus a quarter period")
        return Check(cid, title, FAIL, "; ".join(what), "run retention (`llmdr forget --region "
                     f"{region.name} ...` or protect-bundle): it re-extends the locks of the snapshots it keeps", data)
    earliest = min(lk.until for lk in locks if lk is not None)
    span = now - parse_utc(snaps[0].manifest.created).timestamp()
    data |= {"earliest_lock_utc": utc_text(earliest), "oldest_snapshot_age_s": round(span)}
    summary = (f"versioning on, Object Lock {region.object_lock.mode} {format_duration(region.object_lock.period)}; "
               f"all {len(snaps)} snapshot(s) locked (earliest lock ends {utc_text(earliest)})")
    if period < span:
        return Check(cid, title, WARN, summary + f"; but the policy keeps snapshots {ago(span)} old, longer than the "
                     "lock period: the older ones stay locked only while retention keeps extending them",
                     f"raise object_lock.period to at least {ago(span)}", data)
    return Check(cid, title, PASS, summary, data=data)


def check_doors(region: Region) -> Check:
    """A local region's ports other than S3, probed without credentials as anyone on the host could: any that reads,
    writes or deletes bypasses S3 auth and Object Lock, so the immutability check above would mean nothing."""
    from llmdr.common.process import port_open
    from llmdr.devstack.weedauth import probe_doors

    cid, title = f"doors/{region.name}", f"No unauthenticated door: {region.name}"
    if not port_open("127.0.0.1", region.port):
        return Check(cid, title, WARN, f"the region's S3 port {region.port} does not answer, so its other ports were "
                     "not probed", f"start it (`llmdr stack up --region {region.name}`) and run readiness again",
                     {"probed": 0})
    doors = probe_doors(region.port, region.bucket)
    open_ = [d for d in doors if d.answered]
    data = {"probed": len(doors), "ports": sorted({d.port for d in doors}), "open": [d.to_json() for d in open_]}
    if open_:
        shown = "; ".join(f"{d.what} port {d.port}: {d.request} ({d.action}) answered {d.detail}" for d in open_[:4])
        return Check(cid, title, FAIL, f"{len(open_)} unauthenticated request(s) were served: {shown}"
                     + (" …" if len(open_) > 4 else ""), "anyone on this host can read, write or delete this "
                     "region's data past S3 auth and Object Lock: restart the region with llmdr (`llmdr stack down "
                     f"--region {region.name}` then `llmdr stack up`), which gives every port but S3 a JWT or TLS "
                     "client-certificate check; if another program started this server, stop it", data)
    return Check(cid, title, PASS, f"all {len(doors)} unauthenticated probes of {len(data['ports'])} ports (master, "
                 "volume, filer, admin HTTP and gRPC; everything but S3) were refused", data=data)


def measure_throughput(repo: Repository, manifest: Any, *, probe_bytes: int, workers: int,
                       max_seconds: float = 10.0) -> dict[str, Any]:
    """Timed ranged reads of real chunks of ``manifest`` (largest first), ``workers`` at a time, until
    ``probe_bytes`` were read or ``max_seconds`` passed. Returns bytes, seconds and bytes per second."""
    chunks = sorted(manifest.chunk_set().items(), key=lambda kv: -kv[1])
    if not chunks:
        raise LlmdrError("the snapshot has no data to read for a throughput measurement")
    plan: list[tuple[str, int, int]] = []
    total = 0
    i = 0
    while total < probe_bytes:  # cycle through the chunks: a small bundle is read more than once
        d, n = chunks[i % len(chunks)]
        length = min(n, probe_bytes - total, 8 << 20)
        plan.append((d, 0, length))
        total += length
        i += 1
    deadline = time.monotonic() + max_seconds
    read = 0

    def fetch(item: tuple[str, int, int]) -> int:
        if time.monotonic() > deadline:
            return 0
        d, start, length = item
        return len(repo.read_chunk_range(d, start, length))

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="llmdr-probe") as pool:
        read = sum(pool.map(fetch, plan))
    secs = time.perf_counter() - t0
    return {"bytes": read, "seconds": round(secs, 3), "bytes_per_s": read / secs if secs > 0 else 0.0,
            "requests": len(plan), "workers": workers}


def check_bandwidth(cfg: Config, region: Region, repo: Repository) -> Check:
    from llmdr.drill.plan import human_rate, human_seconds, make_plan

    cid, title = f"bandwidth/{region.name}", f"Restore fits the RTO: {region.name}"
    _, newest = _newest(repo, cfg.bundle.name)
    if newest is None:
        return Check(cid, title, FAIL, "no snapshot to measure against", "run protect-bundle")
    size = sum(newest.manifest.chunk_set().values())  # bytes a restore downloads (each distinct chunk once)
    # a bundle smaller than the probe is read once, whole: that is exactly its restore's download
    m = measure_throughput(repo, newest.manifest, probe_bytes=min(cfg.readiness.probe_mb << 20, size),
                           workers=cfg.transfer.download_workers)
    bps = m["bytes_per_s"] * 8
    plan = make_plan(max(size, 1), max(bps, 1.0), cfg.objectives.rto.total_seconds(),
                     start_s=cfg.readiness.start_estimate.total_seconds(), efficiency=1.0,
                     source=f"measured from {region.name}")
    data = {"probe": m, "restore_bytes": size, "restore_s": round(plan.cold_total_s, 1),
            "rto_s": plan.rto_s, "needed_bps": plan.needed_bandwidth_bps}
    arithmetic = (f"{gigabytes(size)} at {human_rate(bps)} (measured: {gigabytes(m['bytes'])} in {m['seconds']:.2f} s, "
                  f"{m['workers']} parallel reads) = {human_seconds(plan.cold_restore_s)} + "
                  f"{human_seconds(plan.start_s)} start = {human_seconds(plan.cold_total_s)} vs RTO "
                  f"{human_seconds(plan.rto_s)}")
    if plan.meets:
        return Check(cid, title, PASS, "cold restore " + arithmetic, data=data)
    need = (f"needs ≥ {human_rate(plan.needed_bandwidth_bps)}" if plan.needed_bandwidth_bps
            else "the start time alone exceeds the RTO")
    warm = region.serving is not None and region.serving.warm
    if warm:
        return Check(cid, title, WARN, "cold restore " + arithmetic + "; the RTO holds only while the warm standby "
                     "runs", f"keep the warm standby healthy; a cold restore {need} (`llmdr plan --region "
                     f"{region.name}`)", data)
    return Check(cid, title, FAIL, "cold restore " + arithmetic, f"{need}, or keep a warm standby / a pre-staged "
                 f"copy in {region.name}: `llmdr plan --region {region.name}` shows the options", data)


def check_footprint(cfg: Config, region: Region, repo: Repository) -> Check:
    cid, title = f"footprint/{region.name}", f"Storage footprint and cost: {region.name}"
    snaps = repo.snapshots()
    logical = sum(s.manifest.total_size for s in snaps)
    unique: dict[str, int] = {}
    for s in snaps:
        unique.update(s.manifest.chunk_set())
    usage = repo.store.usage()
    stored = usage.get("current_bytes", 0) + usage.get("noncurrent_bytes", 0)
    ratio = logical / sum(unique.values()) if unique else 0.0
    data = {"snapshots": len(snaps), "logical_bytes": logical, "unique_chunk_bytes": sum(unique.values()),
            "stored_bytes": stored, "dedup_ratio": round(ratio, 2), "usage": usage}
    summary = (f"{len(snaps)} snapshot(s): {gigabytes(logical)} logical, {gigabytes(stored)} stored (dedup {ratio:.1f}x)")
    if region.price_per_gb_month is not None:
        cost = stored / 1e9 * region.price_per_gb_month
        data["monthly_cost"] = round(cost, 2)
        summary += f"; ≈ {cost:,.2f}/month at {region.price_per_gb_month}/GB-month"
    else:
        summary += "; no price_per_gb_month set, so no cost estimate"
    noncurrent = usage.get("noncurrent_bytes", 0)
    if stored and noncurrent > 0.2 * stored:
        return Check(cid, title, WARN, summary + f"; {gigabytes(noncurrent)} in noncurrent versions",
                     "versions outside llmdr's control (overwrites, delete markers) are kept by versioning: add a "
                     "lifecycle rule expiring noncurrent versions after the lock period", data)
    return Check(cid, title, PASS, summary, data=data)


def check_residency(cfg: Config) -> Check:
    """The residency policies (bundle, datasets) against each region's declared jurisdiction, and the DVC remotes
    really configured in each dataset's repository (``.dvc/config``): a remote left pointing elsewhere, e.g. at a
    region since removed, is where a plain ``dvc push`` sends the data. PASS with no policy (nothing to hold to)."""
    import configparser

    from llmdr.config.residency import allows, evidence, policies
    from llmdr.lineage.dvcrepo import locate, remote_url

    ev = evidence(cfg)
    cid, title = "residency", "Data stays in its jurisdiction"
    problems = list(ev["problems"])
    for ds in cfg.datasets if ev["declared"] else []:
        allowed = {remote_url(r).rstrip("/") for r in cfg.regions
                   if all(allows(p, r) for _, p in policies(cfg, ds))}
        try:
            _, root, _ = locate(cfg, ds)
        except LlmdrError:
            continue  # not tracked yet: nothing configured to push anywhere
        conf = configparser.ConfigParser(interpolation=None)
        conf.read([root / ".dvc" / "config", root / ".dvc" / "config.local"])
        for section in conf.sections():  # DVC writes ['remote "NAME"']
            url = conf[section].get("url", "").strip().rstrip("/")
            head = section.strip("'\" ")
            if head.startswith("remote ") and url and url not in allowed:
                name = head.removeprefix("remote ").strip("'\" ")
                problems.append(f"dataset '{ds.name}': DVC remote '{name}' in {root / '.dvc'} points at {url}, "
                                "which is not a region its policy allows")
    ev["problems"] = problems
    if not ev["declared"]:
        return Check(cid, title, PASS, ev["summary"], data=ev)
    if problems:
        return Check(cid, title, FAIL, "; ".join(problems),
                     "remove the region or the DVC remote outside the policy (`dvc remote remove NAME`), or declare "
                     "the region's jurisdiction; see docs/guide/residency.md", ev)
    return Check(cid, title, PASS, ev["summary"], data=ev)

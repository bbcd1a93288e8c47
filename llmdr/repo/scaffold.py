"""The commented ``llmdr.yaml`` that ``llmdr init`` writes."""

from __future__ import annotations

import fnmatch
import json
import os
from pathlib import Path

TEMPLATE = """\
# llmdr configuration: what to protect, where, and how fast it must come back.
# Secrets never go in this file: each region names the environment variables its keys are read from.
version: 1

bundle:
  name: {name}
  # The model bundle folder (relative to this file): weights, tokenizer, configs, prompt templates...
  path: {path}
  # What the bundle is made of. A snapshot is refused, and a restore fails, when a required component is missing,
  # empty or does not parse. Patterns are relative to the bundle folder; '*' also matches across folders.
  # Kinds: weights, tokenizer, model_config, generation_config, prompt_templates, serving_config, security_rules,
  # datasets, checkpoints. Detected by `llmdr init` in {path}:
{components}
regions:
  # Exactly one primary; every other region is a disaster-recovery copy. Two regions may not share a region
  # name or an endpoint+bucket: a copy in the same store does not survive the loss of that store.
  - name: primary
    role: primary
    endpoint: http://127.0.0.1:{pport}   # omit for AWS S3 and set s3_region instead
    s3_region: us-east-1
    bucket: llmdr-primary
    credentials:
      access_key_env: LLMDR_PRIMARY_ACCESS_KEY_ID
      secret_key_env: LLMDR_PRIMARY_SECRET_ACCESS_KEY
      # or: prefect_secret_block: llmdr-primary   (a Prefect Secret holding access_key_id/secret_access_key)
    local: {{}}      # `llmdr stack up` runs this region on this machine (SeaweedFS, ports {pport}-{pport_end} and {pport_admin})
    serving:       # this region's OpenAI-compatible endpoint; `llmdr stack up` starts it from THIS region's store
      url: http://127.0.0.1:{pserve}
      # command: "vllm serve {{model_dir}} --host {{host}} --port {{port}}"   # default for a local region: llmdr serve
  - name: secondary
    role: secondary
    endpoint: http://127.0.0.1:{sport}
    s3_region: us-east-1
    bucket: llmdr-secondary
    credentials:
      access_key_env: LLMDR_SECONDARY_ACCESS_KEY_ID
      secret_key_env: LLMDR_SECONDARY_SECRET_ACCESS_KEY
    local: {{}}      # ports {sport}-{sport_end} and {sport_admin}
    serving:
      url: http://127.0.0.1:{sserve}
      warm: true     # a warm standby restored from the secondary's own copy; false: cold start on failover
    # Write once, read many: every copy here is locked (S3 Object Lock) for `period`; nobody, not even with these
    # keys, can delete or overwrite it before then (COMPLIANCE; GOVERNANCE lets s3:BypassGovernanceRetention do it).
    # Retention extends the locks of the snapshots it keeps. The bucket needs Object Lock: `llmdr stack up` does it.
    object_lock: {{mode: COMPLIANCE, period: 30d}}
    # Client-side AES-256-GCM of every chunk and manifest written here (the key id is recorded in each object).
    # `llmdr stack up` generates the key into .llmdr/local.env; for a real region keep it in a secret store that
    # survives the loss of BOTH regions (or use prefect_secret_block:), or the copy cannot be read.
    encryption: {{key_env: LLMDR_SECONDARY_ENCRYPTION_KEY}}
    # price_per_gb_month: 0.023   # storage price, for the cost estimate in `llmdr readiness`

# One URL for clients, in front of the regions. Locally: Caddy, switched through its admin API without a restart.
# In AWS: kind: route53 (hosted_zone_id, record_name, policy: weighted|failover, values: {{region: value}}, url).
router:
  kind: caddy
  listen: http://127.0.0.1:{rport}
  admin: http://127.0.0.1:{radmin}

monitor:
  interval: 1s        # probe every endpoint and the router this often
  timeout: 2s
  down_after: 2       # consecutive failed probes before an endpoint is down (and the active one fails over)
  z_threshold: 4.0    # robust z-score of latency / tokens against the learned baseline that flags "degraded"
  golden_every: 10    # a golden prompt spot-check every Nth round

failover:
  auto: true          # the Prefect automation runs the failover deployment when the active region is down
  confirm_probes: 3   # direct probes that must all fail first (a blip does not move traffic)

# notifications:      # on failover, failback and failed verification
#   webhook_url_env: LLMDR_WEBHOOK_URL    # a Slack/Teams/generic incoming webhook, read from the environment
#   prefect_block: slack-webhook/ops      # or a Prefect notification block

golden: golden.jsonl  # golden answers (`llmdr golden record`), checked before and after every switch

# Every manifest is signed and checked on read, so a manifest edited or forged in a store is refused (also in an
# unencrypted region). hmac: a shared key from the environment; ed25519: private key signs, public key verifies.
manifest_signing: {{method: hmac, hmac_key_env: LLMDR_MANIFEST_KEY}}

objectives:
  rpo: 5m              # newest snapshot in the DR region may be at most this old
  rto: 15m             # time allowed from outage to correct answers from the DR region
  drill_interval: 90d  # a DR drill at least this often

# Which snapshots protect-bundle keeps, in every region, after each run. It runs every RPO/2 (150 s for the 5m
# above: 576 snapshots a day); without this section every one is kept forever, and the catalog, `llmdr snapshots` and each region's
# metadata grow without end. The newest snapshot is never forgotten. A forgotten snapshot's space comes back with
# the prune; in a region under Object Lock its objects stay until their locks end.
retention:
  keep_last: 576       # the newest 576 snapshots: a day at one every 150 s
  prune: true          # then delete the chunks no remaining snapshot (of any bundle) uses...
  grace: 6h            # ...once written at least this long ago (a snapshot still uploading has chunks no manifest names)

transfer:
  workers: 8            # parallel chunk uploads and cross-region copies
  download_workers: 16  # parallel chunk downloads during a restore
  max_inflight_mb: 64   # memory bound for upload chunks in flight (peak RSS grows with it)
  fsync: false          # true: flush each restored file to disk before renaming it into place (slower; an
                        # interrupted restore is re-verified by hash on resume either way)

# Local state (stat cache, manifest cache, the local stack's data and generated keys). Keep it out of git.
state_dir: .llmdr
"""


def render_components(bundle_dir: Path) -> str:
    from llmdr.repo.bundle import DEFAULT_PATTERNS, detect_components, list_files

    files = list_files(bundle_dir)
    found = detect_components(bundle_dir, files)
    lines = []
    for kind, pats in DEFAULT_PATTERNS.items():
        hits = found.get(kind, [])
        used = [p for p in pats if any(fnmatch.fnmatchcase(f, p) for f in hits)]
        if hits:  # found now, so losing it later is exactly the failure to catch
            lines.append(f"    {kind.value}: {{paths: {json.dumps(used)}, required: true}}   # {len(hits)} file(s)")
        else:
            lines.append(f"    # {kind.value}: {{paths: {json.dumps(pats)}, required: true}}   # not found")
    header = "  components:" if found else "  components: {}   # nothing detected: declare what the bundle needs"
    return "\n".join([header, *lines]) + "\n"


def render_config(bundle_dir: Path, *, name: str | None, config_path: Path, primary_port: int,
                  secondary_port: int, router_port: int = 18300) -> str:
    base = config_path.absolute().parent
    try:
        rel = os.path.relpath(bundle_dir.absolute(), base)
    except ValueError:
        rel = str(bundle_dir.absolute())
    bundle_name = name or bundle_dir.absolute().name
    safe = "".join(c if c.isalnum() or c in "._-" else "-" for c in bundle_name).strip("-._") or "bundle"
    return TEMPLATE.format(name=safe, path=rel, components=render_components(bundle_dir), pport=primary_port, pport_end=primary_port + 8, pport_admin=primary_port + 10008,
                           sport=secondary_port, sport_end=secondary_port + 8, sport_admin=secondary_port + 10008,
                           pserve=primary_port + 17, sserve=secondary_port + 17, rport=router_port,
                           radmin=router_port + 1)

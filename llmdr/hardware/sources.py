"""Where a region's GPU readings come from (``regions[].hardware.source``), one :class:`Poll` per read.

A source never raises for what the world does (no nvidia-smi on this host, a driver that does not answer, a dead
exporter, output that does not parse): the poll carries the reason in ``error`` and whatever GPUs it could read.
Only a programming error (an unknown source kind) raises. Commands run with llmdr's child environment (no S3 keys),
under ``hardware.timeout``.
"""

from __future__ import annotations

import http.client
import logging
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from llmdr.common.process import child_env
from llmdr.config.hardware import Hardware
from llmdr.hardware.readings import (
    QUERY_FIELDS,
    REMAP_FIELDS,
    THROTTLE_FIELD_NEW,
    THROTTLE_FIELD_OLD,
    GpuReading,
    HardwareParseError,
    XidEvent,
    merge_remapped,
    parse_dcgm,
    parse_query_gpu,
    parse_remapped_rows,
    parse_xid_log,
)

log = logging.getLogger(__name__)
NO_NVIDIA_SMI = "no NVIDIA GPU: nvidia-smi not found on PATH"
ONE_BLOCK_S = 5.0  # rows of one nvidia-smi call are stamped within milliseconds of each other
_OUTPUT_LIMIT = 4 << 20  # a kernel log or a big node's metrics, but not an endless stream


@dataclass
class Poll:
    """One read of one region's source. ``error``: the source could not be read at all (then ``readings`` is
    empty); ``notes``: a part that could not be read (remapped rows, the kernel log) while the rest was."""

    region: str
    source: str
    ts: float
    readings: list[GpuReading] = field(default_factory=list)
    xids: list[XidEvent] = field(default_factory=list)
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> dict[str, Any]:
        return {"region": self.region, "source": self.source, "ts": self.ts, "error": self.error,
                "notes": list(self.notes), "readings": [r.to_json() for r in self.readings],
                "xids": [x.to_json() for x in self.xids]}


class CommandFailed(Exception):
    """A command could not run, timed out or exited non-zero; the message says which, for a poll's reason.
    ``output``: what it printed on standard output all the same."""

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.output = output


def run_command(argv: list[str], timeout: float) -> str:
    """The command's standard output (text). Raises :class:`CommandFailed` with a one-line reason."""
    exe = shutil.which(argv[0]) if os.sep not in argv[0] else argv[0]
    if exe is None:
        raise CommandFailed(f"{argv[0]} not found on PATH")
    extra = {"SSH_AUTH_SOCK": os.environ["SSH_AUTH_SOCK"]} if "SSH_AUTH_SOCK" in os.environ else None
    try:
        proc = subprocess.run([exe, *argv[1:]], capture_output=True, timeout=timeout, env=child_env(extra),
                              stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        raise CommandFailed(f"{argv[0]} did not finish within {timeout:g} s") from None
    except OSError as exc:
        raise CommandFailed(f"{argv[0]} could not run: {exc.strerror or exc}") from None
    out = proc.stdout[:_OUTPUT_LIMIT].decode("utf-8", "replace")
    if proc.returncode != 0:
        said = (proc.stderr.decode("utf-8", "replace").strip() or out.strip()).splitlines()
        raise CommandFailed(f"{argv[0]} exited {proc.returncode}" + (f": {said[0][:200]}" if said else ""), out)
    return out


class Source:
    """Reads one region's GPUs. Subclasses implement :meth:`_read`; :meth:`poll` turns every failure into a
    reason."""

    kind = "none"

    def __init__(self, region: str, settings: Hardware) -> None:
        self.region = region
        self.settings = settings

    @property
    def timeout(self) -> float:
        return self.settings.timeout.total_seconds()

    def poll(self, now: float | None = None) -> Poll:
        now = time.time() if now is None else now
        p = Poll(self.region, self.kind, now)
        try:
            self._read(p)
        except (CommandFailed, HardwareParseError) as exc:
            p.error, p.readings = str(exc), []
        except Exception as exc:  # noqa: BLE001 - a broken source must never stop the monitor
            log.warning("hardware source of %s failed", self.region, exc_info=True)
            p.error, p.readings = f"{type(exc).__name__}: {exc}"[:300], []
        if self.settings.xid_command and p.ok:
            try:
                p.xids = parse_xid_log(run_command(self.settings.xid_command, self.timeout))
            except CommandFailed as exc:
                p.notes.append(f"kernel log (Xid) not read: {exc}")
        if p.ok and not p.readings:
            p.error = f"{self.kind} listed no GPU"
        return p

    def _read(self, p: Poll) -> None:
        p.error = "no hardware source configured (regions[].hardware.source: none)"


class NvidiaSmi(Source):
    """``nvidia-smi`` on this host: ``--query-gpu`` (newer field names first, the older throttle name if the driver
    refuses it), then ``--query-remapped-rows`` (best effort: not every GPU has a row remapper)."""

    kind = "nvidia-smi"

    def __init__(self, region: str, settings: Hardware) -> None:
        super().__init__(region, settings)
        self.fields = list(QUERY_FIELDS)

    def _query(self) -> str:
        return run_command(["nvidia-smi", f"--query-gpu={','.join(self.fields)}", "--format=csv,noheader,nounits"],
                           self.timeout)

    def _read(self, p: Poll) -> None:
        if shutil.which("nvidia-smi") is None:
            raise CommandFailed(NO_NVIDIA_SMI)
        try:
            try:
                text = self._query()
            except CommandFailed as exc:
                if THROTTLE_FIELD_NEW not in str(exc) or THROTTLE_FIELD_NEW not in self.fields:
                    raise
                self.fields[self.fields.index(THROTTLE_FIELD_NEW)] = THROTTLE_FIELD_OLD  # a driver before r535
                text = self._query()
            p.readings = parse_query_gpu(text, fields=self.fields, now=p.ts)
        except CommandFailed as exc:
            # a lost GPU makes nvidia-smi exit non-zero ("Unable to determine the device handle for GPU...: GPU is
            # lost") while it still prints the other GPUs' rows: keep those, so the lost one shows as missing
            p.readings = self._rows_that_parse(exc.output, p)
            if not p.readings:
                raise
            p.notes.append(str(exc))
        for r in p.readings:
            r.ts = p.ts  # nvidia-smi prints local time; the poll's own time is unambiguous
        try:
            remap = run_command(["nvidia-smi", f"--query-remapped-rows={','.join(REMAP_FIELDS)}",
                                 "--format=csv,noheader,nounits"], self.timeout)
            merge_remapped(p.readings, parse_remapped_rows(remap))
        except (CommandFailed, HardwareParseError) as exc:
            p.notes.append(f"remapped rows not read: {exc}")

    def _rows_that_parse(self, output: str, p: Poll) -> list[GpuReading]:
        out = []
        for line in output.splitlines():
            try:
                out += parse_query_gpu(line, fields=self.fields, now=p.ts)
            except HardwareParseError:
                if line.strip():
                    p.notes.append(f"nvidia-smi said: {line.strip()[:200]}")
        return out


class Command(Source):
    """A command printing ``nvidia-smi --query-gpu`` CSV (with a header, or the default fields without). One block
    (all rows within a few seconds) is stamped with the poll time: nvidia-smi prints the GPU host's local time. A
    longer series (a recording, ``-l`` output) keeps its ``timestamp`` column, read as UTC."""

    kind = "command"

    def _read(self, p: Poll) -> None:
        p.readings = parse_query_gpu(run_command(list(self.settings.command or []), self.timeout), now=p.ts)
        times = [r.ts for r in p.readings]
        if times and max(times) - min(times) < ONE_BLOCK_S:
            for r in p.readings:
                r.ts = p.ts


class DcgmExporter(Source):
    """NVIDIA's dcgm-exporter, read over HTTP (``hardware.url``)."""

    kind = "dcgm-exporter"

    def _read(self, p: Poll) -> None:
        url = self.settings.url or ""
        u = urlsplit(url)
        where = f"{u.scheme}://{u.hostname}{f':{u.port}' if u.port else ''}{u.path}"  # no user:password, no query
        req = urllib.request.Request(url, headers={"Accept": "text/plain", "User-Agent": "llmdr-hardware"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310 - a configured URL
                body = resp.read(_OUTPUT_LIMIT).decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            exc.close()
            raise CommandFailed(f"dcgm-exporter at {where} answered HTTP {exc.code}") from None
        except (OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            raise CommandFailed(f"dcgm-exporter at {where} not reachable: {reason}") from None
        p.readings = parse_dcgm(body, now=p.ts)


SOURCES: dict[str, type[Source]] = {"none": Source, "nvidia-smi": NvidiaSmi, "command": Command,
                                    "dcgm-exporter": DcgmExporter}


def open_source(region: str, settings: Hardware | None) -> Source:
    """The source a region's ``hardware:`` names (``none`` when it has none)."""
    settings = settings or Hardware()
    return SOURCES[settings.source](region, settings)

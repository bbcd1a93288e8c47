"""GPU readings and Xid events in an sqlite file (WAL, busy timeout, one connection per process, as the endpoint
monitor's ``SampleStore``): the monitor writes while ``llmdr hardware status`` reads. A failed poll is kept too,
as a row with an empty uuid and its reason, so "the source stopped answering" is itself on record."""

from __future__ import annotations

import json
from pathlib import Path

from llmdr.common.sqlitestore import WalStore
from llmdr.hardware.readings import GpuReading, XidEvent
from llmdr.hardware.sources import Poll


class HardwareStore(WalStore):
    def __init__(self, path: Path) -> None:
        super().__init__(path, (
            "CREATE TABLE IF NOT EXISTS readings (ts REAL NOT NULL, region TEXT NOT NULL, uuid TEXT NOT "
            "NULL, error TEXT, data TEXT)",
            "CREATE INDEX IF NOT EXISTS readings_gpu_ts ON readings (region, uuid, ts)",
            "CREATE TABLE IF NOT EXISTS xids (ts REAL, region TEXT NOT NULL, bus_id TEXT NOT NULL, "
            "code INTEGER NOT NULL, detail TEXT NOT NULL, seen REAL NOT NULL)",
            # the same log line read again by the next poll is the same event (NULL ts: plain dmesg)
            "CREATE UNIQUE INDEX IF NOT EXISTS xids_once ON xids (region, bus_id, code, detail, "
            "COALESCE(ts, -1))",
        ))

    def add(self, poll: Poll) -> int:
        """Keep a poll: its readings, or its error; and its Xid events not seen before. Returns how many Xid
        events were new."""
        rows = [(r.ts, poll.region, r.uuid, None, json.dumps(r.to_json(), sort_keys=True)) for r in poll.readings]
        if poll.error:
            rows.append((poll.ts, poll.region, "", poll.error, None))
        with self._connect() as con:
            con.executemany("INSERT INTO readings VALUES (?, ?, ?, ?, ?)", rows)
            before = con.total_changes
            con.executemany("INSERT OR IGNORE INTO xids VALUES (?, ?, ?, ?, ?, ?)",
                            [(x.ts, poll.region, x.bus_id, x.code, x.detail, poll.ts) for x in poll.xids])
            return con.total_changes - before

    def gpus(self, region: str, *, since: float | None = None) -> list[str]:
        with self._connect() as con:
            return [r[0] for r in con.execute("SELECT DISTINCT uuid FROM readings WHERE region = ? AND uuid != '' "
                                              "AND ts >= ? ORDER BY uuid", (region, since or -1e300))]

    def readings(self, region: str, uuid: str, *, limit: int | None = None) -> list[GpuReading]:
        """One GPU's readings, oldest first; ``limit`` keeps the newest."""
        with self._connect() as con:
            rows = con.execute("SELECT data FROM readings WHERE region = ? AND uuid = ? ORDER BY ts DESC, rowid DESC"
                               " LIMIT ?", (region, uuid, -1 if limit is None else int(limit))).fetchall()
        return [GpuReading.from_json(json.loads(r[0])) for r in reversed(rows)]

    def last_poll(self, region: str) -> tuple[float, str | None] | None:
        """(time, error) of the region's newest row: error None when the newest poll read GPUs."""
        with self._connect() as con:
            row = con.execute("SELECT ts, error FROM readings WHERE region = ? ORDER BY ts DESC, rowid DESC LIMIT 1",
                              (region,)).fetchone()
        return None if row is None else (row[0], row[1])

    def xids(self, region: str, *, since: float) -> list[XidEvent]:
        """The region's Xid events logged (or, without a log time, first seen) since ``since``, oldest first."""
        with self._connect() as con:
            rows = con.execute("SELECT ts, bus_id, code, detail FROM xids WHERE region = ? AND COALESCE(ts, seen) >= ?"
                               " ORDER BY COALESCE(ts, seen)", (region, since)).fetchall()
        return [XidEvent(*r) for r in rows]

    def prune(self, older_than: float) -> int:
        with self._connect() as con:
            n = con.execute("DELETE FROM readings WHERE ts < ?", (older_than,)).rowcount
            return n + con.execute("DELETE FROM xids WHERE COALESCE(ts, seen) < ?", (older_than,)).rowcount

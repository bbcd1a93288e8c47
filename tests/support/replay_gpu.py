"""Replays an nvidia-smi --query-gpu recording (tests/data/gpu/*.csv) as a `hardware: {source: command}` would run
it: each run prints the recording's header line (if it has one) and its rows from where the last run stopped up to
the row number in STATE's "upto". With --shift-to-now the printed rows' timestamps are moved so that the last one
is the current time (a recording read as if it were live).

    python tests/support/replay_gpu.py RECORDING STATE.json [--shift-to-now]
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

FMT = "%Y/%m/%d %H:%M:%S.%f"


def _ts(cell: str) -> float:
    return datetime.strptime(cell.strip(), FMT).replace(tzinfo=timezone.utc).timestamp()


def main(argv: list[str]) -> int:
    recording, state_path = Path(argv[0]), Path(argv[1])
    shift = "--shift-to-now" in argv[2:]
    lines = [ln for ln in recording.read_text().splitlines() if ln.strip()]
    header = lines[0] if lines[0].startswith("timestamp") else None
    rows = lines[1:] if header else lines
    state = json.loads(state_path.read_text())
    start, end = state.get("printed", 0), min(state.get("upto", len(rows)), len(rows))
    block = rows[start:end]
    if shift and block:
        offset = time.time() - _ts(block[-1].split(",")[0])
        block = [datetime.fromtimestamp(_ts(r.split(",")[0]) + offset, timezone.utc).strftime(FMT)[:-3] + ","
                 + r.split(",", 1)[1] for r in block]
    state["printed"] = end
    state_path.write_text(json.dumps(state))
    print("\n".join(([header] if header else []) + block))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Stands in for `nvidia-smi` on a machine without a GPU (tests/test_hardware.py puts it on PATH as `nvidia-smi`).

    fake_nvidia_smi.py r470 GPU_RECORDING REMAP_RECORDING|- ARGS...
        `--query-gpu=...` answered with the recording's last row as an r470 driver would, refusing the newer
        `clocks_event_reasons.active` like it; `--query-remapped-rows` from REMAP_RECORDING, or with the error of a
        GPU that has no row remapper (-).
    fake_nvidia_smi.py lost GPU_RECORDING - ARGS...
        the recording's last block (its last 2 rows, the default fields), the second GPU's row replaced by the
        message nvidia-smi prints for a GPU that fell off the bus, and exit code 15.
"""

from __future__ import annotations

import sys
from pathlib import Path

LOST = "Unable to determine the device handle for GPU0000:0B:00.0: GPU is lost.  Reboot the system to recover this GPU"


def main(argv: list[str]) -> int:
    mode, gpu, remap, args = argv[0], Path(argv[1]), argv[2], argv[3:]
    query = next((a.split("=", 1)[1] for a in args if a.startswith("--query-gpu=")), None)
    rows = [ln for ln in gpu.read_text().splitlines() if ln.strip() and not ln.startswith("timestamp")]
    if query is not None and mode == "lost":
        print(rows[-2])
        print(LOST)
        return 15
    if query is not None:
        if "clocks_event_reasons.active" in query.split(","):
            print('Field "clocks_event_reasons.active" is not a valid field to query.')
            return 2
        print(rows[-1].replace(" W", "").replace(" %", "").replace(" MiB", ""))  # nounits
        return 0
    if any(a.startswith("--query-remapped-rows=") for a in args):
        if remap == "-":
            print("This operation is not supported on this GPU.", file=sys.stderr)
            return 3
        print(Path(remap).read_text(), end="")
        return 0
    print(f"fake nvidia-smi: unexpected arguments {args}", file=sys.stderr)
    return 9


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Stands in for `nvidia-smi` on a machine without a GPU (tests/test_hardware.py puts it on PATH as `nvidia-smi`):
answers `--query-gpu=...` from a recording as an r470 driver would, refusing the newer `clocks_event_reasons.active`
like it, and `--query-remapped-rows` from another recording, or with the error of a GPU that has no row remapper.

    fake_nvidia_smi.py GPU_RECORDING REMAP_RECORDING|- ARGS...
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    gpu, remap, args = Path(argv[0]), argv[1], argv[2:]
    query = next((a.split("=", 1)[1] for a in args if a.startswith("--query-gpu=")), None)
    if query is not None:
        if "clocks_event_reasons.active" in query.split(","):
            print('Field "clocks_event_reasons.active" is not a valid field to query.', file=sys.stdout)
            return 2
        rows = [ln for ln in gpu.read_text().splitlines()[1:] if ln.strip()]  # the header's order is the query's
        print("\n".join(r.replace(" W", "").replace(" %", "").replace(" MiB", "") for r in rows[-1:]))
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

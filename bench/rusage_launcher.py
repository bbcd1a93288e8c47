"""Run one command and write its wall time and rusage (from ``os.wait4``) as JSON: ``rusage_launcher.py OUT.json CMD...``.

Why a launcher: a child's ``ru_maxrss`` is the high-water mark of every memory image the process had, including
the one it held between fork and exec, which is a copy of its parent. Spawned straight from bench.py it would
start at bench.py's own peak (~90 MB: boto3, buffers). Run with ``python -I -S``, this launcher is ~8 MB, so any
peak above that is the tool's own, exactly. Standard library only; nothing is imported before the spawn.
"""

import os
import sys
import time


def main() -> int:
    out, cmd = sys.argv[1], sys.argv[2:]
    t0 = time.perf_counter()
    pid = os.posix_spawnp(cmd[0], cmd, os.environ)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    import json

    with open(out, "w") as fh:
        json.dump({"wall_s": wall, "maxrss_kib": usage.ru_maxrss, "utime_s": usage.ru_utime,
                   "stime_s": usage.ru_stime, "exit_code": code}, fh)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())

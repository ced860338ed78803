"""The floor under a durable lone event: what one ``fdatasync`` after a small write
costs on this disk, in CPU and in wall time, appending (the file grows, as the WAL
does) and writing into a file already written that far (its size does not change).

    python -m bench.fsync_floor                      # in the system's temp directory
    python -m bench.fsync_floor --dir /var/lib/bamboo --syncs 2000
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

RECORD = b"x" * 299 + b"\n"  # about one event's WAL record


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(directory: Path, syncs: int, prewritten: bool) -> tuple[float, float]:
    """CPU and wall microseconds per write + fdatasync."""
    path = directory / ("prewritten.wal" if prewritten else "appended.wal")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        if prewritten:
            os.write(fd, b"\0" * (len(RECORD) * syncs))
            os.fsync(fd)
        cpu, wall = cpu_seconds(), time.perf_counter()
        for i in range(syncs):
            if prewritten:
                os.pwrite(fd, RECORD, i * len(RECORD))
            else:
                os.write(fd, RECORD)
            os.fdatasync(fd)
        cpu, wall = cpu_seconds() - cpu, time.perf_counter() - wall
    finally:
        os.close(fd)
        path.unlink()
    return cpu / syncs * 1e6, wall / syncs * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--syncs", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bamboo-fsync-floor-") as tmp:
        results = {}
        for prewritten in (False, True, False, True):
            cpu, wall = measure(Path(tmp), args.syncs, prewritten)
            kind = "pre-written" if prewritten else "appending"
            results.setdefault(kind, []).append((cpu, wall))
            print(f"{kind:12s} per write + fdatasync: CPU {cpu:6.1f} us, wall {wall:6.1f} us")
        append_cpu = min(cpu for cpu, _ in results["appending"])
        prewritten_cpu = min(cpu for cpu, _ in results["pre-written"])
        print(f"RATIO fdatasync CPU pre-written/appending = {prewritten_cpu / append_cpu:.3f}")


if __name__ == "__main__":
    main()

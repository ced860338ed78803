"""The floor under a durable lone event: what one ``fdatasync`` after a small write
costs on this disk, in CPU and in wall time, three ways: appending (the file grows),
into a file already written that far with zeros, and into room allocated ahead with
``posix_fallocate`` (its size set, no data written: what the WAL does, wal.py). In the
last two the file's size does not change at a sync.

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


WAYS = ("appending", "pre-written", "allocated")


def measure(directory: Path, syncs: int, way: str) -> tuple[float, float]:
    """CPU and wall microseconds per write + fdatasync, ``way`` one of WAYS."""
    path = directory / f"{way}.wal"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        if way == "pre-written":
            os.write(fd, b"\0" * (len(RECORD) * syncs))
        elif way == "allocated":
            os.posix_fallocate(fd, 0, len(RECORD) * syncs)
        os.fsync(fd)
        cpu, wall = cpu_seconds(), time.perf_counter()
        for i in range(syncs):
            if way == "appending":
                os.write(fd, RECORD)
            else:
                os.pwrite(fd, RECORD, i * len(RECORD))
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
        results: dict[str, list[tuple[float, float]]] = {}
        for way in WAYS * 2:
            cpu, wall = measure(Path(tmp), args.syncs, way)
            results.setdefault(way, []).append((cpu, wall))
            print(f"{way:12s} per write + fdatasync: CPU {cpu:6.1f} us, wall {wall:6.1f} us")
        append_cpu = min(cpu for cpu, _ in results["appending"])
        for way in WAYS[1:]:
            way_cpu = min(cpu for cpu, _ in results[way])
            print(f"RATIO fdatasync CPU {way}/appending = {way_cpu / append_cpu:.3f}")


if __name__ == "__main__":
    main()

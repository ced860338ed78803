"""What one lone WAL sync costs the JSONL store's sync helper process, in its own CPU:
a file allocated ahead (as a WAL segment is), then ``--syncs`` times a 300-byte
``pwrite`` into it and the helper's ``fdatasync`` (``Syncer.sync``), one at a time, 1 ms
apart (so that each one wakes a sleeping helper, as a lone event's commit does).
Printed per ``--rounds``: the helper's CPU clock per sync and this process's (the loop's
side: the ``send`` that wakes the helper, the answer's ``recv``, the pwrite and asyncio).
The helper's CPU is mostly the kernel's (the sync, two sleeps and wake-ups a sync) and
moves by a quarter between runs on a shared machine; ``--instructions`` counts its user
space instead, exactly: the helper under valgrind's callgrind, runs of 100 and of
100 + ``--syncs`` syncs, the difference per sync. Run from the tree to measure (its
shim or checkout on the path), trees alternated:

    cd /work/wt/base && PYTHONPATH=/work/wt/base.shim python /work/wt/tree/bench/sync_helper_cost.py
    cd /work/wt/tree && PYTHONPATH=/work/wt/tree.shim python bench/sync_helper_cost.py
    (the same with --instructions)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

from bamboo_session.persistence.jsonl.syncer import Syncer

RECORD = b"x" * 299 + b"\n"


def process_cpu(pid: int) -> float:
    """The kernel's CPU clock of process ``pid`` (clock_getcpuclockid(3))."""
    return time.clock_gettime(((~pid) << 3) | 2)


async def measure(syncs: int, rounds: int, directory: str) -> list[tuple[float, float]]:
    fd = os.open(os.path.join(directory, "segment"), os.O_WRONLY | os.O_CREAT, 0o644)
    os.posix_fallocate(fd, 0, len(RECORD) * (syncs * max(rounds, 1) + 100))
    os.fdatasync(fd)
    syncer = Syncer.start()
    assert syncer is not None, "no sync helper on this platform"
    key, offset, results = object(), 0, []
    try:
        for round_ in range(-1, rounds):  # round -1: the helper's start, not counted
            helper, own = process_cpu(syncer.pid), time.process_time()
            for _ in range(syncs if round_ >= 0 or not rounds else 50):
                os.pwrite(fd, RECORD, offset)
                offset += len(RECORD)
                error = await syncer.sync(key, fd)
                if error is not None:
                    raise error
                await asyncio.sleep(0.001)
            if round_ >= 0:
                helper, own = process_cpu(syncer.pid) - helper, time.process_time() - own
                results.append((helper / syncs * 1e6, own / syncs * 1e6))
    finally:
        await syncer.close()
        os.close(fd)
    return results


def instructions(syncs: int) -> float:
    """The helper's user-space instructions per sync, counted by callgrind."""
    totals = []
    popen = subprocess.Popen
    for count in (100, 100 + syncs):
        with tempfile.TemporaryDirectory(prefix="bamboo-sync-helper-cost-") as tmp:
            out = Path(tmp) / "helper.cg"

            def counted(argv: list[str], out: Path = out, **kwargs: Any) -> Any:
                callgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
                return popen([*callgrind, *argv], stderr=subprocess.DEVNULL, **kwargs)

            subprocess.Popen = counted  # type: ignore[misc,assignment]  # how Syncer.start starts it
            try:
                uvloop.run(measure(count, 0, tmp))
            finally:
                subprocess.Popen = popen  # type: ignore[misc]
            found = re.search(r"^(?:totals|summary): (\d+)", out.read_text(), re.MULTILINE)
            assert found is not None, f"{out}: no totals"
            totals.append(int(found.group(1)))
    return (totals[1] - totals[0]) / syncs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--syncs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--instructions", action="store_true", help="count, under callgrind")
    args = parser.parse_args()
    if args.instructions:
        print(f"sync helper user-space instructions per sync: {instructions(args.syncs):,.0f}")
        return
    with tempfile.TemporaryDirectory(prefix="bamboo-sync-helper-cost-") as tmp:
        results = uvloop.run(measure(args.syncs, args.rounds, tmp))
    helper = [r[0] for r in results]
    own = [r[1] for r in results]
    print(
        f"sync helper CPU per sync: median {statistics.median(helper):.1f} us "
        f"(rounds {', '.join(f'{h:.1f}' for h in helper)}); this process's: median "
        f"{statistics.median(own):.1f} us"
    )


if __name__ == "__main__":
    main()

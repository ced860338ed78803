"""What one lone durable WAL commit costs in CPU, by the way its ``fdatasync`` is run
(issue 14; bench/RESULTS.md, the tenth and twelfth rounds): the JSONL store's sync
helper process, the store's own I/O thread, a thread pool, and io_uring.

Each commit is driven the way the store drives a lone event's: on a uvloop loop that
is otherwise idle, one at a time, a few hundred a second (paced, so every commit starts
from a sleeping loop), a ~300-byte record written into room allocated and synced ahead
in a WAL-like file, then synced; the next waits for the previous one's sync. Modes:

- ``none``: the write alone (``durability=os``'s floor: the loop's own wake-up).
- ``inline``: ``fdatasync`` on the loop's thread, which stops the loop for the sync
  (the twelfth round's experiment): the floor, no hand-off at all.
- ``helper``: ``persistence/jsonl/syncer.py``'s ``Syncer``, as the store uses it.
- ``thread``: ``fdatasync`` on the store's ``IoThread`` (its fallback).
- ``pool``: ``fdatasync`` in a ``ThreadPoolExecutor`` (``run_in_executor``).
- ``uring-fsync``: the write on the loop, then an ``IORING_OP_FSYNC`` with
  ``IORING_FSYNC_DATASYNC``, its completion signalled on an eventfd the loop watches.
- ``uring-linked``: an ``IORING_OP_WRITE`` linked to that fsync, in one submission.
- ``uring-ringfd``: as ``uring-fsync``, the loop watching the ring's own descriptor
  (readable while completions wait) instead of an eventfd: one read fewer.

Modes alternate within one invocation, ``--rounds`` times, in a rotating order, since
the machine is shared and drifts; each segment begins with a few commits not counted.
CPU is read for the whole process (its CPU clock, every thread, io_uring's ``iou-wrk``
workers included, which are threads of it; and ``/proc/self/stat``'s utime + stime in
clock ticks), per thread (``/proc/self/task/*/schedstat``), and for the helper process.
Every completion's result is checked (a write's length, an fsync's 0), and before the
rounds a fsync of a pipe must come back as an error (EINVAL), so an error does surface.
Whether io_uring's fsync is a real ``fdatasync`` shows with the kernel's tracepoints::

    perf record -e ext4:ext4_sync_file_enter -e io_uring:io_uring_submit_req \\
        -- python -m bench.io_uring_probe --modes uring-linked --rounds 1 --commits 50
    perf script | grep -c 'datasync 1'

    python -m bench.io_uring_probe                      # every mode, 5 rounds
    python -m bench.io_uring_probe --rounds 8 --rate 300 --commits 900 --dir /var/lib/bamboo
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from bamboo_session.persistence.jsonl.syncer import Syncer
from bamboo_session.persistence.jsonl.tasks import IoThread
from bench.common import _own_cpu, run
from bench.io_uring_ring import RingSyncer, ring_unavailable

RECORD = b'{"sid":"s","seq":1,"off":0,"crc":0,"lines":[' + b"x" * 250 + b"]}\n"
MODES = (
    "none",
    "inline",
    "helper",
    "thread",
    "pool",
    "uring-fsync",
    "uring-linked",
    "uring-ringfd",
)
WARMUP_COMMITS = 20
TICK = os.sysconf("SC_CLK_TCK")


# -- CPU readings ----------------------------------------------------------------------


def stat_ticks() -> int:
    """utime + stime of this whole process from /proc/self/stat, in clock ticks."""
    with open("/proc/self/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def thread_cpu() -> dict[int, tuple[str, int]]:
    """Each live thread's name and CPU time in ns (its scheduler's runtime)."""
    threads: dict[int, tuple[str, int]] = {}
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            name = (task / "comm").read_text().strip()
            runtime = int((task / "schedstat").read_text().split()[0])
            threads[int(task.name)] = (name, runtime)
    return threads


def thread_kind(tid: int, name: str) -> str:
    if tid == os.getpid():
        return "loop"
    if name.startswith("iou-wrk"):
        return "iou-wrk"
    return "threads"


@dataclass
class Reading:
    process_ns: int
    ticks: int
    threads: dict[int, tuple[str, int]]
    helper_s: float

    @classmethod
    def now(cls, helper_pid: int | None) -> Reading:
        helper = _own_cpu(helper_pid) if helper_pid else 0.0
        return cls(
            time.clock_gettime_ns(time.CLOCK_PROCESS_CPUTIME_ID), stat_ticks(), thread_cpu(), helper
        )


@dataclass
class Segment:
    """One mode's run of ``commits`` lone commits: CPU per commit in us."""

    mode: str
    commits: int
    process_us: float
    ticks_us: float
    by_kind: dict[str, float]
    helper_us: float
    latencies_us: list[float] = field(default_factory=list)

    @property
    def total_us(self) -> float:
        """The whole cost: this process and, for ``helper``, the helper's."""
        return self.process_us + self.helper_us


def measured(
    mode: str, commits: int, before: Reading, after: Reading, latencies: list[float]
) -> Segment:
    per = 1e3 * commits  # ns to us per commit
    by_kind: dict[str, float] = {}
    for tid, (name, runtime) in after.threads.items():
        start = before.threads.get(tid, (name, 0))[1]
        kind = thread_kind(tid, name)
        by_kind[kind] = by_kind.get(kind, 0.0) + (runtime - start) / per
    process_us = (after.process_ns - before.process_ns) / per
    # Threads that ended within the segment (io_uring retires idle workers) are in the
    # process's clock only.
    by_kind["ended"] = process_us - sum(by_kind.values())
    ticks_us = (after.ticks - before.ticks) / TICK * 1e6 / commits
    helper_us = (after.helper_s - before.helper_s) * 1e6 / commits
    return Segment(mode, commits, process_us, ticks_us, by_kind, helper_us, latencies)


# -- the ways to sync ------------------------------------------------------------------


class WalFile:
    """A fresh WAL-like file per segment: the helper is told of each new one by its
    identity, as the store tells it of each new segment."""

    def __init__(self, fd: int) -> None:
        self.fd = fd


CommitFn = Callable[[WalFile, bytes, int], Awaitable[None]]


class Ways:
    """Every mode's resources, kept across rounds as the store keeps its own."""

    def __init__(self, modes: list[str]) -> None:
        self.loop = asyncio.get_running_loop()
        self.helper: Syncer | None = Syncer.start() if "helper" in modes else None
        if "helper" in modes and self.helper is None:
            raise SystemExit("the sync helper cannot start here")
        self.io_thread = IoThread("probe-io")
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="probe-pool")
        self.rings = {
            "uring-fsync": RingSyncer(wake="eventfd") if "uring-fsync" in modes else None,
            "uring-linked": RingSyncer(wake="eventfd") if "uring-linked" in modes else None,
            "uring-ringfd": RingSyncer(wake="ringfd") if "uring-ringfd" in modes else None,
        }

    @property
    def helper_pid(self) -> int | None:
        # The Syncer keeps its process to itself; the probe reads the helper's CPU.
        return self.helper._process.pid if self.helper is not None else None

    def commit_fn(self, mode: str) -> CommitFn:
        """An awaitable commit of ``data`` at ``offset`` of ``fd``: written, then synced;
        any failure raises."""
        loop, helper, ring = self.loop, self.helper, self.rings.get(mode)

        async def none(wal: WalFile, data: bytes, offset: int) -> None:
            pwrite(wal.fd, data, offset)

        async def inline(wal: WalFile, data: bytes, offset: int) -> None:
            pwrite(wal.fd, data, offset)
            os.fdatasync(wal.fd)

        async def by_helper(wal: WalFile, data: bytes, offset: int) -> None:
            assert helper is not None
            pwrite(wal.fd, data, offset)
            error = await helper.sync(wal, wal.fd)
            if error is not None:
                raise error

        async def by_thread(wal: WalFile, data: bytes, offset: int) -> None:
            pwrite(wal.fd, data, offset)
            await self.io_thread.run(loop, os.fdatasync, wal.fd)

        async def by_pool(wal: WalFile, data: bytes, offset: int) -> None:
            pwrite(wal.fd, data, offset)
            await loop.run_in_executor(self.pool, os.fdatasync, wal.fd)

        async def by_ring(wal: WalFile, data: bytes, offset: int) -> None:
            assert ring is not None
            pwrite(wal.fd, data, offset)
            await ring.datasync(wal.fd)

        async def by_ring_linked(wal: WalFile, data: bytes, offset: int) -> None:
            assert ring is not None
            await ring.write_and_datasync(wal.fd, data, offset)

        table: dict[str, CommitFn] = {
            "none": none,
            "inline": inline,
            "helper": by_helper,
            "thread": by_thread,
            "pool": by_pool,
            "uring-fsync": by_ring,
            "uring-linked": by_ring_linked,
            "uring-ringfd": by_ring,
        }
        return table[mode]

    async def close(self) -> None:
        if self.helper is not None:
            await self.helper.close()
        for ring in self.rings.values():
            if ring is not None:
                ring.close()
        self.io_thread.shutdown()
        self.pool.shutdown()


def pwrite(fd: int, data: bytes, offset: int) -> None:
    if os.pwrite(fd, data, offset) != len(data):
        raise OSError(errno.EIO, "short write")


# -- driving ---------------------------------------------------------------------------


def wal_file(directory: Path, size: int) -> int:
    """A fresh file with ``size`` bytes allocated and synced ahead, as wal.py keeps."""
    fd, path = tempfile.mkstemp(dir=directory, suffix=".wal")
    os.unlink(path)
    os.posix_fallocate(fd, 0, size)
    os.fdatasync(fd)
    return fd


async def run_segment(ways: Ways, mode: str, commits: int, rate: float, directory: Path) -> Segment:
    commit = ways.commit_fn(mode)
    wal = WalFile(wal_file(directory, (commits + WARMUP_COMMITS) * len(RECORD) + 4096))
    loop = asyncio.get_running_loop()
    try:
        offset = 0
        latencies: list[float] = []
        before: Reading | None = None
        start = loop.time()
        for i in range(WARMUP_COMMITS + commits):
            if i == WARMUP_COMMITS:
                before = Reading.now(ways.helper_pid)
                start = loop.time()
            delay = start + (i - (WARMUP_COMMITS if before else 0)) / rate - loop.time()
            await asyncio.sleep(max(delay, 0.0))  # a lone event: the loop slept before it
            began = time.perf_counter()
            await commit(wal, RECORD, offset)
            latencies.append((time.perf_counter() - began) * 1e6)
            offset += len(RECORD)
        assert before is not None
        after = Reading.now(ways.helper_pid)
    finally:
        os.close(wal.fd)
    return measured(mode, commits, before, after, latencies[WARMUP_COMMITS:])


async def check_errors_surface(ways: Ways) -> None:
    """A fsync io_uring cannot do (of a pipe) must come back as that error."""
    for mode, ring in ways.rings.items():
        if ring is None:
            continue
        read_end, write_end = os.pipe()
        try:
            await ring.datasync(write_end)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            print(f"check {mode}: a pipe's fsync failed as it should ({exc})")
        else:
            raise SystemExit(f"{mode}: a pipe's fsync reported success")
        finally:
            os.close(read_end)
            os.close(write_end)


async def probe(args: argparse.Namespace) -> list[Segment]:
    modes = list(args.modes)
    uring_modes = [mode for mode in modes if mode.startswith("uring")]
    missing = ring_unavailable() if uring_modes else None
    if missing:
        print(f"io_uring modes skipped: {missing}")
        modes = [mode for mode in modes if mode not in uring_modes]
    ways = Ways(modes)
    segments: list[Segment] = []
    try:
        await check_errors_surface(ways)
        for mode in modes:  # the helper's interpreter starts, io_uring's workers appear
            await run_segment(ways, mode, WARMUP_COMMITS, args.rate, args.dir)
        for round_number in range(args.rounds):
            shift = round_number % len(modes)
            for mode in modes[shift:] + modes[:shift]:
                segment = await run_segment(ways, mode, args.commits, args.rate, args.dir)
                segments.append(segment)
                print_segment(round_number, segment)
    finally:
        await ways.close()
    return segments


# -- reporting -------------------------------------------------------------------------


def print_segment(round_number: int, s: Segment) -> None:
    kinds = " ".join(f"{kind} {us:5.1f}" for kind, us in sorted(s.by_kind.items()))
    lat = sorted(s.latencies_us)
    print(
        f"round {round_number} {s.mode:13s} total {s.total_us:6.1f} us/commit "
        f"(process {s.process_us:6.1f}, stat ticks {s.ticks_us:6.1f}, helper "
        f"{s.helper_us:5.1f}; {kinds}); wall p50 {lat[len(lat) // 2]:7.1f} us, "
        f"p99 {lat[int(len(lat) * 0.99)]:7.1f} us",
        flush=True,
    )


def report(segments: list[Segment]) -> None:
    modes = list(dict.fromkeys(s.mode for s in segments))
    rounds = len(segments) // len(modes)
    totals = {m: [s.total_us for s in segments if s.mode == m] for m in modes}
    print("\nmedian over rounds, us of CPU per lone commit (this process + the helper's):")
    for mode in modes:
        print(
            f"  {mode:13s} {statistics.median(totals[mode]):7.1f}  "
            f"(each round: {', '.join(f'{v:.1f}' for v in totals[mode])})"
        )
    for base in ("helper", "none"):
        if base not in totals:
            continue
        for mode in modes:
            if mode == base:
                continue
            ratios = [totals[mode][r] / totals[base][r] for r in range(rounds)]
            print(
                f"RATIO io_uring_probe CPU {mode}/{base} = {statistics.median(ratios):.3f} "
                f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)})"
            )
    if "none" in totals and "helper" in totals:
        # The sync's own cost: each mode's CPU above the write alone, against the helper's.
        for mode in modes:
            if mode in ("none", "helper"):
                continue
            ratios = [
                (totals[mode][r] - totals["none"][r]) / (totals["helper"][r] - totals["none"][r])
                for r in range(rounds)
            ]
            print(
                f"RATIO io_uring_probe sync CPU above none {mode}/helper = "
                f"{statistics.median(ratios):.3f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--commits", type=int, default=600, help="counted per segment")
    parser.add_argument("--rate", type=float, default=300.0, help="commits a second")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    report(run(probe(args)))


if __name__ == "__main__":
    main()

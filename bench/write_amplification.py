"""Write amplification: how many bytes does the JSONL backend write per byte appended,
and does that grow with the length of a session's history?

One session gets a long history through the public API (``fsync`` durability, the
default, with its WAL), in ten equal phases; for each phase the bench reads

- *appended*: how much the session's log grew (the events as stored, one line each);
- *write()*: bytes the process handed to write/pwrite syscalls (``wchar`` of
  /proc/self/io): every file, the log, the WAL, checkpoints, indexes;
- *block*: bytes of pages the process dirtied for the disk (``write_bytes`` of
  /proc/self/io), which counts a page again each time a sync cleaned it in between.

and prints each as a multiple of *appended*, for the first, middle and last phase, the
worst phase, and the whole run including the close. A store that rewrote the history
(the seed's checkpoints) shows the multiple growing phase after phase; a bounded one
stays flat. Two shapes: many small messages from concurrent appenders, and a few
large ones appended one at a time.

Run: ``python -m bench.write_amplification [--small 100000] [--large 300]
[--large-bytes 900000] [--dir DIR]``; ``--tiny`` runs in seconds (the tests use it).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig
from bamboo_session.protocol.models import Message, Session

PHASES = 10


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=100_000, help="small messages")
    parser.add_argument("--small-bytes", type=int, default=100, help="content of each")
    parser.add_argument("--appenders", type=int, default=16, help="concurrent, small ones")
    parser.add_argument("--large", type=int, default=300, help="large messages")
    parser.add_argument("--large-bytes", type=int, default=900_000, help="content of each")
    parser.add_argument("--dir", help="where to put the data (default: a temp dir)")
    parser.add_argument("--tiny", action="store_true", help="a quick run for the tests")
    args = parser.parse_args(argv)
    if args.tiny:
        args.small, args.large, args.large_bytes, args.appenders = 2000, 20, 50_000, 8
    return args


@dataclass
class Sample:
    appended: int  # bytes of log
    wchar: int
    block: int

    def __sub__(self, other: Sample) -> Sample:
        return Sample(
            self.appended - other.appended, self.wchar - other.wchar, self.block - other.block
        )


def sample(base: Path) -> Sample:
    counters = {}
    with open("/proc/self/io") as io:
        for line in io:
            name, _, value = line.partition(":")
            counters[name] = int(value)
    log = sum(path.stat().st_size for path in (base / "events").glob("*.jsonl"))
    return Sample(log, counters["wchar"], counters["write_bytes"])


def ratio(part: int, whole: int) -> str:
    return f"{part / whole:6.2f}x" if whole else "   n/a"


def report(title: str, phases: list[Sample], whole: Sample, base: Path, elapsed: float) -> None:
    print(title)
    print(f"   {'phase':<14}{'appended':>12}{'write()':>10}{'block':>10}")
    picks = [("1st tenth", 0), ("middle tenth", PHASES // 2), ("last tenth", PHASES - 1)]
    for name, i in picks:
        p = phases[i]
        print(
            f"   {name:<14}{p.appended / 1e6:>9.1f} MB"
            f"{ratio(p.wchar, p.appended):>10}{ratio(p.block, p.appended):>10}"
        )
    worst_w = max(phases, key=lambda p: p.wchar / max(p.appended, 1))
    worst_b = max(phases, key=lambda p: p.block / max(p.appended, 1))
    print(
        f"   {'worst tenth':<14}{'':>12}"
        f"{ratio(worst_w.wchar, worst_w.appended):>10}{ratio(worst_b.block, worst_b.appended):>10}"
    )
    print(
        f"   {'whole run':<14}{whole.appended / 1e6:>9.1f} MB"
        f"{ratio(whole.wchar, whole.appended):>10}{ratio(whole.block, whole.appended):>10}"
        f"   (with the close; {elapsed:.1f} s)"
    )
    sizes: dict[str, int] = {}
    for path in base.rglob("*"):
        if path.is_file():
            kind = path.parent.name + "/*" + "".join(path.suffixes[-1:])
            sizes[kind] = sizes.get(kind, 0) + path.stat().st_size
    files = ", ".join(f"{kind} {size:,} B" for kind, size in sorted(sizes.items()))
    print(f"   files at the end: {files}")


async def appender(
    storage: JsonlStorage, phase: int, worker: int, count: int, workers: int, content: str
) -> None:
    """This worker's share of a phase's messages, one append at a time."""
    for n in range(worker, count, workers):
        await storage.append_message("long", Message.user(f"{phase}.{n} {content}"))


async def run_shape(base: Path, count: int, size: int, appenders: int, title: str) -> None:
    start = time.perf_counter()
    before = sample(base)
    storage = await JsonlStorage.open(JsonlStorageConfig(base))
    await storage.create_session(Session.new("long"))
    content = "x" * size
    per_phase = count // PHASES
    phases = []
    for phase in range(PHASES):
        at_start = sample(base)

        workers = [
            appender(storage, phase, worker, per_phase, appenders, content)
            for worker in range(appenders)
        ]
        await asyncio.gather(*workers)
        phases.append(sample(base) - at_start)
    await storage.close()
    whole = sample(base) - before
    report(title, phases, whole, base, time.perf_counter() - start)


async def run(root: Path, args: argparse.Namespace) -> None:
    print(f"write amplification in {root} (JsonlStorage, durability fsync, WAL on)")
    await run_shape(
        root / "small",
        args.small,
        args.small_bytes,
        args.appenders,
        f"A. {args.small:,} messages of {args.small_bytes} bytes, "
        f"{args.appenders} concurrent appenders, one session",
    )
    await run_shape(
        root / "large",
        args.large,
        args.large_bytes,
        1,
        f"B. {args.large:,} messages of {args.large_bytes:,} bytes, one at a time, one session",
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    root = Path(args.dir or tempfile.mkdtemp(prefix="bamboo-write-amp-"))
    root.mkdir(parents=True, exist_ok=True)
    for shape in ("small", "large"):
        shutil.rmtree(root / shape, ignore_errors=True)
    try:
        asyncio.run(run(root, args))
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

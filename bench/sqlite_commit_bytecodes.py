"""What one lone append costs the SQLite store in Python bytecodes, on the writer's thread
and on the event loop's: a store in a temporary directory (``durability=os``: the sync
changes no bytecode), a session, and ``--appends`` appends awaited one at a time, each
alone in its group commit, after as many unmeasured. A count, not a time: steady on a
loaded machine. ``before`` (an older checkout, as bench/compare.py runs one) and this
tree each in a process of its own, alternated; printed: bytecodes per append of each,
each run, and the ratio of medians.

    python -m bench.sqlite_commit_bytecodes /work/wt/base --appends 300 --runs 2
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from .compare import OLDER_TREE, older_package

ROOT = Path(__file__).resolve().parent.parent
# A child: ``bamboo_session`` from the package at argv[1], then ``count(argv[2])``.
_COUNT = """
import json
from bench.sqlite_commit_bytecodes import count
print(json.dumps(count(int(sys.argv[1]))))
"""
CHILD = OLDER_TREE + _COUNT


def count(appends: int) -> dict[str, float]:
    """Bytecodes per lone append, by thread: ``writer``, ``loop``, ``other``."""
    counts: collections.Counter[str] = collections.Counter()
    counting = threading.Event()

    def opcodes(frame: FrameType, event: str, arg: object) -> Any:
        if event == "opcode" and counting.is_set():
            name = threading.current_thread().name
            kind = (
                "writer" if "sqlite-write" in name else "loop" if name == "MainThread" else "other"
            )
            counts[kind] += 1
        return opcodes

    def calls(frame: FrameType, event: str, arg: object) -> Any:
        frame.f_trace_opcodes = True
        return opcodes

    threading.settrace(calls)
    sys.settrace(calls)
    try:
        asyncio.run(_appends(appends, counting))
    finally:
        sys.settrace(None)
        threading.settrace(None)
    return {kind: counts[kind] / appends for kind in ("writer", "loop", "other")}


async def _appends(appends: int, counting: threading.Event) -> None:
    from bamboo_session.persistence.sqlite import SqliteStorage, SqliteStorageConfig
    from bamboo_session.protocol.events import Token
    from bamboo_session.protocol.models import Session

    with tempfile.TemporaryDirectory(prefix="bamboo-bench-") as place:
        config = SqliteStorageConfig(Path(place) / "s.db", durability="os")
        async with await SqliteStorage.open(config) as store:
            await store.create_session(Session.new("s", now=store.now()))
            item = [(Token(content="token"), None)]
            for _ in range(appends):  # warm: caches, statements, the row cache
                await store.append_events("s", item)
            counting.set()
            for _ in range(appends):
                await store.append_events("s", item)
            counting.clear()


def run(tree: Path, place: Path, appends: int) -> dict[str, float]:
    package = older_package(tree, place)
    argv = [sys.executable, "-c", CHILD, str(package), str(appends)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=True)
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path, help="an older checkout")
    parser.add_argument("--appends", type=int, default=300)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    trees = {"before": args.before, "tree": ROOT}
    runs: dict[str, list[dict[str, float]]] = {label: [] for label in trees}
    with tempfile.TemporaryDirectory(prefix="bamboo-bench-") as tmp:
        for number in range(args.runs):
            for label, tree in trees.items():
                found = run(tree, Path(tmp) / f"{label}{number}", args.appends)
                runs[label].append(found)
                print(label, {kind: round(value, 1) for kind, value in found.items()})
    for kind in ("writer", "loop", "other"):
        medians = {label: statistics.median(r[kind] for r in runs[label]) for label in trees}
        ratio = medians["tree"] / max(medians["before"], 1e-9)
        print(f"{kind}: before {medians['before']:.1f}, tree {medians['tree']:.1f}, {ratio:.4f}")


if __name__ == "__main__":
    main()

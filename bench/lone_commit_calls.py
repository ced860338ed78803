"""What one lone append with fsync costs the JSONL store, counted in calls: a store in
a temporary directory (the WAL and its sync helper, as served), a session, and
``--appends`` appends awaited one at a time, each alone in its group commit. Counted
under ``sys.setprofile`` on asyncio's own loop (whose ``create_future`` and
``call_soon`` are Python functions; uvloop's are not seen): futures made, callbacks
scheduled and run, coroutine resumptions of the writer's task, and the C calls of the
file and socket syscalls. Run it under ``strace -f -c`` (helper included) for the
syscalls themselves, once with ``--appends 0`` to subtract the set-up.

    python -m bench.lone_commit_calls --appends 1000
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import tempfile
from pathlib import Path
from types import FrameType

from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig
from bamboo_session.protocol.models import Message, Session

C_CALLS = {"write", "pwrite", "send", "recv", "fdatasync", "getrlimit", "monotonic"}
PY_CALLS = {"create_future": "futures made", "call_soon": "callbacks scheduled"}
RESUMED = {"_run": "writer task steps (LogWriter._run resumed)"}


async def count(appends: int, base: Path) -> collections.Counter[str]:
    config = JsonlStorageConfig(base, durability="fsync")
    counts: collections.Counter[str] = collections.Counter()

    def profile(frame: FrameType, event: str, arg: object) -> None:
        if event == "c_call":
            name = getattr(arg, "__name__", "")
            if name in C_CALLS:
                counts[f"C call {name}"] += 1
        elif event == "call":
            code = frame.f_code
            if code.co_name in PY_CALLS and code.co_filename.endswith("base_events.py"):
                counts[PY_CALLS[code.co_name]] += 1
            elif code.co_name == "_run" and code.co_filename.endswith("events.py"):
                counts["callbacks run (Handle._run)"] += 1
            elif code.co_name in RESUMED and code.co_filename.endswith("writer.py"):
                counts[RESUMED[code.co_name]] += 1

    async with await JsonlStorage.open(config) as storage:
        await storage.create_session(Session.new("s"))
        for _ in range(20):  # its log open, the helper up, the segment started
            await storage.append_message("s", Message.user("m"))
        sys.setprofile(profile)
        try:
            for _ in range(appends):
                await storage.append_message("s", Message.user("m"))
        finally:
            sys.setprofile(None)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--appends", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bamboo-lone-commit-") as tmp:
        counts = asyncio.run(count(args.appends, Path(tmp)))
    for name, value in sorted(counts.items()):
        print(f"{name}: {value / max(1, args.appends):.2f} per lone append")


if __name__ == "__main__":
    main()

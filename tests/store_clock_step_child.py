"""A child process for tests/test_store_clock_wall_step.py (run as a script under
libfaketime, not collected): a real memory store whose machine's clock is stepped back
an hour, forward again to the true time, then back an hour again, while it stamps.
The offset is written to the ``FAKETIME_TIMESTAMP_FILE`` given (read by libfaketime at
every clock read, ``FAKETIME_NO_CACHE``); the monotonic clock is left alone.

``python tests/store_clock_step_child.py OFFSET_FILE``: prints one JSON object, the
stamps of each phase (two events' ``ts``, each with the monotonic clock read around its
append and the faked wall clock) and the store clock's log lines."""

from __future__ import annotations

import asyncio
import json
import logging
import select
import sys
import time
from pathlib import Path
from typing import Any

from bamboo_session.persistence import open_storage
from bamboo_session.persistence.base import Storage
from bamboo_session.protocol import Token
from bamboo_session.protocol.models import Session

OFFSETS = (0, -3600, 0, -3600)  # seconds from the true time, one phase each
PAUSE = 0.3  # seconds between a phase's two stamps


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.getMessage()}")


def set_offset(path: Path, seconds: int) -> None:
    spare = path.with_suffix(".new")
    spare.write_text(f"{seconds:+d}\n")
    spare.replace(path)


async def stamped(storage: Storage) -> dict[str, float]:
    before = time.monotonic()
    await storage.append_events("s", [(Token(content="x"), None)])
    after = time.monotonic()
    ts = (await storage.read_events("s"))[-1].ts
    return {"before": before, "ts": ts.timestamp(), "after": after, "wall": time.time()}


async def main(offset_file: Path) -> dict[str, Any]:
    lines = Lines()
    logger = logging.getLogger("bamboo_session.persistence.clock")
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    storage = await open_storage("memory://", cleanup_interval=None)
    phases = []
    try:
        await storage.create_session(Session.new("s", user_id="u", now=storage.now()))
        for offset in OFFSETS:
            set_offset(offset_file, offset)
            first = await stamped(storage)
            select.select([], [], [], PAUSE)  # (libfaketime fails time.sleep here)
            phases.append([first, await stamped(storage)])
    finally:
        await storage.close()
    return {"phases": phases, "log": lines.lines}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(Path(sys.argv[1])))))

"""What reading a whole history for ``GET /api/v1/sessions/{id}`` brings back from the
store: ``server/whole_history.forward_page`` page after page (``--max-page-bytes``, 1
MiB), as the streamed answer reads it, on memory, JSONL, SQLite and Redis (a
redis-server of its own). It runs in whichever tree's ``bamboo_session`` is imported,
so that one tree is compared with another by running it in each (h434: against main).

Per store and case: the pages, the store calls made, the bytes of messages they
returned, the most one call returned, and the process CPU per whole history, timed in
a read of its own without the counting (the median of ``--rounds``; Redis's own work
is in redis-server, not counted). Cases: 16 messages of one character then 32 of 900
KB (before h434, the first read's weight made the next read 256 messages, every large
one, to answer with one), and 5,000 of 200 bytes. The durable stores are reopened
after filling, so that the reads come from disk.

Run: ``PYTHONPATH=<shim> python -m bench.whole_history_reads [--rounds 3]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import msgspec

from bamboo_session.persistence import open_storage
from bamboo_session.protocol.models import Message, Session
from bamboo_session.server.whole_history import forward_page

from .history_page_reads import on_every_store

PAGE_BYTES = 1 << 20
CASES = {"small then large": [1] * 16 + [900_000] * 32, "small": [200] * 5000}


class Counted:
    """The store, its history reads counted (whichever the tree's forward_page makes)."""

    def __init__(self, storage: Any) -> None:
        self.storage = storage
        self.calls = self.bytes = self.most = 0

    def count(self, page: Any) -> Any:
        returned = sum(len(msgspec.json.encode(m)) for m in page.messages)
        self.calls += 1
        self.bytes += returned
        self.most = max(self.most, returned)
        return page

    async def get_history_page(self, *args: Any, **kw: Any) -> Any:
        return self.count(await self.storage.get_history_page(*args, **kw))

    async def get_history_from(self, *args: Any, **kw: Any) -> Any:
        return self.count(await self.storage.get_history_from(*args, **kw))


async def fill(storage: Any) -> None:
    for case, sizes in CASES.items():
        session = Session.new(case.replace(" ", "-"))
        session.messages = [Message.assistant(f"{i:04}" + "b" * n) for i, n in enumerate(sizes)]
        await storage.create_session(session)


async def opened(url: str) -> Any:
    return await open_storage(url, cleanup_interval=None)


async def whole(storage: Any, session_id: str, count: int, epoch: str) -> int:
    """The whole history read page by page, as WholeHistory does; its pages."""
    position = pages = 0
    while position < count:
        encoded = await forward_page(storage, session_id, position, count, PAGE_BYTES, epoch)
        position += len(encoded)
        pages += 1
    return pages


async def measure(name: str, url: str, rounds: int) -> None:
    storage = await opened(url)
    await fill(storage)
    if name != "memory":  # read by a store that has cached nothing
        await storage.close()
        storage = await opened(url)
    try:
        for case in CASES:
            session_id = case.replace(" ", "-")
            meta = await storage.get_metadata(session_id)
            rows = []
            for _ in range(rounds):
                # Timed without the counting (which encodes what each call returned).
                started = time.process_time()
                await whole(storage, session_id, meta.message_count, meta.epoch)
                cpu = time.process_time() - started
                counted = Counted(storage)
                pages = await whole(counted, session_id, meta.message_count, meta.epoch)
                rows.append((pages, counted.calls, counted.bytes, counted.most, cpu))
            report(name, case, rows)
    finally:
        await storage.close()


def report(name: str, case: str, rows: list[tuple[int, int, int, int, float]]) -> None:
    def median(column: int) -> float:
        return statistics.median(row[column] for row in rows)

    print(
        f"{name:7} {case:17} pages {median(0):.0f} | calls {median(1):.0f} | "
        f"bytes read {median(2) / 1e6:.2f} MB | most in one call {median(3) / 1e6:.2f} MB "
        f"| CPU {median(4) * 1e3:.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    on_every_store(measure, args.rounds, "wholebench")


if __name__ == "__main__":
    main()

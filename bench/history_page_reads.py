"""What a ``history`` page's reads bring back from the store, with the page's byte
budget passed to ``get_history_page`` (h429) against the same page read without it
(the store's budget ignored: what the server did before), interleaved in one run.

Per store (memory, JSONL, SQLite, Redis on a redis-server of its own) and case, the
page as ``server/pages.history_page`` reads it (``limit`` 1000, 1 MiB): the store
calls made, the bytes of messages they returned, and the process CPU per page (the
median of ``--rounds``; Redis's own work is in redis-server, not counted). Cases: 24
messages of 900 KB then 16 of one character (the first chunk's weight makes the next
chunk 256 messages), and 2,000 of 200 bytes (the common page: the budget never binds).
The durable stores are reopened after filling (the JSONL store caches what the first
round reads: the later rounds may read its cache).

Run: ``PYTHONPATH=<shim> python -m bench.history_page_reads [--rounds 15]``
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import msgspec

from bamboo_session.persistence import open_storage
from bamboo_session.protocol.models import Message, Session
from bamboo_session.server.pages import history_page

from .redis_bad_day import Redis

PAGE_BYTES = 1 << 20
CASES = {"large then small": [900_000] * 24 + [1] * 16, "small": [200] * 2000}


class Counted:
    """The store, its ``get_history_page`` counted; ``budget=False``: called without
    its byte budget."""

    def __init__(self, storage: Any, budget: bool) -> None:
        self.storage, self.budget = storage, budget
        self.calls = self.bytes = 0

    async def get_history_page(self, *args: Any, max_bytes: int | None = None, **kw: Any) -> Any:
        page = await self.storage.get_history_page(
            *args, max_bytes=max_bytes if self.budget else None, **kw
        )
        self.calls += 1
        self.bytes += sum(len(msgspec.json.encode(m)) for m in page.messages)
        return page


async def fill(storage: Any) -> None:
    for case, sizes in CASES.items():
        await storage.create_session(Session.new(case.replace(" ", "-")))
        for i, size in enumerate(sizes):
            message = Message.assistant(f"{i:04}" + "b" * size)
            await storage.append_message(case.replace(" ", "-"), message)


async def opened(url: str) -> Any:
    return await open_storage(url, cleanup_interval=None, max_session_bytes=1 << 30)


async def measure(name: str, url: str, rounds: int) -> None:
    storage = await opened(url)
    await fill(storage)
    if name != "memory":  # read by a store that has cached nothing
        await storage.close()
        storage = await opened(url)
    try:
        for case in CASES:
            found: dict[bool, list[tuple[int, int, float]]] = {True: [], False: []}
            answers = set()
            for _ in range(rounds):
                for budget in (False, True):
                    counted: Any = Counted(storage, budget)  # a SessionStorage, as used here
                    started = time.process_time()
                    page = await history_page(
                        counted,
                        case.replace(" ", "-"),
                        1000,
                        None,
                        PAGE_BYTES,
                    )
                    cpu = time.process_time() - started
                    found[budget].append((counted.calls, counted.bytes, cpu))
                    answers.add((len(page.messages), page.start, page.has_more))
            assert len(answers) == 1, f"the two reads answered differently: {answers}"
            report(name, case, found, answers.pop())
    finally:
        await storage.close()


def report(
    name: str, case: str, found: dict[bool, list[tuple[int, int, float]]], page: Any
) -> None:
    def median(budget: bool, column: int) -> float:
        return statistics.median(row[column] for row in found[budget])

    base_bytes, our_bytes = median(False, 1), median(True, 1)
    base_cpu, our_cpu = median(False, 2), median(True, 2)
    print(
        f"{name:7} {case:17} page {page[0]} msgs | calls {median(False, 0):.0f} -> "
        f"{median(True, 0):.0f} | bytes read {base_bytes / 1e6:.2f} MB -> "
        f"{our_bytes / 1e6:.2f} MB (RATIO {our_bytes / base_bytes:.3f}) | CPU "
        f"{base_cpu * 1e3:.2f} ms -> {our_cpu * 1e3:.2f} ms (RATIO {our_cpu / base_cpu:.2f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    on_every_store(measure, args.rounds, "histbench")


def on_every_store(
    measure: Callable[[str, str, int], Coroutine[Any, Any, None]], rounds: int, prefix: str
) -> None:
    """``measure(name, url, rounds)`` on memory, JSONL, SQLite and Redis (a redis-server
    of its own), each in a temporary folder."""
    with tempfile.TemporaryDirectory() as directory:
        tmp = Path(directory)
        asyncio.run(measure("memory", "memory://", rounds))
        asyncio.run(measure("jsonl", f"jsonl://{tmp / 'jsonl'}?durability=os", rounds))
        asyncio.run(measure("sqlite", f"sqlite://{tmp / 'store.db'}?durability=os", rounds))
        (tmp / "redis").mkdir()
        server = Redis(tmp / "redis", lossy=True)
        server.start()
        try:
            url = f"redis://127.0.0.1:{server.port}/0?prefix={prefix}&accept_lossy=true"
            asyncio.run(measure("redis", url, rounds))
        finally:
            server.kill()


if __name__ == "__main__":
    main()

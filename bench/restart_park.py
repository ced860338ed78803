"""How long a server's start takes to park what a dead server left attached
(server/restart_park.py), on a store of ``--sessions`` sessions all stored ``active``.

It fills a temporary store (JSONL or SQLite) through the storage API, closes it, opens
it again as ``serve`` would, and times the park's part before the server would listen
(``RestartPark.begin``), the whole park (its task), the largest gap between two turns
of the event loop meanwhile (how long a peer's frame could wait), and the store's close
(the JSONL store's checkpoints of the parked sessions are written by then).

Run: ``python -m bench.restart_park [--store jsonl|sqlite] [--sessions 100000]``
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from bamboo_session.persistence import open_storage
from bamboo_session.persistence.base import SessionFilter, Storage
from bamboo_session.protocol.models import Session, SessionState
from bamboo_session.server.restart_park import RestartPark

FILL_BATCH = 1000


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=("jsonl", "sqlite"), default="jsonl")
    parser.add_argument("--sessions", type=int, default=100_000)
    return parser.parse_args()


def store_url(kind: str, directory: Path) -> str:
    if kind == "sqlite":
        return f"sqlite://{directory / 'sessions.db'}?durability=os"
    return f"jsonl://{directory}?durability=os"


async def create_active(storage: Storage, number: int) -> None:
    session = Session.new(f"s{number}", user_id="u", ttl=3600)
    await storage.create_session(session)
    await storage.update_session_state(session.id, SessionState.ACTIVE)


async def fill(url: str, sessions: int) -> None:
    storage = await open_storage(url, default_ttl=3600)
    try:
        for start in range(0, sessions, FILL_BATCH):
            end = min(start + FILL_BATCH, sessions)
            await asyncio.gather(*(create_active(storage, n) for n in range(start, end)))
    finally:
        await storage.close()


STALLS: list[float] = []  # the longest gap between two turns of the loop, so far


async def longest_stall() -> None:
    while True:
        before = time.monotonic()
        await asyncio.sleep(0)
        gap = time.monotonic() - before
        if not STALLS or gap > STALLS[-1]:
            STALLS.append(gap)


async def measure(kind: str, sessions: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        url = store_url(kind, Path(directory))
        await fill(url, sessions)
        opened = time.monotonic()
        storage = await open_storage(url, default_ttl=3600)
        park = RestartPark(storage)
        started = time.monotonic()
        await park.begin()
        listening = time.monotonic()
        stall = asyncio.create_task(longest_stall())
        if park.task is not None:
            await park.task
        done = time.monotonic()
        stall.cancel()
        parked = park.parked
        left = await storage.list_sessions(SessionFilter(state=SessionState.ACTIVE, limit=1))
        await storage.close()
        closed = time.monotonic()
    print(
        f"{kind}: {sessions} sessions; open {started - opened:.2f} s, "
        f"park before listening {listening - started:.2f} s, in all {done - started:.2f} s "
        f"({parked} parked, {left.total} left active), longest loop stall "
        f"{STALLS[-1] * 1000 if STALLS else 0:.0f} ms, "
        f"close {closed - done:.2f} s"
    )


def main() -> None:
    args = parse_args()
    asyncio.run(measure(args.store, args.sessions))


if __name__ == "__main__":
    main()

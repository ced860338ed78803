"""How long a server's start takes to park what a dead server left attached
(server/restart_park.py), on a store of ``--sessions`` sessions all stored ``active``.

It fills a temporary store (JSONL or SQLite) through the storage API, in a process of
its own, closes it, opens it again as ``serve`` would, and times the open, the park's
part before the server would listen (``RestartPark.begin``), the settling of the
garbage collector that ``serve`` does then (its young generations collected, then all
frozen: server/process_setup.py), the whole park (its task), the store's close (the
JSONL store's checkpoints of the parked sessions are written by then), and the
largest gap between two turns of the event loop in each (how long a peer's frame could
wait); then starts once more on the store
(the restart right after a stop whose close wrote the park's checkpoints: on JSONL
they are dirty in the page cache then), timing its way to listening (open, park,
settle) and its close, and counts what it holds ``disconnected``. Time to listening
is the open, the park's part before listening and the settle. ``--killed``: the JSONL
store's index snapshot is removed before the open, as a ``kill -9`` leaves none (the
open reads every checkpoint). ``--at-stop``: the graceful stop's park instead
(``park_at_stop``, after the actors retired, before the store closes): the same store
closed as the stop did before it (no park), then opened again and closed after the
stop's park, both timed.

Run: ``python -m bench.restart_park [--store jsonl|sqlite] [--sessions 100000] [--killed]
[--at-stop]``
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import multiprocessing
import tempfile
import time
from pathlib import Path

from bamboo_session.persistence import open_storage
from bamboo_session.persistence.base import SessionFilter, Storage
from bamboo_session.protocol.models import Session, SessionState
from bamboo_session.server.process_setup import settle_garbage_collector
from bamboo_session.server.restart_park import RestartPark

FILL_BATCH = 1000


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=("jsonl", "sqlite"), default="jsonl")
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--killed", action="store_true", help="no JSONL index snapshot")
    parser.add_argument("--at-stop", action="store_true", help="the stop's park, not the start's")
    return parser.parse_args()


def store_url(kind: str, directory: Path) -> str:
    if kind == "sqlite":
        return f"sqlite://{directory / 'sessions.db'}?durability=os"
    return f"jsonl://{directory}?durability=os"


async def create_active(storage: Storage, number: int) -> None:
    session = Session.new(f"s{number}", user_id="u", ttl=3600)
    await storage.create_session(session)
    await storage.update_session_state(session.id, SessionState.ACTIVE)


def fill_in_child(url: str, sessions: int) -> None:
    """The fill, in a process of its own: what it leaves in memory would be in the
    measured process's collections (``serve``'s opens a store it did not fill)."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        pool.submit(run_fill, url, sessions).result()


def run_fill(url: str, sessions: int) -> None:
    asyncio.run(fill(url, sessions))


async def fill(url: str, sessions: int) -> None:
    storage = await open_storage(url, default_ttl=3600)
    try:
        for start in range(0, sessions, FILL_BATCH):
            end = min(start + FILL_BATCH, sessions)
            await asyncio.gather(*(create_active(storage, n) for n in range(start, end)))
    finally:
        await storage.close()


def open_sync_seconds(storage: Storage) -> str:
    """How long the JSONL open's sync of the file system took, where it runs once the
    open returned (persistence/jsonl/open_sync.py); before, it was part of the open."""
    seconds = getattr(getattr(storage, "_open_sync", None), "seconds", None)
    return "" if seconds is None else f", its syncfs {seconds:.2f} s after the open"


class Stalls:
    """The longest gap between two turns of the loop since the last ``take``."""

    def __init__(self) -> None:
        self.longest = 0.0
        self.task = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(0)
            self.longest = max(self.longest, time.monotonic() - before)

    async def take(self) -> str:
        await asyncio.sleep(0)  # the gap that ends now counted first
        longest, self.longest = self.longest, 0.0
        return f"{longest * 1000:.0f} ms"


async def measure(kind: str, sessions: int, killed: bool) -> None:
    with tempfile.TemporaryDirectory() as directory:
        url = store_url(kind, Path(directory))
        await asyncio.to_thread(fill_in_child, url, sessions)
        if killed:
            (Path(directory) / "index" / "snapshot.msgpack").unlink(missing_ok=True)
        stalls = Stalls()
        await asyncio.sleep(0)
        opened = time.monotonic()
        storage = await open_storage(url, default_ttl=3600)
        open_stall = await stalls.take()
        park = RestartPark(storage)
        started = time.monotonic()
        await park.begin()
        listening = time.monotonic()
        before_stall = await stalls.take()
        settle_garbage_collector()  # as `serve` does (server/cli.py)
        settled = time.monotonic()
        settle_stall = await stalls.take()
        if park.task is not None:
            await park.task
        done = time.monotonic()
        park_stall = await stalls.take()
        left = await storage.list_sessions(SessionFilter(state=SessionState.ACTIVE, limit=1))
        await storage.close()
        closed = time.monotonic()
        close_stall = await stalls.take()
        synced = open_sync_seconds(storage)
        restarted = time.monotonic()
        storage = await open_storage(url, default_ttl=3600)
        reopen_stall = await stalls.take()
        reopened = time.monotonic()
        again = RestartPark(storage)
        await again.begin()
        settle_garbage_collector()
        relistening = time.monotonic()
        relisten_stall = await stalls.take()
        kept = await storage.list_sessions(SessionFilter(state=SessionState.DISCONNECTED, limit=1))
        reclosing = time.monotonic()
        await storage.close()
        reclosed = time.monotonic()
        reclose_stall = await stalls.take()
        resynced = open_sync_seconds(storage)
        stalls.task.cancel()
    print(
        f"{kind}{' killed' if killed else ''}: {sessions} sessions; "
        f"to listening {settled - opened:.2f} s; "
        f"open {started - opened:.2f} s (stall {open_stall}), "
        f"park before listening {listening - started:.2f} s (stall {before_stall}), "
        f"serve's collector settled (stall {settle_stall}), "
        f"in all {done - started:.2f} s ({park.parked} parked, {left.total} left active; "
        f"longest stall once listening {park_stall}), "
        f"close {closed - done:.2f} s (stall {close_stall}){synced}; "
        f"restart after that close: open {reopened - restarted:.2f} s (stall {reopen_stall}), "
        f"to listening {relistening - restarted:.2f} s (stall {relisten_stall}), "
        f"{again.parked} parked, {kept.total} disconnected, "
        f"close {reclosed - reclosing:.2f} s (stall {reclose_stall}){resynced}"
    )


async def measure_at_stop(kind: str, sessions: int) -> None:
    """A stop of a store whose ``sessions`` are all left attached: its close alone (the
    stop before ``park_at_stop``), then, opened again, the stop's park and its close."""
    with tempfile.TemporaryDirectory() as directory:
        url = store_url(kind, Path(directory))
        await asyncio.to_thread(fill_in_child, url, sessions)
        storage = await open_storage(url, default_ttl=3600)
        stalls = Stalls()
        stopping = time.monotonic()
        await storage.close()
        before = time.monotonic() - stopping
        before_stall = await stalls.take()
        storage = await open_storage(url, default_ttl=3600)
        park = RestartPark(storage)
        park.begun = True  # as `serve`'s start leaves it
        await stalls.take()
        stopping = time.monotonic()
        await park.park_at_stop()
        parked = time.monotonic()
        park_stall = await stalls.take()
        await storage.close()
        closed = time.monotonic()
        close_stall = await stalls.take()
        stalls.task.cancel()
        storage = await open_storage(url, default_ttl=3600)
        kept = await storage.list_sessions(SessionFilter(state=SessionState.DISCONNECTED, limit=1))
        await storage.close()
    print(
        f"{kind} at stop: {sessions} sessions attached; "
        f"stop before (close alone) {before:.2f} s (stall {before_stall}); "
        f"stop after {closed - stopping:.2f} s: park {parked - stopping:.2f} s "
        f"({park.parked} parked, stall {park_stall}), close {closed - parked:.2f} s "
        f"(stall {close_stall}); reopened: {kept.total} disconnected"
    )


def main() -> None:
    args = parse_args()
    if args.at_stop:
        asyncio.run(measure_at_stop(args.store, args.sessions))
    else:
        asyncio.run(measure(args.store, args.sessions, args.killed))


if __name__ == "__main__":
    main()

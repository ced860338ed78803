"""Figures about the store for /metrics: sessions stored and bytes on disk; and which
build serves it, on which store format (``bamboo_build_info``, set once).

Both cost more than a scrape should pay each time (counting walks an index, sizing
walks a directory), so each is read at most once per interval and kept meanwhile.
Bytes on disk are known for file stores (JSONL: its directory; SQLite: its file with
its journal and WAL); for others the gauge stays unset. Whether a sync failed in this
process (``SyncHealth``, the JSONL store) is read whenever the gauge is, by ``/metrics``
or ``/api/v1/stats``: it costs nothing (other stores: always 0). So is whether the
store's server may lose writes it acknowledged (``WriteLossRisk``, the Redis store, as
its last look at Redis's settings found: other stores, always 0), and so are the counts
of its pub/sub connection (``PubSubCounts``, the Redis store: other stores, 0).

A scrape waits for a figure at most ``--store-read-timeout``: a store that does not
answer leaves the gauge at its last value (the scrape serves what it has); the read,
or the walk, is not started again until it ends, and its figure, should it come late,
is kept for the next scrape.

The count also tells server/stored_caps.py how near ``--max-stored-sessions`` the
store is. With that cap set (it is by default), the sessions are counted without a
scrape too (:meth:`StoreStats.start`): at the start, then whenever ``WATCH_EVERY`` has
passed since the last count, a scrape's included, so a server nobody scrapes still
warns, and one scraped at least that often is not read once more for it. A scrape
counts afresh as before, at most every ``COUNT_EVERY`` whatever counted meanwhile:
what it serves is never older than that.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from pathlib import Path
from typing import Final

import structlog

from bamboo_session.persistence.base import SessionFilter, Storage, StorageError
from bamboo_session.persistence.capabilities import StoreFormat, SyncHealth, WriteLossRisk
from bamboo_session.persistence.pubsub_counts import PubSubCounts
from bamboo_session.persistence.url import parse_store_url
from bamboo_session.tasks import cancel_and_wait

from .metrics import Metrics
from .pages import PageReads, SharedRead
from .stored_caps import STORE_CAP, StoredCaps

log = structlog.get_logger("bamboo_session.server")

COUNT_EVERY: Final = 5.0  # seconds between counts of the sessions stored
# Seconds between counts made for the near-full warning alone, when no scrape counted
# meanwhile: one read of a count the stores keep (Redis: ZCARD; SQLite: count(*) in its
# reader thread; JSONL: its index in memory) twice a minute, and a warning at most that
# late after the crossing (refusals at the cap have their own, at once).
WATCH_EVERY: Final = 30.0
SIZE_EVERY: Final = 30.0  # seconds between walks of the store's files


def build_labels(storage: Storage | None) -> dict[str, str]:
    """Which build this is and which format its store holds (bamboo_session/
    build_info.py; ``StoreFormat``: ``none`` for a store that keeps nothing): the
    ``listening`` line's fields, and ``bamboo_build_info``'s labels."""
    from bamboo_session.build_info import commit, version

    store_format = storage.store_format if isinstance(storage, StoreFormat) else "none"
    return {"version": version(), "commit": commit(), "store_format": store_format}


def store_location(url: str) -> tuple[str, Path] | None:
    """``("dir", path)`` or ``("file", path)`` for a file store, else None; an SQLite
    store's file is the real one, symlinks followed, as its lock and its writes find it."""
    try:
        parsed = parse_store_url(url)
    except ValueError:
        return None
    if parsed.scheme == "jsonl":
        return "dir", Path(parsed.location)
    if parsed.scheme == "sqlite":
        # Its journal and WAL are beside the file SQLite opens, not beside a symlink to
        # it. Imported here: a backend is imported only when its URL is used.
        from bamboo_session.persistence.sqlite.lock import real_file

        return "file", real_file(Path(parsed.location))
    return None


def bytes_on_disk(kind: str, path: Path) -> int:
    """Bytes the files of a store take (blocking: run it in a thread)."""
    if kind == "file":
        names = [path.name + suffix for suffix in ("", "-wal", "-shm", "-journal")]
        return sum(_size(path.parent / name) for name in names)
    total = 0
    for root, _dirs, files in os.walk(path):
        total += sum(_size(Path(root) / name) for name in files)
    return total


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:  # removed meanwhile, or never there
        return 0


class StoreStats:
    """Refreshes the store gauges of ``metrics`` when they are older than they may be."""

    def __init__(
        self,
        storage: Storage,
        url: str,
        metrics: Metrics,
        reads: PageReads,
        caps: StoredCaps | None = None,
    ) -> None:
        self.storage = storage
        self.caps = caps  # told each count, to warn as it nears --max-stored-sessions
        self.location = store_location(url)
        self.metrics = metrics
        self._scraped_at = -math.inf  # a scrape's last count
        self._counted_at = -math.inf  # the last count, a scrape's or the watch's
        self._sized_at = -SIZE_EVERY
        self._counting = SharedRead(reads, self._count)
        self._watch: asyncio.Task[None] | None = None
        self._sizing = SharedRead(reads, self._size)
        metrics.build_info.labels(**build_labels(storage)).set(1)
        if isinstance(storage, SyncHealth):  # an attribute: read at every read of the gauge
            health = storage
            metrics.store_sync_failed.set_function(lambda: int(health.sync_failed))
        if isinstance(storage, WriteLossRisk):  # likewise, read at every read
            risk = storage
            metrics.store_may_lose_writes.set_function(lambda: int(risk.may_lose_writes))
        if isinstance(storage, PubSubCounts):  # likewise
            counts = storage
            metrics.pubsub_reconnects.set_function(lambda: counts.pubsub_reconnects)
            metrics.pubsub_unreadable.set_function(lambda: counts.pubsub_unreadable)

    async def refresh(self) -> None:
        """Reads the figures that are due, at once. A failure (StoreTimeout among them)
        leaves a gauge at its last value; /readyz tells the failure."""
        now = time.monotonic()
        due = []
        if now - self._scraped_at >= COUNT_EVERY:
            self._scraped_at = self._counted_at = now
            due.append(self._counting.result())
        if self.location is not None and now - self._sized_at >= SIZE_EVERY:
            self._sized_at = now
            due.append(self._sizing.result())
        for outcome in await asyncio.gather(*due, return_exceptions=True):
            if isinstance(outcome, BaseException) and not isinstance(outcome, StorageError):
                raise outcome

    def start(self) -> None:
        """Counts the sessions on its own, for the near-full warning, when there is a
        ``--max-stored-sessions`` to be near (module docstring)."""
        if self.caps is not None and self.caps.limits[STORE_CAP] > 0 and self._watch is None:
            self._watch = asyncio.create_task(self._count_when_due(), name="bamboo-store-count")

    async def stop(self) -> None:
        task, self._watch = self._watch, None
        await cancel_and_wait(task)

    async def _count_when_due(self) -> None:
        while True:
            # A scrape's count moves the next one on: read here only when none came.
            due = self._counted_at + WATCH_EVERY - time.monotonic()
            if due > 0:
                await asyncio.sleep(due)
                continue
            self._counted_at = time.monotonic()
            try:
                await self._counting.result()
            except StorageError:
                pass  # the gauge keeps its last value, and /readyz tells the failure
            except Exception:
                # Not the store's failure: said, and the count tried again when due.
                log.exception("counting the stored sessions failed")

    async def _count(self) -> None:
        found = await self.storage.list_sessions(SessionFilter(limit=0))  # a count alone
        self.metrics.sessions_stored.set(found.total)
        if self.caps is not None:
            self.caps.counted(found.total)

    async def _size(self) -> None:
        assert self.location is not None
        kind, path = self.location
        self.metrics.store_bytes.set(await asyncio.to_thread(bytes_on_disk, kind, path))

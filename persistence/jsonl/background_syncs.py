"""The log writer's syncs that run off its own task, on the sync threads: ``os`` mode's
round every ``fsync_interval`` (the logs written since the last one), and the close's
of every log still unsynced, shared out so that none holds more than ``max_open`` log
descriptors."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TypeVar

from .in_use import FilesInUse
from .layout import Layout
from .logfiles import SYNC_THREADS, LogFiles, sync_dups, sync_trimmed

log = logging.getLogger(__name__)

T = TypeVar("T")


class BackgroundSyncs:
    """The writer's background syncs (``os`` mode's rounds) and its close's."""

    def __init__(
        self,
        layout: Layout,
        files: LogFiles,
        files_in_use: FilesInUse,
        sync_pool: ThreadPoolExecutor,
    ) -> None:
        self._layout = layout
        self._files = files
        self._files_in_use = files_in_use
        self._sync_pool = sync_pool

    async def run(self, interval: float) -> None:
        """A round every ``interval`` seconds, until cancelled (a round that fails is
        logged and the next one tries again)."""
        while True:
            await asyncio.sleep(interval)
            sync_round = asyncio.ensure_future(self._sync_round())
            try:
                await asyncio.shield(sync_round)
            except asyncio.CancelledError:
                # close() came: the round ends first, so that every descriptor it took
                # is synced and closed (close_all syncs only what is still unsynced).
                await asyncio.wait({sync_round})
                raise
            except Exception:
                log.exception("background sync failed")

    async def _sync_round(self) -> None:
        """The loop's thread only hands out duplicates of the unsynced descriptors; the
        sync threads sync them, a share each. On the I/O thread the syncs held every
        append queued behind them (p99 80 ms at 2,000 events/s over 200 sessions).
        A round holds at most ``max_open`` log descriptors, its share of the bound
        (README): the duplicates (taken between batches), then, once they are closed,
        the trimmed logs opened by path, one per thread. Opened beside the duplicates,
        on every sync thread, they went past it (10 logs open at ``max_open=3``)."""
        async with self._files_in_use:
            taken, trimmed = self._files.take_unsynced()
        await self.on_sync_threads(sync_dups, taken)
        await self.on_sync_threads(partial(sync_trimmed, self._layout), trimmed)

    async def close_files(self) -> None:
        """At the writer's close, once no commit or round runs: every descriptor closed,
        each that holds unsynced lines once synced, on the sync threads in parallel
        (one after another, 1,000 logs took 0.3 s). The files stay in use until the
        last sync returned: a retirement asks then whether one failed."""
        loop = asyncio.get_running_loop()
        async with self._files_in_use:
            unsynced, trimmed = await loop.run_in_executor(self._sync_pool, self._files.close_all)
            await self.on_sync_threads(self._files.sync_at_close, unsynced)
            await self.on_sync_threads(partial(sync_trimmed, self._layout), trimmed)

    async def on_sync_threads(self, sync: Callable[[list[T]], None], items: list[T]) -> None:
        """``sync`` over ``items``, shared out over at most ``max_open`` sync threads."""
        loop = asyncio.get_running_loop()
        threads = min(SYNC_THREADS, self._files.max_open, len(items))
        shares = [items[i::threads] for i in range(threads)]
        await asyncio.gather(*(loop.run_in_executor(self._sync_pool, sync, s) for s in shares))

"""Retiring the WAL segments a rotation leaves behind: each is deleted once every log
it covers is synced (and the sessions directory: the deletes it records), strictly
oldest first, in a background task of the log writer. A log is synced through a
duplicate of the writer's descriptor, the one its lines went through; one the writer
no longer holds was synced before it was closed (``logfiles.py``)."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

from bamboo_session.tasks import detached

from .files import datasync, fsync_dir
from .in_use import FilesInUse
from .layout import Layout
from .logfiles import SYNC_THREADS, LogFiles
from .wal import Segment, remove_segment

log = logging.getLogger(__name__)


class Retirement:
    """The segments waiting to be deleted (oldest first) and the one task deleting them."""

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
        self._queue: list[Segment] = []
        self.kept_bytes = 0  # of the segments in the queue
        self._task: asyncio.Task[None] | None = None
        self._held_until: Callable[[], Awaitable[object]] | None = None

    def hold_until(self, settled: Callable[[], Awaitable[object]]) -> None:
        """No segment is deleted before ``settled()`` returned: the open's sync of the
        file system (``open_sync.py``), whose failure stops retirement, as it did when
        the open ran it before any segment could be retired."""
        self._held_until = settled

    @property
    def stopped(self) -> bool:
        """Whether a failed sync stopped retirement for the rest of this process: every
        WAL segment stays from then on, until the next open replays them."""
        return self._files.sync_failed

    async def settled(self) -> None:
        """Return once the background round under way, if any, has ended."""
        if self._task is not None:
            await asyncio.wait({self._task})

    def add(self, segments: list[Segment]) -> None:
        """Retire ``segments`` (a rotation's, oldest first) in the background."""
        self._queue.extend(segments)
        self.kept_bytes += sum(segment.size for segment in segments)
        if self._task is None or self._task.done():
            self._task = detached(self._retire(), name="bamboo-wal-retire")

    async def finish(self, last: Segment | None) -> None:
        """At close: ``last`` (the current segment, if any) joins the queue, and every
        segment is retired now, after the background task's round."""
        if last is not None:
            self._queue.append(last)
            self.kept_bytes += last.size
        await self.settled()
        await self._retire()

    async def _retire(self) -> None:
        """Delete retired segments, oldest first, each once every log it covers is
        synced. On failure the segment stays, and so do the newer ones, for the rest of
        this process (``LogFiles.sync_failed``): replayed at the next open."""
        loop = asyncio.get_running_loop()
        if self._held_until is not None:
            await self._held_until()
        while self._queue and not self._files.sync_failed:
            segment = self._queue[0]
            try:
                async with self._files_in_use:  # between batches: the LRU holds still
                    taken = self._files.take_unsynced_of(sorted(segment.touched))
            except OSError as exc:  # out of descriptors: not a failed sync
                log.warning("WAL segment %s: retirement postponed: %s", segment.path, exc)
                return  # (the next rotation's ``add`` starts it again)
            # At most ``max_open`` duplicates (the open logs'), the bound's share of the
            # background (README), a share per thread.
            threads = min(SYNC_THREADS, self._files.max_open, len(taken))
            syncs = [
                loop.run_in_executor(self._sync_pool, _sync_dups, share)
                for share in (taken[i::threads] for i in range(threads))
            ]
            results = await asyncio.gather(*syncs, return_exceptions=True)
            errors = [r for r in results if r is not None]
            try:
                if errors:
                    raise errors[0]
                if not await self._still_trusted():
                    return
                await loop.run_in_executor(self._sync_pool, _remove, self._layout, segment)
            except OSError as exc:
                # A log's sync or the sessions directory's: either way a later one that
                # succeeds does not mean what this one covered reached the disk (Linux
                # forgets the error once reported), so nothing more is retired here. A
                # removal's own directory sync too: the segment may come back, older
                # than one a later removal deleted, and replay would cut the logs to it.
                self._files.sync_failed = True
                log.error(
                    "could not retire the WAL segment %s: %s; it and every later one are "
                    "kept for replay at the next open",
                    segment.path,
                    exc,
                )
                return
            del self._queue[0]
            self.kept_bytes -= segment.size

    async def _still_trusted(self) -> bool:
        """Whether no sync has failed yet, asked once the files are free: a batch may
        have let go of a log of the segment, unsynced, while the retirement waited for
        them, and its sync failed (the log not open, nothing here synced it); or that
        sync, under way (it holds the files), was told of an error of a duplicate's open
        file before the duplicate was."""
        async with self._files_in_use:
            return not self._files.sync_failed


def _remove(layout: Layout, segment: Segment) -> None:
    """The segment deleted once the sessions directory is synced: a delete whose
    tombstone's rename could not be synced then (it was acknowledged all the same,
    ``lifecycle.py``) is durable before the segment's record of its deletion, which
    replay would finish it from after a power cut, is gone."""
    fsync_dir(layout.sessions)
    remove_segment(segment)


def _sync_dups(taken: list[tuple[str, int]]) -> OSError | None:
    """Sync the duplicates one after another, closing each; the first failure (the
    others are tried too)."""
    error: OSError | None = None
    for _session_id, fd in taken:
        try:
            datasync(fd)
        except OSError as exc:
            error = error or exc
        finally:
            os.close(fd)
    return error

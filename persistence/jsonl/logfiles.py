"""The log writer's open log files: a bounded LRU of descriptors, and what is done to
one file (open, sync, cut back, close).

Used by one step of the writer at a time (``commits.py``, ``writer.py``): opening and
closing on the loop's thread, syncs and cut-backs on the I/O thread (they block).
Recently used descriptors stay open, at most ``max_open`` between batches, so a hundred
thousand sessions never exhaust the process's descriptors. With the WAL
(``sync_before_close``), a log's lines are synced through the descriptor they were
written through, or a duplicate of it, never through one opened later: a write-back
error is reported to the descriptors open when it was recorded, and a descriptor opened
after that (the inode may even have left the cache meanwhile, with its error) syncs
clean over lost lines. So one that holds unsynced lines is let go of (``released``) and
synced before it is closed, and the WAL's retirement syncs duplicates of the open ones
(``take_unsynced_of``); a log not open holds nothing unsynced. A failed cut-back is
remembered (``needs_truncate``) and retried before the file's next write; until then
the bytes it left (``uncut``) are still in the file, and the writer's owner counts them.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Final

from .batch import Commit, Group, OpenLog
from .files import datasync
from .layout import Layout
from .wal import sync_log

log = logging.getLogger(__name__)

# Above this many files in one batch, syncs run on several threads: the filesystem
# journal then commits them together instead of one after another.
PARALLEL_SYNC_MIN: Final = 4
# The background syncs' threads (``os`` mode's rounds, the WAL's retirement).
SYNC_THREADS: Final = 8


class LogFiles:
    def __init__(
        self,
        layout: Layout,
        max_open: int,
        sync_pool: ThreadPoolExecutor,
        sync_before_close: bool = False,
    ) -> None:
        self._layout = layout
        self._sync_pool = sync_pool
        self.max_open = max_open
        self.open_logs: OrderedDict[str, OpenLog] = OrderedDict()
        self.sync_before_close = sync_before_close
        # ``sync_before_close``: descriptors let go of with unsynced lines, to sync and
        # close (``sync_and_close``) before the next batch; at most a batch's worth.
        self.released: list[tuple[str, int]] = []
        # Logs whose failed write could not be truncated away: size to cut back to first.
        self.needs_truncate: dict[str, int] = {}
        # And how many bytes past that size each holds meanwhile (at most).
        self.uncut: dict[str, int] = {}
        # ``os`` mode: logs trimmed before the background sync came to them, synced by
        # path at its next round (``take_unsynced``), not in the writer's way.
        self.trimmed_unsynced: set[str] = set()
        # Set once a log's fsync or cut failed: the kernel may then report later syncs
        # as clean although the pages were lost, so no WAL segment is deleted any more
        # in this process; the next open replays them all.
        self.sync_failed = False

    def sync_logs(self, commit: Commit) -> None:
        """``fsync`` without the WAL: sync every written log (on the I/O thread); one
        that fails is to be cut back."""

        def sync(group: Group) -> OSError | None:
            assert group.open_log is not None
            try:
                datasync(group.open_log.fd)
            except OSError as exc:
                return exc
            return None

        written = commit.written
        if len(written) >= PARALLEL_SYNC_MIN:
            errors = list(self._sync_pool.map(sync, written))
        else:
            errors = [sync(group) for group in written]
        for group, error in zip(written, errors, strict=True):
            if error is not None:
                group.error, group.ok = error, False
                commit.cut(group)

    def path(self, session_id: str) -> str:
        return self._layout.log_file(session_id)

    def open(self, session_id: str) -> OpenLog:
        open_log = self.open_logs.get(session_id)
        if open_log is not None:
            self.open_logs.move_to_end(session_id)
            return open_log
        path = self.path(session_id)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            size = os.fstat(fd).st_size
            good = self.needs_truncate.get(session_id)
            if good is not None:
                # An earlier failure left bytes we could not cut; do it before appending.
                os.ftruncate(fd, good)
                os.fsync(fd)
                size = good
                del self.needs_truncate[session_id]
                self.uncut.pop(session_id, None)
        except OSError:
            os.close(fd)
            raise
        open_log = self.open_logs[session_id] = OpenLog(fd, size)
        return open_log

    def trim(self) -> None:
        """Close the least recently used descriptors beyond the bound. Only between
        batches: a batch may hold up to twice the bound (the open ones it does not
        touch, plus the ones it does) until its syncs are done. An unsynced one in
        ``os`` mode is closed all the same, and synced by path at the next background
        round: a sync here would hold the next batch (a serial fdatasync per trimmed
        log), and the mode promises nothing on a power cut. With the WAL it is
        ``released``: synced on the sync threads, in parallel, before the next batch."""
        while len(self.open_logs) > self.max_open:
            session_id, open_log = self.open_logs.popitem(last=False)
            if open_log.unsynced and not self.sync_before_close:
                self.trimmed_unsynced.add(session_id)
            self._let_go(session_id, open_log)

    def _let_go(self, session_id: str, open_log: OpenLog) -> None:
        """Close a descriptor the LRU no longer holds, or, with ``sync_before_close``
        and unsynced lines in it, hand it to ``released``."""
        if open_log.unsynced and self.sync_before_close:
            self.released.append((session_id, open_log.fd))
        else:
            _close_quietly(session_id, open_log.fd)

    def take_released(self) -> list[tuple[str, int]]:
        released, self.released = self.released, []
        return released

    def sync_and_close(self, items: list[tuple[str, int]]) -> None:
        """Sync each descriptor, then close it (on a sync thread). A failed sync is the
        store's failed sync (``sync_failed``): no WAL segment is deleted any more."""
        for session_id, fd in items:
            try:
                datasync(fd)
            except OSError as exc:
                self.sync_failed = True
                log.error(
                    "could not sync the log of session %r: %s; every WAL segment is kept "
                    "for replay at the next open",
                    session_id,
                    exc,
                )
            finally:
                _close_quietly(session_id, fd)

    def take_unsynced_of(self, session_ids: list[str]) -> list[tuple[str, int]]:
        """On the loop's thread, between batches: a duplicate of the descriptor of each
        of ``session_ids``' logs that is open with unsynced lines (at most ``max_open``),
        for the WAL's retirement to sync. The others hold none: let go of only once
        synced. A duplicate shares its original's open file, so it is told of the
        write-back errors that one is. Raises ``OSError`` when out of descriptors,
        after closing those it took."""
        taken: list[tuple[str, int]] = []
        try:
            for session_id in session_ids:
                open_log = self.open_logs.get(session_id)
                if open_log is not None and open_log.unsynced:
                    taken.append((session_id, os.dup(open_log.fd)))
        except OSError:
            for session_id, fd in taken:
                _close_quietly(session_id, fd)
            raise
        for session_id, _fd in taken:
            self.open_logs[session_id].unsynced = False
        return taken

    def cut_back(self, group: Group) -> None:
        """Remove a failed batch's bytes (on the I/O thread). The descriptor is dropped
        either way (``drop``): after a failed fsync the kernel may have forgotten the
        error, so it is not trusted."""
        assert group.open_log is not None
        session_id, open_log, good_size = group.session_id, group.open_log, group.size_before
        try:
            os.ftruncate(open_log.fd, good_size)
            os.fsync(open_log.fd)
        except OSError as exc:
            self.sync_failed = True
            try:
                held = os.fstat(open_log.fd).st_size
            except OSError:
                held = good_size + len(group.data)  # at most what the batch wrote
            self.uncut[session_id] = max(0, held - good_size)
            log.error(
                "could not truncate the log of session %r back to %d bytes: %s; retrying "
                "before its next append",
                session_id,
                good_size,
                exc,
            )
            self.needs_truncate[session_id] = good_size

    def drop(self, group: Group) -> None:
        """Close the descriptor a failed group wrote to (``cut_back``'s)."""
        open_log = group.open_log
        if open_log is None:
            return
        if self.open_logs.get(group.session_id) is open_log:
            del self.open_logs[group.session_id]
        self._let_go(group.session_id, open_log)

    def forget(self, session_id: str) -> None:
        """A deleted session's descriptor, closed before its log is deleted."""
        self.needs_truncate.pop(session_id, None)
        self.uncut.pop(session_id, None)
        self.trimmed_unsynced.discard(session_id)
        open_log = self.open_logs.pop(session_id, None)
        if open_log is not None:
            # Synced first all the same: a deletion may yet be undone.
            self._let_go(session_id, open_log)

    def take_unsynced(self) -> tuple[list[tuple[str, int]], list[str]]:
        """``os`` mode, on the loop's thread: the logs written since the last background
        sync, each with a duplicate of its descriptor, and those trimmed meanwhile (to
        sync by path). The syncs then run on the sync threads (``sync_dups``,
        ``sync_log``) while the writer goes on, and may close its own descriptors
        meanwhile."""
        trimmed, self.trimmed_unsynced = list(self.trimmed_unsynced), set()
        taken = []
        for session_id, open_log in self.open_logs.items():
            if open_log.unsynced:
                try:
                    fd = os.dup(open_log.fd)
                except OSError as exc:  # out of descriptors: the rest waits a round
                    log.error("background sync postponed: %s", exc)
                    break
                open_log.unsynced = False
                taken.append((session_id, fd))
        return taken, trimmed

    def close_all(self) -> tuple[list[tuple[str, int]], list[str]]:
        """At close: every descriptor that holds nothing unsynced closed; the others
        handed back with the ones ``released`` still, to sync then close
        (``sync_at_close``, on the sync threads), and the logs trimmed unsynced in
        ``os`` mode (``sync_trimmed``, by path)."""
        trimmed, self.trimmed_unsynced = list(self.trimmed_unsynced), set()
        while self.open_logs:
            session_id, open_log = self.open_logs.popitem(last=False)
            if open_log.unsynced:
                self.released.append((session_id, open_log.fd))
            else:
                _close_quietly(session_id, open_log.fd)
        return self.take_released(), trimmed

    def sync_at_close(self, items: list[tuple[str, int]]) -> None:
        """``close_all``'s unsynced descriptors, each synced then closed. With the WAL a
        failed sync is the store's (``sync_and_close``: every segment is kept); in
        ``os`` mode it is logged, as a background round's is."""
        if self.sync_before_close:
            self.sync_and_close(items)
        else:
            sync_dups(items)


def sync_dups(taken: list[tuple[str, int]]) -> None:
    """Sync and close the descriptors ``take_unsynced`` handed out (and, in ``os`` mode,
    ``close_all``)."""
    for session_id, fd in taken:
        try:
            datasync(fd)
        except OSError as exc:
            log.error("background sync of the log of session %r failed: %s", session_id, exc)
        finally:
            _close_quietly(session_id, fd)


def sync_trimmed(layout: Layout, session_ids: list[str]) -> None:
    """Sync logs the writer closed before the background sync came to them, one after
    another (one descriptor at a time)."""
    for session_id in session_ids:
        try:
            sync_log(layout, session_id)
        except OSError as exc:
            log.error("background sync of the log of session %r failed: %s", session_id, exc)


def _close_quietly(session_id: str, fd: int) -> None:
    """Close a descriptor; a failure (EIO on a network filesystem) is logged, and the
    writer goes on."""
    try:
        os.close(fd)
    except OSError as exc:
        log.error("closing the log of session %r failed: %s", session_id, exc)

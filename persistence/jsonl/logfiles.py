"""The log writer's files: the open log descriptors, and the writing of one batch.

:class:`LogFiles` keeps a bounded LRU of open log descriptors and handles a batch in
three steps, one after the other, all driven by the writer's task:

- ``write``, on the event loop's thread: each session's share of the batch goes to its
  log with one ``write``, and the batch's WAL records to the current segment with one
  more. A write to the page cache costs a few microseconds, less than handing the batch
  to a thread and back, and the loop's thread holds the GIL anyway.
- ``finish``, on the writer's I/O thread, only when something blocks: the WAL synced
  once (``fsync`` mode with the WAL), or every written log (``fsync`` without it, in
  parallel past a few files), or a new segment started first; and whatever failed cut
  back to the log's last good size, so no torn or unacknowledged line survives a failed
  append. In ``os`` mode a batch that did not fail needs no thread at all (a background
  sync follows). This step touches descriptors only, never the LRU.
- ``conclude``, on the loop's thread again: what succeeded may be acknowledged, and the
  descriptors of cut-back, deleted and least recently used logs are closed.

Opening a log (``open`` and ``fstat``) stays on the loop's thread too; only a log that
an earlier failure left uncut is cut and synced there, before its next append.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Final

from .batch import Commit, Forget, Group, OpenLog
from .config import Durability
from .files import datasync, write_all
from .layout import Layout
from .wal import Segment, SegmentFile, encode_deleted, encode_lines

log = logging.getLogger(__name__)

# Above this many files in one batch, syncs run on several threads: the filesystem
# journal then commits them together instead of one after another.
PARALLEL_SYNC_MIN: Final = 4


class LogFiles:
    def __init__(
        self,
        layout: Layout,
        durability: Durability,
        max_open: int,
        wal: SegmentFile | None,
        sync_pool: ThreadPoolExecutor,
    ) -> None:
        self._layout = layout
        self._durability = durability
        self._wal = wal
        self._sync_pool = sync_pool
        self.max_open = max_open
        self.open_logs: OrderedDict[str, OpenLog] = OrderedDict()
        # Logs whose failed write could not be truncated away: size to cut back to first.
        self.needs_truncate: dict[str, int] = {}
        self.rotated: list[Segment] = []  # WAL segments left behind, for retirement
        self.unsynced_closing: list[tuple[str, OpenLog]] = []  # trimmed, still to sync
        # Set once a log's fsync or cut failed: the kernel may then report later syncs
        # as clean although the pages were lost, so no WAL segment is deleted any more
        # in this process; the next open replays them all.
        self.sync_failed = False

    def write(self, groups: list[Group], forgets: Sequence[Forget]) -> Commit:
        """The first half of a batch, on the event loop's thread: every group's lines
        and the WAL records go to the page cache, one ``write`` each (cheaper there than
        a hand-off to a thread and back). What blocks is left to :meth:`finish`."""
        commit = Commit(groups, forgets)
        try:
            for group in groups:
                group.data = b"".join(batch.data for batch in group.batches)
                self._write_group(group, commit)
            if self._wal is not None:
                self._write_wal(self._wal, commit)
            elif self._durability == "fsync":
                commit.sync_logs = bool(commit.written)
            else:
                for _group, open_log, _before in commit.written:
                    open_log.unsynced = True
        except Exception:
            # Unexpected (a bug, MemoryError): whatever was written is cut away.
            log.exception("log writer failed")
            commit.failed = True
        return commit

    def finish(self, commit: Commit) -> None:
        """The second half, on the I/O thread: the WAL record written (when a new segment
        had to start first) and synced, or every written log synced (``fsync`` without
        the WAL); whatever failed cut back. Touches descriptors, never ``open_logs``."""
        try:
            if commit.failed:
                return  # the finally below cuts everything back
            if self._wal is not None:
                self._commit_wal(self._wal, commit)
            elif commit.sync_logs:
                self._sync_written(commit)
        except Exception:
            commit.failed = True
            raise
        finally:
            if commit.failed:
                # Unexpected (a bug, MemoryError): nothing of the batch may stay.
                if self._wal is not None and commit.wal_written:
                    self._wal.cut_back(commit.wal_before)
                self._fail(commit.written, None, commit)
            for group, open_log, before in commit.cuts:
                self._cut_back(group.session_id, open_log, before)

    def conclude(self, commit: Commit) -> None:
        """Back on the loop's thread: what succeeded may be acknowledged; the descriptors
        of cut-back, deleted and least recently used logs are closed."""
        touched = self._wal.current.touched if self._wal and self._wal.current else None
        for group, _open_log, _before in commit.written:
            group.ok = group.error is None and not commit.failed
            if group.ok and touched is not None:
                touched.add(group.session_id)
        for group, open_log, _before in commit.cuts:
            if self.open_logs.get(group.session_id) is open_log:
                del self.open_logs[group.session_id]
            with contextlib.suppress(OSError):
                os.close(open_log.fd)
        for forget in commit.forgets:
            self._forget(forget.session_id)
        self._trim()

    def _write_group(self, group: Group, commit: Commit) -> None:
        """Write one file's lines; a failure is recorded, and cut back by ``finish``."""
        try:
            open_log = self._open(group.session_id)
        except OSError as exc:
            group.error = exc
            return
        before = group.size_before = open_log.size
        group.open_log = open_log
        try:
            write_all(open_log.fd, group.data)
        except OSError as exc:
            group.error = exc
            commit.cuts.append((group, open_log, before))
            return
        open_log.size = before + len(group.data)
        group.new_size = open_log.size
        commit.written.append((group, open_log, before))

    def _write_wal(self, wal: SegmentFile, commit: Commit) -> None:
        """The written groups' records (and deletions), written to the WAL now when the
        current segment takes them, else kept for ``finish`` to start a new one."""
        records = [
            encode_lines(group.session_id, group.batches[0].events[0].seq, before, group.data)
            for group, _open_log, before in commit.written
        ]
        deletes = [encode_deleted(forget.session_id, forget.epoch) for forget in commit.forgets]
        if not records and not deletes:
            return
        data = b"".join([*records, *deletes])
        if not wal.ready(time.monotonic(), len(data)):
            commit.wal_data = data
            return
        try:
            commit.wal_before = wal.write(data)
        except OSError as exc:
            commit.wal_before, commit.wal_error = wal.size - len(data), exc
        commit.wal_written = True

    def _commit_wal(self, wal: SegmentFile, commit: Commit) -> None:
        """Sync the WAL once for the batch (after starting a new segment if due). If that
        fails, every written group is cut back and fails: acknowledged means in the
        synced WAL."""
        try:
            if commit.wal_written:
                if commit.wal_error is not None:
                    wal.cut_back(commit.wal_before)
                    raise commit.wal_error
                wal.sync(commit.wal_before)
            elif commit.wal_data:
                self._rotate_if_due(wal, len(commit.wal_data))
                wal.append(commit.wal_data)
        except OSError as exc:
            self._fail(commit.written, exc, commit)

    def _rotate_if_due(self, wal: SegmentFile, incoming: int) -> None:
        now = time.monotonic()
        if not wal.due(now, incoming):
            return
        try:
            old = wal.rotate(now)
        except OSError:
            if wal.current is None:
                raise
            log.exception("could not start a new WAL segment; going on with the old one")
        else:
            if old is not None:
                self.rotated.append(old)

    def _fail(
        self, written: list[tuple[Group, OpenLog, int]], exc: OSError | None, commit: Commit
    ) -> None:
        """Every written group (and deletion) failed: each is cut back."""
        for forget in commit.forgets:
            forget.error = exc or OSError("the log writer failed")
        for entry in written:
            entry[0].error = exc or OSError("the log writer failed")
            commit.cuts.append(entry)
        written.clear()

    def _sync_written(self, commit: Commit) -> None:
        def sync(entry: tuple[Group, OpenLog, int]) -> OSError | None:
            try:
                datasync(entry[1].fd)
            except OSError as exc:
                return exc
            return None

        written = commit.written
        if len(written) >= PARALLEL_SYNC_MIN:
            errors = list(self._sync_pool.map(sync, written))
        else:
            errors = [sync(entry) for entry in written]
        for entry, error in zip(written, errors, strict=True):
            if error is not None:
                entry[0].error = error
                commit.cuts.append(entry)

    def _open(self, session_id: str) -> OpenLog:
        open_log = self.open_logs.get(session_id)
        if open_log is not None:
            self.open_logs.move_to_end(session_id)
            return open_log
        path = self._layout.log_file(session_id)
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
        except OSError:
            os.close(fd)
            raise
        open_log = self.open_logs[session_id] = OpenLog(fd, size)
        return open_log

    def _trim(self) -> None:
        """Close the least recently used descriptors beyond the bound. Only between
        batches: a batch may hold up to twice the bound (the open ones it does not
        touch, plus the ones it does) until its syncs are done. An unsynced one (``os``
        mode) goes to ``unsynced_closing``, for ``close_unsynced`` on the I/O thread
        before the next batch."""
        while len(self.open_logs) > self.max_open:
            session_id, open_log = self.open_logs.popitem(last=False)
            if open_log.unsynced:
                self.unsynced_closing.append((session_id, open_log))
                continue
            try:
                os.close(open_log.fd)
            except OSError as exc:
                log.error("closing the log of session %r failed: %s", session_id, exc)

    def close_unsynced(self) -> None:
        """Sync and close the descriptors ``_trim`` left (on the I/O thread)."""
        closing, self.unsynced_closing = self.unsynced_closing, []
        for session_id, open_log in closing:
            with contextlib.suppress(OSError):
                self._close_log(session_id, open_log)

    def _cut_back(self, session_id: str, open_log: OpenLog, good_size: int) -> None:
        """Remove a failed batch's bytes (on the I/O thread). The descriptor is closed
        either way (``conclude``): after a failed fsync the kernel may have forgotten the
        error, so it is not trusted."""
        try:
            os.ftruncate(open_log.fd, good_size)
            os.fsync(open_log.fd)
        except OSError as exc:
            self.sync_failed = True
            log.error(
                "could not truncate the log of session %r back to %d bytes: %s; retrying "
                "before its next append",
                session_id,
                good_size,
                exc,
            )
            self.needs_truncate[session_id] = good_size

    def _close_log(self, session_id: str, open_log: OpenLog) -> None:
        if open_log.unsynced:
            try:
                datasync(open_log.fd)
            except OSError as exc:
                log.error("background sync of the log of session %r failed: %s", session_id, exc)
        os.close(open_log.fd)

    def _forget(self, session_id: str) -> None:
        self.needs_truncate.pop(session_id, None)
        open_log = self.open_logs.pop(session_id, None)
        if open_log is not None:
            os.close(open_log.fd)

    def take_unsynced(self) -> list[tuple[str, int]]:
        """``os`` mode, on the loop's thread: the logs written since the last background
        sync, each with a duplicate of its descriptor. The syncs then run on the sync
        threads (``sync_dups``) while the writer goes on, and may close its own
        descriptors meanwhile."""
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
        return taken

    def close_all(self) -> None:
        """Sync what is unsynced and close every descriptor."""
        self.close_unsynced()
        while self.open_logs:
            session_id, open_log = self.open_logs.popitem(last=False)
            with contextlib.suppress(OSError):
                self._close_log(session_id, open_log)


def sync_dups(taken: list[tuple[str, int]]) -> None:
    """Sync and close the descriptors ``take_unsynced`` handed out."""
    for session_id, fd in taken:
        try:
            datasync(fd)
        except OSError as exc:
            log.error("background sync of the log of session %r failed: %s", session_id, exc)
        finally:
            os.close(fd)

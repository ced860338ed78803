"""The log writer's I/O thread: the open log descriptors, and the writing of one batch.

:class:`LogFiles` is touched from that one thread only (``writer.py`` hands it each
batch): it keeps a bounded LRU of open log descriptors, writes each session's share of
a batch with one ``write``, then commits the batch: appends its records to the WAL and
syncs that once (``fsync`` mode with the WAL), syncs every written log (``fsync``
without it, in parallel past a few files), or nothing (``os``: a background sync
follows). Whatever failed is cut back to the log's last good size, so no torn or
unacknowledged line survives a failed append.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Final

from bamboo_session.protocol.models import StoredEvent

from .config import Durability
from .files import datasync, write_all
from .layout import Layout
from .wal import Segment, SegmentFile, encode_deleted, encode_lines

log = logging.getLogger(__name__)

# Above this many files in one batch, syncs run on several threads: the filesystem
# journal then commits them together instead of one after another.
PARALLEL_SYNC_MIN: Final = 4


@dataclass(slots=True)
class Batch:
    """The events of one append call, encoded (``data``: whole lines) and as objects."""

    events: list[StoredEvent]
    data: bytes
    # (seq, offset in data, length without the newline) of each ``message`` event
    messages: list[tuple[int, int, int]] = field(default_factory=list)
    imported: bool = False  # carried over from another store: not activity


@dataclass(slots=True)
class Group:
    """One log file's share of a batch."""

    session_id: str
    batches: list[Batch]
    data: bytes = b""
    new_size: int = 0
    error: OSError | None = None
    ok: bool = False  # written (and synced, in fsync mode): may be acknowledged
    open_log: OpenLog | None = None
    size_before: int = 0


@dataclass(slots=True)
class Forget:
    """A session deleted: its deletion goes to the WAL, its descriptor is closed.
    ``error``: the deletion could not be recorded (then the delete must not go on, or
    a crash could feed the old events into a new session of the same id)."""

    session_id: str
    epoch: str
    error: OSError | None = None


@dataclass(slots=True)
class OpenLog:
    fd: int
    size: int  # bytes known good: every acknowledged line, nothing torn
    unsynced: bool = False


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
        # Set once a log's fsync or cut failed: the kernel may then report later syncs
        # as clean although the pages were lost, so no WAL segment is deleted any more
        # in this process; the next open replays them all.
        self.sync_failed = False

    def write_batch(self, groups: list[Group], forgets: Sequence[Forget]) -> None:
        """Write every group's lines, then commit them (WAL, syncs, or nothing in os
        mode); a group whose write or commit failed is cut back and marked."""
        try:
            written: list[tuple[Group, OpenLog, int]] = []
            for group in groups:
                group.data = b"".join(batch.data for batch in group.batches)
                entry = self._write_group(group)
                if entry is not None:
                    written.append(entry)
            if self._wal is not None:
                self._commit_wal(self._wal, written, forgets)
            elif self._durability == "fsync" and written:
                self._sync_written(written)
            else:
                for _group, open_log, _before in written:
                    open_log.unsynced = True
            for group, _open_log, _before in written:
                group.ok = group.error is None
        except BaseException:
            # Unexpected (a bug, MemoryError): whatever was not fully done is cut away.
            for group in groups:
                if not group.ok and group.open_log is not None and group.error is None:
                    self._cut_back(group.session_id, group.open_log, group.size_before)
            raise
        finally:
            for forget in forgets:
                self._forget(forget.session_id)
            self._trim()

    def _write_group(self, group: Group) -> tuple[Group, OpenLog, int] | None:
        """Write one file's lines; on failure cut the file back and record the error."""
        try:
            open_log = self._open(group.session_id)
        except OSError as exc:
            group.error = exc
            return None
        before = group.size_before = open_log.size
        group.open_log = open_log
        try:
            write_all(open_log.fd, group.data)
        except OSError as exc:
            group.error = exc
            self._cut_back(group.session_id, open_log, before)
            return None
        open_log.size = before + len(group.data)
        group.new_size = open_log.size
        return group, open_log, before

    def _commit_wal(
        self,
        wal: SegmentFile,
        written: list[tuple[Group, OpenLog, int]],
        forgets: Sequence[Forget],
    ) -> None:
        """Append the written groups' lines (and deletions) to the WAL and sync it once.
        If that fails, every written group is cut back and fails: acknowledged means in
        the synced WAL."""
        records = [
            encode_lines(group.session_id, group.batches[0].events[0].seq, before, group.data)
            for group, _open_log, before in written
        ]
        deletes = [encode_deleted(forget.session_id, forget.epoch) for forget in forgets]
        if not records and not deletes:
            return
        data = b"".join([*records, *deletes])
        try:
            now = time.monotonic()
            if wal.due(now, len(data)):
                try:
                    old = wal.rotate(now)
                except OSError:
                    if wal.current is None:
                        raise
                    log.exception("could not start a new WAL segment; going on with the old one")
                else:
                    if old is not None:
                        self.rotated.append(old)
            wal.append(data)
        except OSError as exc:
            for forget in forgets:
                forget.error = exc
            for group, open_log, before in written:
                group.error = exc
                self._cut_back(group.session_id, open_log, before)
            return
        assert wal.current is not None
        touched = wal.current.touched
        for group, _open_log, _before in written:
            touched.add(group.session_id)

    def _sync_written(self, written: list[tuple[Group, OpenLog, int]]) -> None:
        def sync(entry: tuple[Group, OpenLog, int]) -> OSError | None:
            try:
                datasync(entry[1].fd)
            except OSError as exc:
                return exc
            return None

        if len(written) >= PARALLEL_SYNC_MIN:
            errors = list(self._sync_pool.map(sync, written))
        else:
            errors = [sync(entry) for entry in written]
        for (group, open_log, before), error in zip(written, errors, strict=True):
            if error is not None:
                group.error = error
                self._cut_back(group.session_id, open_log, before)

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
        touch, plus the ones it does) until its syncs are done."""
        while len(self.open_logs) > self.max_open:
            session_id, open_log = self.open_logs.popitem(last=False)
            try:
                self._close_log(session_id, open_log)
            except OSError as exc:
                log.error("closing the log of session %r failed: %s", session_id, exc)

    def _cut_back(self, session_id: str, open_log: OpenLog, good_size: int) -> None:
        """Remove a failed batch's bytes. The descriptor is dropped either way: after a
        failed fsync the kernel may have forgotten the error, so it is not trusted."""
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
        self.open_logs.pop(session_id, None)
        with contextlib.suppress(OSError):
            os.close(open_log.fd)

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
        """``os`` mode: the logs written since the last background sync, each with a
        duplicate of its descriptor. The syncs then run on other threads (``sync_dups``)
        while this one goes on writing, and may close its own descriptors meanwhile."""
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

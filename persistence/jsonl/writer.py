"""The group-commit writer: one task appends every session's event lines to its log.

Appends from all sessions queue up while the previous batch is on disk. The writer then
takes the whole queue as one batch: per log file one ``write`` of the joined lines, then
one ``fdatasync`` per touched file, all in a dedicated I/O thread so the event loop never
waits on the disk. So with many concurrent appenders one fsync covers many appends.

Durability modes: ``fsync`` resolves an append's future once its lines are synced;
``os`` after the write (a background task syncs written files every ``fsync_interval``).

In ``fsync`` mode with the shared WAL (the default, ``persistence/wal.py``), a batch's
lines are written to the session logs without a sync, then appended to the current WAL
segment as one write, and that one file is synced: one ``fdatasync`` per batch whatever
the number of sessions. Only then are the appends acknowledged. Past a size or an age
the writer starts a new segment and retires the old one in the background: every log
written during it is synced (threads, off the event loop), then it is deleted, strictly
in order. Without the WAL (``wal=False``), every touched log is synced instead.

Failure: when a file's write or sync fails (ENOSPC, EIO, EFBIG), none of that file's
appends in the batch is acknowledged (when the WAL's write or sync fails: none of the
batch, and the segment is cut back too, so no unacknowledged record is ever replayed),
the file is truncated back to its last good size (no torn line survives), and the owner
is told (``on_failed``) so it can reset the session's next seq. Once a batch is
acknowledged the owner is told first (``on_written``, with where each append's lines
start in the log), so its metadata always describes what is in the log. Appends of that session
queued behind the failed ones carry seqs that no longer follow the log, so they fail
too: each append records the session's *generation* when submitted, and a failure
starts a new generation.

File descriptors of recently used logs stay open in a bounded LRU, so a hundred thousand
sessions never exhaust the process's descriptors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Final

from bamboo_session.protocol.models import StoredEvent

from ..base import StorageError
from .config import Durability
from .files import datasync, write_all
from .layout import Layout
from .wal import Segment, SegmentFile, encode_deleted, encode_lines, remove_segment, sync_log

log = logging.getLogger(__name__)

# Above this many files in one batch, syncs run on several threads: the filesystem
# journal then commits them together instead of one after another.
PARALLEL_SYNC_MIN: Final = 4
SYNC_THREADS: Final = 8


@dataclass(slots=True)
class Batch:
    """The events of one append call, encoded (``data``: whole lines) and as objects."""

    events: list[StoredEvent]
    data: bytes
    # (seq, offset in data, length without the newline) of each ``message`` event
    messages: list[tuple[int, int, int]] = field(default_factory=list)
    imported: bool = False  # carried over from another store: not activity


# (session id, [(where the batch's lines start in the log, batch)], new log size)
WrittenCallback = Callable[[str, list[tuple[int, Batch]], int], None]
FailedCallback = Callable[[str, OSError], None]


@dataclass(slots=True)
class _Append:
    session_id: str
    batch: Batch
    generation: int
    future: asyncio.Future[None]


@dataclass(slots=True)
class _Control:
    """A marker in the queue: done once every append queued before it is processed;
    ``forget`` also closes that session's descriptor."""

    future: asyncio.Future[None]
    forget: str | None = None
    epoch: str = ""  # of the session forgotten, for its deletion record
    # Set by the I/O thread when the deletion record could not be synced: the delete
    # must not go on, or a crash could feed the old events into a new session.
    error: OSError | None = None


@dataclass(slots=True)
class _Group:
    """One log file's share of a batch."""

    session_id: str
    appends: list[_Append]
    data: bytes = b""
    new_size: int = 0
    error: OSError | None = None
    ok: bool = False  # written (and synced, in fsync mode): may be acknowledged
    open_log: _OpenLog | None = None
    size_before: int = 0


@dataclass(slots=True)
class _OpenLog:
    fd: int
    size: int  # bytes known good: every acknowledged line, nothing torn
    unsynced: bool = False


@dataclass(slots=True)
class _Files:
    """The writer thread's file state. Touched only from the I/O thread."""

    max_open: int
    open_logs: OrderedDict[str, _OpenLog] = field(default_factory=OrderedDict)
    # Logs whose failed write could not be truncated away: size to cut back to first.
    needs_truncate: dict[str, int] = field(default_factory=dict)


class LogWriter:
    """Appends event lines to per-session log files in batches (group commit)."""

    def __init__(
        self,
        layout: Layout,
        durability: Durability,
        max_open: int,
        fsync_interval: float,
        on_written: WrittenCallback,
        on_failed: FailedCallback,
        wal: SegmentFile | None = None,
    ) -> None:
        self._layout = layout
        self._wal = wal if durability == "fsync" else None
        # Set once a session log's fsync has failed: the kernel may then report later
        # syncs as clean although the pages were lost, so no WAL segment is deleted any
        # more in this process; the next open replays them all.
        self._sync_failed = False
        self._rotated: list[Segment] = []  # from the I/O thread, for retirement
        self._retire_queue: list[Segment] = []  # oldest first; deleted strictly in order
        self._retiring: asyncio.Task[None] | None = None
        self._durability = durability
        self._fsync_interval = fsync_interval
        self._on_written = on_written
        self._on_failed = on_failed
        self._files = _Files(max_open)
        self._queue: list[_Append | _Control] = []
        self._generations: dict[str, int] = {}
        self._wakeup = asyncio.Event()
        self._closing = False
        self._io = ThreadPoolExecutor(1, thread_name_prefix="bamboo-log-writer")
        self._sync_pool = ThreadPoolExecutor(SYNC_THREADS, thread_name_prefix="bamboo-log-sync")
        self._tasks: list[asyncio.Task[None]] = []
        self.batches = 0  # for tests and benchmarks: how many batches were written

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._run(), name="bamboo-log-writer"))
        if self._durability != "fsync":
            self._tasks.append(asyncio.create_task(self._sync_loop(), name="bamboo-log-sync"))

    def submit(self, session_id: str, batch: Batch) -> asyncio.Future[None]:
        """Queue the batch's lines for the session's log; the future resolves when they
        are as durable as the mode says, or fails with :class:`StorageError`."""
        if self._closing:
            raise StorageError("storage is closed")
        future = asyncio.get_running_loop().create_future()
        generation = self._generations.get(session_id, 0)
        self._queue.append(_Append(session_id, batch, generation, future))
        self._wakeup.set()
        return future

    async def flush(self) -> None:
        """Return once everything queued before this call is written (or failed)."""
        await self._control(None)

    async def forget(self, session_id: str, epoch: str = "") -> None:
        """Finish the session's queued appends, record its deletion in the WAL, then
        close its descriptor (before the log is deleted)."""
        await self._control(session_id, epoch)
        self._generations.pop(session_id, None)

    async def close(self) -> None:
        """Write everything queued, sync every file, close every descriptor."""
        if self._closing:
            return
        self._closing = True
        self._wakeup.set()
        for task in self._tasks:
            if task.get_name() == "bamboo-log-sync":
                task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._io, self._close_all)
        if self._wal is not None:
            # Every log synced, then every segment deleted (kept on failure: replayed at
            # the next open).
            current = self._wal.close()
            if current is not None:
                self._retire_queue.append(current)
            if self._retiring is not None:
                await asyncio.wait({self._retiring})
            await self._retire()
        self._io.shutdown()
        self._sync_pool.shutdown()

    async def _control(self, forget: str | None, epoch: str = "") -> None:
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Control(future, forget, epoch))
        self._wakeup.set()
        await future

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._process(self._take_batch())

    def _take_batch(self) -> list[_Append | _Control]:
        """The longest prefix of the queue that touches at most ``max_open`` files, so
        a batch never needs more descriptors than the bound (a prefix keeps each
        session's appends in order)."""
        queue, limit = self._queue, self._files.max_open
        sessions: set[str] = set()
        for i, item in enumerate(queue):
            if isinstance(item, _Append) and item.session_id not in sessions:
                if len(sessions) == limit:
                    self._queue = queue[i:]
                    return queue[:i]
                sessions.add(item.session_id)
        self._queue = []
        return queue

    async def _process(self, batch: list[_Append | _Control]) -> None:
        groups: dict[str, _Group] = {}
        controls: list[_Control] = []
        for item in batch:
            if isinstance(item, _Control):
                controls.append(item)
            elif item.generation != self._generations.get(item.session_id, 0):
                _fail(item.future, _stale_error(item.session_id))
            else:
                group = groups.get(item.session_id)
                if group is None:
                    group = groups[item.session_id] = _Group(item.session_id, [])
                group.appends.append(item)
        ordered = list(groups.values())
        forgets = [c for c in controls if c.forget is not None]
        done = asyncio.get_running_loop().run_in_executor(
            self._io, self._write_batch, ordered, forgets
        )
        try:
            await asyncio.shield(done)
        except asyncio.CancelledError:
            # Settle with what the thread really did, never with a guess.
            await asyncio.wait({done})
            raise
        except Exception:
            log.exception("log writer failed")
        finally:
            self.batches += 1
            self._settle(ordered, controls)
            if self._rotated:
                self._retire_queue.extend(self._rotated)
                self._rotated.clear()
                if self._retiring is None or self._retiring.done():
                    self._retiring = asyncio.create_task(self._retire(), name="bamboo-wal-retire")

    async def _retire(self) -> None:
        """Delete retired segments, oldest first, each once every log it covers is
        synced. On failure the segment stays (and so do the newer ones): retried at the
        next rotation and on close, replayed at open if it is still there."""
        loop = asyncio.get_running_loop()
        while self._retire_queue and not self._sync_failed:
            segment = self._retire_queue[0]
            syncs = [
                loop.run_in_executor(self._sync_pool, sync_log, self._layout, session_id)
                for session_id in segment.touched
            ]
            results = await asyncio.gather(*syncs, return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            try:
                if errors:
                    raise errors[0]
                await loop.run_in_executor(self._sync_pool, remove_segment, segment)
            except OSError as exc:
                if errors:
                    self._sync_failed = True
                log.error(
                    "could not retire the WAL segment %s: %s; it and every later one are "
                    "kept for replay at the next open",
                    segment.path,
                    exc,
                )
                return
            del self._retire_queue[0]

    def _settle(self, groups: list[_Group], controls: list[_Control]) -> None:
        for group in groups:
            if group.ok:
                written, offset = [], group.size_before
                for append in group.appends:
                    written.append((offset, append.batch))
                    offset += len(append.batch.data)
                self._on_written(group.session_id, written, group.new_size)
                for append in group.appends:
                    if not append.future.done():
                        append.future.set_result(None)
            else:
                sid = group.session_id
                cause = group.error or OSError("the log writer failed")
                self._generations[sid] = self._generations.get(sid, 0) + 1
                self._on_failed(sid, cause)
                error = StorageError(
                    f"could not append to the log of session {sid!r}: {cause}; "
                    "nothing of this append was stored"
                )
                for append in group.appends:
                    _fail(append.future, error)
        for control in controls:
            if control.future.done():
                continue
            if control.error is not None:
                control.future.set_exception(
                    StorageError(f"could not record the deletion in the WAL: {control.error}")
                )
            else:
                control.future.set_result(None)

    # -- the I/O thread -------------------------------------------------------------

    def _write_batch(self, groups: list[_Group], forgets: Sequence[_Control]) -> None:
        try:
            written: list[tuple[_Group, _OpenLog, int]] = []
            for group in groups:
                group.data = b"".join(a.batch.data for a in group.appends)
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
            for control in forgets:
                assert control.forget is not None
                self._forget(control.forget)
            self._trim()

    def _write_group(self, group: _Group) -> tuple[_Group, _OpenLog, int] | None:
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
        written: list[tuple[_Group, _OpenLog, int]],
        forgets: Sequence[_Control],
    ) -> None:
        """Append the written groups' lines (and deletions) to the WAL and sync it once.
        If that fails, every written group is cut back and fails: acknowledged means in
        the synced WAL."""
        records = [
            encode_lines(group.session_id, group.appends[0].batch.events[0].seq, before, group.data)
            for group, _open_log, before in written
        ]
        deletes = [encode_deleted(c.forget, c.epoch) for c in forgets if c.forget is not None]
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
                        self._rotated.append(old)
            wal.append(data)
        except OSError as exc:
            for control in forgets:
                control.error = exc
            for group, open_log, before in written:
                group.error = exc
                self._cut_back(group.session_id, open_log, before)
            return
        assert wal.current is not None
        touched = wal.current.touched
        for group, _open_log, _before in written:
            touched.add(group.session_id)

    def _sync_written(self, written: list[tuple[_Group, _OpenLog, int]]) -> None:
        def sync(entry: tuple[_Group, _OpenLog, int]) -> OSError | None:
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

    def _open(self, session_id: str) -> _OpenLog:
        files = self._files
        open_log = files.open_logs.get(session_id)
        if open_log is not None:
            files.open_logs.move_to_end(session_id)
            return open_log
        path = self._layout.log_file(session_id)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            size = os.fstat(fd).st_size
            good = files.needs_truncate.get(session_id)
            if good is not None:
                # An earlier failure left bytes we could not cut; do it before appending.
                os.ftruncate(fd, good)
                os.fsync(fd)
                size = good
                del files.needs_truncate[session_id]
        except OSError:
            os.close(fd)
            raise
        open_log = files.open_logs[session_id] = _OpenLog(fd, size)
        return open_log

    def _trim(self) -> None:
        """Close the least recently used descriptors beyond the bound. Only between
        batches: a batch may hold up to twice the bound (the open ones it does not
        touch, plus the ones it does) until its syncs are done."""
        files = self._files
        while len(files.open_logs) > files.max_open:
            session_id, open_log = files.open_logs.popitem(last=False)
            try:
                self._close_log(session_id, open_log)
            except OSError as exc:
                log.error("closing the log of session %r failed: %s", session_id, exc)

    def _cut_back(self, session_id: str, open_log: _OpenLog, good_size: int) -> None:
        """Remove a failed batch's bytes. The descriptor is dropped either way: after a
        failed fsync the kernel may have forgotten the error, so it is not trusted."""
        files = self._files
        try:
            os.ftruncate(open_log.fd, good_size)
            os.fsync(open_log.fd)
        except OSError as exc:
            self._sync_failed = True
            log.error(
                "could not truncate the log of session %r back to %d bytes: %s; retrying "
                "before its next append",
                session_id,
                good_size,
                exc,
            )
            files.needs_truncate[session_id] = good_size
        files.open_logs.pop(session_id, None)
        with contextlib.suppress(OSError):
            os.close(open_log.fd)

    def _close_log(self, session_id: str, open_log: _OpenLog) -> None:
        if open_log.unsynced:
            try:
                datasync(open_log.fd)
            except OSError as exc:
                log.error("background sync of the log of session %r failed: %s", session_id, exc)
        os.close(open_log.fd)

    def _forget(self, session_id: str) -> None:
        files = self._files
        files.needs_truncate.pop(session_id, None)
        open_log = files.open_logs.pop(session_id, None)
        if open_log is not None:
            os.close(open_log.fd)

    def _sync_unsynced(self) -> None:
        for session_id, open_log in self._files.open_logs.items():
            if open_log.unsynced:
                open_log.unsynced = False
                try:
                    datasync(open_log.fd)
                except OSError as exc:
                    log.error(
                        "background sync of the log of session %r failed: %s", session_id, exc
                    )

    def _close_all(self) -> None:
        files = self._files
        while files.open_logs:
            session_id, open_log = files.open_logs.popitem(last=False)
            with contextlib.suppress(OSError):
                self._close_log(session_id, open_log)

    async def _sync_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._fsync_interval)
            await loop.run_in_executor(self._io, self._sync_unsynced)


def _fail(future: asyncio.Future[None], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


def _stale_error(session_id: str) -> StorageError:
    return StorageError(
        f"could not append to the log of session {session_id!r}: an earlier append to it "
        "failed, so this one was not stored either; retry"
    )

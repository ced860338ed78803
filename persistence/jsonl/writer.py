"""The group-commit writer: one task appends every session's event lines to its log
(while that task is idle, callbacks of the loop do: ``starts.py``).

Appends from all sessions queue up while the previous batch is on disk; the writer then
takes the whole queue as one batch, one ``write`` per log file and one sync for all
(``commits.py`` says which step runs where: the loop's thread, the writer's I/O thread,
or the sync helper process). So with many concurrent appenders one fsync covers many
appends, and a lone append costs one round trip to the helper, and no task step but its
caller's resumption (``starts.py``: the commit begun and answered in loop callbacks).

Durability modes: ``fsync`` resolves an append's future once its lines are synced;
``os`` after the write (a background task syncs written files every ``fsync_interval``:
``background_syncs.py``). In ``fsync`` mode with the shared WAL (the default,
``wal.py``) a batch's lines go to the session logs unsynced and to the current WAL
segment as one write, and that one file is synced; only then are the appends
acknowledged. With a commit window, group commits start at most once per window, so
that appends close together share a batch. Past a size or an age the writer starts a
new segment and retires the old one in the background: every log written during it is
synced (threads, off the event loop), then it is deleted, strictly in order. Without
the WAL (``wal=False``), every touched log is synced instead.

Before appends are acknowledged, the owner is told (``on_written``, with where each
append's lines start in the log), so its metadata always describes what is in the log.

Failure: when a file's write or sync fails (ENOSPC, EIO, EFBIG), none of that file's
appends in the batch is acknowledged (when the WAL's write or sync fails: none of the
batch, and the segment is cut back too, so no unacknowledged record is ever replayed),
the file is cut back to its last good size (no torn line survives), and the owner is
told (``on_failed``, with what a cut that failed left in the file) so it can reset the
session's next seq and count what the file holds. Appends of that session
queued behind the failed ones carry seqs that no longer follow the log, so they fail
too: each append records the session's *generation* when submitted, and a failure
starts a new generation. An append fails with ``SessionLogFailed`` when the error is its
log's alone (its open or write: ``files.of_its_own``; not its directory's) or it was
queued behind a failed one, else with a plain StorageError: the store's, as a failure
of the WAL is. Whatever ends the writer's task (a cancellation at a teardown that did
not close the store), every append is answered (``answers.py``): the commit under way
runs its steps to their end first and is answered by its outcome (acknowledged only
if synced), and what is still queued fails, as does any later one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from bamboo_session.tasks import detached
from bamboo_session.wakeup import Wakeup

from ..base import Appended, StorageError
from ..capabilities import DiskDebt
from .answers import Answers, FailedCallback, WrittenCallback
from .background_syncs import BackgroundSyncs
from .batch import Batch, Commit, Forget, QueuedControl
from .commits import NOTHING, WAL_SYNC, WHOLE, Committer, Left
from .config import BUSY_WINDOW, Durability
from .debt import Step, debt_of
from .in_use import FilesInUse
from .layout import Layout
from .logfiles import SYNC_THREADS, LogFiles
from .retirement import Retirement
from .starts import CommitStarts
from .syncer import Syncer
from .tasks import IoThread, to_completion
from .wal import SegmentFile

log = logging.getLogger(__name__)

T = TypeVar("T")


class LogWriter(CommitStarts):
    """Appends event lines to per-session log files in batches (group commit)."""

    def __init__(
        self,
        layout: Layout,
        durability: Durability,
        max_open: int,
        fsync_interval: float,
        commit_window: float,
        on_written: WrittenCallback,
        on_failed: FailedCallback,
        wal: SegmentFile | None = None,
        sync_helper: bool = False,
        busy_window: float = BUSY_WINDOW,
    ) -> None:
        super().__init__()
        self._layout = layout
        self._wal = wal if durability == "fsync" else None
        self._durability = durability
        self._fsync_interval = fsync_interval
        self._commit_window = commit_window if durability == "fsync" else 0.0
        # A commit queued behind another's sync starts no sooner than this after that
        # one started (``starts.py``): only where each commit is a sync.
        self._busy_window = busy_window if durability == "fsync" else 0.0
        self._last_commit = float("-inf")  # loop time the last group commit started
        # What the last batch left in the queue (past its bound of open files) was
        # queued before that commit started: the window does not pace its commit.
        self._carried = False
        self._queue: list[Batch | QueuedControl] = []
        self._wakeup = Wakeup()  # by submit, while idle: once per group commit
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._close_task: asyncio.Future[None] | None = None
        self._io = IoThread("bamboo-log-writer")
        self._sync_pool = ThreadPoolExecutor(SYNC_THREADS, thread_name_prefix="bamboo-log-sync")
        self._files = LogFiles(layout, max_open, self._sync_pool, self._wal is not None)
        self._commits = Committer(self._files, self._wal, durability)
        self._answers = Answers(self._files, on_written, on_failed)
        # The files have one user at a time: a commit's steps, or the background sync
        # handing out descriptors (``os`` mode, the WAL's retirement), even while a
        # step runs on a thread.
        self._files_in_use = FilesInUse()
        self._syncs = BackgroundSyncs(layout, self._files, self._files_in_use, self._sync_pool)
        self.retirement = Retirement(layout, self._files, self._files_in_use, self._sync_pool)
        self._tasks: list[asyncio.Task[None]] = []
        self._runner: asyncio.Task[None] | None = None  # the task that takes the queue
        # The group commit under way, since when, and the step it waits on: what a stop
        # that cannot end names as owed to the disk (``disk_debt``).
        self._in_flight: Sequence[Batch | QueuedControl] = ()
        self._in_flight_since = 0.0
        # The helper, or the I/O thread's call; None: the loop (kept as is, not a text:
        # set at every commit, read only by a stop that cannot end).
        self._waiting_on: Step = None
        self._sync_helper = sync_helper
        self._syncer: Syncer | None = None
        self.batches = 0  # for tests and benchmarks: how many batches were written

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._wal is not None and self._sync_helper:
            self._syncer = Syncer.start()
        self._runner = detached(self._run(), name="bamboo-log-writer")
        self._tasks.append(self._runner)
        if self._durability != "fsync":
            sync_loop = self._syncs.run(self._fsync_interval)
            self._tasks.append(detached(sync_loop, name="bamboo-log-sync"))

    def submit(self, session_id: str, batch: Batch) -> asyncio.Future[list[Appended]]:
        """Queue the batch's lines for the session's log; the future resolves (to the
        batch's ``results``) when they are as durable as the mode says, or fails with
        :class:`StorageError`."""
        if self._closing:
            raise StorageError("storage is closed")
        assert self._loop is not None, "start() the writer first"
        future = batch.future = self._loop.create_future()
        batch.session_id = session_id
        generations = self._answers.generations
        if generations:  # (empty until a session's append fails: 0)
            batch.generation = generations.get(session_id, 0)
        self._queue.append(batch)
        self._wake()
        return future

    async def flush(self) -> None:
        """Return once everything queued before this call is written (or failed)."""
        await self._enqueue(None)

    async def forget(self, session_id: str, epoch: str = "") -> None:
        """Finish the session's queued appends, record its deletion in the WAL, then
        close its descriptor (before the log is deleted)."""
        await self._enqueue(Forget(session_id, epoch))
        self._answers.generations.pop(session_id, None)

    def distrust_syncs(self) -> None:
        """A sync failed outside the writer (a directory's, ``lifecycle.py``): after it
        the kernel may report later syncs clean although what it held was lost, so no
        WAL segment is deleted any more in this process; the next open replays them."""
        self._files.sync_failed = True

    @property
    def wal_kept_bytes(self) -> int:
        """Bytes of WAL segments kept for the next open since a failed sync (0 before
        one, or without the WAL): nothing deletes them in this process."""
        if self._wal is None or not self._files.sync_failed:
            return 0
        return self.retirement.kept_bytes + max(self._wal.size, self._wal.room_end)

    def cancel_deletion(
        self, session_id: str, epoch: str, cut_to: int, uncut: int
    ) -> asyncio.Future[None]:
        """Record in the WAL that the session's deletion failed (``wal.py``), queued now:
        before any later append to it, which replay would take for a new session's.
        ``uncut``: bytes of failed lines its log holds past ``cut_to``, to cut first."""
        return self._enqueue(Forget(session_id, epoch, cancel=True, cut_to=cut_to, uncut=uncut))

    async def close(self) -> None:
        """Write everything queued, sync every file, close every descriptor. Runs to its
        end even if the caller is cancelled meanwhile (raised then, once it ended): cut
        short after the logs' syncs, it left the WAL's segment open and undeleted and
        the sync helper running. A second call waits for the first's end."""
        if self._close_task is None:
            self._closing = True
            self._wakeup.set()
            self._close_task = asyncio.ensure_future(self._close())
        await to_completion(self._close_task)

    async def _close(self) -> None:
        for task in self._tasks:
            if task.get_name() == "bamboo-log-sync":
                task.cancel()
        # Each waited for (a gather that raised at the sync loop's cancellation left
        # the writer's task running), and a failed one does not stop the close.
        for result in await asyncio.gather(*self._tasks, return_exceptions=True):
            if isinstance(result, Exception):
                log.error("log writer task failed: %r", result)
        await self._syncs.close_files()
        if self._wal is not None:
            # Every log synced, then every segment deleted (kept on failure: replayed at
            # the next open).
            await self.retirement.finish(self._wal.close())
        if self._syncer is not None:
            await self._syncer.close()
        self._io.shutdown()
        self._sync_pool.shutdown()

    def disk_debt(self) -> DiskDebt:
        """The appends taken and not answered yet: the commit under way, and the queue."""
        return debt_of(self._in_flight, self._queue, self._waiting_on, self._in_flight_since)

    def _enqueue(self, forget: Forget | None) -> asyncio.Future[None]:
        future = asyncio.get_running_loop().create_future()
        if self._closing and (self._runner is None or self._runner.done()):
            if forget is None and self._close_task is None:
                # The task ended unclosed (cancelled): what was queued was answered
                # then, and the store's close flushes before it closes the writer.
                future.set_result(None)
                return future
            # Closed: nothing takes the queue any more, and the marker would wait for
            # ever (a delete, or a replacement, still under way when the store closed).
            raise StorageError("storage is closed")
        self._queue.append(QueuedControl(future, forget))
        self._wake()
        return future

    async def _run(self) -> None:
        batch: list[Batch | QueuedControl] = []
        behind = False  # what is queued came while the last commit was under way
        try:
            while True:
                if self._handed is not None:  # a commit started outside, its rest is ours
                    await self._carry_on_handed()
                    behind = bool(self._queue) and self._busy_window > 0
                if not self._queue or self._outside is not None or self._begin_due:
                    if self._closing and self._outside is None and not self._queue:
                        return
                    await self._wakeup.wait()
                    behind = False
                    continue
                if self._commit_window or self._busy_window:
                    await self._pace(behind)
                batch = self._in_flight = self._take_batch()
                self._in_flight_since, self._waiting_on = time.monotonic(), None
                await self._process(batch)
                self._in_flight = ()
                behind = bool(self._queue) and self._busy_window > 0  # queued meanwhile
                # Not kept while the next append is awaited: a burst of big appends
                # followed by quiet would have its last group commit (every line and
                # event of it, over all its sessions) kept for as long as the quiet
                # lasts, counted by no bound.
                batch = []
        except BaseException as exc:
            # Cancelled (a teardown that did not close the store) or failed: nothing
            # takes the queue any more, and its callers would wait for ever.
            self._closing = True
            left, self._queue = [*batch, *self._queue], []
            self._answers.fail_unanswered(left, repr(exc))
            try:
                await self._end_outside()
            finally:
                # Queued while it ended (a flush, a deletion, behind a handed commit):
                # nothing takes the queue after this task.
                left, self._queue = self._queue, []
                self._answers.fail_unanswered(left, repr(exc))
                self._drop_begin()
            raise

    async def _process(self, batch: list[Batch | QueuedControl]) -> None:
        """A batch the task took: started, carried on, answered (a frame of its own, so
        that nothing of it stays in the loop's locals while the next append is awaited)."""
        commit = self._commits.gather(batch, self._answers)
        in_use = self._files_in_use
        if not in_use.take_now():  # (a background sync holds the files)
            await in_use.take()
        await self._carry_on(commit, self._start(commit, time.monotonic()))

    async def _carry_on(self, commit: Commit, left: Left) -> None:
        """The rest of a started commit, in the writer's task, then its answers; the
        files given back."""
        commits, in_use = self._commits, self._files_in_use
        try:
            # The commit's steps (``commits.py``), here rather than in coroutines of
            # their own: fewer frames to make, enter and resume at every commit.
            try:
                try:
                    if left == WAL_SYNC and await self._synced_by_helper(commit):
                        left = NOTHING
                    if left:
                        await to_completion(self._finish(commit, whole=left == WHOLE))
                finally:
                    self.batches += 1
                    commits.conclude(commit)
            finally:
                # Cancelled too: the commit's outcome is known by then (its steps run to
                # their end, a cancellation raised after them), and answered now.
                self._answers.settle(commit)
            # After the acknowledgements, before the next batch opens more descriptors.
            if self._files.released:
                released = self._files.take_released()
                syncs = self._syncs.on_sync_threads(self._files.sync_and_close, released)
                await to_completion(syncs)
        finally:
            in_use.give_back()
        rotated = self._commits.rotated
        if rotated:
            self.retirement.add(rotated)
            rotated.clear()
            if self._syncer is not None and self._wal is not None:
                # The helper lets go of the retired segment now, not at the next commit.
                self._syncer.use(self._wal.current, self._wal.fd)

    async def _synced_by_helper(self, commit: Commit) -> bool:
        """The common commit's one blocking step (all ``write`` left: ``WAL_SYNC``), the
        WAL's sync by the helper, awaited in this task (a task and a shield,
        ``to_completion``, cost two more turns of the loop a commit): whether it
        finished the commit. A cancellation comes once the helper answered (syncer.py),
        a failed sync cut back first, as before."""
        syncer, wal = self._syncer, self._wal
        if syncer is None or wal is None or syncer.broken:
            return False
        self._waiting_on = syncer
        try:
            commit.wal_error = await syncer.sync(wal.current, wal.fd)
        except asyncio.CancelledError:
            answered = syncer.cancelled_answer
            if answered is None:  # before the answer (not expected): outcome unknown
                commit.failed = True
                raise
            commit.wal_error = answered.error
            if commit.wal_error is not None:
                await to_completion(self._finish(commit))
            raise
        except Exception:
            log.exception("log writer failed")
            commit.failed = True
            return True
        return commit.wal_error is None

    async def _finish(self, commit: Commit, whole: bool = False) -> None:
        """What blocks but the helper's sync, or a failed one (the batch cut back), on
        the I/O thread; ``whole``: a batch too large for the loop, written there too."""
        try:
            if whole:
                await self._in_thread(self._commits.write_and_finish, commit)
                return
            await self._in_thread(self._commits.finish, commit)
        except Exception:
            log.exception("log writer failed")
            commit.failed = True
        except BaseException:
            if not commit.cut_done:  # cancelled before the outcome was known
                commit.failed = True
            raise

    async def _in_thread(self, function: Callable[..., T], *args: object) -> T:
        loop = self._loop or asyncio.get_running_loop()
        self._waiting_on = function
        return await to_completion(self._io.run(loop, function, *args))

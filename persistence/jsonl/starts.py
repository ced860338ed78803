"""How the log writer's group commits start (``writer.py`` runs them): the queue taken
as a batch (``_take_batch``, paced by a commit window: ``_pace``), its first step on the
loop's thread (``_start``), and, while the writer's task is idle, the whole commit
outside that task (``_begin``), in callbacks of the loop.

Outside the task: an append queued while the task waits for work schedules one
``_begin`` at the loop's next turn (so what comes in this turn joins it, as it joined a
task woken then), which takes the queue as one commit, writes it and asks the sync
helper for the WAL's sync with a callback (``Syncer.ask``); the answer, read in the
helper socket's readable callback, acknowledges the commit (``_synced_outside``) and
begins the next one with what was queued meanwhile. With a commit window, ``_begin``
runs once the window after the last commit's start has passed (a timer of the loop,
``_begin_when_due``), as the task's ``_pace`` waits: what comes meanwhile joins it.
No task wakes or resumes for such a commit: its callers' awaits of their futures are
its only task steps (a lone append with fsync made three futures and resumed the
writer's task twice before; a paced one resumed it three times, until the window
moved out of the task). Whatever else a commit needs (a log to open, a failed write
or sync to cut back, a flush or a deletion to answer, no helper) is handed to the task
once started (``_hand``), which runs its rest as for one of its own (``LogWriter._carry_on``); the
files are held (``FilesInUse``) from its start to its answers either way, so commits
never overlap. A task that ends (cancelled at a teardown) carries a commit under way
outside to its end first (``_end_outside``), as it does its own, and cancels a
``_begin`` a window scheduled (``_drop_begin``): none runs on the closed store.

The busy window (``busy_window``, 2 ms by default; fsync mode): a commit whose
appends were queued while the last one's sync was in flight (appends come faster than
syncs complete) starts no sooner than that after the last one started, so that what
comes meanwhile shares its sync. A sync costs the helper some 40 (tmpfs) to 110 (disk)
microseconds of mostly kernel CPU, whatever it holds; the loop's own cost follows the
appends, not the syncs. A lone append, nothing in flight, never waits: at a pace the
syncs keep up with, nothing is held (``bench/RESULTS.md``, fifty-fifth and fifty-sixth
rounds).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Sequence

from bamboo_session.wakeup import Wakeup

from .answers import Answers
from .batch import Batch, Commit, QueuedControl
from .commits import FINISH, WAL_SYNC, WHOLE, Committer, Left
from .debt import Step
from .in_use import FilesInUse
from .logfiles import LogFiles
from .syncer import Syncer
from .wal import SegmentFile

log = logging.getLogger(__name__)


class CommitStarts:
    """The writer's state that starting a commit reads, and the ways one starts."""

    _queue: list[Batch | QueuedControl]
    _wakeup: Wakeup
    _loop: asyncio.AbstractEventLoop | None
    _closing: bool
    _commit_window: float
    _busy_window: float
    _last_commit: float
    _carried: bool
    _files: LogFiles
    _files_in_use: FilesInUse
    _commits: Committer
    _answers: Answers
    _wal: SegmentFile | None
    _syncer: Syncer | None
    _in_flight: Sequence[Batch | QueuedControl]
    _in_flight_since: float
    _waiting_on: Step
    batches: int

    def __init__(self) -> None:
        # A commit started outside the writer's task (``_begin``), the helper syncing
        # it; one whose rest the task owes (started outside, then more to do); and
        # whether a ``_begin`` is due at the loop's next turn.
        self._outside: Commit | None = None
        self._handed: tuple[Commit, Left] | None = None
        self._begin_due = False
        # The loop's handle of the ``_begin`` a window scheduled: cancelled when the
        # writer's task ends, so that none runs on a closed store.
        self._begin_timer: asyncio.Handle | None = None
        # Where ``_begin`` runs: a context of its own, as the writer's task has
        # (``detached``), not a copy of the appending caller's that ``call_soon`` takes:
        # what it logs (a helper found dead) would carry that connection's fields.
        self._begin_context = contextvars.Context()

    async def _carry_on(self, commit: Commit, left: Left) -> None:
        raise NotImplementedError  # the writer's: the rest of a started commit

    async def _pace(self, behind: bool) -> None:
        """With a commit window, group commits start at most once per window: what comes
        sooner than that after the last one started waits for the rest of the window,
        with whatever else comes meanwhile. A lone append (the last commit is older than
        the window) never waits, and a commit that takes longer than the window is
        followed at once, as are appends a full batch left over (they came before it).
        ``behind``: what is queued came while the last commit was under way, and waits
        for the busy window too, if it is the longer."""
        assert self._loop is not None
        now = self._loop.time()
        due = self._last_commit + self._window(behind)
        if now < due and not self._closing and not self._carried:
            await asyncio.sleep(due - now)
            now = self._loop.time()
        self._last_commit = now

    def _window(self, behind: bool) -> float:
        """The least time from the last commit's start to the next one's."""
        if behind and self._busy_window > self._commit_window:
            return self._busy_window
        return self._commit_window

    def _take_batch(self) -> list[Batch | QueuedControl]:
        """The longest prefix of the queue that touches at most ``max_open`` files, so
        a batch never needs more descriptors than the bound (a prefix keeps each
        session's appends in order)."""
        queue, limit = self._queue, self._files.max_open
        if len(queue) <= limit:  # no more items than the bound: no more files either
            self._queue, self._carried = [], False
            return queue
        sessions: set[str] = set()
        for i, item in enumerate(queue):
            if type(item) is Batch and item.session_id not in sessions:
                if len(sessions) == limit:
                    # What is left was queued before this commit: not paced by the window.
                    self._queue, self._carried = queue[i:], True
                    return queue[:i]
                sessions.add(item.session_id)
        self._queue, self._carried = [], False
        return queue

    def _start(self, commit: Commit, now: float) -> Left:
        """The commit's first step, on the loop's thread, the files taken: its lines
        written if it is small enough (``on_loop``); what is left (``WHOLE``: all of it,
        on the I/O thread). ``now``: the monotonic time it started (the WAL segment's
        age is told by it). Never raises (``write`` fails the commit instead)."""
        if commit.forgets:  # before this commit's appends to a session back
            self._commits.cut_again(commit.forgets)
        return self._commits.write(commit, now) if commit.on_loop else WHOLE

    def _wake(self) -> None:
        """Something was queued: have it taken. While the writer's task is idle and the
        helper syncs, the queue is taken by ``_begin`` outside that task, at the loop's
        next turn (what comes in this one joins it) or when a commit window is due;
        while a commit started there is under way, by its end; else by the task."""
        if self._outside is not None or self._begin_due or self._handed is not None:
            return  # (taken when that commit ends, or by the task after its handed one)
        syncer = self._syncer
        if syncer is not None and not syncer.broken and self._wakeup.unwoken():
            assert self._loop is not None
            self._begin_due = True
            if self._commit_window:
                self._begin_when_due(False)
            else:
                self._loop.call_soon(self._begin, context=self._begin_context)
        else:
            self._wakeup.set()

    def _begin_when_due(self, behind: bool) -> None:
        """``_begin`` paced as ``_pace`` paces the task: at the end of the window after
        the last commit's start (the busy window's, if longer, for what came while that
        commit was under way: ``behind``), at the next turn if that has passed (a lone
        append never waits), or when closing or for what a full batch left over (it
        came before that commit). ``_begin_due`` is set by the caller."""
        loop = self._loop
        assert loop is not None
        due = self._last_commit + self._window(behind)
        if loop.time() < due and not self._closing and not self._carried:
            self._begin_timer = loop.call_at(due, self._begin, context=self._begin_context)
        else:
            self._begin_timer = loop.call_soon(self._begin, context=self._begin_context)

    def _drop_begin(self) -> None:
        """The writer's task ends: a ``_begin`` a window scheduled will not run (it
        would find the queue answered, up to a window after the store closed)."""
        if self._begin_timer is not None:
            self._begin_timer.cancel()
            self._begin_timer = None
        self._begin_due = False

    def _begin(self) -> None:
        """Take the queue as one group commit outside the writer's task (in a callback
        of the loop): its lines written and the helper asked for the WAL's sync, whose
        answer (``_synced_outside``) answers the commit. No task wakes or resumes for
        it: its callers' awaits are its only ones. What else it needs (a log to open, a
        failure, a flush or a deletion) is handed to the task once started; anything
        that keeps it from starting here (a background sync holds the files) leaves
        the queue to the task (a helper broken since ``_wake``: ``ask`` refuses, and the
        task syncs on its thread)."""
        self._begin_due = False
        if (
            not self._queue
            or not self._wakeup.unwoken()  # the task woke meanwhile: the queue is its
            or self._files.released
            or not self._files_in_use.take_now()
        ):
            self._wakeup.set()
            return
        batch = self._in_flight = self._take_batch()
        now = self._in_flight_since = time.monotonic()
        self._waiting_on = None
        if self._commit_window or self._busy_window:
            assert self._loop is not None
            self._last_commit = self._loop.time()
        try:
            commit = self._commits.gather(batch, self._answers)
            left = self._start(commit, now)
        except Exception as exc:  # (a bug: as in the task, no append waits for ever)
            log.exception("log writer failed")
            self._answers.fail_unanswered(batch, repr(exc))
            self._files_in_use.give_back()
            self._in_flight = ()
            if self._queue:  # what the batch left behind: the task takes it
                self._wakeup.set()
            return
        syncer, wal = self._syncer, self._wal
        if (
            left == WAL_SYNC
            and not commit.controls
            and syncer is not None
            and wal is not None
            and syncer.ask(wal.current, wal.fd, self._synced_outside)
        ):
            self._outside, self._waiting_on = commit, syncer
        else:
            self._hand(commit, left)

    def _synced_outside(self, error: OSError | None) -> None:
        """The helper's answer to the commit started outside: acknowledged here if
        synced (then the next commit begins with what was queued meanwhile), else
        handed to the writer's task (a failed sync is cut back on its I/O thread)."""
        commit, self._outside = self._outside, None
        assert commit is not None
        if error is not None:
            commit.wal_error = error
            self._hand(commit, FINISH)
            return
        try:
            # No ``conclude``: a commit begun here wrote on the loop, to logs that were
            # open, and its sync succeeded, with nothing cut, failed or forgotten in it
            # (``_begin`` keeps one with a marker for the task): nothing for it to do.
            self.batches += 1
            self._answers.settle(commit)
        except Exception as exc:  # (a bug: as in the task, no append waits for ever)
            log.exception("log writer failed")
            self._answers.fail_unanswered(commit.batches, repr(exc))
        finally:
            self._files_in_use.give_back()
            self._in_flight = ()
        if not self._queue:
            if self._closing:
                self._wakeup.set()
        elif self._commit_window or self._busy_window:  # (paced: at once only if due)
            self._begin_due = True
            self._begin_when_due(True)
        else:
            self._begin()

    def _hand(self, commit: Commit, left: Left) -> None:
        """The rest of a commit started outside (``left``), to the writer's task."""
        self._handed = (commit, left)
        self._wakeup.set()

    async def _end_outside(self) -> None:
        """The writer's task ends (cancelled, or failed): the commit started outside
        is carried to its end first, and answered by its outcome, as one of its own
        would be (``to_completion``), whatever cancellations come meanwhile."""
        while self._outside is not None or self._handed is not None:
            with contextlib.suppress(asyncio.CancelledError):
                if self._handed is not None:
                    await self._carry_on_handed()
                else:
                    await self._wakeup.wait()

    async def _carry_on_handed(self) -> None:
        """The handed commit's rest (``_carry_on``), in a frame of its own: no local of
        the task's loop keeps the commit (its events and lines) while the next append
        is awaited, however long the quiet lasts."""
        handed, self._handed = self._handed, None
        assert handed is not None
        await self._carry_on(*handed)
        self._in_flight = ()

"""How the log writer (``writer.py``) answers what waits in its queue: each append
acknowledged once its group commit wrote (and, in ``fsync`` mode, synced) its lines,
or failed; each marker (a flush, a deletion) done or failed; and, when the writer's
task ends before it took them (cancelled at a teardown, or a bug), every one left
failed, so that no caller waits for ever whatever ends that task.

Appends of a session queued behind its failed ones carry seqs that no longer follow the
log, so they fail too, with it: its group leaves the writer's queue (``_failed``), and
its next append makes a new one there.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable, Iterable
from typing import Any

from ..base import SessionLogFailed, StorageError
from .batch import Commit, Group, QueuedControl
from .logfiles import LogFiles

# A group written (and synced as the mode says): its session's appends (``batches``),
# where the first one's lines start in the log (``size_before``; each next one's
# follow), and the log's size after them (``new_size``).
WrittenCallback = Callable[[Group], None]
# (session id, the error, bytes of failed lines its log still holds: a cut that failed)
FailedCallback = Callable[[str, OSError, int], None]


class Answers:
    """The owner's callbacks, for the writer's task, and the writer's way to take a
    failed session's group out of its queue (``drop_queued``)."""

    def __init__(
        self,
        files: LogFiles,
        on_written: WrittenCallback,
        on_failed: FailedCallback,
        drop_queued: Callable[[str], Group | None],
    ) -> None:
        self._files = files
        self._on_written = on_written
        self._on_failed = on_failed
        self._drop_queued = drop_queued

    def settle(self, commit: Commit) -> None:
        """Answer a group commit's appends and markers, once its outcome is known, in
        one pass over its groups: for each written whole (``ok``), the owner is told
        first (``on_written``), so its metadata describes the log by the time a caller
        hears; for each that failed, the owner too (``on_failed``), then its callers."""
        on_written = self._on_written
        for group in commit.groups:
            if group.ok:
                on_written(group)
                for append in group.batches:
                    future = append.future
                    if future is not None and not future.done():
                        future.set_result(append.results)
            else:
                cause = group.error or OSError("the log writer failed")
                failure = SessionLogFailed if group.alone else StorageError
                error = failure(
                    f"could not append to the log of session {group.session_id!r}: {cause}; "
                    "nothing of this append was stored"
                )
                self._failed(group.session_id, cause)
                for append in group.batches:
                    _fail(append.future, error)
        for control in commit.controls:
            if control.future.done():
                continue
            forget = control.forget
            failed = forget.error if forget is not None else None
            if forget is not None and failed is not None:
                what = "cancellation of a deletion" if forget.cancel else "deletion"
                control.future.set_exception(
                    StorageError(f"could not record the {what} in the WAL: {failed}")
                )
            else:
                control.future.set_result(None)

    def fail_unanswered(
        self, groups: Iterable[Group], markers: Iterable[QueuedControl], why: str
    ) -> None:
        """The writer's task ended (``why``) with these in its queue or its batch, not
        written (a commit that ran answered its own): each not answered yet fails, and
        its session's seqs are handed out again from its last written one."""
        cause = OSError(errno.ECANCELED, f"the log writer stopped ({why})")
        failed_sessions: set[str] = set()
        for group in groups:
            unanswered = [a for a in group.batches if a.future is not None and not a.future.done()]
            if not unanswered:
                continue
            session_id = group.session_id
            if session_id not in failed_sessions:
                failed_sessions.add(session_id)
                self._failed(session_id, cause)
            error = StorageError(
                f"could not append to the log of session {session_id!r}: {cause}; "
                "this append was not acknowledged"
            )
            for append in unanswered:
                _fail(append.future, error)
        for marker in markers:
            what = "the deletion" if marker.forget is not None else "what was queued"
            _fail(marker.future, StorageError(f"could not write {what}: {cause}"))

    def _failed(self, session_id: str, cause: OSError) -> None:
        """The session's appends failed: so do the ones it queued before it was told
        (their seqs follow the failed ones'), and its owner is told."""
        behind = self._drop_queued(session_id)
        if behind is not None:
            error = SessionLogFailed(
                f"could not append to the log of session {session_id!r}: an earlier "
                "append to it failed, so this one was not stored either; retry"
            )
            for append in behind.batches:
                _fail(append.future, error)
        self._on_failed(session_id, cause, self._files.uncut.get(session_id, 0))


def _fail(future: asyncio.Future[Any] | None, error: BaseException) -> None:
    if future is not None and not future.done():
        future.set_exception(error)

"""How the log writer (``writer.py``) answers what waits in its queue: each append
acknowledged once its group commit wrote (and, in ``fsync`` mode, synced) its lines,
or failed; each marker (a flush, a deletion) done or failed; and, when the writer's
task ends before it took them (cancelled at a teardown, or a bug), every one left
failed, so that no caller waits for ever whatever ends that task.

A failure starts a new *generation* of its session: appends queued behind the failed
ones carry seqs that no longer follow the log, so they fail too (``stale``).
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable, Iterable
from typing import Any

from ..base import SessionLogFailed, StorageError
from .batch import Batch, Commit, Group, QueuedControl
from .logfiles import LogFiles

# A group written (and synced as the mode says): its session's appends (``batches``),
# where the first one's lines start in the log (``size_before``; each next one's
# follow), and the log's size after them (``new_size``).
WrittenCallback = Callable[[Group], None]
# (session id, the error, bytes of failed lines its log still holds: a cut that failed)
FailedCallback = Callable[[str, OSError, int], None]


class Answers:
    """The owner's callbacks and each session's generation, for the writer's task."""

    def __init__(
        self, files: LogFiles, on_written: WrittenCallback, on_failed: FailedCallback
    ) -> None:
        self._files = files
        self._on_written = on_written
        self._on_failed = on_failed
        self.generations: dict[str, int] = {}

    def stale(self, append: Batch) -> bool:
        """Queued before a failure of its session's: failed without being written."""
        if append.generation == self.generations.get(append.session_id, 0):
            return False
        _fail(
            append.future,
            SessionLogFailed(
                f"could not append to the log of session {append.session_id!r}: an earlier "
                "append to it failed, so this one was not stored either; retry"
            ),
        )
        return True

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

    def fail_unanswered(self, items: Iterable[Batch | QueuedControl], why: str) -> None:
        """The writer's task ended (``why``) with these in its queue or its batch, not
        written (a commit that ran answered its own): each not answered yet fails, and
        its session's seqs are handed out again from its last written one."""
        cause = OSError(errno.ECANCELED, f"the log writer stopped ({why})")
        failed_sessions: set[str] = set()
        for item in items:
            if item.future is None or item.future.done():
                continue
            if isinstance(item, QueuedControl):
                what = "the deletion" if item.forget is not None else "what was queued"
                _fail(item.future, StorageError(f"could not write {what}: {cause}"))
                continue
            if item.session_id not in failed_sessions:
                failed_sessions.add(item.session_id)
                self._failed(item.session_id, cause)
            _fail(
                item.future,
                StorageError(
                    f"could not append to the log of session {item.session_id!r}: {cause}; "
                    "this append was not acknowledged"
                ),
            )

    def _failed(self, session_id: str, cause: OSError) -> None:
        self.generations[session_id] = self.generations.get(session_id, 0) + 1
        self._on_failed(session_id, cause, self._files.uncut.get(session_id, 0))


def _fail(future: asyncio.Future[Any] | None, error: BaseException) -> None:
    if future is not None and not future.done():
        future.set_exception(error)

"""A delete's file work (``lifecycle.py`` says what a delete is and why in this order),
for many sessions at once: the deletes under way together share one job, and in it one
sync of each directory (:class:`DeleteBatches`).

Each session of a batch goes through the same steps as it would alone: its checkpoint
becomes its tombstone; the sessions directory is synced; its other files go; the events
directory is synced; its tombstone goes. A batch only makes every session take each
step before any takes the next, so that one sync serves all of them: a crash at any
instant leaves each session whole (its checkpoint, or a tombstone whose delete the next
open finishes) or gone, as it left the one. One at a time, two directory syncs per
delete made a cleanup round of 50,000 expired sessions take 169 to 366 s here
(bench/RESULTS.md, "Cleanup, second pass"). A session whose rename fails fails alone;
a failed sync of the sessions directory is each renamed session's, handled as alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

from ..base import StorageError
from .files import fsync_dir, unlink_quietly
from .layout import Layout

log = logging.getLogger(__name__)

# Sessions one job deletes at most: a bound on the job's time on a file thread (two
# renames and a few unlinks each, and two syncs in all), so reads wait behind little.
DELETES_PER_BATCH: Final = 256

# A session's outcome in a batch: whether its rename is synced, or why it failed.
Outcome = bool | BaseException


class DeleteUndone(StorageError):
    """A delete failed at its rename's directory sync, and was undone by a rename back
    whose own durability nobody knows (``_undo_unsynced_delete``)."""


class DeleteBatches:
    """The deletes waiting for their file work, run a batch at a time in order: those
    that arrive while a batch runs go together in the next (a group commit)."""

    def __init__(self, run_batch: Callable[[list[str]], Awaitable[dict[str, Outcome]]]) -> None:
        self._run_batch = run_batch
        self._waiting: list[tuple[str, asyncio.Future[Outcome]]] = []
        self._task: asyncio.Task[None] | None = None

    async def delete(self, session_id: str) -> bool:
        """Delete the session's files with the next batch; whether its rename is synced
        (see :func:`delete_session_files`), or what it raises."""
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._waiting.append((session_id, future))
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="bamboo-jsonl-deletes")
        outcome = await asyncio.shield(future)  # (the batch is run to its end)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def _run(self) -> None:
        try:
            while self._waiting:
                batch = self._waiting[:DELETES_PER_BATCH]
                del self._waiting[:DELETES_PER_BATCH]
                try:
                    outcomes = await self._run_batch([session_id for session_id, _ in batch])
                except BaseException as exc:  # (the job's own failure: every delete's)
                    for _session_id, future in batch:
                        future.set_result(exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for session_id, future in batch:
                    future.set_result(outcomes[session_id])
        finally:
            self._task = None


def delete_sessions_files(
    layout: Layout, session_ids: list[str], sync_decides_delete: bool = False
) -> dict[str, Outcome]:
    """:func:`delete_session_files` for each of ``session_ids``, a step at a time for
    all, each directory synced once: each one's outcome, a raised error as its value
    (an ``OSError`` as the :class:`StorageError` a file job makes of it)."""
    outcomes: dict[str, Outcome] = {}
    renamed: list[str] = []
    for session_id in session_ids:
        try:
            with contextlib.suppress(FileNotFoundError):
                os.replace(layout.checkpoint(session_id), layout.tombstone(session_id))
        except OSError as exc:  # the delete failed: the session is as it was
            failed = StorageError(f"storage I/O failed: {exc}")
            failed.__cause__ = exc
            outcomes[session_id] = failed
            continue
        renamed.append(session_id)
    sync_error: OSError | None = None
    if renamed:
        try:
            fsync_dir(layout.sessions)
        except OSError as exc:
            sync_error = exc
    finishing: list[str] = []
    for session_id in renamed:
        if sync_error is not None:
            if sync_decides_delete:
                try:
                    _undo_unsynced_delete(layout, session_id, sync_error)
                except StorageError as undone:  # (always: undone, or deleted unsynced)
                    outcomes[session_id] = undone
                    continue
            log.error(
                "session %r is deleted (its checkpoint is the tombstone %s), but the sync "
                "of its directory failed: %s",
                session_id,
                layout.tombstone(session_id),
                sync_error,
            )
        outcomes[session_id] = sync_error is None
        finishing.append(session_id)
    for session_id, path, error in finish_deletes(layout, finishing):
        log.error(
            "session %r is deleted, but %s could not be removed (%s): the tombstone %s "
            "stays, and the next open tries again",
            session_id,
            path,
            error,
            layout.tombstone(session_id),
        )
    return outcomes


def delete_session_files(
    layout: Layout, session_id: str, sync_decides_delete: bool = False
) -> bool:
    """Raises when the checkpoint cannot become the tombstone: the delete failed and
    the session is as it was. Once renamed the delete has taken effect (a kill -9 then
    leaves the tombstone, which the next open finishes): a file that cannot be removed
    is logged (the tombstone stays: the next open tries again), and so is a failed sync
    of the directory, which returns False (``lifecycle.py`` says what each mode does
    then), unless ``sync_decides_delete``: then the tombstone is renamed back, nothing
    else removed, and :class:`DeleteUndone` raised. The session is back (or, if even
    that rename fails, deleted: the next open finishes its tombstone), never
    half-deleted."""
    outcome = delete_sessions_files(layout, [session_id], sync_decides_delete)[session_id]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def _undo_unsynced_delete(layout: Layout, session_id: str, error: OSError) -> None:
    """The delete's rename is not known durable and nothing else records it: the
    checkpoint back in its place (unsynced: a power cut leaves it or the tombstone,
    and an open finishes the latter, whole), and the delete fails."""
    try:
        os.replace(layout.tombstone(session_id), layout.checkpoint(session_id))
    except OSError as undo_error:
        log.error(
            "session %r: the sync of its tombstone's rename failed (%s), and so did the "
            "rename back (%s): it is deleted, and the next open finishes the delete",
            session_id,
            error,
            undo_error,
        )
        raise StorageError(
            f"session {session_id!r}: the sync of its directory failed ({error}), and "
            "undoing its delete too: it is deleted, not durably until the next open"
        ) from error
    raise DeleteUndone(
        f"session {session_id!r} was not deleted: the sync of its directory failed "
        f"({error}); it takes no appends until the store is opened again"
    ) from error


def finish_deletes(layout: Layout, session_ids: list[str]) -> list[tuple[str, Path, OSError]]:
    """Once the sessions' checkpoints are their tombstones: their other files removed,
    the events directory synced once, then the tombstones of those whose files all
    went; what could not be removed, of which session. A tombstone outlives every file
    of its session, so that no open takes a leftover log for a session of its own (an
    open finishes the delete again)."""
    failed: list[tuple[str, Path, OSError]] = []
    emptied: list[str] = []
    for session_id in session_ids:
        failures = len(failed)
        for path in layout.session_files(session_id):
            try:
                unlink_quietly(path)
            except OSError as exc:  # a directory in the way, a file the system keeps
                failed.append((session_id, path, exc))
        if len(failed) == failures:
            emptied.append(session_id)
    if not emptied:
        return failed
    try:
        # The logs' removal durable before the tombstones': a power cut that kept only
        # the latter left a log alone, which an open reads as a session of its own (the
        # deleted history back, under no user).
        fsync_dir(layout.events)
    except OSError as exc:
        return failed + [(session_id, layout.tombstone(session_id), exc) for session_id in emptied]
    for session_id in emptied:
        try:
            unlink_quietly(layout.tombstone(session_id))
        except OSError as exc:
            failed.append((session_id, layout.tombstone(session_id), exc))
    return failed


def finish_delete(layout: Layout, session_id: str) -> list[tuple[Path, OSError]]:
    """:func:`finish_deletes` for one session."""
    return [(path, error) for _id, path, error in finish_deletes(layout, [session_id])]

"""A delete's file work (``lifecycle.py`` says what a delete is and why in this order),
for many sessions at once: the deletes under way together make one batch
(:class:`DeleteBatches`), with one sync of each directory for all of them.

Each session of a batch goes through the same steps as it would alone: its checkpoint
becomes its tombstone; the sessions directory is synced; its other files go; the events
directory is synced; its tombstone goes. A batch only makes every session take each
step before any takes the next, so that one sync serves all of them: a crash at any
instant leaves each session whole (its checkpoint, or a tombstone whose delete the next
open finishes) or gone, as it left the one. A step's renames and unlinks are shared
among the store's file threads (:func:`delete_in_shares`): under load the unlinks, not
the syncs, were most of a round, and one thread doing them all took three times as
long as the 16 deletes at once before batches (bench/RESULTS.md, "Cleanup, second
pass"). A session whose rename fails fails alone; a failed sync of the sessions
directory is each renamed session's, handled as alone. A job the store's threads
refuse fails only deletes not renamed yet: a renamed session is deleted, and told so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

from bamboo_session.tasks import detached

from ..base import DeletedNotDurably, StorageError
from .files import fsync_dir, unlink_quietly
from .layout import Layout

log = logging.getLogger(__name__)

# Sessions one job deletes at most: a bound on the job's time on a file thread (two
# renames and a few unlinks each, and two syncs in all), so reads wait behind little.
DELETES_PER_BATCH: Final = 256

# Sessions a step's share holds at least: fewer are not worth a job of their own.
SHARE_LEAST: Final = 16

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
            self._task = detached(self._run(), name="bamboo-jsonl-deletes")
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


async def delete_in_shares(
    run: Callable[..., Awaitable[Any]],
    layout: Layout,
    session_ids: list[str],
    sync_decides_delete: bool,
    threads: int,
) -> dict[str, Outcome]:
    """:func:`delete_sessions_files`, each step's file work shared among up to
    ``threads`` jobs run by ``run`` (a job each), the syncs one job each between the
    steps: one thread unlinking a batch's files took three times as long as 16 deletes
    on the store's threads under load (bench/RESULTS.md, "Cleanup, second pass"). A
    job that ``run`` refuses (the store takes no more work) fails the deletes of its
    step that had not taken effect: those whose rename it was; a renamed session is
    deleted whatever comes after (its tombstone stays for the next open to finish)."""
    shares = _shares(session_ids, threads)
    renames = await asyncio.gather(
        *(run(rename_to_tombstones, layout, ids) for ids in shares), return_exceptions=True
    )
    outcomes: dict[str, Outcome] = {}
    renamed: list[str] = []
    for ids, result in zip(shares, renames, strict=True):
        if isinstance(result, BaseException):  # the job did not run: nothing renamed
            outcomes.update(dict.fromkeys(ids, result))
            continue
        failed, done = result
        outcomes.update(failed)
        renamed += done
    try:
        settled, finishing = await run(settle_renames, layout, renamed, sync_decides_delete)
    except Exception as exc:  # no sync, and no undoing: as a failed sync that stays
        outcomes.update(unsettled_renames(layout, renamed, sync_decides_delete, exc))
        return outcomes
    outcomes.update(settled)
    try:
        _log_left(layout, await _finish_in_shares(run, layout, finishing, threads))
    except Exception as exc:  # (done, whatever was left)
        for session_id in finishing:
            log.error(
                "session %r is deleted, but its files could not all be removed (%s): "
                "the tombstone %s stays, and the next open finishes the delete",
                session_id,
                exc,
                layout.tombstone(session_id),
            )
    return outcomes


async def _finish_in_shares(
    run: Callable[..., Awaitable[Any]], layout: Layout, finishing: list[str], threads: int
) -> list[tuple[str, Path, OSError]]:
    """:func:`finish_deletes` with its removals shared among jobs; what was left. A
    refused job raises once the others ended: none removes files after the delete
    ended, when a new session of the id may have them."""
    removals = await _all_ended(
        [run(remove_files, layout, ids) for ids in _shares(finishing, threads)]
    )
    failed_files: list[tuple[str, Path, OSError]] = [
        failure for _emptied, failures in removals for failure in failures
    ]
    emptied = [session_id for ids, _failures in removals for session_id in ids]
    unsynced: list[tuple[str, Path, OSError]] = await run(sync_events, layout, emptied)
    if unsynced:  # every tombstone stays
        return failed_files + unsynced
    for failures in await _all_ended(
        [run(remove_tombstones, layout, ids) for ids in _shares(emptied, threads)]
    ):
        failed_files += failures
    return failed_files


async def _all_ended(jobs: list[Awaitable[Any]]) -> list[Any]:
    """The jobs' results, once every one ended; the first one's failure, if any."""
    results = await asyncio.gather(*jobs, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


def unsettled_renames(
    layout: Layout, renamed: list[str], sync_decides_delete: bool, error: Exception
) -> dict[str, Outcome]:
    """The outcomes of renames whose directory sync could not even be tried: each
    session is deleted (its tombstone stays for the next open to finish), not known
    durably. Reported as after a failed sync (False), or, when the sync decides the
    delete, as after one whose undoing failed too: deleted, not durably until the next
    open (a StorageError that says so)."""
    outcomes: dict[str, Outcome] = {}
    for session_id in renamed:
        tombstone = layout.tombstone(session_id)
        if sync_decides_delete:  # nothing else records the delete: said as its caller is told
            reason = f"its directory could not be synced ({error})"
            outcomes[session_id] = not_durable = DeletedNotDurably(session_id, reason)
            log.error("%s; its tombstone %s stays for that open to finish", not_durable, tombstone)
            continue
        log.error(
            "session %r is deleted (its checkpoint is the tombstone %s), but its "
            "directory could not be synced: %s",
            session_id,
            tombstone,
            error,
        )
        outcomes[session_id] = False
    return outcomes


def _shares(session_ids: list[str], threads: int) -> list[list[str]]:
    """``session_ids`` in up to ``threads`` shares of at least ``SHARE_LEAST`` each."""
    count = max(1, min(threads, len(session_ids) // SHARE_LEAST))
    return [share for share in (session_ids[i::count] for i in range(count)) if share]


def delete_sessions_files(
    layout: Layout, session_ids: list[str], sync_decides_delete: bool = False
) -> dict[str, Outcome]:
    """:func:`delete_session_files` for each of ``session_ids``, a step at a time for
    all, each directory synced once, in this thread: each one's outcome, a raised error
    as its value (an ``OSError`` as the :class:`StorageError` a file job makes of it)."""
    outcomes, renamed = rename_to_tombstones(layout, session_ids)
    settled, finishing = settle_renames(layout, renamed, sync_decides_delete)
    outcomes.update(settled)
    _log_left(layout, finish_deletes(layout, finishing))
    return outcomes


def rename_to_tombstones(
    layout: Layout, session_ids: list[str]
) -> tuple[dict[str, Outcome], list[str]]:
    """The first step: each checkpoint renamed to its tombstone; the sessions whose
    rename failed (as it was: their delete failed) with why, and those renamed."""
    failed: dict[str, Outcome] = {}
    renamed: list[str] = []
    for session_id in session_ids:
        try:
            with contextlib.suppress(FileNotFoundError):
                os.replace(layout.checkpoint(session_id), layout.tombstone(session_id))
        except OSError as exc:
            error = StorageError(f"storage I/O failed: {exc}")
            error.__cause__ = exc
            failed[session_id] = error
            continue
        renamed.append(session_id)
    return failed, renamed


def settle_renames(
    layout: Layout, renamed: list[str], sync_decides_delete: bool
) -> tuple[dict[str, Outcome], list[str]]:
    """The sessions directory synced once for every rename: each renamed session's
    outcome, and those whose delete goes on (all but the undone, see
    :func:`delete_session_files`)."""
    outcomes: dict[str, Outcome] = {}
    if not renamed:
        return outcomes, []
    sync_error: OSError | None = None
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
                except StorageError as undone:  # (always: undone, or DeletedNotDurably)
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
    return outcomes, finishing


def _log_left(layout: Layout, failed: list[tuple[str, Path, OSError]]) -> None:
    for session_id, path, error in failed:
        log.error(
            "session %r is deleted, but %s could not be removed (%s): the tombstone %s "
            "stays, and the next open tries again",
            session_id,
            path,
            error,
            layout.tombstone(session_id),
        )


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
        not_durable = DeletedNotDurably(
            session_id,
            f"the sync of its directory failed ({error}), and undoing its delete too "
            f"({undo_error})",
        )
        log.error(
            "%s; its tombstone %s stays for that open to finish",
            not_durable,
            layout.tombstone(session_id),
        )
        raise not_durable from error
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
    emptied, failed = remove_files(layout, session_ids)
    left = sync_events(layout, emptied)
    return failed + (left or remove_tombstones(layout, emptied))


def remove_files(
    layout: Layout, session_ids: list[str]
) -> tuple[list[str], list[tuple[str, Path, OSError]]]:
    """Each session's files but its tombstone removed: the sessions whose files all
    went, and what could not be removed."""
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
    return emptied, failed


def sync_events(layout: Layout, emptied: list[str]) -> list[tuple[str, Path, OSError]]:
    """The logs' removal made durable before the tombstones': a power cut that kept
    only the latter left a log alone, which an open reads as a session of its own (the
    deleted history back, under no user). On failure every tombstone stays."""
    if not emptied:
        return []
    try:
        fsync_dir(layout.events)
    except OSError as exc:
        return [(session_id, layout.tombstone(session_id), exc) for session_id in emptied]
    return []


def remove_tombstones(layout: Layout, emptied: list[str]) -> list[tuple[str, Path, OSError]]:
    """The last step: the tombstones removed; those that could not be."""
    failed: list[tuple[str, Path, OSError]] = []
    for session_id in emptied:
        try:
            unlink_quietly(layout.tombstone(session_id))
        except OSError as exc:
            failed.append((session_id, layout.tombstone(session_id), exc))
    return failed


def finish_delete(layout: Layout, session_id: str) -> list[tuple[Path, OSError]]:
    """:func:`finish_deletes` for one session."""
    return [(path, error) for _id, path, error in finish_deletes(layout, [session_id])]

"""``cleanup``: remove the sessions of a store whose TTL has passed; ``delete``: remove
sessions by id, whatever their state (what frees a user's room under
``--max-user-bytes``, and a session's id for a new one).

First a read-only pass finds them (so a directory that is not a store is refused before
anything is written to it); ``--dry-run`` stops there and lists them. Then the store is
opened for writing and each is removed, rechecked first (it may have been touched
since). Progress goes to stderr at most once a second, and once at the end; stdout gets
the count, as before.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Final

from bamboo_session.persistence.base import (
    DeletedNotDurably,
    SessionFilter,
    SessionNotFound,
    SessionStorage,
    SortBy,
    SortOrder,
    StorageError,
)
from bamboo_session.protocol.models import SessionMetadata

from .tools import runner, session_id_argument, short_time
from .tools_store import add_store_options, offline_store

if TYPE_CHECKING:
    from .tools import SubParsers

SCAN_PAGE: Final = 10_000  # sessions read per page of the scan
PROGRESS_EVERY: Final = 1.0  # seconds between progress lines


def add_command(commands: SubParsers) -> None:
    cleanup = commands.add_parser(
        "cleanup",
        help="remove expired sessions",
        description="Remove the sessions of a store whose TTL has passed; prints how many. "
        "Progress goes to stderr.",
    )
    add_store_options(cleanup, with_url=False)
    cleanup.add_argument(
        "--dry-run",
        action="store_true",
        help="only list the expired sessions (id and expiry, one per line), remove nothing",
    )
    cleanup.set_defaults(run=runner(_cleanup))
    delete = commands.add_parser(
        "delete",
        help="remove sessions by id",
        description="Remove the given sessions, whatever their state: their metadata, "
        "history and log. Prints how many were removed; an id that names no session is "
        "said on stderr, and the status is then 1. A delete the store fails is said on "
        "stderr with its session's id, and the ids after it are not tried (status 1). "
        "A delete done but not durably (its sync failed: a power cut before the store's "
        "next open may bring the session back) is counted and said on stderr, "
        "'session ID deleted, not durably until the next open: why'; the status stays 0. "
        "On a shared store (Redis), the servers using it close the sessions' peers with "
        "4404.",
    )
    add_store_options(delete, with_url=False)
    delete.add_argument("ids", nargs="+", type=session_id_argument, metavar="ID")
    delete.set_defaults(run=runner(_delete))


class Progress:
    """A line on stderr at most every PROGRESS_EVERY seconds, and a last one."""

    def __init__(self, verb: str, total: int | None = None, command: str = "cleanup") -> None:
        self.command = command
        self.verb = verb
        self.total = total
        self.done = 0
        self._shown_at = time.monotonic()

    def step(self, count: int = 1) -> None:
        self.done += count
        if time.monotonic() - self._shown_at >= PROGRESS_EVERY:
            self.show()

    def show(self) -> None:
        self._shown_at = time.monotonic()
        of = f" of {self.total}" if self.total is not None else ""
        line = f"bamboo-session: {self.command}: {self.verb} {self.done}{of}"
        print(line, file=sys.stderr, flush=True)


async def expired_sessions(storage: SessionStorage) -> list[SessionMetadata]:
    """Every session whose TTL has passed (by the store's clock), scanning the store a
    page at a time."""
    now = storage.now()
    expired: list[SessionMetadata] = []
    progress = Progress("sessions scanned:")
    offset = 0
    while True:
        page = await storage.list_sessions(
            SessionFilter(
                limit=SCAN_PAGE,
                offset=offset,
                sort_by=SortBy.CREATED_AT,
                sort_order=SortOrder.ASC,
            )
        )
        progress.total = page.total
        expired += [m for m in page.sessions if m.is_expired(now)]
        progress.step(len(page.sessions))
        offset += len(page.sessions)
        if not page.sessions or offset >= page.total:
            return expired


async def _cleanup(args: argparse.Namespace) -> int:
    async with offline_store(args, read_only=True) as storage:
        expired = await expired_sessions(storage)
    if args.dry_run:
        for metadata in expired:
            expires = short_time(metadata.expires_at) if metadata.expires_at else "-"
            print(f"{metadata.id}\t{expires}")
        print(f"bamboo-session: cleanup: {len(expired)} expired, none removed", file=sys.stderr)
        return 0
    removed = 0
    if expired:
        progress = Progress("expired sessions removed:", len(expired))
        async with offline_store(args, read_only=False) as storage:
            for metadata in expired:
                removed += await _remove_if_expired(storage, metadata.id)
                progress.step()
        progress.show()
    print(removed)
    return 0


async def _remove_if_expired(storage: SessionStorage, session_id: str) -> int:
    metadata = await storage.get_metadata(session_id)
    if metadata is None or not metadata.is_expired(storage.now()):
        return 0  # gone, or touched since the scan
    try:
        await storage.delete_session(session_id)
    except SessionNotFound:
        return 0
    except DeletedNotDurably as exc:  # done: counted, as the store's own cleanup does
        print(f"bamboo-session: cleanup: {not_durably(exc)}", file=sys.stderr)
    return 1


def not_durably(deleted: DeletedNotDurably) -> str:
    """The one line that says a delete was done, not durably, and why."""
    return (
        f"session {deleted.session_id} deleted, not durably until the next open: {deleted.reason}"
    )


async def _delete(args: argparse.Namespace) -> int:
    removed, missing = 0, []
    ids = list(dict.fromkeys(args.ids))  # each once, in the order given
    failed: tuple[int, StorageError] | None = None
    async with offline_store(args, read_only=False) as storage:
        for i, session_id in enumerate(ids):
            try:
                await storage.delete_session(session_id)
            except SessionNotFound:
                missing.append(session_id)
            except DeletedNotDurably as exc:
                # Gone for every reader: counted, and the status stays 0; the line
                # says what a power cut before the store's next open may undo.
                print(f"bamboo-session: delete: {not_durably(exc)}", file=sys.stderr)
                removed += 1
            except StorageError as exc:
                # The store's failure said with the session it stopped at; the others
                # are not tried (a store that fails one may fail each as slowly), and
                # those removed before it are counted all the same.
                failed = (i, exc)
                break
            else:
                removed += 1
    for session_id in missing:
        print(f"bamboo-session: delete: no session {session_id}", file=sys.stderr)
    if failed is not None:
        i, error = failed
        print(f"bamboo-session: delete: session {ids[i]} not deleted: {error}", file=sys.stderr)
        if ids[i + 1 :]:
            print(f"bamboo-session: delete: not tried: {' '.join(ids[i + 1 :])}", file=sys.stderr)
    print(removed)
    return 1 if missing or failed is not None else 0

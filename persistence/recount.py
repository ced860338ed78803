"""Counting again what each session stores, and each user's sum: the logic of
``bamboo-session recount``, with no terminal and no argument parsing.

``stored_bytes`` (what ``max_session_bytes`` bounds) and the per-user sums (what
``max_user_bytes`` bounds) are moved by every append. A count can still be wrong: a
Redis session stored by a version before the counts has no count (it counts from 0)
and is in no user's sum; a count may drift (a store edited by hand, keys evicted, a
bug). A recount sets each count to what the session's log really holds, by the store's
own measure (persistence/events.py ``stored_size`` for SQLite and Redis), then sets
each user's sum to the sum of its sessions' counts.

A store that keeps counts that can be wrong implements :class:`StoredBytesRecount`:
SQLite (its ``stored_bytes`` column; its users' sums are sums of the column, so they
follow) and Redis (the ``bytes`` field of each session's hash, and the ``userbytes``
hash), each safe beside what else writes the store (see their ``recount`` modules).
The JSONL and memory stores count when they open (a log's size, the sums of their
sessions): nothing they store can be off, and they do not implement it.

A dry run (``dry_run=True``) writes nothing and reports what a run would do: each
session's count as it is and as its log holds, and each user's sum as it is and as it
would be rebuilt. A user's rebuild reads the counts as the store holds them, before
this run set any, so the report adds what the run's sessions would move (a real run
has moved them by then): the figures are those the run then applies, on a store that
nothing else writes meanwhile.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Protocol, runtime_checkable

from .base import Storage, StorageError

__all__ = [
    "BytesRecounter",
    "Recount",
    "SessionRecount",
    "StoredBytesRecount",
    "UserRebuild",
    "recount",
]


@dataclasses.dataclass(frozen=True, slots=True)
class SessionRecount:
    """One session counted again: its count ``before`` (None: it had none, stored by a
    version before the counts) and ``after`` (what its log holds)."""

    session_id: str
    user_id: str | None
    before: int | None
    after: int

    @property
    def moved(self) -> int:
        """What the recount added to the session's count (and so to its user's sum)."""
        return self.after - (self.before or 0)


@dataclasses.dataclass(frozen=True, slots=True)
class UserRebuild:
    """One user's sum set to the sum of its sessions' counts: ``before`` (None: the
    store held no sum) and ``after``. Equal where the store keeps no sum (SQLite)."""

    user_id: str
    before: int | None
    after: int


class BytesRecounter(Protocol):
    """What a recount needs of one store (see :class:`StoredBytesRecount`)."""

    def session_pages(self) -> AsyncIterator[list[str]]:
        """Every session id of the store, a page at a time; one present for the whole
        scan comes at least once, whatever is created or removed meanwhile."""
        ...

    async def recount_session(self, session_id: str) -> SessionRecount | None:
        """Sets the session's count to what its log holds, and moves its user's sum by
        the same amount, in the step that reads the log's end; None if the session is
        missing, or went (or was replaced) during the recount."""
        ...

    def counted_users(self) -> AsyncIterator[list[str]]:
        """The users the store holds a sum for, a page at a time (none if it holds
        no sums)."""
        ...

    async def rebuild_user(self, user_id: str) -> UserRebuild:
        """Sets the user's sum to the sum of its sessions' counts, exact as of the
        step that sets it, whatever ran beside it."""
        ...


@runtime_checkable
class StoredBytesRecount(Protocol):
    """A store whose counts of stored bytes can be wrong, and can be counted again."""

    def bytes_recounter(self, *, dry_run: bool = False) -> BytesRecounter:
        """The store's recounter; ``dry_run``: one that writes nothing, whose
        ``recount_session`` says what it would set, and whose ``rebuild_user`` the
        sum as held and the sum of the counts as held (none set by this run)."""
        ...


@dataclasses.dataclass(slots=True)
class Recount:
    """What a run did: sessions counted (and the sum of their counts then), those whose
    count moved, ids given that name no session, and what moved each user's sum."""

    sessions: int = 0
    bytes_counted: int = 0
    fixed: list[SessionRecount] = dataclasses.field(default_factory=list)
    missing: list[str] = dataclasses.field(default_factory=list)
    users: int = 0
    # user -> bytes the run added to its sum (its sessions' recounts and the rebuild)
    user_moves: dict[str, int] = dataclasses.field(default_factory=dict)
    user_sums: dict[str, int] = dataclasses.field(default_factory=dict)  # as rebuilt

    def move_user(self, user_id: str, amount: int) -> None:
        if amount:
            self.user_moves[user_id] = self.user_moves.get(user_id, 0) + amount


ProgressCallback = Callable[[Recount], None]


async def recount(
    storage: Storage,
    session_ids: Sequence[str] | None = None,
    on_progress: ProgressCallback | None = None,
    *,
    dry_run: bool = False,
) -> Recount:
    """Counts every session of ``storage`` again (or those of ``session_ids``), then
    rebuilds the sums of their users (of every user, with no ids); with ``dry_run``,
    reports the same and writes nothing. StorageError if the store keeps no counts to
    fix (:class:`StoredBytesRecount`)."""
    if not isinstance(storage, StoredBytesRecount):
        raise StorageError(f"{type(storage).__name__} keeps no counts of stored bytes to fix")
    recounter = storage.bytes_recounter(dry_run=dry_run)
    report = Recount()
    users: dict[str, None] = {}  # in the order met
    # user -> what this run's sessions would have moved its sum by, in a dry run: not
    # in the store, whose counts and sums the dry rebuild reads as they are.
    unapplied: dict[str, int] = {}
    async for page in _pages(recounter, session_ids):
        for session_id in page:
            counted = await recounter.recount_session(session_id)
            if counted is None:
                if session_ids is not None:
                    report.missing.append(session_id)
                continue
            report.sessions += 1
            report.bytes_counted += counted.after
            if counted.before != counted.after:
                report.fixed.append(counted)
            if counted.user_id is not None:
                users[counted.user_id] = None
                report.move_user(counted.user_id, counted.moved)
                if dry_run:
                    held = unapplied.get(counted.user_id, 0)
                    unapplied[counted.user_id] = held + counted.moved
        if on_progress is not None:
            on_progress(report)
    if session_ids is None:  # and the sums of users with no session left
        async for page in recounter.counted_users():
            users.update(dict.fromkeys(page))
    for user_id in users:
        rebuilt = await recounter.rebuild_user(user_id)
        if unapplied.get(user_id):
            rebuilt = _as_if_applied(rebuilt, unapplied[user_id])
        report.users += 1
        report.user_sums[user_id] = rebuilt.after
        report.move_user(user_id, rebuilt.after - (rebuilt.before or 0))
    return report


def _as_if_applied(rebuilt: UserRebuild, moved: int) -> UserRebuild:
    """A dry rebuild's figures as the real run's would be, its sessions' counts set:
    the sum then held had moved by ``moved`` (no sum where that left 0, as the stores
    drop a sum of 0), and so had the sum of the counts."""
    before = (rebuilt.before or 0) + moved
    return UserRebuild(rebuilt.user_id, before or None, rebuilt.after + moved)


async def _pages(
    recounter: BytesRecounter, session_ids: Sequence[str] | None
) -> AsyncIterator[list[str]]:
    if session_ids is not None:
        yield list(dict.fromkeys(session_ids))  # each once, in the order given
        return
    seen: set[str] = set()  # a scan may give an id twice
    async for page in recounter.session_pages():
        fresh = [session_id for session_id in page if session_id not in seen]
        seen.update(fresh)
        yield fresh

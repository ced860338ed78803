"""The in-memory index of session metadata: by id, and (optionally) by user and by state.

``list_sessions`` starts from the smallest candidate set its filter allows (one user's
sessions, or one state's), checks the remaining predicates on each candidate, and sorts
only what matched: a selective query over 100,000 sessions touches a handful of entries.
Without secondary indexes every query scans all sessions; results are the same.

The index holds the storage's own ``SessionMetadata`` objects, which the storage mutates
in place (activity, counts). ``user_id`` and ``state`` are the indexed fields, so a state
change goes through :meth:`SessionIndex.set_state`.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Collection, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import msgspec

from bamboo_session.protocol.models import SessionMetadata, SessionState

from .base import SessionFilter, SessionListResult, SortBy, SortOrder

_SORT_KEYS: dict[SortBy, Callable[[SessionMetadata], Any]] = {
    SortBy.CREATED_AT: lambda m: (m.created_at, m.id),
    SortBy.UPDATED_AT: lambda m: (m.updated_at, m.id),
    SortBy.LAST_ACTIVITY_AT: lambda m: (m.last_activity_at, m.id),
    SortBy.MESSAGE_COUNT: lambda m: (m.message_count, m.id),
}


class SessionIndex:
    """Every session's metadata, with secondary indexes when ``secondary`` is true."""

    def __init__(self, secondary: bool = True) -> None:
        self._secondary = secondary
        self._by_id: dict[str, SessionMetadata] = {}
        self._by_user: dict[str | None, set[str]] = {}
        # Each state's ids as a dict (values None): in the order they came into it, so
        # that a park can take them a step at a time from the front (first_in).
        self._by_state: dict[SessionState, dict[str, None]] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._by_id

    def __iter__(self) -> Iterator[SessionMetadata]:
        return iter(self._by_id.values())

    def get(self, session_id: str) -> SessionMetadata | None:
        return self._by_id.get(session_id)

    def add(self, metadata: SessionMetadata) -> None:
        self.remove(metadata.id)
        self._by_id[metadata.id] = metadata
        if self._secondary:
            self._by_user.setdefault(metadata.user_id, set()).add(metadata.id)
            self._by_state.setdefault(metadata.state, {})[metadata.id] = None

    def remove(self, session_id: str) -> SessionMetadata | None:
        metadata = self._by_id.pop(session_id, None)
        if metadata is not None and self._secondary:
            _discard(self._by_user, metadata.user_id, session_id)
            _discard(self._by_state, metadata.state, session_id)
        return metadata

    def set_state(self, session_id: str, state: SessionState) -> None:
        metadata = self._by_id[session_id]
        if self._secondary:
            _discard(self._by_state, metadata.state, session_id)
            self._by_state.setdefault(state, {})[session_id] = None
        metadata.state = state

    @property
    def ordered_by_state(self) -> bool:
        """Whether :meth:`first_in` and :meth:`to_back` serve (secondary indexes)."""
        return self._secondary

    def count_in(self, state: SessionState) -> int:
        """How many sessions are in ``state`` (secondary indexes only)."""
        return len(self._by_state.get(state, ()))

    def first_in(self, state: SessionState, count: int) -> list[str]:
        """Up to ``count`` ids of the sessions in ``state``, from the front: those
        longest in it, unless moved back (:meth:`to_back`). A step's work, not a
        copy of the whole state (secondary indexes only)."""
        return list(itertools.islice(self._by_state.get(state, ()), max(count, 0)))

    def to_back(self, session_id: str) -> None:
        """Moves the session behind the others of its state (as though it came into it
        now): a park has looked at it and left it (secondary indexes only)."""
        members = self._by_state[self._by_id[session_id].state]
        del members[session_id]
        members[session_id] = None

    def ids_in(self, states: Iterable[SessionState]) -> list[str]:
        """The ids of the sessions in ``states`` now."""
        if self._secondary:
            return [session_id for state in states for session_id in self._by_state.get(state, ())]
        wanted = frozenset(states)
        return [metadata.id for metadata in self._by_id.values() if metadata.state in wanted]

    def each_in(self, states: Iterable[SessionState]) -> Iterator[str]:
        """The ids of the sessions in ``states``, one at a time: for a caller that may
        stop at the first (no list of 100,000 made for it); none may change meanwhile."""
        if self._secondary:
            return (session_id for state in states for session_id in self._by_state.get(state, ()))
        wanted = frozenset(states)
        return (metadata.id for metadata in self._by_id.values() if metadata.state in wanted)

    def of_user(self, user_id: str) -> list[SessionMetadata]:
        """The user's sessions, newest first."""
        matches = self._select(SessionFilter(user_id=user_id))
        return sorted(matches, key=_SORT_KEYS[SortBy.CREATED_AT], reverse=True)

    def query(self, query: SessionFilter) -> SessionListResult:
        """The page of sessions matching ``query``. The metadata objects are the index's
        own; the caller copies them before they leave the storage."""
        offset, limit = max(query.offset, 0), max(query.limit, 0)
        wanted = offset + limit
        if wanted == 0:  # a count alone (server/store_stats.py): nothing to copy or order
            total = self._count(query)
            return SessionListResult(sessions=[], total=total, offset=offset, limit=limit)
        matches = self._select(query)
        total = len(matches)
        key = _SORT_KEYS[query.sort_by]
        descending = query.sort_order == SortOrder.DESC
        if query.after is not None:
            # Keyset: only what comes after the position, so a deep page orders
            # ``limit`` of them, not everything before it.
            place = (_aware_key(query.after.key), query.after.id)
            if descending:
                matches = [m for m in matches if key(m) < place]
            else:
                matches = [m for m in matches if key(m) > place]
        if wanted < len(matches) // 4:
            # A small page of a large result: a heap beats sorting everything.
            pick = heapq.nlargest if descending else heapq.nsmallest
            ordered = pick(wanted, matches, key=key)
        else:
            ordered = sorted(matches, key=key, reverse=descending)
        return SessionListResult(
            sessions=ordered[offset:wanted], total=total, offset=offset, limit=limit
        )

    def _count(self, query: SessionFilter) -> int:
        candidates = self._candidates(query)
        checks = _predicates(query)
        if not checks:
            return len(candidates)
        return sum(1 for m in candidates if all(check(m) for check in checks))

    def _select(self, query: SessionFilter) -> list[SessionMetadata]:
        candidates = self._candidates(query)
        checks = _predicates(query)
        if not checks:
            return list(candidates)
        return [m for m in candidates if all(check(m) for check in checks)]

    def _candidates(self, query: SessionFilter) -> Collection[SessionMetadata]:
        if not self._secondary:
            return self._by_id.values()
        sets: list[Collection[str]] = []
        if query.user_id is not None:
            sets.append(self._by_user.get(query.user_id, set()))
        if query.state is not None:
            sets.append(self._by_state.get(query.state, {}))
        if not sets:
            return self._by_id.values()
        smallest = min(sets, key=len)
        return [self._by_id[session_id] for session_id in smallest]


def _predicates(query: SessionFilter) -> list[Callable[[SessionMetadata], bool]]:
    checks: list[Callable[[SessionMetadata], bool]] = []
    if query.user_id is not None:
        user_id = query.user_id
        checks.append(lambda m: m.user_id == user_id)
    if query.state is not None:
        state = query.state
        checks.append(lambda m: m.state == state)
    if query.created_after is not None:
        created_after = _aware(query.created_after)
        checks.append(lambda m: m.created_at >= created_after)
    if query.created_before is not None:
        created_before = _aware(query.created_before)
        checks.append(lambda m: m.created_at < created_before)
    if query.active_after is not None:
        active_after = _aware(query.active_after)
        checks.append(lambda m: m.last_activity_at >= active_after)
    if query.title_contains is not None:
        needle = query.title_contains  # case-sensitive, as the seed's ``contains``
        checks.append(lambda m: m.title is not None and needle in m.title)
    return checks


def _aware(moment: datetime) -> datetime:
    """Stored times are UTC; a bound without a zone is read as UTC too (comparing
    naive with aware datetimes would raise)."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _aware_key(key: datetime | int) -> datetime | int:
    return _aware(key) if isinstance(key, datetime) else key


def _discard(
    sets: dict[Any, set[str]] | dict[Any, dict[str, None]], key: Any, session_id: str
) -> None:
    members = sets.get(key)
    if members is not None:
        if isinstance(members, dict):
            members.pop(session_id, None)
        else:
            members.discard(session_id)
        if not members:
            del sets[key]


def copy_metadata(metadata: SessionMetadata) -> SessionMetadata:
    """A copy that the caller may keep and change without touching the index."""
    return msgspec.structs.replace(metadata, extra=dict(metadata.extra))

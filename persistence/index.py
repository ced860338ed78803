"""The in-memory index of session metadata: by id, and (optionally) by user and by state.

``list_sessions`` starts from the smallest candidate set its filter allows (one user's
sessions, or one state's), checks the remaining predicates on each candidate, and orders
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
from typing import Any, cast

import msgspec

from bamboo_session.protocol.models import SessionMetadata, SessionState

from .base import SessionFilter, SessionListResult, SortBy, SortOrder
from .created_order import CreatedOrder, first_passing

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
        # Each user's and each state's sessions by id, in the order they came into it:
        # a park takes a state's a step at a time from the front (first_in), and a
        # listing walks a user's metadata objects about in the order they were made,
        # as they lie in memory. A set of ids walked them in its hash order, a cache
        # miss each: a user's 90,000 sessions by message_count took 3x as long
        # (bench/RESULTS.md, h494).
        self._by_user: dict[str | None, dict[str, SessionMetadata]] = {}
        self._by_state: dict[SessionState, dict[str, SessionMetadata]] = {}
        # Creation orders (created_order.py) asked for by listings: (True, a user's id)
        # for that user's sessions, (False, None) for all of them.
        self._orders: dict[tuple[bool, str | None], CreatedOrder] = {}

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
            self._by_user.setdefault(metadata.user_id, {})[metadata.id] = metadata
            self._by_state.setdefault(metadata.state, {})[metadata.id] = metadata
            for source in _sources(metadata):
                order = self._orders.get(source)
                if order is not None:
                    order.add(metadata)

    def remove(self, session_id: str) -> SessionMetadata | None:
        metadata = self._by_id.pop(session_id, None)
        if metadata is not None and self._secondary:
            _discard(self._by_user, metadata.user_id, session_id)
            _discard(self._by_state, metadata.state, session_id)
            # Made again by the next listing that wants them: a session leaves rarely,
            # and taking its place out of a long list costs as much as that.
            for source in _sources(metadata):
                self._orders.pop(source, None)
        return metadata

    def set_state(self, session_id: str, state: SessionState) -> None:
        metadata = self._by_id[session_id]
        if self._secondary:
            _discard(self._by_state, metadata.state, session_id)
            self._by_state.setdefault(state, {})[session_id] = metadata
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
        members[session_id] = members.pop(session_id)

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
        """The page of sessions matching ``query``, and how many sessions it looked at
        (``examined``). The metadata objects are the index's own; the caller copies
        them before they leave the storage."""
        offset, limit = max(query.offset, 0), max(query.limit, 0)
        wanted = offset + limit
        if wanted == 0:  # a count alone (server/store_stats.py): nothing to copy or order
            total, examined = self._count(query)
            return SessionListResult([], total, offset, limit, examined)
        if self._in_created_order(query):
            ordered, total, examined = self._by_creation(query, wanted)
            return SessionListResult(ordered[offset:], total, offset, limit, examined)
        candidates, covered = self._candidates(query)
        matches = _passing(candidates, _predicates(query, covered))
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
        return SessionListResult(ordered[offset:wanted], total, offset, limit, len(candidates))

    def _in_created_order(self, query: SessionFilter) -> bool:
        """Whether ``query`` is read from a :class:`CreatedOrder`: sorted by creation,
        from a user's sessions or all of them (a state's set is the other source)."""
        after = query.after
        return (
            self._secondary
            and query.sort_by is SortBy.CREATED_AT
            and query.state is None
            and (after is None or isinstance(after.key, datetime))
        )

    def _by_creation(
        self, query: SessionFilter, wanted: int
    ) -> tuple[list[SessionMetadata], int, int]:
        """The first ``wanted`` matches of ``query`` in its order, how many match, and
        how many were looked at: the page alone when nothing is left to check but the
        user and the creation times (the order's source and span)."""
        order, made = self._created_order(query.user_id)
        # Made for this listing: every session of its source was looked at (ordered).
        ordered_anew = len(order) if made else 0
        low = None if query.created_after is None else _aware(query.created_after)
        high = None if query.created_before is None else _aware(query.created_before)
        start, end = order.span(low, high)
        descending = query.sort_order == SortOrder.DESC
        first, last = start, end
        if query.after is not None:
            place = (_aware(cast(datetime, query.after.key)), query.after.id)
            first, last = order.beyond(place, descending, start, end)
        checks = _predicates(query, {"user_id", "created_after", "created_before"})
        if not checks:
            # (An offset may be past any list's length: islice takes no more than one.)
            ordered = list(
                itertools.islice(order.walk(first, last, descending), min(wanted, last - first))
            )
            return ordered, end - start, max(len(ordered), ordered_anew)
        check = _all_of(checks)
        # The total counts every match, those before a keyset position too.
        passed_before = sum(1 for m in order.between(start, first) if check(m))
        passed_before += sum(1 for m in order.between(last, end) if check(m))
        ordered, passed = first_passing(order.between(first, last), descending, wanted, check)
        return ordered, passed_before + passed, max(end - start, ordered_anew)

    def _created_order(self, user_id: str | None) -> tuple[CreatedOrder, bool]:
        """The creation order of ``user_id``'s sessions (None: of all), and whether it
        was made now (none was kept: a session of it left since, or none asked)."""
        source = (user_id is not None, user_id)
        order = self._orders.get(source)
        if order is not None:
            return order, False
        if user_id is None:
            members: Iterable[SessionMetadata] = self._by_id.values()
        elif user_id in self._by_user:
            members = self._by_user[user_id].values()
        else:
            # Not kept: nothing would ever drop it (no session of the user leaves), and
            # a peer may list any number of users who have none.
            return CreatedOrder(()), False
        order = self._orders[source] = CreatedOrder(members)
        return order, True

    def _count(self, query: SessionFilter) -> tuple[int, int]:
        """How many sessions match ``query``, and how many were looked at."""
        candidates, covered = self._candidates(query)
        checks = _predicates(query, covered)
        if not checks:
            return len(candidates), 0
        check = _all_of(checks)
        return sum(1 for m in candidates if check(m)), len(candidates)

    def _select(self, query: SessionFilter) -> list[SessionMetadata]:
        candidates, covered = self._candidates(query)
        return _passing(candidates, _predicates(query, covered))

    def _candidates(self, query: SessionFilter) -> tuple[Collection[SessionMetadata], set[str]]:
        """The sessions ``query`` is checked on: the smallest set of those its user or
        its state select (every one without), and which of those two it covers."""
        if not self._secondary:
            return self._by_id.values(), set()
        sets: list[tuple[dict[str, SessionMetadata], str]] = []
        if query.user_id is not None:
            sets.append((self._by_user.get(query.user_id, {}), "user_id"))
        if query.state is not None:
            sets.append((self._by_state.get(query.state, {}), "state"))
        if not sets:
            return self._by_id.values(), set()
        smallest, field = min(sets, key=lambda pair: len(pair[0]))
        return smallest.values(), {field}


def _sources(metadata: SessionMetadata) -> list[tuple[bool, str | None]]:
    """The creation orders a session is in: all sessions', and its user's."""
    if metadata.user_id is None:
        return [(False, None)]
    return [(False, None), (True, metadata.user_id)]


def _passing(
    candidates: Collection[SessionMetadata], checks: list[Callable[[SessionMetadata], bool]]
) -> list[SessionMetadata]:
    if not checks:
        return list(candidates)
    if len(checks) == 1:
        (check,) = checks
        return [m for m in candidates if check(m)]
    return [m for m in candidates if all(check(m) for check in checks)]


def _all_of(checks: list[Callable[[SessionMetadata], bool]]) -> Callable[[SessionMetadata], bool]:
    if len(checks) == 1:
        return checks[0]
    return lambda m: all(check(m) for check in checks)


def _predicates(
    query: SessionFilter, covered: Collection[str] = ()
) -> list[Callable[[SessionMetadata], bool]]:
    """The checks of ``query`` but those of the fields in ``covered`` (which the
    candidates' source answers already)."""
    checks: list[Callable[[SessionMetadata], bool]] = []
    if query.user_id is not None and "user_id" not in covered:
        user_id = query.user_id
        checks.append(lambda m: m.user_id == user_id)
    if query.state is not None and "state" not in covered:
        state = query.state
        checks.append(lambda m: m.state == state)
    if query.created_after is not None and "created_after" not in covered:
        created_after = _aware(query.created_after)
        checks.append(lambda m: m.created_at >= created_after)
    if query.created_before is not None and "created_before" not in covered:
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


def _discard(sets: dict[Any, dict[str, SessionMetadata]], key: Any, session_id: str) -> None:
    members = sets.get(key)
    if members is not None:
        members.pop(session_id, None)
        if not members:
            del sets[key]


def copy_metadata(metadata: SessionMetadata) -> SessionMetadata:
    """A copy that the caller may keep and change without touching the index."""
    return msgspec.structs.replace(metadata, extra=dict(metadata.extra))

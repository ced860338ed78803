"""What ``list_sessions`` is asked and what it answers: :class:`SessionFilter` (the
fields to match, the page, the order, and where a keyset page starts: :class:`ListPosition`),
its sort keys, and :class:`SessionListResult`.

Part of the storage contract (persistence/base.py re-exports all of it); every backend
reads a filter the same way, and ``tests/test_storage_contract_listing.py`` holds them
to it.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated

import msgspec

from bamboo_session.protocol.models import SessionMetadata, SessionState

__all__ = [
    "ListPosition",
    "NonNegative64",
    "SessionFilter",
    "SessionListResult",
    "SortBy",
    "SortOrder",
]


class SortBy(enum.StrEnum):
    CREATED_AT = "created_at"
    UPDATED_AT = "updated_at"
    LAST_ACTIVITY_AT = "last_activity_at"
    MESSAGE_COUNT = "message_count"


class SortOrder(enum.StrEnum):
    ASC = "asc"
    DESC = "desc"


# A count or an offset: what a 64-bit signed integer holds (every store can take it).
NonNegative64 = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]


class ListPosition(msgspec.Struct, frozen=True):
    """A place in a listing's order: a session's sort key (a time for the time sorts,
    a count for ``message_count``) and its id. A page that starts ``after`` one holds
    only the sessions whose (key, id) come after it in the listing's direction: keyset
    paging, which sessions coming and going before it cannot shift."""

    key: datetime | int
    id: str


class SessionFilter(msgspec.Struct, kw_only=True):
    """A ``list_sessions`` query: every given field must match; times are inclusive
    lower bounds (``*_after``) and exclusive upper bounds (``created_before``)."""

    user_id: str | None = None
    state: SessionState | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    active_after: datetime | None = None
    title_contains: str | None = None
    limit: NonNegative64 = 100
    offset: NonNegative64 = 0
    sort_by: SortBy = SortBy.CREATED_AT
    sort_order: SortOrder = SortOrder.DESC
    # Keyset paging: only the matches after this place (``offset`` counts from it).
    # ``total`` still counts every match.
    after: ListPosition | None = None


class SessionListResult(msgspec.Struct):
    sessions: list[SessionMetadata]
    total: int
    offset: int
    limit: int
    # How many stored sessions the store looked at to answer: the candidates its
    # filter walked (one user's sessions, one state's, or all), which ``total`` does not
    # count when few of them match. What a listing is charged for (server/http.py).
    examined: int = 0

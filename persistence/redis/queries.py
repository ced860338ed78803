"""``list_sessions`` as the arguments of ``list.lua``: a SessionFilter's predicates,
sort key and page, in the encoding the script reads (times in microseconds, each
optional value as ``""`` when absent or ``"=" + value``)."""

from __future__ import annotations

from datetime import datetime
from typing import Final

from ..base import SessionFilter, SortBy
from .layout import Layout, to_micros

# An offset or a limit as list.lua gets it, at most: a sorted set holds fewer members
# (2^32 - 1), so an offset of this is past every end; and Lua, whose numbers are
# doubles, writes a larger one as "4.6116860184273879e+18", which ZRANGEBYSCORE's
# LIMIT refuses (an offset past 2^53 was a 503 for a request with nothing wrong in it).
SCRIPT_INDEX_MAX: Final = 2**32

SORT_SETS: Final = {
    SortBy.CREATED_AT: "created",
    SortBy.UPDATED_AT: "updated",
    SortBy.LAST_ACTIVITY_AT: "active",
    SortBy.MESSAGE_COUNT: "msgs",
}


def list_args(layout: Layout, query: SessionFilter) -> list[str | int]:
    return [
        layout.index,
        f"{layout.prefix}:",
        _optional(query.user_id),
        _optional(None if query.state is None else query.state.value),
        _time(query.created_after),
        _time(query.created_before),
        _time(query.active_after),
        _optional(query.title_contains),
        SORT_SETS[query.sort_by],
        query.sort_order.value,
        min(max(query.offset, 0), SCRIPT_INDEX_MAX),
        min(max(query.limit, 0), SCRIPT_INDEX_MAX),
    ]


def _optional(value: str | None) -> str:
    return "" if value is None else "=" + value


def _time(moment: datetime | None) -> str:
    return "" if moment is None else f"={to_micros(moment)}"

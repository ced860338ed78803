"""``list_sessions`` as the arguments of ``list.lua``: a SessionFilter's predicates,
sort key and page, in the encoding the script reads (times in microseconds, each
optional value as ``""`` when absent or ``"=" + value``)."""

from __future__ import annotations

from datetime import datetime
from typing import Final

from ..base import SessionFilter, SortBy
from .layout import Layout, to_micros

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
        max(query.offset, 0),
        max(query.limit, 0),
    ]


def _optional(value: str | None) -> str:
    return "" if value is None else "=" + value


def _time(moment: datetime | None) -> str:
    return "" if moment is None else f"={to_micros(moment)}"

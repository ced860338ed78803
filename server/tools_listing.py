"""``ls``'s pages: one page of a listing, or with ``--all`` every page to its end by
cursor, read from a running server's ``GET /api/v1/sessions`` or offline from a store,
and printed as a table or JSON page by page (a listing of any length is held one page
at a time).

A page says where the next starts (``next_cursor``, docs/protocol.md "Paging by
cursor"): offline as the server would, so that a cursor of either works with the
other on the same store.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from typing import Final

import msgspec

from bamboo_session.persistence.base import SessionFilter, SessionStorage
from bamboo_session.protocol.models import SessionState

from .list_cursor import BadCursor, ListingPage, cursor_after, position_of
from .terminal_text import json_shown, shown
from .tools import ToolError, short_time
from .tools_store import ASK_THE_SERVER, get_json, offline_store

_INT64_MAX: Final = 2**63 - 1
_HEADER: Final = ["ID", "USER", "STATE", "MESSAGES", "LAST_SEQ", "LAST ACTIVITY", "TITLE"]
# The header's, and a state's whatever the first page holds: fewer columns that widen
# on a later page of --all.
_FIRST_WIDTHS: Final = [
    *(len(name) for name in _HEADER[:2]),
    max(len(state.value) for state in SessionState),
    *(len(name) for name in _HEADER[3:]),
]

ReadPage = Callable[[SessionFilter, str | None], Awaitable[ListingPage]]


async def list_sessions(args: argparse.Namespace, filter: SessionFilter) -> int:
    """``ls``: the page ``filter`` (and ``args.cursor``) asks for, or with ``args.all``
    every page from it to the listing's end."""
    if args.cursor is not None and filter.offset:
        raise ToolError("--cursor and a non-zero --offset cannot be used together")
    output = _Json(filter) if args.json else _Table(filter, args.cursor)
    if args.url:
        return await _list(args, filter, output, lambda f, c: _page_over_http(args, f, c))
    async with offline_store(args, read_only=True, when_locked=ASK_THE_SERVER) as storage:
        return await _list(args, filter, output, lambda f, c: _page_offline(storage, f, c))


async def _list(
    args: argparse.Namespace, filter: SessionFilter, output: _Output, read: ReadPage
) -> int:
    page = await read(filter, args.cursor)
    if not args.all:
        output.page(page)
        output.end(page)
        return 0
    listed = most = 0
    while True:
        output.page(page)
        listed += len(page.sessions)
        most = max(most, page.total)
        if page.next_cursor is None:
            break
        if listed > most:
            # A key that moves while the listing is paged (updated_at, ascending, under
            # steady activity) can keep sessions coming after the cursor for ever.
            output.end(page)
            raise ToolError(
                f"stopped after {listed} sessions, more than the listing holds "
                f"({most}): its sort key moved while it was paged; sort by created_at "
                "to list each session once"
            )
        try:
            page = await read(msgspec.structs.replace(filter, offset=0), page.next_cursor)
        except ToolError:
            # Cut short (the server gone, a refusal): what was printed ends as a
            # listing does, its next cursor where to resume, and the error follows.
            output.end(page)
            raise
    output.end(page)
    return 0


async def _page_over_http(
    args: argparse.Namespace, filter: SessionFilter, cursor: str | None
) -> ListingPage:
    fields = msgspec.to_builtins(filter).items()
    query = {k: v if isinstance(v, str) else str(v) for k, v in fields if v is not None}
    if cursor is not None:
        query["cursor"] = cursor
    found = await get_json(args, "/api/v1/sessions", query)
    try:
        page = msgspec.convert(found, ListingPage, strict=False)
    except msgspec.ValidationError as exc:
        raise ToolError(f"not a listing from {args.url}: {exc}") from None
    # A server before cursors (0.1.0) ignores ``cursor`` (its first page would pass for
    # the page after it) and sends no next_cursor (--all would end after one page).
    if "next_cursor" not in found and (
        cursor is not None or (args.all and page.offset + len(page.sessions) < page.total)
    ):
        option = "--cursor" if cursor is not None else "--all"
        raise ToolError(
            f"{args.url} does not page by cursor (a server older than {option}): "
            "page it with --offset"
        )
    return page


async def _page_offline(
    storage: SessionStorage, filter: SessionFilter, cursor: str | None
) -> ListingPage:
    """The page as the server makes it: one session more than asked, to know whether
    another page follows."""
    if cursor is not None:
        try:
            filter = msgspec.structs.replace(filter, after=position_of(cursor, filter))
        except BadCursor as exc:
            raise ToolError(f"--cursor: {exc}") from None
    limit = filter.limit
    result = await storage.list_sessions(
        msgspec.structs.replace(filter, limit=min(limit + 1, _INT64_MAX))
    )
    sessions = result.sessions[:limit]
    more = len(result.sessions) > limit
    next_cursor = cursor_after(filter, sessions[-1]) if more and sessions else None
    return ListingPage(sessions, result.total, result.offset, limit, next_cursor)


class _Output:
    """Where ``ls`` prints: each page as it is read, then where the listing ended."""

    def page(self, page: ListingPage) -> None: ...

    def end(self, last: ListingPage) -> None: ...


class _Json(_Output):
    """One JSON object of the response's shape, its ``sessions`` those of every page
    printed, written as they come."""

    def __init__(self, filter: SessionFilter) -> None:
        self._offset = filter.offset
        self._limit = filter.limit
        self._started = False
        self._written = 0

    def page(self, page: ListingPage) -> None:
        if not self._started:
            sys.stdout.write('{"sessions":[')
            self._started = True
        for meta in page.sessions:
            if self._written:
                sys.stdout.write(",")
            sys.stdout.write(json_shown(msgspec.json.encode(meta)))
            self._written += 1

    def end(self, last: ListingPage) -> None:
        if not self._started:
            sys.stdout.write('{"sessions":[')
        tail = {
            "total": last.total,
            "offset": self._offset,
            "limit": self._limit,
            "next_cursor": last.next_cursor,
        }
        print("]," + json_shown(msgspec.json.encode(tail))[1:])


class _Table(_Output):
    """A table whose columns are as wide as the first page needs (a later page's wider
    cell widens its column from that page on), then where the listing stopped."""

    def __init__(self, filter: SessionFilter, cursor: str | None) -> None:
        self._offset = filter.offset
        self._from_cursor = cursor is not None
        self._widths: list[int] | None = None
        self._listed = 0

    def page(self, page: ListingPage) -> None:
        rows = [
            [
                m.id,
                shown(m.user_id or "-"),
                m.state.value,
                str(m.message_count),
                str(m.last_seq),
                short_time(m.last_activity_at),
                shown(m.title or ""),
            ]
            for m in page.sessions
        ]
        first = self._widths is None
        widths = self._widths or _FIRST_WIDTHS
        self._widths = [
            max([width, *(len(row[i]) for row in rows)]) for i, width in enumerate(widths)
        ]
        for row in [_HEADER, *rows] if first else rows:
            cells = zip(row, self._widths, strict=True)
            print("  ".join(cell.ljust(width) for cell, width in cells).rstrip())
        self._listed += len(rows)

    def end(self, last: ListingPage) -> None:
        if self._from_cursor:
            print(f"{self._listed} after the cursor, of {last.total} sessions")
        else:
            first = self._offset + 1 if self._listed else self._offset
            print(f"{first}-{self._offset + self._listed} of {last.total} sessions")
        if last.next_cursor is not None:
            print(f"next page: --cursor {last.next_cursor}")

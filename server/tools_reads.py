"""``ls`` and ``show``: sessions and their history, read offline from a store (read-only)
or from a running server's HTTP API (which pages a history; all its pages are read).
``ls``'s pages, and its ``--cursor`` and ``--all``, are tools_listing.py's."""

from __future__ import annotations

import argparse
import urllib.parse
from typing import TYPE_CHECKING, Any

import msgspec

from bamboo_session.persistence.base import SessionFilter, SessionStorage, SortBy, SortOrder
from bamboo_session.protocol.models import Message, Session, SessionMetadata, SessionState

from .list_cursor import MAX_CURSOR_CHARS
from .terminal_text import json_shown, shown
from .tools import (
    ToolError,
    non_negative,
    positive,
    runner,
    session_id_argument,
    short_time,
    time_argument,
)
from .tools_listing import list_sessions
from .tools_store import ASK_THE_SERVER, add_store_options, get_json, offline_store

if TYPE_CHECKING:
    from .tools import SubParsers

HISTORY_PAGE = 500  # messages per read of a history, offline or over HTTP


def add_commands(commands: SubParsers) -> None:
    ls = commands.add_parser(
        "ls",
        help="list sessions",
        description="List sessions as a table (or JSON); newest first by default.",
    )
    add_store_options(ls, with_url=True)
    ls.add_argument("--user-id", help="only sessions of this user")
    ls.add_argument(
        "--state",
        choices=[s.value for s in SessionState],
        help="only this state (no session is ever 'expired': one past its TTL keeps its state "
        "until cleanup removes it; 'cleanup --dry-run' lists those)",
    )
    ls.add_argument("--created-after", type=time_argument, help="created at or after this time")
    ls.add_argument("--created-before", type=time_argument, help="created before this time")
    ls.add_argument(
        "--active-after", type=time_argument, help="last activity at or after this time"
    )
    ls.add_argument("--title-contains", help="title contains this text (case-sensitive)")
    ls.add_argument(
        "--sort-by",
        choices=[s.value for s in SortBy],
        default=SortBy.CREATED_AT.value,
        help="sort key (default: created_at)",
    )
    ls.add_argument(
        "--sort-order",
        choices=[s.value for s in SortOrder],
        default=SortOrder.DESC.value,
        help="sort order (default: desc)",
    )
    ls.add_argument("--limit", type=positive, default=100, help="most sessions (default: 100)")
    ls.add_argument("--offset", type=non_negative, default=0, help="sessions to skip first")
    ls.add_argument(
        "--cursor",
        type=cursor_argument,
        help="the page after the one that printed this cursor ('next page: --cursor ...', "
        "or next_cursor in --json); with the same filter and sort",
    )
    ls.add_argument(
        "--all",
        action="store_true",
        help="every page to the listing's end, by cursor (--limit sessions a read)",
    )
    ls.set_defaults(run=runner(_ls))

    show = commands.add_parser(
        "show", help="show a session", description="Show a session's metadata and history."
    )
    show.add_argument("session_id", metavar="ID", type=session_id_argument, help="session id")
    add_store_options(show, with_url=True)
    show.set_defaults(run=runner(_show))


def _filter(args: argparse.Namespace) -> SessionFilter:
    return SessionFilter(
        user_id=args.user_id,
        state=SessionState(args.state) if args.state else None,
        created_after=args.created_after,
        created_before=args.created_before,
        active_after=args.active_after,
        title_contains=args.title_contains,
        limit=args.limit,
        offset=args.offset,
        sort_by=SortBy(args.sort_by),
        sort_order=SortOrder(args.sort_order),
    )


async def _ls(args: argparse.Namespace) -> int:
    return await list_sessions(args, _filter(args))


def cursor_argument(text: str) -> str:
    if not text or len(text) > MAX_CURSOR_CHARS:
        raise argparse.ArgumentTypeError(
            f"a cursor is 1 to {MAX_CURSOR_CHARS} characters, as a listing printed it"
        )
    return text


async def _show(args: argparse.Namespace) -> int:
    session_id = args.session_id
    if args.url:
        session = await _session_over_http(args, session_id)
    else:
        async with offline_store(args, read_only=True, when_locked=ASK_THE_SERVER) as storage:
            session = await _session_offline(storage, session_id)
    if args.json:
        print(json_shown(msgspec.json.encode(session)))
        return 0
    meta = session.metadata
    fields = [
        ("id", meta.id),
        ("user", shown(meta.user_id or "-")),
        ("title", shown(meta.title or "")),
        ("state", meta.state.value),
        ("created", short_time(meta.created_at)),
        ("last activity", short_time(meta.last_activity_at)),
        ("expires", short_time(meta.expires_at) if meta.expires_at else "never"),
        ("messages", str(meta.message_count)),
        ("events", f"{meta.last_seq} (epoch {meta.epoch})"),
    ]
    for name, value in fields:
        print(f"{name + ':':<15}{value}")
    if session.messages:
        print()
    for message in session.messages:
        created = short_time(message.created_at) if message.created_at else ""
        print(f"[{created}] {message.role.value}: {shown(message.content, lines=True)}")
    return 0


async def _session_offline(storage: SessionStorage, session_id: str) -> Session:
    metadata = await storage.get_metadata(session_id)
    if metadata is None:
        raise ToolError(f"session not found: {session_id}")
    messages: list[Message] = []
    while len(messages) < metadata.message_count:
        before = min(len(messages) + HISTORY_PAGE, metadata.message_count)
        page = await storage.get_history_page(session_id, before - len(messages), before)
        if not page.messages:
            break
        messages.extend(page.messages)
    return Session(metadata=metadata, messages=messages)


async def _session_over_http(args: argparse.Namespace, session_id: str) -> Session:
    """The session and its whole history, page by page, newest first (each page says
    where it starts; the next ends there)."""
    path = "/api/v1/sessions/" + urllib.parse.quote(session_id, safe="")
    pages: list[list[Message]] = []
    query = {"limit": str(HISTORY_PAGE)}
    metadata: SessionMetadata | None = None
    while True:
        body: Any = await get_json(args, path, query)
        if metadata is None:
            metadata = msgspec.convert(body["metadata"], SessionMetadata, strict=False)
        pages.append(msgspec.convert(body["messages"], list[Message], strict=False))
        start = body.get("start")
        if not body.get("has_more") or not isinstance(start, int) or start <= 0:
            break
        query = {"limit": str(HISTORY_PAGE), "before": str(start)}
    messages = [message for page in reversed(pages) for message in page]
    return Session(metadata=metadata, messages=messages)

"""Operator subcommands of ``bamboo-session`` beside ``serve``.

Offline, on a data directory (they take its lock, so not while a server holds it):
``ls``, ``show`` and ``cleanup``. ``ls`` and ``show`` can ask a running server instead,
over its HTTP API (``--url``). Online, over the WebSocket API with
:class:`~bamboo_session.protocol.client.BambooClient`: ``tail`` (live events, resuming on
its own) and ``publish``. Every error ends with a one-line reason and a non-zero status.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import msgspec

from bamboo_session.persistence.base import (
    SessionFilter,
    SessionListResult,
    SortBy,
    SortOrder,
    StorageError,
    StorageLocked,
)
from bamboo_session.protocol.client import BambooClient, ClientError, Reset
from bamboo_session.protocol.errors import InvalidSessionId
from bamboo_session.protocol.ids import check_session_id
from bamboo_session.protocol.models import AnyAgentEvent, Session, SessionState

DEFAULT_DATA_DIR = "~/.bamboo/sessions"
DEFAULT_URL = "ws://127.0.0.1:8765"
T = TypeVar("T")
if TYPE_CHECKING:  # argparse's class is generic to type checkers only
    SubParsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]


class ToolError(Exception):
    """A failure to report as one line (and exit status 1)."""


def add_tool_commands(commands: SubParsers) -> None:
    """Register ``ls``, ``show``, ``tail``, ``cleanup`` and ``publish``."""
    _add_ls(commands)
    _add_show(commands)
    _add_tail(commands)
    _add_cleanup(commands)
    _add_publish(commands)


# -- arguments ----------------------------------------------------------------------------


def _add_source(parser: argparse.ArgumentParser) -> None:
    """``--data-dir`` (offline) or ``--url`` (a running server's HTTP API)."""
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--data-dir",
        type=_path,
        default=None,
        help=f"data directory to read offline (default: {DEFAULT_DATA_DIR}); "
        "refused while a server holds it",
    )
    source.add_argument(
        "--url",
        default=None,
        help="ask a running server instead, e.g. http://127.0.0.1:8765 (ws:// works too)",
    )
    _add_token(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def _add_token(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--token",
        default=os.environ.get("BAMBOO_TOKEN"),
        help="bearer token (JWT) when the server requires one (default: $BAMBOO_TOKEN)",
    )


def _add_online(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=os.environ.get("BAMBOO_URL", DEFAULT_URL),
        help=f"server base URL (default: $BAMBOO_URL or {DEFAULT_URL})",
    )
    _add_token(parser)


def _path(value: str) -> Path:
    return Path(value).expanduser()


def _session_id(value: str) -> str:
    try:
        return check_session_id(value)
    except InvalidSessionId as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _time(value: str) -> datetime:
    """RFC 3339 or ISO 8601 (``2024-05-01``, ``2024-05-01T12:00:00Z``); naive is UTC."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date or RFC 3339 time: {value!r}") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _non_negative(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {value}")
    return number


def _positive(value: str) -> int:
    number = _non_negative(value)
    if number == 0:
        raise argparse.ArgumentTypeError("must be >= 1")
    return number


def _add_ls(commands: SubParsers) -> None:
    ls = commands.add_parser(
        "ls",
        help="list sessions",
        description="List sessions as a table (or JSON); newest first by default.",
    )
    _add_source(ls)
    ls.add_argument("--user-id", help="only sessions of this user")
    ls.add_argument("--state", choices=[s.value for s in SessionState], help="only this state")
    ls.add_argument("--created-after", type=_time, help="created at or after this time")
    ls.add_argument("--created-before", type=_time, help="created before this time")
    ls.add_argument("--active-after", type=_time, help="last activity at or after this time")
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
    ls.add_argument("--limit", type=_positive, default=100, help="most sessions (default: 100)")
    ls.add_argument("--offset", type=_non_negative, default=0, help="sessions to skip first")
    ls.set_defaults(run=run_ls)


def _add_show(commands: SubParsers) -> None:
    show = commands.add_parser(
        "show", help="show a session", description="Show a session's metadata and history."
    )
    show.add_argument("session_id", metavar="ID", type=_session_id, help="session id")
    _add_source(show)
    show.set_defaults(run=run_show)


def _add_tail(commands: SubParsers) -> None:
    tail = commands.add_parser(
        "tail",
        help="follow a session's events live",
        description="Print a session's events as they happen, one JSON object per line, "
        "reconnecting and resuming on its own. Stops when the session is closed.",
    )
    tail.add_argument("session_id", metavar="ID", type=_session_id, help="session id")
    _add_online(tail)
    tail.add_argument(
        "--from-seq",
        type=_non_negative,
        default=None,
        help="first print the events after this seq (0: the whole log); default: live only",
    )
    tail.add_argument("--count", type=_positive, default=None, help="stop after this many events")
    tail.set_defaults(run=run_tail)


def _add_cleanup(commands: SubParsers) -> None:
    cleanup = commands.add_parser(
        "cleanup",
        help="remove expired sessions",
        description="Remove the sessions of a data directory whose TTL has passed; "
        "prints how many.",
    )
    cleanup.add_argument(
        "--data-dir",
        type=_path,
        default=None,
        help=f"data directory (default: {DEFAULT_DATA_DIR}); refused while a server holds it",
    )
    cleanup.set_defaults(run=run_cleanup)


def _add_publish(commands: SubParsers) -> None:
    publish = commands.add_parser(
        "publish",
        help="publish one event",
        description="Append one AgentEvent to a session and print its seq.",
    )
    publish.add_argument("session_id", metavar="ID", type=_session_id, help="session id")
    publish.add_argument(
        "--event",
        required=True,
        help='the AgentEvent as JSON, e.g. \'{"type": "token", "content": "Hi"}\'',
    )
    publish.add_argument(
        "--key", default=None, help="idempotency key: the same key again appends nothing"
    )
    publish.add_argument(
        "--create", action="store_true", help="create the session if it does not exist"
    )
    _add_online(publish)
    publish.set_defaults(run=run_publish)


# -- running ---------------------------------------------------------------------------------


def _run(
    command: Callable[[argparse.Namespace], Coroutine[Any, Any, int]], args: argparse.Namespace
) -> int:
    """Run an async command; every expected failure becomes one line and status 1."""
    try:
        return asyncio.run(command(args))
    except ToolError as exc:
        _fail(str(exc))
    except ClientError as exc:
        _fail(str(exc))
    except StorageError as exc:
        _fail(f"storage: {exc}")
    except OSError as exc:
        _fail(f"{exc.strerror or exc}" if not isinstance(exc, TimeoutError) else "timed out")
    except KeyboardInterrupt:
        return 130
    return 1


def _fail(reason: str) -> None:
    print(f"bamboo-session: {reason}", file=sys.stderr, flush=True)


def run_ls(args: argparse.Namespace) -> int:
    return _run(_ls, args)


def run_show(args: argparse.Namespace) -> int:
    return _run(_show, args)


def run_tail(args: argparse.Namespace) -> int:
    return _run(_tail, args)


def run_cleanup(args: argparse.Namespace) -> int:
    return _run(_cleanup, args)


def run_publish(args: argparse.Namespace) -> int:
    return _run(_publish, args)


# -- offline and HTTP reads ------------------------------------------------------------------


async def _with_storage(path: Path | None, use: Callable[[Any], Awaitable[T]]) -> T:
    from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig

    path = path or _path(DEFAULT_DATA_DIR)
    if not await asyncio.to_thread(path.is_dir):
        raise ToolError(f"no data directory at {path}")
    try:
        storage = await JsonlStorage.open(JsonlStorageConfig(path))
    except StorageLocked:
        raise ToolError(
            f"{path} is in use by a running server; ask it with --url instead"
        ) from None
    try:
        return await use(storage)
    finally:
        await storage.close()


def _http_base(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    if scheme not in ("http", "https") or not parts.netloc:
        raise ToolError(f"not an http(s) or ws(s) URL: {url!r}")
    return urllib.parse.urlunsplit((scheme, parts.netloc, "", "", ""))


def _ws_base(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss") or not parts.netloc:
        raise ToolError(f"not a ws(s) or http(s) URL: {url!r}")
    return urllib.parse.urlunsplit((scheme, parts.netloc, parts.path, "", ""))


def _http_get(url: str, token: str | None) -> bytes:
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            body: bytes = response.read()
            return body
    except urllib.error.HTTPError as error:
        raise ToolError(f"HTTP {error.code}: {_error_message(error.read())}") from None
    except urllib.error.URLError as error:
        base = url.partition("?")[0]
        raise ToolError(f"cannot reach {base}: {error.reason}") from None


def _error_message(body: bytes) -> str:
    try:
        message = json.loads(body)["error"]["message"]
        return str(message)
    except (ValueError, KeyError, TypeError):
        return body.decode(errors="replace").strip().splitlines()[0] if body.strip() else "error"


async def _get_json(args: argparse.Namespace, path: str, query: dict[str, str]) -> Any:
    url = _http_base(args.url) + path
    if query:
        url += "?" + urllib.parse.urlencode(query)
    body = await asyncio.to_thread(_http_get, url, args.token)
    try:
        return json.loads(body)
    except ValueError:
        raise ToolError(f"not JSON from {url}") from None


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
    filter = _filter(args)
    if args.url:
        fields = msgspec.to_builtins(filter).items()
        query = {k: _query_value(v) for k, v in fields if v is not None}
        result = msgspec.convert(
            await _get_json(args, "/api/v1/sessions", query), SessionListResult, strict=False
        )
    else:

        async def listing(storage: Any) -> SessionListResult:
            found: SessionListResult = await storage.list_sessions(filter)
            return found

        result = await _with_storage(args.data_dir, listing)
    if args.json:
        print(msgspec.json.encode(result).decode())
        return 0
    rows = [
        [
            m.id,
            m.user_id or "-",
            m.state.value,
            str(m.message_count),
            str(m.last_seq),
            _short_time(m.last_activity_at),
            m.title or "",
        ]
        for m in result.sessions
    ]
    _print_table(["ID", "USER", "STATE", "MESSAGES", "LAST_SEQ", "LAST ACTIVITY", "TITLE"], rows)
    shown = len(result.sessions)
    first = result.offset + 1 if shown else result.offset
    print(f"{first}-{result.offset + shown} of {result.total} sessions")
    return 0


def _query_value(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


async def _show(args: argparse.Namespace) -> int:
    session_id = args.session_id
    if args.url:
        path = "/api/v1/sessions/" + urllib.parse.quote(session_id, safe="")
        session = msgspec.convert(await _get_json(args, path, {}), Session, strict=False)
    else:

        async def load(storage: Any) -> Session | None:
            loaded: Session | None = await storage.load_session(session_id)
            return loaded

        found = await _with_storage(args.data_dir, load)
        if found is None:
            raise ToolError(f"session not found: {session_id}")
        session = found
    if args.json:
        print(msgspec.json.encode(session).decode())
        return 0
    meta = session.metadata
    fields = [
        ("id", meta.id),
        ("user", meta.user_id or "-"),
        ("title", meta.title or ""),
        ("state", meta.state.value),
        ("created", _short_time(meta.created_at)),
        ("last activity", _short_time(meta.last_activity_at)),
        ("expires", _short_time(meta.expires_at) if meta.expires_at else "never"),
        ("messages", str(meta.message_count)),
        ("events", f"{meta.last_seq} (epoch {meta.epoch})"),
    ]
    for name, value in fields:
        print(f"{name + ':':<15}{value}")
    if session.messages:
        print()
    for message in session.messages:
        created = _short_time(message.created_at) if message.created_at else ""
        print(f"[{created}] {message.role.value}: {message.content}")
    return 0


async def _cleanup(args: argparse.Namespace) -> int:
    async def clean(storage: Any) -> int:
        removed: int = await storage.cleanup_expired_sessions()
        return removed

    print(await _with_storage(args.data_dir, clean))
    return 0


def _short_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


# -- online --------------------------------------------------------------------------------


_encoder = msgspec.json.Encoder()


async def _connect(args: argparse.Namespace, **options: Any) -> BambooClient:
    url = _ws_base(args.url)
    try:
        return await BambooClient.connect(url, args.session_id, token=args.token, **options)
    except TimeoutError:
        raise ToolError(f"cannot connect to {url}: timed out") from None
    except OSError as exc:
        raise ToolError(f"cannot connect to {url}: {exc.strerror or exc}") from None


async def _tail(args: argparse.Namespace) -> int:
    client = await _connect(args, last_seq=args.from_seq)
    printed = 0
    async with client:
        async for item in client.events():
            if isinstance(item, Reset):
                _fail(
                    f"could not resume after seq {item.previous_last_seq}; "
                    f"continuing live after seq {item.last_seq}"
                )
                continue
            line = {"seq": item.seq, "ts": item.ts, "event": item.event}
            sys.stdout.write(_encoder.encode(line).decode() + "\n")
            sys.stdout.flush()
            printed += 1
            if args.count is not None and printed >= args.count:
                break
    return 0


async def _publish(args: argparse.Namespace) -> int:
    try:
        event = msgspec.json.decode(args.event, type=AnyAgentEvent)
    except msgspec.DecodeError as exc:
        raise ToolError(f"--event is not a valid AgentEvent: {exc}") from None
    client = await _connect(
        args,
        create=args.create,
        role="agent",
        max_retries=3,
        request_timeout=30,
        receive_events=False,
    )
    async with client:
        print(await client.publish(event, key=args.key))
    return 0

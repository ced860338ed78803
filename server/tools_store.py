"""Where the operator tools read from: a store opened offline, or a running server's
HTTP API.

Offline, the store is ``--store URL`` or ``--data-dir DIR``, else what ``serve`` would
use: ``BAMBOO_STORE``, else ``BAMBOO_DATA_DIR``, else ``~/.bamboo/sessions``. Reads open
it read-only (``open_storage(url, read_only=True)``): they create nothing, write
nothing, and refuse a directory that is not a store, naming it. Only ``cleanup``'s
removals, ``delete`` and ``recount`` open it for writing, and none of them makes a store
where there is none: a JSONL data directory and an SQLite file must exist already. A
store a server holds is refused for writing; the tools that write have no ``--url``,
so the refusal says to stop the server first.

Over HTTP, a 429 (the pages the tool's user or address reads are over their read
allowance, or its answers not yet read over their part) or a 503 that says when to
ask again (the server's buffer for answers is full) is asked again once its
``Retry-After`` has passed, for a minute at most.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import time
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, Final

from bamboo_session.persistence import open_storage, parse_store_url
from bamboo_session.persistence.base import Storage, StorageError, StorageLocked

from .tools import ToolError, path_argument

DEFAULT_DATA_DIR = "~/.bamboo/sessions"
DEFAULT_URL = "ws://127.0.0.1:8765"


# What --store does with a store a running server holds: ls and show read it, the tools
# that write (or count) refuse a JSONL or SQLite one (offline_store).
HELD_READ = (
    "read offline: a JSONL store a server holds is read as it is (a best-effort view, "
    "the latest events may be missing), an SQLite one is refused (ask the server: --url)"
)
HELD_REFUSED = (
    "opened offline: a JSONL or SQLite store a server holds is refused before anything is changed"
)


def add_store_options(parser: argparse.ArgumentParser, *, with_url: bool) -> None:
    """``--store`` / ``--data-dir`` (offline), or ``--url`` (a running server)."""
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--store",
        default=None,
        help="the store's URL, as serve takes it (default: $BAMBOO_STORE, else "
        f"--data-dir); {HELD_READ if with_url else HELD_REFUSED}",
    )
    source.add_argument(
        "--data-dir",
        type=path_argument,
        default=None,
        help=f"data directory of the JSONL store (default: $BAMBOO_DATA_DIR, else "
        f"{DEFAULT_DATA_DIR})",
    )
    if with_url:
        source.add_argument(
            "--url",
            default=None,
            help="ask a running server instead, e.g. http://127.0.0.1:8765 (ws:// works too)",
        )
        add_token(parser)
        parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def add_token(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--token",
        default=os.environ.get("BAMBOO_TOKEN"),
        help="bearer token (JWT) when the server requires one (default: $BAMBOO_TOKEN)",
    )


def add_online(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=os.environ.get("BAMBOO_URL", DEFAULT_URL),
        help=f"server base URL (default: $BAMBOO_URL or {DEFAULT_URL})",
    )
    add_token(parser)


# What ``ls`` and ``show`` tell to do about a store its server holds alone (SQLite).
ASK_THE_SERVER: Final = "ask that server with --url (http://HOST:PORT), or stop it first"


def store_url(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> str:
    """The store the offline tools read: flags, then the environment, then the default."""
    environ = os.environ if environ is None else environ
    if args.store:
        return str(args.store)
    if args.data_dir is not None:
        return str(args.data_dir)
    if environ.get("BAMBOO_STORE"):
        return environ["BAMBOO_STORE"]
    return str(path_argument(environ.get("BAMBOO_DATA_DIR") or DEFAULT_DATA_DIR))


@contextlib.asynccontextmanager
async def offline_store(
    args: argparse.Namespace,
    *,
    read_only: bool,
    offline: bool = False,
    when_locked: str = "stop it first",
) -> AsyncIterator[Storage]:
    """The store ``args`` names, open (read-only unless told otherwise), closed after.
    ``offline``: a read-only open that refuses a store a server holds, as a writing
    one does (``open_storage``'s); ``when_locked``: what the refusal tells to do."""
    url = store_url(args)
    try:
        parsed = parse_store_url(url)
    except ValueError as exc:
        raise ToolError(str(exc)) from None
    # A file store by its path; another by its URL as shown (a Redis one's password
    # masked: its location holds it).
    where = parsed.location if parsed.scheme in ("jsonl", "sqlite") else parsed.text
    if parsed.scheme == "jsonl" and not await asyncio.to_thread(Path(where).is_dir):
        raise ToolError(f"no data directory at {where}")
    if parsed.scheme == "sqlite" and not await asyncio.to_thread(Path(where).is_file):
        raise ToolError(f"no SQLite store at {where}")  # a writing open would make one
    try:
        storage = await open_storage(
            url, read_only=read_only, offline=offline, cleanup_interval=None
        )
    except StorageLocked:
        raise ToolError(f"{where} is in use by a running server; {when_locked}") from None
    except StorageError as exc:  # not a store, a damaged one...: say which
        message = str(exc)
        raise ToolError(message if where in message else f"{where}: {message}") from None
    except ValueError as exc:
        raise ToolError(str(exc)) from None
    try:
        yield storage
    finally:
        await storage.close()


# -- a running server's HTTP API --------------------------------------------------------------


def http_base(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    if scheme not in ("http", "https") or not parts.netloc:
        raise ToolError(f"not an http(s) or ws(s) URL: {url!r}")
    return urllib.parse.urlunsplit((scheme, parts.netloc, "", "", ""))


def ws_base(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss") or not parts.netloc:
        raise ToolError(f"not a ws(s) or http(s) URL: {url!r}")
    return urllib.parse.urlunsplit((scheme, parts.netloc, parts.path, "", ""))


# How long a tool waits in all, as the Retry-After of 429 and 503 answers say, for the
# pages its user or address reads to come back within its read allowance, or for room
# among the answers not yet read (docs/protocol.md, Order of checks).
RATE_LIMITED_PATIENCE = 60


def _http_get(url: str, token: str | None) -> bytes:
    # Imported here: an offline tool needs no HTTP client, nor the WebSocket client's
    # module (websockets) that reads Retry-After.
    import urllib.error
    import urllib.request

    from bamboo_session.protocol.client.handshake import retry_after

    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, headers=headers)
    waited = 0.0
    while True:
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                body: bytes = response.read()
                return body
        except urllib.error.HTTPError as error:
            with error:
                delay = retry_after(error.code, error.headers.get("Retry-After"))
                if delay is None or waited + delay > RATE_LIMITED_PATIENCE:
                    raise ToolError(f"HTTP {error.code}: {_error_message(error.read())}") from None
        except urllib.error.URLError as error:
            base = url.partition("?")[0]
            raise ToolError(f"cannot reach {base}: {error.reason}") from None
        time.sleep(delay)
        waited += delay


def _error_message(body: bytes) -> str:
    try:
        message = json.loads(body)["error"]["message"]
        return str(message)
    except (ValueError, KeyError, TypeError):
        return body.decode(errors="replace").strip().splitlines()[0] if body.strip() else "error"


async def get_json(args: argparse.Namespace, path: str, query: dict[str, str]) -> Any:
    url = http_base(args.url) + path
    if query:
        url += "?" + urllib.parse.urlencode(query)
    body = await asyncio.to_thread(_http_get, url, args.token)
    try:
        return json.loads(body)
    except ValueError:
        raise ToolError(f"not JSON from {url}") from None

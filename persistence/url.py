"""``open_storage(url)``: a store from its URL, importing only the backend it names.

- ``jsonl:///var/lib/bamboo`` (as in file URLs: three slashes, then an absolute path),
  or a bare path, absolute or relative (``~`` expands): the embedded JSONL store. A
  bare ``memory``, ``sqlite`` or ``redis`` (or ``redis:host``) is refused, not read as
  a directory of that name: a ``://`` was meant.
  Query parameters set its options, e.g. ``?durability=os``.
- ``memory://``: the in-memory store (tests, embedding).
- ``sqlite:///path/to/file.db`` and ``redis://host:port/db``.

A URL (not a bare path) with a fragment (``#``: ``%23`` in a path or a password) is
refused, as is one whose user info holds a ``/``, ``?``, ``[`` or ``]`` not
percent-encoded: a parser would read either otherwise than meant.

Options every backend takes (``StoreOptions``) come as keyword arguments; a backend's
own options come in the URL's query. An unknown scheme or option is a ``ValueError``
whose message names it.
"""

from __future__ import annotations

import dataclasses
import importlib
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .base import Storage


@dataclasses.dataclass(frozen=True, slots=True)
class StoreOptions:
    """What every backend takes: ``default_ttl`` (seconds; None: sessions never expire),
    ``max_sessions`` (None: no limit), ``cleanup_interval`` (seconds between removals
    of expired sessions; None: only on demand), ``read_only`` (offline tools: refuse to
    create a store, and write nothing), ``offline`` (with ``read_only``: refuse a store
    that a running server holds, with StorageLocked, where the backend can tell; for a
    tool, such as migrate, that needs the store to stand still), ``max_session_bytes``
    (what one session's log may hold, in the store's measure of its ``stored_bytes``;
    None: no cap; an append past it is SessionFull), ``max_user_bytes`` (what the
    sessions of one user_id may hold together, in the same measure; None: no cap; an
    append past it is UserFull)."""

    default_ttl: int | None = None
    max_sessions: int | None = None
    cleanup_interval: float | None = 3600
    read_only: bool = False
    offline: bool = False
    max_session_bytes: int | None = None
    max_user_bytes: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class StoreURL:
    scheme: str
    location: str  # a path for file stores, ``host:port/db`` for servers, "" for memory
    params: dict[str, str]
    text: str  # as given, for messages

    def take(self, name: str, default: str | None = None) -> str | None:
        return self.params.get(name, default)

    def check_params(self, known: set[str]) -> None:
        unknown = sorted(set(self.params) - known)
        if unknown:
            allowed = ", ".join(sorted(known)) or "none"
            # Without the query's values: an unknown option may be a secret given the
            # way another client takes it (redis-py's ``?password=``).
            shown = self.text.partition("?")[0]
            raise ValueError(
                f"store URL {shown + '?...'!r}: unknown option {unknown[0]!r} (known: {allowed})"
            )


class Opener(Protocol):
    async def __call__(self, url: StoreURL, options: StoreOptions) -> Storage: ...


# scheme -> "module:function", imported on first use of that scheme.
_OPENERS: dict[str, str] = {
    "jsonl": "bamboo_session.persistence.jsonl:open_from_url",
    "memory": "bamboo_session.persistence.memory:open_from_url",
    "sqlite": "bamboo_session.persistence.sqlite:open_from_url",
    "redis": "bamboo_session.persistence.redis:open_from_url",
}


def backend_module(url: str) -> str:
    """The module of the backend ``url`` names (ValueError: not a store URL), which
    ``open_storage`` imports: for a process that forks others to import it once."""
    return _OPENERS[parse_store_url(url).scheme].partition(":")[0]


def without_password(text: str) -> str:
    """``text`` with the password in its user info, if any, written ``***``, and else as
    it is: a store's URL as messages and logs may show it (a Redis URL may carry one).

    Read as text, not parsed: a password may hold a ``/``, ``?``, ``#``, ``[`` or ``@``
    not percent-encoded, which a URL parser takes for the end of the host (the rest of
    the password then showed as the path, query or fragment) or refuses. So the user
    info runs from ``://`` to the last ``@``, and its password from its first ``:``; an
    ``@`` in a Redis URL's path or query masks more than a password, never less. A URL
    whose ``://`` is followed by ``/`` (a file store's path) has no user info."""
    scheme, separator, rest = text.partition("://")
    if not separator or rest.startswith("/"):
        return text
    userinfo, at, after = rest.rpartition("@")
    user, colon, _password = userinfo.partition(":")
    if not at or not colon:
        return text
    return f"{scheme}://{user}:***@{after}"


def parse_store_url(given: str) -> StoreURL:
    """``given`` as a store URL (a bare path means jsonl), or ValueError; its messages,
    and the StoreURL's ``text``, show it with any password masked."""
    if not given:
        raise ValueError("store URL is empty")
    text = without_password(given)
    if "://" not in text:
        kind = text.partition(":")[0].lower()
        if kind in _OPENERS and (text.lower() == kind or ":" in text):
            # "memory" or "redis:6379" meant a store, not a directory of that name.
            raise ValueError(
                f"store URL {text!r} names a kind of store but has no '://': write "
                f"{kind}://... (or ./{text} for a directory of that name)"
            )
        return StoreURL("jsonl", str(Path(text).expanduser()), {}, text)
    _refuse_misread_parts(given, text)
    parts = urllib.parse.urlsplit(given)
    scheme = parts.scheme.lower()
    if scheme not in _OPENERS:
        known = ", ".join(f"{name}://" for name in _OPENERS)
        raise ValueError(f"store URL {text!r}: unknown scheme {scheme!r} (known: {known})")
    params = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    if scheme in ("jsonl", "sqlite"):
        location = _file_path(text, parts)
    elif scheme == "memory":
        location = ""
    else:
        location = parts.netloc + parts.path
    return StoreURL(scheme, location, params, text)


def _refuse_misread_parts(given: str, text: str) -> None:
    """ValueError for a URL that a parser would read otherwise than meant: with a
    fragment, which no store takes (what follows its '#' was dropped, a directory's
    name cut short, or had the store's options appended to it, never read); or with a
    user info holding what ends a host, which split the password into the host, path or
    query (where a message quoting an option's name showed part of it)."""
    if "#" in given:
        raise ValueError(
            f"store URL {text!r}: a '#' begins a fragment, which no store takes (write "
            "it %23 in a path or a password)"
        )
    authority = given.partition("://")[2]
    if authority.startswith("/"):  # a file store's path: no user info
        return
    userinfo = authority.rpartition("@")[0]
    if any(character in userinfo for character in "/?[]"):
        raise ValueError(
            f"store URL {text!r}: a '/', '?', '[' or ']' before its last '@': a user or "
            "password must have them percent-encoded (%2F %3F %5B %5D), and what follows "
            "the host may hold no '@'"
        )


def _file_path(text: str, parts: urllib.parse.SplitResult) -> str:
    if parts.netloc not in ("", "localhost"):
        host = urllib.parse.urlsplit(text).netloc  # (its password masked)
        raise ValueError(
            f"store URL {text!r}: a file store needs three slashes then an absolute path "
            f"(like {parts.scheme}:///var/lib/bamboo), not a host {host!r}"
        )
    path = urllib.parse.unquote(parts.path)
    # SQLAlchemy writes an absolute path with four slashes: sqlite:////var/db.
    while path.startswith("//"):
        path = path[1:]
    if not path or path == "/":
        raise ValueError(f"store URL {text!r} names no path")
    return str(Path(path).expanduser())


async def open_storage(
    url: str,
    *,
    default_ttl: int | None = None,
    max_sessions: int | None = None,
    cleanup_interval: float | None = 3600,
    read_only: bool = False,
    offline: bool = False,
    max_session_bytes: int | None = None,
    max_user_bytes: int | None = None,
) -> Storage:
    """The store ``url`` names, open (see the module docstring)."""
    parsed = parse_store_url(url)
    if max_session_bytes is not None and max_session_bytes < 1:
        raise ValueError("max_session_bytes must be at least 1 (None: no cap)")
    if max_user_bytes is not None and max_user_bytes < 1:
        raise ValueError("max_user_bytes must be at least 1 (None: no cap)")
    options = StoreOptions(
        default_ttl,
        max_sessions,
        cleanup_interval,
        read_only,
        offline,
        max_session_bytes,
        max_user_bytes,
    )
    module_name, _, function = _OPENERS[parsed.scheme].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and exc.name.startswith("bamboo_session"):
            raise ValueError(f"store URL {parsed.text!r}: no {parsed.scheme} backend yet") from None
        raise ValueError(
            f"store URL {parsed.text!r}: the {parsed.scheme} backend needs {exc.name!r} "
            f"(pip install 'bamboo-session[{parsed.scheme}]')"
        ) from None
    opener: Opener = getattr(module, function)
    return await opener(parsed, options)

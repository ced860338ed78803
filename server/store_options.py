"""What ``serve``'s store flags add to the store's URL (``--store``): ``--durability`` to a
JSONL or SQLite store's (and what to warn of where another store ignores it), the
``--redis-*`` options to a Redis store's."""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Mapping

from bamboo_session.persistence.url import parse_store_url

FILE_STORES = ("jsonl", "sqlite")  # the stores that take a durability


def with_durability(url: str, durability: str | None) -> str:
    """``url`` with ``durability`` (``--durability``; None: not given) in its query where
    it is a JSONL or SQLite store's URL that names none (a bare path is a JSONL store's);
    ValueError where it names another, ``fsync`` included: an operator who asked for
    syncs must not get a store that skips them. Other stores have no such option:
    theirs stays as it is."""
    if durability is None:
        return url
    parsed = parse_store_url(url)  # ValueError for what names no store
    if parsed.scheme not in FILE_STORES:
        return url
    query_text = url.partition("?")[2] if "://" in url else ""  # (a bare path has none)
    named = dict(urllib.parse.parse_qsl(query_text)).get("durability")
    if named is None and durability == "fsync":
        return url  # the default, which every store's URL means unless told
    if "://" not in url:
        url = f"jsonl://{urllib.parse.quote(os.path.abspath(parsed.location))}"
    base, _, query_text = url.partition("?")  # (urlunsplit would drop jsonl:///'s //)
    query = dict(urllib.parse.parse_qsl(query_text, keep_blank_values=True))
    if query.setdefault("durability", durability) != durability:
        raise ValueError(
            f"--durability {durability} and the store's URL (durability="
            f"{query['durability']}) disagree: give one of them (the former may be set"
            " as BAMBOO_DURABILITY, or as durability in the --config file)"
        )
    return f"{base}?{urllib.parse.urlencode(query)}"


def ignored_durability(url: str, durability: str | None) -> str | None:
    """What to warn of at the start where ``durability`` is given (``--durability``,
    BAMBOO_DURABILITY or the --config file's) beside a store that takes none (memory,
    Redis), which ignores it; None where it applies or was not given. Not refused: a
    host-wide BAMBOO_DURABILITY would then stop every server on another store."""
    if durability is None:
        return None
    scheme = parse_store_url(url).scheme  # ValueError for what names no store
    if scheme in FILE_STORES:
        return None
    return (
        f"durability {durability} (--durability, BAMBOO_DURABILITY or durability in the "
        f"--config file) applies to file stores (jsonl, sqlite) and is ignored for this "
        f"{scheme}:// store"
    )


def with_redis_options(url: str, options: Mapping[str, int]) -> str:
    """``url`` with ``options`` in its query (they win over the URL's own); ValueError
    where it names no Redis store, or one a URL parser would misread (a password's
    unencoded ``?`` began the query, the password's start then shown as the URL)."""
    if not options:
        return url
    scheme = parse_store_url(url).scheme  # refused, the password masked, before urlsplit
    if scheme != "redis":
        raise ValueError(f"--redis-* options need a redis:// store, not {scheme}://")
    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    query.update({name: str(value) for name, value in options.items()})
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))

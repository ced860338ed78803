"""The cursor of ``GET /api/v1/sessions``: an opaque string naming the last session of
a page (its sort key and id) and the query it belongs to, so that the next page starts
right after it (keyset paging) whatever was created or removed meanwhile.

A cursor is MessagePack ``[version, fingerprint, key, id]`` in URL-safe base64 without
padding: the fingerprint is 8 bytes of BLAKE2b over the query's filter and sort (times
as UTC microseconds, so one instant written two ways is one query), the key a time's
microseconds since 1970 (UTC) or a message count. It is never trusted: anything that
does not decode to exactly that, names a key outside what the sort can hold, an id
that is not a session id, or another query, is refused (:class:`BadCursor`, a 400);
a cursor a client made up with a valid shape is only a place to start from.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Final

import msgspec

from bamboo_session.persistence.base import ListPosition, SessionFilter, SortBy
from bamboo_session.protocol.ids import is_valid_session_id
from bamboo_session.protocol.micros import from_micros, to_micros
from bamboo_session.protocol.models import SessionMetadata

__all__ = ["MAX_CURSOR_CHARS", "BadCursor", "ListingPage", "cursor_after", "position_of"]

# The longest cursor this server makes is some 200 characters (an id of 128); one
# longer is not one of ours, and is refused before it is decoded.
MAX_CURSOR_CHARS: Final = 256

_VERSION: Final = 1
_MIN_MICROS: Final = -62_135_596_800_000_000  # 0001-01-01T00:00:00Z
_MAX_MICROS: Final = 253_402_300_799_999_999  # 9999-12-31T23:59:59.999999Z
_INT64_MAX: Final = 2**63 - 1


class BadCursor(ValueError):
    """A ``cursor`` this listing cannot take: a 400 whose message says why."""


class ListingPage(msgspec.Struct):
    """The listing's response: the store's page, and where the next one starts."""

    sessions: list[SessionMetadata]
    total: int
    offset: int
    limit: int
    next_cursor: str | None = None  # a server before cursors sent none


class _Cursor(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    version: int
    fingerprint: bytes
    key: int
    id: str


def cursor_after(query: SessionFilter, last: SessionMetadata) -> str:
    """The cursor of the page after ``last`` (the last session of a page of ``query``)."""
    raw = getattr(last, query.sort_by.value)
    key = raw if isinstance(raw, int) else to_micros(raw)
    packed = msgspec.msgpack.encode(_Cursor(_VERSION, _fingerprint(query), key, last.id))
    return base64.urlsafe_b64encode(packed).rstrip(b"=").decode()


def position_of(cursor: str, query: SessionFilter) -> ListPosition:
    """Where the page after ``cursor`` starts, if ``cursor`` is one of ``query``'s;
    else :class:`BadCursor`."""
    if len(cursor) > MAX_CURSOR_CHARS:
        raise BadCursor(f"cursor is longer than {MAX_CURSOR_CHARS} characters: not a cursor")
    try:
        packed = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        decoded = msgspec.msgpack.decode(packed, type=_Cursor)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise BadCursor("cursor is not one this server made (corrupt or cut short)") from None
    if decoded.version != _VERSION or not is_valid_session_id(decoded.id):
        raise BadCursor("cursor is not one this server made")
    if decoded.fingerprint != _fingerprint(query):
        raise BadCursor(
            "cursor belongs to another listing: send it with the same user_id, state, "
            "created_after, created_before, active_after, title_contains, sort_by and "
            "sort_order as the request that returned it"
        )
    if query.sort_by is SortBy.MESSAGE_COUNT:
        if not 0 <= decoded.key <= _INT64_MAX:
            raise BadCursor("cursor is not one this server made (count out of range)")
        return ListPosition(decoded.key, decoded.id)
    if not _MIN_MICROS <= decoded.key <= _MAX_MICROS:
        raise BadCursor("cursor is not one this server made (time out of range)")
    return ListPosition(from_micros(decoded.key), decoded.id)


def _fingerprint(query: SessionFilter) -> bytes:
    """8 bytes naming the query's filter and sort (not its page)."""
    times = (query.created_after, query.created_before, query.active_after)
    terms = (
        query.user_id,
        None if query.state is None else query.state.value,
        *(None if moment is None else to_micros(moment) for moment in times),
        query.title_contains,
        query.sort_by.value,
        query.sort_order.value,
    )
    return hashlib.blake2b(msgspec.msgpack.encode(terms), digest_size=8).digest()

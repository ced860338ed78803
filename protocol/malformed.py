"""Why a frame could not be decoded, in msgspec's words, except where they mislead: a
lone high surrogate escape in JSON (``"\\ud800"`` with no low half after it) is named
as what it is, one way wherever it stands. msgspec says ``Input data was truncated``
of some and ``unexpected end of escaped utf-16 surrogate pair`` of others. And a
decoder's reason cut to what an error may quote (``quoting_at_most``)."""

from __future__ import annotations

import re
from typing import Final

_TRUNCATED: Final = "Input data was truncated"
# What msgspec says of a high half followed by anything but an escape, in an object's
# key or a Struct's str field (elsewhere it says _TRUNCATED, or names the pair invalid).
_HIGH_HALF_ALONE: Final = "JSON is malformed: unexpected end of escaped utf-16 surrogate pair"
_LONE_HIGH_HALF: Final = (
    "JSON is malformed: invalid utf-16 surrogate pair (a high half, "
    "\\ud800 to \\udbff, with no low half after it)"
)
# An escape ``\uD800``-``\uDBFF`` with no low half's escape right after it, searched
# for once every escaped backslash is out of the way (_ESCAPED_BACKSLASH): a pattern
# that counted the backslashes before each ``\u`` itself took 100 to 500 ms of the
# event loop on a 1 MiB frame of them, where this takes about what msgspec does.
_LONE_HIGH_SURROGATE: Final = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
)
# Replaced left to right, as JSON reads escapes, by as many bytes that are no
# backslash: what follows a run of them is escaped exactly when the run was odd.
_ESCAPED_BACKSLASH: Final = b"\\\\"
_NOT_AN_ESCAPE: Final = b"__"


def why_malformed(exc: Exception, raw: bytes | str, json: bool) -> str:
    """msgspec's words for a frame it could not decode (``json``: a JSON frame), a lone
    high surrogate escape named as such."""
    words = str(exc)
    if json and words.startswith(_HIGH_HALF_ALONE):
        return _LONE_HIGH_HALF
    if json and words == _TRUNCATED:
        data = raw.encode(errors="surrogatepass") if isinstance(raw, str) else raw
        if _LONE_HIGH_SURROGATE.search(data.replace(_ESCAPED_BACKSLASH, _NOT_AN_ESCAPE)):
            return _LONE_HIGH_HALF
    return words


# The most characters of a decoder's reason an error carries: it quotes the value at
# fault (an unknown ``type``, ``role`` or ``state``), which can be most of the frame, and
# the error, its id besides, would be over the frame limit. Some 1,200 bytes of JSON.
MAX_REASON_CHARS: Final = 200


def quoting_at_most(reason: str) -> str:
    """A decoder's ``reason``, of at most ``MAX_REASON_CHARS`` characters: its head and
    its tail (where it says the path, ``- at `$.type```) around an ellipsis."""
    if len(reason) <= MAX_REASON_CHARS:
        return reason
    half = MAX_REASON_CHARS // 2
    return reason[:half] + "…" + reason[-half:]

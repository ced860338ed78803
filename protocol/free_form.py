"""Free-form values: what a published event or message carries in its ``Any`` fields
(custom ``data``, tool ``arguments``, message ``metadata``), checked as every codec
carries it, and counted, since a frame's bytes do not bound what its values take once
decoded; and what the strings of a frame or message hold decoded (``held_by_strings``,
a walk), or at most (``held_at_most``: a bound from the frame's bytes, no walk for
small frames).

Why the bound is sound. ``held_by_strings`` counts, for each str, ``getsizeof(s) -
getsizeof("")``: an ASCII str of c characters holds c; any other is a wider header
plus ``w`` bytes a character (and its terminator), ``w`` the width of its widest
character: 1 (U+0080..U+00FF), 2 (..U+FFFF) or 4. With this interpreter (3.11, 64-bit)
that is ``X + wc`` with X = 24, 25, 27: 25, 27 and 31 bytes for a string of one
character (``'é'``, ``'Ā'``, an emoji). What each str costs in a frame is at least its
UTF-8 bytes n and one byte more: in MessagePack a str header (fixstr, 1 byte; str8/16/32
more), in JSON two quotes and the ``:``, ``,``, ``]`` or ``}`` that follows it. A string
of width w holds one character of at least u UTF-8 bytes (u = 2, 2, 4), so
c <= n - u + 1, and what it holds per byte of the frame, ``(X + w(n - u + 1)) / (n +
1)``, is w plus a term that falls as n grows: it is most for a string of that one
character, 25/3, 27/3 (U+0100..U+07FF in MessagePack) and 31/5, and tends to w <= 4.
In JSON read as a str (a text frame: its length counts characters), a character costs
at least one and a string at least three more, so at most 31/4; an escape (``\\u00e9``,
6 characters; a surrogate pair, 12) costs more of the frame for the same character.
MessagePack ``bin`` and ``ext`` decode to no str (a timestamp to a datetime; bytes and
extensions in a free-form value are refused). So the strings of any frame hold at most
``WIDEST_PER_BYTE`` (9) times its bytes, however many tiny strings it holds. Their
headers (``getsizeof("")``, 49 bytes each) and the decoded structs, dicts and lists
are not in that count: they are what ``FREE_VALUE_BYTES`` per free-form value (and per
``batch`` item) pays for, and, for the few fixed fields of a frame, what the count
bound of a session's queue (``--inbox-limit``) bounds.

Does the bound hold a client back? A frame of at most ``SMALL_FRAME_BYTES`` (224) is
weighed 9 times its bytes, at most 2,016 bytes, without a walk; a larger one is walked
as before. With the defaults, a session's queue holds 4,096 requests and 8 MiB (2,048
bytes a request): 4,096 small frames weigh at most 8,257,536 bytes, so the count is what
binds first for them, as it was. Decoded, such a frame takes more than its bytes anyway
(tracemalloc: a 54-byte MessagePack token 165 bytes, a 55-byte CJK one 187, the
queue's command aside): the bound weighs the first 486, where its bytes said 54. A
session's queue fills only while the store stalls; then 4,096 small frames weigh 2.0
to 7.9 MiB where their bytes said 0.2 to 0.9 MiB, and the memory budget (256 MiB by
default) is reached with 32 to 128 such full queues instead of 290 to 1,210: rings keep
nothing and backed-up connections close, as they would at any budget reached.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Final

import msgspec

# Free-form values (``Any`` fields: custom ``data``, tool ``arguments``, message
# ``metadata``) must be plain JSON values that both codecs carry alike: no integer
# beyond what MessagePack holds, no NaN or infinity, no bytes, extension types or
# timestamps (MessagePack), no object keys but strings. They are also refused past
# MAX_NESTING levels, so that re-encoding them deep inside the server cannot hit
# Python's recursion limit, and past MAX_FREE_VALUES values in one frame (each object,
# array and scalar, members and elements alike): a frame's bytes do not bound what its
# values take once decoded (a million empty objects fit in 1 MiB of MessagePack and
# take 72 MiB as Python objects), nor the time to check them. Decoded, a value takes
# up to FREE_VALUE_BYTES besides its string's bytes, so a request weighs that much
# more per value in every byte bound of what is decoded (Codec.decode_request).
MAX_NESTING: Final = 100
MAX_FREE_VALUES: Final = 16_384
FREE_VALUE_BYTES: Final = 128
UNCOUNTED: Final = 1 << 62  # a walk's room when only the values' kinds matter
_TOO_MANY: Final = f"more than {MAX_FREE_VALUES} free-form values in one frame"
_FREE_INT_MIN: Final = -(2**63)
_FREE_INT_MAX: Final = 2**64 - 1
_EMPTY_STR: Final = sys.getsizeof("")  # a str's header: its characters hold the rest
# The most the strings of a frame hold decoded per byte of the frame (the module's
# docstring): a string of one character of each width, over what it costs in the frame
# at least (its UTF-8 and a header byte), rounded up; 9 with CPython 3.11 and 3.12.
WIDEST_PER_BYTE: Final = max(
    -(-(sys.getsizeof(one) - _EMPTY_STR) // (len(one.encode()) + 1))
    for one in ("\xe9", "\u0100", "\U0001f600")
)
# Frames of at most this many bytes are weighed WIDEST_PER_BYTE times their bytes,
# without a walk: 224 * 9 * --inbox-limit (4,096) stays within --inbox-bytes (8 MiB),
# so at the defaults a session's queue of small frames is bound by its count first.
SMALL_FRAME_BYTES: Final = 224


def free_form_problem(value: Any) -> str | None:
    """Why ``value`` is not a portable JSON value, or ``None`` when it is."""
    return walk_free_form(value, UNCOUNTED)[1]


def walk_free_form(value: Any, room: int = MAX_FREE_VALUES) -> tuple[int, str | None]:
    """How many values ``value`` holds (itself, and each element and member within it,
    however deep), and why it is not a portable JSON value (``None`` when it is). The
    walk stops, with a reason, once it has counted more than ``room``."""
    count = 1
    if count > room:  # a scalar counts too: 95k tool calls without arguments are 95k
        return count, _TOO_MANY
    kind = type(value)
    if kind is not list and kind is not dict:
        return count, _scalar_problem(value)
    if not value:  # a message's metadata, most often: {} holds itself alone
        return count, None
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        kind = type(item)
        if depth >= MAX_NESTING:
            return count, f"value nested deeper than {MAX_NESTING} levels"
        if kind is dict:
            for key in item:
                if type(key) is not str:
                    return count, "object key that is not a string"
            item = item.values()
        count += len(item)
        if count > room:
            return count, _TOO_MANY
        for child in item:
            kind = type(child)
            if kind is list or kind is dict:
                stack.append((child, depth + 1))
            elif child is None or kind is str or kind is bool:
                continue
            elif (problem := _scalar_problem(child)) is not None:
                return count, problem
    return count, None


def held_by_strings(value: Any) -> int:
    """What the characters of the strings within ``value`` hold decoded (a message, a
    frame, any value: the strings of its fields, however deep, and the keys and values
    of its dictionaries), besides what an empty str holds. A str is as wide as its
    widest character, 1, 2 or 4 bytes each: one emoji made a content of 900,000 ASCII
    characters hold 3.6 MB for its 0.9 MB of JSON, so a weight of its bytes alone
    undercounted it 4 times (r381: a cache; r385: the requests a session queues). Plain
    ASCII holds no more than its JSON's bytes, which spell each character and more."""
    held = 0
    values: list[Any] = [value]
    while values:
        value = values.pop()
        kind = type(value)
        if kind is str:
            held += sys.getsizeof(value) - _EMPTY_STR
        elif kind is dict:
            held += sum(map(sys.getsizeof, value)) - len(value) * _EMPTY_STR
            values.extend(value.values())
        elif kind is list:
            values.extend(value)
        elif isinstance(value, msgspec.Struct):
            values.extend(msgspec.structs.astuple(value))
    return held


def held_at_most(data: bytes | str, value: Any) -> int:
    """Never less than ``data``'s bytes (characters, for a str) nor than
    ``held_by_strings(value)``, ``value`` being decoded from ``data`` (JSON or
    MessagePack): plain ASCII JSON without a ``\\u`` escape holds no more than its
    bytes; a frame of at most ``SMALL_FRAME_BYTES`` is bound by ``WIDEST_PER_BYTE`` times
    its bytes (the module's docstring proves it); a larger one is walked."""
    size = len(data)
    # Told at C speed: a str's isascii at once, a backslash as memchr finds it (~40 ns
    # a KiB), the two characters of an escape only where one is. MessagePack is never
    # plain ASCII: its first byte, a map's header, is above 0x7f.
    if data.isascii():
        if isinstance(data, str):
            if "\\" not in data or "\\u" not in data:
                return size
        elif b"\\" not in data or b"\\u" not in data:
            return size
    if size <= SMALL_FRAME_BYTES:
        return WIDEST_PER_BYTE * size
    return max(size, held_by_strings(value))


def _scalar_problem(value: Any) -> str | None:
    kind = type(value)
    if value is None or kind is str or kind is bool:
        return None
    if kind is int:
        in_range = _FREE_INT_MIN <= value <= _FREE_INT_MAX
        return None if in_range else "integer outside the 64-bit range"
    if kind is float:
        return None if math.isfinite(value) else "NaN or infinite number"
    return f"{kind.__name__} value, not JSON"

"""Free-form values: what a published event or message carries in its ``Any`` fields
(custom ``data``, tool ``arguments``, message ``metadata``), checked as every codec
carries it, and counted, since a frame's bytes do not bound what its values take once
decoded."""

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

"""Times peers send with a finer fraction of a second than a ``datetime`` holds: read by
truncation to the microsecond, never rounded.

RFC 3339 bounds no fraction (``23:59:59.9999999Z``, as .NET and Java write a time to
the 100 ns, Go to the nanosecond), and a MessagePack timestamp carries nanoseconds.
msgspec rounds them to the nearest microsecond: ``2024-12-31T23:59:59.9999995Z`` was
read as ``2025-01-01T00:00:00Z``, another second, day and year than the one written
(out of order with the times around it, as a leap second read as the next second would
be: leap_seconds.py), and ``9999-12-31T23:59:59.9999995Z`` was refused as out of range.
Truncated, a time stays in the second it names: ``23:59:59.999999Z``.

:func:`truncated` and :func:`truncated_timestamp` read one time; :class:`FractionCheck`
tells, cheaply, whether a decoded publish's message times may have been rounded, so
that only then is the frame read again with each time truncated (leap_seconds.py
``LeapSecondReader.read_again``). msgspec gives no hook into its reading of a time.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any, Final

import msgspec

# A time of more than 6 fractional digits, as msgspec reads one: the part kept, then the
# offset (``Z``, ``z`` or ``±hh:mm``; none, refused later where an offset is required).
_LONG_FRACTION: Final = re.compile(
    r"(\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d\.\d{6})\d+([Zz]|[+-]\d\d:\d\d)?", re.ASCII
)
# In a time's encoded bytes: 7 fractional digits (JSON, MessagePack strings), or, in
# JSON, an escape, which may stand for any of its characters.
_SEVEN_DIGITS: Final = re.compile(rb"\.[0-9]{7}")
# MessagePack's timestamp extension (type -1) with nanoseconds: timestamp 64 (fixext 8)
# and timestamp 96 (ext 8 of 12 bytes); timestamp 32 has whole seconds only.
_TIMESTAMP_64: Final = b"\xd7\xff"
_TIMESTAMP_96: Final = b"\xc7\x0c\xff"
_SECONDS_64: Final = (1 << 34) - 1
_NANOS: Final = 1_000_000_000


def truncated(text: str) -> str | None:
    """``text``, an RFC 3339 time of more than 6 fractional digits, with its fraction cut
    to the microsecond; None for any other text (read as msgspec reads it)."""
    match = _LONG_FRACTION.fullmatch(text)
    if match is None:
        return None
    return match[1] + (match[2] or "")


def truncated_timestamp(ext: msgspec.msgpack.Ext) -> msgspec.msgpack.Ext | None:
    """``ext``, a MessagePack timestamp whose nanoseconds are not whole microseconds,
    with them cut to the microsecond; None for any other extension, or a timestamp
    msgspec refuses (nanoseconds of a second or more), which it is left to refuse."""
    data = bytes(ext.data)
    if ext.code != -1 or len(data) not in (8, 12):
        return None
    if len(data) == 8:
        packed = int.from_bytes(data, "big")
        nanos = packed >> 34
    else:
        nanos = int.from_bytes(data[:4], "big")
    cut = nanos % 1000
    if not cut or nanos >= _NANOS:
        return None
    if len(data) == 8:
        packed = (nanos - cut) << 34 | packed & _SECONDS_64
        return msgspec.msgpack.Ext(-1, packed.to_bytes(8, "big"))
    return msgspec.msgpack.Ext(-1, (nanos - cut).to_bytes(4, "big") + data[4:])


def _may_be_rounded(encoded: bytes, json: bool) -> bool:
    """Whether a time encoded as ``encoded`` may be one msgspec rounds."""
    if _SEVEN_DIGITS.search(encoded):
        return True
    if json:
        return b"\\" in encoded
    if encoded.startswith(_TIMESTAMP_64) and len(encoded) == 10:
        nanos = int.from_bytes(encoded[2:6], "big") >> 2
    elif encoded.startswith(_TIMESTAMP_96) and len(encoded) == 15:
        nanos = int.from_bytes(encoded[3:7], "big")
    else:
        return False
    return nanos % 1000 != 0


class _TimeOnly(msgspec.Struct):
    created_at: msgspec.Raw = msgspec.Raw()


class _EventTimes(msgspec.Struct):
    message: _TimeOnly | None = None


class _ItemTimes(msgspec.Struct):
    event: _EventTimes | None = None
    message: _TimeOnly | None = None


class _FrameTimes(msgspec.Struct):
    """Where a publish holds a message's time: a ``message`` frame's message, an event
    of type ``message``, a batch's items. Read whatever the frame's ``type``: a field
    another type ignores is looked at too, which costs only a needless read again."""

    event: _EventTimes | None = None
    message: _TimeOnly | None = None
    items: list[_ItemTimes] | None = None


def _times(frame: _FrameTimes) -> Iterator[msgspec.Raw]:
    holders: list[_EventTimes | _ItemTimes | _FrameTimes] = [frame]
    if frame.event is not None:
        holders.append(frame.event)
    for item in frame.items or ():
        holders.append(item)
        if item.event is not None:
            holders.append(item.event)
    for holder in holders:
        if holder.message is not None:
            yield holder.message.created_at


class FractionCheck:
    """Whether a decoded publish's message times may have been rounded, for one codec:
    the frame read again for its times alone (unknown fields and every other value
    skipped unread: a MessagePack frame's strings by their length, a JSON frame's
    scanned), each time's bytes looked at. Run only on a publish that holds a message
    with a time (codec.py), so a streamed token costs nothing more."""

    def __init__(self, make_decoder: Callable[[Any], Any], json: bool) -> None:
        self._json = json
        self._frame_times = make_decoder(_FrameTimes)

    def rounded(self, raw: bytes | str) -> bool:
        """Whether a message's time in ``raw`` (a frame the typed decoder read) may
        have been rounded: a fraction past the microsecond, or, in JSON, an escape in
        it. A frame of a shape this reading refuses (a ``message`` that is no object
        where an event's type ignores it) is read again too: the reading again decides."""
        try:
            frame = self._frame_times.decode(raw)
        except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
            return True
        return any(_may_be_rounded(bytes(time), self._json) for time in _times(frame))

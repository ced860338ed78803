"""Leap seconds in the times peers send: how ``23:59:60`` is read.

RFC 3339 (5.6, 5.7) allows a time's second to be ``60`` where a leap second is
inserted: at the end of a month, in the last minute of the UTC day (``23:59:60Z``, or
``15:59:60-08:00``, the same instant elsewhere). No ``datetime`` holds it, nor does
msgspec read it, so such a time is read as the last instant its type holds before the
leap second ends: ``23:59:59.999999``, any fraction of the leap second dropped. Not
the next second (``00:00:00``), which a time that follows may name too, on another
day, month or year: the last instant keeps the time on the day it was written for and
in order with the times around it (after every other time of its minute, before the
next minute).

A ``:60`` anywhere else (``12:34:60Z``, or ``23:59:60Z`` on a day that ends no month)
names no time, and is refused as any invalid time is.
"""

from __future__ import annotations

import calendar
import re
from datetime import UTC, datetime
from typing import Any, Final

import msgspec

# How msgspec begins its refusal of a time it cannot read.
INVALID_TIME: Final = "Invalid RFC3339 encoded datetime"
_LEAP_SECOND: Final = re.compile(
    r"(\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d):60(?:\.\d+)?([Zz]|[+-]\d\d:\d\d)?", re.ASCII
)


def leap_second_read(text: str) -> str | None:
    """``text``, an RFC 3339 time in a leap second, as the time it is read as (see the
    module's docstring); None when ``text`` is not one. A time without an offset is
    taken as UTC here (whoever reads it decides whether it may lack one)."""
    match = _LEAP_SECOND.fullmatch(text)
    if match is None:
        return None
    last = f"{match[1]}:59.999999{match[2] or ''}"
    try:
        instant = msgspec.convert(last, datetime)
        utc = instant.astimezone(UTC) if instant.utcoffset() else instant
    except (msgspec.ValidationError, OverflowError):  # no date, or beyond year 9999 in UTC
        return None
    month_ends = utc.day == calendar.monthrange(utc.year, utc.month)[1]
    return last if month_ends and (utc.hour, utc.minute) == (23, 59) else None


def read_leap_seconds(frame: Any) -> bool:
    """Put in place, in a client frame decoded as plain objects, the time each leap
    second of a message's ``created_at`` is read as; whether there was one. Only where
    a message's time stands (a ``message`` frame's, an ``event`` of type ``message``,
    and those of a batch's items): a free-form value is stored as it was sent."""
    found = False
    for message in _messages(frame):
        sent = message.get("created_at")
        if isinstance(sent, str) and (read := leap_second_read(sent)) is not None:
            message["created_at"] = read
            found = True
    return found


def _messages(frame: Any) -> list[dict[Any, Any]]:
    """The objects of a client frame that stand where a Message does (items of another
    shape than a frame's are left out: decoding the frame refuses them)."""
    if not isinstance(frame, dict):
        return []
    holders = [frame]
    items = frame.get("items")
    if frame.get("type") == "batch" and isinstance(items, list):
        holders.extend(item for item in items if isinstance(item, dict))
    messages = []
    for holder in holders:
        event = holder.get("event")
        for place in (holder, event if isinstance(event, dict) else {}):
            if isinstance(message := place.get("message"), dict):
                messages.append(message)
    return messages

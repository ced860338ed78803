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
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Union, get_args

import msgspec

from .events import AnyAgentEvent
from .frames import MAX_BATCH_ITEMS, ClientFrame, PublishBatch, PublishEvent

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


def _tags_only(union: Any, fields: dict[type, list[tuple[str, Any]]]) -> Any:
    """A union of Structs with the tags of ``union``'s, each with only the ``fields``
    given for its type: decoded, it reads nothing but the tags (and ``type`` named
    twice), as the typed decoder reads them."""
    variants = []
    for variant in get_args(union):
        config = variant.__struct_config__
        own = fields.get(variant, [])
        variants.append(msgspec.defstruct(variant.__name__, own, tag=config.tag, tag_field="type"))
    return Union[tuple(variants)]  # noqa: UP007 (a union built at run time)


_EVENT_TAGS: Final = _tags_only(AnyAgentEvent, {})
_ITEM_TAGS: Final[Any] = msgspec.defstruct("BatchItem", [("event", _EVENT_TAGS | None, None)])
# The tags of a client frame and of the AgentEvents in it, where leap seconds are read.
FRAME_TAGS: Final = _tags_only(
    ClientFrame,
    {
        PublishEvent: [("event", _EVENT_TAGS)],
        # Bounded as the frame's own are: this pass builds no more than the typed
        # decoder would (which has already refused a longer one, to get here).
        PublishBatch: [
            ("items", Annotated[list[_ITEM_TAGS], msgspec.Meta(max_length=MAX_BATCH_ITEMS)])
        ],
    },
)


def _may_hold_leap_second(raw: bytes | str) -> bool:
    """Whether ``raw`` may hold a leap second: ``:60``, or, in JSON, a ``\\u`` escape
    of one of those characters. A frame refused for a time that is none is then
    refused at once: looking at each item of a batch of 10,000 messages took 20 ms,
    against 1.7 ms for the typed decode that stopped at the first."""
    if isinstance(raw, str):
        return ":60" in raw or "\\u" in raw
    return b":60" in raw or b"\\u" in raw


class LeapSecondReader:
    """Reads, in a client frame of one codec's encoding, each message's ``created_at``
    that is a leap second, as :func:`leap_second_read` says (a ``message`` frame's, an
    ``event`` of type ``message``, and those of a batch's items; free-form values are
    stored as they were sent).

    Only the objects that lead to those times are decoded, their members kept as the
    bytes they were sent as (``msgspec.Raw``); the frame, encoded again with each time
    read, is then decoded by the codec's own decoder, and checked as any frame is. Not
    decoded as plain objects and converted: that built every value of the frame, its
    unknown fields too, which the typed decoder skips (a MessagePack frame of 1 MiB,
    a million empty lists in an unknown field, took 6 ms to decode without a leap
    second and 1,060 ms with one, charged as the same bytes; now 18 ms).
    """

    def __init__(self, make_decoder: Callable[[Any], Any], encode: Callable[[Any], bytes]) -> None:
        self._frame = make_decoder(ClientFrame)
        self._tags = make_decoder(FRAME_TAGS)
        self._fields = make_decoder(dict[str, msgspec.Raw])
        self._items = make_decoder(
            Annotated[list[msgspec.Raw], msgspec.Meta(max_length=MAX_BATCH_ITEMS)]
        )
        self._text = make_decoder(str)
        self._encode = encode

    def decode(self, raw: bytes | str, refused: msgspec.ValidationError) -> Any:
        """The client frame ``raw`` holds, each leap second of a message's time read;
        ``refused``, the typed decoder's refusal of ``raw`` for an invalid time, raised
        again when it holds none. Raises msgspec's errors as the typed decoder would.

        A member named twice is read as its last occurrence, as the typed decoder
        reads it; but the frame encoded again holds the last only, so ``raw`` is
        decoded once more for what the typed decoder refuses of the others: a ``type``
        named twice with two values (the frame's, or an AgentEvent's), or an earlier
        ``event`` or ``items`` of the wrong shape."""
        if not _may_hold_leap_second(raw):
            raise refused
        read = self.read(raw)
        if read is None:
            raise refused
        frame = self._frame.decode(read)
        self._tags.decode(raw)
        return frame

    def read(self, raw: bytes | str) -> bytes | None:
        """``raw`` encoded again with each leap second of a message's time read; None
        when it holds none. A frame malformed to its end raises msgspec's DecodeError."""
        frame = self._fields_of(raw)
        if frame is None:
            return None
        found = self._read_in(frame)
        items = self._items_of(frame) if self._text_of(frame.get("type")) == "batch" else []
        items_read = False
        for index, item in enumerate(items):
            fields = self._fields_of(item)
            if fields is not None and self._read_in(fields):
                items[index] = msgspec.Raw(self._encode(fields))
                items_read = True
        if items_read:
            frame["items"] = msgspec.Raw(self._encode(items))
        return self._encode(frame) if found or items_read else None

    def _read_in(self, holder: dict[str, msgspec.Raw]) -> bool:
        """Read the leap second of the message ``holder`` holds, or of the message of
        its ``event`` of type ``message``, in place; whether there was one."""
        found = self._read_message(holder, "message")
        event = self._fields_of(holder.get("event"))
        if event is None or self._text_of(event.get("type")) != "message":
            return found
        if self._read_message(event, "message"):
            holder["event"] = msgspec.Raw(self._encode(event))
            found = True
        return found

    def _read_message(self, holder: dict[str, msgspec.Raw], name: str) -> bool:
        message = self._fields_of(holder.get(name))
        sent = self._text_of(message.get("created_at")) if message is not None else None
        read = leap_second_read(sent) if sent is not None else None
        if message is None or read is None:
            return False
        message["created_at"] = msgspec.Raw(self._encode(read))
        holder[name] = msgspec.Raw(self._encode(message))
        return True

    def _fields_of(self, raw: msgspec.Raw | bytes | str | None) -> dict[str, msgspec.Raw] | None:
        """The members of the object ``raw`` holds, None when it holds another value
        (the frame's own decoding says what is wrong with it)."""
        fields: dict[str, msgspec.Raw] | None = self._decoded(self._fields, raw)
        return fields

    def _items_of(self, frame: dict[str, msgspec.Raw]) -> list[msgspec.Raw]:
        items: list[msgspec.Raw] | None = self._decoded(self._items, frame.get("items"))
        return items or []

    def _text_of(self, raw: msgspec.Raw | None) -> str | None:
        text: str | None = self._decoded(self._text, raw)
        return text

    @staticmethod
    def _decoded(decoder: Any, raw: msgspec.Raw | bytes | str | None) -> Any:
        if raw is None:
            return None
        try:
            return decoder.decode(raw)
        except msgspec.ValidationError:
            return None

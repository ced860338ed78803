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

from .events import AnyAgentEvent, MessageEvent
from .frames import (
    MAX_BATCH_ITEMS,
    BatchItem,
    ClientFrame,
    PublishBatch,
    PublishEvent,
    PublishMessage,
)
from .messages import AwareDatetime, Message

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


def _rebuilt(cls: Any, types: dict[str, Any], namespace: dict[str, Any] | None = None) -> Any:
    """A Struct of ``cls``'s fields, names, defaults and tag, some of the ``types``
    given (by field): decoded, it refuses what ``cls`` refuses of those others."""
    fields = []
    for field in msgspec.structs.fields(cls):
        if field.default is not msgspec.NODEFAULT:
            default = msgspec.field(default=field.default, name=field.encode_name)
        elif field.default_factory is not msgspec.NODEFAULT:
            default = msgspec.field(default_factory=field.default_factory, name=field.encode_name)
        else:
            default = msgspec.field(name=field.encode_name)
        fields.append((field.name, types.get(field.name, field.type), default))
    config = cls.__struct_config__
    return msgspec.defstruct(
        cls.__name__, fields, tag=config.tag, tag_field=config.tag_field, namespace=namespace
    )


def _with(union: Any, replaced: dict[Any, Any]) -> Any:
    return Union[tuple(replaced.get(variant, variant) for variant in get_args(union))]  # noqa: UP007 (built at run time)


def every_occurrence(check_time: Callable[[msgspec.Raw], None]) -> Any:
    """A client frame's type that reads a message's ``created_at`` as its bytes, given
    to ``check_time`` in every occurrence: decoded, it refuses what the typed decoder
    refuses of any occurrence of any member (an earlier one, that a later one replaces,
    included), but a leap second, as ``check_time`` reads it."""

    def check(message: Any) -> None:
        if message.created_at is not None:
            check_time(message.created_at)

    message = _rebuilt(Message, {"created_at": msgspec.Raw}, {"__post_init__": check})
    event = _rebuilt(MessageEvent, {"message": message})
    events = _with(AnyAgentEvent, {MessageEvent: event})
    item = _rebuilt(BatchItem, {"event": events | None, "message": message | None})
    items = Annotated[list[item], msgspec.Meta(max_length=MAX_BATCH_ITEMS)]  # type: ignore[valid-type]
    replaced = {
        PublishEvent: _rebuilt(PublishEvent, {"event": events}),
        PublishMessage: _rebuilt(PublishMessage, {"message": message}),
        PublishBatch: _rebuilt(PublishBatch, {"items": items}),
    }
    return _with(ClientFrame, replaced)


# Begins the reason every_occurrence's check of a time gives, which msgspec ends with
# the path of the message, not of its time.
_TIME_REFUSED: Final = "created_at: "


def _time_named(refusal: msgspec.ValidationError) -> msgspec.ValidationError:
    """``refusal`` as the typed decoder words it: a time's own path."""
    reason = str(refusal)
    if not reason.startswith(_TIME_REFUSED) or not reason.endswith("`"):
        return refusal
    return msgspec.ValidationError(f"{reason.removeprefix(_TIME_REFUSED)[:-1]}.created_at`")


def _may_hold_leap_second(raw: bytes | str, json: bool) -> bool:
    """Whether ``raw`` may hold a leap second: ``:60``, or, in JSON, a ``\\u`` escape
    of one of those characters (a MessagePack string has no escapes). A frame refused
    for a time that is none is then refused at once: looking at each item of a batch
    of 10,000 messages took 20 ms, against 1.7 ms for the typed decode that stopped at
    the first."""
    if isinstance(raw, str):
        return ":60" in raw or (json and "\\u" in raw)
    return b":60" in raw or (json and b"\\u" in raw)


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

    def __init__(
        self, make_decoder: Callable[[Any], Any], encode: Callable[[Any], bytes], json: bool
    ) -> None:
        self._json = json
        self._frame = make_decoder(ClientFrame)
        self._every_occurrence = make_decoder(every_occurrence(self._check_time))
        self._time = make_decoder(AwareDatetime | None)
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
        reads it; but the frame encoded again holds the last only, so ``raw`` is first
        decoded as :func:`every_occurrence` reads it, which checks every occurrence
        of every member as the typed decoder does. A leap second in an occurrence
        that a later one replaces is checked as a time, not read: a frame with no
        other is refused as ``refused`` says."""
        if not _may_hold_leap_second(raw, self._json):
            raise refused
        try:
            self._every_occurrence.decode(raw)
        except msgspec.ValidationError as exc:
            raise _time_named(exc) from None
        read = self.read(raw)
        if read is None:
            raise refused
        return self._frame.decode(read)

    def _check_time(self, sent: msgspec.Raw) -> None:
        """Refuse ``sent``, a message's ``created_at`` as its bytes, as the typed
        decoder refuses a time, unless it is a leap second (:func:`leap_second_read`)."""
        text = self._text_of(sent)
        if text is None or leap_second_read(text) is None:
            try:
                self._time.decode(sent)
            except msgspec.ValidationError as exc:  # msgspec names the message's path
                raise ValueError(f"{_TIME_REFUSED}{exc}") from None

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

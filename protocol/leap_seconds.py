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

The same reading again serves a time of more fractional digits than a microsecond,
which msgspec rounds and which is truncated instead (time_fractions.py).
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
from .time_fractions import truncated, truncated_timestamp

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


def time_read(text: str) -> str | None:
    """``text``, an RFC 3339 time, as the server reads it where msgspec would misread
    it: a leap second (:func:`leap_second_read`), or a fraction past the microsecond
    truncated (time_fractions.py); None when msgspec reads it as it is."""
    return leap_second_read(text) or truncated(text)


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


def every_occurrence(read_time: Callable[[msgspec.Raw], msgspec.Raw]) -> Any:
    """A client frame's type that reads a message's ``created_at`` as its bytes, given
    to ``read_time`` in every occurrence and replaced by what it returns: decoded, it
    refuses what the typed decoder refuses of any occurrence of any member (an earlier
    one, that a later one replaces, included), but a leap second, as ``read_time``
    reads it."""

    def check(message: Any) -> None:
        if message.created_at is not None:
            message.created_at = read_time(message.created_at)

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


# A fraction past the microsecond, or a MessagePack timestamp with nanoseconds, whose
# rounding may have taken a time past year 9999 (time_fractions.py).
_LONG_FRACTION: Final = re.compile(r"\.[0-9]{7}")
_LONG_FRACTION_BYTES: Final = re.compile(rb"\.[0-9]{7}|\xd7\xff|\xc7\x0c\xff")


def _may_hold_leap_second(raw: bytes | str, json: bool) -> bool:
    """Whether ``raw`` may hold a time refused only for how msgspec reads it: a leap
    second (``:60``), a fraction past the microsecond rounded out of range, or, in
    JSON, a ``\\u`` escape of one of those characters (a MessagePack string has no
    escapes). A frame refused for a time that is none is then refused at once: looking
    at each item of a batch of 10,000 messages took 20 ms, against 1.7 ms for the typed
    decode that stopped at the first."""
    if isinstance(raw, str):
        return ":60" in raw or (json and "\\u" in raw) or bool(_LONG_FRACTION.search(raw))
    return b":60" in raw or (json and b"\\u" in raw) or bool(_LONG_FRACTION_BYTES.search(raw))


class LeapSecondReader:
    """Reads, in a client frame of one codec's encoding, each message's ``created_at``
    that is a leap second, as :func:`leap_second_read` says, or has a fraction past the
    microsecond, truncated (:func:`time_read`; a ``message`` frame's, an ``event`` of
    type ``message``, and those of a batch's items; free-form values are stored as
    they were sent).

    The frame is decoded as :func:`every_occurrence` reads it, which checks every
    occurrence of every member as the typed decoder does and keeps each time as its
    bytes, a leap second's replaced by its reading; that, encoded again, is decoded by
    the codec's own decoder and checked as any frame is. Unknown fields are skipped,
    as the typed decoder skips them: decoded as plain objects, a MessagePack frame of
    1 MiB, a million empty lists in an unknown field, took 1,060 ms with a leap second
    (6 ms without). A frame at fault in two places may be refused for another of them
    than the typed decoder would name: a time is checked once its message is read.
    """

    def __init__(
        self, make_decoder: Callable[[Any], Any], encode: Callable[[Any], bytes], json: bool
    ) -> None:
        self._json = json
        self._frame = make_decoder(ClientFrame)
        self._every_occurrence = make_decoder(every_occurrence(self._time_read))
        self._time = make_decoder(AwareDatetime | None)
        self._text = make_decoder(str)
        # A MessagePack timestamp, whose nanoseconds are truncated (time_fractions.py).
        self._ext = None if json else make_decoder(msgspec.msgpack.Ext)
        self._encode = encode

    def decode(self, raw: bytes | str) -> Any:
        """The client frame ``raw`` holds, each leap second of a message's time read,
        when the typed decoder refused it for an invalid time; None when it cannot hold
        a leap second (the caller raises its refusal again, from its own ``except``: an
        error raised here, from a frame that holds it, would be a reference cycle
        holding ``raw`` until the cycle collector runs). Raises msgspec's errors as the
        typed decoder would. Of a member named twice, the last occurrence counts, as the
        typed decoder reads it, and every other is checked as it checks them."""
        if not _may_hold_leap_second(raw, self._json):
            return None
        return self.read_again(raw)

    def read_again(self, raw: bytes | str) -> Any:
        """The client frame ``raw`` holds, each message's time read as the server reads
        it (:func:`time_read`): :meth:`decode` for a frame the typed decoder read, but
        whose times it may have rounded (time_fractions.py ``FractionCheck``)."""
        try:
            read = self._every_occurrence.decode(raw)
        except msgspec.ValidationError as exc:
            raise _time_named(exc) from None
        encoded = self._encode(read)
        del read  # not held while decoded again: a 761 KB batch peaked at 9.1 MB, now 6.0
        return self._frame.decode(encoded)

    def _time_read(self, sent: msgspec.Raw) -> msgspec.Raw:
        """``sent``, a message's ``created_at`` as its bytes, or its reading when it is
        a leap second or has a fraction past the microsecond (:func:`time_read`, and a
        MessagePack timestamp's nanoseconds truncated); refused as the typed decoder
        refuses a time when it is none of those."""
        try:
            text: str | None = self._text.decode(sent)
        except msgspec.ValidationError:
            text = None
        read = time_read(text) if text is not None else None
        if read is not None:
            return msgspec.Raw(self._encode(read))
        if text is None and self._ext is not None:
            try:
                timestamp = truncated_timestamp(self._ext.decode(sent))
            except msgspec.ValidationError:
                timestamp = None
            if timestamp is not None:
                return msgspec.Raw(self._encode(timestamp))
        try:
            self._time.decode(sent)
        except msgspec.ValidationError as exc:  # msgspec names the message's path
            raise ValueError(f"{_TIME_REFUSED}{exc}") from None
        return sent

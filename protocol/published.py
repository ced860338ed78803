"""What a published event or message is checked for once decoded, before it is
appended: its free-form values (carried by every codec, at most ``MAX_FREE_VALUES`` in a
frame), a batch's items, and a message's time brought to UTC. Pure data, no I/O: the
codec (codec.py) runs it on every publish it decodes, the client (client/outgoing.py)
on its caller's objects before they are sent."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

from .errors import ErrorCode, ProtocolError
from .frames import PublishBatch, PublishEvent, PublishMessage, RequestId
from .free_form import MAX_FREE_VALUES, UNCOUNTED, walk_free_form
from .models import (
    AnyAgentEvent,
    Complete,
    Custom,
    ErrorEvent,
    Message,
    MessageEvent,
    StateChange,
    Thinking,
    Token,
    ToolError,
    ToolStart,
)


def free_form_fields(event: AnyAgentEvent | None, message: Message | None) -> list[Any]:
    """The values of ``Any`` fields in a published event or message."""
    if message is not None:
        if not message.tool_calls:
            return [message.metadata]
        return [message.metadata, *(call.arguments for call in message.tool_calls)]
    if isinstance(event, Custom):
        return [event.data]
    if isinstance(event, ToolStart):
        return [event.arguments]
    return []


# Events with no free-form value and no message: nothing to check but the key.
_PLAIN_EVENTS: Final = (Token, Thinking, ToolError, Complete, ErrorEvent, StateChange)
# The same, for a lookup by exact type: what a decoder builds. A caller's subclass of
# one takes the longer way, to the same answer.
PLAIN_EVENT_TYPES: Final = frozenset(_PLAIN_EVENTS)
# The zero value of Go's time.Time (and .NET's DateTimeOffset), which Go's omitempty
# never leaves out: no message was created then, and a publisher's is read as none.
ZERO_TIME: Final = datetime(1, 1, 1, tzinfo=UTC)


def check_content(
    event: AnyAgentEvent | None,
    message: Message | None,
    request_id: RequestId,
    room: int = MAX_FREE_VALUES,
    *,
    to_utc: bool = False,
) -> int:
    """Refuse what not every peer could read in a published event or message (one of
    the two), or more than ``room`` free-form values. How many free-form values it
    holds. With ``to_utc``, a message's time is brought to UTC in place, for objects
    the caller owns (decoded from a frame, or a copy); without, it changes nothing:
    the client runs it on its caller's objects too, to keep a publish the server would
    refuse out of a batch."""
    if type(event) in PLAIN_EVENT_TYPES:
        return 0  # the common case (a streamed token): nothing else to look at
    if message is None and isinstance(event, MessageEvent):
        message = event.message
    count = 0
    for value in free_form_fields(event, message):
        values, problem = walk_free_form(value, room - count)
        if problem is not None:
            reason = f"value not carried by every codec: {problem}"
            if values > room - count:
                reason = problem
            raise ProtocolError(ErrorCode.BAD_REQUEST, reason, request_id)
        count += values
    if message is None or (created := message.created_at) is None:
        return count
    if to_utc and created == ZERO_TIME:
        message.created_at = None  # filled in by the server as an absent one (completed)
        return count
    if created.tzinfo is UTC:
        return count  # a time in UTC (as decoded from a "Z") is seen so without a call
    if created.utcoffset():
        try:  # times travel in UTC; the decoder has already refused naive ones
            utc = created.astimezone(UTC)
        except OverflowError:
            reason = "created_at out of range in UTC"
            raise ProtocolError(ErrorCode.BAD_REQUEST, reason, request_id) from None
        if to_utc:
            message.created_at = utc
    return count


def free_form_values(message: Message) -> int:
    """How many free-form values a message holds (what it weighs, decoded, beyond its
    bytes: ``FREE_VALUE_BYTES`` each)."""
    return sum(walk_free_form(value, UNCOUNTED)[0] for value in free_form_fields(None, message))


def check_published(frame: PublishEvent | PublishMessage) -> int:
    """Normalize what a publisher sent, or refuse what not every peer could read; how
    many free-form values it holds. The key is kept as sent: ``""`` is a key like any
    other (PROTOCOL.md); only ``null`` or no ``key`` is none."""
    if isinstance(frame, PublishEvent):
        return check_content(frame.event, None, frame.id, to_utc=True)
    return check_content(None, frame.message, frame.id, to_utc=True)


def check_batch(frame: PublishBatch) -> tuple[int, bool]:
    """:func:`check_published` for each item of a batch, whose reason names the item,
    the free-form values counted over the whole frame; and a batch holds at least one
    item, each with exactly one of event and message. (How many items at most is the
    server's limit, checked where it is known.) With the count, whether a message of
    the batch was sent with a time (looked at before it is brought to UTC)."""
    items = frame.items
    if not items:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "a batch holds at least one item", frame.id)
    values = 0
    timed = False
    # A loop of up to MAX_BATCH_ITEMS turns while the event loop waits: a streamed
    # token (the common item) is passed over without a call, and the item's name is
    # made only for a refusal.
    for index, item in enumerate(items):
        event, message = item.event, item.message
        if (event is None) == (message is None):
            reason = f"items[{index}]: an item holds exactly one of event and message"
            raise ProtocolError(ErrorCode.BAD_REQUEST, reason, frame.id)
        if type(event) in PLAIN_EVENT_TYPES:
            continue
        timed = timed or holds_time(event, message)
        try:
            values += check_content(event, message, frame.id, MAX_FREE_VALUES - values, to_utc=True)
        except ProtocolError as exc:
            reason = f"items[{index}]: {exc.message}"
            raise ProtocolError(exc.code, reason, frame.id) from None
    # Each item weighs as a value too: decoded and checked, it costs about what a
    # free-form value does (a batch of 10,000 tokens, 400 KB, took as long to refuse
    # as a frame of 16,000 values), and holds a struct of its own.
    return values + len(items), timed


def holds_time(event: AnyAgentEvent | None, message: Message | None) -> bool:
    """Whether the message published (``message``, or ``event``'s if it is of type
    ``message``) was sent with a time."""
    if message is None:
        if not isinstance(event, MessageEvent):
            return False
        message = event.message
    return message.created_at is not None

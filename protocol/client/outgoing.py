"""Outgoing publishes: each encoded once, when the caller publishes, then framed on its
own or, with others queued beside it, in one ``batch`` frame. No I/O.

A :class:`Publish` keeps its event's (or message's) encoding and its key for as long as
it is unanswered, so a resend after a reconnect is the same bytes under the same key,
in whatever frame it then goes. :func:`plan` groups a queue of requests, in order, into
what goes out as one frame: a run of publishes up to a count, a byte size and the
free-form values one frame may hold, and every other request alone. A publish the
server would refuse (a value not every codec carries, too many values, a key over 128
characters) is never batched, so it is refused alone, as it would be without batches,
and takes no other publish with it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC
from typing import Final

import msgspec

from ..codec import Codec, check_content
from ..errors import ProtocolError
from ..frames import PublishEvent, PublishMessage
from ..free_form import MAX_FREE_VALUES
from ..models import Message, MessageEvent
from .pending import PendingRequest

MAX_BATCH_ITEMS: Final = 100  # publishes in one batch frame, at most
# Bytes of encoded publishes in one batch frame, at most: well under any frame limit a
# server would set (1 MiB by default). A larger publish goes alone.
MAX_BATCH_BYTES: Final = 64 * 1024
_MAX_KEY: Final = 128  # characters, as the server checks
_ITEM_OVERHEAD: Final = 24  # an item's braces, field names and separators, about


class Publish:
    """An ``event`` or ``message`` request, its body encoded once for the connection's
    codec."""

    __slots__ = ("batchable", "body", "id", "is_message", "key", "size", "values")

    def __init__(self, codec: Codec, frame: PublishEvent | PublishMessage) -> None:
        assert frame.key is not None and isinstance(frame.id, int)
        self.id: int = frame.id
        self.key: str = frame.key
        self.is_message = isinstance(frame, PublishMessage)
        event = frame.event if isinstance(frame, PublishEvent) else None
        message = frame.message if isinstance(frame, PublishMessage) else None
        self.values = 0  # free-form values: a batch frame holds MAX_FREE_VALUES at most
        try:
            self.values = check_content(event, message, frame.id)
            self.batchable = len(self.key) <= _MAX_KEY
            # Times travel in UTC (PROTOCOL.md): a copy, the caller's own stays as it is.
            if message is not None:
                message = _in_utc(message)
            elif isinstance(event, MessageEvent):
                event = MessageEvent(_in_utc(event.message))
        except ProtocolError:
            self.batchable = False  # the server refuses it: alone, so only it
        self.body = codec.encode(message if message is not None else event)
        self.size = len(self.body) + len(self.key) + _ITEM_OVERHEAD


def _in_utc(message: Message) -> Message:
    """``message``, or a copy of it whose ``created_at`` is in UTC where it was not
    (check_content has made sure it converts)."""
    created = message.created_at
    if created is None or not created.utcoffset():
        return message
    return msgspec.structs.replace(message, created_at=created.astimezone(UTC))


class _EventFrame(msgspec.Struct, tag="event", tag_field="type"):
    event: msgspec.Raw
    id: int
    key: str


class _MessageFrame(msgspec.Struct, tag="message", tag_field="type"):
    message: msgspec.Raw
    id: int
    key: str


class _Item(msgspec.Struct, omit_defaults=True):
    event: msgspec.Raw | None = None
    message: msgspec.Raw | None = None
    key: str | None = None


class _BatchFrame(msgspec.Struct, tag="batch", tag_field="type"):
    id: int
    items: list[_Item]


def single_frame(codec: Codec, publish: Publish) -> bytes:
    """The ``event`` or ``message`` frame of one publish."""
    body = msgspec.Raw(publish.body)
    if publish.is_message:
        return codec.encode_envelope(_MessageFrame(body, publish.id, publish.key))
    return codec.encode_envelope(_EventFrame(body, publish.id, publish.key))


def batch_frame(codec: Codec, batch_id: int, publishes: Sequence[Publish]) -> bytes:
    """One ``batch`` frame of several publishes, in order; ``batch_id`` is its own id."""
    items = [
        _Item(message=msgspec.Raw(p.body), key=p.key)
        if p.is_message
        else _Item(event=msgspec.Raw(p.body), key=p.key)
        for p in publishes
    ]
    return codec.encode_envelope(_BatchFrame(batch_id, items))


def batch_bytes(server_limit: int) -> int:
    """The bytes a batch is kept to: ``MAX_BATCH_BYTES``, or half the server's frame
    limit when that is lower (the frame's envelope and escaping need room)."""
    return min(MAX_BATCH_BYTES, server_limit // 2) if server_limit else MAX_BATCH_BYTES


def plan(
    queue: Sequence[PendingRequest], max_items: int, max_bytes: int = MAX_BATCH_BYTES
) -> Iterator[list[PendingRequest]]:
    """``queue`` in order, in groups of one frame each: consecutive batchable publishes
    together, up to ``max_items`` (0 or 1: no batches), about ``max_bytes`` and
    ``MAX_FREE_VALUES`` free-form values (the server's bound per frame); every other
    request alone. A lone publish is a group of one, sent as its own frame."""
    group: list[PendingRequest] = []
    size = values = 0
    for pending in queue:
        frame = pending.frame
        if not (isinstance(frame, Publish) and frame.batchable and max_items > 1):
            if group:
                yield group
                group, size, values = [], 0, 0
            yield [pending]
            continue
        if group and (
            len(group) >= max_items
            or size + frame.size > max_bytes
            or values + frame.values > MAX_FREE_VALUES
        ):
            yield group
            group, size, values = [], 0, 0
        group.append(pending)
        size += frame.size
        values += frame.values
    if group:
        yield group

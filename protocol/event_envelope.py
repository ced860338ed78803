"""What a frame that carries one event adds around it, at most, in either codec:
:data:`EVENT_ENVELOPE_BYTES`, which the server keeps free of the frame limit when it
checks a publish's event (server/decode_charge.py), so that every frame of an event it
stored is within the limit a client is documented to read (docs/protocol.md,
MessagePack); and :func:`welcome_bytes`, the most a ``welcome`` of a session with a
given title, user id and ``extra`` can be, which a new session is held to, and an
attach to a stored one (server/quotas.py).

Derived here by encoding the frames themselves with the worst case of every field the
event does not hold, not counted by hand: a codec that writes a field longer moves it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final

import msgspec

from .codec import JSON, MSGPACK, Codec
from .events import MessageEvent
from .frames import (
    MAX_ID_LENGTH,
    EventFrame,
    EventRecord,
    Events,
    History,
    Pong,
    RequestId,
    Welcome,
)
from .messages import Message, Role, new_message_id
from .models import SessionMetadata, SessionState, new_epoch

# The longest of each field: a seq and a last_seq of 20 digits (the largest integer
# either codec writes, 9 bytes in MessagePack), a request id of the longest a request
# may carry (in JSON, 128 control characters, 6 bytes each: ``\u0001``; in MessagePack,
# 128 characters of 4 bytes of UTF-8; an integer, -2**63, is 20 and 9), a time of the
# longest form msgspec writes (microseconds and an offset, ``+23:59``, as a store may
# hand it back), and an epoch of a Redis store's (its own 16 characters, a dot and the
# store's token of 8).
LARGEST_SEQ: Final = 2**64 - 1
LONGEST_IDS: Final[tuple[RequestId, ...]] = (
    -(2**63),
    "\x01" * MAX_ID_LENGTH,
    "\U0010ffff" * MAX_ID_LENGTH,
)
LONGEST_TS: Final = datetime(9999, 12, 31, 23, 59, 59, 999_999, timezone(timedelta(minutes=1439)))
LONGEST_EPOCH: Final = new_epoch() + "." + "x" * 8

# The frames that carry an event, given a request id: ``event`` (live, and a resume's
# replay), a page of ``events`` of one (the page the event alone is too large to
# share), and for a message a page of ``history`` of one (which holds the message,
# without the event around it).
FRAMES_OF_EVENT: Final[list[Callable[[Any, RequestId], Any]]] = [
    lambda event, _: EventFrame(LARGEST_SEQ, LONGEST_TS, event),
    lambda event, request_id: Events(
        [EventRecord(LARGEST_SEQ, LONGEST_TS, event)], LARGEST_SEQ, request_id, LONGEST_EPOCH
    ),
]
_LEFT_OUT = Message(Role.USER, "")  # a message its peer sent without id and created_at
_FILLED_IN = Message(Role.USER, "", new_message_id(), LONGEST_TS.astimezone(UTC))


def longest_id(codec: Codec) -> RequestId:
    """The request id that is the longest in ``codec``, of those a request may carry."""
    return max(LONGEST_IDS, key=lambda request_id: len(codec.encode(Pong(request_id))))


def envelope_bytes(codec: Codec) -> int:
    """The most bytes a frame of ``codec`` adds to an event as its publish was checked:
    the largest envelope of the frames above, plus what the server fills in of a
    message (its ``id`` and ``created_at``); or a message's page of ``history``, less
    its event as checked."""
    request_id = longest_id(codec)
    event = len(codec.encode(msgspec.json.decode(b"{}")))
    around = max(
        len(codec.encode(frame(msgspec.Raw(b"{}"), request_id))) - event
        for frame in FRAMES_OF_EVENT
    )
    checked = len(codec.encode(MessageEvent(_LEFT_OUT)))
    filled = len(codec.encode(MessageEvent(_FILLED_IN))) - checked
    history = len(codec.encode(History([_FILLED_IN], has_more=False, id=request_id))) - checked
    return max(around + filled, history)


# JSON's, an event page's envelope with an id of 128 control characters and a
# message's id and time (MessagePack's is less).
EVENT_ENVELOPE_BYTES: Final = max(envelope_bytes(JSON), envelope_bytes(MSGPACK))


# A welcome with the longest of every field but the two a creating hello names: the
# longest session id and state, times, counts and epoch; a connection id ("c_" and 22).
_WELCOME: Final = Welcome(
    "c_" + "x" * 22,
    SessionMetadata(
        "x" * 128,
        state=SessionState.DISCONNECTED,
        created_at=LONGEST_TS,
        updated_at=LONGEST_TS,
        last_activity_at=LONGEST_TS,
        expires_at=LONGEST_TS,
        message_count=LARGEST_SEQ,
        last_seq=LARGEST_SEQ,
        epoch=LONGEST_EPOCH,
        connections=LARGEST_SEQ,
        ttl=LARGEST_SEQ,
        stored_bytes=LARGEST_SEQ,
    ),
    LONGEST_EPOCH,
    LARGEST_SEQ,
    resumed=False,
    replay=LARGEST_SEQ,
    extensions=["batch"],
    max_batch_items=LARGEST_SEQ,
    max_batch_bytes=LARGEST_SEQ,
)


def welcome_bytes(
    title: str | None, user_id: str | None, extra: dict[str, Any] | None = None
) -> int:
    """The most bytes a ``welcome`` of a session with ``title``, ``user_id`` and
    ``extra`` can be, in either codec."""
    fields = {"title": title, "user_id": user_id, "extra": extra or {}}
    session = msgspec.structs.replace(_WELCOME.session, **fields)
    welcome = msgspec.structs.replace(_WELCOME, session=session)
    return max(len(JSON.encode(welcome)), len(MSGPACK.encode(welcome)))

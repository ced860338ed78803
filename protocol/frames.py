"""Every frame of the wire protocol, as msgspec Structs in two tagged unions.

``ClientFrame`` is what a peer may send, ``ServerFrame`` what the server sends. Both
are tagged by ``type``; unknown fields are ignored, and a missing required field or a
wrong type fails decoding (a ``bad_request``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

from .models import AnyAgentEvent, Int64, Message, SessionMetadata

RequestId = Int64 | str | None
# PROTOCOL.md: a string of at most 128 characters. The codec reads an empty key as no key.
IdempotencyKey = Annotated[str, msgspec.Meta(max_length=128)]
NonNegative = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
Positive = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]


class ClientFrameBase(msgspec.Struct, tag_field="type", omit_defaults=True):
    pass


class Hello(ClientFrameBase, tag="hello"):
    token: str | None = None
    user_id: str | None = None
    title: str | None = None
    create: bool = False
    last_seq: NonNegative | None = None
    epoch: str | None = None
    role: Literal["client", "agent"] = "client"
    # Not in PROTOCOL.md's hello: read so that an error about a hello (a second one)
    # echoes it like any other request's.
    id: RequestId = None


class PublishEvent(ClientFrameBase, tag="event"):
    event: AnyAgentEvent
    id: RequestId = None
    key: IdempotencyKey | None = None


class PublishMessage(ClientFrameBase, tag="message"):
    message: Message
    id: RequestId = None
    key: IdempotencyKey | None = None


class HistoryRequest(ClientFrameBase, tag="history"):
    id: RequestId = None
    limit: Positive = 100
    before: NonNegative | None = None


class EventsRequest(ClientFrameBase, tag="events"):
    id: RequestId = None
    after_seq: NonNegative = 0
    limit: Positive = 1000


class StateRequest(ClientFrameBase, tag="state"):
    state: Literal["active", "idle", "closed"]
    id: RequestId = None


class Ping(ClientFrameBase, tag="ping"):
    id: RequestId = None


ClientFrame = (
    Hello | PublishEvent | PublishMessage | HistoryRequest | EventsRequest | StateRequest | Ping
)


class ServerFrameBase(msgspec.Struct, tag_field="type", omit_defaults=True):
    pass


class Welcome(ServerFrameBase, tag="welcome"):
    connection_id: str
    session: SessionMetadata
    epoch: str
    last_seq: int
    resumed: bool
    replay: int


class EventRecord(msgspec.Struct):
    """``{seq, ts, event}`` as it appears in ``events`` replies."""

    seq: int
    ts: datetime
    event: AnyAgentEvent | msgspec.Raw


class EventFrame(ServerFrameBase, tag="event"):
    seq: int
    ts: datetime
    event: AnyAgentEvent | msgspec.Raw


class Ack(ServerFrameBase, tag="ack"):
    seq: int
    id: RequestId = None
    duplicate: bool = False


class History(ServerFrameBase, tag="history"):
    messages: list[Message]
    has_more: bool
    id: RequestId = None


class Events(ServerFrameBase, tag="events"):
    events: list[EventRecord]
    last_seq: int
    id: RequestId = None


class Presence(ServerFrameBase, tag="presence"):
    role: str
    connections: int
    joined: str | None = None
    left: str | None = None


class Pong(ServerFrameBase, tag="pong"):
    id: RequestId = None


class Closed(ServerFrameBase, tag="closed"):
    reason: str


class Error(ServerFrameBase, tag="error"):
    code: str
    message: str
    id: RequestId = None


ServerFrame = Welcome | EventFrame | Ack | History | Events | Presence | Pong | Closed | Error

"""Every frame of the wire protocol, as msgspec Structs in two tagged unions.

``ClientFrame`` is what a peer may send, ``ServerFrame`` what the server sends. Both
are tagged by ``type``; unknown fields are ignored, and a missing required field or a
wrong type fails decoding (a ``bad_request``). ``null`` for an optional field of a
client frame is as if the field were left out (absent.py).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final, Literal

import msgspec

from .absent import NullMeansAbsent
from .models import AnyAgentEvent, Int64, Message, SessionMetadata

# A request's id: an integer of the signed 64-bit range, or a string of at most this many
# characters (docs/protocol.md, Frames: general rules). Every reply echoes it, so the
# room the longest takes is in every reply's envelope (event_envelope.py); a longer one
# is an invalid id: ``bad_request``, without it.
MAX_ID_LENGTH: Final = 128
RequestId = Int64 | Annotated[str, msgspec.Meta(max_length=MAX_ID_LENGTH)] | None
# PROTOCOL.md: a string of at most 128 characters; "" is a key like any other (null is none).
IdempotencyKey = Annotated[str, msgspec.Meta(max_length=128)]
NonNegative = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
Positive = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
# The page sizes a request that names none asks for (servers lower them to their maxima).
HISTORY_LIMIT: Final = 100
EVENTS_LIMIT: Final = 1000
# The most items a batch frame may hold on any server (its --max-batch-items is at most
# this). Bounded in the type, a msgpack array header over it is refused before one item
# is built: a 1 MiB frame of a million empty items had 64 MB decoded before the count
# was read.
MAX_BATCH_ITEMS: Final = 10_000


class ClientFrameBase(msgspec.Struct, tag_field="type", omit_defaults=True):
    pass


class Hello(ClientFrameBase, tag="hello"):
    token: str | None = None
    user_id: str | None = None
    title: str | None = None
    create: NullMeansAbsent[bool] = False
    last_seq: NonNegative | None = None
    epoch: str | None = None
    role: NullMeansAbsent[Literal["client", "agent"]] = "client"
    # Not in PROTOCOL.md's hello: read so that an error about a hello (a second one)
    # echoes it like any other request's.
    id: RequestId = None

    def __post_init__(self) -> None:
        sent: Any = self  # as decoded: the checker sees the fields as they are once this ran
        if sent.create is None:
            sent.create = False
        if sent.role is None:
            sent.role = "client"
        # An empty user id names nobody, as an empty token is none: clients that fill an
        # unset string with "" (Go without omitempty) would otherwise all be one user,
        # sharing its connection cap and quotas server-wide.
        if sent.user_id == "":
            sent.user_id = None


class PublishEvent(ClientFrameBase, tag="event"):
    event: AnyAgentEvent
    id: RequestId = None
    key: IdempotencyKey | None = None


class PublishMessage(ClientFrameBase, tag="message"):
    message: Message
    id: RequestId = None
    key: IdempotencyKey | None = None


class BatchItem(msgspec.Struct, omit_defaults=True):
    """One append of a ``batch`` frame: exactly one of ``event`` and ``message`` (the
    codec refuses an item with both or neither), and its idempotency key."""

    event: AnyAgentEvent | None = None
    message: Message | None = None
    key: IdempotencyKey | None = None


class PublishBatch(ClientFrameBase, tag="batch"):
    """Several appends in one frame, answered by one ``acks`` (docs/protocol.md,
    "Extension: batch publish")."""

    items: Annotated[list[BatchItem], msgspec.Meta(max_length=MAX_BATCH_ITEMS)]
    id: RequestId = None


class HistoryRequest(ClientFrameBase, tag="history"):
    id: RequestId = None
    limit: NullMeansAbsent[Positive] = HISTORY_LIMIT
    before: NonNegative | None = None

    def __post_init__(self) -> None:
        sent: Any = self  # as decoded: the checker sees the fields as they are once this ran
        if sent.limit is None:
            sent.limit = HISTORY_LIMIT


class EventsRequest(ClientFrameBase, tag="events"):
    id: RequestId = None
    after_seq: NullMeansAbsent[NonNegative] = 0
    limit: NullMeansAbsent[Positive] = EVENTS_LIMIT

    def __post_init__(self) -> None:
        sent: Any = self  # as decoded: the checker sees the fields as they are once this ran
        if sent.after_seq is None:
            sent.after_seq = 0
        if sent.limit is None:
            sent.limit = EVENTS_LIMIT


class StateRequest(ClientFrameBase, tag="state"):
    state: Literal["active", "idle", "closed"]
    id: RequestId = None


class Ping(ClientFrameBase, tag="ping"):
    id: RequestId = None
    # A connection's own liveness check (a browser can send no WebSocket Ping): answered
    # as any ping, but not the session's activity (docs/protocol.md, `ping`).
    # Any: only ``true`` means it; any other value is ignored, as an unknown field is.
    keepalive: Any = None


ClientFrame = (
    Hello
    | PublishEvent
    | PublishMessage
    | PublishBatch
    | HistoryRequest
    | EventsRequest
    | StateRequest
    | Ping
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
    # Extensions this server speaks (docs/protocol.md): "batch". Left out when none, as
    # a version 1 server does; a client reads a missing list as empty.
    extensions: list[str] = []
    max_batch_items: int = 0  # with "batch": the most items one batch frame may hold
    max_batch_bytes: int = 0  # with "batch": the most bytes one batch frame may be


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


class Acks(ServerFrameBase, tag="acks"):
    """The reply to a ``batch``: ``seqs[i]`` is item ``i``'s seq; ``duplicates`` lists,
    in increasing order, the indexes of the items that were duplicates (left out when
    none), whose seq is that of the first append with their key. Always shorter than
    its batch frame, so within the frame limit the batch was: an item's answer is 10
    bytes shorter than the smallest item at least (tests/test_batch_acks_frame_limit.py)."""

    seqs: list[int]
    id: RequestId = None
    duplicates: list[int] = []


class History(ServerFrameBase, tag="history"):
    messages: list[Message]
    has_more: bool
    id: RequestId = None


class Events(ServerFrameBase, tag="events"):
    events: list[EventRecord]
    last_seq: int
    id: RequestId = None
    # Beyond PROTOCOL.md's reply: the epoch of the log the page was read from.
    epoch: str | None = None


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


ServerFrame = (
    Welcome | EventFrame | Ack | Acks | History | Events | Presence | Pong | Closed | Error
)

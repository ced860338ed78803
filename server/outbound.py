"""Outbound frames: one server frame, framed for the wire at most once per codec, however
many connections it goes to; an event's frame embeds the event's JSON as stored (encoded
once, for the log line and every frame) and is what the replay rings keep.
"""

from __future__ import annotations

import sys
import weakref
from typing import Final, Protocol

import msgspec

from bamboo_session.protocol.codec import Codec
from bamboo_session.protocol.frames import EventFrame, ServerFrame
from bamboo_session.protocol.models import StoredEvent

from .flush import websocket_frame


class FrameKeeper(Protocol):
    """The replay ring (server/room.py), told of each frame made of an event it keeps."""

    def frame_kept(self, size: int) -> None: ...


class Outbound(msgspec.Struct):
    """One server frame, framed for the wire at most once per codec (a WebSocket frame
    around its encoding), whatever the number of connections it goes to.

    An event's frame is an :class:`EventOutbound` (``for_event``); its ``seq`` and
    ``key`` are the event's (0 and None for other frames). ``event_size`` is an event
    frame's size in a queue, counted once for every queue it goes to (0 for other
    frames). ``held`` is what it keeps: its event (``event_size``) and each frame made
    of it. The ring that keeps it, if one does (``ring``), counts its frames as they
    are made; the reference is weak, since the ring keeps the frame and not the other
    way round."""

    frame: ServerFrame | None
    seq: int = 0
    key: str | None = None
    event_size: int = 0
    held: int = 0
    ring: weakref.ReferenceType[FrameKeeper] | None = None
    # Framed for each codec at most once (two fields: cheaper than a dict per frame);
    # read by the flush (server/writer_life.py) before it asks ``framed``.
    json_frame: bytes | None = None
    msgpack_frame: bytes | None = None

    @classmethod
    def for_event(cls, stored: StoredEvent) -> EventOutbound:
        frame = EventFrame(stored.seq, stored.ts, stored.event_json)
        size = stored.size + EVENT_FRAME_OVERHEAD
        if stored.key is not None:
            size += sys.getsizeof(stored.key)  # the ring may be the key's only holder
        return EventOutbound(frame, stored.seq, stored.key, size, size)

    @classmethod
    def reply(cls, frame: ServerFrame, codec: Codec) -> Outbound:
        """A frame for one connection, framed for its codec now and kept only as bytes:
        a page of history or events, decoded, is several times its encoding, and would
        otherwise stay beside it for as long as it waits in the queue."""
        out = cls(frame)
        out.framed(codec)
        out.frame = None
        return out

    def framed(self, codec: Codec) -> bytes:
        """The frame as ``codec`` encodes it, in one unmasked WebSocket frame: the same
        bytes for every connection of that codec."""
        text = codec.text
        data = self.json_frame if text else self.msgpack_frame
        if data is None:
            frame = self.frame
            assert frame is not None, "a reply is framed for its one connection's codec"
            data = websocket_frame(codec.encode(frame), text)
            if text:
                self.json_frame = data
            else:
                self.msgpack_frame = data
            # What it keeps, counted by the ring that keeps it, if one does.
            size = len(data) + BYTES_HEADER
            self.held += size
            ring = self.ring
            if ring is not None and (keeper := ring()) is not None:
                keeper.frame_kept(size)
        return data

    def size(self, codec: Codec) -> int:
        """The bytes this frame takes in a queue: an event's as stored plus its
        envelope, without encoding it (fan-out encodes once, when it is written); any
        other frame as framed for ``codec`` (which its writer would do anyway)."""
        return self.event_size or len(self.framed(codec))


class EventOutbound(Outbound, gc=False):
    """An event's frame: its seq, time and JSON as stored (never the event object an
    append was given), its key, and the bytes framed from them. Out of the cycle
    collector's sight (``gc=False``): the replay rings hold hundreds of thousands, and
    re-walking them took up to 18% of the server's CPU. None can be part of a cycle:
    all it holds are numbers, strings, bytes and the weak reference to its ring."""

    def stored_event(self) -> StoredEvent:
        """The event as an in-process subscriber gets it: decoded from its JSON when
        first asked for, like an event read back from the store."""
        frame = self.frame
        assert isinstance(frame, EventFrame) and isinstance(frame.event, msgspec.Raw)
        return StoredEvent.from_json(self.seq, frame.ts, frame.event, self.key)


# What an event in a queue or a ring holds besides its JSON and key: the frame's
# envelope (type, seq and ts, about 60 bytes) and the objects that keep it (the
# EventOutbound, its EventFrame, time and bytes headers, and the int its count of
# bytes held becomes once framed: about 290). Counted as 96 before, a ring of token
# events held 2 to 3.8 times what it counted.
EVENT_FRAME_OVERHEAD: Final = 352
# What a frame's bytes object takes besides its bytes.
BYTES_HEADER: Final = sys.getsizeof(b"")

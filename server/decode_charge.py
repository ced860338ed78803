"""Decoding a request read from a connection, and charging the connection's byte rate
(limits.py ``ByteRate``, sliced_reads.py ``charge_decoded``) for what the decode cost
beyond the frame's bytes (docs/protocol.md, Byte rate): :func:`decode_charged`; and
refusing a publish whose event would be over the frame limit in JSON as stored or in
MessagePack, the forms viewers get it in (:func:`check_json_sizes`)."""

from __future__ import annotations

from time import perf_counter

import msgspec

from bamboo_session.protocol.codec import Codec
from bamboo_session.protocol.errors import ErrorCode, ProtocolError
from bamboo_session.protocol.frames import ClientFrame, PublishBatch, PublishEvent, PublishMessage
from bamboo_session.protocol.free_form import MAX_FREE_VALUES
from bamboo_session.protocol.models import AnyAgentEvent, MessageEvent

from .sliced_reads import SlicedReads

# What a refused frame's decoding costs its peer, in bytes of allowance per second it
# took: 2 MiB a millisecond, a second of reading at the default rate. A frame refused
# as it is decoded was decoded up to its fault, which only its decode's time tells:
# a 1 MiB MessagePack frame of empty objects with a bad field at its end took 70 ms here,
# one of long strings with a bad field first 0.014 ms. At this price the first costs
# about what the most values its bytes could hold would (Codec.refused_weight, the cap),
# and a 300,000 `{}` frame refused over the free-form values bound (35 ms) some 70 MiB,
# while the second costs about its bytes: charged the most values its bytes could hold,
# it made its peer wait a minute, longer than --ping-timeout.
REFUSED_DECODE_BYTES_PER_SECOND = 2 << 30
# The most JSON bytes one byte of a frame becomes as stored: in MessagePack a control
# character in a string is 6 (``\u0001``), ``false`` in an array 6 with its comma; in
# JSON, whose numbers and defaults are written again, ``1e15,`` is 19
# (``1000000000000000.0,``), 3.8 a byte. A frame of at most a sixth of the frame limit
# holds no event over the limit in JSON: it is not looked at.
JSON_PER_FRAME_BYTE = 6
# MessagePack viewers get the event as stored, decoded from its JSON and encoded again.
# Counted with the byte after it (a comma, colon or closing bracket), a float is 9 bytes
# there, at least 4 in JSON (``0.5,``), 5 more, 2.25 times; a string of 65,536 bytes or
# more 2 more (a header of 5 for two quotes), an array or object of 16 or more 2 more
# (a header of 3 for its '['), of 65,536 or more 4; every other value no more. So an
# event of J bytes in JSON is less than 2.3 J + 8 in MessagePack. And since only
# free-form values are floats (no typed field is one), and a frame that was decoded
# holds at most MAX_FREE_VALUES of them, long strings, arrays and objects among them
# (none of 65,536 items), it is also at most J + 5 MAX_FREE_VALUES + 2 J / 65,536 + 8
# (the last two for the strings of 65,536 bytes or more that are not values: objects'
# keys, typed fields; and a message's typed list of 16 tool calls or more): 81,928
# bytes and 0.003% more, the tighter of the two from 63 KB on. An event under the
# limit by the tighter bound is not encoded again: with the default limit (less the
# envelope's 1,019 bytes), up to 965,000 bytes of JSON, where 2.3 J + 8 stopped at
# 455,000 (tests/test_msgpack_bound.py: fuzzed, and the worst cases). (A frame byte
# becomes at most 3 in MessagePack, ``1e5`` a float of 9: fewer than 6, so the frames
# not looked at above are not here either.)
MSGPACK_PER_JSON_BYTE = 2.3
MSGPACK_PER_FREE_VALUE = 5
MSGPACK_HEADERS_BYTES = 8
_json = msgspec.json.Encoder()
_msgpack = msgspec.msgpack.Encoder()


def decode_charged(
    codec: Codec, reads: SlicedReads, max_event_json: int, data: str | bytes
) -> tuple[ClientFrame, int]:
    """``codec.decode_request(data)``, what its free-form values cost beyond its bytes
    (charged as read) charged to ``reads``: many small values cost far more to decode
    than long strings. (What its strings hold decoded beyond its bytes is in the weight
    it is queued with, not in the rate: wide characters decode no slower.) A refused
    frame, its values not counted to its end, is charged for the time its decode took,
    at most what the most values its bytes could hold would cost. With
    ``max_event_json`` (the frame limit less protocol/event_envelope.py's
    ``EVENT_ENVELOPE_BYTES``; 0: none), a publish is checked by :func:`check_json_sizes`."""
    started = perf_counter()
    try:
        frame, cost, weight = codec.decode_weighed(data)
    except ProtocolError:
        took = round((perf_counter() - started) * REFUSED_DECODE_BYTES_PER_SECOND)
        reads.charge_decoded(min(took, codec.refused_weight(data) - len(data)))
        raise
    reads.charge_decoded(cost - len(data))
    if max_event_json and len(data) * JSON_PER_FRAME_BYTE > max_event_json:
        check_json_sizes(frame, max_event_json)
    return frame, weight


def check_json_sizes(frame: ClientFrame, max_event_json: int) -> None:
    """``too_large`` for a publish one of whose events is more than ``max_event_json``
    bytes (the frame limit less the envelope of a frame of it: a viewer gets the event
    in a frame of ``seq``, ``ts``, ...) in JSON as stored or in MessagePack as a
    MessagePack viewer gets it. A MessagePack frame within the limit could hold one of 6
    times it in JSON (1 MiB of control characters), a JSON one of 1.2 times it (16,384
    numbers sent as ``1e15`` and stored as ``1000000000000000.0``), and an event within
    it in JSON one of 2.25 times it in MessagePack (small floats, ``0.5``: 3 bytes and
    9), which a viewer would get in one frame over the usual client limit (1009, then
    its resume into the same frame: never past it)."""
    events: list[AnyAgentEvent | None]
    if isinstance(frame, PublishEvent):
        events = [frame.event]
    elif isinstance(frame, PublishMessage):
        events = [MessageEvent(frame.message)]
    elif isinstance(frame, PublishBatch):
        events = [i.event if i.message is None else MessageEvent(i.message) for i in frame.items]
    else:
        return
    for index, event in enumerate(events):
        if (found := over_frame_limit(_json.encode(event), max_event_json)) is not None:
            which = f"item {index}'s event" if isinstance(frame, PublishBatch) else "the event"
            reason = f"{which} {found}; nothing was stored"
            raise ProtocolError(ErrorCode.TOO_LARGE, reason, frame.id)


def over_frame_limit(
    event_json: bytes, max_event_json: int, *, values_counted: bool = True
) -> str | None:
    """What is wrong with an event of ``event_json`` (as stored) that is more than
    ``max_event_json`` bytes in JSON or in MessagePack, as its viewers get it: ``is N
    bytes in JSON, as JSON viewers get it: over the frame limit …``; None when it is
    within. The check of every publish (:func:`check_json_sizes`), of an in-process
    append (server/commands.py) and of an event ``migrate`` copies. With
    ``values_counted``, the event holds at most ``MAX_FREE_VALUES`` free-form values,
    as every append path holds it now (:func:`msgpack_bound`); without, as a stored
    event may hold more (an in-process append of 0.1.0, a store written directly)."""
    size, form = len(event_json), "JSON, as JSON viewers get it"
    if size <= max_event_json < msgpack_bound(size, values_counted):
        size = len(_msgpack.encode(msgspec.json.decode(event_json)))
        form = "MessagePack, as MessagePack viewers get it"
    if size <= max_event_json:
        return None
    return (
        f"is {size} bytes in {form}: over the frame limit less the envelope of a frame"
        f" of it ({max_event_json})"
    )


def msgpack_bound(size: int, values_counted: bool = True) -> float:
    """The most bytes an event of ``size`` bytes in JSON can be in MessagePack: of a
    frame that was decoded (``values_counted``: at most ``MAX_FREE_VALUES``), or of
    any number of free-form values."""
    by_bytes = size * MSGPACK_PER_JSON_BYTE
    if not values_counted:
        return by_bytes + MSGPACK_HEADERS_BYTES
    by_values = size + MSGPACK_PER_FREE_VALUE * MAX_FREE_VALUES + (size >> 15)
    return min(by_bytes, by_values) + MSGPACK_HEADERS_BYTES

"""Decoding a request read from a connection, and charging the connection's byte rate
(limits.py ``ByteRate``, sliced_reads.py ``charge_decoded``) for what the decode cost
beyond the frame's bytes (docs/protocol.md, Byte rate): :func:`decode_charged`."""

from __future__ import annotations

from time import perf_counter

from bamboo_session.protocol.codec import Codec
from bamboo_session.protocol.errors import ProtocolError
from bamboo_session.protocol.frames import ClientFrame

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


def decode_charged(codec: Codec, reads: SlicedReads, data: str | bytes) -> tuple[ClientFrame, int]:
    """``codec.decode_request(data)``, what its free-form values cost beyond its bytes
    (charged as read) charged to ``reads``: many small values cost far more to decode
    than long strings. (What its strings hold decoded beyond its bytes is in the weight
    it is queued with, not in the rate: wide characters decode no slower.) A refused
    frame, its values not counted to its end, is charged for the time its decode took,
    at most what the most values its bytes could hold would cost."""
    started = perf_counter()
    try:
        frame, cost, weight = codec.decode_weighed(data)
    except ProtocolError:
        took = round((perf_counter() - started) * REFUSED_DECODE_BYTES_PER_SECOND)
        reads.charge_decoded(min(took, codec.refused_weight(data) - len(data)))
        raise
    reads.charge_decoded(cost - len(data))
    return frame, weight

"""Decoding a request read from a connection, and charging the connection's byte rate
(limits.py ``ByteRate``, sliced_reads.py ``charge_decoded``) for what the decode cost
beyond the frame's bytes (docs/protocol.md, Byte rate): :func:`decode_charged`."""

from __future__ import annotations

from bamboo_session.protocol.codec import Codec
from bamboo_session.protocol.errors import ProtocolError
from bamboo_session.protocol.frames import ClientFrame

from .sliced_reads import SlicedReads


def decode_charged(codec: Codec, reads: SlicedReads, data: str | bytes) -> tuple[ClientFrame, int]:
    """``codec.decode_request(data)``, the weight beyond the bytes (charged as read)
    charged to ``reads``: many small values cost far more to decode than long strings.
    A refused frame, not counted to its end, weighs the most it could."""
    try:
        frame, weight = codec.decode_request(data)
    except ProtocolError:
        reads.charge_decoded(codec.refused_weight(data) - len(data))
        raise
    reads.charge_decoded(weight - len(data))
    return frame, weight

"""What the server's and the client's connections hand on of a WebSocket frame that
websockets' parser read: :func:`handed_on`.

websockets' parser keeps the frame it parsed last (a local of its generator) until the
next one comes. A peer that sent one big frame and went quiet would have its payload
kept for as long as the quiet lasts, outside every bound that counts what is queued.
So a payload over :data:`PARSER_KEEPS_BYTES` goes on in a new frame, and the parser's
is emptied (the payload's bytes are shared, not copied).
"""

from __future__ import annotations

from typing import Final

from websockets.frames import Frame

# A frame payload up to this size may stay with websockets' parser until the next frame.
PARSER_KEEPS_BYTES: Final = 4096


def handed_on(parsed: Frame) -> Frame:
    """The frame to hand on in place of ``parsed``, which is emptied if it was big."""
    if len(parsed.data) <= PARSER_KEEPS_BYTES:
        return parsed
    frame = Frame(parsed.opcode, parsed.data, parsed.fin, parsed.rsv1, parsed.rsv2, parsed.rsv3)
    parsed.data = b""
    return frame

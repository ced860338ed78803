"""Whole data frames read without websockets' generator parser: :func:`take_whole_frames`,
which sliced_reads.py applies to each slice it hands to websockets.

websockets parses a frame in generators (its protocol's ``parse``, ``Frame.parse``, its
reader's ``read_exact`` three times, a dataclass made), some 370 bytecode instructions
for a frame of a few bytes: the largest part of reading a request. Most frames a client
sends are whole in their read, unfragmented, a text or binary frame of a message of its
own, with no extension: those are taken here, straight from the bytes read, and put on
websockets' list of events received exactly as its parser would (``Frame.parse`` then
``Protocol.recv_frame``, which for such a frame only appends it). Anything else, from
the first byte that is not such a frame on, goes to websockets' parser as before, which
finds itself where it would have been: at the start of a frame, its buffer empty.

So websockets stays the protocol engine: control frames, fragments, refusals (masking,
reserved bits, opcodes, sizes), the close handshake and its parser's state are its own.
tests/test_whole_frames.py feeds the same random byte streams, split at random, to both
and compares the frames, the bytes to send and the errors and close codes.

The reader takes such a message from websockets' incoming queue the same way
(:func:`next_message`), where ``recv()`` went through three coroutines of websockets'.
"""

from __future__ import annotations

from types import CodeType
from typing import Final

from websockets.asyncio.connection import Connection
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol
from websockets.server import ServerProtocol
from websockets.streams import StreamReader

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets' own fallback, as frames.py has it
    from websockets.utils import apply_mask

# The first byte of a frame taken here: FIN, no reserved bit, a text or a binary opcode.
_WHOLE_TEXT: Final = 0x80 | Opcode.TEXT
_WHOLE_BINARY: Final = 0x80 | Opcode.BINARY
_TEXT: Final = Opcode.TEXT
_BINARY: Final = Opcode.BINARY
# The second byte's mask bit: a client's frames are masked (websockets refuses others).
_MASKED: Final = 0x80
# Where websockets' parser waits between frames: in its reader's at_eof, from parse.
_PARSE_CODE: Final[CodeType] = Protocol.parse.__code__
_AT_EOF_CODE: Final[CodeType] = StreamReader.at_eof.__code__
_SERVER_PARSE_CODE: Final[CodeType] = ServerProtocol.parse.__code__


def take_whole_frames(protocol: ServerProtocol, data: bytes | bytearray) -> int:
    """Appends to ``protocol.events`` the whole, unfragmented, unextended, masked text
    and binary frames at the start of ``data`` within its size limit, as websockets'
    parser would, and returns how many bytes of ``data`` they took; 0 unless the parser
    waits between frames (the connection open, no message in fragments, nothing
    buffered, no extension, no debug log). A server's protocol: a client's frames are
    masked. Past the peer's end of stream or a failure, websockets' parser is its
    ``discard`` (no longer waiting in ``parse``): nothing is taken then either."""
    parser = protocol.parser
    waiting = parser.gi_yieldfrom  # type: ignore[attr-defined]
    if parser.gi_code is not _PARSE_CODE:  # type: ignore[attr-defined]
        # websockets' own ServerProtocol.parse, past the request, runs Protocol.parse
        # inside it (http_requests.py puts Protocol.parse in its place).
        if parser.gi_code is not _SERVER_PARSE_CODE or waiting is None:  # type: ignore[attr-defined]
            return 0
        parser, waiting = waiting, waiting.gi_yieldfrom
        if parser.gi_code is not _PARSE_CODE:
            return 0
    if (
        waiting is None
        or waiting.gi_code is not _AT_EOF_CODE
        or protocol.current_size is not None
        or protocol.extensions
        or protocol.reader.buffer
        or protocol.debug
    ):
        return 0
    max_size = protocol.max_message_size  # as Protocol.parse has it, between messages
    fragment = protocol.max_fragment_size
    if fragment is not None and (max_size is None or fragment < max_size):
        max_size = fragment
    events = protocol.events
    end = len(data)
    start = 0
    while end - start >= 6:  # a head and a mask at least
        head = data[start]
        if head != _WHOLE_TEXT and head != _WHOLE_BINARY:
            break
        length = data[start + 1]
        if length < _MASKED:
            break
        length -= _MASKED
        at = start + 2
        if length == 126:
            length = int.from_bytes(data[at : at + 2], "big")
            at += 2
        elif length == 127:
            length = int.from_bytes(data[at : at + 8], "big")
            at += 8
        if max_size is not None and length > max_size:
            break  # websockets refuses it (1009)
        stop = at + 4 + length
        if stop > end:
            break  # not whole in this read (at + 4 > end too)
        payload = apply_mask(data[at + 4 : stop], data[at : at + 4])
        events.append(Frame(_TEXT if head == _WHOLE_TEXT else _BINARY, payload))
        start = stop
    return start


class WholeFramesProtocol(ServerProtocol):
    """websockets' server protocol, whose ``receive_data`` takes the whole data frames
    at the start of what is read itself (:func:`take_whole_frames`) and hands the rest
    to websockets' parser. http_wire.py's connection gives its protocol this class."""

    def receive_data(self, data: bytes | bytearray) -> None:
        taken = take_whole_frames(self, data)
        if taken < len(data) or not data:
            # b"" too: after the upgrade, the parser goes on from the request with it.
            super().receive_data(data[taken:] if taken else data)


async def next_message(ws: Connection) -> str | bytes:
    """``ws.recv()`` for a message whole in one frame, as websockets' assembler hands it
    (``Assembler.get``): taken from the incoming queue, ``maybe_resume`` told, a text
    frame's UTF-8 decoded. websockets' recv waits in three coroutines (recv, the
    assembler's get, its queue's get), each resumed as the frame comes: some 5,000
    machine instructions, 2% of a lone event. Anything else (a message in fragments,
    text that is not UTF-8, a frame taken meanwhile, the connection's end) is left to
    ``recv()``, which finds the queue as it would have."""
    assembler = ws.recv_messages
    frames = assembler.frames
    if not frames.queue and not assembler.closed and not assembler.get_in_progress:
        # The queue's own wait (SimpleQueue.get), woken by its put, or by its abort as
        # the connection ends (EOFError: recv below raises what websockets raises).
        assembler.get_in_progress = True  # as in recv: no other reader meanwhile
        waiter = frames.get_waiter = frames.loop.create_future()
        try:
            await waiter
        except EOFError:
            pass
        finally:
            waiter.cancel()
            frames.get_waiter = None
            assembler.get_in_progress = False
    queue = frames.queue
    if queue and not assembler.get_in_progress and (frame := queue[0]).fin:
        data = frame.data  # bytes as websockets' join gives them (bytes() of bytes: a call)
        if type(data) is not bytes:
            data = bytes(data)
        try:
            message: str | bytes = data.decode() if frame.opcode is _TEXT else data
        except UnicodeDecodeError:
            return await ws.recv()  # websockets' 1007, the frame still queued
        queue.popleft()
        assembler.maybe_resume()
        return message
    return await ws.recv()

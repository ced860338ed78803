"""Whole data frames taken without websockets' parser (server/whole_frames.py) against
websockets' own: the same random byte streams, split at random, fed to a websockets
ServerProtocol and to ours give the same frames, the same bytes to send, the same
errors and close codes, the same state, at every step."""

from __future__ import annotations

import itertools
import random

import pytest
import websockets
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.utils import apply_mask

from bamboo_session.server import whole_frames
from bamboo_session.server.whole_frames import WholeFramesProtocol, take_whole_frames

SIZES = (None, 2**20, 200, (1000, 300), 65536, 65535, 125, 126)
OPCODES = [1] * 6 + [2] * 6 + [0] * 3 + [8, 9, 9, 10, 10, 3, 7, 11, 15]


def frame_bytes(rng: random.Random, max_size: int) -> bytes:
    """One frame, often a valid client data frame, at times anything a peer could send."""
    opcode = rng.choice(OPCODES)
    fin = rng.random() < 0.85
    rsv = rng.choice((0,) * 12 + (1, 2, 4, 7))
    masked = rng.random() < 0.95
    length = rng.choice(
        (0, 1, 2, 5, 124, 125, 126, 127, 65535, 65536, max_size - 1, max_size, max_size + 1)
        + (rng.randrange(300),) * 6
    )
    length = max(0, min(length, 70_000))
    if opcode == 8 and length >= 2 and rng.random() < 0.7:
        code = rng.choice((1000, 1001, 1002, 1005, 1006, 999, 3000, 4999, 5000, 1016))
        reason = rng.choice((b"", b"bye", "\u00e9t\u00e9".encode(), b"\xff\xfe", b"\xc3"))
        payload = code.to_bytes(2, "big") + reason
    elif opcode == 1 and rng.random() < 0.5:
        text = "".join(rng.choice("ab\u00e9\u4e2d\U0001f600") for _ in range(length // 3))
        payload = text.encode()
        if rng.random() < 0.2:
            payload += rng.choice((b"\xff", b"\xc3", b"\xed\xa0\x80"))
    else:
        payload = rng.randbytes(length)
    length = len(payload)
    head1 = (0x80 if fin else 0) | rsv << 4 | opcode
    mask_bit = 0x80 if masked else 0
    wide = rng.random() < 0.1  # a longer length encoding than needed: websockets takes it
    if length < 126 and not wide:
        head = bytes((head1, mask_bit | length))
    elif length < 65536 and not (wide and rng.random() < 0.5):
        head = bytes((head1, mask_bit | 126)) + length.to_bytes(2, "big")
    else:
        head = bytes((head1, mask_bit | 127)) + length.to_bytes(8, "big")
    if not masked:
        return head + payload
    key = rng.randbytes(4)
    return head + key + apply_mask(payload, key)


def stream(rng: random.Random, max_size: int) -> tuple[bytes, list[int]]:
    """Frames one after the other, at times cut anywhere, and where each one ends."""
    frames = [frame_bytes(rng, max_size) for _ in range(rng.randrange(1, 9))]
    ends = list(itertools.accumulate(len(frame) for frame in frames))
    data = b"".join(frames)
    if rng.random() < 0.2:
        data = data[: rng.randrange(len(data) + 1)]  # cut anywhere
    return data, [end for end in ends if end <= len(data)]


def chunks(rng: random.Random, data: bytes, ends: list[int]) -> list[bytes]:
    """``data`` in one read, or in reads cut anywhere, or between frames (where ours
    takes the next read's frames, websockets' parser at its start, or not)."""
    if rng.random() < 0.2:
        return [data]
    if rng.random() < 0.5:
        cuts = sorted(rng.randrange(len(data) + 1) for _ in range(rng.randrange(1, 8)))
    else:
        cuts = sorted(rng.sample(ends, rng.randrange(len(ends) + 1)))
    return [data[a:b] for a, b in itertools.pairwise([0, *cuts, len(data)])]


def seen(protocol: ServerProtocol) -> tuple[object, ...]:
    """All a user of the protocol can see of it after a step."""
    events = protocol.events_received()
    exc = protocol.parser_exc
    return (
        [(f.opcode, bytes(f.data), type(f.data), f.fin, f.rsv1, f.rsv2, f.rsv3) for f in events],
        protocol.data_to_send(),
        protocol.state,
        protocol.close_rcvd,
        protocol.close_sent,
        protocol.close_rcvd_then_sent,
        None if exc is None else (type(exc), str(exc), exc.__cause__.__class__),
        protocol.current_size,
        bytes(protocol.reader.buffer),
        protocol.eof_sent,
    )


def both(max_size: object) -> tuple[ServerProtocol, ServerProtocol]:
    return (
        ServerProtocol(state=State.OPEN, max_size=max_size),  # type: ignore[arg-type]
        WholeFramesProtocol(state=State.OPEN, max_size=max_size),  # type: ignore[arg-type]
    )


def test_websockets_is_the_version_this_was_checked_against() -> None:
    # whole_frames.py mirrors websockets 17.4's Frame.parse and Protocol.recv_frame, and
    # looks for its parser's wait between frames (Protocol.parse in StreamReader.at_eof).
    assert websockets.__version__ == "17.4"


@pytest.mark.parametrize("max_size", SIZES)
def test_random_streams_give_the_same_frames_errors_and_closes(
    max_size: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken: list[int] = []  # what ours took without websockets' parser, read by a spy

    def counted(protocol: ServerProtocol, data: bytes) -> int:
        taken.append(take_whole_frames(protocol, data))
        return taken[-1]

    monkeypatch.setattr(whole_frames, "take_whole_frames", counted)
    rng = random.Random(f"whole-frames-{max_size}")
    limit = 2**20 if max_size is None else max_size if isinstance(max_size, int) else 300
    for _ in range(400):
        theirs, ours = both(max_size)
        data, ends = stream(rng, limit)
        for piece in chunks(rng, data, ends):
            theirs.receive_data(piece)
            ours.receive_data(piece)
            assert seen(ours) == seen(theirs), (data.hex(), piece.hex())
        if rng.random() < 0.5:
            theirs.receive_eof()
            ours.receive_eof()
            assert seen(ours) == seen(theirs), data.hex()
    assert sum(n > 0 for n in taken) > 30  # the comparison was not all websockets' parser


@pytest.mark.parametrize("step", ["close", "ping", "fail"])
def test_after_the_server_s_own_close_ping_or_failure_the_same_frames_and_states(
    step: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server's close frame (CLOSING: the peer's data frames still parsed), a ping
    # of its own, or its failing the connection, between two reads of random streams.
    taken_after: list[int] = []  # what ours took itself once the step was made
    stepped = False

    def counted(protocol: ServerProtocol, data: bytes) -> int:
        taken = take_whole_frames(protocol, data)
        if stepped:
            taken_after.append(taken)
        return taken

    monkeypatch.setattr(whole_frames, "take_whole_frames", counted)
    rng = random.Random(f"whole-frames-after-{step}")
    for _ in range(300):
        max_size = rng.choice(SIZES)
        theirs, ours = both(max_size)
        limit = max_size[0] if isinstance(max_size, tuple) else max_size or 2**20
        data, ends = stream(rng, limit)
        pieces = chunks(rng, data, ends)
        at = rng.randrange(len(pieces) + 1)
        stepped = False
        for index, piece in enumerate([*pieces, b""]):
            if index == at and theirs.state is State.OPEN:
                for protocol in (theirs, ours):
                    if step == "close":
                        protocol.send_close(1001, "going away")
                    elif step == "ping":
                        protocol.send_ping(b"p")
                    else:
                        protocol.fail(1011, "internal")
                stepped = True
                assert seen(ours) == seen(theirs)
            if piece:
                theirs.receive_data(piece)
                ours.receive_data(piece)
                assert seen(ours) == seen(theirs), (data.hex(), piece.hex())
    # Frames were taken without websockets' parser after a close or a ping of the
    # server's; after a failure, never (its parser is discard then).
    assert (sum(n > 0 for n in taken_after) > 10) is (step != "fail")


def test_boundary_lengths_whole_and_split_byte_by_byte() -> None:
    for length in (0, 1, 125, 126, 127, 65535, 65536):
        for max_size in (length - 1, length, None):
            for opcode in (Opcode.TEXT, Opcode.BINARY):
                key = bytes((1, 2, 3, 4))
                payload = b"a" * length
                if length < 126:
                    head = bytes((0x80 | opcode, 0x80 | length))
                elif length < 65536:
                    head = bytes((0x80 | opcode, 0x80 | 126)) + length.to_bytes(2, "big")
                else:
                    head = bytes((0x80 | opcode, 0x80 | 127)) + length.to_bytes(8, "big")
                frame = head + key + apply_mask(payload, key)
                data = frame * 2 + frame[:3]
                theirs, ours = both(max_size if max_size is None or max_size >= 0 else 0)
                theirs.receive_data(data)
                ours.receive_data(data)
                assert seen(ours) == seen(theirs)
                if length < 300:
                    theirs, ours = both(max_size if max_size is None or max_size >= 0 else 0)
                    for at in range(len(data)):
                        theirs.receive_data(data[at : at + 1])
                        ours.receive_data(data[at : at + 1])
                        assert seen(ours) == seen(theirs)


def test_whole_frames_are_taken_only_between_frames_of_an_open_server() -> None:
    key = bytes((9, 8, 7, 6))
    frame = bytes((0x81, 0x80 | 5)) + key + apply_mask(b"hello", key)
    opened = WholeFramesProtocol(state=State.OPEN)
    assert take_whole_frames(opened, frame * 3) == len(frame) * 3
    assert [f.data for f in opened.events_received()] == [b"hello"] * 3
    midway = WholeFramesProtocol(state=State.OPEN)
    midway.receive_data(frame[:6])  # head and mask read: inside a frame, nothing buffered
    assert take_whole_frames(midway, frame) == 0
    connecting = WholeFramesProtocol()  # reading the upgrade request
    assert take_whole_frames(connecting, frame) == 0


def test_a_data_frame_read_inside_a_fragmented_message_is_websockets_to_refuse() -> None:
    key = bytes((5, 6, 7, 8))
    first = bytes((Opcode.TEXT, 0x80 | 2)) + key + apply_mask(b"ab", key)  # no FIN
    whole = bytes((0x80 | Opcode.TEXT, 0x80 | 2)) + key + apply_mask(b"cd", key)
    theirs, ours = both(2**20)
    for piece in (first, whole):
        theirs.receive_data(piece)
        ours.receive_data(piece)
        assert seen(ours) == seen(theirs)
    assert ours.close_sent is not None and ours.close_sent.code == 1002


def test_with_permessage_deflate_everything_is_websockets_parser() -> None:
    rng = random.Random("whole-frames-deflate")
    for _ in range(200):
        theirs, ours = both(2**20)
        for protocol in (theirs, ours):
            protocol.extensions = [PerMessageDeflate(False, False, 15, 15)]
        data, ends = stream(rng, 2**20)
        for piece in chunks(rng, data, ends):
            assert take_whole_frames(ours, piece) == 0
            theirs.receive_data(piece)
            ours.receive_data(piece)
            assert seen(ours) == seen(theirs)

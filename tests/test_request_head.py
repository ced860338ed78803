"""server/request_head.py's ``parse_head`` against websockets' own ``Request.parse``
(17.4) over the lines as the server read them before (the reader below, as
http_requests.py had it): for every head, whole or in pieces, with the stream ending
or not, the same request (path, method, version, every header as received) or the
same exception (type, message, cause), the same bytes left in the stream, and the same
account of the head (bytes left of its limit, first line, skipped empty lines).

Heads of every kind the checks and websockets tell apart (each refusal of
http_refusals.py, each of websockets', the limits at their edges), and random
mutations of valid ones."""

from __future__ import annotations

import random
from collections.abc import Callable, Generator
from typing import Any

import pytest
from websockets.http11 import MAX_LINE_LENGTH, MAX_NUM_HEADERS, Request
from websockets.server import ServerProtocol

from bamboo_session.server.request_head import (
    MAX_HEAD_BYTES,
    MAX_LEADING_EMPTY_LINES,
    HeadReader,
    RequestHeadTooLarge,
    parse_head,
)

Parse = Callable[[HeadReader], Generator[None, None, Request]]


class ReadLineBefore(HeadReader):
    """The head's reader as http_requests.py had it, handing websockets' parser one
    checked line at a time (``_HeadReader.read_line``, before request_head.py)."""

    def read_line(
        self, limit: int, too_long: type[Exception] = RuntimeError
    ) -> Generator[None, None, bytes | bytearray]:
        while True:
            if self.left < limit:
                limit, too_long = self.left, RequestHeadTooLarge
            buffer = self.reader.buffer
            end = buffer.find(b"\n") + 1
            if 0 < end <= limit:
                line = buffer[:end]
                del buffer[:end]
            else:
                line = yield from self.reader.read_line(limit, too_long)
            self.left -= len(line)
            if self.first_line:
                return self.checks.header_line(line)
            if line == b"\r\n" and self.skipped < MAX_LEADING_EMPTY_LINES:
                self.skipped += 1
                continue
            self.first_line.append(bytes(line))
            return self.checks.request_line(line)


def websockets_parse(head: HeadReader) -> Generator[None, None, Request]:
    return Request.parse(head.read_line)


def outcome(parse: Parse, reader: type[HeadReader], chunks: list[bytes], eof: bool) -> Any:
    """What ``parse`` made of ``chunks`` (then the end of the stream, with ``eof``),
    fed as a connection feeds them, and what it left."""
    protocol = ServerProtocol()
    head = reader(protocol)
    parser = parse(head)
    result: tuple[Any, ...]
    try:
        next(parser)
        for chunk in chunks:
            protocol.reader.feed_data(chunk)
            next(parser)
        if eof:
            protocol.reader.feed_eof()
            next(parser)
        result = ("waiting",)
    except StopIteration as done:
        request = done.value
        headers = list(request.headers.raw_items())
        result = ("request", request.path, request.method, request.protocol, headers)
    except Exception as exc:
        cause = exc.__cause__
        shown_cause = None if cause is None else (type(cause), str(cause))
        result = ("error", type(exc), str(exc), shown_cause, exc.__suppress_context__)
    account = (head.left, head.first_line, head.skipped, head.checks.content_length)
    return result, bytes(protocol.reader.buffer), account


def upgrade(extra: bytes = b"", line: bytes = b"GET /api/v1/stream/s1 HTTP/1.1") -> bytes:
    return (
        line + b"\r\nHost: 127.0.0.1:8080\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Protocol: bamboo.v1\r\n" + extra + b"\r\n"
    )


def filler(count: int, size: int = 20) -> bytes:
    return b"".join(b"X-F%d: %s\r\n" % (i, b"v" * size) for i in range(count))


HEADS: list[bytes] = [
    upgrade(),
    upgrade() + b"\x81\x85early frame bytes",
    upgrade(b"Authorization: Bearer abc.def\r\n"),
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /healthz HTTP/1.0\r\n\r\n",
    b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"\r\n" * 3 + upgrade(),
    b"\r\n" * MAX_LEADING_EMPTY_LINES + upgrade(),
    b"\r\n" * (MAX_LEADING_EMPTY_LINES + 1) + upgrade(),
    b"\r\n" * (MAX_LEADING_EMPTY_LINES + 3),
    b"GET / HTTP/1.2\r\nHost: x\r\n\r\n",
    b"GET / HTTP/2.0\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1 extra\r\nHost: x\r\n\r\n",
    b"GET /\r\nHost: x\r\n\r\n",
    b"GET\r\n\r\n",
    b"GET  / HTTP/1.1\r\n\r\n",
    b"GET /a\x01b HTTP/1.1\r\n\r\n",
    b"GET /\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"G\xc3\xa9T / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n\n",
    b"GET / HTTP/1.1\r\nHost: x\r\r\n\r\n",
    b"GET / HTTP/1.1\r\n Host: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHo(st: x\r\n\r\n",
    b"GET / HTTP/1.1\r\n: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\x00y\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: \t x \t\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost:\r\nX-Empty:   \r\n\r\n",
    b"GET / HTTP/1.1\r\nX-Latin: caf\xe9\r\nX-Colon: a:b:c\r\n\r\n",
    b"GET / HTTP/1.1\r\nhost: a\r\nHOST: b\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: 00\r\n\r\n",
    b"GET / HTTP/1.1\r\ncontent-length:  0 , 0\r\nContent-Length: 000\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
    b"GET / HTTP/1.1\r\nContent-Length: 0, 1\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 1\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: 1" + b"0" * 5000 + b"\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET / HTTP/1.1\r\n" + filler(MAX_NUM_HEADERS - 1) + b"\r\n",
    b"GET / HTTP/1.1\r\n" + filler(MAX_NUM_HEADERS) + b"\r\n",
    b"GET / HTTP/1.1\r\n" + filler(MAX_NUM_HEADERS + 1) + b"\r\n",
    b"GET / HTTP/1.1\r\n" + filler(MAX_NUM_HEADERS) + b"Bad Line\r\n\r\n",
    b"GET / HTTP/1.1\r\n" + filler(MAX_NUM_HEADERS + 3, 5),
    b"GET /" + b"a" * (MAX_LINE_LENGTH - 16) + b" HTTP/1.1\r\n\r\n",
    b"GET /" + b"a" * (MAX_LINE_LENGTH - 15) + b" HTTP/1.1\r\n\r\n",
    b"GET /" + b"a" * (MAX_LINE_LENGTH - 14) + b" HTTP/1.1\r\n\r\n",
    b"GET /" + b"a" * (2 * MAX_LINE_LENGTH),
    b"GET / HTTP/1.1\r\nX: " + b"v" * (MAX_LINE_LENGTH - 5) + b"\r\n\r\n",
    b"GET / HTTP/1.1\r\nX: " + b"v" * (MAX_LINE_LENGTH - 4) + b"\r\n\r\n",
    b"GET / HTTP/1.1\r\nX: " + b"v" * (2 * MAX_LINE_LENGTH),
    b"GET / HTTP/1.1\r\n" + filler(3, 8000) + b"\r\n",
    b"GET / HTTP/1.1\r\n" + filler(3, 8000)[:-3000] + b"\r\n",
    b"GET / HTTP/1.1\r\n" + filler(4, 4000)[: MAX_HEAD_BYTES - 20] + b"\r\n\r\n",
    b"\r\n" * 8 + b"GET / HTTP/1.1\r\n" + filler(2, 8000)[:-200] + b"\r\n",
    # Header lines of 8,192 bytes in all (taken at once), and of one more.
    b"GET / HTTP/1.1\r\n" + filler(1, MAX_LINE_LENGTH - 10) + b"\r\n",
    b"GET / HTTP/1.1\r\n" + filler(1, MAX_LINE_LENGTH - 9) + b"\r\n",
    b"GET / HTTP/1.1\r\n" + filler(2, MAX_LINE_LENGTH // 2 - 9) + b"\r\n",
    b"GET / HTTP/1.1\r\n" + filler(2, MAX_LINE_LENGTH // 2 - 8) + b"\r\n",
    # Headers within 8,192 bytes, past what the head has left after its request line.
    b"\r\n" * 8 + b"GET /" + b"a" * 8170 + b" HTTP/1.1\r\n" + filler(2, 4080) + b"\r\n",
    b"\r\n" * 8 + b"GET /" + b"a" * 8170 + b" HTTP/1.1\r\n" + filler(2, 4083) + b"\r\n",
    b"GET / HTTP/1.1\r\nA:b\r\nX-Many:  \t a \t b\t \r\nY:\t\r\nz-Z: \x80\xff \r\n\r\nrest",
    b"GET / HTTP/1.1\r\nA: b\r\nContent-Length-X: 1\r\nB: c\r\n\r\n",
    b"GET / HTTP/1.1\r\nA: b\r\nContent-length: 0\r\nB: c\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nGET / HTTP/1.1\r\n\r\n",
    b"SSH-2.0-OpenSSH_9.6\r\n",
    b"",
    b"GET / HTTP/1.1\r\nHost: x\r\n",
    b"GET / HTTP/1.1\r\nHost: x",
    b"GET / HTTP/1.1\r\nHost: x\r",
    b"GET / HT",
    b"http://a:1/x?y HTTP/1.1\r\n\r\n",
    b"GET http://127.0.0.1:1/api/v1/stream/s?x=1 HTTP/1.1\r\nHost: h\r\n\r\n",
    # What a request smuggler tries (r412): a CR alone as a line's end or inside a name,
    # a bare LF ending the head early, line folding of a framing header, framing
    # headers together or mixed in case, control and non-ASCII bytes, an LF alone
    # before the request line, and a second request behind the first.
    b"GET / HTTP/1.1\rHost: x\r\r",
    upgrade(b"X\rA: a\r\n"),
    b"GET / HTTP/1.1\r\nHost: x\n\nGET /metrics HTTP/1.1\r\n\r\n",
    upgrade(b"Transfer-Encoding:\r\n chunked\r\n"),
    upgrade(b"Transfer-Encoding: chunked\r\nContent-Length: 0\r\n") + b"0\r\n\r\n",
    upgrade(b"transfer-encoding: identity\r\ncontent-LENGTH: 0\r\n"),
    upgrade(b"Content-Length: 0\r\n 5\r\n"),
    upgrade(b"Content-Length: +0\r\n"),
    upgrade(b"X-A: a\x00b\r\nX-\x7fB: c\r\n"),
    upgrade("X-\u00c9: caf\u00e9\r\n".encode()),
    b"GET\t/\tHTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\x00\r\nHost: x\r\n\r\n",
    b"\n" + upgrade(),
    upgrade(b"Host: evil\r\nUpgrade: h2c\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n"),
    upgrade() + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
]

CUTS: list[Callable[[bytes], list[bytes]]] = [
    lambda data: [data],
    lambda data: [data[i : i + 1] for i in range(len(data))] if len(data) < 3000 else [data],
    lambda data: [data[:7], data[7:40], data[40:]],
    lambda data: [data[: len(data) // 2], data[len(data) // 2 :]],
]


def random_cuts(data: bytes, rng: random.Random) -> list[bytes]:
    chunks, start = [], 0
    while start < len(data):
        size = rng.choice((1, 2, 3, 17, 100, 1500, 9000))
        chunks.append(data[start : start + size])
        start += size
    return chunks


def assert_same(data_chunks: list[bytes]) -> None:
    for eof in (False, True):
        ours = outcome(parse_head, HeadReader, data_chunks, eof)
        theirs = outcome(websockets_parse, ReadLineBefore, data_chunks, eof)
        assert ours == theirs, (b"".join(data_chunks)[:200], eof)


@pytest.mark.parametrize("index", range(len(HEADS)))
def test_each_head_parses_as_websockets_parses_it(index: int) -> None:
    data = HEADS[index]
    for cut in CUTS:
        assert_same(cut(data))
    rng = random.Random(index)
    for _ in range(5):
        assert_same(random_cuts(data, rng))


_BYTES = b"\r\n :\t\x00\x7f\x80\xffaZ0/-,"


def mutated(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(out) + 1)
        kind = rng.randrange(3)
        if kind == 0 and at < len(out):
            del out[at : at + rng.randint(1, 3)]
        elif kind == 1:
            out[at:at] = bytes(rng.choice(_BYTES) for _ in range(rng.randint(1, 3)))
        elif at < len(out):
            out[at] = rng.choice(_BYTES)
    return bytes(out)


def test_mutated_heads_parse_as_websockets_parses_them() -> None:
    rng = random.Random(410)
    seeds = [upgrade(), upgrade(b"Content-Length: 0\r\n"), b"\r\n\r\n" + HEADS[3], HEADS[32]]
    seeds.append(b"GET / HTTP/1.1\r\nA:b\r\nX-Many:  \t a \t b\t \r\nY:\t\r\n\r\n")
    kinds: set[str] = set()
    for _ in range(3000):
        data = mutated(rng.choice(seeds), rng)
        chunks = [data] if rng.random() < 0.5 else random_cuts(data, rng)
        assert_same(chunks)
        result = outcome(parse_head, HeadReader, chunks, True)[0]
        kinds.add(result[0] if result[0] != "error" else result[1].__name__)
    # The mutations reach the parse's every way out, not only the usual ones.
    assert {"request", "MalformedHead", "ValueError", "EOFError", "UnicodeDecodeError"} <= kinds

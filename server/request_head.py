"""A request's head as the WebSocket port reads it: its lines, within
:data:`MAX_HEAD_BYTES` in all, each checked as it is read (http_refusals.py
``HeadChecks``) by :class:`HeadReader`, and the websockets ``Request`` made of them by
:func:`parse_head`.

:func:`parse_head` is websockets' ``Request.parse`` (17.4, with its ``parse_line`` and
``parse_headers``) over the lines the checks passed: the same ``Request``, or the same
exception (type, message and cause), after the same bytes are taken from the stream.
What websockets would check again in each line (a CRLF end, a colon, a token for the
name, field characters for the value) every line the checks pass has already, so it is
not checked twice; a line already whole in the buffer, as a head that came in one
packet has all of them, is taken without a generator; and header lines all in the
buffer, each one a line the checks pass as it is, are checked by one match and split
by one call. A resume after a restart paid some 1,000 bytecodes for websockets' parse
of its seven header lines, 1,860 with our checks; 890 now (bench/RESULTS.md).
tests/test_request_head.py holds the two parses to the same outcome.
"""

from __future__ import annotations

from collections.abc import Generator

from websockets.datastructures import Headers
from websockets.exceptions import (
    HeaderLineTooLong,
    RequestLineTooLong,
    SecurityError,
    TooManyHeaders,
)
from websockets.http11 import MAX_LINE_LENGTH, MAX_NUM_HEADERS, Request, d
from websockets.server import ServerProtocol

from .http_refusals import PLAIN_FIELD, PLAIN_HEADERS, HeadChecks

MAX_HEAD_BYTES = 16 * 1024
MAX_LEADING_EMPTY_LINES = 8  # CRLFs skipped before a request line (RFC 9112 2.2)

Line = bytes | bytearray


class RequestHeadTooLarge(SecurityError):
    """A request line and headers of more than :data:`MAX_HEAD_BYTES` in all."""


class HeadReader:
    """The request's lines, as websockets' request parser asks for them, within
    :data:`MAX_HEAD_BYTES` in all, each checked (``HeadChecks``) and given in the form
    websockets' parser takes; the first one kept (for the refusal's answer).

    Up to :data:`MAX_LEADING_EMPTY_LINES` empty lines (CRLF) before the request line
    are skipped, as RFC 9112 2.2 asks of a server (a client may send one after the
    body of a previous request); their bytes count in the head's. websockets read the
    first as the request line and the connection was dropped without an answer. One
    more is read as the request line: not HTTP, dropped as any other."""

    __slots__ = ("checks", "first_line", "left", "reader", "skipped")

    def __init__(self, protocol: ServerProtocol) -> None:
        self.reader = protocol.reader
        self.left = MAX_HEAD_BYTES
        self.first_line: list[bytes] = []
        self.skipped = 0  # empty lines before the request line
        self.checks = HeadChecks()

    def take_line(self, limit: int) -> Line | None:
        """The next line, checked, if it is whole in the buffer within ``limit`` bytes
        and the head's; else None, nothing taken: :meth:`read_line` waits for it, or
        refuses it."""
        while True:
            buffer = self.reader.buffer
            end = buffer.find(b"\n") + 1
            if end == 0 or end > limit or end > self.left:
                return None
            line = buffer[:end]
            del buffer[:end]
            checked = self._checked(line)
            if checked is not None:
                return checked

    def read_line(
        self, limit: int, too_long: type[Exception] = RuntimeError
    ) -> Generator[None, None, Line]:
        """The next line, checked, as websockets' ``read_line`` gives it: waited for
        until whole, ``too_long`` raised past ``limit`` bytes (RequestHeadTooLarge past
        the head's), EOFError if the stream ends first."""
        while True:
            line = self.take_line(limit)
            if line is not None:
                return line
            if self.left < limit:
                limit, too_long = self.left, RequestHeadTooLarge
            checked = self._checked((yield from self.reader.read_line(limit, too_long)))
            if checked is not None:
                return checked

    def _checked(self, line: Line) -> Line | None:
        """``line``, taken from the stream, as the checks pass it on; None for an empty
        line skipped before the request line."""
        self.left -= len(line)
        if self.first_line:
            return self.checks.header_line(line)
        if line == b"\r\n" and self.skipped < MAX_LEADING_EMPTY_LINES:
            self.skipped += 1
            return None
        self.first_line.append(bytes(line))
        return self.checks.request_line(line)


def parse_head(head: HeadReader) -> Generator[None, None, Request]:
    """websockets' ``Request.parse`` (17.4) over the lines of ``head``: the request, or
    the exception websockets raises for it, in its words (a request line it refuses,
    too many headers, a body), or the checks' (``MalformedHead``), or the reader's."""
    request_line = head.take_line(MAX_LINE_LENGTH)
    if request_line is None:
        try:
            request_line = yield from head.read_line(MAX_LINE_LENGTH, RequestLineTooLong)
        except EOFError as exc:
            raise EOFError("connection closed while reading HTTP request line") from exc
    request_line = request_line[:-2]  # its CRLF, which the checks require
    try:
        raw_method, raw_path, raw_protocol = request_line.split(b" ", 2)
    except ValueError:  # not enough values to unpack (expected 3, got 1-2)
        raise ValueError(f"invalid HTTP request line: {d(request_line)}") from None
    if raw_protocol not in [b"HTTP/1.1", b"HTTP/1.0"]:
        raise ValueError(f"unsupported protocol; expected HTTP/1.1 or HTTP/1.0: {d(request_line)}")
    method = raw_method.decode("ascii")
    protocol = raw_protocol.decode("ascii")
    path = raw_path.decode("ascii")
    headers = Headers()
    if _plain_headers(head, headers):
        return _request(path, headers, method, protocol)
    reader, checks = head.reader, head.checks
    for _ in range(MAX_NUM_HEADERS + 1):
        # take_line's way with a header line, inline: two calls less for each line.
        buffer = reader.buffer
        end = buffer.find(b"\n") + 1
        if 0 < end <= MAX_LINE_LENGTH and end <= head.left:
            taken = buffer[:end]
            del buffer[:end]
            head.left -= end
            line = checks.header_line(taken)
        else:
            try:
                line = yield from head.read_line(MAX_LINE_LENGTH, HeaderLineTooLong)
            except EOFError as exc:
                raise EOFError("connection closed while reading HTTP headers") from exc
        if line == b"\r\n":
            break
        # The checks passed it: a token, a colon, field characters, CRLF (http_refusals).
        raw_name, raw_value = line[:-2].split(b":", 1)
        headers.set_insecure(raw_name.decode("ascii"), raw_value.strip(b" \t").decode("iso-8859-1"))
    else:
        raise TooManyHeaders(f"expected no more than {MAX_NUM_HEADERS} headers")
    return _request(path, headers, method, protocol)


def _plain_headers(head: HeadReader, headers: Headers) -> bool:
    """The head's header lines and the empty line after them taken at once into
    ``headers``, as parse_head's loop would take them one by one, when they are all in
    the buffer, within every limit, and each one a line the checks pass as it is (not a
    Content-Length, which they rewrite): one match checks them all. Else False, and
    nothing is taken: the loop reads them, and finds what is wrong, if anything."""
    buffer = head.reader.buffer
    match = PLAIN_HEADERS.match(buffer)
    if match is None:
        return False
    end = match.end()
    if end > MAX_LINE_LENGTH or end > head.left:
        return False  # a line may be over its limit, or the head over its own
    fields = PLAIN_FIELD.findall(buffer, 0, end)
    if len(fields) > MAX_NUM_HEADERS:
        return False
    del buffer[:end]
    head.left -= end
    for name, value in fields:
        headers.set_insecure(name.decode("ascii"), value.strip(b" \t").decode("iso-8859-1"))
    return True


def _request(path: str, headers: Headers, method: str, protocol: str) -> Request:
    """Request.parse's end: a request with a body refused, else the request."""
    if "Transfer-Encoding" in headers:
        raise NotImplementedError("transfer codings aren't supported")
    if not set(headers.get_all("Content-Length")) <= {"0"}:
        raise ValueError("unsupported request body")
    return Request(path, headers, method, protocol)

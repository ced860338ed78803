"""How a request on the WebSocket port is read, and how websockets' own refusals of one
are answered.

websockets refuses some requests itself, before the server sees them: a request line
or headers too long (414, 431), a malformed head (400), a request with a body (the
connection was just dropped), a failed upgrade (400, 426, 500, 503, 505, the
subprotocol refusal). Its refusals are plain text, in its own words; a client of this
server expects ``{"error": {"code", "message"}}`` on every error, saying what was wrong
in this server's words (http_refusals.py): :func:`json_reject`, :func:`upgrade_reject`.
:func:`parse_request` is websockets' request parser, with the head checked line by line
as it is read, and a request with a body (or chunked) answered 405, since only GET and
HEAD without a body are served here, where websockets dropped the connection without a
word.

Bytes of requests not answered yet: websockets bounds a request's head in counts only
(128 header lines of 8 KiB each: about 1 MiB), which it keeps while the request is read
(up to ``open_timeout``, 10 s) and answered. Peers that each sent that much and nothing
more held 1 MiB of the server per connection, before any auth, counted by no bound:
2,000 of them, 2 GB. A request's head (its line and headers) is now at most 16 KiB in
all, as Node's HTTP server allows (more gets 431), and what every connection has read
before its answer, head and early frames, is charged to one account
(:class:`UnansweredRequests`), a share of the memory budget, until the answer. Past
it, the connections that have held their part longest are dropped without one.
"""

from __future__ import annotations

import dataclasses
import email.utils
import http
import time
import typing
from collections.abc import Generator
from types import MethodType

import msgspec
import structlog
from websockets.datastructures import Headers
from websockets.exceptions import (
    HeaderLineTooLong,
    InvalidHeader,
    InvalidMessage,
    RequestLineTooLong,
    TooManyHeaders,
)
from websockets.http11 import Request, Response
from websockets.protocol import Protocol, State
from websockets.server import ServerProtocol

from .http_refusals import (
    EMPTY_TARGET_HOST,
    HEADER_LINE_TOO_LONG,
    NOT_HTTP,
    REQUEST_LINE_TOO_LONG,
    TOO_MANY_HEADERS,
    MalformedHead,
    looks_like_request_line,
    request_line_fault,
    upgrade_refusal,
)
from .origins import host_fault
from .request_head import (
    MAX_HEAD_BYTES,
    HeadReader,
    RequestHeadTooLarge,
    parse_head,
)
from .stored_caps import RefusalLine

log = structlog.get_logger("bamboo_session.server")
_json = msgspec.json.Encoder()
_CODES = {
    http.HTTPStatus.UNAUTHORIZED: "unauthorized",
    http.HTTPStatus.FORBIDDEN: "forbidden",
    http.HTTPStatus.NOT_FOUND: "not_found",
    http.HTTPStatus.TOO_MANY_REQUESTS: "rate_limited",
    http.HTTPStatus.INTERNAL_SERVER_ERROR: "internal",
    http.HTTPStatus.SERVICE_UNAVAILABLE: "internal",
    # An upgrade in HTTP/1.0: the client's to fix, as any bad request.
    http.HTTPStatus.HTTP_VERSION_NOT_SUPPORTED: "bad_request",
}
ALLOWED_METHODS = "GET, HEAD"
# As request_gate.py words it in origin-form.
MORE_THAN_ONE_HOST = "more than one Host header"
# A request target must be ASCII (RFC 9112 3.2, RFC 3986): other characters go
# percent-encoded in UTF-8. websockets refuses one that is not with a codec's error,
# which would reach the client as "'ascii' codec can't decode byte 0xc3 in position 5".
NOT_ASCII_TARGET = (
    "invalid HTTP request: the request target is not ASCII; percent-encode other "
    "characters as UTF-8 (RFC 3986)"
)


class Holder(typing.Protocol):
    def evict(self) -> None:
        """Drop the connection, giving back its charge at once (:meth:`give_back`)."""


class UnansweredRequests:
    """Bytes read from connections whose request is not answered yet, against a limit;
    each connection charges what it reads until its answer (``http_wire.py``).

    Past the limit, room is made by dropping the connections that have held a charge
    the longest: a client sends its request in one write and is answered within
    milliseconds, so the oldest holders are the slow or stalled heads an attacker
    keeps open. Dropping the newcomer instead let about 1,100 stalled 16 KiB heads
    keep every new client out for as long as their open timeout (10 s), again and
    again."""

    __slots__ = ("_holders", "_line", "_on_drop", "limit", "used")

    def __init__(self, limit: int, on_drop: typing.Callable[[], None] = lambda: None) -> None:
        self.limit = limit
        self.used = 0
        self._holders: dict[Holder, None] = {}  # those with a charge, oldest first
        self._on_drop = on_drop  # counts a drop (bamboo_http_requests_dropped_total)
        self._line = RefusalLine()  # the first drop logged, then one line a minute

    def take(self, holder: Holder, size: int) -> bool:
        """Charge ``size`` bytes to ``holder``, dropping the oldest other holders while
        it would go past the limit; False (nothing charged) if even that cannot make
        room."""
        if size <= 0:
            return True
        while self.used + size > self.limit:
            oldest = next((other for other in self._holders if other is not holder), None)
            if oldest is None:
                return False
            oldest.evict()
            self._dropped()
        self.used += size
        self._holders.setdefault(holder, None)
        return True

    def give_back(self, holder: Holder, size: int) -> None:
        """``holder``'s whole charge, ``size`` bytes, is given back."""
        self.used -= size
        del self._holders[holder]

    def _dropped(self) -> None:
        """A drop is counted, and told in the log: the peers dropped get no answer, so
        without it a flood of stalled heads (or a burst past the share) was seen nowhere."""
        self._on_drop()
        suppressed = self._line.take(time.monotonic())
        if suppressed is not None:
            log.warning(
                "request dropped unanswered: requests not answered yet hold their share",
                limit=self.limit,
                suppressed=suppressed,
                hint="slow or stalled heads (slowloris), or a burst of requests larger "
                "than a sixteenth of --memory-budget",
            )


def error_body(status: http.HTTPStatus, message: str) -> tuple[bytes, str]:
    """The JSON error body for ``status`` and its ``code``."""
    code = _CODES.get(status, "internal" if status >= 500 else "bad_request")
    return _json.encode({"error": {"code": code, "message": message}}), code


def upgrade_reject(
    protocol: ServerProtocol,
) -> typing.Callable[[http.HTTPStatus | int, str], Response]:
    """``protocol.reject``: websockets' refusal of a failed upgrade, as JSON, worded by
    the exception it refuses for (http_refusals.py), not by websockets' text. A method
    bound to ``protocol``, which keeps it for the connection's life: a closure's
    function and cell cost every idle connection some 200 bytes more (h383)."""
    return MethodType(_json_upgrade_refusal, protocol)


def _json_upgrade_refusal(
    protocol: ServerProtocol, status: int | http.HTTPStatus, text: str
) -> Response:
    status = http.HTTPStatus(status)
    refused = protocol.handshake_exc
    response = json_reject(status, upgrade_refusal(status, refused))
    if isinstance(refused, InvalidHeader) and refused.name == "Sec-WebSocket-Version":
        # RFC 6455 4.2.2, 4.4: a refused version is answered with the one spoken.
        response.headers["Sec-WebSocket-Version"] = "13"
    return response


def json_reject(status: int | http.HTTPStatus, text: str) -> Response:
    """A refusal with a JSON body, saying ``text``."""
    status = http.HTTPStatus(status)
    body, _ = error_body(status, text.strip().replace("\n\n", " ").replace("\n", " "))
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(body))),
            ("Content-Type", "application/json"),
            ("Cache-Control", "no-store"),
        ]
    )
    return Response(status.value, status.phrase, headers, body)


def parse_request(protocol: ServerProtocol) -> Generator[None]:
    """``ServerProtocol.parse`` (websockets 17), except that a request whose line parsed
    but which has a body gets 405 instead of a dropped connection, and that its head
    is read and parsed by request_head.py (the same request, or the same refusal)."""
    head = HeadReader(protocol)
    try:
        request = in_origin_form((yield from parse_head(head)))
    except Exception as exc:
        response = _refusal(exc, head.first_line)
        if response is None:
            yield from _parse_refused(protocol, exc)
            return  # pragma: no cover - the generator above never ends
        if _asks_head(head):
            response.body = b""  # its status and headers only (RFC 9110 9.3.2)
        protocol.handshake_exc = exc
        protocol.send_response(response)
        yield
        return  # pragma: no cover - send_response replaced this parser
    protocol.events.append(request)
    # Nothing of the request is kept past the handshake, the headers nor what read them.
    del request, head
    # Bytes after the request wait for its answer. A refusal discards them (its
    # send_response replaces this parser); an accepted upgrade resumes it (handshake
    # above). Read at once, they were frames of a connection not yet open: a stray CRLF
    # after a GET failed the connection under the answer being sent (AssertionError).
    # The peer's end of stream ends the wait: it comes once the request is answered
    # (http_wire.py holds it till then), and websockets must see it to let go.
    while protocol.state is State.CONNECTING and not protocol.reader.eof:
        yield
    # websockets' frame parser takes this one's place, as websockets' own parse would
    # go on: this generator, passing each read on for the connection's whole life,
    # held its frame on every idle connection (some 250 bytes, h383).
    protocol.parser = Protocol.parse(protocol)
    next(protocol.parser)
    yield  # pragma: no cover - nothing resumes this generator once replaced


def in_origin_form(request: Request) -> Request:
    """A request whose target is in absolute-form (``http://host:port/path?query``),
    which a server must accept (RFC 9112 3.2.2), as the same request in origin-form:
    routed by its path and query, its host in place of the Host header's, which the
    RFC has the server ignore then. One without a host (``http:///path``) is refused,
    as RFC 9110 4.2.1 has a recipient do: as an empty Host, it was served. The Host
    header it came with is checked first, as any request's (:func:`host_fault`, and
    only one): RFC 9112 3.2 has it refused whatever the target."""
    target = request.path
    scheme, separator, rest = target.partition("://")
    if target.startswith("/") or not separator or scheme.lower() not in _SCHEMES:
        return request
    end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, path = rest[:end], rest[end:]
    if not authority:
        raise MalformedHead(EMPTY_TARGET_HOST)
    headers = request.headers
    received = headers.get_all("Host")
    # RFC 9112 3.2 has a server answer 400 to any HTTP/1.1 request without Host, and to
    # any with several or an invalid one, whatever its target: the check in
    # request_gate.py sees only the target's host put in its place, so the one received
    # is judged here.
    if len(received) > 1:
        raise MalformedHead(MORE_THAN_ONE_HOST)
    fault = host_fault(received[0] if received else None, request.protocol)
    if fault is not None:
        raise MalformedHead(fault)
    if received:
        del headers["Host"]
    headers["Host"] = authority
    origin_form = "/" + path if path.startswith("?") or not path else path
    # Its method and version as they came: a HEAD, an OPTIONS, a POST or an HTTP/1.0
    # request is answered as such, not as the GET of HTTP/1.1 a new Request would be.
    return dataclasses.replace(request, path=origin_form, headers=headers)


_SCHEMES = frozenset({"http", "https", "ws", "wss"})


def _refusal(exc: Exception, first_line: list[bytes]) -> Response | None:
    """The answer to a request that did not parse, or None to drop the connection (it
    was not HTTP at all, or the peer is gone: nothing sensible to say)."""
    too_large = http.HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
    if isinstance(exc, RequestLineTooLong):
        return json_reject(http.HTTPStatus.REQUEST_URI_TOO_LONG, REQUEST_LINE_TOO_LONG)
    if isinstance(exc, RequestHeadTooLarge):
        return json_reject(too_large, f"request head over {MAX_HEAD_BYTES} bytes")
    if isinstance(exc, HeaderLineTooLong):
        return json_reject(too_large, HEADER_LINE_TOO_LONG)
    if isinstance(exc, TooManyHeaders):
        return json_reject(too_large, TOO_MANY_HEADERS)
    if isinstance(exc, EOFError) or not first_line:
        return None
    if not looks_like_request_line(first_line[0]):
        return None
    fault = request_line_fault(first_line[0])
    if fault is not None:
        return json_reject(*fault)
    if isinstance(exc, MalformedHead):
        return json_reject(http.HTTPStatus.BAD_REQUEST, str(exc))
    # websockets refuses a body with these two, once the request line and the
    # headers have parsed (Content-Length other than 0, or Transfer-Encoding).
    if isinstance(exc, NotImplementedError) or str(exc) == "unsupported request body":
        response = json_reject(
            http.HTTPStatus.METHOD_NOT_ALLOWED,
            f"only {ALLOWED_METHODS} without a body are served here",
        )
        response.headers["Allow"] = ALLOWED_METHODS
        return response
    if isinstance(exc, UnicodeDecodeError):  # the method is letters: the path
        return json_reject(http.HTTPStatus.BAD_REQUEST, NOT_ASCII_TARGET)
    # What websockets' parser refuses past the checks of http_refusals.py, if anything:
    # its text would echo what the peer sent.
    return json_reject(http.HTTPStatus.BAD_REQUEST, NOT_HTTP)


def _asks_head(head: HeadReader) -> bool:
    """Whether the request refused is a HEAD: by its request line, or by the bytes a
    request line too long to be taken begins with. Its answer then has no body: one
    written after the head is bytes a client reading a HEAD's answer takes for the
    next answer's (h419: every refusal as the head was read had it)."""
    line = head.first_line[0] if head.first_line else head.reader.buffer[:5]
    return line.startswith(b"HEAD ")


def _parse_refused(protocol: ServerProtocol, exc: Exception) -> Generator[None]:
    """What websockets does with a request that is not HTTP: drop the connection."""
    protocol.handshake_exc = InvalidMessage("did not receive a valid HTTP request")
    protocol.handshake_exc.__cause__ = exc
    protocol.send_eof()
    protocol.parser = protocol.discard()
    next(protocol.parser)
    yield

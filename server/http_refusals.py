"""What a refusal of a request that does not parse, or of an upgrade that fails, says:
in this server's words, naming what was wrong, never websockets' own text (which is
worded for its own users, may change with its releases, and echoes header values the
peer sent).

A request's head is checked here line by line as it is read (request_head.py
``HeadReader``), against RFC 9112 and RFC 9110, before websockets' parser sees each
line: a fault is raised as :class:`MalformedHead`, whose message is the answer's
(400). A line websockets would misread is handed to it in the one form it takes
(:class:`HeadChecks`): a Content-Length of ``00`` as ``0``, not a body; an HTTP/1.2
request line as HTTP/1.1, not 505. websockets' parser checks the same, so what it
refuses after these checks is only what they missed, answered in general words. A
failed upgrade is worded from the exception websockets raised
(``protocol.handshake_exc``): :func:`upgrade_refusal`.
"""

from __future__ import annotations

import http
import re

from websockets.exceptions import (
    InvalidHeader,
    InvalidHeaderFormat,
    InvalidHeaderValue,
    InvalidMethod,
    InvalidOrigin,
    InvalidProtocol,
    InvalidUpgrade,
    NegotiationError,
)
from websockets.http11 import MAX_LINE_LENGTH, MAX_NUM_HEADERS

# RFC 9110 5.6.2 (token) and 5.5 (field-value: visible ASCII, obs-text, space, tab).
_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
_DIGITS = re.compile(rb"[0-9]+")
# A header line that every check of HeadChecks.header_line passes as it is, in one
# match: a token, its colon, a value without control characters, CRLF; not a
# Content-Length, which is rewritten. The checks run one by one only on the others.
_PLAIN_HEADER_LINE = re.compile(
    rb"(?!(?i:content-length):)[-!#$%&'*+.^_`|~0-9a-zA-Z]+:[\t\x20-\x7e\x80-\xff]*\r\n"
)
# Header lines that all pass as they are, then the empty line that ends the head: every
# check of a head's headers in one match (request_head.py); and a plain line's fields.
PLAIN_HEADERS = re.compile(rb"(?:%s)*\r\n" % _PLAIN_HEADER_LINE.pattern)
PLAIN_FIELD = re.compile(rb"([-!#$%&'*+.^_`|~0-9a-zA-Z]+):([\t\x20-\x7e\x80-\xff]*)\r\n")
_HTTP_VERSION = re.compile(rb"HTTP/[0-9](\.[0-9])?")
# HTTP/1.2 to 1.9: a later minor version of the major version served here, answered as
# the highest minor version it serves, HTTP/1.1 (RFC 9112 2.3, RFC 9110 6.2).
_LATER_MINOR_VERSION = re.compile(rb"HTTP/1\.[2-9]")
# RFC 3986's characters are printable ASCII: a control character or a space in a target
# could only be a fault (RFC 9112 3.2), and one a proxy in front may read otherwise.
_TARGET_CONTROL = re.compile(rb"[\x00-\x20\x7f]")
_HTTP_METHODS = frozenset(
    (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH")
)
NAME_SHOWN = 64  # characters of a header name a message repeats at most

NOT_HTTP = "the request is not valid HTTP/1.1"
# websockets counts a line with its CRLF: one of 8,191 bytes and its CRLF is over.
REQUEST_LINE_TOO_LONG = f"request line over {MAX_LINE_LENGTH} bytes with its CRLF"
HEADER_LINE_TOO_LONG = f"a header line over {MAX_LINE_LENGTH} bytes with its CRLF"
TOO_MANY_HEADERS = f"more than {MAX_NUM_HEADERS} header lines"
BAD_REQUEST_LINE = "the request line is not METHOD TARGET HTTP/1.1, one space apart (RFC 9112 3)"
BARE_LF = "a line of the request head ends with LF alone: lines end with CRLF (RFC 9112 2.2)"
OBS_FOLD = (
    "a header line starts with a space or tab (obsolete line folding, RFC 9112 5.2): "
    "send each header on one line"
)
NO_COLON = "a header line has no colon: a header is name: value (RFC 9112 5)"
SPACE_BEFORE_COLON = "whitespace between a header's name and its colon (RFC 9112 5.1)"
BAD_CONTENT_LENGTH = "Content-Length must be a number of bytes, in digits (RFC 9110 8.6)"
TARGET_CONTROL = (
    "the request target has control characters: percent-encode them (RFC 9112 3.2, RFC 3986)"
)
EMPTY_TARGET_HOST = "the request target's authority names no host (RFC 9110 4.2.1)"
CONTENT_LENGTHS_DIFFER = "more than one Content-Length, with different values (RFC 9112 6.3)"
WEBSOCKET_ONLY = (
    "this is a WebSocket endpoint: an upgrade needs Connection: Upgrade and Upgrade: websocket"
)


def looks_like_request_line(line: bytes) -> bool:
    """Whether a peer meant ``line`` as an HTTP request line: a method (letters), a
    space and more, and either an HTTP method of RFC 9110 9 (or PATCH) or a last word
    shaped as an HTTP version. A peer that sends anything else speaks another protocol
    (a TLS hello, a PROXY protocol header, an SMTP or SSH greeting, a probe), and is
    not answered: an answer in HTTP means nothing to it, and a proxy that sends a PROXY
    header to a server not told to expect one must see the connection fail, not pass an
    HTTP error on as if it were the answer to its client's request."""
    method, space, rest = _without_line_end(line).partition(b" ")
    if not (space and method.isalpha() and rest):
        return False
    return method in _HTTP_METHODS or rest.rpartition(b" ")[2].startswith(b"HTTP/")


def may_begin_request_line(start: bytes) -> bool:
    """Whether ``start``, the first bytes of a head not yet whole (empty lines before it
    left out), may be the start of an HTTP request line: letters so far, or an HTTP
    method and a space. A peer that sent anything else (a TLS hello, an SSH greeting)
    speaks another protocol, and is no more answered late than on time
    (:func:`looks_like_request_line`)."""
    method, space, _ = start.partition(b" ")
    if not method.isalpha():  # ASCII letters: bytes know no others
        return False
    return not space or method in _HTTP_METHODS


def request_line_fault(line: bytes) -> tuple[http.HTTPStatus, str] | None:
    """The answer to a request line meant as one (:func:`looks_like_request_line`) that
    is not ``METHOD TARGET HTTP/1.1`` (or HTTP/1.0); None for one that is."""
    parts = _without_line_end(line).split(b" ")
    if len(parts) == 3 and (
        parts[2] in (b"HTTP/1.1", b"HTTP/1.0") or _LATER_MINOR_VERSION.fullmatch(parts[2])
    ):
        return None
    if len(parts) == 3 and _HTTP_VERSION.fullmatch(parts[2]):
        version = parts[2].decode("ascii")
        return (
            http.HTTPStatus.HTTP_VERSION_NOT_SUPPORTED,
            f"{version} is not served here: HTTP/1.1 (or 1.0) only",
        )
    return http.HTTPStatus.BAD_REQUEST, BAD_REQUEST_LINE


def _without_line_end(line: bytes | bytearray) -> bytes | bytearray:
    """``line`` without its LF and the one CR before it: a CR before that is the
    line's, a fault (RFC 9112 2.2), not a line end to strip."""
    line = line.removesuffix(b"\n")
    return line.removesuffix(b"\r")


class MalformedHead(ValueError):
    """A request head that is not valid HTTP/1.1; the message says where, for the 400."""


class HeadChecks:
    """The checks of one request's head, a line at a time, as it is read. Each check
    returns the line websockets' parser is to read: the line itself, or the same in the
    one form that parser takes (an HTTP/1.2 request line as HTTP/1.1, a Content-Length
    as its value in digits without leading zeros)."""

    __slots__ = ("content_length",)

    def __init__(self) -> None:
        self.content_length: bytes | None = None  # the first one's value, as a number

    def request_line(self, line: bytes | bytearray) -> bytes | bytearray:
        if not line.endswith(b"\r\n"):
            raise MalformedHead(BARE_LF)
        parts = line[:-2].split(b" ")
        if len(parts) > 1 and _TARGET_CONTROL.search(parts[1]):
            raise MalformedHead(TARGET_CONTROL)
        if len(parts) == 3 and _LATER_MINOR_VERSION.fullmatch(parts[2]):
            # websockets refuses any version but 1.1 and 1.0 (ValueError, then 505):
            # it reads this one as the 1.1 it is served as, upgrades included.
            return b"%s %s HTTP/1.1\r\n" % (parts[0], parts[1])
        return line

    def header_line(self, line: bytes | bytearray) -> bytes | bytearray:
        """Raises :class:`MalformedHead` unless ``line`` (CRLF included) is a valid
        header line, or the empty line that ends the head."""
        if _PLAIN_HEADER_LINE.fullmatch(line):
            return line  # the common case: 7 to 9 calls of the checks below in one
        if not line.endswith(b"\r\n"):
            raise MalformedHead(BARE_LF)
        whole, line = line, line[:-2]
        if not line:
            return whole
        if line[:1] in (b" ", b"\t"):
            raise MalformedHead(OBS_FOLD)
        name, colon, value = line.partition(b":")
        if not colon:
            raise MalformedHead(NO_COLON)
        if not _TOKEN.fullmatch(name):
            if _TOKEN.fullmatch(name.rstrip(b" \t")):
                raise MalformedHead(SPACE_BEFORE_COLON)
            raise MalformedHead(f"{_shown(name)} is not a header name: {_TOKEN_RULE}")
        value = value.strip(b" \t")
        shown = name[:NAME_SHOWN].decode("ascii")  # a token: ASCII
        if not _FIELD_VALUE.fullmatch(value):
            raise MalformedHead(f"the value of {shown} has control characters (RFC 9110 5.5)")
        if name.lower() == b"content-length":
            # websockets takes "0" alone for no body: "00" was answered 405, as a body.
            return b"%s: %s\r\n" % (name, self._content_length(value))
        return whole

    def _content_length(self, value: bytes | bytearray) -> bytes:
        """The number of bytes a Content-Length says, in digits without leading zeros
        ("0" for none). A list of the same number (``0, 0``, as an upstream that joins
        header lines may send) is that number, as several lines of it are (RFC 9110
        8.6); numbers that differ, in one line or several, are refused."""
        numbers = {_number(element.strip(b" \t")) for element in value.split(b",")}
        if self.content_length is not None:
            numbers.add(self.content_length)
        if len(numbers) > 1:
            raise MalformedHead(CONTENT_LENGTHS_DIFFER)
        self.content_length = numbers.pop()
        return self.content_length


def _number(digits: bytes | bytearray) -> bytes:
    """``digits`` without leading zeros, compared as text, not as int(): Python refuses
    to convert more than 4,300 digits (ValueError), which was answered as not HTTP."""
    if not _DIGITS.fullmatch(digits):
        raise MalformedHead(BAD_CONTENT_LENGTH)
    return bytes(digits.lstrip(b"0") or b"0")


_TOKEN_RULE = "letters, digits and !#$%&'*+-.^_`|~ only (RFC 9110 5.6.2)"


def _shown(name: bytes | bytearray) -> str:
    """A header name as a message may repeat it: printable ASCII, shortened."""
    text = name[:NAME_SHOWN].decode("ascii", "replace")
    if text.isascii() and text.isprintable():  # "replace" made U+FFFD of other bytes
        return repr(text)
    return "a header's name"


def upgrade_refusal(status: http.HTTPStatus, exc: BaseException | None) -> str:
    """What the refusal of a failed upgrade says: websockets answers ``status`` for
    ``exc`` (ServerProtocol.accept, or a failing process_request: None or another
    exception, 500)."""
    if isinstance(exc, InvalidUpgrade):
        return WEBSOCKET_ONLY
    if isinstance(exc, InvalidOrigin):
        return "origin not allowed"
    if isinstance(exc, InvalidHeader):
        return _header_refusal(exc)
    if isinstance(exc, InvalidMethod):
        return "only GET opens a WebSocket (RFC 6455 4.1)"
    if isinstance(exc, InvalidProtocol):
        return "a WebSocket upgrade needs HTTP/1.1 (RFC 6455 4.1)"
    if type(exc) is NegotiationError:
        return str(exc)  # server/subprotocols.py's own words
    if isinstance(exc, NegotiationError):
        return "the Sec-WebSocket-Extensions offer could not be negotiated (RFC 7692)"
    if status >= http.HTTPStatus.INTERNAL_SERVER_ERROR:
        return "internal error"
    return "the WebSocket upgrade request is not valid (RFC 6455 4.1)"


def _header_refusal(exc: InvalidHeader) -> str:
    name = exc.name  # one websockets names: a standard header, safe to repeat
    if exc.value is None:
        return f"the upgrade has no {name} header (RFC 6455 4.1)"
    if exc.value == "multiple values":
        return f"the upgrade has more than one {name} header"
    if isinstance(exc, InvalidHeaderFormat):
        return f"the {name} header is not well formed"
    if isinstance(exc, InvalidHeaderValue) and name == "Sec-WebSocket-Key":
        return "Sec-WebSocket-Key must be 16 bytes in base64 (RFC 6455 4.1)"
    if isinstance(exc, InvalidHeaderValue) and name == "Sec-WebSocket-Version":
        return "Sec-WebSocket-Version must be 13 (RFC 6455 4.1)"
    return f"the value of the {name} header is not valid"

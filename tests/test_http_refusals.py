"""Every refusal a client can provoke with a malformed request or a failed upgrade says,
in the server's words, what was wrong (server/http_refusals.py), in the JSON error shape
of docs/protocol.md: one request of each kind, sent as it is to a real server, and its
answer's status and message read. Before, websockets' own text came through
(``invalid HTTP request: invalid HTTP header line: …``, ``Failed to open a WebSocket
connection: …``), echoing what the peer sent; a bare LF, a request line that was not
``METHOD TARGET HTTP/1.1`` and an unsupported version were answered with nothing at all,
and a bad ``Content-Length`` got 405 as if it were a body."""

from __future__ import annotations

import json

import pytest

from bamboo_session.server import http_refusals as words
from tests.support import run_server
from tests.test_handshake_bytes import answer_of

HOST = b"Host: 127.0.0.1\r\n"
GET = b"GET /healthz HTTP/1.1\r\n" + HOST
KEY = b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
STREAM = b"GET /api/v1/stream HTTP/1.1\r\n" + HOST
UPGRADE = b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
VERSION = b"Sec-WebSocket-Version: 13\r\n"
BODY = "only GET, HEAD without a body are served here"

KINDS: dict[str, tuple[bytes, int, str]] = {
    "request line without a version": (
        b"GET /healthz\r\n" + HOST + b"\r\n",
        400,
        words.BAD_REQUEST_LINE,
    ),
    "request line with two spaces": (
        b"GET  /healthz HTTP/1.1\r\n" + HOST + b"\r\n",
        400,
        words.BAD_REQUEST_LINE,
    ),
    "request line with four parts": (
        b"GET /healthz HTTP/1.1 x\r\n" + HOST + b"\r\n",
        400,
        words.BAD_REQUEST_LINE,
    ),
    "another HTTP version": (
        b"GET /healthz HTTP/2.0\r\n" + HOST + b"\r\n",
        505,
        "HTTP/2.0 is not served here: HTTP/1.1 (or 1.0) only",
    ),
    "request line with a CR before its CRLF": (
        b"GET /healthz HTTP/1.1\r\r\n" + HOST + b"\r\n",
        400,
        words.BAD_REQUEST_LINE,
    ),
    "request line ending in a bare LF": (
        b"GET /healthz HTTP/1.1\n" + HOST + b"\r\n",
        400,
        words.BARE_LF,
    ),
    **{
        f"target with {name}": (
            b"GET /heal" + byte + b"thz HTTP/1.1\r\n" + HOST + b"\r\n",
            400,
            words.TARGET_CONTROL,
        )
        # Each was routed, the path read with it (404; a query's, 200): a proxy in
        # front that reads the target otherwise would see another request.
        for name, byte in (
            ("a tab", b"\t"),
            ("a NUL", b"\x00"),
            ("a bare CR", b"\r"),
            ("an escape", b"\x1b"),
            ("a DEL", b"\x7f"),
        )
    },
    "query with a control character": (
        b"GET /healthz?a=\x1b HTTP/1.1\r\n" + HOST + b"\r\n",
        400,
        words.TARGET_CONTROL,
    ),
    "header line ending in a bare LF": (GET + b"X-A: a\n\r\n", 400, words.BARE_LF),
    "header line without a colon": (GET + b"NoColonHere\r\n\r\n", 400, words.NO_COLON),
    "obs-fold": (GET + b"X-A: a\r\n  folded\r\n\r\n", 400, words.OBS_FOLD),
    "obs-fold with a colon": (GET + b"X-A: a\r\n\tb: c\r\n\r\n", 400, words.OBS_FOLD),
    "space before the colon": (GET + b"X-A : a\r\n\r\n", 400, words.SPACE_BEFORE_COLON),
    "bad header name": (
        GET + b"X(A): a\r\n\r\n",
        400,
        "'X(A)' is not a header name: letters, digits and !#$%&'*+-.^_`|~ only (RFC 9110 5.6.2)",
    ),
    # Not repeated: it is no ASCII, and came back as 'X-\ufffd\ufffd' (h419).
    "header name not in ASCII": (
        GET + b"X-\xc3\xa9: a\r\n\r\n",
        400,
        "a header's name is not a header name: letters, digits and !#$%&'*+-.^_`|~ only"
        " (RFC 9110 5.6.2)",
    ),
    "control character in a value": (
        GET + b"X-Secret: a\x01b\r\n\r\n",
        400,
        "the value of X-Secret has control characters (RFC 9110 5.5)",
    ),
    "too many headers": (
        GET + b"".join(b"X-%d: a\r\n" % i for i in range(130)) + b"\r\n",
        431,
        words.TOO_MANY_HEADERS,
    ),
    "header line too long": (
        GET + b"X-A: " + b"a" * 9000 + b"\r\n\r\n",
        431,
        words.HEADER_LINE_TOO_LONG,
    ),
    "request line too long": (
        b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n" + HOST + b"\r\n",
        414,
        words.REQUEST_LINE_TOO_LONG,
    ),
    "head too large": (
        GET + b"".join(b"X-%d: %s\r\n" % (i, b"a" * 4000) for i in range(5)) + b"\r\n",
        431,
        "request head over 16384 bytes",
    ),
    "Content-Lengths that differ, one of 5,000 digits": (
        GET + b"Content-Length: " + b"9" * 5000 + b"\r\nContent-Length: 1\r\n\r\n",
        400,
        words.CONTENT_LENGTHS_DIFFER,
    ),
    "Content-Length not a number": (
        GET + b"Content-Length: abc\r\n\r\n",
        400,
        words.BAD_CONTENT_LENGTH,
    ),
    "Content-Length negative": (GET + b"Content-Length: -1\r\n\r\n", 400, words.BAD_CONTENT_LENGTH),
    # A list of one number is that number (tests/test_http_served_as.py); of a word, not.
    "Content-Length as a list with a word": (
        GET + b"Content-Length: 0, x\r\n\r\n",
        400,
        words.BAD_CONTENT_LENGTH,
    ),
    "Content-Lengths that differ": (
        GET + b"Content-Length: 0\r\nContent-Length: 5\r\n\r\nhello",
        400,
        words.CONTENT_LENGTHS_DIFFER,
    ),
    "a body": (GET + b"Content-Length: 5\r\n\r\nhello", 405, BODY),
    "chunked": (GET + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 405, BODY),
    "upgrade without a key": (
        STREAM + UPGRADE + VERSION + b"\r\n",
        400,
        "the upgrade has no Sec-WebSocket-Key header (RFC 6455 4.1)",
    ),
    "upgrade with a bad key": (
        STREAM + UPGRADE + VERSION + b"Sec-WebSocket-Key: abc\r\n\r\n",
        400,
        "Sec-WebSocket-Key must be 16 bytes in base64 (RFC 6455 4.1)",
    ),
    "upgrade with two keys": (
        STREAM + UPGRADE + VERSION + KEY + KEY + b"\r\n",
        400,
        "the upgrade has more than one Sec-WebSocket-Key header",
    ),
    "upgrade without a version": (
        STREAM + UPGRADE + KEY + b"\r\n",
        400,
        "the upgrade has no Sec-WebSocket-Version header (RFC 6455 4.1)",
    ),
    "upgrade with another version": (
        STREAM + UPGRADE + KEY + b"Sec-WebSocket-Version: 8\r\n\r\n",
        400,
        "Sec-WebSocket-Version must be 13 (RFC 6455 4.1)",
    ),
    "upgrade without Connection": (
        STREAM + b"Upgrade: websocket\r\n" + VERSION + KEY + b"\r\n",
        426,
        words.WEBSOCKET_ONLY,
    ),
    "upgrade with a malformed Connection": (
        STREAM + b"Upgrade: websocket\r\nConnection: Upgrade x\r\n" + VERSION + KEY + b"\r\n",
        400,
        "the Connection header is not well formed",
    ),
    "upgrade with a malformed subprotocol offer": (
        STREAM + UPGRADE + VERSION + KEY + b"Sec-WebSocket-Protocol: a b\r\n\r\n",
        400,
        "the Sec-WebSocket-Protocol header is not well formed",
    ),
    "upgrade in HTTP/1.0": (
        b"GET /api/v1/stream HTTP/1.0\r\n" + HOST + UPGRADE + VERSION + KEY + b"\r\n",
        505,
        "a WebSocket upgrade needs HTTP/1.1 (RFC 6455 4.1)",
    ),
}


def read_refusal(answer: bytes) -> tuple[int, dict[str, str]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"\r\nContent-Type: application/json\r\n" in head, answer
    assert b"\r\nConnection: close\r\n" in head, answer
    body_json = json.loads(body)
    assert set(body_json) == {"error"}, body_json
    return int(head.split(b" ", 2)[1]), body_json["error"]


@pytest.mark.parametrize("kind", list(KINDS))
async def test_a_malformed_request_is_refused_in_our_words(kind: str) -> None:
    request, status, message = KINDS[kind]
    async with run_server() as server:
        answer = await answer_of(server.port, request)
    got_status, error = read_refusal(answer)
    assert (got_status, error) == (status, {"code": "bad_request", "message": message}), kind


async def test_a_line_of_8190_bytes_is_served_one_of_8191_is_refused_its_crlf_counted() -> None:
    """websockets reads a line of at most 8,192 bytes, its CRLF included: the refusal
    says so (it said "over 8192 bytes" of a line of 8,191)."""
    header = GET + b"X-A: " + b"a" * (8190 - len(b"X-A: ")) + b"\r\n"
    target = b"/healthz?" + b"a" * (8190 - len(b"GET /healthz? HTTP/1.1"))
    request_line = b"GET " + target + b" HTTP/1.1\r\n"
    assert len(header) - len(GET) == len(request_line) == 8192  # each line with its CRLF
    async with run_server() as server:
        for fits in (header + b"\r\n", request_line + HOST + b"\r\n"):
            assert (await answer_of(server.port, fits)).startswith(b"HTTP/1.1 200 "), fits[:40]
        header_over = GET + b"X-A: a" + header[len(GET) + len(b"X-A: ") :] + b"\r\n"
        line_over = b"GET /healthz?a" + request_line[len(b"GET /healthz?") :] + HOST + b"\r\n"
        refusals = [read_refusal(await answer_of(server.port, r)) for r in (header_over, line_over)]
    assert refusals == [
        (431, {"code": "bad_request", "message": "a header line over 8192 bytes with its CRLF"}),
        (414, {"code": "bad_request", "message": "request line over 8192 bytes with its CRLF"}),
    ]


async def test_a_head_of_128_header_lines_is_served_one_of_129_is_431() -> None:
    """The table of limits says 128 headers, ``Host`` among them; the refusals above
    send 131."""
    lines = [HOST] + [b"X-%d: a\r\n" % i for i in range(128)]
    async with run_server() as server:
        served = await answer_of(
            server.port, b"GET /healthz HTTP/1.1\r\n" + b"".join(lines[:128]) + b"\r\n"
        )
        refused = await answer_of(
            server.port, b"GET /healthz HTTP/1.1\r\n" + b"".join(lines) + b"\r\n"
        )
    assert served.startswith(b"HTTP/1.1 200 "), served
    error = {"code": "bad_request", "message": "more than 128 header lines"}
    assert read_refusal(refused) == (431, error)


def names_version_13(answer: bytes) -> bool:
    """Whether the answer's head carries ``Sec-WebSocket-Version: 13``."""
    head = answer.partition(b"\r\n\r\n")[0].lower()
    return b"\r\nsec-websocket-version: 13\r\n" in head + b"\r\n"


# Upgrades refused for their version: none, another, two, one that is no number.
VERSION_REFUSALS = {
    b"": "the upgrade has no Sec-WebSocket-Version header (RFC 6455 4.1)",
    b"Sec-WebSocket-Version: 8\r\n": "Sec-WebSocket-Version must be 13 (RFC 6455 4.1)",
    b"Sec-WebSocket-Version: 14\r\n": "Sec-WebSocket-Version must be 13 (RFC 6455 4.1)",
    b"Sec-WebSocket-Version: x13\r\n": "Sec-WebSocket-Version must be 13 (RFC 6455 4.1)",
    VERSION + VERSION: "the upgrade has more than one Sec-WebSocket-Version header",
}


async def test_an_upgrade_of_another_version_is_told_the_version_served() -> None:
    """RFC 6455 4.2.2 and 4.4: the refusal of a version the server does not speak names,
    in Sec-WebSocket-Version, the one it does, so that a client may try that one; a
    refusal for anything else does not."""
    async with run_server() as server:
        for version, message in VERSION_REFUSALS.items():
            answer = await answer_of(server.port, STREAM + UPGRADE + KEY + version + b"\r\n")
            error = {"code": "bad_request", "message": message}
            assert read_refusal(answer) == (400, error), answer
            assert names_version_13(answer), answer
        for kind in ("upgrade with a bad key", "upgrade without Connection", "upgrade in HTTP/1.0"):
            answer = await answer_of(server.port, KINDS[kind][0])
            assert not names_version_13(answer), (kind, answer)
        for other in (b"GET /elsewhere HTTP/1.1\r\n", b"GET /api/v1/stream/.. HTTP/1.1\r\n"):
            answer = await answer_of(server.port, other + HOST + UPGRADE + KEY + VERSION + b"\r\n")
            assert not names_version_13(answer), answer


async def test_a_body_is_refused_before_the_host_and_a_method_after_it() -> None:
    """docs/protocol.md, Order of checks, step 1: a malformed head, then a body, are
    refused as the request is read, whatever its Host; two Upgrade headers (or Host...)
    once it is read; a method other than GET and HEAD once the Host passed."""
    evil = b"Host: evil.example\r\n"
    body = b"Content-Length: 1\r\n\r\nx"
    sessions = b"GET /api/v1/sessions HTTP/1.1\r\n"
    async with run_server() as server:
        answers = [
            read_refusal(await answer_of(server.port, request))
            for request in (
                sessions + evil + body,
                sessions + body,
                sessions + HOST + b"X y: z\r\n" + body,
                sessions + HOST + HOST + body,
                b"POST /api/v1/sessions HTTP/1.1\r\n" + evil + b"\r\n",
                b"POST /api/v1/sessions HTTP/1.1\r\n" + HOST + b"Upgrade: a\r\nUpgrade: b\r\n\r\n",
                b"POST /api/v1/sessions HTTP/1.1\r\n" + HOST + b"\r\n",
            )
        ]
    assert [status for status, _ in answers] == [405, 405, 400, 405, 403, 400, 405], answers
    assert answers[0][1]["message"] == BODY
    assert answers[5][1]["message"] == "more than one Upgrade header"


async def test_what_is_not_http_at_all_is_still_not_answered() -> None:
    async with run_server() as server:
        for not_http in NOT_HTTP:
            assert await answer_of(server.port, not_http) == b"", not_http


NOT_HTTP = (
    b"\x16\x03\x01\x02\x00\x01\x00\r\n\r\n",  # a TLS hello
    b"PING\r\n",
    b"SSH-2.0-x y\r\n",
    # A PROXY protocol header (v1, then v2's signature) before a request: a proxy that
    # sends one to a server not told to expect it must see its connection fail, not
    # pass on an HTTP 400 as its client's answer. v1 was answered 400.
    b"PROXY TCP4 127.0.0.1 127.0.0.1 40000 8080\r\n" + GET + b"\r\n",
    b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c" + bytes(12) + b"\r\n",
    b"EHLO client.example\r\n",  # SMTP, answered 400 as well
)


@pytest.mark.parametrize(
    ("line", "status"),
    [
        (b"PROPFIND /healthz HTTP/1.1", 405),  # a method not served, in HTTP/1.1
        (b"FOO /healthz HTTP/1.1", 405),
        (b"FOO /healthz HTTP/3", 505),
        (b"DELETE /healthz", 400),  # an HTTP method, no version
    ],
)
async def test_what_is_meant_as_http_is_answered(line: bytes, status: int) -> None:
    async with run_server() as server:
        answer = await answer_of(server.port, line + b"\r\n" + HOST + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer


# A HEAD refused as its head is read, or by websockets' checks of an upgrade: the status
# and headers its GET would get, and no body (RFC 9110 9.3.2). Each had the JSON body
# written after its head, bytes a client reading a HEAD's answer takes for the next
# answer's (h419).
HEAD_REFUSALS = {
    "a malformed header": (b"HEAD /healthz HTTP/1.1\r\n" + HOST + b"X-A : b\r\n\r\n", 400),
    "a body": (b"HEAD /healthz HTTP/1.1\r\n" + HOST + b"Content-Length: 5\r\n\r\nhello", 405),
    "a request line too long": (
        b"HEAD /healthz?" + b"a" * 8200 + b" HTTP/1.1\r\n" + HOST + b"\r\n",
        414,
    ),
    "a header line too long": (
        b"HEAD /healthz HTTP/1.1\r\n" + HOST + b"X-A: " + b"a" * 8200 + b"\r\n\r\n",
        431,
    ),
    "another HTTP version": (b"HEAD /healthz HTTP/2.0\r\n" + HOST + b"\r\n", 505),
    "an upgrade": (
        b"HEAD /api/v1/stream HTTP/1.1\r\n" + HOST + UPGRADE + KEY + VERSION + b"\r\n",
        405,
    ),
}


async def test_a_refused_head_gets_the_status_and_headers_without_the_body() -> None:
    async with run_server() as server:
        for kind, (request, status) in HEAD_REFUSALS.items():
            answer = await answer_of(server.port, request)
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 %d " % status), (kind, answer)
            assert b"\r\nContent-Type: application/json\r\n" in head + b"\r\n", (kind, answer)
            assert body == b"", (kind, answer)
            if kind != "an upgrade":  # whose GET opens a WebSocket
                # Its GET is refused alike, with the body.
                get = await answer_of(server.port, b"GET " + request.removeprefix(b"HEAD "))
                assert read_refusal(get)[0] == status, (kind, get)

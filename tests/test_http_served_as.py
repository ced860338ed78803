"""Requests a strict reading of RFC 9110 and RFC 9112 still serves, sent as they are
to a real server (server/http_refusals.py, server/origins.py): a ``Content-Length`` of
zeros is an empty body, on every route and on the upgrade, as ``0`` is (``00`` was
answered 405, as if it were a body: websockets compares the header's text with "0");
a request line in HTTP/1.2 to 1.9 is served as HTTP/1.1 (it was 505); and a ``Host``
(or an absolute-form target's authority) whose port is not a port is 400, even where
its host passes the host check (``Host: 127.0.0.1:8000evil`` was served)."""

from __future__ import annotations

import asyncio
import base64
import json
import os

import pytest

from bamboo_session.server import http_refusals as words
from bamboo_session.server.origins import MALFORMED_AUTHORITY
from tests.support import run_server
from tests.test_handshake_bytes import answer_of

HOST = b"Host: 127.0.0.1\r\n"


def upgrade_request(version: bytes = b"HTTP/1.1", extra: bytes = b"", host: bytes = HOST) -> bytes:
    key = base64.b64encode(os.urandom(16))
    return (
        b"GET /api/v1/stream/served-as " + version + b"\r\n" + host
        + b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + key
        + b"\r\nSec-WebSocket-Version: 13\r\n" + extra + b"\r\n"
    )  # fmt: skip


async def status_line_of_upgrade(port: int, request: bytes) -> bytes:
    """The status line an upgrade is answered with (a 101 leaves the connection open)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        return await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()


def status_and_error(answer: bytes) -> tuple[int, dict[str, str] | None]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body).get("error") if status >= 400 else None


@pytest.mark.parametrize(
    "value", [b"00", b"000000", b" 0 ", b"\t00\t", b"0, 0", b"0,00", b"00 ,\t0"]
)
async def test_a_content_length_of_zeros_is_no_body_on_every_route(value: bytes) -> None:
    header = b"Content-Length: " + value + b"\r\n"
    async with run_server() as server:
        for path in (b"/healthz", b"/api/v1/sessions?limit=1", b"/nowhere"):
            request = b"GET " + path + b" HTTP/1.1\r\n" + HOST + header + b"\r\n"
            answer = await answer_of(server.port, request)
            expected = 404 if path == b"/nowhere" else 200
            assert status_and_error(answer)[0] == expected, (path, answer)
        answer = await answer_of(
            server.port, b"HEAD /healthz HTTP/1.1\r\n" + HOST + header + b"\r\n"
        )
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        status = await status_line_of_upgrade(server.port, upgrade_request(extra=header))
        assert status.startswith(b"HTTP/1.1 101 "), status


@pytest.mark.parametrize(
    ("headers", "status", "message"),
    [
        # The same checks as one Content-Length of digits: a body (405), a value that
        # is not a number (400), values that differ (400), in one line or in several.
        (b"Content-Length: 05, 5\r\n", 405, "only GET, HEAD without a body are served here"),
        (b"Content-Length: 00\r\nContent-Length: 5\r\n", 400, words.CONTENT_LENGTHS_DIFFER),
        (b"Content-Length: 0, 5\r\n", 400, words.CONTENT_LENGTHS_DIFFER),
        (b"Content-Length: 00\r\nContent-Length: 0, 1\r\n", 400, words.CONTENT_LENGTHS_DIFFER),
        (b"Content-Length: +0\r\n", 400, words.BAD_CONTENT_LENGTH),
        (b"Content-Length: 0,\r\n", 400, words.BAD_CONTENT_LENGTH),
        (b"Content-Length: 0 0\r\n", 400, words.BAD_CONTENT_LENGTH),
        (b"Content-Length: 0x0\r\n", 400, words.BAD_CONTENT_LENGTH),
    ],
)
async def test_content_lengths_of_digits_are_checked_as_numbers(
    headers: bytes, status: int, message: str
) -> None:
    async with run_server() as server:
        for request in (b"GET /healthz HTTP/1.1\r\n" + HOST + headers + b"\r\n",
                        upgrade_request(extra=headers)):  # fmt: skip
            answer = await answer_of(server.port, request)
            assert status_and_error(answer) == (
                status,
                {"code": "bad_request", "message": message},
            ), answer


@pytest.mark.parametrize("version", [b"HTTP/1.2", b"HTTP/1.9"])
async def test_a_higher_minor_version_of_http_1_is_served_as_http_1_1(version: bytes) -> None:
    async with run_server() as server:
        answer = await answer_of(server.port, b"GET /healthz " + version + b"\r\n" + HOST + b"\r\n")
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        # As 1.1, not 1.0: a whole history is streamed chunked (to HTTP/1.0 it is not).
        session = await server.manager.create_session("u", "t")
        path = f"/api/v1/sessions/{session.id}".encode()
        answer = await answer_of(
            server.port, b"GET " + path + b" " + version + b"\r\n" + HOST + b"\r\n"
        )
        head = answer.partition(b"\r\n\r\n")[0]
        assert head.startswith(b"HTTP/1.1 200 ") and b"\r\nTransfer-Encoding: chunked" in head, head
        status = await status_line_of_upgrade(server.port, upgrade_request(version))
        assert status.startswith(b"HTTP/1.1 101 "), status


@pytest.mark.parametrize("version", [b"HTTP/0.9", b"HTTP/2.0", b"HTTP/3.0", b"HTTP/2"])
async def test_other_major_versions_stay_505(version: bytes) -> None:
    async with run_server() as server:
        answer = await answer_of(server.port, b"GET /healthz " + version + b"\r\n" + HOST + b"\r\n")
    message = f"{version.decode()} is not served here: HTTP/1.1 (or 1.0) only"
    assert status_and_error(answer) == (505, {"code": "bad_request", "message": message})


MALFORMED = [
    "127.0.0.1:8000evil",
    "127.0.0.1:99999",
    "127.0.0.1:65536",
    "127.0.0.1:-1",
    "127.0.0.1: 80",
    "127.0.0.1:80:80",
    "localhost:8²",  # read as Latin-1, as websockets does: a digit to str.isdigit
    "[::1]:x",
    "[::1]x",
    "[::1",
    "::1",  # an IPv6 address outside brackets (RFC 3986 3.2.2)
    "bamboo.internal:8000evil",
]
WELL_FORMED = [
    "127.0.0.1:",
    "127.0.0.1:0",
    "127.0.0.1:65535",
    "127.0.0.1:00080",
    # More leading zeros than int() reads (4,300 digits): a ValueError, the request
    # unanswered, before the zeros were dropped for it.
    "127.0.0.1:" + "0" * 4400 + "80",
    "[::1]:",
    "[::1]",
]


def host_request(host: str, absolute: bool = False) -> bytes:
    if absolute:  # the target's authority is the host checked, not Host's
        return f"GET http://{host}/healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode("latin-1")
    return f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode("latin-1")


@pytest.mark.parametrize("allowed_hosts", [(), ("bamboo.internal", "*")])
async def test_a_host_whose_port_is_not_a_port_is_400(allowed_hosts: tuple[str, ...]) -> None:
    expected = (400, {"code": "bad_request", "message": MALFORMED_AUTHORITY})
    async with run_server(allowed_hosts=allowed_hosts) as server:
        for host in MALFORMED:
            for absolute in (False, True):
                if absolute and (not host.isascii() or " " in host):
                    continue  # a target with a space, or not ASCII: refused as such
                answer = await answer_of(server.port, host_request(host, absolute))
                assert status_and_error(answer) == expected, (host, absolute, answer)
            request = upgrade_request(host=f"Host: {host}\r\n".encode("latin-1"))
            assert status_and_error(await answer_of(server.port, request)) == expected, host
        for host in WELL_FORMED:
            for absolute in (False, True):
                answer = await answer_of(server.port, host_request(host, absolute))
                assert status_and_error(answer) == (200, None), (host, absolute, answer)

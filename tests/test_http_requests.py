"""How a request on the WebSocket port is read (server/http_requests.py), against a real
server: empty lines before the request line are skipped (RFC 9112 2.2), up to eight,
and counted in the head's 16 KiB; a request target that is not ASCII gets a 400 that
says so in our words, not the codec's."""

from __future__ import annotations

import asyncio
import base64
import json
import os

from bamboo_session.server.http_requests import NOT_ASCII_TARGET
from bamboo_session.server.origins import NO_HOST, USERINFO
from bamboo_session.server.request_head import MAX_HEAD_BYTES, MAX_LEADING_EMPTY_LINES
from tests.support import run_server
from tests.test_handshake_bytes import answer_of

HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer else 0


async def test_empty_lines_before_the_request_line_are_skipped() -> None:
    async with run_server() as server:
        for empty in (1, 2, MAX_LEADING_EMPTY_LINES):
            answer = await answer_of(server.port, b"\r\n" * empty + HEALTHZ)
            assert status_of(answer) == 200, (empty, answer)
        # One more than that is read as the request line: not HTTP, dropped as such.
        assert (
            await answer_of(server.port, b"\r\n" * (MAX_LEADING_EMPTY_LINES + 1) + HEALTHZ) == b""
        )
        # An upgrade too.
        key = base64.b64encode(os.urandom(16)).decode()
        upgrade = (
            "\r\nGET /api/v1/stream/crlf HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(upgrade.encode())
        status = await asyncio.wait_for(reader.readline(), 5)
        writer.close()
        assert status.startswith(b"HTTP/1.1 101 "), status


async def test_empty_lines_count_in_the_head_s_bytes() -> None:
    filler = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"f" * 4000) for i in range(4))
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + filler
    head += b"X-Last: " + b"l" * (MAX_HEAD_BYTES - len(head) - 8 - 4 - 6) + b"\r\n\r\n"
    assert len(head) == MAX_HEAD_BYTES - 6
    async with run_server() as server:
        assert status_of(await answer_of(server.port, b"\r\n" * 3 + head)) == 200
        answer = await answer_of(server.port, b"\r\n" * 4 + head)
        assert status_of(answer) == 431, answer


async def test_a_request_target_that_is_not_ascii_is_400_in_our_words() -> None:
    async with run_server() as server:
        for target in ("/api/v1/sessions/é", "/healthz?q=ü", "/é"):
            request = b"GET " + target.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            answer = await answer_of(server.port, request)
            head, _, body = answer.partition(b"\r\n\r\n")
            assert status_of(answer) == 400, answer
            assert b"Content-Type: application/json" in head
            error = json.loads(body)["error"]
            assert error == {"code": "bad_request", "message": NOT_ASCII_TARGET}
        # Percent-encoded, the same characters are a request like any other.
        answer = await answer_of(
            server.port, b"GET /healthz?q=%C3%BC HTTP/1.1\r\nHost: [::1]\r\n\r\n"
        )
        assert status_of(answer) == 200, answer


async def test_a_request_target_in_absolute_form_is_served_as_its_path() -> None:
    # RFC 9112 3.2.2: a server MUST accept the absolute-form, and takes the host from
    # it, not from the Host header. Before, its target was routed whole: 404.
    async with run_server() as server:
        here = f"127.0.0.1:{server.port}"
        for target in (f"http://{here}/healthz", f"HTTP://{here}/healthz"):
            request = f"GET {target} HTTP/1.1\r\nHost: {here}\r\n\r\n".encode()
            assert status_of(await answer_of(server.port, request)) == 200, target
        http_1_0 = f"GET http://{here}/healthz HTTP/1.0\r\n\r\n".encode()  # no Host at all
        assert status_of(await answer_of(server.port, http_1_0)) == 200
        request = f"GET http://{here}/api/v1/sessions?limit=1 HTTP/1.1\r\nHost: x\r\n\r\n"
        answer = await answer_of(server.port, request.encode())
        assert status_of(answer) == 200, answer
        assert json.loads(answer.partition(b"\r\n\r\n")[2])["sessions"] == []
        # The target's host is the one checked: a name rebound to this server reads
        # nothing, whatever the Host header says.
        request = f"GET http://rebound.example/healthz HTTP/1.1\r\nHost: {here}\r\n\r\n"
        assert status_of(await answer_of(server.port, request.encode())) == 403
        key = base64.b64encode(os.urandom(16)).decode()
        upgrade = (
            f"GET http://{here}/api/v1/stream/absolute HTTP/1.1\r\nHost: {here}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(upgrade.encode())
        assert status_of(await asyncio.wait_for(reader.readline(), 5)) == 101
        writer.close()


async def test_a_target_in_absolute_form_keeps_its_method_and_version() -> None:
    # It was rebuilt as a new request, of websockets' defaults: a HEAD was answered
    # as a GET (its body sent), a POST served as a GET, an HTTP/1.0 request as 1.1
    # (tests/test_whole_history_wire.py).
    async with run_server() as server:
        here = f"127.0.0.1:{server.port}"
        for target in ("/healthz", f"http://{here}/healthz"):
            head = f"HEAD {target} HTTP/1.1\r\nHost: {here}\r\n\r\n".encode()
            answer = await answer_of(server.port, head)
            assert status_of(answer) == 200, answer
            assert answer.endswith(b"\r\n\r\n"), answer  # no body after the head
            post = f"POST {target} HTTP/1.1\r\nHost: {here}\r\n\r\n".encode()
            assert status_of(await answer_of(server.port, post)) == 405, target


async def test_an_http_1_1_request_without_host_is_400() -> None:
    # RFC 9112 3.2: a server MUST answer 400 to an HTTP/1.1 request without Host. An
    # HTTP/1.0 one may lack it; an absolute-form target gives one.
    async with run_server() as server:
        for target in ("/healthz", "/api/v1/sessions", "/api/v1/stream/s", "/nowhere"):
            answer = await answer_of(server.port, f"GET {target} HTTP/1.1\r\n\r\n".encode())
            body = answer.partition(b"\r\n\r\n")[2]
            assert status_of(answer) == 400, answer
            assert json.loads(body)["error"] == {"code": "bad_request", "message": NO_HOST}
        key = base64.b64encode(os.urandom(16)).decode()
        upgrade = (
            "GET /api/v1/stream/nohost HTTP/1.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        assert status_of(await answer_of(server.port, upgrade.encode())) == 400
        assert status_of(await answer_of(server.port, b"GET /healthz HTTP/1.0\r\n\r\n")) == 200
        absolute = f"GET http://127.0.0.1:{server.port}/healthz HTTP/1.0\r\n\r\n"
        assert status_of(await answer_of(server.port, absolute.encode())) == 200


async def test_an_absolute_form_target_does_not_excuse_its_host_header() -> None:
    # RFC 9112 3.2 has a server answer 400 to any HTTP/1.1 request without Host, and to
    # any with several Host lines or an invalid one, whatever its target. The target's
    # host replaced the header before it was checked: all three were served (200), and
    # an upgrade without Host opened (101).
    async with run_server() as server:
        here = f"127.0.0.1:{server.port}"
        target = f"http://{here}/healthz"
        faults = {
            "": NO_HOST,
            f"Host: {here}\r\nHost: {here}\r\n": "more than one Host header",
            "Host: user@127.0.0.1\r\n": USERINFO,
        }
        for host_lines, message in faults.items():
            request = f"GET {target} HTTP/1.1\r\n{host_lines}\r\n".encode()
            answer = await answer_of(server.port, request)
            body = answer.partition(b"\r\n\r\n")[2]
            assert status_of(answer) == 400, (host_lines, answer)
            assert json.loads(body)["error"] == {"code": "bad_request", "message": message}
        key = base64.b64encode(os.urandom(16)).decode()
        upgrade = (
            f"GET http://{here}/api/v1/stream/nohost HTTP/1.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        assert status_of(await answer_of(server.port, upgrade.encode())) == 400
        # Its Host may name another host than the target's, which wins (RFC 9112 3.2.2).
        request = f"GET {target} HTTP/1.1\r\nHost: elsewhere.example\r\n\r\n".encode()
        assert status_of(await answer_of(server.port, request)) == 200


async def test_an_upgrade_in_absolute_form_keeps_its_method_and_version() -> None:
    # websockets refuses an upgrade that is not a GET of HTTP/1.1; rebuilt as a new
    # request of its defaults, a POST or an HTTP/1.0 one in absolute-form opened (101).
    async with run_server() as server:
        here = f"127.0.0.1:{server.port}"
        for method, version, status in (("POST", "HTTP/1.1", 405), ("GET", "HTTP/1.0", 505)):
            key = base64.b64encode(os.urandom(16)).decode()
            upgrade = (
                f"{method} http://{here}/api/v1/stream/s {version}\r\nHost: {here}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            answer = await answer_of(server.port, upgrade.encode())
            assert status_of(answer) == status, answer

"""A request head not whole when the handshake's deadline comes (server/request_wait.py
``answer_late_head``), on a real server over raw sockets: a peer that sent part of a
head, whether at once or a byte at a time, gets ``408 Request Timeout`` with
``Connection: close`` and a JSON error (a HEAD's without a body), then the server's end
of stream; one that sent nothing, empty lines only, or bytes that are no HTTP is closed
without a word. Before, every one of them was dropped without a word at 10 s."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from tests.instances import eventually
from tests.support import attach, run_server
from tests.test_server_metrics import scrape, value

DEADLINE = 0.5  # the handshake's (http_wire.OPEN_TIMEOUT), shortened for the test


async def _answer_to(port: int, pieces: list[bytes], pause: float = 0.0) -> tuple[bytes, float]:
    """What the server writes, read to its end of stream, to a peer that sends
    ``pieces`` with ``pause`` seconds between them, until it is answered, and never ends
    its head; and how long after the connection opened the server ended it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    opened = time.monotonic()

    async def send() -> None:
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(pause)

    sending = asyncio.create_task(send())
    try:
        answer = await asyncio.wait_for(reader.read(), 10 * DEADLINE + 5)
    except ConnectionResetError:
        answer = b""
    finally:
        sending.cancel()
        writer.transport.abort()
    return answer, time.monotonic() - opened


def _timed_out(answer: bytes) -> tuple[dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    assert status_line == "HTTP/1.1 408 Request Timeout", answer
    headers = {name.lower(): value.strip() for name, _, value in (x.partition(":") for x in lines)}
    assert headers["connection"] == "close"
    return headers, body


@pytest.fixture(autouse=True)
def _short_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("bamboo_session.server.http_wire.OPEN_TIMEOUT", DEADLINE)


@pytest.mark.parametrize(
    "pieces",
    [
        [b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"],  # no empty line after the headers
        [b"GET /api/v1/sessions?limit=1 HT"],  # half a request line
        [b"\r\n", b"G"],  # a method begun, behind an empty line
        # A whole request line of a method not served (405 on time, as are these):
        [b"PROPFIND /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"],
        [b"get /healthz HTTP/1.1\r\n"],
        [b"M3T /" + b"a" * 100 + b" HTTP/1.1\r\n"],  # its end past the first 32 bytes
        [b"\r\nPROPFIND /" + b"a" * 40, b"a" * 40 + b" HTTP/1.1\r\nHost: x\r\n"],
    ],
    ids=["headers", "request line", "a letter", "PROPFIND", "get", "long line", "in pieces"],
)
async def test_part_of_a_head_gets_408_and_the_end(pieces: list[bytes]) -> None:
    async with run_server() as server:
        answer, ended = await _answer_to(server.port, pieces)
        headers, body = _timed_out(answer)
        assert headers["content-type"] == "application/json"
        assert int(headers["content-length"]) == len(body)
        error = json.loads(body)["error"]
        assert error["code"] == "bad_request" and "did not arrive whole" in error["message"]
        assert DEADLINE * 0.9 <= ended < DEADLINE + 5
        # The server still answers: nothing of the late head is left held.
        assert server.unanswered_requests.used == 0


async def test_a_head_trickled_a_byte_at_a_time_gets_408_at_the_deadline() -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100
    pieces = [head[i : i + 1] for i in range(len(head))]
    async with run_server() as server:
        # Each byte keeps coming: the deadline counts from the connection, not the last byte.
        answer, ended = await _answer_to(server.port, pieces, pause=DEADLINE / 10)
        _timed_out(answer)
        assert ended < DEADLINE * 4


async def test_a_late_head_of_a_head_request_gets_408_without_a_body() -> None:
    async with run_server() as server:
        answer, _ = await _answer_to(server.port, [b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n"])
        headers, body = _timed_out(answer)
        assert body == b"" and int(headers["content-length"]) > 0


@pytest.mark.parametrize(
    "pieces",
    [
        [],
        [b"\r\n\r\n"],
        [b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"],
        [b"SSH-2.0-x"],
        [b"PROXY TCP4 127.0.0.1 127.0.0.1 5"],  # a PROXY header not whole: not HTTP yet
    ],
    ids=["nothing", "empty lines", "a TLS hello", "an SSH greeting", "a PROXY header"],
)
async def test_a_peer_that_sent_no_http_is_closed_without_a_word(pieces: list[bytes]) -> None:
    async with run_server() as server:
        answer, ended = await _answer_to(server.port, pieces)
        assert answer == b""
        assert DEADLINE * 0.9 <= ended < DEADLINE + 5


async def test_each_408_is_counted_in_the_metrics() -> None:
    # Counted as the other refusals of a request are (bamboo_http_rate_limited_total,
    # bamboo_http_requests_dropped_total): a slow or stalled head shows in /metrics.
    timed_out = "bamboo_http_requests_timed_out_total"
    async with run_server() as server:
        assert timed_out in await scrape(server)
        for pieces in ([b"GET /healthz HTTP/1.1\r\n"], [b"HEAD /healthz HT"]):
            _timed_out((await _answer_to(server.port, pieces))[0])
        # Closed without a word, not answered 408: not counted.
        assert (await _answer_to(server.port, [b"\r\n"]))[0] == b""
        assert (await _answer_to(server.port, [b"SSH-2.0-x"]))[0] == b""
        assert value(await scrape(server), timed_out) == 2


async def test_a_late_head_s_connection_ends_without_waiting_for_its_peer() -> None:
    # Other refusals wait up to the close timeout (5 s here) for the peer to close its
    # side; a peer that did not send its head in time is given no more.
    async with run_server(close_timeout=5) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\n")
            _timed_out(await asyncio.wait_for(reader.read(), 10 * DEADLINE + 5))
            await eventually(lambda: not server._open_connections, timeout=1.0)
        finally:
            writer.close()


async def test_an_upgraded_connection_keeps_nothing_of_its_head() -> None:
    # What judges a late head is kept while the head is read only: on an idle
    # WebSocket it would be some 70 bytes for the connection's life.
    async with run_server() as server, attach(server, "kept", create=True) as (_, welcome):
        assert welcome["type"] == "welcome"
        (connection,) = server._open_connections
        assert "_head_start" not in vars(connection)
        assert "_line_ended" not in vars(connection)

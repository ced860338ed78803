"""A peer that ignores ``Retry-After`` pays a connection for each refusal: a 429 closes
its connection as every answer does, and a request pipelined behind the refused one,
or sent after its answer on a connection meant to be kept alive (HTTP/1.1 or 1.0),
gets nothing. Real server, raw sockets. What a refusal costs the server against the
cheapest answers is bench/refusal_cost.py's (docs/protocol.md, Read allowance: why no
allowance bounds refusals)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from tests.support import run_server

LISTING = b"GET /api/v1/sessions?limit=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
KEPT_ALIVE = {
    "pipelined": (LISTING + b"\r\n") * 3,
    "HTTP/1.1 keep-alive": LISTING + b"Connection: keep-alive\r\n\r\n",
    "HTTP/1.0 keep-alive": b"GET /api/v1/sessions HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
}


async def _answers(port: int, request: bytes, again: bytes) -> bytes:
    """What the server writes to ``request``, read to its end of stream; ``again`` sent
    once the first answer's head is in (if the connection still takes it)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        got = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        # Gone already, or the request sent again reached a closed socket (a reset):
        # as good as no answer.
        with contextlib.suppress(ConnectionError):
            writer.write(again)
            await writer.drain()
        with contextlib.suppress(ConnectionResetError):
            got += await asyncio.wait_for(reader.read(), 5)
        return got
    finally:
        writer.close()


@pytest.mark.parametrize("kind", KEPT_ALIVE)
async def test_a_refused_peer_gets_one_answer_a_connection(kind: str) -> None:
    # An allowance of a byte: the first listing puts its peer in debt for seconds.
    async with run_server(rate_limit_bytes=1, rate_limit_bytes_burst=1) as server:
        first = await _answers(server.port, LISTING + b"\r\n", b"")
        assert first.startswith(b"HTTP/1.1 200 "), first
        got = await _answers(server.port, KEPT_ALIVE[kind], LISTING + b"\r\n")
    assert got.startswith(b"HTTP/1.1 429 "), got
    assert b"\r\nConnection: close\r\n" in got and b"\r\nRetry-After: " in got
    assert got.count(b"HTTP/1.") == 1, got  # nothing for the requests behind it

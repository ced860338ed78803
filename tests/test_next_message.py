"""The reader's ``next_message`` (server/whole_frames.py), which takes a message whole
in one frame from websockets' incoming queue itself where ``recv()`` went through three
coroutines of websockets' (h442), against websockets' own ``recv()``: the same messages
in the same order, fragmented or not, text or binary, control frames between fragments,
however often a read is cancelled, reading paused and resumed by the queue's high and
low marks; the same 1007 for text that is not UTF-8; the same exception as the
connection ends; the same ConcurrencyError for a second read while one waits.

Real websockets servers and clients on loopback; a server's handler reads with one or
the other. next_message reaches into websockets' Assembler (its queue, waiter, lock and
``maybe_resume``): a release that changes them fails here first.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import (
    ConcurrencyError,
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
)

from bamboo_session.server.whole_frames import next_message

Read = Callable[[ServerConnection], Awaitable[str | bytes]]


async def recv(ws: ServerConnection) -> str | bytes:
    return await ws.recv()


READS = pytest.mark.parametrize("read", [next_message, recv], ids=["next_message", "recv"])


def some_messages(rng: random.Random, count: int) -> list[str | bytes]:
    return [
        f"m{i}-é" * rng.randint(0, 40) if rng.random() < 0.5 else os.urandom(rng.randint(0, 300))
        for i in range(count)
    ]


async def in_two_fragments(message: str | bytes, cut: int) -> AsyncIterator[str | bytes]:
    yield message[:cut]
    await asyncio.sleep(0.001)  # the second fragment in a read of its own
    yield message[cut:]


async def send_all(
    client: ClientConnection, messages: list[str | bytes], rng: random.Random
) -> None:
    for message in messages:
        if rng.random() < 0.3 and len(message) > 1:
            await client.send(in_two_fragments(message, rng.randint(1, len(message) - 1)))
        else:
            await client.send(message)
        if rng.random() < 0.05:
            await client.ping()  # a control frame, between messages or (above) fragments


@READS
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_messages_come_whole_in_order_with_reads_cancelled_at_random(
    read: Read, seed: int
) -> None:
    rng = random.Random(seed)
    messages = some_messages(rng, 300)
    got: list[str | bytes] = []
    counts = {"cancelled": 0, "paused": 0}
    ended = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        assembler = ws.recv_messages
        pause = assembler.pause

        def counted_pause() -> Any:
            counts["paused"] += 1
            return pause()

        assembler.pause = counted_pause
        try:
            while True:
                # None: a plain read; else a deadline that may cut it, waiting or mid-message.
                seconds = rng.choice([0.0, 0.0001, 0.001, 0.005, None, None])
                try:
                    async with asyncio.timeout(seconds):
                        got.append(await read(ws))
                except TimeoutError:
                    counts["cancelled"] += 1
                    continue
                if rng.random() < 0.1:
                    await asyncio.sleep(0.003)  # behind the peer: the queue fills, reading pauses
        except ConnectionClosedOK:
            pass
        finally:
            ended.set()

    async with serve(handler, "127.0.0.1", 0, max_queue=2, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", compression=None) as client:
            await send_all(client, messages, random.Random(seed + 100))
        await asyncio.wait_for(ended.wait(), 30)  # a read that never resumed hangs here
    assert got == messages
    assert counts["cancelled"] > 0 and counts["paused"] > 0, counts  # both paths were taken


@READS
async def test_text_that_is_not_utf8_closes_1007_and_what_follows_is_not_read(read: Read) -> None:
    got: list[str | bytes] = []
    raised: list[BaseException] = []

    async def handler(ws: ServerConnection) -> None:
        try:
            while True:
                got.append(await read(ws))
        except ConnectionClosed as exc:
            raised.append(exc)

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", compression=None) as client:
            await client.send("before")
            await client.send(b'{"id": "\xe9"}', text=True)  # Latin-1, not UTF-8
            await client.send("after")
            await client.send([b"split \xc3", b"\xa9 fine"], text=True)  # never read
            await asyncio.wait_for(client.wait_closed(), 10)
            assert client.close_code == 1007
    assert got == ["before"]
    assert isinstance(raised[0], ConnectionClosedError)


@READS
@pytest.mark.parametrize("how", ["close", "abort", "mid-message"])
async def test_the_connection_s_end_while_waiting_raises_what_recv_raises(
    read: Read, how: str
) -> None:
    raised: list[BaseException] = []
    waiting = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        waiting.set()
        try:
            await read(ws)
        except BaseException as exc:
            raised.append(exc)

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", compression=None) as client:
            await waiting.wait()
            await asyncio.sleep(0.05)  # the handler waits in its read
            if how == "close":
                await client.close()
            else:
                if how == "mid-message":
                    client.transport.write(b"\x01\x83\x00\x00\x00\x00abc")  # a first fragment
                client.transport.abort()
        for _ in range(200):
            if raised:
                break
            await asyncio.sleep(0.05)
    expected = ConnectionClosedOK if how == "close" else ConnectionClosedError
    assert len(raised) == 1 and type(raised[0]) is expected, raised


@READS
@pytest.mark.parametrize("second", [next_message, recv], ids=["then-next_message", "then-recv"])
async def test_a_second_read_while_one_waits_is_refused_and_the_first_gets_the_message(
    read: Read, second: Read
) -> None:
    results: list[object] = []
    refused: list[BaseException] = []

    async def handler(ws: ServerConnection) -> None:
        first = asyncio.ensure_future(read(ws))
        await asyncio.sleep(0.05)  # the first read waits
        try:
            await second(ws)
        except Exception as exc:
            refused.append(exc)
        results.append(await asyncio.wait_for(first, 10))  # not left waiting for ever
        results.append(await read(ws))  # and reading goes on

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", compression=None) as client:
            await asyncio.sleep(0.2)
            await client.send("one")
            await client.send(b"two")
            for _ in range(100):
                if len(results) == 2:
                    break
                await asyncio.sleep(0.05)
    assert [type(exc) for exc in refused] == [ConcurrencyError], refused
    assert results == ["one", b"two"]

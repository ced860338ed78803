"""The Python client's keepalive against a peer that takes bytes but never answers:
bytes of ours taken after the Ping are no sign that the Ping moved. Through
tests/proxies.py's HttpProxy, frozen: the proxy stops forwarding (a hung process, or a
middlebox that forgot the flow) while its kernel still acknowledges what fits in its
receive buffers, hundreds of KB on loopback. A client that keeps publishing into that
room is still found silent within the keepalive's bound, with the kernel's send queue
(TIOCOUTQ) and without it (the fallback of macOS and Windows, forced by taking the
platform's ioctl away), and every publish it made is stored once on the next link.
Real servers and clients on loopback; every wait and loop is bounded."""

from __future__ import annotations

import asyncio
import socket

import pytest

from bamboo_session.protocol import Token
from bamboo_session.protocol.client import BambooClient, sent_bytes
from bamboo_session.protocol.client.sent_bytes import FALLBACK_UPLINK_RATE
from bamboo_session.server.app import BambooServer
from tests.proxies import HttpProxy
from tests.support import run_server
from tests.test_client_partition import proxied, seconds_until, stored
from tests.test_client_slow_uplink import (
    CLIENT,
    FOUND_WITHIN,
    PATIENT_SERVER,
    PING_INTERVAL,
    PING_TIMEOUT,
    SLACK,
)

PUBLISH_EVERY = 0.01  # seconds: some 30 KB/s of publishes, far below loopback's speed
CONTENT_CHARS = 300
MAX_PUBLISHES = 3000  # the chatter's bound: 30 s at its pace
# Bytes a second the chatter writes at most: a publish frame of CONTENT_CHARS is under
# 500 bytes.
CHATTER_RATE = 500 / PUBLISH_EVERY


async def chatter(client: BambooClient, publishes: list[asyncio.Task[int]]) -> None:
    """Publish a token every PUBLISH_EVERY seconds without waiting for the acks, as an
    agent streaming its output does, until cancelled (MAX_PUBLISHES at most)."""
    for i in range(MAX_PUBLISHES):
        content = f"{i:06d}" + "x" * (CONTENT_CHARS - 6)
        publishes.append(asyncio.create_task(client.publish(Token(content))))
        await asyncio.sleep(PUBLISH_EVERY)


async def found_while_chatting(
    server: BambooServer, proxy: HttpProxy, client: BambooClient, bound: float
) -> tuple[float, int]:
    """Seconds from freezing the proxy until ``client`` reconnects, while it publishes
    all along, and its socket's send buffer (SO_SNDBUF) at the freeze; every publish is
    then acked once, and stored once."""
    publishes: list[asyncio.Task[int]] = []
    chatting = asyncio.create_task(chatter(client, publishes))
    try:
        await asyncio.sleep(1.0)  # a link that works, and carries the chatter
        assert client.reconnects == 0
        ws = client._link._ws
        assert ws is not None
        send_buffer = ws.transport.get_extra_info("socket").getsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF
        )
        assert proxy.freeze() == 1
        return await seconds_until(lambda: client.reconnects >= 1, bound), send_buffer
    finally:
        chatting.cancel()
        await asyncio.gather(chatting, return_exceptions=True)
        seqs = await asyncio.wait_for(asyncio.gather(*publishes), 30)
        assert sorted(seqs) == list(range(1, len(publishes) + 1))
        contents = sorted(content for _, content in await stored(server, client.session_id))
        assert contents == sorted(
            f"{i:06d}" + "x" * (CONTENT_CHARS - 6) for i in range(len(publishes))
        )


async def test_a_a_frozen_peer_that_still_takes_bytes_is_found_in_time() -> None:
    async with (
        run_server(**PATIENT_SERVER) as server,
        proxied(server) as (proxy, proxy_url),
        await BambooClient.connect(proxy_url, create=True, role="agent", **CLIENT) as client,
    ):
        ws = client._link._ws
        assert ws is not None
        assert sent_bytes.kernel_unsent(ws.transport.get_extra_info("socket")) is not None
        # The proxy's kernel and reader take some 300 KB more, 10 s of the chatter, which
        # counted as life while they were taken.
        await found_while_chatting(server, proxy, client, FOUND_WITHIN + SLACK)


async def test_b_without_the_kernels_send_queue_the_allowance_bounds_the_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As on macOS and Windows: the platform has no TIOCOUTQ.
    monkeypatch.setattr(sent_bytes, "TIOCOUTQ", None)
    async with (
        run_server(**PATIENT_SERVER) as server,
        proxied(server) as (proxy, proxy_url),
        await BambooClient.connect(proxy_url, create=True, role="agent", **CLIENT) as client,
    ):
        ws = client._link._ws
        assert ws is not None
        sock = ws.transport.get_extra_info("socket")
        assert sent_bytes.kernel_unsent(sock) is None
        # The allowance is for the bytes handed to the kernel between two Pings, a
        # Ping's bound apart at most; the chatter the kernel takes into its send buffer
        # after the Ping (megabytes on loopback: 30 s of it) is not counted again.
        allowance = CHATTER_RATE * (PING_INTERVAL + PING_TIMEOUT) / FALLBACK_UPLINK_RATE
        found, send_buffer = await found_while_chatting(
            server, proxy, client, FOUND_WITHIN + allowance + SLACK
        )
        # The allowance's other bound, the send buffer, was no bound at all here.
        assert send_buffer / FALLBACK_UPLINK_RATE > found


async def test_c_written_counts_every_byte_the_server_was_sent_once() -> None:
    # Through a relay that counts what it carries from the client: the handshake, the
    # client's frames small and large, its Pings, its Pongs to the server's Pings, and
    # its close frame, each counted once, as the keepalive's view of what was taken
    # depends on.
    from_client = 0

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal from_client
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", server.port)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, up: bool) -> None:
            nonlocal from_client
            while data := await src.read(65536):
                if up:
                    from_client += len(data)
                dst.write(data)
                await dst.drain()
            dst.close()

        await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False))

    chatty_server = {"ping_interval": 0.1, "ping_timeout": 5.0}
    async with run_server(**chatty_server) as server:
        listener = await asyncio.start_server(relay, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        try:
            client = await BambooClient.connect(
                f"ws://127.0.0.1:{port}", create=True, role="agent", ping_interval=0.1
            )
            ws = client._link._ws
            assert ws is not None
            for size in (10, 70_000, 1_000_000):
                await client.publish(Token("y" * size))
            await asyncio.gather(*(client.publish(Token(f"t{i}")) for i in range(100)))
            await asyncio.sleep(0.5)  # Pings both ways meanwhile
            await client.close()
            await seconds_until(lambda: from_client == ws.written, 5.0)
            assert ws.written > 1_070_000
        finally:
            listener.close()

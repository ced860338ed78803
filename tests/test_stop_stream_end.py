"""shutdown.end_after_close, the end of our stream behind a stopping server's close
frame, on a socket whose peer reset the connection before the server read the reset:
the kernel refuses the shutdown (ENOTCONN), which must end nothing but that socket.
Before, the OSError went up through the stop's ``discard_input`` (found once in the
suite: tests/test_replay_shares_ends.py, a replay's peer reset as the stop began)."""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import cast

import uvloop

from bamboo_session.server.shutdown import end_after_close


async def reset_unread() -> None:
    accepted: asyncio.Future[asyncio.Transport] = asyncio.get_running_loop().create_future()

    class Held(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            stream = cast(asyncio.Transport, transport)  # (uvloop's is no subclass)
            stream.pause_reading()  # the reset stays unread, as in a busy stop
            accepted.set_result(stream)

    server = await asyncio.get_running_loop().create_server(Held, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    transport = await asyncio.wait_for(accepted, 10)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # a reset
    await asyncio.sleep(0.2)  # it reached the server's socket
    try:
        end_after_close(transport)  # raises nothing
        end_after_close(transport)  # nor again
    finally:
        transport.abort()
        server.close()
        await server.wait_closed()


def test_the_end_of_a_stream_whose_peer_reset_raises_nothing_on_asyncio() -> None:
    asyncio.run(reset_unread())


def test_the_end_of_a_stream_whose_peer_reset_raises_nothing_on_uvloop() -> None:
    uvloop.run(reset_unread())

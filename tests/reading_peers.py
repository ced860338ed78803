"""A peer of session ``s`` that reads frames of at most a server's ``--max-frame-bytes``,
as docs/protocol.md says a client may: what the frame-limit tests (request ids, pages,
events stored in-process) connect with, in either codec.
"""

from __future__ import annotations

from typing import Any

from websockets.asyncio.client import connect

from bamboo_session.server.app import BambooServer
from tests.support import Peer, stream_url


async def limited_peer(server: BambooServer, msgpack: bool, limit: int, session: str = "s") -> Peer:
    """Connected to ``session``'s stream, reading frames of ``limit``; no ``hello`` sent."""
    subprotocol = "bamboo.v1.msgpack" if msgpack else "bamboo.v1"
    ws = await connect(
        stream_url(server, session),
        subprotocols=[subprotocol],  # type: ignore[list-item]
        max_size=limit,
    )
    return Peer(ws, msgpack)


async def reading_peer(server: BambooServer, msgpack: bool, limit: int, **hello: Any) -> Peer:
    """Welcomed to session ``s`` (``hello``'s fields sent), reading frames of ``limit``."""
    peer = await limited_peer(server, msgpack, limit)
    await peer.send({"type": "hello", **hello})
    assert (await peer.recv())["type"] == "welcome"
    return peer

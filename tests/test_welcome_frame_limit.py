"""A session's ``welcome`` carries its metadata, ``title`` and ``user_id`` among them,
to every connection that attaches. Both are bounded in characters (1,024 and 256 by
default), not in bytes: a character can be 6 bytes in JSON (``\\u0001``), so a
MessagePack ``hello`` of a few KiB made a session whose ``welcome`` was 8 KiB in JSON.
Under a small ``--max-frame-bytes`` (4 KiB), every JSON viewer that read frames of that
limit closed 1009 at its ``welcome``, at every attach: the session was unreachable. A
creating ``hello`` whose ``title`` and ``user_id`` would make a ``welcome`` over the
frame limit is refused now, as one over the length limits is.

A real server on an ephemeral port, real WebSocket peers of both codecs."""

from __future__ import annotations

import msgspec
from websockets.asyncio.client import connect

from tests.support import Peer, run_server, stream_url

LIMIT = 4096


async def test_no_session_is_made_whose_welcome_is_over_the_frame_limit() -> None:
    async with run_server(max_frame_bytes=LIMIT) as server:
        ws = await connect(stream_url(server, "t"), subprotocols=["bamboo.v1.msgpack"])  # type: ignore[list-item]
        creator = Peer(ws, msgpack=True)
        hello = {"type": "hello", "create": True, "title": "\x01" * 1024, "user_id": "\x01" * 256}
        assert len(msgspec.msgpack.encode(hello)) < LIMIT
        await creator.send(hello)
        error = await creator.recv()
        assert (error["type"], error["code"]) == ("error", "bad_request"), error
        assert "welcome" in error["message"], error
        code, _ = await creator.closed()
        assert code == 1008
        # A title that leaves room is taken, and reaches a JSON viewer of that limit.
        async with connect(stream_url(server, "t"), subprotocols=["bamboo.v1.msgpack"]) as ws:  # type: ignore[list-item]
            creator = Peer(ws, msgpack=True)
            await creator.send({"type": "hello", "create": True, "title": "\x01" * 400})
            assert (await creator.recv())["type"] == "welcome"
        async with connect(stream_url(server, "t"), max_size=LIMIT) as ws:
            viewer = Peer(ws)
            await viewer.send({"type": "hello"})
            welcome = await viewer.recv()
            assert welcome["session"]["title"] == "\x01" * 400

"""A session's ``extra`` (up to 64 KiB, set from the Python API) is in every
``welcome`` of it: under a small ``--max-frame-bytes`` (4 KiB at least) it made a
``welcome`` over the limit, which every viewer reading frames of that limit closed
1009, at every attach. Now ``SessionManager.create_session`` refuses such an ``extra``
(FieldTooLong, as a ``title`` that would do the same), and an attach to a session
stored with one (by an older version, a manager of a larger limit, a copy) is refused
with close 1009 and its reason, no frame: the server never sends a frame over the
limit it advertises.

A real server on an ephemeral port, a JSONL store in a temp dir, real WebSocket
viewers of both codecs that read frames of the server's limit at most."""

from __future__ import annotations

from pathlib import Path

import pytest

from bamboo_session.persistence import open_storage
from bamboo_session.protocol.models import Session
from bamboo_session.server.quotas import FieldTooLong
from tests.reading_peers import limited_peer, reading_peer
from tests.support import run_server

LIMIT = 4096
TOO_MUCH = {"notes": "\x01" * 600}  # 3,600 bytes of JSON: a welcome of 4,497 at most
ENOUGH = {"notes": "\x01" * 400}


async def test_create_session_refuses_an_extra_whose_welcome_is_over_the_limit() -> None:
    async with run_server(max_frame_bytes=LIMIT) as server:
        with pytest.raises(FieldTooLong, match=rf"extra make a welcome of \d+ bytes.*\({LIMIT}\)"):
            await server.manager.create_session(session_id="s", extra=TOO_MUCH)
        assert await server.manager.get_metadata("s") is None
        await server.manager.create_session(session_id="s", extra=ENOUGH)
        for msgpack in (False, True):
            viewer = await reading_peer(server, msgpack, LIMIT)
            await viewer.close()


@pytest.mark.parametrize("msgpack", [False, True], ids=["json", "msgpack"])
async def test_a_stored_session_whose_welcome_is_over_the_limit_is_refused(
    tmp_path: Path, msgpack: bool
) -> None:
    async with await open_storage(str(tmp_path), cleanup_interval=None) as store:
        await store.create_session(Session.new("old", extra=TOO_MUCH))
    async with run_server(tmp_path, max_frame_bytes=LIMIT) as server:
        viewer = await limited_peer(server, msgpack, LIMIT, "old")
        await viewer.send({"type": "hello"})
        code, frames = await viewer.closed()
        assert (code, frames) == (1009, [])
        assert (
            viewer.ws.close_reason == "the session's metadata makes a welcome over the frame limit"
        )
        # Nothing of the attach stays: the session is as stored, with no connection.
        metadata = await server.manager.get_metadata("old")
        assert metadata is not None and metadata.connections == 0

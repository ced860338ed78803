"""Events and messages stored by an older version reach a viewer that reads frames of
``--max-frame-bytes``, or are refused with ``too_large``, never sent over the limit.

A publish keeps 1,019 bytes of the frame limit free around its event (room for the
longest request ``id`` a page echoes); before h457 it kept 269, room for an integer
``id`` only, and upgrades keep stores. A ``history`` or ``events`` page of one such
event or message, asked for with an ``id`` of 128 characters, was a frame over the
limit: the viewer closed 1009, resumed, asked again, for ever. Now the page that has
no room for its one item with this ``id`` is ``too_large``, naming the item and how to
go past it, and the same request with an integer ``id`` gets the item.

A JSONL store in a temp dir written as the older version left it (the store's own
appends: events just within the old bound), then a real server on it, real WebSocket
viewers of both codecs that read frames of the server's limit at most."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bamboo_session.persistence import open_storage
from bamboo_session.protocol.messages import Message, Role
from bamboo_session.protocol.models import AgentEvent, MessageEvent, Session
from tests.reading_peers import reading_peer
from tests.support import run_server

LIMIT = 4096
OLD_MOST = LIMIT - 269  # the largest event a publish stored before h457
# The longest id a request may carry, in each codec: 128 control characters are 768
# bytes of JSON; 128 characters of 4 bytes of UTF-8 are 512 of MessagePack.
LONG_IDS = {False: "\x01" * 128, True: "\U0010ffff" * 128}


async def write_as_before(data_dir: Path) -> None:
    """Session ``s``: a small event (seq 1), a token event of ``OLD_MOST`` bytes in JSON
    (seq 2), and a message whose event, as sent, was ``OLD_MOST`` too (seq 3)."""
    async with await open_storage(str(data_dir), cleanup_interval=None) as store:
        await store.create_session(Session.new("s"))
        await store.append_event("s", AgentEvent.token("a"))
        token = AgentEvent.token("t" * (OLD_MOST - len('{"type":"token","content":""}')))
        await store.append_event("s", token)
        sent = b'{"type":"message","message":{"role":"user","content":""}}'
        message = Message(Role.USER, "m" * (OLD_MOST - len(sent)))
        await store.append_event("s", MessageEvent(message))


@pytest.mark.parametrize("msgpack", [False, True], ids=["json", "msgpack"])
async def test_an_old_event_too_large_for_a_page_with_a_long_id_is_refused(
    tmp_path: Path, msgpack: bool
) -> None:
    await write_as_before(tmp_path)
    async with run_server(tmp_path, max_frame_bytes=LIMIT) as server:
        viewer = await reading_peer(server, msgpack, LIMIT)
        long_id = LONG_IDS[msgpack]

        async def ask(request: dict[str, Any]) -> dict[str, Any]:
            await viewer.send(request)
            return await viewer.recv()  # the reply, whatever its type: nothing else comes

        refused = await ask({"type": "events", "id": long_id, "after_seq": 1})
        assert (refused["type"], refused["code"], refused["id"]) == ("error", "too_large", long_id)
        assert "the event at seq 2" in refused["message"], refused
        assert f"limit ({LIMIT})" in refused["message"] and "after_seq 2" in refused["message"]
        page = await ask({"type": "events", "id": 7, "after_seq": 1})
        assert (page["type"], page["id"]) == ("events", 7), page
        assert [record["seq"] for record in page["events"]] == [2]
        refused = await ask({"type": "history", "id": long_id})
        assert (refused["type"], refused["code"], refused["id"]) == ("error", "too_large", long_id)
        assert "the message at index 0" in refused["message"], refused
        assert "before 0" in refused["message"]
        page = await ask({"type": "history", "id": 8})
        assert (page["type"], page["id"], page["has_more"]) == ("history", 8, False), page
        assert [len(message["content"]) for message in page["messages"]] == [
            OLD_MOST - len(b'{"type":"message","message":{"role":"user","content":""}}')
        ]
        # The small event alone, asked for with the long id, is a page as ever.
        page = await ask({"type": "events", "id": long_id, "after_seq": 0, "limit": 1})
        assert [record["seq"] for record in page["events"]] == [1], page
        await viewer.close()

"""A session named ``idx`` on a Redis store shared by two instances. Its keys carry
the tag ``{idx}``, which the store-wide indexes carry too; its history list and the
index of sessions by message count were both ``<prefix>:{idx}:msgs``. Any client
could name a session so (``idx`` is a valid id): its messages failed for ever
(``internal``, Redis's WRONGTYPE, each leaving an entry in its log that the next
append then failed on), and its delete took the index with it, so that a listing by
message count, on every instance, showed no session at all."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bamboo_session.persistence import open_storage
from bamboo_session.protocol import AgentEvent, Message
from bamboo_session.protocol.client import BambooClient
from tests.instances import FAST, Instances, clients, watch
from tests.redis_server import RedisServer, prefix_for


@pytest.fixture
def two(redis_server: RedisServer, tmp_path: Path) -> Iterator[Instances]:
    group = Instances(tmp_path, redis_server.url(prefix=prefix_for(tmp_path)))
    try:
        group.start(2)
        yield group
    finally:
        group.close()


def listed_by_message_count(port: int) -> list[str]:
    path = "/api/v1/sessions?sort_by=message_count"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        body: Any = json.loads(response.read())
    return [meta["id"] for meta in body["sessions"]]


async def test_a_session_named_idx_keeps_its_messages_and_the_stores_index(
    two: Instances,
) -> None:
    async with (
        clients(
            BambooClient.connect(two.url(0), "other", create=True, **FAST),
            BambooClient.connect(two.url(0), "idx", create=True, role="agent", **FAST),
        ) as (other, agent),
        clients(BambooClient.connect(two.url(1), "idx", **FAST)) as (viewer,),
    ):
        await other.send_message(Message(role="user", content="elsewhere"))
        assert await agent.send_message(Message(role="user", content="hi")) == 1
        assert await agent.publish(AgentEvent.token("after")) == 2
        seen = await asyncio.wait_for(watch(viewer, 2), 10)
        assert [e.seq for e in seen] == [1, 2]
        page = await viewer.history()
        assert [m.content for m in page.messages] == ["hi"]
    listed = await asyncio.to_thread(listed_by_message_count, two.ports[1])
    assert sorted(listed) == ["idx", "other"]

    store = await open_storage(two.store)
    try:
        await store.delete_session("idx")
    finally:
        await store.close()
    for port in two.ports:
        assert await asyncio.to_thread(listed_by_message_count, port) == ["other"]
    two.check_logs()

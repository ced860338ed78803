"""BambooClient's batches against a real server: publishes queued together go out as one
``batch`` frame (seen in the server's ``bamboo_batch_items`` metric), a lone publish
alone; each caller gets its own seq; a publish the server refuses is refused alone;
exactly once across a drop that lost a batch's reply; single frames to a server without
the extension."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from bamboo_session.protocol import AgentEvent, Message, Role, Token
from bamboo_session.protocol.client import BambooClient, RequestError
from bamboo_session.protocol.free_form import MAX_FREE_VALUES
from bamboo_session.server.app import BambooServer
from tests.support import get, run_server
from tests.test_client_resume import TcpProxy

TIMEOUT = 10.0
FAST = {"backoff_initial": 0.02, "backoff_max": 0.2}


def url_of(server: BambooServer) -> str:
    return f"ws://127.0.0.1:{server.port}"


async def batches_seen(server: BambooServer) -> tuple[int, int]:
    """(batch frames, items in them) the server accepted, from /metrics."""
    text = (await get(server, "/metrics"))[1]
    count = re.search(r"^bamboo_batch_items_count (\S+)$", text, re.M)
    total = re.search(r"^bamboo_batch_items_sum (\S+)$", text, re.M)
    assert count is not None and total is not None
    return int(float(count[1])), int(float(total[1]))


async def contents(client: BambooClient) -> list[str]:
    return [str(e.event.content) for e in await client.read_all_events()]  # type: ignore[union-attr]


async def publish_all(client: BambooClient, texts: list[str], **keys: str) -> list[int]:
    """Publishes made in one turn of the loop: what a busy agent queues at once."""
    calls = [client.publish(AgentEvent.token(t), key=keys.get(t)) for t in texts]
    return await asyncio.wait_for(asyncio.gather(*calls), TIMEOUT)


async def test_publishes_queued_together_go_as_one_batch_each_with_its_seq() -> None:
    async with (
        run_server() as server,
        await BambooClient.connect(url_of(server), "q", create=True) as agent,
        await BambooClient.connect(url_of(server), "q") as viewer,
    ):
        texts = [f"t{i}" for i in range(50)]
        assert await publish_all(agent, texts) == list(range(1, 51))
        assert await batches_seen(server) == (1, 50)
        seen = []
        async for item in viewer.events():
            seen.append(item)
            if len(seen) == 50:
                break
        assert [e.seq for e in seen] == list(range(1, 51))  # type: ignore[union-attr]
        assert await contents(viewer) == texts
        # A message among events: the same batch, in its place.
        calls = [
            agent.publish(AgentEvent.token("before")),
            agent.send_message(Message.assistant("said")),
            agent.publish(AgentEvent.token("after")),
        ]
        assert await asyncio.gather(*calls) == [51, 52, 53]
        assert await batches_seen(server) == (2, 53)
        assert [m.content for m in (await viewer.history()).messages] == ["said"]


async def test_a_lone_publish_goes_alone() -> None:
    async with (
        run_server() as server,
        await BambooClient.connect(url_of(server), "lone", create=True) as agent,
    ):
        for i in range(20):  # each waits for its ack: nothing ever queues beside it
            assert await agent.publish(AgentEvent.token(str(i))) == i + 1
        assert await batches_seen(server) == (0, 0)
        figures = (await get(server, "/api/v1/stats"))[1]
        assert figures["events_appended"] == 20


async def test_batches_are_bounded_in_items_and_bytes() -> None:
    async with (
        run_server() as server,
        await BambooClient.connect(url_of(server), "big", create=True) as agent,
    ):
        assert await publish_all(agent, [str(i) for i in range(250)]) == list(range(1, 251))
        assert await batches_seen(server) == (3, 250)  # 100, 100 and 50
        # 30,000 characters each: two fit in the client's 64 KiB, three do not.
        large = [f"{i}:" + "x" * 30_000 for i in range(10)]
        assert await publish_all(agent, large) == list(range(251, 261))
        assert await batches_seen(server) == (3 + 5, 250 + 10)
        assert await contents(agent) == [str(i) for i in range(250)] + large


async def test_batches_are_bounded_in_free_form_values() -> None:
    # Each publish holds a third of the values one frame may (11 KB of zeros): three go
    # in one batch frame, though five would fit its bytes and the server would then
    # refuse the whole frame.
    data = [0] * (MAX_FREE_VALUES // 3 - 1)
    async with (
        run_server() as server,
        await BambooClient.connect(url_of(server), "values", create=True) as agent,
    ):
        calls = [agent.publish(AgentEvent.custom("rows", data)) for _ in range(6)]
        assert await asyncio.wait_for(asyncio.gather(*calls), TIMEOUT) == list(range(1, 7))
        assert await batches_seen(server) == (2, 6)


async def test_keys_repeated_in_one_batch_are_duplicates() -> None:
    async with (
        run_server() as server,
        await BambooClient.connect(url_of(server), "dup", create=True) as agent,
    ):
        calls = [
            agent.publish(AgentEvent.token("a"), key="k"),
            agent.publish(AgentEvent.token("b")),
            agent.publish(AgentEvent.token("a again"), key="k"),
        ]
        assert await asyncio.gather(*calls) == [1, 2, 1]
        assert await batches_seen(server) == (1, 3)
        assert await contents(agent) == ["a", "b"]


async def test_a_publish_the_server_refuses_is_refused_alone() -> None:
    async with (
        run_server() as server,
        await BambooClient.connect(url_of(server), "bad", create=True) as agent,
    ):
        bad = AgentEvent.custom("n", {"big": 2**64})  # beyond what every codec carries
        calls: list[Any] = [agent.publish(AgentEvent.token(str(i))) for i in range(4)]
        calls.insert(2, agent.publish(bad))
        results = await asyncio.gather(*calls, return_exceptions=True)
        refused = results.pop(2)
        assert isinstance(refused, RequestError) and refused.code == "bad_request"
        assert results == [1, 2, 3, 4]
        assert await contents(agent) == ["0", "1", "2", "3"]
        assert await batches_seen(server) == (2, 4)  # [0, 1], the bad one alone, [2, 3]
        # What cannot be encoded at all fails its caller at once, and nothing else.
        with pytest.raises(TypeError):
            await agent.publish(AgentEvent.custom("n", {"a": object()}))
        assert await agent.publish(AgentEvent.token("4")) == 5


async def test_exactly_once_when_a_batch_is_stored_but_its_reply_lost() -> None:
    async with (
        run_server() as server,
        TcpProxy(server.port) as proxy,
        await BambooClient.connect(proxy.url, "lost", create=True, **FAST) as agent,
    ):
        proxy.downstream.clear()  # the server's replies are held, then lost at the cut
        texts = [f"t{i}" for i in range(60)]
        publishing = asyncio.ensure_future(publish_all(agent, texts))
        for _ in range(200):
            if len(await server.manager.read_events("lost")) == 60:
                break
            await asyncio.sleep(0.01)
        assert await batches_seen(server) == (1, 60), "the batch was stored"
        assert not publishing.done()
        proxy.cut()
        proxy.downstream.set()
        # Resent with their keys: each is a duplicate, answered with its first seq.
        assert await publishing == list(range(1, 61))
        assert agent.reconnects == 1 and agent.resent == 60
        assert await batches_seen(server) == (2, 120)  # resent as a batch again
        assert await contents(agent) == texts  # each stored once
        assert await agent.publish(AgentEvent.token("next")) == 61


async def test_publishes_made_while_disconnected_go_as_a_batch_after_the_reconnect() -> None:
    async with (
        run_server() as server,
        TcpProxy(server.port) as proxy,
        await BambooClient.connect(proxy.url, "away", create=True, **FAST) as agent,
    ):
        assert await agent.publish(AgentEvent.token("first")) == 1
        proxy.cut()
        texts = [f"t{i}" for i in range(30)]
        assert await publish_all(agent, texts) == list(range(2, 32))
        assert agent.reconnects == 1
        assert await batches_seen(server) == (1, 30)  # queued while away: sent together
        assert await contents(agent) == ["first", *texts]


async def test_without_the_extension_every_publish_is_its_own_frame() -> None:
    async with (
        run_server(batch_frames=False) as server,
        await BambooClient.connect(url_of(server), "plain", create=True) as agent,
    ):
        texts = [f"t{i}" for i in range(40)]
        assert await publish_all(agent, texts) == list(range(1, 41))
        assert await batches_seen(server) == (0, 0)
        assert await contents(agent) == texts


@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_batches_on_both_codecs(codec: str) -> None:
    async with (
        run_server() as server,
        await BambooClient.connect(url_of(server), "c", create=True, codec=codec) as agent,  # type: ignore[arg-type]
        await BambooClient.connect(url_of(server), "c", codec=codec) as viewer,  # type: ignore[arg-type]
    ):
        calls = [
            agent.publish(AgentEvent.token("a")),
            agent.send_message(Message(role=Role.USER, content="m", metadata={"n": 1})),
            agent.publish(AgentEvent.tool_start("c1", "search", {"q": "x"})),
        ]
        assert await asyncio.gather(*calls) == [1, 2, 3]
        assert await batches_seen(server) == (1, 3)
        events = (await viewer.read_events()).events
        assert isinstance(events[0].event, Token) and events[0].event.content == "a"
        assert events[1].event.message.metadata == {"n": 1}  # type: ignore[union-attr]
        assert events[2].event.arguments == {"q": "x"}  # type: ignore[union-attr]


async def test_batches_stay_within_a_low_frame_limit_and_burst() -> None:
    """Found by review: the client batched up to 64 KiB and 100 items whatever the
    server allowed; against a 16 KiB frame limit every batch closed the connection
    with 1009, and against a burst of 10 every batch was refused as rate limited."""
    config = {"max_frame_bytes": 16 * 1024, "rate_limit_burst": 10, "rate_limit": 1_000_000}
    async with (
        run_server(**config) as server,
        await BambooClient.connect(url_of(server), "low", create=True) as agent,
    ):
        texts = [f"{i}:" + "x" * 2000 for i in range(20)]  # 40 KB in all, 2 KB each
        assert await publish_all(agent, texts) == list(range(1, 21))
        frames, items = await batches_seen(server)
        assert items == 20 and frames >= 3  # at most 8 KiB (half the limit) each
        assert agent.reconnects == 0
        assert await contents(agent) == texts

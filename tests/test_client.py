"""BambooClient against a real server: requests, events, the end of a session, and the
errors that must not be retried."""

from __future__ import annotations

import asyncio

import pytest

from bamboo_session.protocol import AgentEvent, Message, Token, ToolResult
from bamboo_session.protocol.client import (
    BambooClient,
    Refused,
    RequestError,
    Reset,
    SessionEnded,
    StoredEvent,
    stream_url,
)
from tests.support import run_server

TIMEOUT = 5.0


def base_url(server: object) -> str:
    return f"ws://127.0.0.1:{server.port}"  # type: ignore[attr-defined]


async def take(client: BambooClient, count: int) -> list[StoredEvent | Reset]:
    items: list[StoredEvent | Reset] = []

    async def collect() -> None:
        async for item in client.events():
            items.append(item)
            if len(items) == count:
                return

    await asyncio.wait_for(collect(), TIMEOUT)
    return items


def test_stream_url() -> None:
    assert stream_url("ws://h:1") == "ws://h:1/api/v1/stream"
    assert stream_url("ws://h:1/", "a.b") == "ws://h:1/api/v1/stream/a.b"
    assert stream_url("wss://h/api/v1/stream", "x") == "wss://h/api/v1/stream/x"
    with pytest.raises(ValueError):
        stream_url("http://h:1")
    with pytest.raises(ValueError):
        stream_url("ws://h:1", "../etc")


@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_publish_and_receive_every_kind_of_request(codec: str) -> None:
    async with run_server(store="memory://") as server:
        url = base_url(server)
        async with (
            await BambooClient.connect(url, "chat-1", create=True, role="agent") as agent,
            await BambooClient.connect(url, "chat-1", codec=codec) as viewer,  # type: ignore[arg-type]
        ):
            assert agent.session_id == viewer.session_id == "chat-1"
            assert agent.epoch == viewer.epoch and agent.connection_id != viewer.connection_id
            seqs = [await agent.publish(AgentEvent.token(w)) for w in ("a", "b")]
            seqs.append(await agent.send_message(Message.assistant("ab")))
            seqs.append(await agent.publish(AgentEvent.tool_complete("t1", ToolResult(True, "ok"))))
            assert seqs == [1, 2, 3, 4]
            assert agent.last_seq == 4
            got = await take(viewer, 4)
            assert [e.seq for e in got if isinstance(e, StoredEvent)] == [1, 2, 3, 4]
            assert isinstance(got[0], StoredEvent) and got[0].event == Token("a")
            assert viewer.last_seq == 4

            history = await viewer.history()
            assert [m.content for m in history.messages] == ["ab"] and not history.has_more
            page = await viewer.read_events(after_seq=1, limit=2)
            assert [e.seq for e in page.events] == [2, 3] and page.last_seq == 4
            assert [e.seq for e in await viewer.read_all_events(page=3)] == [1, 2, 3, 4]
            assert await viewer.ping() >= 0
            assert await viewer.set_state("idle") == 4


async def test_a_key_given_twice_appends_once() -> None:
    async with run_server(store="memory://") as server:
        async with await BambooClient.connect(base_url(server), "k", create=True) as client:
            first = await client.publish(AgentEvent.token("x"), key="same")
            again = await client.publish(AgentEvent.token("x"), key="same")
            assert first == again == 1
            assert len((await client.read_events()).events) == 1


async def test_an_empty_key_is_sent_as_given() -> None:
    # "" is a key (PROTOCOL.md), not "no key": the client sends it, not a random one.
    async with run_server(store="memory://") as server:
        async with await BambooClient.connect(base_url(server), "e", create=True) as client:
            first = await client.publish(AgentEvent.token("x"), key="")
            again = await client.send_message(Message.assistant("x"), key="")
            assert first == again == 1
            assert await client.publish(AgentEvent.token("y")) == 2  # no key: a fresh one
            assert len((await client.read_events()).events) == 2


async def test_a_new_session_gets_its_id_from_the_server() -> None:
    async with run_server(store="memory://") as server:
        url = base_url(server)
        async with await BambooClient.connect(url, user_id="u1", title="T") as client:
            assert client.session_id.startswith("s_")
            assert client.session is not None and client.session.title == "T"
            await client.publish(AgentEvent.token("x"))
            async with await BambooClient.connect(url, client.session_id, last_seq=0) as other:
                assert [e.seq for e in await take(other, 1)] == [1]  # type: ignore[union-attr]


async def test_resume_from_a_saved_position_and_reset_when_impossible() -> None:
    async with run_server(store="memory://") as server:
        url = base_url(server)
        async with await BambooClient.connect(url, "r", create=True) as agent:
            for i in range(5):
                await agent.publish(AgentEvent.token(str(i)))
            async with await BambooClient.connect(
                url, "r", last_seq=3, epoch=agent.epoch
            ) as viewer:
                assert [e.seq for e in await take(viewer, 2)] == [4, 5]  # type: ignore[union-attr]
            async with await BambooClient.connect(url, "r", last_seq=99) as viewer:
                (reset,) = await take(viewer, 1)
                assert reset == Reset(agent.epoch or "", 5, None, 99)
                await agent.publish(AgentEvent.token("5"))
                assert [e.seq for e in await take(viewer, 1)] == [6]  # type: ignore[union-attr]
            async with await BambooClient.connect(url, "r", last_seq=2, epoch="other") as viewer:
                (reset,) = await take(viewer, 1)
                assert isinstance(reset, Reset) and reset.previous_epoch == "other"


async def test_closing_the_session_ends_events_and_fails_requests() -> None:
    async with run_server(store="memory://") as server:
        url = base_url(server)
        agent = await BambooClient.connect(url, "c", create=True)
        viewer = await BambooClient.connect(url, "c")
        await agent.publish(AgentEvent.token("x"))
        await agent.set_state("closed")
        items = await take(viewer, 2)  # ends early: the session is closed
        assert [type(i) for i in items] == [StoredEvent]
        assert viewer.closed_reason == "session closed" and viewer.finished
        with pytest.raises(SessionEnded):
            await viewer.publish(AgentEvent.token("late"))
        with pytest.raises(SessionEnded):  # a closed session refuses attaches (4409)
            await BambooClient.connect(url, "c")
        await agent.close()
        await viewer.close()
        await viewer.close()  # twice is fine


async def test_refusals_are_typed_and_not_retried() -> None:
    async with run_server(store="memory://") as server:
        url = base_url(server)
        with pytest.raises(Refused) as refused:
            await BambooClient.connect(url, "missing")
        assert refused.value.code == 4404
        with pytest.raises(ValueError):
            await BambooClient.connect(url, "bad id!")
        with pytest.raises(ValueError):
            await BambooClient.connect(url, "x", codec="xml")  # type: ignore[arg-type]
        with pytest.raises(OSError):
            await BambooClient.connect("ws://127.0.0.1:1", "x", open_timeout=2)


async def test_an_error_reply_fails_only_its_request() -> None:
    async with run_server(store="memory://") as server:
        async with await BambooClient.connect(base_url(server), "e", create=True) as client:
            with pytest.raises(RequestError) as error:
                await client.history(limit=0)
            assert error.value.code == "bad_request"
            assert await client.publish(AgentEvent.token("still fine")) == 1


async def test_close_right_after_connect_closes_the_connection() -> None:
    """close() before the client's task first ran must still close its WebSocket."""
    async with run_server(store="memory://") as server:
        async with await BambooClient.connect(base_url(server), "quick", create=True):
            pass
        for _ in range(100):
            if server.metrics.figures()["connections"] == 0:
                break
            await asyncio.sleep(0.02)
        assert server.metrics.figures()["connections"] == 0


async def test_close_fails_waiting_requests_and_ends_events() -> None:
    async with run_server(store="memory://") as server:
        client = await BambooClient.connect(base_url(server), "w", create=True)
        reader = asyncio.create_task(take(client, 1))
        await asyncio.sleep(0.05)
        await client.close()
        assert await reader == []
        with pytest.raises(SessionEnded):
            await client.ping()


@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_frames_over_websockets_default_limit_are_read_up_to_the_servers(codec: str) -> None:
    """The client sets no frame limit of its own (protocol/client/handshake.py): a server
    whose --max-frame-bytes is past websockets' 1 MiB default sends frames that large,
    live and in pages, and the client reads them (with that default it closed 1009,
    then met the same frame at each resume)."""
    content = "x" * (2 << 20)
    async with run_server(store="memory://", max_frame_bytes=4 << 20) as server:
        url = base_url(server)
        async with (
            await BambooClient.connect(url, "big", create=True, role="agent") as agent,
            await BambooClient.connect(url, "big", codec=codec) as viewer,  # type: ignore[arg-type]
        ):
            assert await agent.publish(AgentEvent.token(content)) == 1
            [live] = await take(viewer, 1)
            assert isinstance(live, StoredEvent) and live.event == Token(content)
            page = await viewer.read_events(after_seq=0, limit=10)
            assert [e.event for e in page.events] == [Token(content)]

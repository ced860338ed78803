"""Acks and other peers' events in either order: a publisher's ``ack`` may arrive before
events of other peers with lower seqs (the server acknowledges an append when it is
stored and fans events out after), and the client must neither call that a gap nor,
when the connection drops right then, resume past the events still on their way."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.asyncio.server import ServerConnection

from bamboo_session.protocol import AgentEvent
from bamboo_session.protocol.client import BambooClient
from tests.support import run_server
from tests.test_client_resume import (
    FAST,
    TIMEOUT,
    burst,
    event,
    fake_server,
    url_of,
    watch,
    welcome,
)

PUBLISHES = 300


async def test_two_publishers_watching_each_other_see_every_event_once() -> None:
    async with run_server(store="memory://") as server:
        url = f"ws://127.0.0.1:{server.port}"
        async with (
            await BambooClient.connect(url, "two", create=True, role="agent") as one,
            await BambooClient.connect(url, "two", role="agent") as other,
        ):
            watching = [asyncio.create_task(watch(c, PUBLISHES)) for c in (one, other)]
            acked = await asyncio.gather(
                burst(one, PUBLISHES, lambda _: None), burst(other, PUBLISHES, lambda _: None)
            )
            seen = await asyncio.wait_for(asyncio.gather(*watching), TIMEOUT)
            everything = set(range(1, 2 * PUBLISHES + 1))
            for own, events in zip(acked, seen, strict=True):
                seqs = [e.seq for e in events]
                assert seqs == sorted(seqs), "in order"
                assert set(own).isdisjoint(seqs), "never our own events"
                assert set(own) | set(seqs) == everything, "every seq, as an ack or an event"
            assert one.last_seq == other.last_seq == 2 * PUBLISHES


async def test_an_ack_may_come_before_events_of_others_with_lower_seqs() -> None:
    async def script(ws: ServerConnection, hello: dict[str, Any], attempt: int) -> None:
        await welcome(ws)
        request = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "ack", "id": request["id"], "seq": 2}))
        await asyncio.sleep(0.05)
        await event(ws, 1)  # someone else's, stored in the same batch, fanned out after
        await event(ws, 3)
        await ws.wait_closed()

    async with fake_server(script) as hellos:
        async with await BambooClient.connect(url_of(hellos), "f") as client:
            assert await client.publish(AgentEvent.token("mine")) == 2
            assert [e.seq for e in await asyncio.wait_for(watch(client, 2), TIMEOUT)] == [1, 3]
            assert client.last_seq == 3


async def test_a_drop_after_an_ack_overtook_events_resumes_below_it() -> None:
    async def script(ws: ServerConnection, hello: dict[str, Any], attempt: int) -> None:
        if attempt == 1:
            await welcome(ws)
            request = json.loads(await ws.recv())
            await ws.send(json.dumps({"type": "ack", "id": request["id"], "seq": 2}))
            await ws.close(1012)  # event 1, someone else's, never made it out
        else:
            await welcome(ws, last_seq=3, resumed=True)
            for seq in range(hello["last_seq"] + 1, 4):
                await event(ws, seq)  # the replay: 2 is ours, sent to the new connection
            await ws.wait_closed()

    async with fake_server(script) as hellos:
        async with await BambooClient.connect(url_of(hellos), "f", **FAST) as client:
            assert await client.publish(AgentEvent.token("mine")) == 2
            assert [e.seq for e in await asyncio.wait_for(watch(client, 2), TIMEOUT)] == [1, 3]
            assert client.last_seq == 3
    assert hellos[1]["last_seq"] == 0, "resumed after what was seen, not after our ack"

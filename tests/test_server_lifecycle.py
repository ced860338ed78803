"""Integration tests of session lifecycle: parking, idleness, eviction, slow consumers."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

import pytest

from bamboo_session.server.app import BambooServer
from tests.server_backends import pytest_generate_tests, server_store
from tests.support import Peer, attach, get, open_peer, run_server, token

__all__ = ["pytest_generate_tests", "server_store"]  # the store each test runs on
pytestmark = pytest.mark.usefixtures("server_store")


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_last_connection_leaving_parks_the_session_then_retention_ends_it() -> None:
    async with run_server(disconnect_retention=0.3) as server:
        async with attach(server) as (_, welcome):
            session_id = welcome["session"]["id"]
        manager = server.manager
        actor = manager.live_actor(session_id)
        assert actor is not None
        await eventually(lambda: actor.state == "disconnected")
        metadata = await manager.get_metadata(session_id)
        assert metadata is not None and metadata.state == "disconnected"
        await eventually(lambda: manager.live_actor(session_id) is None)
        async with attach(server, session_id) as (_, again):
            assert again["session"]["state"] == "active"


async def stored(server: BambooServer, session_id: str) -> dict[str, Any]:
    status, body = await get(server, f"/api/v1/sessions/{session_id}")
    assert status == 200, body
    metadata: dict[str, Any] = body["metadata"]
    return metadata


async def test_a_welcome_shows_the_session_as_a_get_right_after_it_does() -> None:
    # A resume into a parked session is activity (docs/protocol.md, "Session states and
    # activity"): its welcome shows the activity, not the session as it was parked.
    # Another attach while it has a connection is not activity, and writes nothing.
    async with run_server(default_ttl=3600) as server:
        async with attach(server, "back", create=True) as (_, first):
            pass
        parked = await stored(server, "back")
        for _ in range(1000):  # parked as its last connection left: waited for
            if parked["state"] == "disconnected":
                break
            await asyncio.sleep(0.02)
            parked = await stored(server, "back")
        assert parked["state"] == "disconnected"
        async with attach(server, "back", last_seq=0, epoch=first["epoch"]) as (_, resumed):
            now = await stored(server, "back")
            assert resumed["session"] == now
            assert now["last_activity_at"] != parked["last_activity_at"]
            assert now["expires_at"] != parked["expires_at"]
            async with attach(server, "back") as (_, viewer):
                assert viewer["session"] == await stored(server, "back")
                assert viewer["session"]["connections"] == 2
                assert viewer["session"]["last_activity_at"] == now["last_activity_at"]


async def test_a_quiet_connected_session_becomes_idle_and_traffic_wakes_it() -> None:
    idle_timeout = 0.2
    async with run_server(idle_timeout=idle_timeout) as server, attach(server) as (peer, welcome):
        session_id = welcome["session"]["id"]
        loop = asyncio.get_running_loop()

        async def state() -> str | None:
            metadata = await server.manager.get_metadata(session_id)
            return None if metadata is None else metadata.state

        # An append makes it active, as a read after its ack sees: idle seen within
        # idle_timeout of the append is wrong. Seen later, idle is what a correct server
        # may show (quiet for idle_timeout again): a loaded machine's late read is
        # tried again, from idle, rather than bounded by a wall time.
        for attempt in range(5):
            # Waited for, not slept on: 0.5 s was sometimes too short on a loaded machine.
            deadline = loop.time() + 30.0
            while await state() != "idle":
                assert loop.time() < deadline, "never became idle"
                await asyncio.sleep(0.05)
            sent_at = loop.time()
            await peer.request({"type": "event", "id": attempt, "event": token("x")}, "ack")
            seen = await state()
            if seen == "active":
                break
            assert loop.time() - sent_at >= idle_timeout, f"{seen} at once after an append"
        else:
            raise AssertionError(f"no read came within {idle_timeout} s of the ack in 5 tries")


async def test_pings_are_activity_but_leave_an_idle_session_idle() -> None:
    # docs/protocol.md (Session states): a ping starts the TTL again, but only an
    # append, an attach or a state request wakes an idle session.
    async with run_server(idle_timeout=0.2) as server, attach(server) as (peer, welcome):
        session_id = welcome["session"]["id"]
        manager = server.manager
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30.0  # waited for, however loaded the machine
        while (idle := await manager.get_metadata(session_id)) is None or idle.state != "idle":
            assert loop.time() < deadline, "never became idle"
            await asyncio.sleep(0.05)
        # Pinged on until a look at the session records the pings as activity; a
        # server that woke it for them would show it active from that look on.
        for n in itertools.count():
            await peer.request({"type": "ping", "id": n}, "pong")
            seen = await manager.get_metadata(session_id)
            assert seen is not None and seen.state == "idle", seen
            if seen.last_activity_at > idle.last_activity_at:
                break
            assert loop.time() < deadline, "the pings were never recorded as activity"
            await asyncio.sleep(0.05)


async def test_least_recently_used_parked_session_is_evicted_first() -> None:
    async with run_server(max_sessions=2) as server:
        manager = server.manager
        ids = []
        for _ in range(3):
            async with attach(server) as (_, welcome):
                ids.append(welcome["session"]["id"])
        await eventually(lambda: manager.live_actor(ids[0]) is None)
        assert manager.live_actor(ids[1]) is not None and manager.live_actor(ids[2]) is not None
        # an evicted session comes back from storage on the next attach
        async with attach(server, ids[0]) as (_, welcome):
            assert welcome["session"]["id"] == ids[0]


async def test_new_sessions_are_refused_with_1013_when_none_can_be_evicted() -> None:
    async with run_server(max_sessions=2) as server:
        async with attach(server) as (a, _), attach(server) as (b, _):
            async with open_peer(server) as third:
                await third.send({"type": "hello"})
                code, _ = await third.closed()
                assert code == 1013
            assert (await a.request({"type": "ping", "id": 1}, "pong"))["id"] == 1
            assert (await b.request({"type": "ping", "id": 1}, "pong"))["id"] == 1


async def test_a_slow_consumer_is_closed_4429_while_others_get_everything() -> None:
    total = 400
    # Megabytes of large events from one agent: the byte rate would pace them.
    # The slow peer reads only once the fast one is done: a close timeout long enough
    # that the server still waits for it to take its close frame.
    async with run_server(send_queue_frames=64, rate_limit_bytes=0, close_timeout=30) as server:
        async with attach(server, role="agent") as (agent, welcome):
            session_id = welcome["session"]["id"]
            async with (
                attach(server, session_id) as (fast, _),
                attach(server, session_id) as (
                    slow,
                    _,
                ),
            ):
                # The slow peer reads nothing while large events go out, more than
                # socket buffers on loopback hold; the others keep reading.
                payload = "y" * 60_000
                received: list[int] = []

                async def read_fast() -> None:
                    while len(received) < total:
                        received.append((await fast.recv_type("event", timeout=10))["seq"])

                reader = asyncio.create_task(read_fast())
                for i in range(total):
                    await agent.request({"type": "event", "id": i, "event": token(payload)}, "ack")
                await asyncio.wait_for(reader, 30)
                assert received == list(range(1, total + 1))
                code, _ = await slow.closed(timeout=20)
                assert code == 4429
        metrics = server.metrics.render().decode()
        assert "bamboo_send_queue_drops_total 1.0" in metrics


async def test_a_pipelining_publisher_is_paced_not_closed() -> None:
    # A burst of requests larger than the send queue: replies always fit, because the
    # server reads at most half the queue's worth ahead of its replies.
    async with run_server(send_queue_frames=16) as server, attach(server) as (agent, _):
        for i in range(300):
            await agent.send({"type": "event", "id": i, "event": token(str(i))})
        acks = [await agent.recv_type("ack") for _ in range(300)]
        assert [a["seq"] for a in acks] == list(range(1, 301))
        assert (await agent.request({"type": "ping", "id": "p"}, "pong"))["id"] == "p"


async def test_an_expired_session_is_closed_and_then_not_found() -> None:
    async with run_server(default_ttl=1, disconnect_retention=60) as server:
        async with attach(server, "ttl", create=True) as (peer, _):
            await peer.request({"type": "event", "id": 1, "event": token("x")}, "ack")
            # Quiet for its whole TTL while attached: the server notices within a third
            # of the TTL and closes, as a delete would. The wait, 10 TTLs, is a guard
            # that still tells it from a server that looked only every idle_timeout
            # (300 s): 3 s left a loaded machine 1.7 s.
            code, frames = await peer.closed(timeout=10)
            assert code == 4404 and frames[-1] == {"type": "closed", "reason": "session expired"}
        async with open_peer(server, "ttl") as late:
            await late.send({"type": "hello"})
            code, _ = await late.closed()
            assert code == 4404
        status, _ = await get(server, "/api/v1/sessions/ttl")
        assert status == 404  # the disconnect did not revive it


async def ping_past_its_first_expiry(server: BambooServer, session_id: str, peer: Peer) -> None:
    """Pings every 0.2 s until the store records activity after the moment the session
    would have expired without them (its expiry when this began): the session lived
    past its TTL, kept alive by frames alone. A server that did not count them closed
    it (4404) by then, or recorded nothing (a guard against never, not a speed).

    The tests' TTL is 2 s, not 1: only a stall of the whole process for the TTL leaves
    a look with no frame since the activity it recorded last."""
    first = await server.manager.get_metadata(session_id)
    assert first is not None and first.expires_at is not None
    deadline = asyncio.get_running_loop().time() + 30.0
    for i in range(1000):
        await peer.request({"type": "ping", "id": i}, "pong")
        metadata = await server.manager.get_metadata(session_id)
        assert metadata is not None
        if metadata.last_activity_at > first.expires_at:
            return
        assert asyncio.get_running_loop().time() < deadline, "no activity past the TTL"
        await asyncio.sleep(0.2)
    raise AssertionError("no activity past the TTL in 1,000 pings")


async def test_frames_from_attached_peers_keep_a_session_alive() -> None:
    async with run_server(default_ttl=2, idle_timeout=0.25) as server:
        async with attach(server, "kept", create=True) as (peer, _):
            await ping_past_its_first_expiry(server, "kept", peer)
            ack = await peer.request({"type": "event", "id": "e", "event": token("x")}, "ack")
            assert ack["seq"] == 1


async def test_pings_keep_alive_a_session_whose_ttl_is_shorter_than_the_idle_timeout() -> None:
    # The look at a connected session comes at a third of its TTL, not only at the idle
    # timeout: a peer that keeps pinging keeps it alive, whatever the two settings.
    async with run_server(default_ttl=2, idle_timeout=5) as server:
        async with attach(server, "short", create=True) as (peer, _):
            await ping_past_its_first_expiry(server, "short", peer)
            ack = await peer.request({"type": "event", "id": "e", "event": token("x")}, "ack")
            assert ack["seq"] == 1


async def test_publishers_wait_for_room_in_a_full_inbox_and_lose_nothing() -> None:
    # Three connections pipelining into one session whose inbox holds 4 requests: their
    # readers wait (TCP back-pressure) instead of queueing without bound.
    async with run_server(inbox_limit=4) as server, attach(server) as (first, welcome):
        session_id = welcome["session"]["id"]
        async with (
            attach(server, session_id) as (second, _),
            attach(server, session_id) as (
                third,
                _,
            ),
        ):
            peers = (first, second, third)
            for i in range(60):
                for n, peer in enumerate(peers):
                    await peer.send({"type": "event", "id": i, "event": token(f"{n}:{i}")})
            for peer in peers:
                acks = [await peer.recv_type("ack") for _ in range(60)]
                assert [a["id"] for a in acks] == list(range(60))
            events = await first.request({"type": "events", "id": "all"}, "events")
            assert [e["seq"] for e in events["events"]] == list(range(1, 181))

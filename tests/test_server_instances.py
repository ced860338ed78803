"""Two servers on one Redis store act as one server (in this process, on real sockets):
events published on one reach viewers on the other, presence and connection counts
are session-wide (welcome, presence frames, listings and metadata), a session closed,
expired or deleted on one closes its connections on both, and its state (active, idle,
disconnected) is the whole session's, not one instance's. Real processes, killed and
restarted, are tests/test_redis_instances.py."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from bamboo_session.protocol.models import SessionState
from bamboo_session.server.app import BambooServer
from tests.instances import eventually
from tests.redis_server import RedisServer, prefix_for
from tests.server_instances_support import pair_fixture  # noqa: F401 (a fixture)
from tests.support import attach, get, open_peer, run_server, token


async def presence(peer: Any) -> dict[str, Any]:
    return await peer.recv_type("presence")


async def test_events_published_on_one_reach_viewers_on_the_other(
    pair: tuple[BambooServer, BambooServer],
) -> None:
    a, b = pair
    async with (
        attach(a, "s", create=True, role="agent") as (agent, _),
        attach(b, "s") as (viewer, _),
    ):
        for i in range(20):
            await agent.send({"type": "event", "id": i, "event": token(str(i))})
        seqs = [(await viewer.recv_type("event"))["seq"] for _ in range(20)]
        assert seqs == list(range(1, 21))


async def test_presence_and_counts_are_session_wide(
    pair: tuple[BambooServer, BambooServer],
) -> None:
    a, b = pair
    async with attach(a, "p", create=True) as (viewer, welcome):
        assert welcome["session"]["connections"] == 1
        async with attach(b, "p", role="agent") as (agent, agent_welcome):
            assert agent_welcome["session"]["connections"] == 2
            joined = await presence(viewer)
            assert joined == {
                "type": "presence",
                "joined": agent_welcome["connection_id"],
                "role": "agent",
                "connections": 2,
            }
            for server in (a, b):
                status, body = await get(server, "/api/v1/sessions/p")
                assert status == 200 and body["metadata"]["connections"] == 2
                status, listing = await get(server, "/api/v1/sessions")
                assert [s["connections"] for s in listing["sessions"]] == [2]
            async with attach(a, "p") as (_second, second_welcome):
                assert second_welcome["session"]["connections"] == 3
                assert (await presence(agent))["joined"] == second_welcome["connection_id"]
                assert (await presence(viewer))["connections"] == 3
            for peer in (agent, viewer):
                left = await presence(peer)
                assert (left["left"], left["connections"]) == (second_welcome["connection_id"], 2)
        left = await presence(viewer)
        assert left == {
            "type": "presence",
            "left": agent_welcome["connection_id"],
            "role": "agent",
            "connections": 1,
        }
    # The viewer's close handshake ends before A's detach leaves presence: wait for
    # that leave (A's room empties after it), not for the count, which a server that
    # never left would reach too once the connection's heartbeat lapsed (1 s).
    actor = a.manager.live_actor("p")
    await eventually(lambda: actor is None or not actor.room.outboxes)
    status, body = await get(b, "/api/v1/sessions/p")
    assert body["metadata"]["connections"] == 0


async def test_a_connection_whose_presence_was_lost_is_registered_again(
    pair: tuple[BambooServer, BambooServer], redis_server: RedisServer
) -> None:
    """Redis lost the registration (an outage longer than the heartbeat): the next
    heartbeat of its server registers it again and the other server announces it."""
    a, b = pair
    async with (
        attach(a, "r", create=True) as (viewer, _),
        attach(b, "r", role="agent") as (_agent, agent_welcome),
    ):
        await presence(viewer)
        store = b.manager.storage
        conns = store.layout.conns("r")  # type: ignore[attr-defined]
        await store.redis.call("ZREM", conns, f"agent|{agent_welcome['connection_id']}")  # type: ignore[attr-defined]
        again = await presence(viewer)  # within a heartbeat (1 s) / 3
        assert (again["joined"], again["connections"]) == (agent_welcome["connection_id"], 2)


async def test_closing_on_one_closes_connections_on_both(
    pair: tuple[BambooServer, BambooServer],
) -> None:
    a, b = pair
    async with (
        attach(a, "c", create=True) as (on_a, _),
        attach(b, "c") as (on_b, _),
    ):
        ack = await on_a.request({"type": "state", "id": 1, "state": "closed"}, "ack")
        assert ack["id"] == 1
        for peer in (on_a, on_b):
            code, frames = await peer.closed()
            assert code == 1000
            assert {"type": "closed", "reason": "session closed"} in frames
    async with attach(a, "c2", create=True) as (on_a, _), attach(b, "c2") as (on_b, _):
        await a.manager.delete_session("c2")
        code, _frames = await on_b.closed()
        assert code == 4404
        code, _frames = await on_a.closed()
        assert code == 4404


async def test_a_stopping_server_says_its_connections_left(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    url = redis_server.url(prefix=prefix_for(tmp_path), heartbeat=30)
    async with run_server(store=url) as a:
        async with attach(a, "g", create=True) as (viewer, _):
            async with run_server(store=url) as b:
                async with attach(b, "g", role="agent") as (_agent, welcome):
                    await presence(viewer)
                    await b.stop()  # graceful: its connections leave presence at once
                    left = await asyncio.wait_for(presence(viewer), 5)
                    assert (left["left"], left["connections"]) == (welcome["connection_id"], 1)


async def test_while_redis_is_away_requests_fail_and_the_session_goes_on(
    start_redis: Any, tmp_path: Path
) -> None:
    """Redis stops under a live session: an attach is refused with 1011 (at once, not
    hung), a publish gets ``internal``; the attached peer stays, and once Redis is
    back (its AOF kept everything) both work again, with nothing acknowledged lost."""
    redis = start_redis("redis")
    url = redis.url(prefix="outage")
    async with run_server(store=url) as server, attach(server, "o", create=True) as (agent, _):
        ack = await agent.request({"type": "event", "id": 1, "event": token("a")}, "ack")
        assert ack["seq"] == 1
        redis.stop()
        async with open_peer(server, "o") as late:
            await late.send({"type": "hello"})
            code, _frames = await late.closed()
            assert code == 1011
        error = await agent.request({"type": "event", "id": 2, "event": token("b")}, "error")
        assert (error["id"], error["code"]) == (2, "internal")
        assert "redis unavailable" in error["message"]
        redis.start()
        for attempt in range(50):  # the pool reconnects on the next call
            await agent.send({"type": "event", "id": 3 + attempt, "key": "b", "event": token("b")})
            reply = await agent.recv()
            if reply["type"] == "ack":
                break
            await asyncio.sleep(0.1)
        assert reply["seq"] == 2
        async with attach(server, "o", last_seq=0) as (viewer, welcome):
            assert welcome["resumed"] and welcome["replay"] == 2
            assert [(await viewer.recv_type("event"))["seq"] for _ in range(2)] == [1, 2]


async def test_an_expired_session_closes_its_connections_on_both(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Its peers stay silent past the session's TTL: whichever instance notices first
    (its idle timer, or the cleanup that deletes it under the lease), every connection
    on both is closed with 4404."""
    url = redis_server.url(prefix=prefix_for(tmp_path), lease_ttl=0.6)
    settings = {"default_ttl": 1, "idle_timeout": 0.3, "cleanup_interval": 0.2}
    async with run_server(store=url, **settings) as a, run_server(store=url, **settings) as b:
        async with attach(a, "e", create=True) as (on_a, _), attach(b, "e") as (on_b, _):
            for peer in (on_a, on_b):
                code, _frames = await peer.closed(timeout=10)
                assert code == 4404
        status, _body = await get(b, "/api/v1/sessions/e")
        assert status == 404


async def stored_state(server: BambooServer, session_id: str) -> str:
    """The session's state, as ``server`` answers it over HTTP."""
    status, body = await get(server, f"/api/v1/sessions/{session_id}")
    assert status == 200
    return str(body["metadata"]["state"])


async def becomes(server: BambooServer, session_id: str, state: str) -> None:
    """Waits until the session's state is ``state``: a guard against never (20 s)."""

    async def reached() -> bool:
        return await stored_state(server, session_id) == state

    await eventually(reached, 20.0)


async def test_the_state_is_the_whole_sessions_not_one_instances(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """An agent on B publishes while A's viewer is silent: the session stays ``active``
    (A's idle timer counts B's appends); A's viewer leaves while B's agent is attached:
    still ``active``, not ``disconnected``; the last one out makes it
    ``disconnected``."""
    idle_timeout = 2.0
    url = redis_server.url(prefix=prefix_for(tmp_path), heartbeat=1)
    # B does not look during the test: its look finds its agent busy and makes a
    # session A wrongly made idle active again, at times before a read here saw it.
    async with (
        run_server(store=url, idle_timeout=idle_timeout) as a,
        run_server(store=url, idle_timeout=60) as b,
    ):
        async with attach(b, "st", create=True, role="agent") as (agent, _):
            async with attach(a, "st") as (_viewer, _):
                # Two of A's looks at its silent viewer (the first at about the idle
                # timeout): one that did not count B's appends made it idle by then.
                # An append every 0.1 s: only a stall of the whole process for the idle
                # timeout (2 s; it was 1 s) could leave B's last one too old at a look.
                loop = asyncio.get_running_loop()
                looked = loop.time() + 2 * idle_timeout + 0.5
                for i in range(200):
                    if loop.time() >= looked:
                        break
                    await agent.request({"type": "event", "id": i, "event": token("x")}, "ack")
                    await asyncio.sleep(0.1)
                    assert await stored_state(a, "st") == "active", i
            for i in range(3):
                await agent.request({"type": "event", "id": 10 + i, "event": token("y")}, "ack")
                assert await stored_state(a, "st") == "active"
        await becomes(a, "st", "disconnected")  # written as the last one leaves


async def test_a_dead_instances_connections_hold_off_disconnected_until_they_expire(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The last connection on A leaves while presence still holds a connection of an
    instance that died (it never left; it expires after the heartbeat, 4 s): A leaves
    the session's state to whoever holds that connection, looking again every 0.3 s,
    then, once it expired, writes ``disconnected`` itself."""
    url = redis_server.url(prefix=prefix_for(tmp_path), heartbeat=4)
    async with run_server(store=url, idle_timeout=0.3) as a:
        async with attach(a, "dd", create=True) as (_viewer, _):
            presence = a.storage.presence  # type: ignore[union-attr]
            assert await presence.join("dd", "c_of_a_dead_instance", "client") == 2
        # Looks at 0.3 and 0.6 s found it still attached. Its expiry is 4 s away (it
        # was 2): only a stall of 3 s, not 1, brings this read past it.
        await asyncio.sleep(0.8)
        assert await stored_state(a, "dd") == "active"
        await becomes(a, "dd", "disconnected")  # once it expired


async def test_a_session_made_idle_by_one_instance_is_made_active_by_anothers_peers(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A's look made the session ``idle`` (its viewer silent, and the store's last
    activity older than the idle timeout: B's agent was silent for that long too), and
    the agent publishes again before B's next look. B never saw it idle: it held it
    ``active`` and wrote nothing, at its looks or its appends, so the session stayed
    ``idle`` in the store for as long as the agent published. Now B's look, which reads
    the stored state, finds its peers busy and makes it ``active`` again."""
    url = redis_server.url(prefix=prefix_for(tmp_path), heartbeat=1)
    settings = {"idle_timeout": 0.5}
    async with run_server(store=url, **settings) as a, run_server(store=url, **settings) as b:
        async with attach(b, "si", create=True, role="agent") as (agent, _):
            async with attach(a, "si") as (_viewer, _):
                # What A's look writes (server/status.py check), now rather than when
                # its timer and B's happen to fall that way.
                await a.manager.storage.update_session_state("si", SessionState.IDLE)
                assert await stored_state(a, "si") == "idle"
                # Until it reads ``active``, not for a count: a stall of the process
                # for the idle timeout late in a fixed run could let A's look make it
                # idle again just before the read (B's next look undoes that). Only
                # B's look writes ``active`` (appends write nothing): never without it.
                for i in range(100):  # 20 s: a guard, where B looks every 0.5 s
                    await agent.request({"type": "event", "id": i, "event": token("x")}, "ack")
                    if await stored_state(a, "si") == "active":
                        break
                    await asyncio.sleep(0.2)
                else:
                    raise AssertionError("still idle after 100 appends, 20 s")

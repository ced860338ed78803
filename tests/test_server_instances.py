"""Two servers on one Redis store act as one server (in this process, on real sockets):
events published on one reach viewers on the other, presence and connection counts
are session-wide (welcome, presence frames, listings and metadata), and a session
closed or deleted on one closes its connections on both. Real processes, killed and
restarted, are tests/test_redis_instances.py."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from bamboo_session.persistence.redis import listener
from bamboo_session.protocol.models import AgentEvent, SessionState
from bamboo_session.server.app import BambooServer
from tests.instances import eventually
from tests.redis_server import RedisServer, prefix_for
from tests.support import attach, get, open_peer, run_server, token


@pytest.fixture
async def pair(
    redis_server: RedisServer, tmp_path: Path
) -> AsyncIterator[tuple[BambooServer, BambooServer]]:
    url = redis_server.url(prefix=prefix_for(tmp_path), heartbeat=1)
    async with run_server(store=url) as a, run_server(store=url) as b:
        yield a, b


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


class LatePubSub:
    """Holds what an instance's pub/sub listener hands its feed for one session, as a
    late pub/sub message (a busy instance, a listener connecting again) would, until
    :meth:`release`: the store has the events, this instance has not heard of them."""

    def __init__(self, server: BambooServer, session_id: str, monkeypatch: Any) -> None:
        self.feed = server.storage.live.feed  # type: ignore[union-attr]
        self.session_id = session_id
        self.held: list[Any] = []
        self.holding = True
        publish = self.feed.publish

        def late_publish(session_id: str, events: list[Any], epoch: str | None = None) -> None:
            if self.holding and session_id == self.session_id:
                self.held.append((events, epoch))
            else:
                publish(session_id, events, epoch)

        self._publish = publish
        monkeypatch.setattr(self.feed, "publish", late_publish)

    async def holding_seq(self, seq: int) -> None:
        """Returns once the pub/sub message of ``seq`` reached this instance and is held.
        Redis sends it to this instance's listener as it answers the appending instance,
        on another connection: nothing orders the two, and the ack read at once came
        before it in one run of twenty beside other load."""
        await eventually(
            lambda: any(event.seq == seq for events, _ in self.held for event in events),
            timeout=30.0,
        )

    def release(self) -> None:
        self.holding = False
        for events, epoch in self.held:
            self._publish(self.session_id, events, epoch)


async def test_a_resume_on_an_instance_not_yet_told_of_the_events_resumes(
    pair: tuple[BambooServer, BambooServer], monkeypatch: Any
) -> None:
    """A client saw seq 2 on A and resumes on B before B's pub/sub brought it there:
    the store has it, so it is a resume (not "beyond the log's end"), and the client
    is not sent seq 2 again; B's other viewers get it once."""
    a, b = pair
    async with (
        attach(a, "lag", create=True, role="agent") as (agent, welcome),
        attach(b, "lag") as (viewer, _),  # B follows the session
    ):
        ack = await agent.request({"type": "event", "id": 1, "event": token("1")}, "ack")
        assert (await viewer.recv_type("event"))["seq"] == ack["seq"] == 1
        late = LatePubSub(b, "lag", monkeypatch)
        ack = await agent.request({"type": "event", "id": 2, "event": token("2")}, "ack")
        assert ack["seq"] == 2
        await late.holding_seq(2)
        async with attach(b, "lag", last_seq=2, epoch=welcome["epoch"]) as (resumer, again):
            assert (again["resumed"], again["replay"], again["last_seq"]) == (True, 0, 2)
            assert (await viewer.recv_type("event"))["seq"] == 2
            late.release()
            ack = await agent.request({"type": "event", "id": 3, "event": token("3")}, "ack")
            assert (await resumer.recv_type("event"))["seq"] == 3
            assert (await viewer.recv_type("event"))["seq"] == 3


async def test_a_close_on_an_instance_not_yet_told_of_the_events_delivers_them_first(
    pair: tuple[BambooServer, BambooServer], monkeypatch: Any
) -> None:
    """Seq 1 is acknowledged on A; the session is closed on B before B's pub/sub
    brought it there: B's viewers get seq 1 before ``closed``, as A's do."""
    a, b = pair
    async with (
        attach(a, "lc", create=True, role="agent") as (agent, _),
        attach(b, "lc") as (closer, _),
        attach(b, "lc") as (viewer, _),
    ):
        late = LatePubSub(b, "lc", monkeypatch)
        ack = await agent.request({"type": "event", "id": 1, "event": token("1")}, "ack")
        assert ack["seq"] == 1
        await late.holding_seq(1)
        await closer.send({"type": "state", "id": 2, "state": "closed"})
        code, frames = await viewer.closed()
        assert code == 1000
        kinds = [(f["type"], f.get("seq")) for f in frames if f["type"] != "presence"]
        assert kinds == [("event", 1), ("closed", None)]


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


@contextlib.asynccontextmanager
async def alice_unheard(
    a: BambooServer, b: BambooServer, admin: redis.asyncio.Redis, ending: str
) -> AsyncIterator[tuple[Any, dict[str, Any]]]:
    """Alice attached to ``s1`` on A, her first event stored; then A's pub/sub
    connection killed (A hears nothing more until its listener's next attempt) and
    ``s1`` ended on B (``expired``, or ``deleted``). Yields her peer and her welcome."""
    # A pub/sub connection subscribed to nothing is not of type pubsub: A's is the one
    # that subscribes to s1 when alice attaches there.
    before = await _pubsub_clients(admin)
    async with attach(a, "s1", create=True, user_id="alice", role="agent") as (alice, old):
        a_pubsub = await _pubsub_clients(admin) - before
        assert len(a_pubsub) == 1
        first = {"type": "event", "id": 1, "event": token("alice-old")}
        assert (await alice.request(first, "ack"))["seq"] == 1
        for client_id in a_pubsub:
            await admin.client_kill_filter(_id=client_id)
        if ending == "expired":
            await b.manager.storage.update_session_state("s1", SessionState.EXPIRED)
        else:
            await b.manager.delete_session("s1")
        yield alice, old


async def _pubsub_clients(admin: redis.asyncio.Redis) -> set[int]:
    return {int(client["id"]) for client in await admin.client_list(_type="pubsub")}


async def _reply(peer: Any, request: dict[str, Any]) -> dict[str, Any]:
    """The reply to ``request``: the next frame with its id."""
    await peer.send(request)
    while True:
        frame = await peer.recv()
        if frame.get("id") == request["id"]:
            return frame


@pytest.mark.parametrize("ending", ["expired", "deleted"])
async def test_a_peer_of_the_old_session_never_appends_to_the_one_that_replaced_it(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ending: str
) -> None:
    """Alice is attached to ``s1`` on server A, whose pub/sub connection is lost (its
    listener reconnects after 2 s, the longest of its waits); ``s1`` expires or is
    deleted, and bob creates it again on server B (a new epoch, seq from 1). Alice's
    next event and reads reach no session: her append is fenced by the epoch of the
    log her actor serves (``not_found``, nothing stored), her ``events`` and ``history``
    requests too, and once A hears of the deletion her connection closes with 4404.
    Bob's log holds his events alone."""
    monkeypatch.setattr(listener, "RECONNECT_DELAYS", (2.0,))
    url = redis_server.url(prefix=prefix_for(tmp_path))
    admin = redis.asyncio.Redis(port=redis_server.port)
    try:
        async with run_server(store=url) as a, run_server(store=url) as b:
            async with alice_unheard(a, b, admin, ending) as (alice, old):
                async with attach(b, "s1", create=True, user_id="bob") as (bob, new):
                    assert new["epoch"] != old["epoch"] and new["last_seq"] == 0
                    mine = {"type": "event", "id": 1, "event": token("bob")}
                    assert (await bob.request(mine, "ack"))["seq"] == 1
                    for request in (
                        {"type": "event", "id": 2, "event": token("alice-new")},
                        {"type": "events", "id": 3},
                        {"type": "history", "id": 4},
                    ):
                        reply = await _reply(alice, request)
                        assert (reply["type"], reply.get("code")) == ("error", "not_found"), reply
                    code, _frames = await alice.closed(timeout=10)
                    assert code == 4404
                    events = await bob.request({"type": "events", "id": 2}, "events")
                    assert [e["event"] for e in events["events"]] == [token("bob")]
                    assert events["last_seq"] == 1
                stored = await b.manager.storage.read_events("s1")
                assert [e.event for e in stored] == [AgentEvent.token("bob")]
    finally:
        await admin.aclose()


@pytest.mark.parametrize("ending", ["expired", "deleted"])
async def test_a_peer_of_the_old_session_never_moves_the_one_that_replaced_it(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ending: str
) -> None:
    """As above, A hearing nothing of ``s1`` for a while (5 s here): alice, still
    attached to the old ``s1`` there, asks for ``state: idle`` then ``state: closed``
    while bob is attached to the new one on B. Her actor's writes are fenced by the
    epoch of the session it serves, as its appends are: each request is ``not_found``,
    and bob's session is neither closed nor moved (its state, its activity and its
    expiry, which the activity that comes with a state request would have slid, are
    as they were). Bob goes on appending; alice's connection closes with 4404 once A
    hears."""
    monkeypatch.setattr(listener, "RECONNECT_DELAYS", (5.0,))
    url = redis_server.url(prefix=prefix_for(tmp_path))
    admin = redis.asyncio.Redis(port=redis_server.port)
    try:
        async with (
            run_server(store=url, default_ttl=3600) as a,
            run_server(store=url, default_ttl=3600) as b,
        ):
            store = b.manager.storage
            async with alice_unheard(a, b, admin, ending) as (alice, old):
                async with attach(b, "s1", create=True, user_id="bob") as (bob, new):
                    assert new["epoch"] != old["epoch"]
                    mine = {"type": "event", "id": 1, "event": token("bob")}
                    assert (await bob.request(mine, "ack"))["seq"] == 1
                    stored = await store.get_metadata("s1")
                    assert stored is not None and stored.state == SessionState.ACTIVE
                    assert stored.expires_at is not None
                    await asyncio.sleep(0.05)  # a write now would show in the times
                    for request in (
                        {"type": "state", "id": 2, "state": "idle"},
                        {"type": "state", "id": 3, "state": "closed"},
                    ):
                        reply = await _reply(alice, request)
                        assert (reply["type"], reply.get("code")) == ("error", "not_found"), reply
                    after = await store.get_metadata("s1")
                    assert after is not None and after.epoch == new["epoch"]
                    assert (after.state, after.updated_at) == (stored.state, stored.updated_at)
                    assert after.last_activity_at == stored.last_activity_at
                    assert after.expires_at == stored.expires_at
                    again = {"type": "event", "id": 2, "event": token("bob again")}
                    assert (await bob.request(again, "ack"))["seq"] == 2
                    code, _frames = await alice.closed(timeout=15)
                    assert code == 4404
                    final = await store.get_metadata("s1")
                    assert final is not None and final.state == SessionState.ACTIVE
                    assert final.epoch == new["epoch"]
    finally:
        await admin.aclose()


async def test_an_attach_on_an_instance_not_told_of_a_replacement_joins_the_new_log(
    pair: tuple[BambooServer, BambooServer], redis_server: RedisServer, monkeypatch: Any
) -> None:
    """The session is deleted and created again on A (a new epoch, three events) while
    B's pub/sub connection is down (its notices lost): a new client attaching on B,
    where the old log's viewer still is, gets the new log (its epoch, its three
    events), not a welcome into the old room (its epoch, seq 0) and then 4404, which
    tells a client the session is gone. The old log's viewer gets what the notice
    would have told it; once B's listener is back, the new log goes on."""
    a, b = pair
    async with attach(b, "rp", create=True) as (old_viewer, old):
        listener = b.storage.live.listener  # type: ignore[union-attr]
        deliver = listener._deliver
        monkeypatch.setattr(listener, "_deliver", lambda *args: None)  # lost
        await a.manager.delete_session("rp")
        async with attach(a, "rp", create=True, role="agent") as (agent, new):
            assert new["epoch"] != old["epoch"]
            for i in range(3):
                await agent.request({"type": "event", "id": i, "event": token(str(i))}, "ack")
            async with attach(b, "rp", last_seq=0) as (client, welcome):
                assert (welcome["epoch"], welcome["last_seq"]) == (new["epoch"], 3)
                seqs = [(await client.recv_type("event"))["seq"] for _ in range(3)]
                assert seqs == [1, 2, 3]
                code, frames = await old_viewer.closed()
                assert code == 4404
                assert frames[-1] == {"type": "closed", "reason": "session deleted"}
                # B's listener connects again and catches up: the new log goes on.
                monkeypatch.setattr(listener, "_deliver", deliver)
                reconnects = listener.reconnects
                await b.storage.redis.call("CLIENT", "KILL", "TYPE", "pubsub")  # type: ignore[union-attr]
                await eventually(lambda: listener.reconnects > reconnects and listener.connected)
                await agent.request({"type": "event", "id": 9, "event": token("9")}, "ack")
                assert (await client.recv_type("event"))["seq"] == 4


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


async def test_a_late_deleted_notice_of_the_old_log_leaves_the_new_logs_clients(
    pair: tuple[BambooServer, BambooServer], monkeypatch: Any
) -> None:
    """The session is deleted and created again on A while B's listener holds its
    messages back (late, not lost); a client attaches on B to the new log; then B hears
    the old log's ``deleted``. It ends the old log's subscriptions only: the new
    client stays and gets the new log's next event, not 4404 from a live session."""
    a, b = pair
    async with attach(b, "ld", create=True) as (old_viewer, old):
        listener = b.storage.live.listener  # type: ignore[union-attr]
        deliver = listener._deliver
        held: list[tuple[str, bytes]] = []
        monkeypatch.setattr(listener, "_deliver", lambda *args: held.append(args))  # late
        await a.manager.delete_session("ld")
        async with attach(a, "ld", create=True, role="agent") as (agent, new):
            assert new["epoch"] != old["epoch"]
            await agent.request({"type": "event", "id": 1, "event": token("1")}, "ack")
            async with attach(b, "ld", last_seq=0) as (client, welcome):
                assert (welcome["epoch"], welcome["last_seq"]) == (new["epoch"], 1)
                assert (await client.recv_type("event"))["seq"] == 1
                code, _frames = await old_viewer.closed()
                assert code == 4404
                monkeypatch.setattr(listener, "_deliver", deliver)
                assert any(data.startswith(b"deleted") for _, data in held)
                for session_id, data in held:  # the late messages, in order
                    deliver(session_id, data)
                await agent.request({"type": "event", "id": 2, "event": token("2")}, "ack")
                assert (await client.recv_type("event"))["seq"] == 2

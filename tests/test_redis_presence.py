"""Presence across instances on Redis (persistence/redis/presence.py): joins and
leaves on one instance reach the others with the session-wide count, and a dead
instance's connections expire after the heartbeat and are announced as left. Calls
given an epoch reach the session of that epoch only: an instance that has not heard of
a deletion or a replacement registers nothing in the session that took the id. A
refresh or join that Redis runs after the leave of its connection (given up on by its
instance, its bytes already sent) registers nothing and announces nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from bamboo_session.persistence import SessionNotFound, open_storage
from bamboo_session.persistence.presence import Held, PresenceNotice, PresenceStore
from bamboo_session.persistence.redis import RedisStorage
from bamboo_session.protocol.models import Session, SessionState
from bamboo_session.server.presence import SharedPresence
from tests.instances import eventually
from tests.redis_server import RedisServer, prefix_for


async def next_notice(notices: asyncio.Queue[PresenceNotice]) -> PresenceNotice:
    return await asyncio.wait_for(notices.get(), 5.0)


async def test_presence_is_session_wide(redis_server: RedisServer, tmp_path: Path) -> None:
    url = redis_server.url(prefix=prefix_for(tmp_path), heartbeat=0.5)
    a, b = await open_storage(url), await open_storage(url)
    assert isinstance(a, RedisStorage) and isinstance(b, RedisStorage)
    try:
        assert isinstance(a.presence, PresenceStore)
        await a.create_session(Session.new("s1"))
        seen: asyncio.Queue[PresenceNotice] = asyncio.Queue()
        b.presence.on_presence(seen.put_nowait)
        subscription = await b.subscribe("s1", 0)  # b follows the session

        assert await a.presence.join("s1", "c_a1", "agent") == 1
        notice = await next_notice(seen)
        assert (notice.connection_id, notice.role, notice.joined, notice.connections) == (
            "c_a1",
            "agent",
            True,
            1,
        )
        assert notice.instance == a.presence.instance != b.presence.instance
        assert await b.presence.join("s1", "c_b1", "client") == 2
        assert (await next_notice(seen)).instance == b.presence.instance  # its own, too
        assert await a.presence.count("s1") == 2
        assert await a.presence.leave("s1", "c_a1", "agent") == 1
        left = await next_notice(seen)
        assert (left.connection_id, left.joined, left.connections, left.expired) == (
            "c_a1",
            False,
            1,
            False,
        )

        # a dies with a connection registered: b's heartbeats keep b's alive, and the
        # first of them after a's deadline announces a's as left.
        assert await a.presence.join("s1", "c_a2", "client") == 2
        await next_notice(seen)
        for _ in range(8):
            await asyncio.sleep(0.1)
            await b.presence.refresh([Held("s1", [("c_b1", "client")])])
        gone = await next_notice(seen)
        assert (gone.connection_id, gone.joined, gone.expired, gone.connections) == (
            "c_a2",
            False,
            True,
            1,
        )
        assert await b.presence.count("s1") == 1
        subscription.close()
    finally:
        await a.close()
        await b.close()


async def test_refresh_registers_again_what_went_missing(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """An instance that lost Redis for longer than the heartbeat still holds its
    connections: its next refresh registers them again, announced as joined, and
    names their session if another instance parked it meanwhile (not one whose state
    needs nothing: after an outage every session is registered again, and its actors
    should read nothing); counts of several sessions come in one call; several
    connections leave at once."""
    url = redis_server.url(prefix=prefix_for(tmp_path), heartbeat=0.3)
    a, b = await open_storage(url), await open_storage(url)
    assert isinstance(a, RedisStorage) and isinstance(b, RedisStorage)
    try:
        for session_id in ("s1", "s2", "s3"):
            await a.create_session(Session.new(session_id))
        seen: asyncio.Queue[PresenceNotice] = asyncio.Queue()
        b.presence.on_presence(seen.put_nowait)
        subscription = await b.subscribe("s1", 0)
        held = [("c1", "client"), ("c2", "agent")]
        await a.presence.join("s1", *held[0])
        await a.presence.join("s1", *held[1])
        assert [(await next_notice(seen)).connection_id for _ in held] == ["c1", "c2"]
        await a.presence.join("s3", "c3", "client")  # its session stays active

        await asyncio.sleep(0.4)  # a's heartbeat deadline passes: both are gone
        assert await a.presence.counts(["s1", "s2"]) == [0, 0]
        assert {(await next_notice(seen)).expired for _ in held} == {True}
        # b, taking them for gone, parks s1; s3 is left active.
        await b.update_session_state("s1", SessionState.DISCONNECTED)
        # It says which parked sessions it registered connections of again (their
        # actors write their state back), and only those.
        s3 = Held("s3", [("c3", "client")])
        assert await a.presence.refresh([Held("s1", held), Held("s2", []), s3]) == ["s1"]
        assert await a.presence.counts(["s3"]) == [1]  # registered again all the same
        again = [await next_notice(seen) for _ in held]
        assert [(n.connection_id, n.joined, n.connections) for n in again] == [
            ("c1", True, 1),
            ("c2", True, 2),
        ]
        # Still there: nothing to announce, nothing registered again.
        assert await a.presence.refresh([Held("s1", held)]) == []
        assert await a.presence.counts(["s1", "s2"]) == [2, 0]
        assert seen.empty()
        assert await a.presence.leave_all("s1", held) == 0
        assert {(await next_notice(seen)).joined for _ in held} == {False}
        subscription.close()
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize("ending", ["deleted", "replaced"])
async def test_a_stale_epoch_registers_nothing_in_the_session_that_took_the_id(
    redis_server: RedisServer, tmp_path: Path, ending: str
) -> None:
    """``a`` holds ``c_old`` of ``s1``; ``s1`` is deleted (or expires and is replaced)
    and created again on ``b``, where ``c_new`` joins the new one. Whatever ``a`` does
    with the old epoch (join, refresh, leave) is not counted there nor announced; a
    join or leave is SessionNotFound, a refresh registers nothing. The deletion took
    ``c_old`` with it; one of a session not created again leaves no key behind."""
    url = redis_server.url(prefix=prefix_for(tmp_path), heartbeat=5)
    a, b = await open_storage(url), await open_storage(url)
    assert isinstance(a, RedisStorage) and isinstance(b, RedisStorage)
    try:
        old = Session.new("s1")
        await a.create_session(old)
        stale = old.metadata.epoch
        assert await a.presence.join("s1", "c_old", "client", epoch=stale) == 1
        new = Session.new("s1")
        if ending == "deleted":
            await b.delete_session("s1")
            await b.create_session(new)
        else:
            await b.update_session_state("s1", SessionState.EXPIRED)
            await b.create_session(new, replace_expired=True)
        seen: asyncio.Queue[PresenceNotice] = asyncio.Queue()
        b.presence.on_presence(seen.put_nowait)
        subscription = await b.subscribe("s1", 0)
        assert await b.presence.join("s1", "c_new", "agent", epoch=new.metadata.epoch) == 1
        assert (await next_notice(seen)).connection_id == "c_new"

        with pytest.raises(SessionNotFound):
            await a.presence.join("s1", "c_old2", "client", epoch=stale)
        await a.presence.refresh([Held("s1", [("c_old", "client")], stale)])
        with pytest.raises(SessionNotFound):
            await a.presence.leave("s1", "c_new", "agent", epoch=stale)
        with pytest.raises(SessionNotFound):
            await a.presence.leave_all("s1", [("c_new", "agent")], epoch=stale)
        assert await a.presence.count("s1") == await b.presence.count("s1") == 1
        await asyncio.sleep(0.2)
        assert seen.empty()
        # The new epoch, or none, reaches it as before.
        await a.presence.refresh([Held("s1", [("c_a", "client")], new.metadata.epoch)])
        assert (await next_notice(seen)).connection_id == "c_a"
        assert await a.presence.leave("s1", "c_a", "client") == 1
        subscription.close()

        await b.delete_session("s1")
        await a.presence.refresh([Held("s1", [("c_old", "client")], stale)])
        assert await a.presence.count("s1") == 0
        assert await a.redis.call("EXISTS", a.layout.conns("s1")) == 0
    finally:
        await a.close()
        await b.close()


async def test_an_old_actors_leave_spares_the_new_sessions_connections(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """One server's presence (server/presence.py) holds ``c_old`` of ``s1``'s old
    epoch; ``s1`` is replaced and the new session's actor there registers ``c_new``
    before the old actor has finished: the old actor's ``leave_session`` unregisters
    the old epoch's connections only, so ``c_new`` stays counted and refreshed. A join
    with the old epoch is SessionNotFound (the attach fails as on a deleted session)."""
    url = redis_server.url(prefix=prefix_for(tmp_path), heartbeat=5)
    store = await open_storage(url)
    assert isinstance(store, RedisStorage)
    shared = SharedPresence(store.presence, lambda notice: None)
    try:
        old = Session.new("s1")
        await store.create_session(old)
        assert await shared.join("s1", "c_old", "client", old.metadata.epoch) == 1
        await store.delete_session("s1")
        new = Session.new("s1")
        await store.create_session(new)
        assert await shared.join("s1", "c_new", "client", new.metadata.epoch) == 1
        with pytest.raises(SessionNotFound):
            await shared.join("s1", "c_late", "client", old.metadata.epoch)
        await shared.leave_session("s1", old.metadata.epoch)
        assert shared.held("s1") == 1
        await store.redis.call("DEL", store.layout.conns("s1"))  # lost: the heartbeat restores
        await shared.refresh()
        assert await shared.count("s1") == 1
        await shared.leave_session("s1", new.metadata.epoch)
        assert (shared.held("s1"), await shared.count("s1")) == (0, 0)
    finally:
        await store.close()


async def test_a_sweep_announces_the_count_after_the_join_that_made_it(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The first join after an instance died sweeps its connections out. The joining
    instance tells its own peers of the join at once, with the count the join
    answered, and hears the sweep's notices later, on the channel: each must carry
    that same count (the one after the whole call), not the one from before the join,
    or its peers would be left showing one connection fewer than there are (measured
    before: a peer on the joining instance got `joined` with 2, then three `left` with
    1, while 2 were attached)."""
    prefix = prefix_for(tmp_path)
    dead = await open_storage(redis_server.url(prefix=prefix, heartbeat=0.3))
    b = await open_storage(redis_server.url(prefix=prefix, heartbeat=30))
    assert isinstance(dead, RedisStorage) and isinstance(b, RedisStorage)
    try:
        await b.create_session(Session.new("s1"))
        seen: asyncio.Queue[PresenceNotice] = asyncio.Queue()
        b.presence.on_presence(seen.put_nowait)
        subscription = await b.subscribe("s1", 0)
        for connection_id in ("d1", "d2"):
            await dead.presence.join("s1", connection_id, "client")
        assert await b.presence.join("s1", "watcher", "client") == 3
        assert [(await next_notice(seen)).connection_id for _ in range(3)] == [
            "d1",
            "d2",
            "watcher",
        ]

        await asyncio.sleep(0.5)  # past the dead instance's deadline, not b's
        assert await b.presence.join("s1", "joiner", "agent") == 2
        notices = [await next_notice(seen) for _ in range(3)]
        assert [(n.connection_id, n.joined, n.expired, n.connections) for n in notices] == [
            ("d1", False, True, 2),
            ("d2", False, True, 2),
            ("joiner", True, False, 2),
        ]
        subscription.close()
    finally:
        await dead.close()
        await b.close()


async def test_a_refresh_or_join_run_after_the_leave_registers_nothing(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The interleaving: a's heartbeat refresh of c1 is sent, then given up on (the
    socket timeout of a stalled Redis, or a stop cancelling it), so c1's leave goes
    out on another connection, and Redis runs the leave first and the refresh after;
    a join given up on likewise. Made here in that order: c1 is not counted again nor
    announced as joined. A connection Redis lost is still registered again."""
    url = redis_server.url(prefix=prefix_for(tmp_path), heartbeat=30)
    a, b = await open_storage(url), await open_storage(url)
    assert isinstance(a, RedisStorage) and isinstance(b, RedisStorage)
    try:
        await a.create_session(Session.new("s1"))
        seen: asyncio.Queue[PresenceNotice] = asyncio.Queue()
        b.presence.on_presence(seen.put_nowait)
        subscription = await b.subscribe("s1", 0)
        assert await a.presence.join("s1", "c1", "client") == 1
        assert await a.presence.leave("s1", "c1", "client") == 0
        assert [(await next_notice(seen)).joined for _ in range(2)] == [True, False]
        assert await a.presence.refresh([Held("s1", [("c1", "client")])]) == []  # late
        assert await a.presence.join("s1", "c1", "client") == 0  # late
        assert await a.presence.counts(["s1"]) == [0]
        # c2 lost by Redis (its key gone), still connected: registered again.
        await a.presence.join("s1", "c2", "client")
        await a.redis.call("DEL", a.layout.conns("s1"))
        await a.presence.refresh([Held("s1", [("c2", "client")])])
        assert await a.presence.counts(["s1"]) == [1]
        # Only c2's notices came: c1 was announced joined once, and left once.
        notices = [await next_notice(seen) for _ in range(2)]
        assert [(n.connection_id, n.joined) for n in notices] == [("c2", True), ("c2", True)]
        assert seen.empty()
        subscription.close()
    finally:
        await a.close()
        await b.close()


async def test_the_marks_of_connections_that_left_are_bounded_and_expire(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A session's marks are the newest 1,024, each for twice the heartbeat, in a key
    that expires with the last of them; a connection whose mark went is registered
    again by a refresh (its instance still holds it: Redis lost it)."""
    store = await open_storage(redis_server.url(prefix=prefix_for(tmp_path), heartbeat=1))
    assert isinstance(store, RedisStorage)
    try:
        await store.create_session(Session.new("s1"))
        left = [(f"c{i}", "client") for i in range(1500)]
        assert await store.presence.leave_all("s1", left) == 0
        gone = store.layout.gone("s1")
        client = store.redis.client
        assert await client.zcard(gone) == 1024  # of one leave: by rank, as named
        assert 0 < await client.pttl(gone) <= 2000
        marked = {member.decode() for member in await client.zrange(gone, 0, -1)}
        dropped = next(c for c, role in left if f"{role}|{c}" not in marked)
        kept = next(c for c, role in left if f"{role}|{c}" in marked)
        await store.presence.refresh([Held("s1", [(dropped, "client"), (kept, "client")])])
        assert await store.presence.counts(["s1"]) == [1]  # the one whose mark went
        await eventually(lambda: _missing(client, gone), timeout=5)
        # Past twice the heartbeat (the first registration swept by now), both count.
        await store.presence.refresh([Held("s1", [(dropped, "client"), (kept, "client")])])
        assert await store.presence.counts(["s1"]) == [2]
    finally:
        await store.close()


async def _missing(client: Any, key: str) -> bool:
    return not await client.exists(key)

"""A ``hello`` with ``create`` on a session that has expired (its TTL ran out, or its
state is ``expired``) gets a new session under the same id, on every store: a new
epoch, an empty log (nothing of the old one readable over WebSocket or HTTP), the
hello's owner and title; the expired session's live actor ends first (its peers get
``closed`` and 4404, ``session expired``); concurrent creates share the one new
session; the creation quotas apply; under auth, anyone may create it. Without
``create``, an expired session is still 4404."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bamboo_session.protocol.models import SessionState
from bamboo_session.server.app import BambooServer
from tests.auth_support import SECRET, make_token
from tests.server_backends import pytest_generate_tests, server_store
from tests.support import attach, get, open_peer, run_server, token

__all__ = ["pytest_generate_tests", "server_store"]  # the store each test runs on
pytestmark = pytest.mark.usefixtures("server_store")


async def old_session(server: BambooServer, session_id: str = "s1", **hello: Any) -> str:
    """A session with three events, made by a hello with create, left parked; its epoch."""
    hello = {"user_id": "u1", "title": "Old", **hello}
    async with attach(server, session_id, create=True, **hello) as (peer, welcome):
        for i in range(3):
            await peer.request({"type": "event", "id": i, "event": token(f"old{i}")}, "ack")
    epoch: str = welcome["epoch"]
    return epoch


async def expire(server: BambooServer, session_id: str = "s1") -> None:
    """The session's state becomes ``expired`` in the store, as a TTL run out would."""
    await server.manager.storage.update_session_state(session_id, SessionState.EXPIRED)


async def refused(server: BambooServer, session_id: str, **hello: Any) -> tuple[int | None, str]:
    async with open_peer(server, session_id) as peer:
        await peer.send({"type": "hello", **hello})
        code, _ = await peer.closed()
        return code, peer.ws.close_reason or ""


async def assert_only_new_events(server: BambooServer, session_id: str, peer: Any) -> None:
    """Neither a peer's ``events`` nor HTTP shows an event of the old session."""
    events = await peer.request({"type": "events", "id": "e", "after_seq": 0}, "events")
    assert (events["events"], events["last_seq"]) == ([], 0)
    status, body = await get(server, f"/api/v1/sessions/{session_id}/events")
    assert status == 200 and (body["events"], body["last_seq"]) == ([], 0)


async def test_create_on_a_session_whose_ttl_ran_out_makes_a_new_one() -> None:
    async with run_server(default_ttl=1) as server:
        old_epoch = await old_session(server)
        await asyncio.sleep(1.2)  # its TTL runs out while its actor is parked
        assert await refused(server, "s1") == (4404, "session expired")
        hello = {"create": True, "user_id": "u2", "title": "New"}
        async with attach(server, "s1", **hello) as (peer, welcome):
            assert welcome["epoch"] != old_epoch and welcome["last_seq"] == 0
            assert not welcome["resumed"] and welcome["replay"] == 0
            session = welcome["session"]
            assert (session["user_id"], session["title"], session["last_seq"]) == ("u2", "New", 0)
            await assert_only_new_events(server, "s1", peer)
            # The parked actor of the expired session made way for the new session's.
            actor = server.manager.live_actor("s1")
            assert actor is not None and actor.room.epoch == welcome["epoch"]
            ack = await peer.request({"type": "event", "id": 1, "event": token("new")}, "ack")
            assert ack["seq"] == 1


async def test_create_replaces_a_session_in_state_expired_and_others_are_not_touched() -> None:
    async with run_server() as server:
        old_epoch = await old_session(server)
        await old_session(server, "live")
        await expire(server)
        assert await refused(server, "s1") == (4404, "session expired")
        async with attach(server, "s1", create=True, title="New") as (peer, welcome):
            assert welcome["epoch"] != old_epoch and welcome["last_seq"] == 0
            await assert_only_new_events(server, "s1", peer)
            status, body = await get(server, "/api/v1/sessions/s1")
            assert status == 200 and body["metadata"]["title"] == "New"
        # A session that has not expired is attached to, as ever.
        async with attach(server, "live", create=True, title="Other") as (_, welcome):
            assert welcome["session"]["title"] == "Old" and welcome["last_seq"] == 3


async def test_a_client_resuming_with_the_old_epoch_is_not_resumed() -> None:
    async with run_server() as server:
        old_epoch = await old_session(server)
        await expire(server)
        hello = {"create": True, "last_seq": 1, "epoch": old_epoch}
        async with attach(server, "s1", **hello) as (peer, welcome):
            assert not welcome["resumed"] and (welcome["replay"], welcome["last_seq"]) == (0, 0)
            await peer.request({"type": "event", "id": 1, "event": token("new")}, "ack")
            new_epoch = welcome["epoch"]
        # last_seq 0 with the old epoch: no replay either; with the new one, the new log.
        hello = {"create": True, "last_seq": 0, "epoch": old_epoch}
        async with attach(server, "s1", **hello) as (peer, welcome):
            assert not welcome["resumed"] and welcome["replay"] == 0
            assert (await peer.request({"type": "ping", "id": 2}, "pong"))["id"] == 2
        async with attach(server, "s1", last_seq=0, epoch=new_epoch) as (peer, welcome):
            assert welcome["resumed"] and welcome["replay"] == 1
            replayed = await peer.recv_type("event")
            assert (replayed["seq"], replayed["event"]) == (1, token("new"))


async def test_the_expired_sessions_attached_peers_are_closed_first() -> None:
    async with run_server() as server:
        async with attach(server, "s1", create=True) as (watcher, welcome):
            await expire(server)  # expired, and the server has not looked yet
            async with attach(server, "s1", create=True) as (_, new):
                assert new["epoch"] != welcome["epoch"] and new["last_seq"] == 0
                code, frames = await watcher.closed()
                assert code == 4404
                assert frames[-1] == {"type": "closed", "reason": "session expired"}
                actor = server.manager.live_actor("s1")
                assert actor is not None and actor.room.epoch == new["epoch"]
                assert len(actor.room.outboxes) == 1


async def test_concurrent_creates_share_one_new_session() -> None:
    async with run_server() as server:
        old_epoch = await old_session(server)
        await expire(server)
        async with open_peer(server, "s1") as a, open_peer(server, "s1") as b:
            await asyncio.gather(*(p.send({"type": "hello", "create": True}) for p in (a, b)))
            first, second = await asyncio.gather(a.recv(), b.recv())
            assert first["type"] == second["type"] == "welcome", (first, second)
            assert first["epoch"] == second["epoch"] != old_epoch
            assert first["last_seq"] == second["last_seq"] == 0
            await assert_only_new_events(server, "s1", a)


async def test_the_creation_quotas_apply() -> None:
    limits = {"max_sessions_per_user": 1, "session_create_rate": 0.01, "session_create_burst": 4}
    async with run_server(**limits) as server:
        await old_session(server, "s1", user_id="u1")
        await old_session(server, "full", user_id="u2")
        await expire(server)
        # u2 keeps one session already: no room for another, expired id or not.
        code, reason = await refused(server, "s1", create=True, user_id="u2")
        assert (code, reason) == (4403, "too many sessions for this user")
        metadata = await server.manager.get_metadata("s1")
        assert metadata is not None and metadata.user_id == "u1" and metadata.last_seq == 3
        # u3's is this peer's fourth creation (the refused one took its token too)...
        async with attach(server, "s1", create=True, user_id="u3") as (_, welcome):
            assert welcome["session"]["user_id"] == "u3"
        await expire(server)  # ...and the fifth is over its burst of 4.
        code, reason = await refused(server, "s1", create=True, user_id="u4")
        assert (code, reason) == (4429, "creating sessions too fast")


async def test_under_auth_another_user_may_create_an_expired_session() -> None:
    alice = {"Authorization": f"Bearer {make_token('alice')}"}
    bob = {"Authorization": f"Bearer {make_token('bob')}"}
    async with run_server(auth_secret=SECRET) as server:
        async with attach(server, "s1", headers=alice, create=True) as (peer, old):
            await peer.request({"type": "event", "id": 1, "event": token("secret")}, "ack")
        async with open_peer(server, "s1", headers=bob) as peer:
            await peer.send({"type": "hello", "create": True})
            assert (await peer.closed())[0] == 4403  # alive: alice's, not bob's
        await expire(server)
        # Without create, whose it was comes before its expiry over WebSocket (as
        # docs/protocol.md has it): 4403 for bob, 4404 for alice; over HTTP, 404 for both.
        assert await refused(server, "s1", token=make_token("bob")) == (4403, "not your session")
        assert await refused(server, "s1", token=make_token("alice")) == (4404, "session expired")
        assert (await get(server, "/api/v1/sessions/s1", bob))[0] == 404
        async with attach(server, "s1", headers=bob, create=True) as (peer, new):
            assert new["session"]["user_id"] == "bob" and new["epoch"] != old["epoch"]
            events = await peer.request({"type": "events", "id": "e"}, "events")
            assert events["events"] == []
        status, _ = await get(server, "/api/v1/sessions/s1/events", alice)
        assert status == 403


async def test_a_user_at_the_quota_may_replace_an_expired_session_of_their_own() -> None:
    """Replacing one's own expired session leaves the count of one's sessions as it
    was: a user at the quota is not refused it (another user's expired one still
    counts for the creator as a new session, above)."""
    async with run_server(max_sessions_per_user=1) as server:
        old_epoch = await old_session(server, "s1", user_id="u1")
        await expire(server)
        async with attach(server, "s1", create=True, user_id="u1") as (_, welcome):
            assert welcome["epoch"] != old_epoch and welcome["session"]["user_id"] == "u1"
        code, reason = await refused(server, "s2", create=True, user_id="u1")
        assert (code, reason) == (4403, "too many sessions for this user")

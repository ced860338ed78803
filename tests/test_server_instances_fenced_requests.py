"""The epoch fence between two servers on one Redis store, on the requests of the old
session's peer, left on an instance that has not heard of its end
(tests/server_instances_support.py ``alice_unheard``): ``s1`` expired or deleted on B,
and bob creating it again there (a new epoch). Alice's appends, reads and state
requests reach no session (``not_found``), bob's session is neither appended to nor
moved, and her connection closes with 4404 once A hears."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis.asyncio

from bamboo_session.persistence.redis import listener
from bamboo_session.protocol.models import AgentEvent, SessionState
from tests.redis_server import RedisServer, prefix_for
from tests.server_instances_support import _reply, alice_unheard
from tests.support import attach, run_server, token


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
    attached to the old ``s1`` there, asks for ``state: active`` (the state her
    instance holds), ``state: idle`` then ``state: closed`` while bob is attached to
    the new one on B. Her actor's writes, and its read of the seq the first one's ack
    would carry, are fenced by the epoch of the session it serves, as its appends are:
    each request is ``not_found``,
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
                        # The state her instance holds: no write, but the seq its ack
                        # would carry is read from the store, fenced as any read.
                        {"type": "state", "id": 1, "state": "active"},
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

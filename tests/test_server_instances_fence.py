"""The epoch fence between two servers on one Redis store, where the old session's peer
stays on an instance that has not heard of its end (its pub/sub connection killed;
tests/server_instances_support.py ``alice_unheard``): ``s1`` deleted or expired on B,
and bob creating it again there (a new epoch). Alice's instance, A, must not let her
count in bob's session (its presence heartbeat), must end her at its next look at the
session (it finds another epoch stored), and her ``events`` request must not name
the new log's last seq."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from bamboo_session.persistence.redis import listener
from bamboo_session.protocol.models import AgentEvent, Session
from tests.redis_server import RedisServer, prefix_for
from tests.server_instances_support import _pubsub_clients, _reply, alice_unheard
from tests.support import attach, get, run_server, token


@pytest.mark.parametrize("ending", ["expired", "deleted"])
async def test_a_stale_heartbeat_never_counts_in_the_session_that_took_the_id(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ending: str
) -> None:
    """A's presence heartbeat (every third of the 1 s heartbeat) refreshes alice's
    connection, of the old ``s1``: it is not registered in bob's ``s1``, which counts
    bob alone, in its metadata and in bob's presence frames (he gets none)."""
    monkeypatch.setattr(listener, "RECONNECT_DELAYS", (5.0,))
    url = redis_server.url(prefix=prefix_for(tmp_path), heartbeat=1)
    admin = redis.asyncio.Redis(port=redis_server.port)
    try:
        async with run_server(store=url) as a, run_server(store=url) as b:
            async with alice_unheard(a, b, admin, ending) as (_alice, old):
                async with attach(b, "s1", create=True, user_id="bob") as (bob, new):
                    assert new["epoch"] != old["epoch"]
                    assert new["session"]["connections"] == 1
                    await asyncio.sleep(1.2)  # three of A's heartbeats
                    for server in (a, b):
                        status, body = await get(server, "/api/v1/sessions/s1")
                        assert status == 200 and body["metadata"]["connections"] == 1
                    pong = await bob.request({"type": "ping", "id": "p"}, "pong")
                    assert pong["id"] == "p"
                    with pytest.raises(TimeoutError):
                        frame = await bob.recv_type("presence", timeout=0.3)
                        pytest.fail(f"bob was told of alice's old connection: {frame}")
    finally:
        await admin.aclose()


@pytest.mark.parametrize("ending", ["expired", "deleted"])
async def test_a_look_that_finds_another_epoch_ends_the_old_sessions_peers(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ending: str
) -> None:
    """A hears nothing for 10 s; its look at alice's session (every 0.5 s here) finds
    ``s1`` stored with bob's epoch: alice's session is gone, and she gets ``closed``
    and 4404 as for a deletion, long before A's listener is back. Bob stays."""
    monkeypatch.setattr(listener, "RECONNECT_DELAYS", (10.0,))
    url = redis_server.url(prefix=prefix_for(tmp_path))
    admin = redis.asyncio.Redis(port=redis_server.port)
    try:
        async with (
            run_server(store=url, idle_timeout=0.5) as a,
            run_server(store=url, idle_timeout=0.5) as b,
        ):
            async with alice_unheard(a, b, admin, ending) as (alice, old):
                async with attach(b, "s1", create=True, user_id="bob") as (bob, new):
                    assert new["epoch"] != old["epoch"]
                    code, frames = await alice.closed(timeout=4)
                    assert code == 4404
                    # An expired one may be found expired, by a look before bob's create.
                    reasons = {"session deleted"}
                    if ending == "expired":
                        reasons.add("session expired")
                    assert frames[-1]["type"] == "closed" and frames[-1]["reason"] in reasons
                    mine = {"type": "event", "id": 1, "event": token("bob")}
                    assert (await bob.request(mine, "ack"))["seq"] == 1
                    status, body = await get(b, "/api/v1/sessions/s1")
                    assert status == 200 and body["metadata"]["epoch"] == new["epoch"]
    finally:
        await admin.aclose()


async def test_an_events_reply_never_names_the_last_seq_of_the_log_that_replaced_it(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Alice's ``events`` request on A reads her page (seqs 1 and 2); then, before the
    reply's ``last_seq`` is read, ``s1`` is deleted on B and created again with five
    events. Her reply must not pair her log's events with the new log's last seq (5):
    it is read under the same epoch fence as the page, so the reply is ``not_found``."""
    monkeypatch.setattr(listener, "RECONNECT_DELAYS", (5.0,))
    url = redis_server.url(prefix=prefix_for(tmp_path))
    admin = redis.asyncio.Redis(port=redis_server.port)
    try:
        async with run_server(store=url) as a, run_server(store=url) as b:
            before = await _pubsub_clients(admin)
            async with attach(a, "s1", create=True, role="agent") as (alice, _):
                for i in (1, 2):
                    event = {"type": "event", "id": i, "event": token(str(i))}
                    assert (await alice.request(event, "ack"))["seq"] == i
                for client_id in await _pubsub_clients(admin) - before:
                    await admin.client_kill_filter(_id=client_id)
                store_a, store_b = a.manager.storage, b.manager.storage
                read_events = store_a.read_events
                replaced: list[str] = []

                async def read_then_replace(*args: Any, **kwargs: Any) -> Any:
                    page = await read_events(*args, **kwargs)
                    if not replaced:
                        await b.manager.delete_session("s1")
                        session = Session.new("s1", user_id="bob")
                        await store_b.create_session(session)
                        tokens = [(AgentEvent.token(f"b{i}"), None) for i in range(5)]
                        await store_b.append_events("s1", tokens)
                        replaced.append(session.metadata.epoch)
                    return page

                monkeypatch.setattr(store_a, "read_events", read_then_replace)
                reply = await _reply(alice, {"type": "events", "id": 9})
                assert replaced
                assert (reply["type"], reply.get("code")) == ("error", "not_found"), reply
    finally:
        await admin.aclose()

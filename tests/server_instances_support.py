"""What the tests of two servers on one Redis store, in this process, share
(tests/test_server_instances*.py): ``pair``, a fixture of two servers on one keyspace
of the test's own; ``alice_unheard``, the old session's peer left on an instance that
has not heard of its end; the ids of Redis pub/sub clients, and the reply to a
request."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from bamboo_session.protocol.models import SessionState
from bamboo_session.server.app import BambooServer
from tests.redis_server import RedisServer, prefix_for
from tests.support import attach, run_server, token


@pytest.fixture(name="pair")
async def pair_fixture(
    redis_server: RedisServer, tmp_path: Path
) -> AsyncIterator[tuple[BambooServer, BambooServer]]:
    url = redis_server.url(prefix=prefix_for(tmp_path), heartbeat=1)
    async with run_server(store=url) as a, run_server(store=url) as b:
        yield a, b


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

"""A Redis store's refusal of one session is not an outage: an append refused with
``HistoryLost`` (its session's epoch as an earlier generation of the store served it)
leaves ``/readyz`` ready, on a real redis-server killed and started again; so do the
failures of a session whose keys something else wrote over, among good appends; not
those of an index every session's appends write (the store's)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import redis.asyncio

from bamboo_session.server.app import BambooServer
from tests.instances import eventually
from tests.redis_lossy_support import (
    _answers,
    attached,
    crash_and_restart,
    lossy_redis,
    publish,
    snapshot,
)
from tests.redis_server import RedisServer, prefix_for
from tests.support import attach, get, run_server


async def test_an_append_refused_for_its_lost_history_leaves_readyz_ready(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """A lossy restart gives ``s`` a new epoch (its stored one and the generation's
    token); the generation's record then lost while Redis runs on (as in
    test_redis_lossy_epoch_store), an append under that epoch is refused once with
    ``HistoryLost``: the agent is told, and ``/readyz`` stays 200, as the store
    serves every other call."""
    server = lossy_redis(start_redis)
    url = server.url(prefix=prefix_for(tmp_path), accept_lossy="true")
    record = f"{prefix_for(tmp_path)}:{{idx}}:generation"
    async with run_server(store=url) as bamboo:
        async with attach(bamboo, "s", create=True, role="agent") as (agent, _):
            assert await publish(agent, 2) == [1, 2]
        await snapshot(server)
        crash_and_restart(server)
        await eventually(lambda: _answers(bamboo.storage, "s"), timeout=10)
        async with attached(bamboo, "s", role="agent") as (agent, _):
            admin = redis.asyncio.Redis(port=server.port)
            try:
                assert await admin.delete(record) == 1
            finally:
                await admin.aclose()
            refused = await agent.request(
                {"type": "event", "id": 9, "event": {"type": "token", "content": "x"}},
                "error",
            )
            assert "epoch changed" in refused["message"]
        # The refusal is no outage: nothing marks appends failing, and /readyz's own
        # read is answered (a read whose pooled connection the restarted Redis dropped
        # is made again on a fresh one: persistence/redis/pool.py).
        assert bamboo.manager.append_health.failure is None
        assert await _ready(bamboo)


async def test_a_session_whose_keys_were_written_over_fails_alone_among_good_ones(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Something else wrote a string over session ``bad``'s log (a stream): each of its
    appends fails (WRONGTYPE, the session's own keys: ``SessionLogFailed``) while
    ``good``'s succeed, and ``/readyz`` stays ready at every one."""
    prefix = prefix_for(tmp_path)
    async with run_server(store=redis_server.url(prefix=prefix)) as bamboo:
        bamboo.manager.append_health.alone_within = 3600.0  # however slow the machine
        async with (
            attach(bamboo, "good", create=True) as (good, _),
            attach(bamboo, "bad", create=True) as (bad, _),
        ):
            admin = redis.asyncio.Redis(port=redis_server.port)
            try:
                await admin.set(f"{prefix}:{{bad}}:log", "not a stream")
            finally:
                await admin.aclose()
            answers = []
            for n in range(3):
                event = {"type": "token", "content": f"{n}"}
                await good.request({"type": "event", "id": n, "event": event}, "ack")
                refused = await bad.request({"type": "event", "id": n, "event": event}, "error")
                assert "WRONGTYPE" in refused["message"], refused
                answers.append(await get(bamboo, "/readyz"))
            assert answers == [(200, "ready\n")] * 3


async def test_an_index_every_session_writes_written_over_is_the_stores(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Something else wrote a string over the index of sessions by message count, which
    every append of a message writes: each session's messages fail (WRONGTYPE, as for
    a session's own key) while tokens are stored. The store's failure, not one
    session's: ``/readyz`` is 503 though other sessions' appends succeed."""
    prefix = prefix_for(tmp_path)
    async with run_server(store=redis_server.url(prefix=prefix)) as bamboo:
        bamboo.manager.append_health.alone_within = 3600.0  # however slow the machine
        async with (
            attach(bamboo, "good", create=True) as (good, _),
            attach(bamboo, "other", create=True) as (other, _),
        ):
            admin = redis.asyncio.Redis(port=redis_server.port)
            try:
                await admin.set(f"{prefix}:{{idx}}:msgs", "not a sorted set")
            finally:
                await admin.aclose()
            token = {"type": "token", "content": "fits"}
            message = {"type": "message", "message": {"role": "assistant", "content": "no"}}
            await good.request({"type": "event", "id": 1, "event": token}, "ack")
            await other.request({"type": "event", "id": 1, "event": token}, "ack")
            refused = await other.request({"type": "event", "id": 2, "event": message}, "error")
            assert "WRONGTYPE" in refused["message"], refused
            status, body = await get(bamboo, "/readyz")
            assert status == 503 and "WRONGTYPE" in body, body


async def _ready(bamboo: BambooServer) -> bool:
    return await get(bamboo, "/readyz") == (200, "ready\n")

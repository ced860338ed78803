"""A Redis that refuses writes because it cannot persist (``MISCONF``: its disk full, a
snapshot or an AOF write failed) under real servers, with real WebSocket peers:
reproducers from bench/redis_disk_full.py, which fills a real tmpfs under Redis.
Here the refusal is made the portable way (tests/redis_server.py ``refusing_writes``:
a snapshot that cannot be written), which Redis answers exactly as a full disk.

- A publisher's append gets an ``error`` frame (``internal``) naming Redis's words,
  the connection stays open, and ``/readyz`` answers 503 naming them. It stayed 503
  only while appends kept failing: ``RETRY_AFTER`` (10 s) after the last failure it
  answered 200 again, Redis still refusing every write, so a load balancer sent
  traffic back to fail. Now, ``RETRY_AFTER`` on, ``/readyz`` also asks Redis (a script
  that writes nothing, which Redis refuses as it refuses a write) and stays 503 until
  Redis takes writes; then it is 200 with no append made meanwhile, and the
  publisher's retry with the same key is stored once.
- The pub/sub listener pings Redis after ``PING_EVERY`` of silence, and Redis refuses
  a ping with ``MISCONF`` too: each refusal was taken for a lost connection (a
  warning, a reconnect, every session caught up again, ``/readyz`` 503 for the pub/sub
  connection), every few seconds for as long as the disk stayed full. Now the refusal
  is an answer: no reconnect, and events published on another instance still reach
  this one's viewer.
- Presence (joins, leaves, the heartbeat, the sweep) logged a warning at each failure:
  one per attach and per detach, about two a second for the heartbeat and the sweep.
  Now each kind is logged once until it works again, which is said once."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import pytest
import redis.asyncio
from structlog.testing import capture_logs

from bamboo_session.persistence.redis import listener
from bamboo_session.persistence.redis.storage import RedisStorage
from bamboo_session.server import readiness
from bamboo_session.server.app import BambooServer
from tests.instances import eventually
from tests.redis_server import RedisServer, able_to_refuse_writes, prefix_for, refusing_writes
from tests.support import attach, get, run_server, token

WAIT = 15.0  # seconds any wait for Redis, a ping or a heartbeat may take
PRESENCE_KINDS = 4  # join, leave, heartbeat, sweep: a line each at most per outage


async def refusable(start_redis: Callable[[str], RedisServer], name: str) -> RedisServer:
    server = start_redis(name)
    await able_to_refuse_writes(server)
    return server


async def ready(bamboo: BambooServer) -> bool:
    return (await get(bamboo, "/readyz"))[0] == 200


async def command_stat(server: RedisServer, command: str, field: str) -> int:
    client = redis.asyncio.Redis(port=server.port)
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    return int(stats.get(f"cmdstat_{command}", {}).get(field, 0))


async def test_readyz_stays_503_while_redis_refuses_writes_and_is_200_once_it_takes_them(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    server = await refusable(start_redis, "full")
    async with run_server(store=server.url(prefix=prefix_for(tmp_path))) as bamboo:
        checks = bamboo.services.readiness
        checks.probe_every = 0.0  # a probe at each /readyz
        async with attach(bamboo, "s", create=True, role="agent") as (publisher, _):
            event = {"type": "event", "id": 1, "key": "k1", "event": token("a")}
            async with refusing_writes(server) as words:
                refused = await publisher.request(event, "error")
                assert refused["code"] == "internal", refused
                assert words.split(" ")[0] in refused["message"], refused
                assert "user_script" not in refused["message"], refused  # Redis's, not ours
                status, reason = await get(bamboo, "/readyz")
                assert status == 503 and "MISCONF" in reason, (status, reason)
                # As long after the failure as a store that cannot be probed stays
                # unready, no append made since: Redis refuses writes all the same.
                checks.health.failed_at -= readiness.RETRY_AFTER
                status, reason = await get(bamboo, "/readyz")
                assert status == 503 and "MISCONF" in reason, (status, reason)
            await eventually(lambda: ready(bamboo), timeout=WAIT)  # with no append
            acked = await publisher.request({**event, "id": 2}, "ack")
            assert acked["seq"] == 1 and not acked.get("duplicate"), acked
            again = await publisher.request({**event, "id": 3}, "ack")
            assert again == {"type": "ack", "id": 3, "seq": 1, "duplicate": True}, again


async def test_the_pub_sub_connection_is_kept_while_redis_refuses_its_pings(
    start_redis: Callable[[str], RedisServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(listener, "PING_EVERY", 0.2)  # a ping each POLL of silence
    server = await refusable(start_redis, "full")
    url = server.url(prefix=prefix_for(tmp_path))
    async with run_server(store=url) as watched, run_server(store=url) as other:
        storage = watched.storage
        assert isinstance(storage, RedisStorage)
        pubsub = storage.live.listener
        async with contextlib.AsyncExitStack() as peers:
            publisher, _ = await peers.enter_async_context(attach(other, "s", create=True))
            viewer, _ = await peers.enter_async_context(attach(watched, "s"))
            refused_before = await command_stat(server, "ping", "rejected_calls")
            async with refusing_writes(server):

                async def pings_refused() -> bool:
                    refused = await command_stat(server, "ping", "rejected_calls")
                    return refused >= refused_before + 3

                await eventually(pings_refused, timeout=WAIT)
                assert pubsub.connected and pubsub.reconnects == 0, pubsub.lost_by
                status, reason = await get(watched, "/readyz")
                assert status == 200, reason  # no append failed here: nothing to say
            event = {"type": "event", "id": 1, "key": "k1", "event": token("after")}
            assert (await publisher.request(event, "ack"))["seq"] == 1
            got = await viewer.recv_type("event")
            assert got["seq"] == 1 and got["event"] == token("after"), got
        assert pubsub.reconnects == 0


async def test_presence_failures_while_redis_refuses_writes_are_logged_once_a_kind(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    server = await refusable(start_redis, "full")
    url = server.url(prefix=prefix_for(tmp_path), heartbeat=0.3)  # a beat each 0.1 s
    async with run_server(store=url) as bamboo, attach(bamboo, "s", create=True):
        with capture_logs() as logs:
            async with refusing_writes(server):
                failed_before = await command_stat(server, "evalsha", "failed_calls")
                for _ in range(5):  # each a join, then a leave, that fail
                    async with attach(bamboo, "s"):
                        pass

                async def beats_failed() -> bool:
                    failed = await command_stat(server, "evalsha", "failed_calls")
                    return failed >= failed_before + 30

                await eventually(beats_failed, timeout=WAIT)
            failed = [e for e in logs if e["event"].startswith("presence ")]
            warned = [e for e in failed if e["log_level"] == "warning"]
            assert 3 <= len(warned) <= PRESENCE_KINDS, warned

            def said_again() -> bool:
                return any(e["event"] == "presence heartbeat works again" for e in logs)

            await eventually(said_again, timeout=WAIT)

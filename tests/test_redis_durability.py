"""A Redis found durable when the store opened, then switched by ``CONFIG SET`` to
settings that may lose acknowledged writes, is seen by the store's look at its
settings every ``heartbeat / 3`` (persistence/redis/durability.py): the generation
record marks the run lossy, so that its next restart changes every session's epoch
(a client resuming with the old epoch is told ``resumed: false``), one warning says
so, and ``/metrics`` shows ``bamboo_store_may_lose_writes 1``. The store keeps
serving. A Redis that stays durable keeps every epoch across a restart. Real
redis-servers, killed with SIGKILL and started again."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import redis.asyncio

from bamboo_session.persistence import StorageError, open_storage
from bamboo_session.persistence.redis import durability
from bamboo_session.persistence.redis.storage import RedisStorage
from bamboo_session.protocol.models import AgentEvent, Session
from bamboo_session.server.app import BambooServer
from tests.instances import eventually
from tests.redis_lossy_support import attached, epoch_changed, publish, resumes_after_the_loss
from tests.redis_server import RedisServer, prefix_for
from tests.support import attach, run_server
from tests.test_server_metrics import scrape, value

CHANGED = "the store restarted and changed the epoch; resume"
TURNED = "its next restart now changes every session's epoch"
GAUGE = "bamboo_store_may_lose_writes"
LOOKS_WAITED = 3  # looks at Redis's settings a test waits for before it restarts Redis
WAIT = 10.0  # seconds any wait for the store's looks may take


def redis_storage(server: BambooServer) -> RedisStorage:
    storage = server.storage
    assert isinstance(storage, RedisStorage)
    return storage


async def config_set(server: RedisServer, name: str, setting: str) -> None:
    client = redis.asyncio.Redis(port=server.port)
    try:
        await client.config_set(name, setting)
    finally:
        await client.aclose()


async def looks_done(storage: RedisStorage, count: int) -> None:
    """Waits until the store has looked at Redis's settings ``count`` times more."""
    target = storage.durability.looks + count
    await eventually(lambda: storage.durability.looks >= target, timeout=WAIT)


def crash_and_restart(server: RedisServer) -> None:
    server.stop(signal.SIGKILL)
    server.start()


async def test_a_redis_turned_lossy_after_the_open_changes_epochs_at_its_restart(
    start_redis: Callable[[str], RedisServer],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Durable at the open; ``CONFIG SET appendonly no`` once 5 events are
    acknowledged; the store sees it (gauge 1, one warning however many looks follow)
    and keeps taking events: 5 more, which Redis, killed, loses (it restarts on the
    append-only file it stopped writing, durable again as its command line says).
    Resumes with the old epoch are ``resumed: false`` whether ``last_seq`` was lost
    (10) or kept (3); the next event is seq 6 under the new epoch, not under the one
    a client that saw the lost seq 6 holds."""
    server = start_redis("turned")
    url = server.url(prefix=prefix_for(tmp_path), heartbeat=0.3)
    with caplog.at_level(logging.WARNING):
        async with run_server(store=url) as bamboo:
            storage = redis_storage(bamboo)
            assert value(await scrape(bamboo), GAUGE) == 0
            async with attach(bamboo, "s", create=True, role="agent") as (agent, welcome):
                old = welcome["epoch"]
                assert await publish(agent, 5) == [1, 2, 3, 4, 5]
                await config_set(server, "appendonly", "no")
                await eventually(lambda: storage.may_lose_writes, timeout=WAIT)
                await looks_done(storage, LOOKS_WAITED)
                assert value(await scrape(bamboo), GAUGE) == 1
                assert await publish(agent, 5, 5) == [6, 7, 8, 9, 10]
                crash_and_restart(server)
                await agent.closed()
                assert (agent.ws.close_code, agent.ws.close_reason) == (1012, CHANGED)
            await resumes_after_the_loss(bamboo, bamboo, old)
            await looks_done(storage, 1)  # durable again: the gauge follows
            assert value(await scrape(bamboo), GAUGE) == 0
    warned = [r.getMessage() for r in caplog.records if TURNED in r.getMessage()]
    assert len(warned) == 1, warned
    assert "appendonly no, appendfsync always" in warned[0]
    assert "set appendonly yes and appendfsync always" in warned[0]


async def test_appendonly_no_is_forgotten_when_no_server_outlives_the_restart(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """What the look cannot do (docs/storage-redis.md, Durability): with
    ``appendonly no`` the generation record's mark, written after the switch, is lost
    with the events. A server that saw the turn and runs on through Redis's restart
    changes the epoch (above); one started after it finds the record as it was before
    the switch, and keeps the epoch: the lost seq 6 goes to another event."""
    server = start_redis("forgotten")
    url = server.url(prefix=prefix_for(tmp_path), heartbeat=0.3)
    async with run_server(store=url) as before:
        storage = redis_storage(before)
        async with attach(before, "s", create=True, role="agent") as (agent, welcome):
            old = welcome["epoch"]
            assert await publish(agent, 5) == [1, 2, 3, 4, 5]
            await config_set(server, "appendonly", "no")
            await eventually(lambda: storage.may_lose_writes, timeout=WAIT)
            assert await publish(agent, 5, 5) == [6, 7, 8, 9, 10]
    crash_and_restart(server)
    async with (
        run_server(store=url) as after,
        attached(after, "s", last_seq=3, epoch=old) as (agent, kept),
    ):
        assert (kept["resumed"], kept["epoch"], kept["last_seq"]) == (True, old, 5)
        assert await publish(agent, 1, 10) == [6]


async def test_a_redis_that_stays_durable_keeps_its_epochs_across_a_restart(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """The same store, the same looks, no switch: the gauge stays 0, and after a
    SIGKILL and a restart a resume with the epoch held replays what was missed."""
    server = start_redis("durable")
    url = server.url(prefix=prefix_for(tmp_path), heartbeat=0.3)
    async with run_server(store=url) as bamboo:
        storage = redis_storage(bamboo)
        async with attach(bamboo, "s", create=True, role="agent") as (agent, welcome):
            old = welcome["epoch"]
            assert await publish(agent, 5) == [1, 2, 3, 4, 5]
            await looks_done(storage, LOOKS_WAITED)
            assert not storage.may_lose_writes
            assert value(await scrape(bamboo), GAUGE) == 0
            crash_and_restart(server)  # the agent stays attached: nothing was lost
        async with attached(bamboo, "s", last_seq=3, epoch=old) as (viewer, resumed):
            assert (resumed["resumed"], resumed["replay"], resumed["epoch"]) == (True, 2, old)
            seqs = [(await viewer.recv_type("event"))["seq"] for _ in range(2)]
            assert seqs == [4, 5]
        await looks_done(storage, 1)
        assert value(await scrape(bamboo), GAUGE) == 0


async def test_a_run_seen_lossy_stays_recorded_lossy_when_redis_turns_durable_again(
    start_redis: Callable[[str], RedisServer], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``appendfsync everysec`` for a while, then ``always`` again: what was
    acknowledged meanwhile may not be on disk, so the run stays recorded lossy and
    its restart changes the epoch, though Redis is durable at the crash. The gauge
    follows the settings (1, then 0); the store took appends throughout. The
    warning says what a crash loses, not that lost seqs go to other events under the
    same epoch: the mark is there to prevent it."""
    server = start_redis("everysec")
    store = await open_storage(server.url(prefix=prefix_for(tmp_path), heartbeat=0.3))
    client = redis.asyncio.Redis(port=server.port)
    try:
        assert isinstance(store, RedisStorage)
        await store.create_session(Session.new("s"))
        old = await store.epoch("s")
        await config_set(server, "appendfsync", "everysec")
        await eventually(lambda: store.durability.turns == 1, timeout=WAIT)  # recorded
        assert store.may_lose_writes
        assert await client.hget(store.generation.key, "lossy") == b"1"
        warned = [r.getMessage() for r in caplog.records if TURNED in r.getMessage()]
        assert len(warned) == 1 and "a crash of the machine loses the last writes" in warned[0]
        assert "under the same epoch" not in warned[0], warned[0]
        assert (await store.append_event("s", AgentEvent.token("meanwhile"))).seq == 1
        await config_set(server, "appendfsync", "always")
        await eventually(lambda: not store.may_lose_writes, timeout=WAIT)
        assert await client.hget(store.generation.key, "lossy") == b"1"
        assert store.durability.turns == 1
        crash_and_restart(server)
        await eventually(lambda: epoch_changed(store, old), timeout=WAIT)
        assert (await store.append_event("s", AgentEvent.token("after"))).seq == 2
    finally:
        await store.close()
        await client.aclose()


async def test_a_turn_seen_but_not_recorded_still_changes_the_epoch_at_the_restart(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """The look sees ``appendonly no`` but cannot mark the record (scripts denied by
    an ACL here; Redis dying mid-look does the same): the look fails, and the instance
    still takes Redis for lossy, so that its first check of the next run changes the
    epoch over the lost seq 6 (with ``appendonly no`` a mark would be lost with it
    anyway). The warning waits for the mark, which the next look retries."""
    server = start_redis("unrecorded")
    store = await open_storage(server.url(prefix=prefix_for(tmp_path), heartbeat=3600))
    client = redis.asyncio.Redis(port=server.port)
    try:
        assert isinstance(store, RedisStorage)
        await store.create_session(Session.new("s"))
        old = await store.epoch("s")
        for i in range(5):
            await store.append_event("s", AgentEvent.token(f"e{i}"))
        await config_set(server, "appendonly", "no")
        await client.execute_command("ACL", "SETUSER", "default", "-eval", "-evalsha")
        with pytest.raises(StorageError):
            await store.durability.check()  # the watch's look, here by hand
        assert store.may_lose_writes
        assert store.durability.turns == 0  # not recorded, so not said yet
        await client.execute_command("ACL", "SETUSER", "default", "+eval", "+evalsha")
        assert (await store.append_event("s", AgentEvent.token("e5"))).seq == 6
        crash_and_restart(server)
        await eventually(lambda: epoch_changed(store, old), timeout=WAIT)
        assert await store.last_seq("s") == 5
    finally:
        await store.close()
        await client.aclose()


async def test_the_watch_goes_on_after_an_unexpected_fault_in_a_look(
    start_redis: Callable[[str], RedisServer],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A look that fails with an error of the store's own (a bug, not Redis away) is
    logged with its traceback, and the watch goes on: a turn to lossy after it is still
    recorded, so the next restart would change the epochs."""
    server = start_redis("faulty")
    store = await open_storage(server.url(prefix=prefix_for(tmp_path), heartbeat=0.3))
    reads = durability.read_persistence
    faults = [RuntimeError("a bug in a look")]

    async def read_once_faulty(client: redis.asyncio.Redis) -> dict[str, str] | None:
        if faults:
            raise faults.pop()
        return await reads(client)

    monkeypatch.setattr(durability, "read_persistence", read_once_faulty)
    try:
        assert isinstance(store, RedisStorage)
        with caplog.at_level(logging.ERROR):
            await eventually(lambda: not faults, timeout=WAIT)
            await config_set(server, "appendfsync", "everysec")
            await eventually(lambda: store.durability.turns == 1, timeout=WAIT)
        assert [
            r.exc_info is not None for r in caplog.records if "unexpectedly" in r.getMessage()
        ] == [True]
    finally:
        await store.close()

"""A Redis store opened for writing on a redis-server that may acknowledge a write a
restart then loses (``appendonly no``, or ``appendfsync`` other than ``always``) is
refused, unless its URL says ``accept_lossy=true`` (then a warning, as a read-only
store gets). Nothing left in Redis tells what was lost: on a Redis that the store
found durable when it opened, the lost events' seqs are given again to other events
under the same epoch, and a client that saw the lost ones resumes onto a different log
(the first test shows it on a real redis-server, made lossy by ``CONFIG SET`` after
the open, before the store's next look at its settings). A store opened with
``accept_lossy=true`` changes every epoch when Redis restarts instead
(tests/test_redis_lossy_epoch.py). ``appendonly yes`` with ``appendfsync always``
(what docs/storage-redis.md asks for, and the tests run) opens quietly."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

import pytest
import redis.asyncio

from bamboo_session.persistence import StorageError, open_storage
from bamboo_session.persistence.redis.server_checks import PERSISTENCE_SETTINGS
from bamboo_session.protocol.models import AgentEvent, Session
from tests.redis_server import RedisServer

WARNING = "Redis may lose writes it acknowledged"


async def test_writes_a_restart_lost_leave_their_seqs_to_others_under_the_same_epoch(
    start_redis: Callable[[str], RedisServer],
) -> None:
    """Why the refusal: Redis stops writing its append-only file (as ``appendonly
    no`` would), acknowledges 5 more events and is killed; started again on the file,
    it has the first 5. The next event gets seq 6 again, under the epoch a client that
    saw the lost seq 6 still holds: the store read Redis's settings when it opened,
    durable then, and had not looked again (every ``heartbeat / 3``: an hour's
    heartbeat here) when Redis restarted; a restart of a durable Redis keeps the
    epoch. tests/test_redis_durability.py shows the look that sees the switch."""
    server = start_redis("lossy")
    client = redis.asyncio.Redis(port=server.port)
    store = await open_storage(server.url(prefix="l", heartbeat=3600))
    try:
        await store.create_session(Session.new("s"))
        for i in range(5):
            await store.append_event("s", AgentEvent.token(f"kept {i}"))
        await client.config_set("appendonly", "no")
        lost = [await store.append_event("s", AgentEvent.token(f"lost {i}")) for i in range(5)]
        meta = await store.get_metadata("s")
        assert meta is not None
        epoch = meta.epoch
        server.stop(signal.SIGKILL)
        server.start()
        again = None
        for _ in range(100):  # the store's connections come back by themselves
            try:
                again = await store.append_event("s", AgentEvent.token("after"))
                break
            except StorageError:  # redis unavailable while it loads its file
                await asyncio.sleep(0.05)
        assert again is not None
        meta = await store.get_metadata("s")
        assert meta is not None
        assert again.seq == lost[0].seq == 6 and meta.epoch == epoch
    finally:
        await store.close()
        await client.aclose()


SNAPSHOT = "goes back to its last snapshot"
NOTHING_KEPT = "loses every session"
MACHINE_CRASH = "a crash of the machine loses the last writes"


@pytest.mark.parametrize(
    ("appendonly", "appendfsync", "save", "said_of_a_restart"),
    [
        ("yes", "always", "", None),
        ("yes", "everysec", "", MACHINE_CRASH),
        ("yes", "no", "", MACHINE_CRASH),
        ("no", "always", "3600 1", SNAPSHOT),
        ("no", "everysec", "3600 1", SNAPSHOT),
        ("no", "always", "", NOTHING_KEPT),  # no snapshots either: nothing comes back
    ],
)
async def test_a_redis_that_may_lose_acknowledged_writes_is_refused_unless_accepted(
    start_redis: Callable[[str], RedisServer],
    caplog: pytest.LogCaptureFixture,
    appendonly: str,
    appendfsync: str,
    save: str,
    said_of_a_restart: str | None,
) -> None:
    """A writable store is refused on such a Redis (the epoch could not change when
    history is lost, as the wire contract has it); with ``accept_lossy=true`` it opens
    with a warning, and a read-only one opens as it writes nothing. Each says what
    Redis runs with, what a restart then loses (the last snapshot's, or everything
    where Redis takes none), and what to set."""
    server = start_redis("persistence")
    client = redis.asyncio.Redis(port=server.port)
    try:
        await client.config_set("appendfsync", appendfsync)
        await client.config_set("appendonly", appendonly)
        await client.config_set("save", save)
        if said_of_a_restart is not None:
            with pytest.raises(StorageError) as refused:
                await open_storage(server.url(prefix="p"))
            message = str(refused.value)
            assert message.startswith(WARNING), message
            assert f"appendonly {appendonly}, appendfsync {appendfsync}" in message
            assert said_of_a_restart in message
            assert "set appendonly yes and appendfsync always" in message
            assert "or add accept_lossy=true to the store URL" in message
            with pytest.raises(ValueError, match="accept_lossy must be true or false"):
                await open_storage(server.url(prefix="p", accept_lossy="yes"))
        with caplog.at_level(logging.WARNING):
            store = await open_storage(server.url(prefix="p", accept_lossy="true"))
            await store.close()
            reader = await open_storage(server.url(prefix="p"), read_only=True)
            await reader.close()
    finally:
        await client.aclose()
    said = [r.getMessage() for r in caplog.records if WARNING in r.getMessage()]
    assert len(said) == (2 if said_of_a_restart is not None else 0), said
    if said_of_a_restart is not None:
        assert f"appendonly {appendonly}, appendfsync {appendfsync}" in said[0]
        assert said_of_a_restart in said[0]
        assert "set appendonly yes and appendfsync always" in said[0]
        assert (SNAPSHOT in said[0]) == (said_of_a_restart == SNAPSHOT)


async def test_a_redis_that_refuses_config_opens_and_says_it_could_not_check(
    start_redis: Callable[[str], RedisServer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A managed Redis may rename or disable CONFIG (ElastiCache, Memorystore), or an
    ACL deny it, as here: the store opens and works all the same, and says (at INFO,
    since the operator may not be able to change it) that it could not check what
    Redis keeps, and what Redis should run with."""
    server = start_redis("no-config")
    client = redis.asyncio.Redis(port=server.port)
    try:
        await client.execute_command(
            "ACL", "SETUSER", "app", "on", ">secret", "~*", "&*", "+@all", "-config"
        )
        url = server.url(prefix="n").replace("redis://", "redis://app:secret@")
        with caplog.at_level(logging.INFO, logger="bamboo_session.persistence.redis.server_checks"):
            store = await open_storage(url)
            try:
                await store.create_session(Session.new("s"))
                assert (await store.append_event("s", AgentEvent.token("x"))).seq == 1
            finally:
                await store.close()
    finally:
        await client.aclose()
    said = [r for r in caplog.records if "could not check" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in caplog.records]
    assert said[0].levelno == logging.INFO
    assert "CONFIG GET refused" in said[0].getMessage()
    assert "appendonly yes and appendfsync always" in said[0].getMessage()
    assert not [r for r in caplog.records if WARNING in r.getMessage()]


async def test_each_setting_is_asked_alone_as_redis_before_7_answers_it(
    start_redis: Callable[[str], RedisServer],
) -> None:
    """Redis 6 (which the store supports) takes one parameter per ``CONFIG GET``
    and refuses several with an error, which the store would read as CONFIG refused,
    and open unchecked on a Redis that loses writes. No such Redis runs here, so what
    is checked is what this Redis was asked: three ``CONFIG GET``s, each of one name
    (a call with several counts once), and still a refusal."""
    server = start_redis("one-by-one")
    client = redis.asyncio.Redis(port=server.port)
    try:
        await client.config_set("appendonly", "no")
        await client.config_resetstat()
        with pytest.raises(StorageError, match=WARNING):
            await open_storage(server.url(prefix="o"))
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    assert stats["cmdstat_config|get"]["calls"] == len(PERSISTENCE_SETTINGS) == 4, stats


async def test_no_fsync_while_rewriting_is_refused_though_appendfsync_is_always(
    start_redis: Callable[[str], RedisServer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``no-appendfsync-on-rewrite yes`` has Redis skip the fsync of ``appendfsync
    always`` while a snapshot or an AOF rewrite runs (aof.c, flushAppendOnlyFile), so
    a crash of the machine then loses writes it acknowledged, as ``everysec`` does:
    refused as those are, and opened with a warning under ``accept_lossy=true``."""
    server = start_redis("no-fsync-on-rewrite")
    client = redis.asyncio.Redis(port=server.port)
    try:
        await client.config_set("no-appendfsync-on-rewrite", "yes")
        with pytest.raises(StorageError) as refused:
            await open_storage(server.url(prefix="r"))
        with caplog.at_level(logging.WARNING):
            store = await open_storage(server.url(prefix="r", accept_lossy="true"))
            await store.close()
    finally:
        await client.aclose()
    message = str(refused.value)
    assert message.startswith(f"{WARNING} (no-appendfsync-on-rewrite yes)"), message
    assert MACHINE_CRASH in message
    assert "set no-appendfsync-on-rewrite no, or add accept_lossy=true" in message
    said = [r.getMessage() for r in caplog.records if WARNING in r.getMessage()]
    assert len(said) == 1 and "no-appendfsync-on-rewrite yes" in said[0], said

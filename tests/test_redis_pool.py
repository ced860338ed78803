"""A restart of Redis closes every connection the store pooled (persistence/redis/pool.py,
client.py ``connect``), on real redis-servers and a real server. Right after a
restart, writes on pooled connections each go on one made again, and a burst of reads,
``hello``s and an append all succeed, where each pooled connection used to fail its
first call (503, 1011, ``internal``). Through a proxy that closes Redis's side of each
connection and leaves the server's open (a close not yet seen): reads are made once
more and succeed, after a lossy restart served the new epoch; once one connection
dropped, every other made before it is made again before its next call, so writes then
succeed; a write whose reply was lost is never made again, its publisher is closed
1011 (its outcome unknown), and its keyed retry after the resume is a duplicate. The
scripts read again write nothing (Redis's EVAL_RO runs them, and none names a command
Redis flags as writing), and the store calls them read-only: one that wrote would fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
from websockets.exceptions import ConnectionClosed

from bamboo_session.persistence import StorageError, open_storage
from bamboo_session.persistence.base import SessionFilter
from bamboo_session.persistence.redis import scripts
from bamboo_session.persistence.redis.client import connect
from bamboo_session.persistence.redis.config import RedisConfig
from bamboo_session.persistence.redis.queries import FIRST_STEP, list_args
from bamboo_session.persistence.redis.scripts import READING_SCRIPTS, SCRIPTS
from bamboo_session.persistence.redis.storage import RedisStorage
from bamboo_session.protocol.models import AgentEvent, Message, Session
from bamboo_session.server.app import BambooServer
from tests.instances import eventually
from tests.proxies import RedisProxy
from tests.redis_lossy_support import crash_and_restart, lossy_redis, publish, snapshot
from tests.redis_server import RedisServer, prefix_for
from tests.support import Peer, attach, get, run_server, token

BURST = 6  # connections pooled before the restart, and calls of each kind after it
SCRIPTS_DIR = Path(__file__).parents[1] / "persistence" / "redis"


async def redis_clients(server: RedisServer) -> int:
    """The connections Redis holds, this one's included."""
    admin = redis.asyncio.Redis(port=server.port)
    try:
        return int((await admin.info("clients"))["connected_clients"])
    finally:
        await admin.aclose()


async def answer(peer: Peer, frame: dict[str, Any]) -> dict[str, Any]:
    """The reply to ``frame``: its ``ack`` or its ``error``."""
    await peer.send(frame)
    while True:
        reply = await peer.recv()
        if reply["type"] in ("ack", "error"):
            return reply


async def welcome_or_close(bamboo: BambooServer, session_id: str, **hello: Any) -> Any:
    """The ``welcome`` of a ``hello`` to ``session_id``, else the close code it got."""
    try:
        async with attach(bamboo, session_id, **hello) as (_, welcome):
            return welcome
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None


SEQS = "1 to 3 (4 too if appended before)"


def seqs(events: list[dict[str, Any]]) -> Any:
    """``SEQS`` if ``events`` are seqs 1 to 3, then perhaps 4 (the burst's append),
    else their seqs."""
    found = [event["seq"] for event in events]
    return SEQS if found in ([1, 2, 3], [1, 2, 3, 4]) else found


def replayed(welcome: Any) -> Any:
    """``SEQS`` for a ``welcome`` that resumed with 3 events to replay (4 with the
    burst's append), else the welcome, or the close code the ``hello`` got."""
    if isinstance(welcome, dict) and welcome["resumed"] and welcome["replay"] in (3, 4):
        return SEQS
    return welcome


async def test_reads_hellos_and_an_append_right_after_a_redis_restart_all_succeed(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """``BURST`` connections pooled and idle, Redis stopped and started again on its
    append-only file: at once, ``BURST`` each of HTTP reads of the session and of its
    events, ``hello``s resuming it from seq 0, and ``/readyz``, with the agent's next
    event: every read is answered, every ``hello`` resumed with the 3 events (and the
    4th, when its append came first), and the event acknowledged as seq 4."""
    server = start_redis("restarted")
    async with run_server(store=server.url(prefix=prefix_for(tmp_path))) as bamboo:
        store = bamboo.storage
        assert store is not None
        async with attach(bamboo, "s", create=True, role="agent") as (agent, welcome):
            epoch = welcome["epoch"]
            assert await publish(agent, 3) == [1, 2, 3]
            await asyncio.gather(*(store.read_events("s") for _ in range(BURST)))
            assert await redis_clients(server) >= BURST + 1
            server.stop()
            await server.start_in_loop()
            # hellos subscribe through the listener's own connection: its reconnect awaited
            await eventually(lambda: store.ready, timeout=10)
            answers = await asyncio.gather(
                *(get(bamboo, "/api/v1/sessions/s") for _ in range(BURST)),
                *(get(bamboo, "/api/v1/sessions/s/events") for _ in range(BURST)),
                get(bamboo, "/readyz"),
                *(welcome_or_close(bamboo, "s", last_seq=0, epoch=epoch) for _ in range(BURST)),
                answer(agent, {"type": "event", "id": "after", "event": token("e3")}),
            )
    sessions, events = answers[:BURST], answers[BURST : 2 * BURST]
    ready, welcomes, reply = answers[2 * BURST], answers[2 * BURST + 1 : -1], answers[-1]
    seen = {
        "sessions": [status for status, _ in sessions],
        "events": [status if status != 200 else seqs(body["events"]) for status, body in events],
        "readyz": ready,
        "hellos": [replayed(welcome) for welcome in welcomes],
        "append": reply.get("seq") if reply["type"] == "ack" else reply["code"],
    }
    assert seen == {
        "sessions": [200] * BURST,
        "events": [SEQS] * BURST,
        "readyz": (200, "ready\n"),
        "hellos": [SEQS] * BURST,
        "append": 4,
    }


async def test_idle_connections_redis_closed_are_made_again_before_writes(
    start_redis: Callable[[str], RedisServer],
) -> None:
    """The store's client (client.py ``connect``), ``BURST`` connections pooled and
    idle, Redis restarted: ``BURST`` writes at once each go on a connection made
    again, and none fails. With redis-py 8.1's maintenance notifications on, its pool
    handed each out closed, and every one failed (redis-py issue #4252)."""
    server = start_redis("restarted")
    client = connect(RedisConfig(url=server.url()))
    try:
        await asyncio.gather(*(client.execute_command("PING") for _ in range(BURST)))
        assert await redis_clients(server) >= BURST + 1
        server.stop()
        await server.start_in_loop()
        counts = await asyncio.gather(
            *(client.execute_command("INCR", "n") for _ in range(BURST)), return_exceptions=True
        )
    finally:
        await client.aclose()
    assert sorted(counts) == list(range(1, BURST + 1)), counts


@asynccontextmanager
async def through_proxy(
    redis_server: RedisServer, tmp_path: Path
) -> AsyncIterator[tuple[BambooServer, RedisStorage, RedisProxy]]:
    """A server whose store reaches ``redis_server`` through a RedisProxy."""
    proxy = RedisProxy(redis_server.port)
    port = await proxy.start()
    try:
        url = f"redis://127.0.0.1:{port}/0?prefix={prefix_for(tmp_path)}"
        async with run_server(store=url) as bamboo:
            assert isinstance(bamboo.storage, RedisStorage)
            yield bamboo, bamboo.storage, proxy
    finally:
        await proxy.close()


async def test_reads_on_connections_closed_unseen_are_made_again_on_fresh_ones(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """``2 * BURST`` connections pooled, Redis's side of each closed while the server's
    stays open: ``BURST`` reads of each kind at once, and ``/readyz``, are all
    answered; the ``hello``s resume the session with its 3 events."""
    async with through_proxy(redis_server, tmp_path) as (bamboo, store, proxy):
        async with attach(bamboo, "s", create=True, role="agent") as (agent, welcome):
            epoch = welcome["epoch"]
            assert await publish(agent, 3) == [1, 2, 3]
            await asyncio.gather(*(store.read_events("s") for _ in range(2 * BURST)))
            proxy.drop()
            answers = await asyncio.gather(
                *(get(bamboo, "/api/v1/sessions/s") for _ in range(BURST)),
                *(get(bamboo, "/api/v1/sessions/s/events") for _ in range(BURST)),
                get(bamboo, "/readyz"),
                *(welcome_or_close(bamboo, "s", last_seq=0, epoch=epoch) for _ in range(BURST)),
            )
    sessions, events = answers[:BURST], answers[BURST : 2 * BURST]
    ready, welcomes = answers[2 * BURST], answers[2 * BURST + 1 :]
    seen = {
        "sessions": [status for status, _ in sessions],
        "events": [status if status != 200 else seqs(body["events"]) for status, body in events],
        "readyz": ready,
        "hellos": [replayed(welcome) for welcome in welcomes],
    }
    assert seen == {
        "sessions": [200] * BURST,
        "events": [SEQS] * BURST,
        "readyz": (200, "ready\n"),
        "hellos": [SEQS] * BURST,
    }


async def test_once_a_connection_dropped_writes_go_on_connections_made_again(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """``2 * BURST`` connections pooled, Redis's side of each closed unseen: one read
    meets a dropped connection (and is answered), which marks every connection made
    before it; then ``BURST`` agents' events at once are each acknowledged, none sent
    on a connection Redis closed."""
    async with through_proxy(redis_server, tmp_path) as (bamboo, store, proxy):
        ids = [f"s{i}" for i in range(BURST)]
        async with contextlib.AsyncExitStack() as stack:
            agents = [
                (await stack.enter_async_context(attach(bamboo, i, create=True, role="agent")))[0]
                for i in ids
            ]
            await asyncio.gather(*(store.read_events("s0") for _ in range(2 * BURST)))
            proxy.drop()
            status, _ = await get(bamboo, "/api/v1/sessions/s0")
            replies = await asyncio.gather(
                *(
                    answer(agent, {"type": "event", "id": 1, "event": token("after")})
                    for agent in agents
                )
            )
    assert status == 200
    assert [reply.get("seq", reply.get("code")) for reply in replies] == [1] * BURST, replies


async def test_a_write_whose_reply_was_lost_is_not_made_again(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The append script runs, and its reply is lost with its connection: the agent
    gets no answer but a close 1011 (its outcome unknown: docs/protocol.md, Readings
    of the shared contract), for an event with no key as for one with a key, and the
    store does not run the script again (each event is in the log once). Its resume
    replays the event, never sent to the connection that published it; the keyed
    event sent again is acknowledged as a duplicate of the seq it was stored with."""
    append = SCRIPTS["append"].sha.encode()
    async with through_proxy(redis_server, tmp_path) as (bamboo, _, proxy):
        async with attach(bamboo, "s", create=True, role="agent") as (agent, welcome):
            assert await publish(agent, 1) == [1]
            proxy.lose_reply_to(append)
            bare = await closed_by(agent, {"type": "event", "id": 1, "event": token("bare")})
        epoch = welcome["epoch"]
        keyed = {"type": "event", "id": 2, "event": token("keyed"), "key": "k"}
        async with attach(bamboo, "s", role="agent", last_seq=1, epoch=epoch) as (agent, _):
            replayed = [await agent.recv_type("event") for _ in range(1)]
            proxy.lose_reply_to(append)
            lost = await closed_by(agent, keyed)
        async with attach(bamboo, "s", role="agent", last_seq=2, epoch=epoch) as (agent, _):
            replayed += [await agent.recv_type("event") for _ in range(1)]
            again = await answer(agent, {**keyed, "id": 3})
            status, body = await get(bamboo, "/api/v1/sessions/s/events")
    assert proxy.lost == 2
    in_doubt = (
        1011,
        "storage failed: a publish may be stored; resume, then resend it with the same key",
    )
    assert bare == lost == (*in_doubt, [])
    assert [(event["seq"], event["event"]["content"]) for event in replayed] == [
        (2, "bare"),
        (3, "keyed"),
    ]
    assert (again["type"], again["seq"], again.get("duplicate")) == ("ack", 3, True), again
    assert status == 200
    assert [event["event"]["content"] for event in body["events"]] == ["e0", "bare", "keyed"]


async def closed_by(peer: Peer, frame: dict[str, Any]) -> tuple[int | None, str, list[str]]:
    """The close that ``frame`` met: its code and reason, and the frames read before it
    (their types): no reply to it, nor its event."""
    await peer.send(frame)
    seen: list[str] = []
    with contextlib.suppress(ConnectionClosed):
        while True:
            seen.append((await peer.recv())["type"])
    close = peer.ws.protocol.close_rcvd
    return (None, "", seen) if close is None else (close.code, close.reason, seen)


async def test_a_read_made_again_after_a_lossy_restart_is_served_the_new_epoch(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """A Redis that may lose writes, its connections closed unseen, then killed and
    started again: reads made at once, each made again on a fresh connection, are
    all served the session's new epoch. Each connection made checks the store's
    generation before it carries a call (generation.py ``on_connect``), the retried
    read's too: none is served the old epoch over the log the restart cut short."""
    server = lossy_redis(start_redis)
    proxy = RedisProxy(server.port)
    port = await proxy.start()
    url = f"redis://127.0.0.1:{port}/0?prefix={prefix_for(tmp_path)}&accept_lossy=true"
    try:
        async with await open_storage(url) as store:
            assert isinstance(store, RedisStorage)
            await store.create_session(Session.new("s"))
            old = await store.epoch("s")
            await asyncio.gather(*(store.epoch("s") for _ in range(2 * BURST)))
            await snapshot(server)
            proxy.drop()
            crash_and_restart(server)
            epochs = await asyncio.gather(*(store.epoch("s") for _ in range(BURST)))
    finally:
        await proxy.close()
    assert len(set(epochs)) == 1 and epochs[0] != old, (old, epochs)


async def test_the_scripts_read_again_write_nothing(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Each script a dropped connection lets the store run again names no command
    that Redis flags as writing (its own file; common.lua's helpers aside), and runs
    under ``EVAL_RO`` (which Redis refuses to a script that writes) on a session with
    events and a message, as the store calls it."""
    admin = redis.asyncio.Redis(port=redis_server.port)
    store = await open_storage(redis_server.url(prefix=prefix_for(tmp_path)))
    try:
        assert isinstance(store, RedisStorage)
        await store.create_session(Session.new("s"))
        await store.append_event("s", AgentEvent.token("t"))
        await store.append_message("s", Message(role="user", content="hi"))
        layout, epoch = store.layout, await store.epoch("s")
        meta, log, _, msgs, _ = layout.session_keys("s")
        calls = {
            "read": ([meta, log], ["1", "", epoch, store.generation.key]),
            "history": ([meta, msgs, log], ["page", 10, ""]),
            "list": ([], [*list_args(layout, SessionFilter(), 250), *FIRST_STEP]),
        }
        assert set(calls) == READING_SCRIPTS
        for name, (keys, args) in calls.items():
            source = (
                Path(__file__).parents[1] / "persistence" / "redis" / f"{name}.lua"
            ).read_text()
            for command in set(re.findall(r"redis\.p?call\('(\w+)'", source)):
                (info,) = (await admin.execute_command("COMMAND", "INFO", command)).values()
                assert b"write" not in info["flags"], (name, command)
            script = SCRIPTS[name].source
            assert await admin.execute_command("EVAL_RO", script, len(keys), *keys, *args)
    finally:
        await store.close()
        await admin.aclose()


async def test_a_script_the_store_may_send_twice_can_write_nothing(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On Redis 7.0 and later the store calls each script of ``READING_SCRIPTS`` by
    ``EVALSHA_RO``, which Redis refuses to a script that writes: were one that writes
    (``touch``) taken for one of them, its call fails and writes nothing, where it
    would otherwise have run, and been run again where its connection dropped."""
    admin = redis.asyncio.Redis(port=redis_server.port)
    store = await open_storage(redis_server.url(prefix=prefix_for(tmp_path)))
    try:
        assert isinstance(store, RedisStorage)
        await store.create_session(Session.new("s"))
        meta = store.layout.meta("s")
        active = await admin.hget(meta, "active")
        monkeypatch.setattr(scripts, "READING_SCRIPTS", READING_SCRIPTS | {"touch"})
        with pytest.raises(StorageError, match="not allowed from read-only scripts"):
            await store.touch("s")
        assert await admin.hget(meta, "active") == active
        assert len(await store.read_events("s")) == 0  # a script that reads runs as ever
    finally:
        await store.close()
        await admin.aclose()

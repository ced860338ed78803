"""A Redis append whose outcome the store cannot know (its reply lost past the socket
timeout, Redis running the command once it goes on; or a ``WAIT`` short of
``wait_replicas``) never breaks the wire contract's "every connection except the one
that published it": the publisher gets no ``ack`` or ``error`` the server cannot stand
behind, and no ``event`` of its own publish, but a close 1011 (reconnect with
resume). Its resume replays the event exactly once if Redis stored it, not at all if
not, and a retry with the same key is then a duplicate, or the first append; the other
viewers get every stored event once, in order. The appends and state changes the
publisher sent behind it, not yet begun, are not made: resent after the resume, each
is made once, in order. Real redis-servers (SIGSTOP, SIGKILL, a replica, a proxy that
withholds a command), a real server, real WebSocket peers."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
from websockets.exceptions import ConnectionClosed

from bamboo_session.persistence.redis import client as redis_client
from bamboo_session.persistence.redis import storage as redis_storage
from bamboo_session.protocol.client import BambooClient
from bamboo_session.protocol.models import AgentEvent, StoredEvent
from bamboo_session.server.app import BambooServer
from tests.instances import eventually
from tests.redis_server import RedisServer, link_replica, prefix_for, store_through_proxy
from tests.support import Peer, attach, run_server, token

SOCKET_TIMEOUT = 1.0  # the store's, shortened from its 10 s so that a test waits it out
SLACK = 8.0  # seconds past it that a loaded machine may take to tell
IN_DOUBT = 1011
# What a write waits for its replica: long enough for one that goes on, under load.
WAIT_MS = 2000


@pytest.fixture
def short_socket_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """The store's client (not its pub/sub listener's) gives up on Redis after
    ``SOCKET_TIMEOUT``: the store has no setting for it."""
    shortened = functools.partial(redis_client.connect, socket_timeout=SOCKET_TIMEOUT)
    monkeypatch.setattr(redis_storage, "connect", shortened)


async def frames_until_close(peer: Peer, within: float) -> tuple[int | None, list[dict[str, Any]]]:
    """What ``peer`` reads for ``within`` seconds at most, and its close code (None:
    still open then)."""
    frames: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(within):
            while True:
                frames.append(await peer.recv(within))
    except ConnectionClosed:
        return peer.ws.close_code, frames
    except TimeoutError:
        return None, frames


def answers_and_events(frames: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """The frames that would tell a publisher something of its publish (``id`` 2)."""
    told = []
    for frame in frames:
        if frame["type"] in ("ack", "error", "acks") and frame.get("id") == 2:
            told.append((frame["type"], frame.get("code", frame.get("seq"))))
        elif frame["type"] == "event":
            told.append(("event", frame["seq"]))
    return told


async def next_event(peer: Peer) -> tuple[int, str]:
    frame = await peer.recv_type("event", timeout=SOCKET_TIMEOUT + SLACK)
    return frame["seq"], frame["event"]["content"]


async def publish(peer: Peer, request_id: int, content: str, key: str) -> dict[str, Any]:
    return await peer.request(
        {"type": "event", "id": request_id, "key": key, "event": token(content)}, "ack"
    )


@contextlib.asynccontextmanager
async def streaming(store: str) -> AsyncIterator[tuple[BambooServer, Peer, Peer, dict[str, Any]]]:
    """A server on ``store``, session ``s`` created by its publisher, watched by a
    viewer, its first event (key ``k1``) acknowledged and delivered: the server, the
    publisher, the viewer and the publisher's welcome."""
    async with (
        run_server(store=store) as server,
        attach(server, "s", create=True) as (publisher, welcome),
        attach(server, "s") as (viewer, _),
    ):
        assert (await publish(publisher, 1, "first", "k1"))["seq"] == 1
        assert await next_event(viewer) == (1, "first")
        yield server, publisher, viewer, welcome


SECOND: dict[str, Any] = {"type": "event", "id": 2, "key": "k2", "event": token("second")}
# The same in a batch frame, whose items are answered together (``acks``).
SECOND_IN_BATCH: dict[str, Any] = {
    "type": "batch",
    "id": 2,
    "items": [{"key": "k2", "event": token("second")}],
}


async def publish_in_doubt(
    publisher: Peer,
    stall: Callable[[], None],
    go_on: Callable[[], None],
    frame: dict[str, Any] = SECOND,
) -> tuple[int | None, list[dict[str, Any]]]:
    """Publishes ``second`` (key ``k2``, id 2) after ``stall``, and calls ``go_on`` once
    the publisher was told whatever it is told (or nothing for a while); every frame
    the publisher read, until its close (or a few seconds of nothing more)."""
    stall()
    try:
        await publisher.send(frame)
        code, frames = await frames_until_close(publisher, SOCKET_TIMEOUT + SLACK)
    finally:
        go_on()
    if code is None:
        more_code, more = await frames_until_close(publisher, 3.0)
        code, frames = more_code, frames + more
    return code, frames


async def check_resume(server: BambooServer, epoch: str, stored: bool, viewer: Peer) -> None:
    """The publisher's resume from seq 1: the event replayed once if it was stored;
    its retry with the same key a duplicate of it, or else its first append (which the
    viewer gets then); a publish after it in order for the viewer."""
    async with attach(server, "s", last_seq=1, epoch=epoch) as (again, welcome):
        assert (welcome["resumed"], welcome["replay"]) == (True, 1 if stored else 0)
        if stored:
            assert await next_event(again) == (2, "second")
        retry = await publish(again, 12, "second", "k2")
        assert (retry["seq"], retry.get("duplicate", False)) == (2, stored)
        if not stored:
            assert await next_event(viewer) == (2, "second")
        third = await publish(again, 13, "third", "k3")
        assert third["seq"] == 3
        assert await next_event(viewer) == (3, "third")
        code, frames = await frames_until_close(again, 0.5)
        assert code is None and answers_and_events(frames) == []  # nothing of its own


@pytest.mark.usefixtures("short_socket_timeout")
async def test_an_append_redis_runs_after_the_socket_timeout_closes_its_publisher(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    redis_server = start_redis("redis")
    assert redis_server.pid is not None
    pid = redis_server.pid
    store = redis_server.url(prefix=prefix_for(tmp_path))
    async with streaming(store) as (server, publisher, viewer, welcome):
        code, frames = await publish_in_doubt(
            publisher, lambda: os.kill(pid, signal.SIGSTOP), lambda: os.kill(pid, signal.SIGCONT)
        )
        assert (code, answers_and_events(frames)) == (IN_DOUBT, [])
        assert await next_event(viewer) == (2, "second")  # Redis ran it once it went on
        await check_resume(server, welcome["epoch"], True, viewer)


@pytest.mark.usefixtures("short_socket_timeout")
async def test_an_append_lost_with_redis_is_not_replayed_and_its_retry_appends_it(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """The command waits unread in a stopped Redis that is then killed: never run.
    Redis comes back (durable: the same epoch) without it."""
    redis_server = start_redis("redis")
    assert redis_server.pid is not None
    pid = redis_server.pid
    store = redis_server.url(prefix=prefix_for(tmp_path))
    async with streaming(store) as (server, publisher, viewer, welcome):

        def killed() -> None:
            redis_server.stop(signal.SIGKILL)  # a stopped process dies of it too

        code, frames = await publish_in_doubt(
            publisher, lambda: os.kill(pid, signal.SIGSTOP), killed
        )
        await redis_server.start_in_loop()
        assert (code, answers_and_events(frames)) == (IN_DOUBT, [])
        await check_resume(server, welcome["epoch"], False, viewer)


async def replicated_store(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> tuple[str, int]:
    """A store URL with ``wait_replicas=1`` on a primary whose replica is linked, and
    the replica's pid (to stop it)."""
    primary, replica = start_redis("primary"), start_redis("replica")
    assert replica.pid is not None
    admin = redis.asyncio.Redis(port=replica.port, decode_responses=True)
    writer = redis.asyncio.Redis(port=primary.port)
    try:
        await link_replica(admin, primary)
        await writer.set("linked", 1)
        assert await writer.execute_command("WAIT", 1, 20_000) == 1  # the replica acks
    finally:
        await admin.aclose()
        await writer.aclose()
    store = primary.url(prefix=prefix_for(tmp_path), wait_replicas=1, wait_timeout_ms=WAIT_MS)
    return store, replica.pid


@pytest.mark.parametrize("frame", [SECOND, SECOND_IN_BATCH], ids=["event", "batch"])
async def test_an_append_short_of_its_replicas_closes_its_publisher(
    start_redis: Callable[[str], RedisServer], tmp_path: Path, frame: dict[str, Any]
) -> None:
    """``wait_replicas=1``, its replica stopped: the append is on the primary, and
    published, but not as durable as asked, so it is not acknowledged."""
    store, pid = await replicated_store(start_redis, tmp_path)
    async with streaming(store) as (server, publisher, viewer, welcome):
        stop, go_on = (lambda: os.kill(pid, signal.SIGSTOP)), (lambda: os.kill(pid, signal.SIGCONT))
        code, frames = await publish_in_doubt(publisher, stop, go_on, frame)
        assert (code, answers_and_events(frames)) == (IN_DOUBT, [])
        assert await next_event(viewer) == (2, "second")
        await check_resume(server, welcome["epoch"], True, viewer)


async def test_the_python_client_resumes_and_its_publish_gets_the_stored_seq(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """The project's client, closed 1011 under its publish, resumes and resends it
    until the replica goes on: the publish resolves with the seq it was stored under
    (a duplicate), and its stream, with no SequenceError, holds that event once, as
    a resume's replay of a publish whose ack was lost (BambooClient.events)."""
    store, pid = await replicated_store(start_redis, tmp_path)
    async with run_server(store=store) as server:
        url = f"ws://127.0.0.1:{server.port}"
        async with await BambooClient.connect(url, "s", create=True, role="agent") as agent:
            assert await agent.publish(AgentEvent.token("first"), key="k1") == 1
            os.kill(pid, signal.SIGSTOP)
            try:
                second = asyncio.create_task(agent.publish(AgentEvent.token("second"), key="k2"))
                await eventually(lambda: not agent.connected, timeout=WAIT_MS / 1000 + SLACK)
            finally:
                os.kill(pid, signal.SIGCONT)
            assert await asyncio.wait_for(second, SLACK + WAIT_MS / 1000) == 2
            assert await agent.publish(AgentEvent.token("third"), key="k3") == 3
            stream = agent.events()
            seen = await asyncio.wait_for(anext(stream), SLACK)
            assert isinstance(seen, StoredEvent)
            assert (seen.seq, getattr(seen.event, "content", None)) == (2, "second")
            assert agent.queued_events == 0  # nothing more: not "first", nor "third"
            assert agent.reconnects >= 1


async def on_primary(server: BambooServer, seq: int) -> bool:
    return await server.manager.storage.last_seq("s") >= seq


KEYLESS_THIRD: dict[str, Any] = {"type": "event", "id": 3, "event": token("third")}
KEYLESS_THIRD_IN_BATCH: dict[str, Any] = {
    "type": "batch",
    "id": 3,
    "items": [{"event": token("third")}],
}


@pytest.mark.parametrize("keyless", [KEYLESS_THIRD, KEYLESS_THIRD_IN_BATCH], ids=["event", "batch"])
async def test_appends_queued_behind_one_in_doubt_are_not_made_and_their_resend_is_stored_once(
    start_redis: Callable[[str], RedisServer], tmp_path: Path, keyless: dict[str, Any]
) -> None:
    """The publisher's keyless publish read while its publish before is in doubt (the
    store call under way): the server, which closes the connection 1011 and tells it to
    resend what is unanswered, does not make it all the same. Made, it was stored on
    the primary, replayed by the resume, and stored again by the resend, which has no
    key to tell: the viewer got it twice."""
    store, pid = await replicated_store(start_redis, tmp_path)
    async with streaming(store) as (server, publisher, viewer, welcome):
        os.kill(pid, signal.SIGSTOP)
        try:
            await publisher.send(SECOND)
            # On the primary, its WAIT under way: "third" queues behind.
            await eventually(lambda: on_primary(server, 2), timeout=SLACK)
            await publisher.send(keyless)
            code, frames = await frames_until_close(publisher, WAIT_MS / 1000 + SLACK)
        finally:
            os.kill(pid, signal.SIGCONT)
        assert (code, answers_and_events(frames)) == (IN_DOUBT, [])
        # Its attach queues behind whatever of the old connection the session has yet
        # to carry out: the replay says what was made.
        async with attach(server, "s", last_seq=1, epoch=welcome["epoch"]) as (again, resumed):
            assert (resumed["resumed"], resumed["replay"]) == (True, 1)
            assert await next_event(again) == (2, "second")
            assert (await publish(again, 12, "second", "k2"))["seq"] == 2
            await again.send(keyless)
            if keyless["type"] == "batch":
                assert (await again.recv_type("acks"))["seqs"] == [3]
            else:
                assert (await again.recv_type("ack"))["seq"] == 3
        assert [await next_event(viewer) for _ in range(2)] == [(2, "second"), (3, "third")]
        code, frames = await frames_until_close(viewer, 1.0)
        assert code is None and answers_and_events(frames) == []  # "third" once


@pytest.mark.usefixtures("short_socket_timeout")
async def test_a_close_pipelined_behind_a_lost_publish_waits_for_the_resend(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """An agent's last publish and its close, pipelined (docs/protocol.md, ``state``):
    the publish never reaches Redis (withheld: lost), its reply waited for past the
    socket timeout, and its connection is closed 1011, to resume and resend. The close
    queued behind it was made all the same: the session closed without the publish,
    whose resend the resume could no longer make (4409). Not made, both are resent in
    their order: the viewer gets the publish, then the close."""
    async with (
        store_through_proxy(redis_server, prefix_for(tmp_path)) as (proxy, store),
        run_server(store=store) as server,
        attach(server, "s", create=True) as (agent, welcome),
        attach(server, "s") as (viewer, _),
    ):
        assert (await publish(agent, 1, "first", "k1"))["seq"] == 1
        assert await next_event(viewer) == (1, "first")
        proxy.withhold(b"never-stored")
        await agent.send({"type": "event", "id": 2, "key": "k2", "event": token("never-stored")})
        await eventually(lambda: proxy.withheld >= 1, timeout=SLACK)
        await agent.send({"type": "state", "id": 3, "state": "closed"})
        code, frames = await frames_until_close(agent, SOCKET_TIMEOUT + SLACK)
        assert (code, answers_and_events(frames)) == (IN_DOUBT, [])
        proxy.withhold()
        async with attach(server, "s", last_seq=1, epoch=welcome["epoch"]) as (again, resumed):
            assert (resumed["resumed"], resumed["replay"]) == (True, 0)
            assert (await publish(again, 2, "never-stored", "k2"))["seq"] == 2
            await again.send({"type": "state", "id": 3, "state": "closed"})
            assert (await again.recv_type("ack"))["seq"] == 2
        assert await next_event(viewer) == (2, "never-stored")
        assert (await viewer.recv_type("closed"))["reason"] == "session closed"

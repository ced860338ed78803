"""A session closed by another server on the same Redis store, before this one has heard
of it (its notice late, or lost with its pub/sub connection): this server's writes of
the session's state (idle at its look, active at an attach, disconnected when the last
peer leaves) are refused by the store, since a closed session never moves again. The
peers get what a close tells them (``closed``, then 1000; 4409 for a hello), never an
internal error (1011) from an actor that failed on the refusal."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
from websockets.exceptions import ConnectionClosed

from bamboo_session.persistence.redis import listener
from bamboo_session.server.app import BambooServer
from tests.redis_server import RedisServer, prefix_for
from tests.server_instances_support import _pubsub_clients
from tests.support import attach, open_peer, run_server, token

# Rounds of a hello racing a close on the other server: each ends in a few
# milliseconds; about one in six hit the window between the attach's read of the
# session and its write of ``active`` before the fix.
RACE_ROUNDS = 40


async def test_a_look_at_a_session_closed_elsewhere_ends_its_peers_as_the_close_would(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Alice on A, whose pub/sub connection is killed (its listener back after 30 s);
    ``s1`` closed on B. A's look at the quiet session (every 0.1 s here) finds it
    closed: alice gets ``closed`` and 1000, long before A hears the notice. The look
    used to move it to ``idle``, which the store refused, and the actor failed (1011)."""
    monkeypatch.setattr(listener, "RECONNECT_DELAYS", (30.0,))
    url = redis_server.url(prefix=prefix_for(tmp_path), heartbeat=1)
    admin = redis.asyncio.Redis(port=redis_server.port)
    try:
        async with run_server(store=url, idle_timeout=0.1) as a, run_server(store=url) as b:
            before = await _pubsub_clients(admin)
            async with attach(a, "s1", create=True, user_id="alice") as (alice, _):
                first = {"type": "event", "id": 1, "event": token("before the close")}
                assert (await alice.request(first, "ack"))["seq"] == 1
                for client_id in await _pubsub_clients(admin) - before:
                    await admin.client_kill_filter(_id=client_id)
                await b.manager.close_session("s1")
                code, frames = await alice.closed(timeout=10)
                assert [frame["type"] for frame in frames][-1:] == ["closed"], frames
                assert (code, alice.ws.close_reason) == (1000, "session closed")
    finally:
        await admin.aclose()


async def hello_outcome(server: BambooServer, session_id: str) -> tuple[int | None, list[Any]]:
    """The close code of a hello to ``session_id`` (None if still open after its
    welcome and the frames that came with it) and the frames it got."""
    async with open_peer(server, session_id) as peer:
        await peer.send({"type": "hello"})
        frames: list[Any] = []
        try:
            frames.append(await peer.recv(timeout=10))
            if frames[0]["type"] == "welcome":
                return await peer.closed(timeout=10)
        except ConnectionClosed:
            pass
        code, rest = await peer.closed(timeout=10)
        return code, frames + rest


async def test_a_hello_racing_a_close_on_the_other_server_is_welcomed_or_refused_4409(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """``s<n>`` parked on A (alice came and left); B closes it while a hello reaches A.
    The hello is refused 4409 (A read the session closed), or welcomed and then told
    ``closed`` with 1000 (A wrote ``active`` first). It used to wait for its read
    deadline and get 1011 when the close came between A's read and its write of
    ``active``: the store refused the move, and the actor failed."""
    url = redis_server.url(prefix=prefix_for(tmp_path), heartbeat=1)
    async with run_server(store=url) as a, run_server(store=url) as b:
        for round_ in range(RACE_ROUNDS):
            session_id = f"s{round_}"
            async with attach(a, session_id, create=True, user_id="alice"):
                pass

            async def close(session_id: str = session_id, delay: float = (round_ % 8) / 2000):
                await asyncio.sleep(delay)
                await b.manager.close_session(session_id)

            _, (code, frames) = await asyncio.gather(close(), hello_outcome(a, session_id))
            if code == 4409:
                assert frames == [], frames
            else:
                assert [frame["type"] for frame in frames][-1:] == ["closed"], (round_, frames)
                assert code == 1000, (round_, code)

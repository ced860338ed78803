"""A Redis ``state`` change whose outcome the store cannot know (its reply lost with
its connection after Redis ran it, or never answered past the socket timeout) is
answered as an append in doubt is: no ``ack`` nor ``error`` (either might be untrue),
but a close 1011 that says to resume and look at the welcome's state. A ``closed``
that Redis ran ends the session (the resume is refused 4409); one Redis never ran
leaves it open, the resume's welcome says so, and its resend closes it. The appends
the requester sent behind it are not made: resent after the resume, each is made
once, in order. Real redis-server behind a proxy that loses or withholds the state
script's command, a real server, real WebSocket peers."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
from websockets.exceptions import ConnectionClosed

from bamboo_session.persistence.redis import client as redis_client
from bamboo_session.persistence.redis import storage as redis_storage
from bamboo_session.persistence.redis.scripts import SCRIPTS
from bamboo_session.server.failures import STATE_IN_DOUBT
from tests.instances import eventually
from tests.redis_server import RedisServer, prefix_for, store_through_proxy
from tests.support import Peer, attach, open_peer, run_server, token

SOCKET_TIMEOUT = 1.0  # the store's, shortened from its 10 s so that a test waits it out
SLACK = 8.0  # seconds past it that a loaded machine may take to tell
STATE_SCRIPT = SCRIPTS["state"].sha.encode()  # in the EVALSHA of every state write
CLOSE: dict[str, Any] = {"type": "state", "id": 2, "state": "closed"}


@pytest.fixture
def short_socket_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """The store's client gives up on Redis after ``SOCKET_TIMEOUT``."""
    shortened = functools.partial(redis_client.connect, socket_timeout=SOCKET_TIMEOUT)
    monkeypatch.setattr(redis_storage, "connect", shortened)


Frames = list[dict[str, Any]]


async def read_until_close(peer: Peer, within: float) -> tuple[int | None, str, Frames]:
    """Every frame ``peer`` reads until its close (within ``within`` seconds) but
    ``presence``, and the close's code and reason."""
    frames: Frames = []
    try:
        while True:
            if (frame := await peer.recv(within))["type"] != "presence":
                frames.append(frame)
    except ConnectionClosed:
        return peer.ws.close_code, peer.ws.close_reason, frames


async def load_state_script(redis_server: RedisServer) -> None:
    """The state script in Redis's cache: else the call lost is its ``EVALSHA``, whose
    ``NOSCRIPT`` reply is what the proxy loses, and Redis never runs the script."""
    client = redis.asyncio.Redis(port=redis_server.port)
    try:
        assert await client.script_load(SCRIPTS["state"].source) == SCRIPTS["state"].sha
    finally:
        await client.aclose()


def answers(frames: list[dict[str, Any]], request_id: int) -> list[dict[str, Any]]:
    return [frame for frame in frames if frame.get("id") == request_id]


async def test_a_close_redis_ran_whose_reply_was_lost_closes_its_requester(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The close reached Redis and ran (its notice published); its reply was lost with
    the connection. The requester, told ``internal`` before, while the session closed
    under it, gets no answer but a close: 1011 in doubt, or the session's own close
    (1000, ``closed``) should its notice come first. Either way its resume finds the
    session closed, and the viewer got ``closed`` and 1000."""
    async with (
        store_through_proxy(redis_server, prefix_for(tmp_path)) as (proxy, store),
        run_server(store=store) as server,
        attach(server, "s", create=True) as (requester, _),
        attach(server, "s") as (viewer, _),
    ):
        await load_state_script(redis_server)
        proxy.lose_reply_to(STATE_SCRIPT)
        await requester.send(CLOSE)
        code, reason, frames = await read_until_close(requester, SLACK)
        assert answers(frames, 2) == []  # neither an ack nor an error
        if code == 1011:
            assert (reason, frames) == (STATE_IN_DOUBT[1], [])
        else:
            assert (code, [frame["type"] for frame in frames]) == (1000, ["closed"])
        assert proxy.lost == 1
        assert (await viewer.recv_type("closed", timeout=SLACK))["reason"] == "session closed"
        async with open_peer(server, "s") as again:
            await again.send({"type": "hello", "last_seq": 0})
            with pytest.raises(ConnectionClosed):
                await again.recv(SLACK)
            assert again.ws.close_code == 4409


@pytest.mark.usefixtures("short_socket_timeout")
async def test_a_close_redis_never_ran_is_resent_after_the_resume_behind_nothing(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The close never reaches Redis (withheld), its reply waited for past the socket
    timeout: the requester gets no answer but a close 1011 in doubt, and the publish
    it pipelined behind the close is not made. Its resume is welcomed to the session,
    not closed; the publish and the close, resent in order, are made once each."""
    async with (
        store_through_proxy(redis_server, prefix_for(tmp_path)) as (proxy, store),
        run_server(store=store) as server,
        attach(server, "s", create=True) as (requester, welcome),
        attach(server, "s") as (viewer, _),
    ):
        proxy.withhold(STATE_SCRIPT)
        await requester.send(CLOSE)
        await eventually(lambda: proxy.withheld >= 1, timeout=SLACK)
        await requester.send({"type": "event", "id": 3, "event": token("after")})
        code, reason, frames = await read_until_close(requester, SOCKET_TIMEOUT + SLACK)
        assert (code, reason, frames) == (1011, STATE_IN_DOUBT[1], [])
        proxy.withhold()
        async with attach(server, "s", last_seq=0, epoch=welcome["epoch"]) as (again, resumed):
            assert (resumed["resumed"], resumed["replay"]) == (True, 0)  # "after" not made
            assert resumed["session"]["state"] == "active"
            await again.send({"type": "event", "id": 3, "event": token("after")})
            assert (await again.recv_type("ack"))["seq"] == 1
            await again.send(CLOSE)
            assert (await again.recv_type("ack"))["seq"] == 1
        event = await viewer.recv_type("event", timeout=SLACK)
        assert (event["seq"], event["event"]["content"]) == (1, "after")
        assert (await viewer.recv_type("closed", timeout=SLACK))["reason"] == "session closed"

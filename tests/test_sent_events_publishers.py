"""Connections that publish and view at once, under the check every event frame passes
on its way to a socket (server/sent_events.py): each misses its own appends by design
(the publisher learns their seqs from its acks), so its stream has holes that are no
gap. It must be given every other peer's event once, in order, and never be closed for
them, whether it starts publishing at once or after it has viewed for a while, with
single events, messages, ``batch`` frames, duplicates and refused appends; on every
store, and on two instances of one Redis store, where the other instance's appends
reach it through the store's feed. A viewer that publishes nothing gets every event.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from bamboo_session.server.app import BambooServer
from bamboo_session.server.sent_events import PATHS
from tests.redis_server import RedisServer, prefix_for
from tests.server_backends import pytest_generate_tests, server_store
from tests.support import Peer, attach, run_server, token

__all__ = ["pytest_generate_tests", "server_store"]  # the store each test runs on


class Watched:
    """A peer, the event seqs it was given, and the seqs of its own appends (acks)."""

    def __init__(self, peer: Peer, welcome: dict[str, Any]) -> None:
        self.peer = peer
        self.start = welcome["last_seq"]
        self.batch = "batch" in (welcome.get("extensions") or [])
        self.given: list[int] = []
        self.own: set[int] = set()
        self.requests = 0

    async def publish(self, frame: dict[str, Any]) -> None:
        """Sends an append and reads until its answer (events met meanwhile noted)."""
        self.requests += 1
        await self.peer.send({**frame, "id": self.requests})
        while True:
            reply = await self.peer.recv()
            if reply["type"] == "event":
                self.given.append(reply["seq"])
            elif reply.get("id") == self.requests:
                if reply["type"] == "ack" and not reply.get("duplicate"):
                    self.own.add(reply["seq"])
                elif reply["type"] == "acks":
                    duplicates = set(reply.get("duplicates", []))
                    self.own.update(s for i, s in enumerate(reply["seqs"]) if i not in duplicates)
                return

    async def given_up_to(self, last: int) -> None:
        """Reads events until every seq up to ``last`` is given or its own."""
        while self._missing(last):
            reply = await self.peer.recv()
            if reply["type"] == "event":
                self.given.append(reply["seq"])

    def _missing(self, last: int) -> bool:
        seen = set(self.given) | self.own
        return any(seq not in seen for seq in range(self.start + 1, last + 1))

    def check(self, last: int) -> None:
        """Given every seq after its start up to ``last`` once, in order, but its own."""
        expected = [s for s in range(self.start + 1, last + 1) if s not in self.own]
        assert self.given == expected

    async def still_open(self) -> None:
        pong = await self.peer.request({"type": "ping", "id": "still open"}, "pong")
        assert pong["id"] == "still open"


async def converse(agent: Watched, user: Watched, others: list[Watched]) -> int:
    """The agent and the user both publish, in every way, and view; returns the last
    seq. The user views a while first, then publishes, then views the agent's again."""
    everyone = [agent, user, *others]
    last = 0

    async def agent_says(count: int) -> None:
        nonlocal last
        for i in range(count):
            await agent.publish({"type": "event", "event": token(f"agent {last}:{i}")})
        last = max(agent.own)
        for watched in everyone:
            await watched.given_up_to(last)

    await agent_says(3)
    await user.publish({"type": "event", "event": token("user"), "key": "k1"})
    await agent_says(2)  # the user's stream has a hole at its own event: no gap
    await user.publish({"type": "message", "message": {"role": "user", "content": "hi"}})
    await user.publish({"type": "event", "event": token("again"), "key": "k1"})  # duplicate
    await user.publish({"type": "event", "event": {"type": "no such type"}})  # refused
    if user.batch:
        items = [{"event": token(f"b{i}"), "key": f"b{i}"} for i in range(3)]
        await user.publish({"type": "batch", "items": items})
    await agent_says(2)
    last = max(last, *user.own)
    for watched in everyone:
        await watched.given_up_to(last)
        watched.check(last)
        await watched.still_open()
    assert len(user.own) == (5 if user.batch else 2)
    return last


def assert_nothing_held_back(*servers: BambooServer) -> None:
    for server in servers:
        get = server.metrics.registry.get_sample_value
        for name in ("bamboo_events_not_resent_total", "bamboo_event_gaps_total"):
            assert [get(name, {"path": path}) for path in PATHS] == [0.0] * len(PATHS)


@pytest.mark.usefixtures("server_store")
async def test_a_connection_that_publishes_and_views_is_given_every_other_event() -> None:
    async with (
        run_server() as server,
        attach(server, "talk", create=True, role="agent") as agent,
        attach(server, "talk") as user,
        attach(server, "talk") as viewer,
    ):
        last = await converse(Watched(*agent), Watched(*user), [Watched(*viewer)])
        assert last > 7
        assert_nothing_held_back(server)


async def test_on_two_instances_of_one_redis_store_too(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    url = redis_server.url(prefix=prefix_for(tmp_path))
    async with (
        run_server(tmp_path / "a", store=url) as one,
        run_server(tmp_path / "b", store=url) as other,
        AsyncExitStack() as peers,
    ):
        agent = Watched(*await peers.enter_async_context(attach(one, "talk", create=True)))
        user = Watched(*await peers.enter_async_context(attach(other, "talk")))
        viewers = [
            Watched(*await peers.enter_async_context(attach(server, "talk")))
            for server in (one, other)
        ]
        await converse(agent, user, viewers)
        assert_nothing_held_back(one, other)

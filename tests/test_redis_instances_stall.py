"""An instance stalled past the presence heartbeat (SIGSTOP, as a long GC pause, a
swap storm or a frozen VM would) is taken for dead by the others: its connections are
swept from presence, and the last connection of another instance to leave parks the
session (``disconnected``). When it goes on (SIGCONT), its heartbeat registers its
connections again, and the session is theirs again: ``active``, not left
``disconnected`` with peers attached until the next look (``idle_timeout``, 300 s)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bamboo_session.protocol.client import BambooClient
from tests.instances import FAST, Instances, clients, eventually
from tests.redis_server import RedisServer, prefix_for

HEARTBEAT = 1  # seconds: the stall below outlasts it


@pytest.fixture
def group(redis_server: RedisServer, tmp_path: Path) -> Iterator[Instances]:
    store = redis_server.url(prefix=prefix_for(tmp_path), heartbeat=HEARTBEAT)
    made = Instances(tmp_path, store)
    try:
        yield made
    finally:
        for process in made.processes:
            if process.proc is not None and process.proc.poll() is None:
                os.kill(process.proc.pid, signal.SIGCONT)  # killable either way; tidy
        made.close()


def metadata(port: int, session_id: str) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/api/v1/sessions/{session_id}"
    with urllib.request.urlopen(url, timeout=10) as answer:
        found: dict[str, Any] = json.loads(answer.read())["metadata"]
        return found


async def state_on(group: Instances, index: int, session_id: str) -> str:
    found = await asyncio.to_thread(metadata, group.ports[index], session_id)
    return str(found["state"])


async def test_a_stalled_instance_takes_its_session_back_when_it_goes_on(
    group: Instances,
) -> None:
    group.start(2)
    async with clients(BambooClient.connect(group.url(0), "st", create=True, **FAST)) as (alice,):
        bob = await BambooClient.connect(group.url(1), "st", **FAST)
        stalled = group.processes[0].proc
        assert stalled is not None
        os.kill(stalled.pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(HEARTBEAT * 2.5)  # alice's registration runs out
            await bob.close()  # B's last one out, and A's taken for gone: parked
            await eventually(lambda: _is(group, 1, "disconnected"), timeout=5)
        finally:
            os.kill(stalled.pid, signal.SIGCONT)
        # A's heartbeat (every third of it) registers alice again, and says so.
        await eventually(lambda: _is(group, 1, "active"), timeout=HEARTBEAT * 3)
        assert (await asyncio.to_thread(metadata, group.ports[1], "st"))["connections"] == 1
        assert alice.connected
    group.check_logs()


async def _is(group: Instances, index: int, state: str) -> bool:
    return await state_on(group, index, "st") == state


async def test_a_session_closed_while_its_instance_stalled_stays_closed(
    group: Instances,
) -> None:
    """A peer on the other instance closes the session while A is stopped: A, going
    on, registers its connection again but writes nothing back (the store holds the
    session closed, not parked: ``state.lua`` would refuse closed to active anyway),
    and the session stays closed on every instance."""
    group.start(2)
    async with clients(BambooClient.connect(group.url(0), "st", create=True, **FAST)):
        bob = await BambooClient.connect(group.url(1), "st", **FAST)
        stalled = group.processes[0].proc
        assert stalled is not None
        os.kill(stalled.pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(HEARTBEAT * 2.5)  # alice's registration runs out
            await bob.set_state("closed")
            await bob.close()
        finally:
            os.kill(stalled.pid, signal.SIGCONT)
        await asyncio.sleep(HEARTBEAT * 2)  # A's heartbeats after it goes on
        assert await state_on(group, 0, "st") == "closed"
        assert await state_on(group, 1, "st") == "closed"
    group.check_logs()

"""A parked session (no connection attached) that its store no longer holds alive leaves
the server's memory (its actor, with its replay ring and timer) once the server knows:
at its expiry, before the store's cleanup deletes it; at once when deleted through the
API; at its next look (every ``idle_timeout`` here) when another process deleted it on a
shared store, whose notice only a subscription hears. Until then the looks leave a
living session alone, and an attach afterwards gets what the store says (r328: such
actors stayed for ``--disconnect-retention``, 3,600 s, about 115 KiB each)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from bamboo_session.protocol.models import utcnow
from bamboo_session.server.app import BambooServer
from tests.instances import eventually
from tests.redis_server import RedisServer, prefix_for
from tests.server_backends import pytest_generate_tests, server_store
from tests.support import Peer, attach, get, open_peer, run_server, token
from tests.test_cli_offline import tool

__all__ = ["pytest_generate_tests", "server_store"]  # the store test_cleanup... runs on

EVENTS = 20
CONTENT = "x" * 1024
RETENTION = 3600.0  # the default: no test here waits for it


async def memory_of(server: BambooServer) -> dict[str, float]:
    """The gauges of what live sessions hold, as ``GET /metrics`` shows them."""
    status, text = await get(server, "/metrics")
    assert status == 200
    wanted = ("bamboo_live_actors", "bamboo_parked_actors", "bamboo_buffered_bytes")
    found = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in wanted:
            found[name.removeprefix("bamboo_")] = float(value)
    return found


async def until_gone(server: BambooServer, timeout: float) -> float:
    """Seconds until no actor (and no ring byte) is left in memory; fails past ``timeout``."""
    started = time.monotonic()
    while True:
        held = await memory_of(server)
        if held == {"live_actors": 0, "parked_actors": 0, "buffered_bytes": 0}:
            return time.monotonic() - started
        assert time.monotonic() - started < timeout, f"still in memory: {held}"
        await asyncio.sleep(0.05)


async def publish(peer: Peer, count: int, start: int = 0) -> None:
    for n in range(start, start + count):
        await peer.request({"type": "event", "id": n, "event": token(CONTENT)}, "ack")


async def parked_with_events(server: BambooServer, session_id: str) -> str:
    """``session_id`` created, given EVENTS events of 1 KiB, and left: parked, its
    ring in the memory budget. Its epoch."""
    async with attach(server, session_id, create=True, role="agent") as (agent, welcome):
        await publish(agent, EVENTS)

    # The detach comes in the actor's turn after the close: waited for, not slept on.
    async def parked() -> bool:
        held = await memory_of(server)
        return held["live_actors"] == held["parked_actors"] == 1

    await eventually(parked, timeout=20.0)
    held = await memory_of(server)
    assert held["buffered_bytes"] > 0, held  # the parked ring: what must not outlive it
    epoch: str = welcome["epoch"]
    return epoch


async def hello_code(server: BambooServer, session_id: str, **hello: object) -> int | None:
    async with open_peer(server, session_id) as peer:
        await peer.send({"type": "hello", **hello})
        code, _ = await peer.closed()
        return code


async def test_a_parked_session_leaves_memory_at_its_expiry_before_cleanup_deletes_it(
    server_store: str,
) -> None:
    """TTL 1 s, cleanup every 0.3 s: the actor and its ring go just past the expiry
    (the look comes then), not at the end of the retention; the store then deletes the
    session (404), and a hello gets 4404 from the store."""
    async with run_server(
        default_ttl=1, cleanup_interval=0.3, disconnect_retention=RETENTION
    ) as server:
        await parked_with_events(server, "expiring")
        metadata = await server.manager.get_metadata("expiring")
        assert metadata is not None and metadata.expires_at is not None
        await until_gone(server, timeout=10.0)
        late = (utcnow() - metadata.expires_at).total_seconds()
        assert late < 1.0, f"left memory {late:.2f} s after its expiry"
        for _ in range(100):
            if (await get(server, "/api/v1/sessions/expiring"))[0] == 404:
                break
            await asyncio.sleep(0.1)
        assert (await get(server, "/api/v1/sessions/expiring"))[0] == 404
        assert await hello_code(server, "expiring") == 4404
        assert (await memory_of(server))["live_actors"] == 0  # the hello spawned none


async def test_a_parked_session_deleted_through_the_api_leaves_memory_at_once() -> None:
    async with run_server(disconnect_retention=RETENTION) as server:
        await parked_with_events(server, "deleted")
        await server.manager.delete_session("deleted")
        assert await until_gone(server, timeout=0.5) < 0.5
        assert await hello_code(server, "deleted") == 4404


async def test_an_expired_parked_session_is_not_found_and_a_create_starts_a_new_one() -> None:
    """No cleanup meanwhile (every hour): the store still holds the expired session.
    Its actor went at the expiry; a resume gets 4404 from the store, as it did from
    the actor; a hello with ``create`` gets a new session under the id (new epoch,
    nothing of the old log)."""
    async with run_server(
        default_ttl=1, cleanup_interval=3600, disconnect_retention=RETENTION
    ) as server:
        epoch = await parked_with_events(server, "lapsed")
        await until_gone(server, timeout=10.0)
        assert await hello_code(server, "lapsed", last_seq=EVENTS, epoch=epoch) == 4404
        async with attach(server, "lapsed", create=True) as (_, welcome):
            assert welcome["epoch"] != epoch and welcome["last_seq"] == 0


async def test_a_session_kept_alive_elsewhere_stays_parked_and_resumes_from_the_store(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Redis, two servers, TTL 2 s. Parked on A; bob on B publishes past its first
    expiry (activity): A's looks find it alive and keep it. Alice then resumes on A from
    where she left and gets bob's events exactly, then a live one."""
    url = redis_server.url(prefix=prefix_for(tmp_path))
    options = {"default_ttl": 2, "disconnect_retention": RETENTION}
    async with run_server(store=url, **options) as a, run_server(store=url, **options) as b:
        epoch = await parked_with_events(a, "shared")
        async with attach(b, "shared", role="agent") as (bob, _):
            for round_ in range(10):  # 3 s: past the expiry it had when A parked it
                await publish(bob, 1, start=EVENTS + round_)
                await asyncio.sleep(0.3)
            assert (await memory_of(a))["parked_actors"] == 1  # alive: kept
            hello = {"last_seq": EVENTS, "epoch": epoch}
            async with attach(a, "shared", **hello) as (alice, welcome):
                assert welcome["resumed"] is True and welcome["replay"] == 10
                replayed = [await alice.recv_type("event") for _ in range(10)]
                assert [f["seq"] for f in replayed] == list(range(EVENTS + 1, EVENTS + 11))
                await publish(bob, 1, start=EVENTS + 10)
                assert (await alice.recv_type("event"))["seq"] == EVENTS + 11


@pytest.mark.parametrize("deleter", ["other instance", "tool"])
async def test_a_parked_session_deleted_elsewhere_on_redis_leaves_memory_at_its_next_look(
    redis_server: RedisServer, tmp_path: Path, deleter: str
) -> None:
    """No TTL; A looks every 0.3 s (``idle_timeout``). Several looks leave the living
    session parked; deleted by server B or by the ``delete`` tool, whose notice A hears
    on no subscription, it leaves A's memory at A's next look."""
    url = redis_server.url(prefix=prefix_for(tmp_path))
    async with (
        run_server(store=url, idle_timeout=0.3, disconnect_retention=RETENTION) as a,
        run_server(store=url) as b,
    ):
        await parked_with_events(a, "elsewhere")
        await asyncio.sleep(1.0)  # three looks
        assert (await memory_of(a))["parked_actors"] == 1
        if deleter == "tool":
            code, out, err = await asyncio.to_thread(tool, "delete", "--store", url, "elsewhere")
            assert (code, out.strip()) == (0, "1"), err
        else:
            await b.manager.delete_session("elsewhere")
        assert await until_gone(a, timeout=5.0) < 1.0
        assert await hello_code(a, "elsewhere") == 4404

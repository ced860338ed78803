"""Reproducers from a review that gave the store's Redis a bad day
(bench/redis_bad_day.py; all fail on main at 095c90d):

- A Redis at its ``maxmemory`` with ``noeviction`` refuses some appends and takes
  others as its memory hovers at the bound: each refusal after a success is logged as
  a new outage (``append failed``, at error) and each success after it as its end
  (``appends succeed again``), two lines per flap, as many as the appends.
- ``/readyz`` with Redis gone (killed, or only the pub/sub connection lost) says
  ``storage is not open``: the store is open, Redis is away, and the reason names
  neither Redis nor what failed, where a stalled Redis is told as one.
- A Redis switched to ``maxmemory-policy allkeys-lru`` after the store opened evicts
  sessions' keys without a word from the server: the warning is given only at the
  open, though the store reads Redis's persistence settings again every
  ``heartbeat / 3`` for this very reason (a setting changed under it).

Real redis-servers, a real server, a real WebSocket publisher."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis.asyncio
from structlog.testing import capture_logs

from bamboo_session.persistence.redis.storage import RedisStorage
from tests.instances import eventually
from tests.redis_server import RedisServer, prefix_for
from tests.support import attach, get, run_server

FLAPPING_SECONDS = 4.0  # how long Redis takes and refuses appends by turns
FLAP_EVERY = 0.1  # seconds between two turns of Redis's maxmemory
# Lines about failing appends that one outage of FLAPPING_SECONDS may take: it began,
# a summary (one per 10 s), it ended; with room for one more outage.
LINES_AT_MOST = 6


async def flap_maxmemory(client: redis.asyncio.Redis, seconds: float) -> int:
    """Turns Redis's maxmemory to 1 byte (noeviction: every write refused) and back to
    none by turns for ``seconds``; how many turns to the bound it made."""
    turns = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        await client.config_set("maxmemory", "1")
        turns += 1
        await asyncio.sleep(FLAP_EVERY)
        await client.config_set("maxmemory", "0")
        await asyncio.sleep(FLAP_EVERY)
    return turns


async def test_appends_refused_on_and_off_log_one_outage_not_two_lines_a_flap(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    server = start_redis("flapping")
    client = redis.asyncio.Redis(port=server.port)
    acked: dict[str, int] = {}
    refused = 0
    try:
        await client.config_set("maxmemory-policy", "noeviction")
        async with run_server(store=server.url(prefix=prefix_for(tmp_path))) as bamboo:
            async with attach(bamboo, "s", create=True, role="agent") as (peer, _):
                with capture_logs() as logs:
                    flapping = asyncio.create_task(flap_maxmemory(client, FLAPPING_SECONDS))
                    n = 0
                    while not flapping.done():
                        n += 1
                        key = f"k{n}"
                        await peer.send(
                            {
                                "type": "event",
                                "id": n,
                                "key": key,
                                "event": {"type": "token", "content": key},
                            }
                        )
                        reply = await peer.recv(10)
                        if reply["type"] == "ack":
                            acked[key] = reply["seq"]
                        else:
                            assert reply["type"] == "error" and reply["code"] == "internal", reply
                            refused += 1
                        await asyncio.sleep(0.02)
                    turns = await flapping
                    await client.config_set("maxmemory", "0")
                    reply = await peer.request(
                        {
                            "type": "event",
                            "id": 0,
                            "key": "last",
                            "event": {"type": "token", "content": "last"},
                        },
                        "ack",
                    )
                    acked["last"] = reply["seq"]
    finally:
        with contextlib.suppress(Exception):
            await client.config_set("maxmemory", "0")
        await client.aclose()
    assert turns >= 10 and refused >= 10 and len(acked) >= 10, (turns, refused, len(acked))
    about = [
        line
        for line in logs
        if line["event"] in {"append failed", "appends failing", "appends succeed again"}
    ]
    told = [line["event"] for line in about]
    assert len(about) <= LINES_AT_MOST, (
        f"{told.count('append failed')} 'append failed' and "
        f"{told.count('appends succeed again')} 'appends succeed again' lines for "
        f"{refused} refusals over {FLAPPING_SECONDS} s"
    )


async def test_a_policy_turned_to_evict_any_key_after_the_open_is_warned_of(
    start_redis: Callable[[str], RedisServer],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = start_redis("turned-evicting")
    client = redis.asyncio.Redis(port=server.port)
    url = server.url(prefix=prefix_for(tmp_path), heartbeat=0.3)  # a look every 0.1 s
    try:
        with caplog.at_level(logging.WARNING):
            async with run_server(store=url) as bamboo:
                storage = bamboo.storage
                assert isinstance(storage, RedisStorage)
                assert not [r for r in caplog.records if "maxmemory-policy" in r.getMessage()]
                await client.config_set("maxmemory-policy", "allkeys-lru")
                target = storage.durability.looks + 5
                await eventually(lambda: storage.durability.looks >= target, timeout=10)
    finally:
        await client.aclose()
    said = [r.getMessage() for r in caplog.records if "maxmemory-policy" in r.getMessage()]
    assert said, "no warning that Redis now may evict sessions' keys (allkeys-lru)"


async def test_readiness_with_redis_gone_names_redis_not_a_store_never_opened(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    server = start_redis("gone")
    async with run_server(store=server.url(prefix=prefix_for(tmp_path))) as bamboo:
        assert (await get(bamboo, "/readyz"))[0] == 200
        server.stop(signal.SIGKILL)
        readiness: list[tuple[int, str]] = []

        async def not_ready() -> bool:
            readiness.append(await get(bamboo, "/readyz"))
            return readiness[-1][0] == 503

        await eventually(not_ready, timeout=10)
        await server.start_in_loop()

        async def ready() -> bool:
            return (await get(bamboo, "/readyz"))[0] == 200

        await eventually(ready, timeout=10)  # back by itself
    reason = readiness[-1][1]
    assert "not open" not in reason and "redis" in reason.lower(), reason

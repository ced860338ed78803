"""Parked sessions whose store fails (Redis stopped): their looks keep their interval,
not every 50 ms (r338: 52 failed reads in 3 s, Redis stopped across the expiry), and
the log tells the outage once, with the count of failed looks when the store answers
again (r356: 61 lines for 8 parked sessions in 4 s, a line per session per look)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from bamboo_session.protocol.models import utcnow
from tests.instances import eventually
from tests.redis_server import prefix_for, start_redis_server
from tests.support import attach, run_server
from tests.test_server_parked_gone import parked_with_events

RETENTION = 3600.0
FAILED_LOOK = "reading the parked session failed"
LOOKS_WORK = "parked session look works again"


def said(logs: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry.get("event") == event]


async def test_a_parked_session_past_its_expiry_does_not_look_every_50_ms_while_the_store_fails(
    tmp_path: Path,
) -> None:
    """TTL 3 s, so a look every second (a third of the TTL). Redis stops just before
    the session expires: every look fails, and each failure leaves the expiry it last
    read in the past, so ``parked_look`` gave 0.05 s (PAST_EXPIRY) instead of the look
    interval: about 20 reads of a dead store a second per parked session (a retry
    storm on the store as it comes back). Looks must keep their interval: the count of
    failed looks, told once Redis answers again, is about one a second of the outage."""
    redis = start_redis_server(tmp_path / "redis")
    try:
        url = redis.url(prefix=prefix_for(tmp_path))
        async with run_server(store=url, default_ttl=3, disconnect_retention=RETENTION) as server:
            await parked_with_events(server, "outage")
            metadata = await server.manager.get_metadata("outage")
            assert metadata is not None and metadata.expires_at is not None
            await asyncio.sleep(max(0.0, (metadata.expires_at - utcnow()).total_seconds() - 0.5))
            with capture_logs() as logs:
                stopped = time.monotonic()
                redis.stop()
                await eventually(lambda: said(logs, FAILED_LOOK), timeout=10)
                await asyncio.sleep(2.0)  # past the expiry, with the store down
                await redis.start_in_loop()
                await eventually(lambda: said(logs, LOOKS_WORK), timeout=10)
                outage = time.monotonic() - stopped
            (told,) = said(logs, LOOKS_WORK)
            # One look a second over the outage (Redis's restart included), a few more at most.
            assert told["failed"] <= outage + 3, f"{told['failed']} failed looks in {outage:.1f} s"
            assert len(said(logs, FAILED_LOOK)) == 1
    finally:
        redis.stop()


async def test_many_parked_sessions_tell_an_outage_of_their_store_in_two_lines(
    tmp_path: Path,
) -> None:
    """Eight parked sessions, each looking every 0.3 s (``idle_timeout``), Redis stopped
    for a while: the first failed look is logged, with its error; the others are
    counted, and the count told once a look works again. Before: a line per session
    per look (61 lines for 8 sessions in 4 s: with 10,000 parked sessions, a flood
    just when an operator reads the log)."""
    redis = start_redis_server(tmp_path / "redis")
    try:
        url = redis.url(prefix=prefix_for(tmp_path))
        options = {"idle_timeout": 0.3, "disconnect_retention": RETENTION}
        async with run_server(store=url, **options) as server:
            for n in range(8):
                async with attach(server, f"parked-{n}", create=True):
                    pass
            await eventually(lambda: server.manager.actors.parked_count() == 8)
            with capture_logs() as logs:
                redis.stop()
                # Every session has failed a look or two.
                await eventually(
                    lambda: server.manager.append_health.parked_looks.failing("look") >= 16,
                    timeout=10,
                )
                await redis.start_in_loop()
                await eventually(lambda: said(logs, LOOKS_WORK), timeout=10)
            failed = said(logs, FAILED_LOOK)
            assert len(failed) == 1, failed
            assert "error" in failed[0]
            (told,) = said(logs, LOOKS_WORK)
            assert told["failed"] >= 16
    finally:
        redis.stop()

"""A parked session whose store fails looks again at its usual interval, not every
50 ms: a failed look left the expiry it had read before, past by then, and the next
look came at once (r338: 52 failed reads in 3 s, Redis stopped across the expiry)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from structlog.testing import capture_logs

from bamboo_session.protocol.models import utcnow
from tests.redis_server import prefix_for, start_redis_server
from tests.support import run_server
from tests.test_server_parked_gone import parked_with_events

RETENTION = 3600.0
FAILED_LOOK = "reading the parked session failed"


async def test_a_parked_session_past_its_expiry_does_not_look_every_50_ms_while_the_store_fails(
    tmp_path: Path,
) -> None:
    """TTL 3 s, so a look every second (a third of the TTL). Redis stops just before
    the session expires: every look fails, and each failure leaves the expiry it last
    read in the past, so ``parked_look`` gives 0.05 s (PAST_EXPIRY) instead of the
    look interval. One parked session then reads a dead store, and logs so, about 20
    times a second; 1,000 parked sessions 20,000 times (a retry storm on the store as
    it comes back, and a flood of log lines). Looks must keep their interval."""
    redis = start_redis_server(tmp_path / "redis")
    try:
        url = redis.url(prefix=prefix_for(tmp_path))
        async with run_server(store=url, default_ttl=3, disconnect_retention=RETENTION) as server:
            await parked_with_events(server, "outage")
            metadata = await server.manager.get_metadata("outage")
            assert metadata is not None and metadata.expires_at is not None
            await asyncio.sleep(max(0.0, (metadata.expires_at - utcnow()).total_seconds() - 0.5))
            redis.stop()
            with capture_logs() as logs:
                await asyncio.sleep(3.0)  # past the expiry, with the store down
            failed = [entry for entry in logs if entry.get("event") == FAILED_LOOK]
            await redis.start_in_loop()
            # 3 s at one look a second: 3 or 4 looks, a few more at most.
            assert len(failed) <= 6, f"{len(failed)} failed looks in 3 s"
    finally:
        redis.stop()

"""Redis's clock stepped back (a failover to a replica whose clock is an hour behind,
docs/protocol.md, Clocks; seen at the store's next reading), then that reading gone
stale (Redis away, or the event loop held up, past ``READ_EVERY`` + ``STALE``): the
store's clock stood still at the newest time it had given from any reading, the one
before the step, and so jumped an hour ahead of Redis's: a session made after the step
with a TTL of half an hour was taken for expired (the server's HTTP read 404s it, a
look closes its peers 4404) while Redis held it alive. It stands at the newest time it
gave from the reading it holds.

A real redis-server; the store in this process. Redis's clock cannot be moved here
(redis-server under libfaketime 0.9.10 stops at its start: "recursive calls to
clock_gettime()"), so the step is the seam: the reading held, as one of a Redis an hour
behind would be taken."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from bamboo_session.persistence import open_storage
from bamboo_session.persistence.redis.clock import STALE
from tests.instances import eventually
from tests.redis_server import RedisServer, prefix_for

INTERVAL = 0.5  # the seam: the clock's readings every 0.5 s, stale after 3.5 s
STEP = 3600.0  # Redis's clock stepped back by an hour
WITHIN = INTERVAL + STALE + 10.0  # seconds: the clock stale, waited for


async def test_a_stale_reading_after_redis_clock_stepped_back_stands_where_it_was(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    url = redis_server.url(prefix=prefix_for(tmp_path))
    storage = await open_storage(url, default_ttl=3600, cleanup_interval=None)
    try:
        storage.clock.interval = INTERVAL
        before_step = storage.now()  # the newest time given, on Redis's clock as it was
        await storage.clock.read()
        assert storage.clock._offset is not None
        storage.clock._offset -= STEP  # the seam: the reading of a Redis an hour behind
        storage.clock._wall_offset -= STEP
        given = storage.now()
        assert given < before_step - timedelta(minutes=59)

        await storage.clock.stop()  # no reading more, as with Redis away
        await eventually(lambda: storage.clock._carry() is None, timeout=WITHIN)  # stale
        now = storage.now()
        assert given <= now <= given + timedelta(seconds=WITHIN)
    finally:
        await storage.close()

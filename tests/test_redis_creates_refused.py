"""A Redis that refuses writes because it cannot persist (``MISCONF``, as with its disk
full; made the portable way, tests/redis_server.py ``refusing_writes``) under a server
that takes only creates: no append is made, so nothing else tells ``/readyz``.

- Each ``hello`` that would create a session is closed 1011 with a hello's own words,
  ``storage failed; retry later``: the words shared with publishes went on "(a publish
  with the same key is safe)", which a hello, with no key, has nothing to do with.
- ``/readyz`` answers 503 naming Redis's words from the first failed create, as it does
  from the first failed append, and stays so while Redis refuses writes (the store's
  write probe, 10 s on): it answered 200 throughout, and a load balancer kept sending
  the instance creates to fail. Once Redis takes writes, it is 200 again, and the
  create is made. The log tells of the outage once (``storage failed``, ``Create``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from structlog.testing import capture_logs

from bamboo_session.server import readiness
from tests.instances import eventually
from tests.redis_server import RedisServer, prefix_for, refusing_writes
from tests.support import attach, get, open_peer, run_server
from tests.test_redis_writes_refused import WAIT, ready, refusable

HELLO_STORAGE_FAILED = "storage failed; retry later"


async def test_failed_creates_make_readyz_503_as_failed_appends_do(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    server = await refusable(start_redis, "full")
    async with run_server(store=server.url(prefix=prefix_for(tmp_path))) as bamboo:
        checks = bamboo.services.readiness
        checks.probe_every = 0.0  # a probe at each /readyz
        assert await ready(bamboo)
        with capture_logs() as logs:
            async with refusing_writes(server) as words:
                for n in range(3):
                    async with open_peer(bamboo, f"new-{n}") as peer:
                        await peer.send({"type": "hello", "create": True, "role": "client"})
                        code, frames = await peer.closed()
                        closed = (code, frames, peer.ws.close_reason)
                    assert closed == (1011, [], HELLO_STORAGE_FAILED), closed
                status, reason = await get(bamboo, "/readyz")
                assert status == 503 and words.split(" ")[0] in reason, (status, reason)
                # As long after the failure as a store that cannot be probed stays
                # unready, no write made since: Redis refuses writes all the same.
                checks.health.failed_at -= readiness.RETRY_AFTER
                status, reason = await get(bamboo, "/readyz")
                assert status == 503 and "MISCONF" in reason, (status, reason)
            await eventually(lambda: ready(bamboo), timeout=WAIT)  # with no create
        told = [e for e in logs if e["event"] == "storage failed"]
        assert [e.get("command") for e in told] == ["Create"], told
        async with attach(bamboo, "new-0", create=True) as (_, welcome):
            assert welcome["session"]["state"] == "active", welcome

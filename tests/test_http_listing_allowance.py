"""A listing of sessions is charged to its peer's read allowance for the sessions its
store examined, not only for its answer (server/http_pages.py ``charge_examined``): a
title that matches none of a user's 10,000 sessions answers 268 bytes, and cost the
server 85 /healthz (bench/RESULTS.md, r478). At the default allowance, a peer that
asks for such listings back to back is refused 429 with ``Retry-After``, as for any
page over its allowance, while one that asks a few times a second never is. Real
server (the memory store: the same index as JSONL's), real sockets, under auth.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from typing import Any

from bamboo_session.server.http_pages import EXAMINED_SESSION_BYTES
from bamboo_session.server.limits import REPLY_SHARE
from tests.auth_support import SECRET, make_token
from tests.support import run_server
from tests.test_http_read_limits import in_thread, status_of

SESSIONS = 10_000  # the default --max-stored-sessions-per-user
NO_MATCH = "/api/v1/sessions?title_contains=zzz&limit=1"


async def seeded(server: Any, user: str) -> None:
    for number in range(SESSIONS):
        await server.manager.create_session(user, f"chat {number}", session_id=f"{user}-{number}")


async def test_a_peer_flooding_costly_listings_is_refused_429_with_retry_after() -> None:
    async with run_server(store="memory://", auth_secret=SECRET) as server:
        await seeded(server, "heavy")
        token = make_token("heavy")
        answers: list[tuple[int, str]] = []

        def flood() -> None:
            # Back to back, until refused (each at most 60 listings).
            for _ in range(60):
                answers.append(status_of(server.port, NO_MATCH, token))
                if answers[-1][0] != 200:
                    return

        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            await asyncio.gather(*(asyncio.wrap_future(pool.submit(flood)) for _ in range(4)))
        elapsed = time.monotonic() - started
        refused = [retry for status, retry in answers if status == 429]
        assert refused, answers
        assert all(int(retry) >= 1 for retry in refused), refused
        assert {status for status, _ in answers} == {200, 429}, answers
        # The burst holds some 13 such listings, and the rate refills about 6 a second
        # (slower listings, on a busy machine, leave it time to); four peers asking at
        # once may each have had one in flight past it.
        config = server.config
        charge = SESSIONS * EXAMINED_SESSION_BYTES // REPLY_SHARE
        allowed = (config.rate_limit_bytes_burst + config.rate_limit_bytes * elapsed) / charge
        assert sum(status == 200 for status, _ in answers) <= allowed + 4, (elapsed, answers)
        assert "bamboo_http_rate_limited_total" in server.metrics.render().decode()


async def test_a_peer_listing_a_few_times_a_second_is_never_refused() -> None:
    # Four a second for 5 s: more than the burst in all, well within the rate.
    async with run_server(store="memory://", auth_secret=SECRET) as server:
        await seeded(server, "calm")
        token = make_token("calm")
        started = time.monotonic()
        for number in range(20):
            await asyncio.sleep(max(0.0, started + number * 0.25 - time.monotonic()))
            status, retry_after = await in_thread(status_of, server.port, NO_MATCH, token)
            assert (status, retry_after) == (200, ""), number

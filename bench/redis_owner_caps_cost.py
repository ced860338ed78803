"""What counting a user's sessions in create.lua costs (r476: ``--max-sessions-per-user``
and ``--max-stored-sessions-per-user`` exact across instances), against the count the
server made before it, two listings of the user's sessions (all, then the closed ones)
before each creation.

A redis-server of its own on a free port (AOF ``everysec``), one store of this tree.
Per user (2 sessions; 999 not closed; 9,999 of which 9,000 closed: the worst the
default caps of 1,000 and 10,000 let a creation through), ``--calls`` creations with
the default caps, each deleted again; each create.lua call's time in Redis from the
slow log (every call logged): median and max. Then ``--calls`` / 10 counts as the
server made them before (list.lua: the same script in both trees): Redis's time per
count (summed over its calls) and its wall time, median.

Run: ``PYTHONPATH=<shim> python -m bench.redis_owner_caps_cost [--calls 200]``
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bamboo_session.persistence import open_storage
from bamboo_session.persistence.base import OwnerAtCap, OwnerCaps, SessionFilter
from bamboo_session.persistence.redis.scripts import SCRIPTS
from bamboo_session.protocol.models import Session, SessionState

from .redis_bad_day import Redis

USERS = ((2, 0), (999, 0), (9_999, 9_000))  # sessions, of which closed
CAPS = OwnerCaps(live=1_000, stored=10_000)  # the server's defaults


async def logged(client: Any, script: str) -> list[int]:
    """The durations (us) of ``script``'s calls in the slow log, which is then reset."""
    sha = SCRIPTS[script].sha.encode()
    entries = await client.slowlog_get(1_000_000)
    await client.slowlog_reset()
    return [entry["duration"] for entry in entries if sha in entry["command"]]


async def user_of(storage: Any, user: str, total: int, closed: int) -> None:
    for n in range(total):
        session_id = f"{user}-{n}"
        await storage.create_session(Session.new(session_id, user, now=storage.now()))
        if n < closed:
            await storage.update_session_state(session_id, SessionState.CLOSED)


async def measure(storage: Any, calls: int) -> None:
    client = storage.redis.client
    await client.config_set("slowlog-max-len", 1_000_000)
    for total, closed in USERS:
        user = f"u{total}"
        await user_of(storage, user, total, closed)
        await client.config_set("slowlog-log-slower-than", 0)
        await client.slowlog_reset()
        for n in range(calls):  # alternately without caps (as before r476) and with
            caps = CAPS if n % 2 else None
            session = Session.new(f"{user}-new{n}", user, now=storage.now())
            try:
                await storage.create_session(session, made_now=True, owner_caps=caps)
            except OwnerAtCap:
                continue
            await storage.delete_session(session.metadata.id)
        every = await logged(client, "create")
        uncapped, creates = every[1::2], every[::2]  # the slow log is newest first
        walls = []
        counts = max(calls // 10, 1)
        for _ in range(counts):
            started = time.perf_counter()
            await storage.list_sessions(SessionFilter(user_id=user, limit=0))
            await storage.list_sessions(
                SessionFilter(user_id=user, state=SessionState.CLOSED, limit=0)
            )
            walls.append((time.perf_counter() - started) * 1e6)
        listed = sum(await logged(client, "list")) / counts
        await client.config_set("slowlog-log-slower-than", 10_000)
        print(
            f"user of {total} sessions ({closed} closed): create.lua with caps median "
            f"{statistics.median(creates):.0f} us, max {max(creates)} us, without "
            f"{statistics.median(uncapped):.0f} us, {max(uncapped)} us (RATIO "
            f"{statistics.median(creates) / statistics.median(uncapped):.3f}); the count "
            f"before r476: Redis {listed:.0f} us per count, wall median "
            f"{statistics.median(walls):.0f} us"
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bamboo-owner-caps-") as directory:
        redis = Redis(Path(directory), lossy=True)
        redis.start()
        try:
            url = f"redis://127.0.0.1:{redis.port}/0?accept_lossy=true"
            storage = await open_storage(url, cleanup_interval=None)
            try:
                await measure(storage, args.calls)
            finally:
                await storage.close()
        finally:
            redis.kill()


if __name__ == "__main__":
    asyncio.run(main())

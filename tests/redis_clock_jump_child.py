"""A child process for tests/test_redis_clock_jump.py (run as a script, not collected),
under libfaketime with its clocks' offset read from OFFSET_FILE: opens the Redis store
at URL, makes a session of a one-hour TTL, reads its metadata, moves its own clock by
JUMP seconds (rewriting OFFSET_FILE), and at once, before the event loop runs again (as
a look the jump fired does: its read done, then the clock), judges the session by the
store's clock; then writes, as JSON on stdout, what it found and Redis's ``TIME`` read
after it. Then, for a session given times of its own (an import's) right after the
jump, the times the store kept. ``python tests/redis_clock_jump_child.py URL
OFFSET_FILE JUMP``."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import redis.asyncio

from bamboo_session.persistence import open_storage
from bamboo_session.protocol.models import Session


def set_offset(path: Path, seconds: int) -> None:
    spare = path.with_suffix(".new")  # written whole: the library reads it at every call
    spare.write_text(f"{seconds:+d}\n")
    spare.replace(path)


async def redis_time(admin: redis.asyncio.Redis) -> str:
    seconds, micros = await admin.time()
    return datetime.fromtimestamp(seconds + micros / 1_000_000, UTC).isoformat()


async def main(url: str, offset: Path, jump: int) -> None:
    storage = await open_storage(url, default_ttl=3600, cleanup_interval=None)
    admin = redis.asyncio.Redis.from_url(url.partition("?")[0])
    try:
        await storage.create_session(Session.new("s", ttl=3600, now=storage.now()))
        metadata = await storage.get_metadata("s")
        assert metadata is not None
        set_offset(offset, jump)
        now = storage.now()  # no await since the jump: the reading held is the one
        found = {"now": now.isoformat(), "expired": metadata.is_expired(now)}
        found["redis_after"] = await redis_time(admin)
        # An import's session, its times Redis's now, given as the jump is fresh.
        given = datetime.fromisoformat(found["redis_after"])
        imported = Session.new("imported", ttl=3600, now=given)
        await storage.create_session(imported)
        kept = await storage.get_metadata("imported")
        assert kept is not None
        found["imported_updated_at"] = kept.updated_at.isoformat()
        found["imported_given"] = imported.metadata.updated_at.isoformat()
        print(json.dumps(found), flush=True)
    finally:
        await admin.aclose()
        await storage.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])))

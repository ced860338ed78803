"""A Redis user's sum rebuilt in steps (recount_user.lua, a few sessions per call) on a
real redis-server, beside what moves its sessions' counts between the steps: appends
to sessions the rebuild has read and to those it has not, imports, deletes, creations
and replacements of expired sessions. The sum it sets is the sum of the counts, exact
(read in one MULTI), and stays so. One rebuild of a user at a time: a second waits for
the first, or for its state to expire when its caller went away; a rebuild whose own
state expired between two calls begins again, having set nothing."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import cast

import pytest

from bamboo_session.persistence import open_storage
from bamboo_session.persistence.base import SessionNotFound
from bamboo_session.persistence.redis import RedisStorage
from bamboo_session.persistence.redis import recount as redis_recount
from bamboo_session.persistence.redis.recount import RedisRecounter
from bamboo_session.protocol.models import AgentEvent, Session, StoredEvent, utcnow
from tests.redis_server import RedisServer, prefix_for
from tests.test_redis_recount import sum_and_counts

USER = "a ü"
SESSIONS = 150
STEP = 7  # sessions per call: some 20 calls for the user's sessions
NEW_IDS = itertools.count()  # of sessions created beside the rebuilds, all rounds


@pytest.fixture
def url(redis_server: RedisServer, tmp_path: Path) -> Callable[[], str]:
    return lambda: redis_server.url(prefix=prefix_for(tmp_path))


@contextlib.asynccontextmanager
async def stores(url: Callable[[], str]) -> AsyncIterator[tuple[RedisStorage, RedisStorage]]:
    """The recount's store and a live one (what the servers do), both on ``url``."""
    tool_store = cast(RedisStorage, await open_storage(url()))
    live = cast(RedisStorage, await open_storage(url(), max_user_bytes=10**9))
    try:
        yield tool_store, live
    finally:
        await live.close()
        await tool_store.close()


async def user_sessions(live: RedisStorage, count: int, prefix: str = "s") -> list[str]:
    ids = [f"{prefix}{n:04d}" for n in range(count)]
    for session_id in ids:
        await live.create_session(Session.new(session_id, user_id=USER))
        await live.append_event(session_id, AgentEvent.token("z" * 30), f"k-{session_id}")
    return ids


class Churn:
    """What the servers do to the user's sessions while a rebuild runs: appends (to
    any of them, so to sessions on both sides of the rebuild's cursor), imports (into
    the first sessions of the index, which the rebuild reads first, and into new
    ones), deletes, creations, and replacements of expired sessions (also among the
    first of the index)."""

    def __init__(
        self,
        live: RedisStorage,
        ids: list[str],
        expired: list[str],
        imported: dict[str, int],
        uncounted: list[str],
    ) -> None:
        self.live = live
        self.ids = list(ids)
        self.expired = list(expired)
        self.imported = imported  # session -> its last seq: only imports go to these
        self.uncounted = uncounted  # sessions with no count: recounted meanwhile
        self.done: dict[str, int] = {}
        self._random = random.Random(104)

    def count(self, what: str) -> None:
        self.done[what] = self.done.get(what, 0) + 1

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            roll = self._random.random()
            if roll < 0.05 and self.uncounted:  # another recount's count of a session
                session_id = self.uncounted.pop()
                if await RedisRecounter(self.live).recount_session(session_id) is not None:
                    self.count("recounted")
            elif roll < 0.10 and self.expired:  # expired: replaced under its id
                session_id = self.expired.pop()
                await self.live.create_session(
                    Session.new(session_id, user_id=USER), replace_expired=True
                )
                self.ids.append(session_id)
                self.count("replaced")
            elif roll < 0.15 and len(self.ids) > 10:
                session_id = self.ids.pop(self._random.randrange(len(self.ids)))
                await self.live.delete_session(session_id)
                self.count("deleted")
            elif roll < 0.25:
                session_id = self._random.choice(sorted(self.imported))
                seq = self.imported[session_id] + 1
                self.imported[session_id] = seq
                event = StoredEvent(seq, utcnow(), AgentEvent.token("m" * 25))
                await self.live.import_events(session_id, [event])
                self.count("imported")
            elif roll < 0.30:
                session_id = f"new{next(NEW_IDS):04d}"
                await self.live.create_session(Session.new(session_id, user_id=USER))
                self.ids.append(session_id)
                now = utcnow()
                imported = [StoredEvent(seq, now, AgentEvent.token("i" * seq)) for seq in (1, 2)]
                await self.live.import_events(session_id, imported)
                self.count("created and imported")
            else:
                session_id = self._random.choice(self.ids)
                size = self._random.randrange(1, 60)
                with contextlib.suppress(SessionNotFound):
                    await self.live.append_event(session_id, AgentEvent.token("w" * size))
                    self.count("appended")


async def test_a_sum_rebuilt_in_steps_beside_every_writer_is_exact(url: Callable[[], str]) -> None:
    async with stores(url) as (tool_store, live):
        # First in the index (the oldest): sessions that expire, to be replaced, and
        # sessions that only take imports. The rebuild reads them first.
        expired = []
        for n in range(6):
            session_id = f"x{n}"
            await live.create_session(Session.new(session_id, user_id=USER, ttl=1))
            await live.append_event(session_id, AgentEvent.token("e" * 80))
            expired.append(session_id)
            await asyncio.sleep(0.3)
        # Each x* expires 1 s after its append: counted from the last one's answer (on a
        # loaded machine the six can take longer than the slack below).
        last_active = time.monotonic()
        imported = dict.fromkeys(await user_sessions(live, 8, prefix="i"), 1)
        ids = await user_sessions(live, SESSIONS)
        # A sum that drifted: the rebuild has something to set right.
        await tool_store.redis.call("HINCRBY", tool_store.layout.index + "userbytes", USER, 1234)
        await asyncio.sleep(max(0.0, last_active + 1.2 - time.monotonic()))  # x* expire
        recounter = RedisRecounter(tool_store, user_step=STEP)
        done: dict[str, int] = {}  # what ran beside the rebuilds, all rounds
        for _ in range(3):
            # Sessions whose count is gone (as a version before the counts left them),
            # which another recount counts while this rebuild runs.
            uncounted = random.Random(len(ids)).sample(ids, 6)
            for session_id in uncounted:
                await tool_store.redis.call("HDEL", tool_store.layout.meta(session_id), "bytes")
            churn = Churn(live, ids, expired, imported, uncounted)
            stop = asyncio.Event()
            workers = [asyncio.create_task(churn.run(stop)) for _ in range(3)]
            try:
                calls = recounter.user_calls
                rebuilt = await recounter.rebuild_user(USER)
                raced = dict(churn.done)
            finally:
                stop.set()
                await asyncio.gather(*workers)
            held, counted = await sum_and_counts(tool_store, USER)
            assert held == counted, (held, counted, rebuilt, raced)
            assert recounter.user_calls - calls >= SESSIONS // STEP
            assert raced.get("appended", 0) > 15, raced
            ids, expired = churn.ids, churn.expired
            for what, count in raced.items():
                done[what] = done.get(what, 0) + count
        expected = {"deleted", "created and imported", "imported", "replaced", "recounted"}
        assert expected <= set(done), done
        keys = await tool_store.redis.call("KEYS", tool_store.layout.index + "rebuild:*")
        assert keys == []  # no rebuild's state is left behind


async def call_step(
    storage: RedisStorage, token: str, begin: bool, step: int, ttl_ms: int
) -> list[object]:
    """One recount_user.lua call, as RedisRecounter makes them."""
    layout = storage.layout
    args = [layout.index, f"{layout.prefix}:", USER, token, "begin" if begin else ""]
    reply: list[object] = await storage.redis.write(
        "recount_user", [], [*args, str(step), str(ttl_ms)]
    )
    return reply


async def test_one_rebuild_of_a_user_at_a_time(url: Callable[[], str]) -> None:
    async with stores(url) as (tool_store, live):
        await user_sessions(live, 40)
        userbytes = tool_store.layout.index + "userbytes"
        await tool_store.redis.call("HINCRBY", userbytes, USER, 99)
        # Two at once: the second waits for the first, and both set the exact sum.
        first, second = (
            RedisRecounter(tool_store, user_step=3),
            RedisRecounter(tool_store, user_step=3),
        )
        both = await asyncio.gather(first.rebuild_user(USER), second.rebuild_user(USER))
        held, counted = await sum_and_counts(tool_store, USER)
        assert held == counted == both[0].after == both[1].after
        assert {both[0].before, both[1].before} == {counted + 99, counted}

        # A rebuild whose caller went away holds the user until its state expires.
        await tool_store.redis.call("HINCRBY", userbytes, USER, 5)
        assert await call_step(tool_store, "gone", True, 3, 300) == [1]
        started = time.monotonic()
        rebuilt = await RedisRecounter(tool_store, user_step=3).rebuild_user(USER)
        assert time.monotonic() - started >= 0.2
        assert (rebuilt.before, rebuilt.after) == (counted + 5, counted)

        # One whose own state expired between two calls sets nothing, and says so.
        await tool_store.redis.call("HINCRBY", userbytes, USER, 7)
        assert await call_step(tool_store, "slow", True, 3, 50) == [1]
        await asyncio.sleep(0.15)
        assert await call_step(tool_store, "slow", False, 3, 50) == [0]
        assert int(await tool_store.redis.call("HGET", userbytes, USER)) == counted + 7


async def test_a_user_of_few_sessions_is_set_in_one_call(url: Callable[[], str]) -> None:
    """No state kept, nothing for the writers to follow: a user of no more sessions
    than a step is read and set in one atomic script, as before the steps."""
    async with stores(url) as (tool_store, live):
        await user_sessions(live, 5)
        recounter = RedisRecounter(tool_store, user_step=redis_recount.USER_STEP)
        rebuilt = await recounter.rebuild_user(USER)
        assert recounter.user_calls == 1
        held, counted = await sum_and_counts(tool_store, USER)
        assert held == counted == rebuilt.after

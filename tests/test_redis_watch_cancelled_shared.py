"""A cancelled watch never tears down the pub/sub connection the sessions of a Redis
store instance share (persistence/redis/subscribing.py), on a real redis-server.

Many watches (``RedisStorage.subscribe``, as a session's actor starts one) are each
cancelled at some turn of the loop into their subscribe, while other sessions of the
same instance are subscribed and another instance appends to them. The listener's
connection is never dropped (no reconnect, one try to connect), those sessions keep
receiving each event live, every cancelled watch ends cancelled, and Redis ends with
exactly the channels still followed.

Before the fix the watch's own task sent the SUBSCRIBE: a cancellation that met the
send made redis-py (or cancellation.py, keeping the cancellation its send dropped)
disconnect the shared connection, and every session on the instance was resubscribed
and caught up from the store (about one reconnect in five watches here)."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import redis.asyncio

from bamboo_session.persistence import Storage
from bamboo_session.persistence.base import Subscription
from bamboo_session.persistence.redis.storage import RedisStorage
from bamboo_session.protocol.models import AgentEvent, Session
from tests.instances import eventually
from tests.redis_server import RedisServer, prefix_for
from tests.support import opened
from tests.test_redis_watch_cancelled import ENDS_WITHIN, TURNS, watch_for_ever

FOLLOWED = 5  # sessions subscribed throughout, fed by the other instance
WATCHED = 10  # sessions whose watches are cancelled
ROUNDS = 300
APPEND_EVERY = 25  # rounds between appends to the followed sessions
LIVE_WITHIN = 2.0  # seconds an appended event has to reach a followed session
FOLLOWED_NAMES = [f"f{n}" for n in range(FOLLOWED)]
WATCHED_NAMES = [f"w{n}" for n in range(WATCHED)]


async def cancelled_at(store: Storage, session_id: str, turns: int) -> bool:
    """A watch cancelled ``turns`` turns of the loop after it started: whether it
    ended, cancelled, within ``ENDS_WITHIN``."""
    watch = asyncio.create_task(watch_for_ever(store, session_id))
    for _ in range(turns):
        await asyncio.sleep(0)
    watch.cancel()
    await asyncio.wait({watch}, timeout=ENDS_WITHIN)
    if not watch.done():
        return False  # left running: the store's close ends it
    if not watch.cancelled():
        watch.exception()
        return False
    return True


async def receives_live(
    other: Storage, followed: dict[str, Subscription], seq: int, content: str
) -> None:
    """The other instance appends event ``seq`` to each followed session: each gets it
    within ``LIVE_WITHIN``."""
    for session_id in followed:
        await other.append_event(session_id, AgentEvent.token(content))
    async with asyncio.timeout(LIVE_WITHIN):
        for session_id, subscription in followed.items():
            batch = await subscription.next_batch()
            assert [event.seq for event in batch] == [seq], session_id


async def channels_subscribed(admin: redis.asyncio.Redis, store: RedisStorage) -> dict[str, int]:
    """How many clients Redis has subscribed to each session's channel."""
    names = [*FOLLOWED_NAMES, *WATCHED_NAMES]
    sharded = store.redis.publish_command == "SPUBLISH"  # Redis 7: SSUBSCRIBE
    counts = await admin.execute_command(
        "PUBSUB",
        "SHARDNUMSUB" if sharded else "NUMSUB",
        *(store.layout.channel(name) for name in names),
    )
    return {name: int(count) for name, count in zip(names, counts[1::2], strict=True)}


async def test_cancelled_watches_leave_the_shared_connection_alone(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    url = redis_server.url(prefix=prefix_for(tmp_path))
    draw = random.Random(327)
    admin = redis.asyncio.Redis(port=redis_server.port)
    try:
        async with opened(url) as other, opened(url) as store:
            assert isinstance(store, RedisStorage)
            for name in [*FOLLOWED_NAMES, *WATCHED_NAMES]:
                await other.create_session(Session.new(name))
            followed = {name: await store.subscribe(name, 0) for name in FOLLOWED_NAMES}
            listener = store.live.listener
            ran_on, seq = [], 0
            for round_ in range(ROUNDS):
                turns = round_ % TURNS if round_ < 2 * TURNS else draw.randrange(TURNS)
                if not await cancelled_at(store, WATCHED_NAMES[round_ % WATCHED], turns):
                    ran_on.append(turns)
                if round_ % APPEND_EVERY == 0:
                    seq += 1
                    await receives_live(other, followed, seq, f"e{seq}")
            reconnects, tries = listener.reconnects, listener.tries

            async def only_the_followed_subscribed() -> bool:
                counts = await channels_subscribed(admin, store)
                return counts == {name: int(name in followed) for name in counts}

            await eventually(only_the_followed_subscribed)
            for subscription in followed.values():
                subscription.close()
    finally:
        await admin.aclose()
    assert ran_on == [], f"watches that did not end cancelled, by turn: {ran_on}"
    assert (reconnects, tries) == (0, 1), "the shared pub/sub connection was dropped"

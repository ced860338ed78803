"""The sessions of an instance that stopped refreshing its presence (died), parked by
the survivors of a Redis store (persistence/redis/orphans.py): written
``disconnected`` once, however many survivors sweep at once; not one a connection is
left in, nor one closed, deleted or replaced under its id meanwhile. Real redis-server;
the dead instance is a store closed without a leave (its heartbeat stops, as a killed
process's does: tests/test_server_instances_dead.py kills real servers). A dead
instance too big to park within a heartbeat stays its first sweeper's to the end."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from bamboo_session.persistence import open_storage
from bamboo_session.persistence.listing import SessionFilter
from bamboo_session.persistence.presence import Held, Parked
from bamboo_session.persistence.redis import RedisStorage
from bamboo_session.protocol.models import Session, SessionState
from tests.instances import eventually
from tests.proxies import RedisProxy
from tests.redis_lossy_support import lossy_redis
from tests.redis_server import RedisServer, prefix_for

HEARTBEAT = 0.3


async def open_redis(url: str) -> RedisStorage:
    storage = await open_storage(url)
    assert isinstance(storage, RedisStorage)
    return storage


async def died_in(url: str, *session_ids: str) -> None:
    """An instance joins a connection to each session, then stops without a leave."""
    doomed = await open_redis(url)
    try:
        for session_id in session_ids:
            epoch = (await doomed.get_metadata(session_id)).epoch  # type: ignore[union-attr]
            await doomed.presence.join(session_id, f"c_{session_id}", "agent", epoch=epoch)
    finally:
        await doomed.close()


@dataclasses.dataclass(frozen=True)
class Dead:
    instance: str  # its name
    heartbeat: float  # seconds: its deadline passes at most this long after it died


async def died_in_many_sessions(url: str, count: int) -> Dead:
    """An instance that registered a connection in each of ``count`` new sessions,
    then stopped without a leave (its heartbeat stops, as a killed one's). Its
    heartbeat is ``url``'s, or as long as making the sessions took if that is longer:
    it registers in all of them within its heartbeat, as a live instance refreshes
    them, because a refresh drops its instance's entries whose deadline passed
    (sessions it no longer holds). Registering takes a fifth of the time making them
    does; on a loaded machine, 16,000 took over the 4 s heartbeat this test had, and
    the sweep found thousands fewer sessions than it was meant to park."""
    maker = await open_redis(url)
    try:
        began = time.monotonic()
        sessions = await made(maker, count)
        heartbeat = max(maker.config.heartbeat, time.monotonic() - began)
    finally:
        await maker.close()
    doomed = await open_redis(with_heartbeat(url, heartbeat))
    try:
        await registered_in(doomed, sessions)
        return Dead(doomed.instance, heartbeat)
    finally:
        await doomed.close()


def with_heartbeat(url: str, heartbeat: float) -> str:
    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query)) | {"heartbeat": f"{heartbeat:.3f}"}
    return parts._replace(query=urllib.parse.urlencode(query)).geturl()


async def made(store: RedisStorage, count: int) -> list[Session]:
    """``count`` new sessions, ``dead-0`` to ``dead-<count - 1>``."""
    sessions = [Session.new(f"dead-{i}") for i in range(count)]
    for start in range(0, count, 500):
        await asyncio.gather(*(store.create_session(s) for s in sessions[start : start + 500]))
    return sessions


async def registered_in(store: RedisStorage, sessions: list[Session]) -> list[Held]:
    """A connection of ``store``'s instance registered in each of ``sessions``, the
    last one last; each under the epoch it was made with, which the store serves as
    long as its generation holds (no restart of Redis here)."""
    held = [Held(s.id, [(f"c-{s.id}", "agent")], s.metadata.epoch) for s in sessions]
    for start in range(0, len(held), 500):
        await store.presence.refresh(held[start : start + 500])
    return held


async def test_two_survivors_sweeping_at_once_park_the_session_once(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    url = redis_server.url(prefix=prefix_for(tmp_path), heartbeat=HEARTBEAT)
    a, b = await open_redis(url), await open_redis(url)
    try:
        await a.create_session(Session.new("orphan"))
        before = await a.get_metadata("orphan")
        assert before is not None and before.state == SessionState.ACTIVE
        await died_in(url, "orphan")
        assert await a.presence.sweep_dead() == 0  # its heartbeat has not run out yet
        await asyncio.sleep(HEARTBEAT + 0.1)

        swept = await asyncio.gather(*(s.presence.sweep_dead() for s in (a, b, a, b)))
        assert sum(swept) == 1
        parked = await b.get_metadata("orphan")
        assert parked is not None and parked.state == SessionState.DISCONNECTED
        assert parked.updated_at > before.updated_at  # a state write, not activity:
        assert parked.last_activity_at == before.last_activity_at
        listed = await a.list_sessions(SessionFilter(state=SessionState.DISCONNECTED))
        assert [m.id for m in listed.sessions] == ["orphan"]
        assert await a.presence.sweep_dead() == await b.presence.sweep_dead() == 0
        again = await a.get_metadata("orphan")
        assert again is not None and again.updated_at == parked.updated_at  # written once
    finally:
        await a.close()
        await b.close()


async def test_one_park_however_many_run_it(redis_server: RedisServer, tmp_path: Path) -> None:
    """The park itself (presence.lua), run by two survivors whose claims crossed (one
    slower than a heartbeat): the first writes, the second finds it parked."""
    url = redis_server.url(prefix=prefix_for(tmp_path), heartbeat=HEARTBEAT)
    a, b = await open_redis(url), await open_redis(url)
    try:
        await a.create_session(Session.new("twice"))
        entry = f"twice {(await a.get_metadata('twice')).epoch}"  # type: ignore[union-attr]
        await died_in(url, "twice")
        await asyncio.sleep(HEARTBEAT + 0.1)
        park = a.presence.orphan_park(entry)
        assert park is not None
        answers = await asyncio.gather(
            a.presence.park_many([park, park]), b.presence.park_many([park, park])
        )
        wrote = [p.wrote for pair in answers for p in pair if isinstance(p, Parked)]
        assert sorted(wrote) == [False, False, False, True]
        assert (await a.get_metadata("twice")).state == SessionState.DISCONNECTED  # type: ignore[union-attr]
    finally:
        await a.close()
        await b.close()


async def test_left_as_it_is_what_changed_since(redis_server: RedisServer, tmp_path: Path) -> None:
    """A session with a connection left on a survivor stays active; one closed since
    stays closed; one deleted and created again under its id (another epoch, active
    with no connection yet) is not the dead instance's, and stays active."""
    url = redis_server.url(prefix=prefix_for(tmp_path), heartbeat=HEARTBEAT)
    # The survivor's heartbeat outlasts any stall of a loaded machine: with the dead
    # one's 0.3 s, its own connection's entry ran out before its refresh came.
    a = await open_redis(with_heartbeat(url, 30))
    try:
        for session_id in ("shared", "closed", "replaced", "alone"):
            await a.create_session(Session.new(session_id))
        await died_in(url, "shared", "closed", "replaced", "alone")
        shared = await a.get_metadata("shared")
        assert shared is not None
        survivor = Held("shared", [("c_survivor", "client")], shared.epoch)
        await a.presence.join("shared", "c_survivor", "client", epoch=shared.epoch)
        await a.update_session_state("closed", SessionState.CLOSED)
        await a.delete_session("replaced")
        await a.create_session(Session.new("replaced"))
        replacement = await a.get_metadata("replaced")
        assert replacement is not None

        await a.presence.refresh([survivor])  # the survivor's heartbeat
        swept: list[int] = []

        async def dead_one_swept() -> int:  # once the dead one's deadline passed
            swept.append(await a.presence.sweep_dead())
            return swept[-1]

        await eventually(dead_one_swept)
        assert swept[-1] == 1
        states = {m.id: m.state for m in (await a.list_sessions(SessionFilter())).sessions}
        assert states == {
            "shared": SessionState.ACTIVE,
            "closed": SessionState.CLOSED,
            "replaced": SessionState.ACTIVE,
            "alone": SessionState.DISCONNECTED,
        }
        assert await a.presence.counts(["shared", "alone"]) == [1, 0]
        stored = await a.get_metadata("replaced")
        assert stored is not None and stored.epoch == replacement.epoch
        assert stored.updated_at == replacement.updated_at
    finally:
        await a.close()


SWEPT = 400  # sessions of the dead instance: a few batches (16, then twice as many)
# The sweepers' heartbeat in the test of a long sweep (seconds): the claim runs out only
# should Redis, or this process, stall for five sixths of it, which no sweeper can help.
# With 0.3 s, a loaded machine (load 27 on two cores) stalled 0.32 s and the claim
# lapsed (72 ms): the test asserted a speed, not the renewal.
LONG_SWEEP_HEARTBEAT = 2.0
# A park batch's mode, as the presence script's call carries it (RESP).
PARK_MODE = b"$4\r\npark\r\n"


async def test_a_sweep_longer_than_a_heartbeat_keeps_its_claim(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """The sweeper renews its claim while it parks: the dead instance's deadline never
    passes, and a second survivor sweeping meanwhile takes up nothing of it (r333:
    the claim ran out, and each survivor in turn redid it). A batch of parks that
    outlasts two heartbeats (a loaded machine's were 0.48 s of a 0.3 s heartbeat) is
    made here whatever the machine's speed: its reply is held at a proxy (Redis has
    run it) until Redis's clock is a heartbeat past the claim's first deadline. The
    claim is renewed every sixth of a heartbeat by a task of its own, on another
    connection, whatever the batches.

    On a Redis of its own that keeps nothing on disk: one that syncs each write to
    disk, as the other tests' does, stalled on a loaded machine's disk for 0.25 to
    0.75 s at a time (``LATENCY LATEST``: ``aof-fsync-always``), during which Redis
    runs no renewal, nor anything else (live instances' heartbeats neither)."""
    server = lossy_redis(start_redis)
    prefix = prefix_for(tmp_path)
    url = server.url(prefix=prefix, heartbeat=LONG_SWEEP_HEARTBEAT, accept_lossy="true")
    proxy = RedisProxy(server.port)
    through_proxy = url.replace(f":{server.port}/", f":{await proxy.start()}/")
    a, b = await open_redis(through_proxy), await open_redis(url)
    try:
        doomed = server.url(prefix=prefix, heartbeat=HEARTBEAT, accept_lossy="true")
        dead = await died_in_many_sessions(doomed, SWEPT)
        await eventually(lambda: deadline_passed(b, dead.instance), timeout=30)
        proxy.hold_reply_to(PARK_MODE)
        sweep = asyncio.create_task(a.presence.sweep_dead())
        await eventually(lambda: proxy.replies_held == 1, timeout=30)  # claimed, parking
        first_deadline, _ = await deadline_and_now(b, dead.instance)
        assert first_deadline is not None
        lapsed, swept_by_b, now_ms = [], 0, 0
        while now_ms <= first_deadline + LONG_SWEEP_HEARTBEAT * 1000:
            await asyncio.sleep(LONG_SWEEP_HEARTBEAT / 6)
            deadline, now_ms = await deadline_and_now(b, dead.instance)
            if deadline is not None and deadline <= now_ms:
                lapsed.append(round(now_ms - deadline))
            swept_by_b += await b.presence.sweep_dead()
        assert not sweep.done(), "the held batch's sweep ended"
        proxy.release_replies()
        assert (await sweep, swept_by_b, lapsed) == (SWEPT, 0, [])
        assert await b.redis.client.zcard(b.layout.instances()) == 0  # swept whole
    finally:
        proxy.release_replies()
        await a.close()
        await b.close()
        await proxy.close()


async def redis_now_ms(store: RedisStorage) -> int:
    seconds, micros = await store.redis.client.time()
    return int(seconds * 1000 + micros // 1000)


async def clock_past(store: RedisStorage, ms: float) -> bool:
    """Whether Redis's clock is past millisecond ``ms``."""
    return await redis_now_ms(store) > ms


async def deadline_and_now(store: RedisStorage, instance: str) -> tuple[float | None, int]:
    """``instance``'s deadline and Redis's time, read at once (a transaction): read
    in turn, a renewal between them showed a lapse that was not."""
    async with store.redis.client.pipeline(transaction=True) as both:
        deadline, (seconds, micros) = (
            await both.zscore(store.layout.instances(), instance).time().execute()
        )
    return deadline, int(seconds) * 1000 + int(micros) // 1000


async def deadline_passed(store: RedisStorage, instance: str) -> bool:
    """Whether ``instance``'s deadline passed by Redis's clock: it died, for the sweep."""
    deadline, now_ms = await deadline_and_now(store, instance)
    return deadline is not None and deadline < now_ms


async def test_a_claim_is_renewed_only_by_its_holder(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """orphans.lua ``renew``, which a sweeper calls before it goes on: one heartbeat
    more for the deadline its claim set; nothing, and the deadline left as it is, once
    that deadline is another's (a survivor took the instance up after the claim ran
    out, or the instance refreshed: alive after all, its sessions its own again).
    Heartbeats of 1.5 s: the checks after the refresh must come within one (at 0.3 s a
    loaded machine let the refresh lapse first: counts [0, 0])."""
    heartbeat = 1.5
    url = redis_server.url(prefix=prefix_for(tmp_path), heartbeat=heartbeat)
    a = await open_redis(url)
    stalled = await open_redis(url)
    try:
        held = await registered_in(stalled, await made(stalled, 2))
        await asyncio.sleep(heartbeat + 0.1)
        instances, ms = a.layout.instances(), round(heartbeat * 1000)
        name, claimed = await a.redis.run("orphans", [instances], ["claim", ms, 16])
        assert name.decode() == stalled.instance
        renew = ["renew", ms, stalled.instance]
        # A renewal in the claim's own millisecond changes nothing: Redis's clock first
        # leaves it (a claim's deadline is half a millisecond short: orphans.lua).
        claimed_at = float(claimed) + 0.5 - ms
        await eventually(lambda: clock_past(a, claimed_at))
        renewed = await a.redis.run("orphans", [instances], [*renew, claimed])
        assert float(renewed) > float(claimed)
        assert await a.redis.run("orphans", [instances], [*renew, claimed]) is None  # stale
        # It goes on: taken back even in the renewal's own millisecond (which left the
        # sweeper its claim while deadlines were whole milliseconds: 1 run in 200).
        await stalled.presence.refresh(held)
        mine = await a.redis.client.zscore(instances, stalled.instance)
        assert mine is not None and mine > float(renewed)
        assert await a.redis.run("orphans", [instances], [*renew, renewed]) is None
        assert await a.redis.client.zscore(instances, stalled.instance) == mine
        assert await a.presence.sweep_dead() == 0
        assert await a.presence.counts([h.session_id for h in held]) == [1, 1]
    finally:
        await stalled.close()
        await a.close()

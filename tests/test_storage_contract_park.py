"""The park at a restart (``ParksAttached``, persistence/capabilities.py) on every backend
of tests/storage_backends.py that a process holds alone: what is stored ``active`` or
``idle``, written at or before the time given (the store's clock's, ``Storage.now()``)
and not expired, becomes ``disconnected`` (a state write: ``updated_at`` moves, activity
and expiry stay), a batch at a time; what is written since the park began is left,
closed between two steps stays closed; a reopened store keeps it. Times stored ahead of
the wall clock (a dead server's clock ahead) are parked and moved forward, never back.
A store several processes share (Redis) does not offer it: its presence sweep parks."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from bamboo_session.persistence import Storage
from bamboo_session.persistence.base import SessionExpired, SessionFilter, SessionNotFound
from bamboo_session.persistence.capabilities import ParksAttached
from bamboo_session.persistence.importing import SessionImport
from bamboo_session.protocol.errors import InvalidTransition
from bamboo_session.protocol.models import (
    AgentEvent,
    Message,
    SessionMetadata,
    SessionState,
    utcnow,
)
from tests.storage_backends import Backend
from tests.storage_contract_fixtures import backend_fixture, store_fixture  # noqa: F401 (fixtures)
from tests.storage_contract_support import new_session


def parking(store: Storage) -> ParksAttached:
    if not isinstance(store, ParksAttached):
        pytest.skip("a store several processes share parks by its presence sweep")
    return store


async def metadata(store: Storage, session_id: str) -> SessionMetadata:
    found = await store.get_metadata(session_id)
    assert found is not None
    return found


async def stored_as(store: Storage, state: SessionState, session_id: str) -> SessionMetadata:
    await new_session(store, session_id, user_id="u", ttl=3600)
    if state != SessionState.ACTIVE:  # (a new session is active)
        await store.update_session_state(session_id, state)
    return await metadata(store, session_id)


async def all_steps(steps: AsyncIterator[int]) -> list[int]:
    return [parked async for parked in steps]


async def test_what_was_left_active_or_idle_is_parked_and_nothing_else(store: Storage) -> None:
    parks = parking(store)
    before = {
        session_id: await stored_as(store, state, session_id)
        for session_id, state in [
            ("a1", SessionState.ACTIVE),
            ("a2", SessionState.ACTIVE),
            ("i1", SessionState.IDLE),
            ("d1", SessionState.DISCONNECTED),
            ("c1", SessionState.CLOSED),
        ]
    }
    await new_session(store, "gone", user_id="u", ttl=1)
    expiry = (await metadata(store, "gone")).expires_at
    assert expiry is not None
    # Until it has expired, stored active: cleanup's to remove, not the park's to move.
    await asyncio.sleep(max((expiry - utcnow()).total_seconds(), 0) + 0.01)

    steps = await all_steps(parks.park_attached(store.now(), 2))

    assert sum(steps) == 3 and max(steps) <= 2
    for session_id in ("a1", "a2", "i1"):
        parked = await metadata(store, session_id)
        assert parked.state == SessionState.DISCONNECTED
        assert parked.updated_at > before[session_id].updated_at
        # A park is no activity: the TTL runs on from the last activity.
        assert parked.last_activity_at == before[session_id].last_activity_at
        assert parked.expires_at == before[session_id].expires_at
    for session_id in ("d1", "c1"):
        assert await metadata(store, session_id) == before[session_id]
    assert (await metadata(store, "gone")).state == SessionState.ACTIVE


async def test_what_was_written_since_the_time_given_is_left(store: Storage) -> None:
    parks = parking(store)
    await stored_as(store, SessionState.ACTIVE, "before")
    since = store.now()  # every write after it is stamped later, in the same microsecond too
    await stored_as(store, SessionState.IDLE, "after")

    assert sum(await all_steps(parks.park_attached(since, 100))) == 1

    assert (await metadata(store, "before")).state == SessionState.DISCONNECTED
    assert (await metadata(store, "after")).state == SessionState.IDLE


async def test_attached_left_says_whether_a_park_would_move_a_session(store: Storage) -> None:
    """What a park stopped at a bound (a graceful stop's) left for the next start: only
    what ``park_attached`` would move counts, and asking moves nothing."""
    parks = parking(store)
    assert not await parks.attached_left(store.now())
    for session_id, state in [("d1", SessionState.DISCONNECTED), ("c1", SessionState.CLOSED)]:
        await stored_as(store, state, session_id)
    await new_session(store, "gone", user_id="u", ttl=1)  # active, once expired: cleanup's
    expiry = (await metadata(store, "gone")).expires_at
    assert expiry is not None
    await asyncio.sleep(max((expiry - utcnow()).total_seconds(), 0) + 0.01)
    assert not await parks.attached_left(store.now())
    since = store.now()
    await stored_as(store, SessionState.IDLE, "i1")  # written since
    assert not await parks.attached_left(since)
    assert await parks.attached_left(store.now())
    assert (await metadata(store, "i1")).state == SessionState.IDLE  # (not moved)
    assert sum(await all_steps(parks.park_attached(store.now(), 10))) == 1
    assert not await parks.attached_left(store.now())


async def test_a_session_written_between_two_steps_is_left(store: Storage) -> None:
    """An attach once the server listens, while the park goes on: its write stays."""
    parks = parking(store)
    for number in range(6):
        await stored_as(store, SessionState.ACTIVE, f"s{number}")
    steps = parks.park_attached(store.now(), 2)
    first = await anext(steps)
    waiting = await store.list_sessions(SessionFilter(state=SessionState.ACTIVE))
    for session in waiting.sessions:  # every session the first step did not park
        await store.touch(session.id)

    rest = await all_steps(steps)

    assert first == 2 and sum(rest) == 0
    still = await store.list_sessions(SessionFilter(state=SessionState.ACTIVE))
    assert {m.id for m in still.sessions} == {m.id for m in waiting.sessions}
    assert len(still.sessions) == 4


async def test_sessions_a_step_leaves_among_the_rest_cost_no_step_more(store: Storage) -> None:
    """Half the sessions written since the park's time, every other one: the others are
    parked, and the steps are as many as the sessions need, a batch a step (the stores
    that take each step's ids from their index as it begins move those it leaves
    behind the rest: none is looked at twice)."""
    parks = parking(store)
    for number in range(20):
        await stored_as(store, SessionState.ACTIVE, f"s{number:02}")
    since = store.now()
    written = [f"s{number:02}" for number in range(0, 20, 2)]
    for session_id in written:
        await store.touch(session_id)

    steps = await all_steps(parks.park_attached(since, 3))

    assert sum(steps) == 10 and max(steps) <= 3
    assert len(steps) <= 7 + 1  # 20, 3 a step (SQLite: and an empty one past the last)
    left = await store.list_sessions(SessionFilter(state=SessionState.ACTIVE, limit=100))
    assert {m.id for m in left.sessions} == set(written)


async def test_a_session_closed_between_two_steps_stays_closed(store: Storage) -> None:
    """A peer closes a session the park has not reached yet: the steps go on past it,
    and park every other one (r345: a close between a listing and its write ended the
    server's park)."""
    parks = parking(store)
    for number in range(30):
        await stored_as(store, SessionState.ACTIVE, f"s{number:02}")
    steps = parks.park_attached(store.now(), 10)
    first = await anext(steps)
    waiting = await store.list_sessions(SessionFilter(state=SessionState.ACTIVE))
    closed = waiting.sessions[0].id
    await store.update_session_state(closed, SessionState.CLOSED)

    rest = await all_steps(steps)

    assert first == 10 and sum(rest) == 19
    assert (await metadata(store, closed)).state == SessionState.CLOSED
    left = await store.list_sessions(SessionFilter(state=SessionState.ACTIVE))
    assert left.total == 0


async def test_times_stored_ahead_of_the_wall_clock_are_parked_and_moved_forward(
    store: Storage,
) -> None:
    """The dead server's clock was an hour ahead of the restart's (set back since, or a
    machine that boots before NTP sets it): the store's clock is never behind what it
    holds, so what that server wrote last, at the very time the park is fenced by, is
    parked, stamped after it (not an hour back), and judged expired by that clock."""
    parks = parking(store)
    assert isinstance(store, SessionImport)
    ahead = utcnow() + timedelta(hours=1)
    before = {}
    for session_id, expiry in [("a1", timedelta(hours=1)), ("gone", timedelta(minutes=-1))]:
        stored = await stored_as(store, SessionState.ACTIVE, session_id)
        stored.updated_at = stored.last_activity_at = ahead
        stored.expires_at = ahead + expiry  # "gone": after the wall clock, before the store's
        await store.import_metadata(stored)
        before[session_id] = await metadata(store, session_id)
    since = store.now()
    # The newest time held (memory, JSONL: "a1"'s own, the fence itself; SQLite stamps
    # its import's commit a microsecond later), and what the clock, held ahead, ran
    # since at half speed: less than the wall clock ran. After a reopen it is "a1"'s
    # on every store: tests/test_server_restart_park.py.
    assert ahead <= since < utcnow() + timedelta(hours=1)

    assert sum(await all_steps(parks.park_attached(since, 100))) == 1

    parked = await metadata(store, "a1")
    assert parked.state == SessionState.DISCONNECTED
    assert parked.updated_at > before["a1"].updated_at
    assert parked.last_activity_at == before["a1"].last_activity_at
    assert parked.expires_at == before["a1"].expires_at
    assert await metadata(store, "gone") == before["gone"]  # expired: cleanup's


async def test_what_was_parked_is_there_after_a_reopen(backend: Backend, tmp_path: Path) -> None:
    """Written lazily on JSONL, as any move among the live states, by the close: more
    sessions than one of its thread jobs writes (persistence/jsonl/checkpointer.py
    ``CHUNK``), some with messages, whose index entries are appended first."""
    if not backend.durable:
        pytest.skip("this backend keeps nothing across a reopen")
    storage = await backend.open(tmp_path)
    try:
        parks = parking(storage)
        for number in range(150):
            await stored_as(storage, SessionState.ACTIVE, f"s{number:03}")
            if number % 10 == 0:
                await storage.append_message(f"s{number:03}", Message.user(f"m{number}"))
        assert sum(await all_steps(parks.park_attached(storage.now(), 1000))) == 150
    finally:
        await storage.close()
    storage = await backend.open(tmp_path)
    try:
        found = await storage.list_sessions(
            SessionFilter(state=SessionState.DISCONNECTED, limit=1000)
        )
        assert sorted(m.id for m in found.sessions) == [f"s{n:03}" for n in range(150)]
        history = await storage.get_session_history("s140")
        assert [message.content for message in history] == ["m140"]
    finally:
        await storage.close()


async def made_alike(store: Storage, start: datetime) -> None:
    """Sessions of every state, written long ago, at ``start`` or an hour ahead of it
    (the newest time held: the store's clock stands there), expiring never, in three
    hours, a minute ago, or in half an hour (expired by the store's clock, not by the
    wall clock), some with events: the same times in every store made so."""
    assert isinstance(store, SessionImport)
    hour = timedelta(hours=1)
    written = {"old": start - 2 * hour, "now": start, "ahead": start + hour}
    expiries = {"never": None, "later": start + 3 * hour}
    expiries |= {"gone": start - timedelta(minutes=1), "gone-by-store": start + hour / 2}
    states = [state for state in SessionState if state != SessionState.EXPIRED]
    grid = itertools.product(states, written, expiries)
    for number, (state, when, expiry) in enumerate(grid):
        session_id = f"{state.value}-{when}-{expiry}"
        # Made at the store's clock: held at ``ahead`` by the sessions made before, it
        # passed the expiry of one made by the wall clock with a TTL of that hour at
        # twice the lag since ``start`` (half speed): an append failed, 9 in 600 runs.
        await new_session(store, session_id, user_id="u", ttl=3600, now=store.now())
        if number % 3 == 0:
            await store.append_event(session_id, AgentEvent.token("t"))
        stored = await metadata(store, session_id)
        stored.state = state
        stored.updated_at = stored.last_activity_at = written[when]
        stored.expires_at = expiries[expiry]
        await store.import_metadata(stored)


async def park_by_listing(store: Storage, since: datetime) -> int:
    """The server's park before the stores parked themselves (r341 to r350): a listing of
    each live state, and a state write per session, fenced by its epoch and updated_at."""
    parked = 0
    for state in (SessionState.ACTIVE, SessionState.IDLE):
        page = await store.list_sessions(SessionFilter(state=state, limit=1000))
        for listed in page.sessions:
            if listed.updated_at > since:
                continue  # written since the start
            try:
                stored = await store.update_session_state(
                    listed.id,
                    SessionState.DISCONNECTED,
                    epoch=listed.epoch,
                    unless_updated_since=listed.updated_at,
                )
            except (SessionExpired, SessionNotFound, InvalidTransition):
                continue  # expired (cleanup's), deleted, or closed
            parked += stored.state == SessionState.DISCONNECTED
    return parked


Seen = dict[str, tuple[SessionState, datetime, datetime | None, int]]


async def seen(store: Storage) -> Seen:
    """What a user sees of every session, but the time of its last write (and its
    epoch, each store's own)."""
    every = await store.list_sessions(SessionFilter(limit=1000))
    return {m.id: (m.state, m.last_activity_at, m.expires_at, m.last_seq) for m in every.sessions}


TOUCHED = ("active-old-never", "idle-now-later")


def without_touched_times(sees: Seen) -> dict[str, tuple[object, ...]]:
    """What ``seen`` gives, the times of the sessions touched left out: each store
    stamps them by its own clock, held ahead and running at half speed meanwhile."""
    return {
        session_id: (state, None, None, seq) if session_id in TOUCHED else (state, *rest, seq)
        for session_id, (state, *rest, seq) in sees.items()
    }


async def test_the_store_parks_what_the_listing_path_parked(
    backend: Backend, tmp_path: Path
) -> None:
    """The same sessions in two stores: one parked by the listing path, the other by the
    store; both leave the same states, activity and expiries, after a reopen too, and
    leave sessions written since the park began (touched: an attach)."""
    if backend.name == "redis":
        pytest.skip("a store several processes share parks by its presence sweep")
    start = utcnow()
    directories = (tmp_path / "listing", tmp_path / "store")
    stores = [await backend.open(directory) for directory in directories]
    try:
        for store in stores:
            await made_alike(store, start)
        fences = [store.now() for store in stores]
        for fence in fences:  # the newest time held, and what the clock ran since, held
            # ahead at half speed: less than the wall clock ran
            assert start + timedelta(hours=1) <= fence < utcnow() + timedelta(hours=1)
        for store in stores:  # attaches once the server listens: written since
            for session_id in TOUCHED:
                await store.touch(session_id)
        before = await seen(stores[1])

        by_listing = await park_by_listing(stores[0], fences[0])
        by_store = sum(await all_steps(parking(stores[1]).park_attached(fences[1], 7)))

        # active and idle, written at 3 times, of 2 expiries not passed; less 2 touched
        assert by_store == by_listing == 2 * 3 * 2 - 2
        after = [await seen(store) for store in stores]
        assert without_touched_times(after[0]) == without_touched_times(after[1])
        for sees, fence in zip(after, fences, strict=True):  # touched since its fence
            assert all(sees[session_id][1] > fence for session_id in TOUCHED), sees
        moved = {session_id for session_id, sees in after[1].items() if sees != before[session_id]}
        assert len(moved) == by_store
        assert {before[session_id][0] for session_id in moved} == {
            SessionState.ACTIVE,
            SessionState.IDLE,
        }
        assert {after[1][session_id][0] for session_id in moved} == {SessionState.DISCONNECTED}
    finally:
        for store in stores:
            await store.close()
    if backend.durable:
        reopened = [await backend.open(directory) for directory in directories]
        try:
            assert [await seen(store) for store in reopened] == after
        finally:
            for store in reopened:
                await store.close()


async def test_a_store_several_processes_share_does_not_offer_it(
    backend: Backend, tmp_path: Path
) -> None:
    if backend.name != "redis":
        pytest.skip("a store one process holds parks at a restart")
    store = await backend.open(tmp_path)
    try:
        assert not isinstance(store, ParksAttached)
    finally:
        await store.close()

"""A session's status (server/status.py) held ``idle`` as another process wrote it, on
every backend of tests/storage_backends.py: its peers' frames were recorded by an
earlier look, which the idle weighed. Should a process then park the session
(``disconnected``: it took this one's connections for gone), this one's next look
writes ``idle`` back, as the heartbeat's reclaim does, not ``active``: nothing happened
here that the idle had not weighed. Frames since, or activity the store recorded since
the idle (after the park, or before it, hidden by the park's write), make it
``active``. Two servers on Redis, with real peers: tests/test_server_instances_idle.py."""

from __future__ import annotations

import asyncio

from bamboo_session.persistence import Storage
from bamboo_session.protocol.models import SessionState
from bamboo_session.server.status import SessionStatus
from tests.storage_contract_fixtures import backend_fixture, store_fixture  # noqa: F401 (fixtures)
from tests.storage_contract_support import new_session

IDLE_TIMEOUT = 10.0
ACTIVE, IDLE, DISCONNECTED = SessionState.ACTIVE, SessionState.IDLE, SessionState.DISCONNECTED


async def stored(store: Storage) -> SessionState:
    meta = await store.get_metadata("s1")
    assert meta is not None
    return meta.state


async def held_idle_elsewhere(store: Storage, parked: bool = True) -> SessionStatus:
    """A status whose look recorded its peers' frames, then found the session written
    idle by another process: held idle; ``parked``, then disconnected by another."""
    session = await new_session(store, "s1", ttl=3600)
    status = SessionStatus("s1", ACTIVE, store, ttl=3600, epoch=session.metadata.epoch)
    await status.check(quiet_for=0.1, idle_timeout=IDLE_TIMEOUT, traffic=True)
    await asyncio.sleep(0.01)  # the idle is written after that activity, as elsewhere
    await store.update_session_state("s1", IDLE)
    await status.check(quiet_for=1.0, idle_timeout=IDLE_TIMEOUT, traffic=False)
    assert (status.state, status.idle_elsewhere) == (IDLE, True)
    if parked:
        await asyncio.sleep(0.01)
        await store.update_session_state("s1", DISCONNECTED)  # another process parked it
    return status


async def test_a_session_held_idle_and_parked_elsewhere_is_written_idle_again(
    store: Storage,
) -> None:
    status = await held_idle_elsewhere(store)
    assert await status.check(quiet_for=2.0, idle_timeout=IDLE_TIMEOUT, traffic=False) is None
    assert await stored(store) == IDLE  # before: active, for frames the idle had weighed
    assert (status.state, status.idle_elsewhere) == (IDLE, True)
    # Its peers' next frame makes it active, as over any idle written elsewhere.
    await status.check(quiet_for=0.1, idle_timeout=IDLE_TIMEOUT, traffic=True)
    assert (await stored(store), status.state) == (ACTIVE, ACTIVE)


async def test_frames_since_make_it_active_over_the_disconnected(store: Storage) -> None:
    status = await held_idle_elsewhere(store)
    await status.check(quiet_for=0.1, idle_timeout=IDLE_TIMEOUT, traffic=True)
    assert (await stored(store), status.state, status.idle_elsewhere) == (ACTIVE, ACTIVE, False)


async def test_activity_stored_since_makes_it_active_over_the_disconnected(
    store: Storage,
) -> None:
    status = await held_idle_elsewhere(store)
    await asyncio.sleep(0.01)
    await store.touch("s1")  # an append or a look of another process's peers
    await status.check(quiet_for=2.0, idle_timeout=IDLE_TIMEOUT, traffic=False)
    assert (await stored(store), status.state) == (ACTIVE, ACTIVE)


async def test_activity_stored_after_the_idle_and_before_the_park_makes_it_active(
    store: Storage,
) -> None:
    """Another process's agent appended after the idle (its actor wrote ``active``),
    then left, and its process, taking this one's connections for gone, parked the
    session: that activity came after the idle this status holds, which did not weigh
    it. The park's write hides it from ``last_activity_at >= updated_at``; the idle's
    own time, kept at the look that took it, does not."""
    status = await held_idle_elsewhere(store, parked=False)
    await asyncio.sleep(0.01)
    await store.touch("s1")  # the other process's agent appends
    await store.update_session_state("s1", ACTIVE)  # its actor, held idle, is active again
    await asyncio.sleep(0.01)
    await store.update_session_state("s1", DISCONNECTED)  # its agent left: parked
    await status.check(quiet_for=2.0, idle_timeout=IDLE_TIMEOUT, traffic=False)
    assert (await stored(store), status.state) == (ACTIVE, ACTIVE)  # before: idle, idle

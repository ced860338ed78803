"""OwedStates (server/owed_states.py) on real stores: what a round writes, what its
fence leaves alone, and its bounds. The outage itself, and a server's actors handing
their states over, are tests/test_server_owed_states.py's (Redis stopped and started)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio
from structlog.testing import capture_logs

from bamboo_session.persistence import Storage, open_storage
from bamboo_session.persistence.base import SessionFilter
from bamboo_session.persistence.redis.layout import Layout
from bamboo_session.protocol.models import Session, SessionState
from bamboo_session.server.owed_states import ENTRY_BYTES, OwedStates
from bamboo_session.server.presence import shared_presence
from tests.instances import eventually
from tests.redis_server import RedisServer, prefix_for
from tests.storage_backends import BACKENDS

# Where nothing else writes the state but the owed round: stores one process holds.
LOCAL_BACKENDS = {b.name: b for b in BACKENDS if b.name in ("memory", "jsonl", "sqlite")}


@pytest.fixture(params=sorted(LOCAL_BACKENDS))
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    store = await LOCAL_BACKENDS[request.param].open(tmp_path)
    try:
        yield store
    finally:
        await store.close()


async def stored_in(storage: Storage, session_id: str, state: SessionState) -> str:
    """``session_id`` created and moved to ``state``; its epoch."""
    session = Session.new(session_id, now=storage.now())
    await storage.create_session(session)
    if state != SessionState.ACTIVE:
        await storage.update_session_state(session_id, SessionState.ACTIVE)
    await storage.update_session_state(session_id, state)
    metadata = await storage.get_metadata(session_id)
    assert metadata is not None and metadata.state == state
    return metadata.epoch


async def state_of(storage: Storage, session_id: str) -> SessionState:
    metadata = await storage.get_metadata(session_id)
    assert metadata is not None
    return metadata.state


def nothing_live(session_id: str) -> None:
    return None


async def test_active_and_idle_sessions_owed_their_park_are_written_disconnected(
    storage: Storage,
) -> None:
    owed = OwedStates(storage, None, nothing_live)
    for session_id, state in (("was-active", SessionState.ACTIVE), ("was-idle", SessionState.IDLE)):
        owed.owe(session_id, await stored_in(storage, session_id, state))
    with capture_logs() as logs:
        assert await owed.write_owed() == 2
    assert len(owed) == 0 and owed.bytes == 0
    listed = await storage.list_sessions(SessionFilter(state=SessionState.DISCONNECTED))
    assert sorted(m.id for m in listed.sessions) == ["was-active", "was-idle"]
    assert [(e["written"], e["owed"]) for e in logs if e["event"] == "owed states written"] == [
        (2, 0)
    ]


async def test_nothing_is_written_over_an_ended_or_replaced_session(storage: Storage) -> None:
    """Closed, already parked, deleted, or of another epoch (the id taken by a new
    session): nothing is owed any more, and the store is left as it is."""
    owed = OwedStates(storage, None, nothing_live)
    owed.owe("closed", await stored_in(storage, "closed", SessionState.CLOSED))
    owed.owe("parked", await stored_in(storage, "parked", SessionState.DISCONNECTED))
    owed.owe("deleted", await stored_in(storage, "deleted", SessionState.ACTIVE))
    await storage.delete_session("deleted")
    await stored_in(storage, "replaced", SessionState.ACTIVE)
    owed.owe("replaced", "an-earlier-epoch")
    assert await owed.write_owed() == 0
    assert len(owed) == 0
    assert await state_of(storage, "closed") == SessionState.CLOSED
    assert await state_of(storage, "replaced") == SessionState.ACTIVE
    assert await storage.get_metadata("deleted") is None


async def test_a_session_with_an_actor_here_again_waits_for_it_to_retire(
    storage: Storage,
) -> None:
    """A later attach here spawned an actor: the state is its own to write. The owed
    one is kept, not written, until that actor is gone."""
    live: set[str] = {"again"}
    owed = OwedStates(storage, None, lambda session_id: True if session_id in live else None)
    owed.owe("again", await stored_in(storage, "again", SessionState.ACTIVE))
    for _ in range(3):
        assert await owed.write_owed() == 0
        assert await state_of(storage, "again") == SessionState.ACTIVE
    assert len(owed) == 1
    live.clear()
    assert await owed.write_owed() == 1
    assert await state_of(storage, "again") == SessionState.DISCONNECTED


async def test_owed_states_are_bounded_in_count_and_in_bytes(storage: Storage) -> None:
    """Past either bound a state is not kept: said once until one fits again."""
    owed = OwedStates(storage, None, nothing_live, max_count=2)
    with capture_logs() as logs:
        for n in range(5):
            owed.owe(f"s{n}", "epoch")
        assert len(owed) == 2
        owed.owe("s0", "epoch")  # owed again: the one it held is replaced, not added
        assert len(owed) == 2
    refusals = [e for e in logs if e["event"] == "an owed state is not kept: too many are owed"]
    assert len(refusals) == 1
    by_bytes = OwedStates(storage, None, nothing_live, max_bytes=2 * ENTRY_BYTES + 20)
    by_bytes.owe("a", "e")
    by_bytes.owe("b", "e")
    by_bytes.owe("c" * 64, "e")
    assert len(by_bytes) == 2 and by_bytes.bytes <= by_bytes.max_bytes


async def test_on_redis_a_connection_attached_elsewhere_is_never_written_over(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """On a store processes share, the park is one step with presence: while another
    instance's connection is registered it writes nothing, and leaves the state to that
    instance (its last connection out writes it)."""
    url = redis_server.url(prefix=prefix_for(tmp_path))
    a, b = await open_storage(url), await open_storage(url)
    try:
        presence, elsewhere = (shared_presence(s, lambda notice: None) for s in (a, b))
        assert presence is not None and elsewhere is not None
        owed = OwedStates(a, presence, nothing_live)
        epoch = await stored_in(a, "held", SessionState.ACTIVE)
        await elsewhere.store.join("held", "c_elsewhere", "client", epoch=epoch)
        owed.owe("held", epoch)
        assert await owed.write_owed() == 0
        assert await state_of(a, "held") == SessionState.ACTIVE
        assert len(owed) == 0
        await elsewhere.store.leave("held", "c_elsewhere", "client", epoch=epoch)
        owed.owe("held", epoch)  # owed again, none attached now: written
        assert await owed.write_owed() == 1
        assert await state_of(a, "held") == SessionState.DISCONNECTED
    finally:
        await a.close()
        await b.close()


@contextlib.asynccontextmanager
async def owing_with_one_broken(
    redis_server: RedisServer, tmp_path: Path, ids: tuple[str, ...]
) -> AsyncIterator[tuple[Storage, OwedStates]]:
    """A Redis store and its owed states, owing ``disconnected`` to each of ``ids``
    (stored ``active``), of which ``broken``'s own key is written over by something else
    (a string where the store keeps a hash): its park fails every time."""
    prefix = prefix_for(tmp_path)
    store = await open_storage(redis_server.url(prefix=prefix))
    client = redis.asyncio.Redis.from_url(redis_server.url())
    try:
        owed = OwedStates(store, shared_presence(store, lambda notice: None), nothing_live)
        for session_id in ids:
            owed.owe(session_id, await stored_in(store, session_id, SessionState.ACTIVE))
        await client.set(Layout(prefix).meta("broken"), "not a hash")
        yield store, owed
    finally:
        await client.aclose()
        await store.close()


async def test_a_session_that_fails_alone_does_not_hold_up_the_others(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """One session's own key written over by something else (a string where the store
    keeps a hash): its park fails every time, as a store that fails would. A round ends
    at a failure, and tries what failed last the next time: the others are written."""
    async with owing_with_one_broken(redis_server, tmp_path, ("broken", "fine")) as (store, owed):
        with capture_logs() as logs:
            assert await owed.write_owed() == 0  # "broken", first, fails: the round ends
            assert await owed.write_owed() == 1  # "fine" first now
            assert await owed.write_owed() == 0
        assert await state_of(store, "fine") == SessionState.DISCONNECTED
        assert len(owed) == 1
        failures = [e for e in logs if e["event"] == "writing an owed state failed"]
        assert len(failures) == 1, failures  # one outage, however many rounds fail


async def test_a_session_that_fails_within_a_group_fails_alone(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """On Redis a group of parks is one script call: one session's key written over
    (a string where the store keeps a hash) fails that session's park alone, which is
    tried again last; the others of its group, before and after it, are written."""
    ids = ("first", "before", "broken", "after")  # the first alone, then one group
    async with owing_with_one_broken(redis_server, tmp_path, ids) as (store, owed):
        assert await owed.write_owed() == 3
        for session_id in ("first", "before", "after"):
            assert await state_of(store, session_id) == SessionState.DISCONNECTED
        assert owed.entries() == [("broken", owed.entries()[0][1])]


async def test_a_stops_numbers_add_up_with_what_its_own_sweep_parked_first(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """What a stop's last round settles adds up to what was owed: one written; one its
    own sweep of dead instances parked first (an outage outlasted its heartbeat: it
    claims itself, and parks a session it owes), ``already_parked``; two with nothing
    to write (deleted; attached on another instance), ``dropped``; one with an actor
    here again, ``left``."""
    prefix = prefix_for(tmp_path)
    store = await open_storage(redis_server.url(prefix=prefix, heartbeat=0.3))
    other = await open_storage(redis_server.url(prefix=prefix, heartbeat=60))
    try:
        presence = shared_presence(store, lambda notice: None)
        elsewhere = shared_presence(other, lambda notice: None)
        assert presence is not None and elsewhere is not None
        owed = OwedStates(store, presence, lambda session_id: session_id == "again" or None)
        owed.retry_every = 3600.0  # no round but the stop's
        epochs = {
            session_id: await stored_in(store, session_id, SessionState.ACTIVE)
            for session_id in ("written", "swept", "deleted", "elsewhere", "again")
        }
        await presence.store.join("swept", "c_here", "client", epoch=epochs["swept"])
        await elsewhere.store.join("elsewhere", "c_there", "client", epoch=epochs["elsewhere"])
        await store.delete_session("deleted")
        for session_id, epoch in epochs.items():
            owed.owe(session_id, epoch)
        # Its connection's heartbeat lapsed: its own sweep parks the session.
        await eventually(presence.store.sweep_dead, timeout=20)
        assert await state_of(store, "swept") == SessionState.DISCONNECTED
        with capture_logs() as logs:
            await owed.close()
        (stop,) = [e for e in logs if e["event"] == "owed states left at stop"]
        counts = {key: stop[key] for key in ("written", "already_parked", "dropped", "left")}
        assert counts == {"written": 1, "already_parked": 1, "dropped": 2, "left": 1}
        assert stop["owed"] == sum(counts.values()) == 5
        assert await state_of(store, "written") == SessionState.DISCONNECTED
        assert await state_of(store, "elsewhere") == SessionState.ACTIVE
    finally:
        await store.close()
        await other.close()

"""A user's session caps on a Redis store several instances share are exact: create.lua
counts the user's sessions (not closed: ``--max-sessions-per-user``; in all:
``--max-stored-sessions-per-user``) in the step that creates one, so creations racing
for the last place, from two store objects or two server instances on one Redis, never
take more than the cap. Before, each instance counted with a listing, then created:
two that counted at once both created. Real redis-server, real servers and peers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed

from bamboo_session.persistence import open_storage
from bamboo_session.persistence.base import OwnerAtCap, OwnerCaps, SessionFilter, Storage
from bamboo_session.persistence.redis import RedisStorage
from bamboo_session.protocol.models import Session, SessionState
from bamboo_session.server.app import BambooServer
from tests.redis_server import RedisServer, prefix_for
from tests.support import open_peer, run_server

ROUNDS = 30  # users, each raced for once
CAPS = OwnerCaps(live=3, stored=5)


@pytest.fixture(name="stores")
async def stores_fixture(
    redis_server: RedisServer, tmp_path: Path
) -> AsyncIterator[tuple[RedisStorage, RedisStorage]]:
    """Two store objects on one Redis and prefix: two instances' stores."""
    url = redis_server.url(prefix=prefix_for(tmp_path))
    first = await open_storage(url, cleanup_interval=None)
    try:
        second = await open_storage(url, cleanup_interval=None)
        try:
            assert isinstance(first, RedisStorage) and isinstance(second, RedisStorage)
            yield first, second
        finally:
            await second.close()
    finally:
        await first.close()


async def create(
    storage: RedisStorage, session_id: str, user: str | None, replace_expired: bool = False
) -> None:
    session = Session.new(session_id, user, now=storage.now())
    await storage.create_session(
        session, made_now=True, owner_caps=CAPS, replace_expired=replace_expired
    )


async def kept(storage: Storage, user: str, state: SessionState | None = None) -> int:
    listing = await storage.list_sessions(SessionFilter(user_id=user, state=state, limit=0))
    return listing.total


async def race(stores: tuple[RedisStorage, RedisStorage], user: str, count: int) -> list[object]:
    """``count`` creations for ``user`` at once, alternately on each store: what each
    ended with (None: created)."""
    calls = [create(stores[n % 2], f"{user}-race{n}", user) for n in range(count)]
    return await asyncio.gather(*calls, return_exceptions=True)


async def test_creations_racing_for_the_last_place_on_two_stores_take_it_once(
    stores: tuple[RedisStorage, RedisStorage],
) -> None:
    """Odd rounds: the user keeps 2 sessions not closed (cap 3). Even rounds: 4 in the
    store, 3 of them closed (stored cap 5, closed ones count). Six creations race;
    exactly one is made, the others refused at the cap with its count."""
    first = stores[0]
    for round_ in range(ROUNDS):
        user = f"u{round_}"
        stored_cap = round_ % 2 == 0
        for n in range(4 if stored_cap else 2):
            await create(first, f"{user}-{n}", user)
            if stored_cap and n < 3:
                await first.update_session_state(f"{user}-{n}", SessionState.CLOSED)
        outcomes = await race(stores, user, 6)
        refusals = [o for o in outcomes if o is not None]
        assert len(refusals) == 5, outcomes
        for refusal in refusals:
            assert isinstance(refusal, OwnerAtCap), refusal
            assert (refusal.stored, refusal.count) == ((True, 5) if stored_cap else (False, 3))
        closed = await kept(first, user, SessionState.CLOSED)
        assert (await kept(first, user), closed) == ((5, 3) if stored_cap else (3, 0))


async def test_a_user_at_the_cap_replaces_an_expired_session_of_its_own(
    stores: tuple[RedisStorage, RedisStorage],
) -> None:
    """The expired session a creation replaces goes with it, so it is not counted: at
    the cap, the replacement is made; another creation is not."""
    first, second = stores
    for n in range(2):
        await create(first, f"live{n}", "u")
    expired = Session.new("old", "u", now=first.now())
    expired.metadata.state = SessionState.EXPIRED
    await first.create_session(expired)
    with pytest.raises(OwnerAtCap):
        await create(second, "another", "u")
    await create(second, "old", "u", replace_expired=True)
    assert await kept(first, "u") == 3
    # Sessions without a user count against nobody; other users are apart.
    await create(first, "anonymous", None)
    await create(first, "v0", "v")


async def test_hellos_racing_on_two_instances_never_pass_the_cap(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Two servers on one Redis, ``--max-sessions-per-user 2``: each round, a user's
    four hellos with ``create``, two on each instance at once, get two welcomes and
    two closes 4403, and the store keeps two sessions of the user."""
    store = redis_server.url(prefix=prefix_for(tmp_path))
    async with (
        run_server(store=store, max_sessions_per_user=2) as one,
        run_server(store=store, max_sessions_per_user=2) as two,
    ):

        async def hello(server: BambooServer, user: str) -> int:
            async with open_peer(server) as peer:
                await peer.send({"type": "hello", "user_id": user, "create": True})
                try:
                    frame = await peer.recv()
                except ConnectionClosed:  # closed before a welcome
                    return peer.ws.close_code or 0
                return 0 if frame["type"] == "welcome" else -1

        for round_ in range(ROUNDS):
            user = f"u{round_}"
            outcomes = await asyncio.gather(*(hello(s, user) for s in (one, two, one, two)))
            assert sorted(outcomes) == [0, 0, 4403, 4403], (round_, outcomes)
            assert await kept(one.manager.storage, user) == 2

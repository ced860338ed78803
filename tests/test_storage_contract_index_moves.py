"""The storage contract's listings by user and by state after sessions move among them
(persistence/index.py keeps each user's and each state's sessions by id), on every
backend of tests/storage_backends.py: random creations, state changes, imports of
metadata, deletes and re-creations of the same ids, expiry and its cleanup, and a
reopen. After each step every listing by user, by state and by both holds exactly the
sessions whose own metadata says so: none in two states, none lost by its user."""

from __future__ import annotations

import asyncio
import contextlib
import random
from pathlib import Path

import msgspec

from bamboo_session.persistence import InvalidTransition, SessionClosed, Storage
from bamboo_session.persistence.listing import SessionFilter
from bamboo_session.protocol.models import Session, SessionState
from tests.storage_backends import Backend
from tests.storage_contract_fixtures import backend_fixture  # noqa: F401 (fixtures)

USERS = ["a", "b", None]
IDS = [f"m{n}" for n in range(8)]
STATES = list(SessionState)


async def _listed(store: Storage, **fields: object) -> set[str]:
    result = await store.list_sessions(SessionFilter(limit=1000, **fields))  # type: ignore[arg-type]
    assert result.total == len(result.sessions)
    return {meta.id for meta in result.sessions}


async def _check(store: Storage) -> None:
    truth = {}
    for session_id in IDS:
        meta = await store.get_metadata(session_id)
        if meta is not None:
            truth[session_id] = (meta.user_id, meta.state)
    assert await _listed(store) == set(truth)
    for state in STATES:
        assert await _listed(store, state=state) == {i for i, t in truth.items() if t[1] == state}
    for user in USERS[:-1]:
        mine = {i for i, t in truth.items() if t[0] == user}
        assert await _listed(store, user_id=user) == mine
        assert {meta.id for meta in await store.list_user_sessions(user)} == mine
        for state in STATES:
            wanted = {i for i in mine if truth[i][1] == state}
            assert await _listed(store, user_id=user, state=state) == wanted


async def _step(store: Storage, rng: random.Random) -> None:
    session_id = rng.choice(IDS)
    meta = await store.get_metadata(session_id)
    move = rng.random()
    if meta is None:
        ttl = 1 if rng.random() < 0.15 else None
        await store.create_session(Session.new(session_id, user_id=rng.choice(USERS), ttl=ttl))
    elif move < 0.5:
        with contextlib.suppress(InvalidTransition, SessionClosed):
            await store.update_session_state(session_id, rng.choice(STATES))
    elif move < 0.7:
        state = rng.choice([SessionState.ACTIVE, SessionState.IDLE, SessionState.CLOSED])
        with contextlib.suppress(InvalidTransition, SessionClosed):
            await store.import_metadata(msgspec.structs.replace(meta, state=state))
    else:
        await store.delete_session(session_id)


async def test_listings_by_user_and_state_follow_every_move(
    backend: Backend, tmp_path: Path
) -> None:
    rng = random.Random(499)
    store = await backend.open(tmp_path)
    try:
        for _ in range(120):
            await _step(store, rng)
            await _check(store)
        await asyncio.sleep(1.1)  # the sessions made with a TTL of 1 s expire
        await store.cleanup_expired_sessions()
        await _check(store)
        for _ in range(40):
            await _step(store, rng)
        await _check(store)
    finally:
        await store.close()
    if backend.durable:
        store = await backend.open(tmp_path)
        try:
            await _check(store)
            for _ in range(40):
                await _step(store, rng)
                await _check(store)
        finally:
            await store.close()

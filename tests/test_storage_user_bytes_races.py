"""The per-user sums of ``stored_bytes`` (``max_user_bytes``) against races and removals,
on every backend of tests/storage_backends.py: appends to several sessions of one user
at once near the bound, a delete or a cleanup while appends to the session are in
flight, imports, sessions made with messages, a replacement. After each, the store's
own sum (what a refusal, UserFull, reports as ``stored``) must equal the sum of
``stored_bytes`` over the user's sessions, and never pass the bound: a sum that drifts
from the truth blocks the user early, or lets them past the bound, for as long as the
store runs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bamboo_session.persistence import Storage, UserFull
from bamboo_session.protocol.models import (
    AgentEvent,
    Message,
    Role,
    Session,
    SessionState,
    StoredEvent,
)
from tests.storage_backends import Backend
from tests.storage_contract_fixtures import backend_fixture  # noqa: F401 (fixture)

USER_CAP = 8192
PAYLOAD = "x" * 300


def token(n: int) -> AgentEvent:
    return AgentEvent.token(f"{n}:{PAYLOAD}")


async def truth(store: Storage, user: str) -> int:
    return sum(meta.stored_bytes for meta in await store.list_user_sessions(user))


async def probe(store: Storage, session_id: str, user: str) -> int:
    """The store's sum for ``user``, as a refused append past the bound reports it; it
    must be the sum of the user's sessions' ``stored_bytes``, within the bound."""
    with pytest.raises(UserFull) as refused:
        await store.append_event(session_id, AgentEvent.token("y" * (2 * USER_CAP)))
    counted = refused.value.stored
    assert counted == await truth(store, user)
    assert counted <= USER_CAP
    return counted


async def settle(tasks: list[asyncio.Task[object]]) -> list[object]:
    return list(await asyncio.gather(*tasks, return_exceptions=True))


async def test_appends_to_sessions_of_one_user_at_once(backend: Backend, tmp_path: Path) -> None:
    store = await backend.open(tmp_path, max_user_bytes=USER_CAP)
    try:
        for session_id in ("a", "b", "c"):
            await store.create_session(Session.new(session_id, user_id="u"))
        tasks = [
            asyncio.ensure_future(store.append_event(session_id, token(n), f"{session_id}{n}"))
            for n in range(1, 16)
            for session_id in ("a", "b", "c")
        ]
        results = await settle(tasks)
        refused = [r for r in results if isinstance(r, UserFull)]
        assert refused, "45 appends of 330 bytes, and none refused"
        assert all(isinstance(r, UserFull) or not isinstance(r, BaseException) for r in results)
        assert await probe(store, "a", "u") == await truth(store, "u")
    finally:
        await store.close()


@pytest.mark.parametrize("removal", ["delete", "cleanup"])
async def test_a_removal_while_appends_are_in_flight(
    backend: Backend, tmp_path: Path, removal: str
) -> None:
    store = await backend.open(tmp_path, max_user_bytes=USER_CAP)
    try:
        await store.create_session(Session.new("a", user_id="u"))
        await store.create_session(Session.new("b", user_id="u"))
        for n in range(1, 4):
            await store.append_event("b", token(n))
        for round_ in range(5):
            session_id = f"gone{round_}"
            await store.create_session(Session.new(session_id, user_id="u"))
            await store.append_event(session_id, token(0))
            tasks = [
                asyncio.ensure_future(store.append_event(session_id, token(n))) for n in range(1, 8)
            ]
            for _ in range(round_):
                await asyncio.sleep(0)
            if removal == "delete":
                await store.delete_session(session_id)
            else:
                await store.update_session_state(session_id, SessionState.EXPIRED)
                assert await store.cleanup_expired_sessions() == 1
            await settle(tasks)
            assert await store.get_metadata(session_id) is None
            assert await probe(store, "a", "u") == await truth(store, "u")
    finally:
        await store.close()


async def test_imports_made_sessions_and_replacements(backend: Backend, tmp_path: Path) -> None:
    store = await backend.open(tmp_path, max_user_bytes=USER_CAP)
    try:
        await store.create_session(Session.new("a", user_id="u"))
        made = Session.new("made", user_id="u", ttl=1)
        made.messages = [Message(role=Role.USER, content=f"{n}:{PAYLOAD}") for n in range(4)]
        await store.create_session(made)
        assert await probe(store, "a", "u") > 0
        await store.create_session(Session.new("imported", user_id="u"))
        first = await store.read_events("made")
        events = [StoredEvent(e.seq, e.ts, e.event, e.key) for e in first]
        await store.import_events("imported", events)
        assert await probe(store, "a", "u") == await truth(store, "u")
        # The session made with messages expires, and a new one takes its place.
        await store.update_session_state("made", SessionState.EXPIRED)
        assert (await store.get_metadata("made")) is not None
        await store.create_session(Session.new("made", user_id="u"), replace_expired=True)
        assert await probe(store, "a", "u") == await truth(store, "u")
        await store.delete_session("imported")
        await store.delete_session("made")
        assert await probe(store, "a", "u") == 0
    finally:
        await store.close()

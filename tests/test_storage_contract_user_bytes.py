"""The storage contract's bound on what one user's sessions store together
(persistence/base.py, ``max_user_bytes``), on every backend of tests/storage_backends.py:
an append that would take the sum of ``stored_bytes`` over the sessions of its
session's user past it stores nothing and raises UserFull (a SessionFull naming the
user); closed sessions count until they are deleted, cleaned up or replaced, which
frees their bytes; other users, and sessions without a user, are not held back; the
sums survive a reopen.

Each store counts ``stored_bytes`` in its own measure (the JSONL store: its logs'
lines), so these tests fill sessions until the store refuses, as the session cap's do.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bamboo_session.persistence import Appended, SessionFull, Storage, UserFull
from bamboo_session.protocol.models import AgentEvent, Session, SessionState
from tests.storage_backends import Backend
from tests.storage_contract_fixtures import backend_fixture  # noqa: F401 (fixture)

USER_CAP = 8192
PAYLOAD = "x" * 300  # an event of about 330 bytes of JSON: two dozen fit under USER_CAP


def token(n: int) -> AgentEvent:
    return AgentEvent.token(f"{n}:{PAYLOAD}")


async def user_bytes(store: Storage, user_id: str) -> int:
    return sum(meta.stored_bytes for meta in await store.list_user_sessions(user_id))


async def fill(store: Storage, session_id: str) -> int:
    """Append keyed tokens one by one until the store refuses one with UserFull; the
    session's last seq. The user's sum never passes the bound meanwhile."""
    meta = await store.get_metadata(session_id)
    assert meta is not None and meta.user_id is not None
    user = meta.user_id
    seq = meta.last_seq
    while seq < 100:  # far past the bound: a store that never refuses fails the test
        before = await user_bytes(store, user)
        try:
            result = await store.append_event(session_id, token(seq + 1), f"f{seq + 1}")
        except UserFull as exc:
            # Nothing of the refused append, and the message names the user's bound.
            assert await user_bytes(store, user) == before
            assert await store.last_seq(session_id) == seq
            assert f"user {user!r}" in str(exc) and str(USER_CAP) in str(exc)
            assert exc.user_id == user and exc.cap == USER_CAP
            assert exc.stored + exc.adding > USER_CAP
            return seq
        seq += 1
        assert result == Appended(seq)
        assert await user_bytes(store, user) <= USER_CAP
    pytest.fail(f"{seq} appends, and no UserFull")


async def test_closed_sessions_count_until_deleted(backend: Backend, tmp_path: Path) -> None:
    store = await backend.open(tmp_path, max_user_bytes=USER_CAP)
    try:
        await store.create_session(Session.new("s1", user_id="u"))
        first = await fill(store, "s1")
        assert 10 <= first < USER_CAP // 300
        # Closed, the session still holds its bytes: a new session of the user is full.
        await store.update_session_state("s1", SessionState.CLOSED)
        await store.create_session(Session.new("s2", user_id="u"))
        with pytest.raises(UserFull):
            await store.append_event("s2", token(1), "k1")
        assert await store.last_seq("s2") == 0
        # Other users, and sessions without one, are not held back.
        await store.create_session(Session.new("v1", user_id="v"))
        await store.create_session(Session.new("nobody"))
        for session_id in ("v1", "nobody"):
            for n in range(1, 31):  # more than the user bound, for the unowned session
                if session_id == "v1" and n > 20:
                    break
                assert await store.append_event(session_id, token(n)) == Appended(n)
        # A delete frees the session's bytes: the user has room again, as much as before.
        await store.delete_session("s1")
        assert await fill(store, "s2") == first
    finally:
        await store.close()


async def test_expired_sessions_free_their_bytes_when_they_go(
    backend: Backend, tmp_path: Path
) -> None:
    store = await backend.open(tmp_path, max_user_bytes=USER_CAP)
    try:
        await store.create_session(Session.new("s1", user_id="u"))
        await fill(store, "s1")
        await store.update_session_state("s1", SessionState.EXPIRED)
        await store.create_session(Session.new("s2", user_id="u"))
        with pytest.raises(UserFull):
            await store.append_event("s2", token(1))
        # The cleanup takes the expired session, and its bytes.
        assert await store.cleanup_expired_sessions() == 1
        assert await store.append_event("s2", token(1)) == Appended(1)
        # A session that replaces an expired one frees its bytes too.
        await fill(store, "s2")
        await store.update_session_state("s2", SessionState.EXPIRED)
        await store.create_session(Session.new("s2", user_id="u"), replace_expired=True)
        assert await store.append_event("s2", token(1)) == Appended(1)
    finally:
        await store.close()


async def test_a_batch_past_the_bound_is_refused_whole(backend: Backend, tmp_path: Path) -> None:
    store = await backend.open(tmp_path, max_user_bytes=USER_CAP, max_session_bytes=USER_CAP)
    try:
        await store.create_session(Session.new("s1", user_id="u"))
        await store.create_session(Session.new("s2", user_id="u"))
        half = [(token(n), f"k{n}") for n in range(1, 14)]  # ~4.3 KB of JSON
        await store.append_events("s1", half)
        with pytest.raises(UserFull):  # within s2's own cap, past the user's
            await store.append_events("s2", [*half, (token(99), "k99")])
        assert await store.read_events("s2") == []
        # The session cap is checked first, with its own message.
        with pytest.raises(SessionFull) as refused:
            await store.append_events("s2", [(token(n), f"k{n}") for n in range(1, 27)])
        assert not isinstance(refused.value, UserFull)
        assert "user" not in str(refused.value)
        # Duplicates add nothing: answered even at the bound.
        await fill(store, "s2")
        assert await store.append_events("s1", half[:2]) == [
            Appended(1, duplicate=True),
            Appended(2, duplicate=True),
        ]
    finally:
        await store.close()


async def test_the_users_sums_survive_a_reopen(backend: Backend, tmp_path: Path) -> None:
    if not backend.durable:
        pytest.skip(f"{backend.name} keeps nothing across a reopen")
    store = await backend.open(tmp_path, max_user_bytes=USER_CAP)
    try:
        await store.create_session(Session.new("s1", user_id="u"))
        first = await fill(store, "s1")
        await store.update_session_state("s1", SessionState.CLOSED)
        await store.create_session(Session.new("s2", user_id="u"))
    finally:
        await store.close()
    store = await backend.open(tmp_path, max_user_bytes=USER_CAP)
    try:
        with pytest.raises(UserFull):
            await store.append_event("s2", token(1))
        await store.delete_session("s1")
        assert await fill(store, "s2") == first
    finally:
        await store.close()

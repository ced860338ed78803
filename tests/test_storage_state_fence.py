"""The storage contract's epoch fence on state changes and activity, on every backend of
tests/storage_backends.py: ``update_session_state`` and ``touch`` given the epoch of a
session (``epoch=``) reach that session only. Once it was deleted and created again
under its id, or an expired one replaced (a new epoch), one given the old epoch is
SessionNotFound, as on a deleted session, and the new session is left exactly as it
was: its state, ``updated_at``, ``last_activity_at`` and ``expires_at``, and its
subscriptions (a refused close ends none). With the current epoch they work; without an
epoch they are unchanged. What a server's peers see of it:
tests/test_server_instances_fenced_requests.py. The fence of appends and reads:
tests/test_storage_epoch_fence.py."""

from __future__ import annotations

import asyncio

import pytest

from bamboo_session.persistence import SessionNotFound, Storage
from bamboo_session.protocol.models import AgentEvent, Session, SessionMetadata, SessionState
from tests.storage_contract_fixtures import backend_fixture, store_fixture  # noqa: F401 (fixtures)
from tests.storage_contract_support import new_session, tokens

TTL = 3600


async def old_and_new(store: Storage, ending: str) -> tuple[str, str]:
    """``s1`` (alice's, with a TTL), then gone (``ending``) and created again under its
    id (bob's, with a TTL too): the old epoch and the new one."""
    old = await new_session(store, "s1", user_id="alice", ttl=TTL)
    await store.append_events("s1", tokens("a"))
    if ending == "deleted":
        await store.delete_session("s1")
        new = await new_session(store, "s1", user_id="bob", ttl=TTL)
    else:
        await store.update_session_state("s1", SessionState.EXPIRED)
        new = Session.new("s1", user_id="bob", ttl=TTL)
        await store.create_session(new, replace_expired=True)
    assert new.metadata.epoch != old.metadata.epoch
    return old.metadata.epoch, new.metadata.epoch


def moved(meta: SessionMetadata | None) -> tuple[object, ...]:
    """What a state change or a touch moves."""
    assert meta is not None
    return (meta.epoch, meta.state, meta.updated_at, meta.last_activity_at, meta.expires_at)


async def later() -> None:
    """Enough time for a write's times to differ from the ones before it."""
    await asyncio.sleep(0.02)


@pytest.mark.parametrize("ending", ["deleted", "replaced"])
async def test_a_state_change_with_the_old_epoch_is_refused_and_changes_nothing(
    store: Storage, ending: str
) -> None:
    old, new = await old_and_new(store, ending)
    subscription = await store.subscribe("s1", after_seq=0)
    before = moved(await store.get_metadata("s1"))
    await later()
    # Every target, the closing one first (alice's peer closing bob's session), and
    # those the table would refuse too: not found comes first, as on a deleted session.
    for state in (SessionState.CLOSED, *SessionState):
        with pytest.raises(SessionNotFound):
            await store.update_session_state("s1", state, epoch=old)
    assert moved(await store.get_metadata("s1")) == before
    # The refused close ended nothing: bob's log takes appends, his subscription follows.
    appended = await store.append_events("s1", tokens("bob"), epoch=new)
    assert [a.seq for a in appended] == [1]
    batch = await asyncio.wait_for(subscription.next_batch(), 5)
    assert [e.event for e in batch] == [AgentEvent.token("bob")]
    subscription.close()


@pytest.mark.parametrize("ending", ["deleted", "replaced"])
async def test_a_touch_with_the_old_epoch_is_refused_and_changes_nothing(
    store: Storage, ending: str
) -> None:
    old, _new = await old_and_new(store, ending)
    before = moved(await store.get_metadata("s1"))
    assert before[4] is not None  # an expiry a touch would slide
    await later()
    with pytest.raises(SessionNotFound):
        await store.touch("s1", epoch=old)
    assert moved(await store.get_metadata("s1")) == before
    # Not on a closed one either, which a touch leaves alone without an error.
    await store.update_session_state("s1", SessionState.CLOSED)
    with pytest.raises(SessionNotFound):
        await store.touch("s1", epoch=old)


async def test_the_current_epoch_and_no_epoch_move_the_session_as_before(store: Storage) -> None:
    session = await new_session(store, "s1", ttl=TTL)
    epoch = session.metadata.epoch
    first = await store.get_metadata("s1")
    assert first is not None
    await later()
    await store.touch("s1", epoch=epoch)
    touched = await store.get_metadata("s1")
    assert touched is not None and touched.epoch == epoch
    assert touched.last_activity_at > first.last_activity_at
    assert touched.expires_at is not None and first.expires_at is not None
    assert touched.expires_at > first.expires_at
    await later()
    await store.touch("s1")
    again = await store.get_metadata("s1")
    assert again is not None and again.last_activity_at > touched.last_activity_at
    meta = await store.update_session_state("s1", SessionState.IDLE, epoch=epoch)
    assert meta.state == SessionState.IDLE
    meta = await store.update_session_state("s1", SessionState.DISCONNECTED)
    assert meta.state == SessionState.DISCONNECTED
    with pytest.raises(SessionNotFound):
        await store.update_session_state("s1", SessionState.ACTIVE, epoch="not-" + epoch)
    with pytest.raises(SessionNotFound):
        await store.touch("s1", epoch="not-" + epoch)
    with pytest.raises(SessionNotFound):
        await store.update_session_state("missing", SessionState.IDLE, epoch=epoch)
    with pytest.raises(SessionNotFound):
        await store.touch("missing", epoch=epoch)
    assert (await store.get_metadata("s1")).state == SessionState.DISCONNECTED  # type: ignore[union-attr]
    subscription = await store.subscribe("s1", after_seq=0)
    closed = await store.update_session_state("s1", SessionState.CLOSED, epoch=epoch)
    assert closed.state == SessionState.CLOSED
    assert await asyncio.wait_for(subscription.next_batch(), 5) == []  # ended: closed
    expiry = (await store.get_metadata("s1")).expires_at  # type: ignore[union-attr]
    await later()
    await store.touch("s1", epoch=epoch)  # closed: no activity, no error, as before
    assert (await store.get_metadata("s1")).expires_at == expiry  # type: ignore[union-attr]

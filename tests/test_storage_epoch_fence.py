"""The storage contract's epoch fence, on every backend of tests/storage_backends.py: an
append, an event read or a history page given the epoch of a log (``epoch=``) reaches
that log only. Once the session was deleted and created again under its id, or an
expired one replaced (a new epoch, seq from 1), one given the old epoch is
SessionNotFound, as on a deleted session, and nothing of a refused append is stored
(no event, no message, no key). With the current epoch they work; without an epoch
they are unchanged. What a server's peers see of it:
tests/test_server_instances_fenced_requests.py."""

from __future__ import annotations

import pytest

from bamboo_session.persistence import SessionNotFound, Storage
from bamboo_session.protocol.models import AgentEvent, Message, MessageEvent, Session, SessionState
from tests.storage_contract_fixtures import backend_fixture, store_fixture  # noqa: F401 (fixtures)
from tests.storage_contract_support import new_session, tokens


async def taken_over(store: Storage, ending: str) -> Session:
    """``s1`` gone (``ending``: deleted, or expired), and bob's new ``s1`` in its place."""
    if ending == "deleted":
        await store.delete_session("s1")
        return await new_session(store, "s1", user_id="bob")
    await store.update_session_state("s1", SessionState.EXPIRED)
    new = Session.new("s1", user_id="bob")
    await store.create_session(new, replace_expired=True)
    return new


async def old_and_new(store: Storage, ending: str) -> tuple[str, str]:
    """``s1`` with two events, a key and a message, then gone (``ending``) and created
    again under its id: the old epoch and the new one."""
    old = await new_session(store, "s1", user_id="alice")
    await store.append_events("s1", tokens("a"))
    await store.append_event("s1", AgentEvent.token("keyed"), key="k1")
    await store.append_message("s1", Message.user("old"))
    new = await taken_over(store, ending)
    assert new.metadata.epoch != old.metadata.epoch
    return old.metadata.epoch, new.metadata.epoch


@pytest.mark.parametrize("ending", ["deleted", "replaced"])
async def test_an_append_to_the_old_epoch_is_refused_and_stores_nothing(
    store: Storage, ending: str
) -> None:
    old, new = await old_and_new(store, ending)
    stale = [
        (AgentEvent.token("stale"), "k2"),
        (MessageEvent(Message.user("stale")), None),
        (AgentEvent.token("stale again"), None),
    ]
    with pytest.raises(SessionNotFound):
        await store.append_events("s1", stale, epoch=old)
    with pytest.raises(SessionNotFound):
        await store.append_events("s1", [(AgentEvent.token("stale"), "k1")], epoch=old)
    assert await store.read_events("s1") == []
    assert await store.last_seq("s1") == 0
    assert await store.get_session_history("s1") == []
    meta = await store.get_metadata("s1")
    assert meta is not None and (meta.last_seq, meta.message_count) == (0, 0)
    assert meta.epoch == new
    # Neither key of the refused appends was taken: the new log's own appends are fresh.
    first = await store.append_events(
        "s1", [(AgentEvent.token("new"), "k2"), (AgentEvent.token("new"), "k1")], epoch=new
    )
    assert [(a.seq, a.duplicate) for a in first] == [(1, False), (2, False)]
    # Without an epoch an append goes to whatever session has the id, as before.
    assert (await store.append_event("s1", AgentEvent.token("any"))).seq == 3
    assert [e.seq for e in await store.read_events("s1")] == [1, 2, 3]


@pytest.mark.parametrize("ending", ["deleted", "replaced"])
async def test_reads_of_the_old_epoch_are_refused(store: Storage, ending: str) -> None:
    old, new = await old_and_new(store, ending)
    await store.append_events("s1", tokens("b1", "b2"))
    await store.append_message("s1", Message.user("bob's"))
    for limit in (None, 0, 1):
        with pytest.raises(SessionNotFound):
            await store.read_events("s1", 0, limit, epoch=old)
    with pytest.raises(SessionNotFound):
        await store.get_history_page("s1", 10, epoch=old)
    with pytest.raises(SessionNotFound):
        await store.get_history_page("s1", 10, before=1, epoch=old)
    read = await store.read_events("s1", 0, epoch=new)
    assert [e.event for e in read][:2] == [AgentEvent.token("b1"), AgentEvent.token("b2")]
    assert await store.read_events("s1", 0, 0, epoch=new) == []
    page = await store.get_history_page("s1", 10, epoch=new)
    assert [m.content for m in page.messages] == ["bob's"]


async def test_the_current_epoch_passes_and_any_other_is_refused(store: Storage) -> None:
    session = await new_session(store, "s1")
    epoch = session.metadata.epoch
    assert await store.epoch("s1") == epoch
    appended = await store.append_events("s1", tokens("a", "b"), epoch=epoch)
    assert [a.seq for a in appended] == [1, 2]
    again = await store.append_events("s1", [(AgentEvent.token("k"), "k")], epoch=epoch)
    dup = await store.append_events("s1", [(AgentEvent.token("k"), "k")], epoch=epoch)
    assert (again[0].seq, dup[0].seq, dup[0].duplicate) == (3, 3, True)
    assert [e.seq for e in await store.read_events("s1", 1, epoch=epoch)] == [2, 3]
    with pytest.raises(SessionNotFound):
        await store.append_events("s1", tokens("c"), epoch="not-" + epoch)
    with pytest.raises(SessionNotFound):
        await store.read_events("s1", epoch="not-" + epoch)
    with pytest.raises(SessionNotFound):
        await store.append_events("missing", tokens("c"), epoch=epoch)
    assert await store.last_seq("s1") == 3


async def test_the_old_epoch_is_not_found_even_when_the_new_session_is_closed(
    store: Storage,
) -> None:
    """Its writer's session is gone: not found, whatever became of the one in its place."""
    old, _new = await old_and_new(store, "deleted")
    await store.update_session_state("s1", SessionState.CLOSED)
    with pytest.raises(SessionNotFound):
        await store.append_events("s1", tokens("stale"), epoch=old)


@pytest.mark.parametrize("ending", ["deleted", "replaced"])
async def test_the_last_seq_of_the_old_epoch_is_refused(store: Storage, ending: str) -> None:
    """``last_seq`` is fenced as a read is: with the old epoch, SessionNotFound, not the
    new log's last seq; with the new one or none, the new log's."""
    old, new = await old_and_new(store, ending)
    await store.append_events("s1", tokens("b1", "b2", "b3"))
    with pytest.raises(SessionNotFound):
        await store.last_seq("s1", epoch=old)
    assert await store.last_seq("s1", epoch=new) == await store.last_seq("s1") == 3
    with pytest.raises(SessionNotFound):
        await store.last_seq("missing", epoch=new)

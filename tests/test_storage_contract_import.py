"""SessionImport held to its word (persistence/importing.py): what ``bamboo-session
migrate`` needs, on the backends of tests/storage_backends.py that implement it.
Imported events keep their seqs, times and keys (which are the session's keys after),
in order only; imported metadata sets state, times, TTL and extra, and a move to
closed ends the session's subscriptions after its events, as a close does; both
survive a reopen; a missing session, or an event that does not decode, is refused.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import msgspec
import pytest

from bamboo_session.persistence import (
    Appended,
    SessionClosed,
    SessionNotFound,
    Storage,
    StorageError,
)
from bamboo_session.persistence.importing import SessionImport
from bamboo_session.protocol.models import (
    AgentEvent,
    AnyAgentEvent,
    Message,
    Role,
    Session,
    SessionState,
    StoredEvent,
    utcnow,
)
from tests.storage_backends import Backend
from tests.storage_contract_fixtures import backend_fixture, store_fixture  # noqa: F401 (fixtures)

RECV = 5.0  # seconds: a bound on a wait for what the store already took


@pytest.fixture
async def importer(store: Storage) -> SessionImport:
    if not isinstance(store, SessionImport):
        pytest.skip("this backend does not implement SessionImport")
    return store


def carried_over(first_seq: int = 1) -> list[StoredEvent]:
    """Events as another store holds them: their own seqs, times and keys."""
    then = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    hello = Message(role=Role.USER, content="hello", id="m-1", created_at=then)
    events: list[tuple[AnyAgentEvent, str | None]] = [
        (AgentEvent.message(hello), "key-1"),
        (AgentEvent.token("tok"), None),
        (AgentEvent.token("tok 2"), "key-3"),
        (AgentEvent.message(Message.assistant("hi")), None),
    ]
    return [
        StoredEvent(first_seq + i, then + timedelta(seconds=i), event, key)
        for i, (event, key) in enumerate(events)
    ]


async def new_import_target(store: Storage, session_id: str = "s1") -> Session:
    """A session as the source store has it: its own epoch and creation time."""
    session = Session.new(session_id, user_id="u", title="Imported", ttl=3600)
    session.metadata.epoch = "source-epoch"
    session.metadata.created_at = datetime(2025, 1, 2, tzinfo=UTC)
    await store.create_session(session)
    return session


async def test_import_keeps_seqs_times_and_keys(importer: SessionImport) -> None:
    store = cast(Storage, importer)
    await new_import_target(store)
    given = carried_over()
    await importer.import_events("s1", given)
    events = await store.read_events("s1")
    assert [(e.seq, e.ts, e.key, e.event) for e in events] == [
        (e.seq, e.ts, e.key, e.event) for e in given
    ]
    meta = await store.get_metadata("s1")
    assert meta is not None
    assert (meta.epoch, meta.created_at) == ("source-epoch", datetime(2025, 1, 2, tzinfo=UTC))
    assert (meta.last_seq, meta.message_count) == (4, 2)
    history = await store.get_session_history("s1")
    assert [(m.id, m.content) for m in history] == [("m-1", "hello"), (history[1].id, "hi")]
    page = await store.get_history_page("s1", 1)
    assert [m.content for m in page.messages] == ["hi"] and page.has_more
    # In pieces, each following the last.
    await importer.import_events("s1", carried_over(first_seq=5))
    assert await store.last_seq("s1") == 8


async def test_import_refuses_seqs_out_of_order(importer: SessionImport) -> None:
    store = cast(Storage, importer)
    await new_import_target(store)
    for wrong in (carried_over(first_seq=2), [carried_over()[0], carried_over()[2]]):
        with pytest.raises(ValueError):
            await importer.import_events("s1", wrong)
        assert await store.last_seq("s1") == 0  # nothing of it was imported
    await store.append_event("s1", AgentEvent.token("appended"))
    with pytest.raises(ValueError):
        await importer.import_events("s1", carried_over(first_seq=1))
    await importer.import_events("s1", carried_over(first_seq=2))
    assert await store.last_seq("s1") == 5


async def test_imported_keys_are_the_sessions_keys(importer: SessionImport) -> None:
    store = cast(Storage, importer)
    await new_import_target(store)
    await importer.import_events("s1", carried_over())
    again = await store.append_event("s1", AgentEvent.token("retry"), "key-3")
    assert again == Appended(3, duplicate=True)
    assert await store.append_event("s1", AgentEvent.token("new"), "key-5") == Appended(5)


async def test_an_imported_empty_key_stays_a_key(importer: SessionImport) -> None:
    store = cast(Storage, importer)
    await new_import_target(store)
    then = datetime(2025, 1, 2, tzinfo=UTC)
    given = [
        StoredEvent(1, then, AgentEvent.token("keyed"), ""),
        StoredEvent(2, then, AgentEvent.token("keyless"), None),
    ]
    await importer.import_events("s1", given)
    assert [(e.seq, e.key) for e in await store.read_events("s1")] == [(1, ""), (2, None)]
    assert await store.append_event("s1", AgentEvent.token("retry"), "") == Appended(1, True)


async def test_import_metadata_sets_state_times_ttl_and_extra(importer: SessionImport) -> None:
    store = cast(Storage, importer)
    await new_import_target(store)
    await importer.import_events("s1", carried_over())
    meta = await store.get_metadata("s1")
    assert meta is not None
    active_at = utcnow() - timedelta(minutes=5)
    meta.state = SessionState.CLOSED
    meta.updated_at = active_at + timedelta(seconds=1)
    meta.last_activity_at = active_at
    meta.expires_at = active_at + timedelta(days=7)
    meta.ttl = 7 * 86400
    meta.extra = {"plan": "pro"}
    await importer.import_metadata(meta)
    now = await store.get_metadata("s1")
    assert now is not None
    assert (now.state, now.updated_at, now.last_activity_at) == (
        SessionState.CLOSED,
        active_at + timedelta(seconds=1),
        active_at,
    )
    assert (now.expires_at, now.ttl, now.extra) == (meta.expires_at, 7 * 86400, {"plan": "pro"})
    assert (now.last_seq, now.message_count, now.epoch) == (4, 2, "source-epoch")
    with pytest.raises(SessionClosed):
        await store.append_event("s1", AgentEvent.token("late"))
    assert len(await store.get_session_history("s1")) == 2


async def test_an_import_that_closes_a_session_ends_its_subscriptions(
    importer: SessionImport,
) -> None:
    """A viewer following the session (a server's actor does, through the store) gets
    the imported events, then the end: ``closed``, as at a close, not a wait forever."""
    store = cast(Storage, importer)
    await new_import_target(store)
    subscription = await store.subscribe("s1", after_seq=0)
    await importer.import_events("s1", carried_over())
    meta = await store.get_metadata("s1")
    assert meta is not None
    meta.state = SessionState.CLOSED
    await importer.import_metadata(meta)
    seen = []
    while batch := await asyncio.wait_for(subscription.next_batch(), RECV):
        seen += [event.seq for event in batch]
    assert (seen, subscription.ended) == ([1, 2, 3, 4], "closed")


async def test_an_import_that_closes_a_closed_session_ends_nothing_twice(
    importer: SessionImport,
) -> None:
    """Imported as closed again (a migrate rerun): no error, the subscription the close
    ended stays ended as it was, and one made after ends at once, ``closed``."""
    store = cast(Storage, importer)
    await new_import_target(store)
    await importer.import_events("s1", carried_over())
    before = await store.subscribe("s1", after_seq=4)
    await store.update_session_state("s1", SessionState.CLOSED)
    assert await asyncio.wait_for(before.next_batch(), RECV) == []
    meta = await store.get_metadata("s1")
    assert meta is not None
    await importer.import_metadata(meta)
    assert before.ended == "closed"
    after = await store.subscribe("s1", after_seq=0)
    seen = []
    while batch := await asyncio.wait_for(after.next_batch(), RECV):
        seen += [event.seq for event in batch]
    assert (seen, after.ended) == ([1, 2, 3, 4], "closed")


async def test_a_closed_store_refuses_imports(importer: SessionImport) -> None:
    """As it refuses every other write: nothing is imported into a store once closed."""
    store = cast(Storage, importer)
    session = await new_import_target(store)
    await store.close()
    with pytest.raises(StorageError):
        await importer.import_events("s1", carried_over())
    with pytest.raises(StorageError):
        await importer.import_metadata(session.metadata)


async def test_import_into_a_missing_session(importer: SessionImport) -> None:
    with pytest.raises(SessionNotFound):
        await importer.import_events("nope", carried_over())
    with pytest.raises(SessionNotFound):
        await importer.import_metadata(Session.new("nope").metadata)


async def test_an_import_survives_a_reopen(backend: Backend, tmp_path: Path) -> None:
    if not backend.durable:
        pytest.skip("this backend keeps nothing across a reopen")
    storage = await backend.open(tmp_path)
    if not isinstance(storage, SessionImport):
        await storage.close()
        pytest.skip("this backend does not implement SessionImport")
    await new_import_target(storage)
    await storage.import_events("s1", carried_over())
    meta = await storage.get_metadata("s1")
    assert meta is not None
    meta.state = SessionState.IDLE
    meta.extra = {"from": "elsewhere"}
    await storage.import_metadata(meta)
    await storage.close()
    storage = await backend.open(tmp_path)
    try:
        after = await storage.get_metadata("s1")
        assert after is not None
        assert (after.state, after.extra, after.epoch) == (
            SessionState.IDLE,
            {"from": "elsewhere"},
            "source-epoch",
        )
        events = await storage.read_events("s1")
        assert [(e.seq, e.ts, e.key) for e in events] == [
            (e.seq, e.ts, e.key) for e in carried_over()
        ]
        assert await storage.append_event("s1", AgentEvent.token("x"), "key-1") == Appended(
            1, duplicate=True
        )
    finally:
        await storage.close()


@pytest.mark.parametrize(
    "json", [b'{"type":"token","content":"a\x00b"}', b'{"type":"token"', b'{"type":"nope"}']
)
async def test_import_refuses_an_event_that_does_not_decode_and_imports_nothing(
    importer: SessionImport, json: bytes
) -> None:
    """A damaged source row is refused with ValueError, before anything is stored or
    any key is taken: a later append with the key of an event before it is new."""
    store = cast(Storage, importer)
    await new_import_target(store)
    given = carried_over()
    given[1] = StoredEvent.from_json(2, given[1].ts, msgspec.Raw(json), "key-2")
    with pytest.raises(ValueError, match="seq 2"):
        await importer.import_events("s1", given)
    assert await store.last_seq("s1") == 0
    appended = await store.append_event("s1", AgentEvent.token("new"), key="key-1")
    assert (appended.seq, appended.duplicate) == (1, False)

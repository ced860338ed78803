"""The storage contract (persistence/base.py), on every backend of tests/storage_backends.py:
sessions (create, read back, limits, missing ones, delete), appends (seqs from one with
no gap, concurrent appends, messages as events and history, pages), and what a reopen
keeps. The rest of the contract is in the other test_storage_contract_*.py: keys
(_keys), states and expiry (_states), listing (_listing), subscriptions
(_subscriptions), and SessionImport (_import).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bamboo_session.persistence import (
    Appended,
    InvalidSessionId,
    SessionExists,
    SessionNotFound,
    Storage,
    StorageFull,
)
from bamboo_session.protocol.models import (
    AgentEvent,
    Message,
    MessageEvent,
    Role,
    Session,
    SessionState,
    Token,
)
from tests.storage_backends import Backend
from tests.storage_contract_fixtures import backend_fixture, store_fixture  # noqa: F401 (fixtures)
from tests.storage_contract_support import new_session, tokens

# -- sessions ---------------------------------------------------------------------


async def test_create_then_read_back(store: Storage) -> None:
    session = await new_session(store, "s1", user_id="u1", title="Chat")
    meta = await store.get_metadata("s1")
    assert meta is not None
    assert (meta.id, meta.user_id, meta.title, meta.state) == ("s1", "u1", "Chat", "active")
    assert (meta.last_seq, meta.message_count, meta.epoch) == (0, 0, session.metadata.epoch)
    loaded = await store.load_session("s1")
    assert loaded is not None and loaded.messages == []
    assert await store.last_seq("s1") == 0
    assert await store.epoch("s1") == session.metadata.epoch


async def test_create_refuses_a_duplicate_and_a_bad_id(store: Storage) -> None:
    await new_session(store, "s1")
    with pytest.raises(SessionExists):
        await new_session(store, "s1")
    for bad in ("", ".", "..", "a/b", "x" * 129, "sp ace"):
        with pytest.raises(InvalidSessionId):
            await store.create_session(Session.new(bad))


async def test_a_bad_id_is_told_as_such_by_appends_and_reads(store: Storage) -> None:
    # The memory store checks an id only when it finds no session of it (an append's
    # regular expression was 0.9% of a lone event): a bad one is still a bad id.
    await new_session(store, "s1")
    for bad in ("", ".", "..", "a/b", "x" * 129, "sp ace"):
        with pytest.raises(InvalidSessionId):
            await store.append_events(bad, tokens("t"))
        with pytest.raises(InvalidSessionId):
            await store.read_events(bad)
        with pytest.raises(InvalidSessionId):
            await store.last_seq(bad)
    with pytest.raises(SessionNotFound):
        await store.append_events("s2", tokens("t"))
    assert [a.seq for a in await store.append_events("s1", tokens("t"))] == [1]


async def test_create_with_messages_puts_them_in_the_log(store: Storage) -> None:
    session = Session.new("s1")
    session.messages = [Message.user("a"), Message.assistant("b")]
    await store.create_session(session)
    history = await store.get_session_history("s1")
    assert [m.content for m in history] == ["a", "b"]
    events = await store.read_events("s1")
    assert [e.seq for e in events] == [1, 2]
    assert all(isinstance(e.event, MessageEvent) for e in events)


class OwnMessageEvent(MessageEvent):
    """A caller's own kind of message event, appended in-process."""


async def test_a_callers_subclass_of_a_message_event_is_a_message(store: Storage) -> None:
    # The stores tell a message from the other events by exact type first (what a
    # decoder builds, protocol/events.py NOT_MESSAGES): a subclass takes isinstance's way.
    await new_session(store, "s1")
    own = OwnMessageEvent(Message.user("mine"))
    await store.append_events("s1", [*tokens("a"), (own, None), *tokens("b")])
    history = await store.get_session_history("s1")
    assert [m.content for m in history] == ["mine"]
    meta = await store.get_metadata("s1")
    assert meta is not None and meta.message_count == 1
    page = await store.get_history_page("s1", 10)
    assert [m.content for m in page.messages] == ["mine"]


async def test_max_sessions(backend: Backend, tmp_path: Path) -> None:
    storage = await backend.open(tmp_path, max_sessions=2)
    try:
        await new_session(storage, "a")
        await new_session(storage, "b")
        with pytest.raises(StorageFull):
            await new_session(storage, "c")
        await storage.delete_session("a")
        await new_session(storage, "c")
    finally:
        await storage.close()


async def test_missing_sessions(store: Storage) -> None:
    assert await store.get_metadata("nope") is None
    assert await store.load_session("nope") is None
    for call in (
        store.get_session_history("nope"),
        store.get_history_page("nope", 10),
        store.read_events("nope"),
        store.append_event("nope", AgentEvent.token("x")),
        store.update_session_state("nope", SessionState.IDLE),
        store.touch("nope"),
        store.delete_session("nope"),
        store.last_seq("nope"),
        store.subscribe("nope", 0),
    ):
        with pytest.raises(SessionNotFound):
            await call


async def test_delete_removes_everything(store: Storage) -> None:
    await new_session(store, "s1", user_id="u")
    await store.append_events("s1", tokens("a", "b"))
    await store.delete_session("s1")
    assert await store.get_metadata("s1") is None
    assert await store.list_user_sessions("u") == []
    with pytest.raises(SessionNotFound):
        await store.read_events("s1")
    # The id is free again, with a new log from seq 1.
    await new_session(store, "s1")
    assert (await store.append_event("s1", AgentEvent.token("c"))).seq == 1


# -- appends ------------------------------------------------------------------------


async def test_seqs_count_from_one_without_gaps(store: Storage) -> None:
    await new_session(store)
    assert await store.append_event("s1", AgentEvent.token("a")) == Appended(1)
    assert await store.append_events("s1", tokens("b", "c")) == [Appended(2), Appended(3)]
    assert await store.append_events("s1", []) == []
    events = await store.read_events("s1")
    assert [(e.seq, e.event) for e in events] == [
        (1, Token("a")),
        (2, Token("b")),
        (3, Token("c")),
    ]
    meta = await store.get_metadata("s1")
    assert meta is not None and meta.last_seq == 3


async def test_concurrent_appends_to_one_session(store: Storage) -> None:
    await new_session(store)

    async def writer(name: str) -> list[int]:
        seqs = []
        for i in range(20):
            done = await store.append_events("s1", tokens(f"{name}{i}", f"{name}{i}'"))
            seqs.extend(a.seq for a in done)
        return seqs

    results = await asyncio.gather(*(writer(n) for n in "abcde"))
    every = sorted(seq for seqs in results for seq in seqs)
    assert every == list(range(1, 201))
    for seqs in results:
        assert seqs == sorted(seqs)  # each writer's appends in its call order
    events = await store.read_events("s1")
    assert [e.seq for e in events] == list(range(1, 201))


async def test_messages_are_events_and_history(store: Storage) -> None:
    await new_session(store)
    first = await store.append_message("s1", Message(role=Role.USER, content="hi"))
    await store.append_event("s1", AgentEvent.token("tok"))
    await store.append_event("s1", AgentEvent.message(Message.assistant("yo")))
    assert first == Appended(1)
    history = await store.get_session_history("s1")
    assert [m.content for m in history] == ["hi", "yo"]
    assert history[0].id and history[0].created_at is not None  # filled in by the store
    events = await store.read_events("s1")
    assert isinstance(events[0].event, MessageEvent)
    assert events[0].event.message.id == history[0].id
    meta = await store.get_metadata("s1")
    assert meta is not None and meta.message_count == 2


async def test_history_pages(store: Storage) -> None:
    await new_session(store)
    for i in range(7):
        await store.append_message("s1", Message.user(f"m{i}"))
        await store.append_event("s1", AgentEvent.token("between"))
    page = await store.get_history_page("s1", 3)
    assert ([m.content for m in page.messages], page.start, page.has_more) == (
        ["m4", "m5", "m6"],
        4,
        True,
    )
    page = await store.get_history_page("s1", 3, before=2)
    assert ([m.content for m in page.messages], page.start, page.has_more) == (
        ["m0", "m1"],
        0,
        False,
    )
    page = await store.get_history_page("s1", 100, before=100)
    assert len(page.messages) == 7 and not page.has_more


async def test_read_events_pages_by_count_and_bytes(store: Storage) -> None:
    await new_session(store)
    await store.append_events("s1", tokens(*(f"{i:04d}" + "x" * 100 for i in range(10))))
    assert [e.seq for e in await store.read_events("s1", after_seq=3, limit=4)] == [4, 5, 6, 7]
    assert await store.read_events("s1", after_seq=10) == []
    assert await store.read_events("s1", after_seq=99) == []
    size = (await store.read_events("s1", limit=1))[0].size
    page = await store.read_events("s1", max_bytes=size * 3)
    assert [e.seq for e in page] == [1, 2, 3]
    # A page always holds at least one event, however small the budget.
    assert [e.seq for e in await store.read_events("s1", after_seq=5, max_bytes=1)] == [6]


async def test_history_pages_by_bytes(backend: Backend, tmp_path: Path) -> None:
    # A page's budget keeps the newest messages whose events fit it (at least one),
    # and start / has_more say where the page begins; read again after a reopen too
    # (no cache then: the stores read from disk).
    storage = await backend.open(tmp_path)
    try:
        await new_session(storage)
        for i in range(10):
            await storage.append_message("s1", Message.user(f"{i:04d}" + "x" * 10_000))
        await _check_history_budget(storage)
        if backend.durable:
            await storage.close()
            storage = await backend.open(tmp_path)
            await _check_history_budget(storage)
    finally:
        await storage.close()


async def _check_history_budget(store: Storage) -> None:
    size = (await store.read_events("s1", limit=1))[0].size
    contents = lambda page: [m.content[:4] for m in page.messages]  # noqa: E731
    page = await store.get_history_page("s1", 8, max_bytes=size * 3 + size // 2)
    assert (contents(page), page.start, page.has_more) == (["0007", "0008", "0009"], 7, True)
    page = await store.get_history_page("s1", 8, before=5, max_bytes=size * 2 + size // 2)
    assert (contents(page), page.start, page.has_more) == (["0003", "0004"], 3, True)
    page = await store.get_history_page("s1", 8, before=5, max_bytes=10**9)
    assert (contents(page), page.start, page.has_more) == (
        ["0000", "0001", "0002", "0003", "0004"],
        0,
        False,
    )
    # Always at least one, however small the budget.
    page = await store.get_history_page("s1", 8, before=3, max_bytes=0)
    assert (contents(page), page.start, page.has_more) == (["0002"], 2, True)


# -- lifecycle ------------------------------------------------------------------------


async def test_reopen_keeps_sessions_events_and_history(backend: Backend, tmp_path: Path) -> None:
    if not backend.durable:
        pytest.skip("this backend keeps nothing across a reopen")
    storage = await backend.open(tmp_path)
    session = await new_session(storage, "s1", user_id="u", title="T")
    await storage.append_message("s1", Message.user("hello"))
    await storage.append_events("s1", tokens("a", "b"))
    await storage.update_session_state("s1", SessionState.IDLE)
    await storage.close()
    storage = await backend.open(tmp_path)
    try:
        meta = await storage.get_metadata("s1")
        assert meta is not None
        assert (meta.user_id, meta.title, meta.last_seq, meta.message_count, meta.epoch) == (
            "u",
            "T",
            3,
            1,
            session.metadata.epoch,
        )
        assert [m.content for m in await storage.get_session_history("s1")] == ["hello"]
        assert [e.seq for e in await storage.read_events("s1")] == [1, 2, 3]
        assert (await storage.append_event("s1", AgentEvent.token("c"))).seq == 4
    finally:
        await storage.close()


async def test_ready_until_closed(backend: Backend, tmp_path: Path) -> None:
    storage = await backend.open(tmp_path)
    assert storage.ready
    await storage.close()
    assert not storage.ready
    await storage.close()  # twice is fine
